// Max-pooling's single dispatch point: validate every argument, then run the CPU, CUDA or emulator kernels.
#include "ops/pool/pool.h"

#include <algorithm>

#include "core/validate.h"
#include "ops/pool/pool_math.h"

namespace ck {
namespace {

constexpr int64_t kMaxParam = int64_t(1) << 31;

void check_params(const PoolParams& p) {
  CK_CHECK_VALUE(p.nd == 2 || p.nd == 3, "pooling has 2 or 3 spatial dims, got ", p.nd);
  const char* dims = p.nd == 2 ? "hw" : "dhw";
  for (int i = 0; i < p.nd; ++i) {
    CK_CHECK_VALUE(p.kernel[i] > 0 && p.kernel[i] < kMaxParam, "kernel_size must be positive and below 2^31, got ",
                   p.kernel[i], " for dim ", dims[i]);
    CK_CHECK_VALUE(p.stride[i] > 0 && p.stride[i] < kMaxParam, "stride must be positive and below 2^31, got ",
                   p.stride[i], " for dim ", dims[i]);
    CK_CHECK_VALUE(p.dilation[i] > 0 && p.dilation[i] < kMaxParam, "dilation must be positive and below 2^31, got ",
                   p.dilation[i], " for dim ", dims[i]);
    CK_CHECK_VALUE(p.padding[i] >= 0, "padding must be non-negative, got ", p.padding[i], " for dim ", dims[i]);
    CK_CHECK_VALUE(p.padding[i] <= p.kernel[i] / 2, "padding should be at most half of kernel_size, got padding ",
                   p.padding[i], " and kernel_size ", p.kernel[i], " for dim ", dims[i]);
  }
}

// Geometry from the input's shape (N, C, *spatial) and the params; checks layout and the output size.
PoolGeom make_geom(const TensorView& in, const char* name, const PoolParams& p) {
  check_params(p);
  CK_CHECK_VALUE(in.ndim == p.nd + 2, name, ": expected a ", p.nd + 2, "D tensor (N, C, ",
                 p.nd == 2 ? "H, W" : "D, H, W", "), got shape ", shape_str(in));
  PoolGeom g;
  g.N = in.shape[0];
  g.C = in.shape[1];
  CK_CHECK_VALUE(g.C > 0, name, ": the channel dimension is empty, shape ", shape_str(in));
  int off = 3 - p.nd;
  for (int i = 0; i < p.nd; ++i) {
    int a = off + i;
    g.in[a] = in.shape[2 + i];
    CK_CHECK_VALUE(g.in[a] > 0, name, ": spatial dimensions must be non-empty, got shape ", shape_str(in));
    g.k[a] = p.kernel[i];
    g.s[a] = p.stride[i];
    g.p[a] = p.padding[i];
    g.d[a] = p.dilation[i];
    g.out[a] = pool::out_size(g.in[a], g.k[a], g.s[a], g.p[a], g.d[a], p.ceil_mode);
    CK_CHECK_VALUE(g.out[a] >= 1, "output size is too small for kernel_size, stride, padding and dilation: input ",
                   shape_str(in), " with kernel_size ", g.k[a], ", stride ", g.s[a], ", padding ", g.p[a], ", dilation ", g.d[a], " gives ", g.out[a],
                   " outputs along a spatial dim");
  }
  int64_t n = 1;
  for (int i = 0; i < in.ndim; ++i) n = checked_mul(n, in.shape[i], "the number of elements");
  g.channels_last = !in.is_contiguous() && in.is_channels_last();
  CK_CHECK_VALUE(in.is_contiguous() || in.is_channels_last(), name,
                 ": expected a contiguous or channels_last tensor (the Python API converts other layouts)");
  return g;
}

void out_shape(const PoolGeom& g, int nd, int64_t* shape) {
  shape[0] = g.N;
  shape[1] = g.C;
  for (int i = 0; i < nd; ++i) shape[2 + i] = g.out[3 - nd + i];
}

// The output side must have the input side's layout: kernels index both with one layout.
void check_layout(const TensorView& t, const char* name, const PoolGeom& g) {
  bool ok = g.channels_last ? t.is_channels_last() : t.is_contiguous();
  CK_CHECK_VALUE(ok, name, ": expected a ", g.channels_last ? "channels_last" : "contiguous",
                 " tensor, matching the layout of the pooled input");
}

void check_index(const TensorView& idx, const char* name, PoolIndex mode, const PoolGeom& g, const int64_t* shape,
                 int ndim, const TensorView& ref, const char* ref_name) {
  CK_CHECK_VALUE(int(mode) >= 0 && int(mode) <= 2, "index mode must be 0 (none), 1 (local) or 2 (flat)");
  if (mode == PoolIndex::none) {
    CK_CHECK_VALUE(idx.ndim == 0, name, ": given, but the index mode is none");
    return;
  }
  if (mode == PoolIndex::local) {
    check_dtype(idx, name, {DType::u8});
    CK_CHECK_VALUE(g.k[0] <= 256 && g.k[1] <= 256 && g.k[2] <= 256 && g.k[0] * g.k[1] * g.k[2] <= 256, name,
                   ": local (uint8) indices need a window of at most 256 elements; use flat indices");
  } else {
    check_dtype(idx, name, {DType::i64});
  }
  check_shape(idx, name, shape, ndim);
  check_same_device(idx, name, ref, ref_name);
  check_layout(idx, name, g);
}

}  // namespace

std::vector<int64_t> max_pool_output_shape(const std::vector<int64_t>& in_shape, const PoolParams& p) {
  TensorView v;  // shape only, laid out contiguously
  CK_CHECK_VALUE(in_shape.size() <= size_t(kMaxDims), "x: too many dimensions");
  v.ndim = int(in_shape.size());
  int64_t stride = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = in_shape[i];
    v.strides[i] = stride;
    stride *= std::max<int64_t>(1, in_shape[i]);
  }
  PoolGeom g = make_geom(v, "x", p);
  int64_t shape[5];
  out_shape(g, p.nd, shape);
  return std::vector<int64_t>(shape, shape + p.nd + 2);
}

