// Convolution CUDA kernels and launchers (nvcc builds them into _cuda, g++ with the emulator into _emu): one
// shared-memory tiled implicit GEMM, C[m][n] = sum_k A(m, k) B(k, n), whose operands are gathered on the fly
// by three problem types (forward, gradient of the input, gradient of the weight and bias), float32 or
// float64 accumulating in the input's type (the gradient of the input with a bias is the transposed
// convolution; the gradients read gy through a fused activation's derivative); plus the padding fold and
// per-channel bias sums.
#pragma once
#include "cuda/launch.cuh"
#include "ops/conv/conv.h"
#include "ops/conv/conv_math.h"

CK_NS_BEGIN
namespace conv_cuda {

// Block tile BM x BN, staged BK deep through shared memory; 256 threads each own a TM x TN sub-tile.
constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4, kThreads = 256;

// Spatial coordinates of flat position p in a (D, H, W) plane.
struct Pos {
  int64_t d, h, w;
};
CK_HD Pos unravel(int64_t p, const int64_t* sz) {
  Pos r;
  r.w = p % sz[2];
  p /= sz[2];
  r.h = p % sz[1];
  r.d = p / sz[1];
  return r;
}

// Forward: m = output channel, k = (c, kd, kh, kw), n = (batch, output position).
template <class T>
struct ForwardProblem {
  ConvGeom g;
  ConvInput x;
  const T* w;
  const T* b;
  T* y;
  Act act;
  T slope;
  int64_t M, N, K;
  int64_t kvol, pin, pout;

  __device__ T a(int64_t m, int64_t k) const { return w[m * K + k]; }
  __device__ T bval(int64_t k, int64_t n) const {
    const int64_t c = k / kvol, t = k % kvol, nb = n / pout;
    const Pos o = unravel(n % pout, g.out), kk = unravel(t, g.k);
    return conv::input_tap(conv::input_plane<T>(x, nb, c, pin), g, o.d, o.h, o.w, kk.d, kk.h, kk.w);
  }
  __device__ void store(int64_t m, int64_t n, T v) const {
    if (b) v += b[m];
    const int64_t nb = n / pout;
    y[nb * g.y_bs + m * pout + n % pout] = conv::act_apply(v, act, slope);
  }
};

// Gradient of the input (zero padding), plus a bias for the transposed convolution: m = input channel,
// k = (o, kd, kh, kw), n = (batch, input position); weight rows are w_cin channels wide.
template <class T>
struct GradInputProblem {
  ConvGeom g;
  const T* gy;
  const T* act_y;  // the forward's output when an activation is fused (gy is read through its derivative)
  Act act;
  T slope;
  const T* w;
  const T* b;
  T* gx;
  int64_t w_cin;
  int64_t M, N, K;
  int64_t kvol, pin, pout;

  __device__ T a(int64_t m, int64_t k) const {
    const int64_t o = k / kvol, t = k % kvol;
    return w[(o * w_cin + m) * kvol + t];
  }
  __device__ T bval(int64_t k, int64_t n) const {
    const int64_t o = k / kvol, t = k % kvol, nb = n / pin;
    const Pos i = unravel(n % pin, g.in), kk = unravel(t, g.k);
    const int64_t at = nb * g.y_bs + o * pout;
    return conv::output_tap(gy + at, act_y ? act_y + at : nullptr, act, slope, g, i.d, i.h, i.w, kk.d, kk.h, kk.w);
  }
  __device__ void store(int64_t m, int64_t n, T v) const {
    const int64_t nb = n / pin;
    gx[nb * g.x_bs + m * pin + n % pin] = b ? v + b[m] : v;
  }
};

// Gradient of weight and bias: m = output channel, n = (c, kd, kh, kw) plus one column of ones for the bias,
// k = (batch, output position), split over blockIdx.z; partial sums meet in atomics on zeroed outputs.
template <class T>
struct GradWeightProblem {
  ConvGeom g;
  const T* gy;
  const T* act_y;  // as GradInputProblem's
  Act act;
  T slope;
  ConvInput x;
  T* gw;
  T* gb;
  int64_t M, N, K;
  int64_t kvol, pin, pout, E;

