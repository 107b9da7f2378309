// Max-pooling CUDA kernels and launchers; nvcc builds them into _cuda, g++ with the emulator into _emu.
#pragma once
#include "cuda/launch.cuh"
#include "ops/pool/pool.h"
#include "ops/pool/pool_math.h"

CK_NS_BEGIN
namespace pool_cuda {

// One thread per output element, in the output's memory order.
template <class T, int Mode>
__global__ void forward_kernel(const T* __restrict__ x, T* __restrict__ out, void* __restrict__ idx, PoolGeom g) {
  const int64_t total = g.N * g.C * g.out[0] * g.out[1] * g.out[2];
  CK_KERNEL_LOOP(i, total) {
    const pool::Coord o = pool::unravel(i, g.C, g.out, g.channels_last);
    int64_t sd, sh, sw;
    const int64_t base = pool::slice_offset(o.n, o.c, g.C, g.in, g.channels_last, sd, sh, sw);
    const pool::WindowMax<T> m = pool::window_max(x + base, sd, sh, sw, g, o.d, o.h, o.w);
    out[i] = m.val;
    if (Mode == int(PoolIndex::local)) static_cast<uint8_t*>(idx)[i] = uint8_t(m.local);
    if (Mode == int(PoolIndex::flat)) static_cast<int64_t*>(idx)[i] = m.flat;
  }
}

// One thread per input element gathers from the windows that contain it: no atomics, deterministic.
template <class T, class I>
__global__ void backward_kernel(const T* __restrict__ gout, const I* __restrict__ idx, T* __restrict__ gin, PoolGeom g,
                                PoolIndex mode) {
  const int64_t total = g.N * g.C * g.in[0] * g.in[1] * g.in[2];
  CK_KERNEL_LOOP(i, total) {
    const pool::Coord p = pool::unravel(i, g.C, g.in, g.channels_last);
    int64_t sd, sh, sw;
    const int64_t base = pool::slice_offset(p.n, p.c, g.C, g.out, g.channels_last, sd, sh, sw);
    gin[i] = pool::input_grad(gout + base, idx + base, sd, sh, sw, mode, g, p.d, p.h, p.w);
  }
}

constexpr int kThreads = 256;

template <class T>
void forward_typed(const PoolForwardArgs& a, void* stream) {
  const PoolGeom& g = a.g;
  const int64_t total = g.N * g.C * g.out[0] * g.out[1] * g.out[2];
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  auto k0 = &forward_kernel<T, 0>;
  auto k1 = &forward_kernel<T, 1>;
  auto k2 = &forward_kernel<T, 2>;
  auto k = a.mode == PoolIndex::none ? k0 : a.mode == PoolIndex::local ? k1 : k2;
  CK_LAUNCH(k, cuda::blocks_for(total, kThreads), kThreads, 0, stream, x, out, a.idx, g);
}

template <class T>
void backward_typed(const PoolBackwardArgs& a, void* stream) {
  const PoolGeom& g = a.g;
  const int64_t total = g.N * g.C * g.in[0] * g.in[1] * g.in[2];
  const T* go = static_cast<const T*>(a.grad_out);
  T* gi = static_cast<T*>(a.grad_in);
  const unsigned blocks = cuda::blocks_for(total, kThreads);
  if (a.mode == PoolIndex::local) {
    auto k = &backward_kernel<T, uint8_t>;
    CK_LAUNCH(k, blocks, kThreads, 0, stream, go, static_cast<const uint8_t*>(a.idx), gi, g, a.mode);
  } else {
    auto k = &backward_kernel<T, int64_t>;
    CK_LAUNCH(k, blocks, kThreads, 0, stream, go, static_cast<const int64_t*>(a.idx), gi, g, a.mode);
  }
}

inline void forward(const PoolForwardArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, forward_typed<scalar_t>(a, stream));
}

inline void backward(const PoolBackwardArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, backward_typed<scalar_t>(a, stream));
}

}  // namespace pool_cuda
CK_NS_END