void max_pool_forward(const TensorView& x, const TensorView& out, const TensorView& idx, const PoolParams& p,
                      PoolIndex mode, bool use_emu, void* stream) {
  check_dtype(x, "x", {DType::f32, DType::f64});
  PoolGeom g = make_geom(x, "x", p);
  int64_t shape[5];
  out_shape(g, p.nd, shape);
  check_same_dtype(out, "out", x, "x");
  check_shape(out, "out", shape, p.nd + 2);
  check_same_device(out, "out", x, "x");
  check_layout(out, "out", g);
  check_writable(out, "out");
  check_no_overlap(out, "out", x, "x");
  check_index(idx, "indices", mode, g, shape, p.nd + 2, x, "x");
  if (mode != PoolIndex::none) {
    check_writable(idx, "indices");
    check_no_overlap(idx, "indices", x, "x");
    check_no_overlap(idx, "indices", out, "out");
  }
  Backend b = pick_backend(x, use_emu);
  if (g.N == 0) return;
  PoolForwardArgs a{g, x.dtype, mode, x.data, out.data, mode == PoolIndex::none ? nullptr : idx.data, x.device.index};
  if (b == Backend::cpu)
    CK_CPU_CALL(max_pool_forward_cpu, a);
  else
    kernels<PoolKernels>(b, "pool").forward(a, stream);
}

void max_pool_backward(const TensorView& grad_out, const TensorView& idx, const TensorView& grad_in,
                       const PoolParams& p, PoolIndex mode, bool use_emu, void* stream) {
  check_dtype(grad_in, "grad_input", {DType::f32, DType::f64});
  PoolGeom g = make_geom(grad_in, "grad_input", p);
  int64_t shape[5];
  out_shape(g, p.nd, shape);
  check_same_dtype(grad_out, "grad_output", grad_in, "grad_input");
  check_shape(grad_out, "grad_output", shape, p.nd + 2);
  check_same_device(grad_out, "grad_output", grad_in, "grad_input");
  check_layout(grad_out, "grad_output", g);
  CK_CHECK_VALUE(mode != PoolIndex::none, "the backward pass needs indices (local or flat)");
  check_index(idx, "indices", mode, g, shape, p.nd + 2, grad_in, "grad_input");
  check_writable(grad_in, "grad_input");
  check_no_overlap(grad_in, "grad_input", grad_out, "grad_output");
  check_no_overlap(grad_in, "grad_input", idx, "indices");
  Backend b = pick_backend(grad_in, use_emu);
  if (g.N == 0) return;
  PoolBackwardArgs a{g, grad_in.dtype, mode, grad_out.data, idx.data, grad_in.data, grad_in.device.index};
  if (b == Backend::cpu)
    CK_CPU_CALL(max_pool_backward_cpu, a);
  else
    kernels<PoolKernels>(b, "pool").backward(a, stream);
}

}  // namespace ck