  __device__ T a(int64_t m, int64_t k) const {
    const int64_t nb = k / pout, i = nb * g.y_bs + m * pout + k % pout;
    return act_y ? conv::act_grad(act_y[i], gy[i], act, slope) : gy[i];
  }
  __device__ T bval(int64_t k, int64_t n) const {
    if (n == E) return T(1);
    const int64_t c = n / kvol, t = n % kvol, nb = k / pout;
    const Pos o = unravel(k % pout, g.out), kk = unravel(t, g.k);
    return conv::input_tap(conv::input_plane<T>(x, nb, c, pin), g, o.d, o.h, o.w, kk.d, kk.h, kk.w);
  }
  __device__ void store(int64_t m, int64_t n, T v) const {
    if (n < E)
      atomicAdd(gw + m * E + n, v);
    else if (gb)
      atomicAdd(gb + m, v);
  }
};

// C = A B over the K range of this blockIdx.z. Shared tiles are stored k-major so that the inner product
// reads TM (TN) consecutive values per k.
template <class T, class P>
__global__ void __launch_bounds__(kThreads) gemm_kernel(P p, int64_t k_chunk) {
  __shared__ T As[BK][BM + 1];
  __shared__ T Bs[BK][BN + 1];
  const int tid = threadIdx.x, tx = tid % (BN / TN), ty = tid / (BN / TN);
  const int64_t m0 = int64_t(blockIdx.y) * BM, n0 = int64_t(blockIdx.x) * BN;
  const int64_t kb = int64_t(blockIdx.z) * k_chunk;
  const int64_t ke = kb + k_chunk < p.K ? kb + k_chunk : p.K;
  T acc[TM][TN];
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  for (int64_t k0 = kb; k0 < ke; k0 += BK) {
    // Each thread stages BM * BK / kThreads elements of each operand; consecutive threads take consecutive
    // m (n) so that the gathers coalesce along the fastest tensor dim.
    for (int l = tid; l < BM * BK; l += kThreads) {
      const int mm = l % BM, kk = l / BM;
      const int64_t m = m0 + mm, k = k0 + kk;
      As[kk][mm] = m < p.M && k < ke ? p.a(m, k) : T(0);
    }
    for (int l = tid; l < BN * BK; l += kThreads) {
      const int nn = l % BN, kk = l / BN;
      const int64_t n = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = n < p.N && k < ke ? p.bval(k, n) : T(0);
    }
    __syncthreads();
    for (int kk = 0; kk < BK; ++kk) {
      T av[TM], bv[TN];
      for (int i = 0; i < TM; ++i) av[i] = As[kk][ty * TM + i];
      for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx + j * (BN / TN)];
      for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
    }
    __syncthreads();
  }
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) {
      const int64_t m = m0 + ty * TM + i, n = n0 + tx + j * (BN / TN);
      if (m < p.M && n < p.N) p.store(m, n, acc[i][j]);
    }
}

// The grid of a problem: n tiles on x (up to 2^31 - 1), m tiles on y, K splits on z.
template <class T, class P>
void launch_gemm(const P& p, int64_t k_chunk, void* stream) {
  const int64_t gx = (p.N + BN - 1) / BN, gy = (p.M + BM - 1) / BM, gz = (p.K + k_chunk - 1) / k_chunk;
  if (gx <= 0 || gy <= 0 || gz <= 0) return;
  CK_CHECK(gx < (int64_t(1) << 31) && gy <= 65535 && gz <= 65535, "convolution too large for one CUDA grid");
  auto k = &gemm_kernel<T, P>;
  CK_LAUNCH(k, dim3(unsigned(gx), unsigned(gy), unsigned(gz)), kThreads, 0, stream, p, k_chunk);
}

inline int64_t kvol(const ConvGeom& g) { return g.k[0] * g.k[1] * g.k[2]; }
inline int64_t plane(const int64_t* s) { return s[0] * s[1] * s[2]; }

template <class T>
void forward_typed(const ConvForwardArgs& a, void* stream) {
  const ConvGeom& g = a.g;
  ForwardProblem<T> p{g, a.x, static_cast<const T*>(a.w), static_cast<const T*>(a.b),
                      static_cast<T*>(a.y), a.act, T(a.slope), g.Cout, g.N * plane(g.out), g.Cin * kvol(g),
                      kvol(g), plane(g.in), plane(g.out)};
  launch_gemm<T>(p, p.K, stream);
}

template <class T>
void grad_input_typed(const ConvGradInputArgs& a, void* stream) {
  const ConvGeom& g = a.g;
  GradInputProblem<T> p{g, static_cast<const T*>(a.gy), static_cast<const T*>(a.act.y), a.act.act, T(a.act.slope),
                        static_cast<const T*>(a.w), static_cast<const T*>(a.b),
                        static_cast<T*>(a.gx), a.w_cin, g.Cin, g.N * plane(g.in), g.Cout * kvol(g), kvol(g),
                        plane(g.in), plane(g.out)};
  launch_gemm<T>(p, p.K, stream);
}

