// Every op's CUDA kernels, gathered into the tables a device module exports. Included by exactly one TU per
// device module: cuda/kernels.cu (nvcc) and emu/kernels.cpp (g++ with the emulator).
#pragma once
#include "cuda/device_tables.h"
#include "emu/selftest.cuh"
#include "ops/conv/conv_cuda.cuh"
#include "ops/pool/pool_cuda.cuh"
#include "ops/star/star_cuda.cuh"
#include "ops/star3d/star3d_cuda.cuh"

namespace ck {

template <class Table>
KernelTable table_of(const Table& t) {
  return KernelTable{kTableAbi, uint32_t(sizeof(Table)), &t};
}

const std::vector<NamedTable>& device_tables() {
  static const PoolKernels pool{&pool_cuda::forward, &pool_cuda::backward};
  static const ConvKernels conv{&conv_cuda::forward, &conv_cuda::grad_input, &conv_cuda::grad_weight,
                                &conv_cuda::fold, &conv_cuda::bias_grad};
  static const StarKernels star{&star_cuda::star_dist, &star_cuda::dist_to_coord, &star_cuda::polygons_to_label,
                                &star_cuda::nms};
  static const Star3Kernels star3d{&star3d_cuda::render, &star3d_cuda::nms};
  static const std::vector<NamedTable> tables = {
      {"pool", table_of(pool)},
      {"conv", table_of(conv)},
      {"star", table_of(star)},
      {"star3d", table_of(star3d)},
  };
  return tables;
}

}  // namespace ck
