// One kernel-launch macro and the few runtime calls launchers need, the same for nvcc and the emulator.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#else
#include "emu/simt.h"
#endif

#include "core/hd.h"

namespace ck {
namespace cuda {

#if defined(__CUDACC__)
inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                             cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
}
// The static runtime keeps its own current device: set it from the tensor before every launch.
inline void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice", __FILE__, __LINE__); }
inline void memset_async(void* p, int v, size_t bytes, void* stream) {
  check(cudaMemsetAsync(p, v, bytes, static_cast<cudaStream_t>(stream)), "cudaMemsetAsync", __FILE__, __LINE__);
}
#else
inline void set_device(int) {}
inline void memset_async(void* p, int v, size_t bytes, void*) { std::memset(p, v, bytes); }
#endif

// Blocks for a grid-stride loop over n items: enough to fill any GPU, capped so huge n stays a valid grid.
inline unsigned blocks_for(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : b > 65536 ? 65536 : b);
}

}  // namespace cuda
}  // namespace ck

// CK_LAUNCH(kernel, grid, block, smem_bytes, stream, args...). `kernel` must be a single token or a
// function-pointer variable: bind template kernels first (auto k = &my_kernel<T, 3>;).
#if defined(__CUDACC__)
#define CK_LAUNCH(kernel, grid, block, smem, stream, ...)                                \
  do {                                                                                   \
    kernel<<<(grid), (block), (smem), static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__); \
    ::ck::cuda::check(cudaGetLastError(), "launch of " #kernel, __FILE__, __LINE__);     \
  } while (0)
#define CK_DYNAMIC_SMEM(T, name)                            \
  extern __shared__ __align__(16) unsigned char ck_smem_[]; \
  T* name = reinterpret_cast<T*>(ck_smem_)
#else
#define CK_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::ck_emu::launch(#kernel, __FILE__, __LINE__, (grid), (block), (smem), kernel, __VA_ARGS__))
#define CK_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::ck_emu::dynamic_smem())
#endif

// Grid-stride loop over [0, n) with 64-bit indices.
#define CK_KERNEL_LOOP(i, n)                                                                                   \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, ck_step_ = int64_t(blockDim.x) * gridDim.x; \
       i < (n); i += ck_step_)