template <class T>
void grad_weight_typed(const ConvGradWeightArgs& a, void* stream) {
  const ConvGeom& g = a.g;
  const int64_t E = g.Cin * kvol(g);
  cuda::memset_async(a.gw, 0, size_t(g.Cout * E) * sizeof(T), stream);
  if (a.gb) cuda::memset_async(a.gb, 0, size_t(g.Cout) * sizeof(T), stream);
  GradWeightProblem<T> p{g, static_cast<const T*>(a.gy), static_cast<const T*>(a.act.y), a.act.act, T(a.act.slope),
                         a.x, static_cast<T*>(a.gw),
                         static_cast<T*>(a.gb), g.Cout, E + 1, g.N * plane(g.out), kvol(g), plane(g.in),
                         plane(g.out), E};
  // Split the long pixel reduction so that enough blocks run; chunks stay whole BK steps.
  int64_t chunk = 4096;
  while ((p.K + chunk - 1) / chunk > 4096) chunk *= 2;
  launch_gemm<T>(p, chunk, stream);
}

// One thread per input element gathers the padded positions that read it: no atomics, deterministic.
template <class T>
__global__ void fold_kernel(const T* __restrict__ gp, T* __restrict__ gx, ConvFoldArgs a) {
  const int64_t n_in = a.in[0] * a.in[1] * a.in[2];
  const int64_t P1 = a.in[1] + a.lo[1] + a.hi[1], P2 = a.in[2] + a.lo[2] + a.hi[2];
  const int64_t n_p = (a.in[0] + a.lo[0] + a.hi[0]) * P1 * P2;
  CK_KERNEL_LOOP(i, a.planes * n_in) {
    const int64_t pl = i / n_in;
    const Pos q = unravel(i % n_in, a.in);
    const T* src = gp + pl * n_p;
    T s = T(0);
    for (int64_t j0 = 0; j0 <= a.lo[0] + a.hi[0]; ++j0) {
      const int64_t q0 = conv::fold_source(q.d, a.in[0], a.lo[0], a.hi[0], a.pad, j0);
      if (q0 < 0) continue;
      for (int64_t j1 = 0; j1 <= a.lo[1] + a.hi[1]; ++j1) {
        const int64_t q1 = conv::fold_source(q.h, a.in[1], a.lo[1], a.hi[1], a.pad, j1);
        if (q1 < 0) continue;
        for (int64_t j2 = 0; j2 <= a.lo[2] + a.hi[2]; ++j2) {
          const int64_t q2 = conv::fold_source(q.w, a.in[2], a.lo[2], a.hi[2], a.pad, j2);
          if (q2 >= 0) s += src[(q0 * P1 + q1) * P2 + q2];
        }
      }
    }
    gx[i] = s;
  }
}

// One block per channel: each thread sums a strided share of the channel's values, then a shared-memory tree
// (fixed order: deterministic).
template <class T>
__global__ void __launch_bounds__(kThreads) bias_grad_kernel(const T* __restrict__ gy, T* __restrict__ gb, int64_t N,
                                                             int64_t plane, int64_t bs, int64_t cs) {
  __shared__ T part[kThreads];
  const int64_t c = blockIdx.x;
  T s = T(0);
  for (int64_t n = 0; n < N; ++n) {
    const T* p = gy + n * bs + c * cs;
    for (int64_t i = threadIdx.x; i < plane; i += kThreads) s += p[i];
  }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h /= 2) {
    if (int(threadIdx.x) < h) part[threadIdx.x] += part[threadIdx.x + h];
    __syncthreads();
  }
  if (threadIdx.x == 0) gb[c] = part[0];
}

template <class T>
void bias_grad_typed(const ConvBiasGradArgs& a, void* stream) {
  CK_CHECK(a.C <= (int64_t(1) << 31) - 1, "too many channels for one CUDA grid");
  auto k = &bias_grad_kernel<T>;
  CK_LAUNCH(k, dim3(unsigned(a.C)), kThreads, 0, stream, static_cast<const T*>(a.gy), static_cast<T*>(a.gb), a.N, a.plane,
            a.bs, a.cs);
}

template <class T>
void fold_typed(const ConvFoldArgs& a, void* stream) {
  auto k = &fold_kernel<T>;
  const int64_t n = a.planes * a.in[0] * a.in[1] * a.in[2];
  CK_LAUNCH(k, cuda::blocks_for(n, kThreads), kThreads, 0, stream, static_cast<const T*>(a.gp),
            static_cast<T*>(a.gx), a);
}

inline void forward(const ConvForwardArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, forward_typed<scalar_t>(a, stream));
}
inline void grad_input(const ConvGradInputArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, grad_input_typed<scalar_t>(a, stream));
}
inline void grad_weight(const ConvGradWeightArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, grad_weight_typed<scalar_t>(a, stream));
}
inline void fold(const ConvFoldArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, fold_typed<scalar_t>(a, stream));
}
inline void bias_grad(const ConvBiasGradArgs& a, void* stream) {
  cuda::set_device(a.device);
  CK_DISPATCH_FLOAT(a.dtype, bias_grad_typed<scalar_t>(a, stream));
}

}  // namespace conv_cuda
CK_NS_END
