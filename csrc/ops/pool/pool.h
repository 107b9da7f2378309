// Max-pooling 2D/3D: parameters, the argument block every backend receives, and the C++ API.
#pragma once
#include <cstdint>
#include <vector>

#include "core/cpu_isa.h"
#include "core/dtypes.h"
#include "core/registry.h"
#include "core/tensor_view.h"

namespace ck {

struct PoolParams {
  int nd = 2;  // spatial dims: 2 or 3
  int64_t kernel[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, padding[3] = {0, 0, 0}, dilation[3] = {1, 1, 1};
  bool ceil_mode = false;
};

// What the forward writes beside the values: nothing, the position inside the window (uint8, what autograd
// saves: 8x smaller than torch's int64), or torch's flat index into the input plane (int64, return_indices).
enum class PoolIndex : int32_t { none = 0, local = 1, flat = 2 };

// Geometry normalised to three spatial dims (2D pooling is depth 1 with a 1-wide window), dims ordered d,h,w.
struct PoolGeom {
  int64_t N = 0, C = 0;
  int64_t in[3] = {1, 1, 1}, out[3] = {1, 1, 1};
  int64_t k[3] = {1, 1, 1}, s[3] = {1, 1, 1}, p[3] = {0, 0, 0}, d[3] = {1, 1, 1};
  bool channels_last = false;  // NDHWC (torch channels_last / channels_last_3d) instead of NCDHW
};

struct PoolForwardArgs {
  PoolGeom g;
  DType dtype;
  PoolIndex mode;
  const void* x;
  void* out;
  void* idx;  // uint8 (local) or int64 (flat) with out's shape and layout; null for PoolIndex::none
  int device;
};

struct PoolBackwardArgs {
  PoolGeom g;
  DType dtype;
  PoolIndex mode;
  const void* grad_out;
  const void* idx;
  void* grad_in;
  int device;
};

// The launchers a device backend (cuda, emu) registers under the name "pool".
struct PoolKernels {
  void (*forward)(const PoolForwardArgs&, void* stream);
  void (*backward)(const PoolBackwardArgs&, void* stream);
};

// The output shape for an input of this shape; raises ValueError for invalid shapes or parameters.
std::vector<int64_t> max_pool_output_shape(const std::vector<int64_t>& in_shape, const PoolParams& p);

// idx.ndim == 0 means "no index tensor". Validates everything, then runs on the backend the device implies
// (cuda tensors -> cuda; cpu tensors -> cpu, or emu when use_emu).
void max_pool_forward(const TensorView& x, const TensorView& out, const TensorView& idx, const PoolParams& p,
                      PoolIndex mode, bool use_emu, void* stream);
void max_pool_backward(const TensorView& grad_out, const TensorView& idx, const TensorView& grad_in,
                       const PoolParams& p, PoolIndex mode, bool use_emu, void* stream);

}  // namespace ck

CK_CPU_DECLARE(void max_pool_forward_cpu(const PoolForwardArgs& a))
CK_CPU_DECLARE(void max_pool_backward_cpu(const PoolBackwardArgs& a))
