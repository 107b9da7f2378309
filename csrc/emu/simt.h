// The CPU SIMT emulator: lets g++ compile and run CUDA kernel source, one fiber per CUDA thread.
//
// Include this instead of the CUDA headers (csrc/cuda/launch.cuh does it when __CUDACC__ is not defined).
// Each thread block runs on one worker OS thread; its CUDA threads are fibers that switch only at
// __syncthreads, __syncwarp, shuffles, votes and the end of the kernel. Between those points threads run one
// after another in an order set by CELLKERN_EMU_ORDER = forward | reverse | random[:seed], so a missing barrier
// shows up as a wrong answer in some order. Misuse (an early return before a barrier other threads wait at,
// divergent barriers, warp collectives with inconsistent masks, deadlocks, bad launch configurations) throws
// std::runtime_error naming the file and line. __shared__ is block-local (thread_local: a block never leaves
// its worker), atomics are real atomics (blocks run concurrently on CELLKERN_EMU_WORKERS threads).
#pragma once
#if defined(__CUDACC__)
#error "simt.h emulates CUDA for host compilers; nvcc builds use the CUDA runtime"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define CK_EMU 1

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef void* cudaStream_t;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Block-local: a block runs start to finish on one worker thread, and blocks on one worker run in turn.
#define __shared__ static thread_local

namespace ck_emu {

struct ThreadState {
  uint3 thread_idx;
};
struct BlockState {
  uint3 block_idx;
  dim3 block_dim, grid_dim;
  unsigned char* dynamic_smem;
};
// The running CUDA thread and its block, set by the scheduler before it switches to a fiber.
extern thread_local ThreadState* g_thread;
extern thread_local BlockState* g_block;

enum class Collective : int { shfl, shfl_up, shfl_down, shfl_xor, ballot, any, all, syncwarp };
uint64_t warp_collective(Collective op, unsigned mask, uint64_t value, int arg, int width, const char* file, int line);
int block_barrier(int kind, int predicate, const char* file, int line);  // kind: 0 sync, 1 count, 2 and, 3 or
unsigned active_mask();
inline unsigned char* dynamic_smem() { return g_block->dynamic_smem; }

// Runs the kernel body for every thread of every block; throws std::runtime_error on misuse.
void run_grid(const char* kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem,
              const std::function<void()>& body);

template <class... P, class... A>
void launch(const char* kernel, const char* file, int line, dim3 grid, dim3 block, size_t smem, void (*fn)(P...),
            A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  // Converted to the parameter types once, as cudaLaunchKernel copies them; each thread gets its own copy.
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  run_grid(kernel, file, line, grid, block, smem, [&] { std::apply(fn, params); });
}

template <class T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collectives move up to 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <class T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <class T>
T shfl(Collective op, unsigned mask, T v, const char* file, int line, int arg, int width = 32) {
  return from_bits<T>(warp_collective(op, mask, to_bits(v), arg, width, file, line));
}

// Atomics: real ones, since blocks run concurrently.
template <class T>
T atomic_add(T* p, T v) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  } else {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_SEQ_CST), next;
    do {
      next = to_bits(from_bits<T>(old) + v);
    } while (!__atomic_compare_exchange_n(q, &old, next, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return from_bits<T>(old);
  }
}
template <class T, class F>
T atomic_update(T* p, F f) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (!__atomic_compare_exchange_n(p, &old, f(old), false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}

}  // namespace ck_emu

#define threadIdx (::ck_emu::g_thread->thread_idx)
#define blockIdx (::ck_emu::g_block->block_idx)
#define blockDim (::ck_emu::g_block->block_dim)
#define gridDim (::ck_emu::g_block->grid_dim)
#define warpSize 32

#define __syncthreads() ((void)::ck_emu::block_barrier(0, 0, __FILE__, __LINE__))
#define __syncthreads_count(p) ::ck_emu::block_barrier(1, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_and(p) ::ck_emu::block_barrier(2, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncthreads_or(p) ::ck_emu::block_barrier(3, (p) ? 1 : 0, __FILE__, __LINE__)
#define __syncwarp(...) ::ck_emu::syncwarp_at(__FILE__, __LINE__, ##__VA_ARGS__)
#define __activemask() ::ck_emu::active_mask()

// __shfl_*_sync(mask, v, lane_or_delta[, width])
#define __shfl_sync(mask, v, ...) ::ck_emu::shfl(::ck_emu::Collective::shfl, mask, v, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) \
  ::ck_emu::shfl(::ck_emu::Collective::shfl_up, mask, v, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) \
  ::ck_emu::shfl(::ck_emu::Collective::shfl_down, mask, v, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) \
  ::ck_emu::shfl(::ck_emu::Collective::shfl_xor, mask, v, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, p) \
  unsigned(::ck_emu::warp_collective(::ck_emu::Collective::ballot, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, p) \
  int(::ck_emu::warp_collective(::ck_emu::Collective::any, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, p) \
  int(::ck_emu::warp_collective(::ck_emu::Collective::all, mask, (p) ? 1 : 0, 0, 32, __FILE__, __LINE__))

namespace ck_emu {
inline void syncwarp_at(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_collective(Collective::syncwarp, mask, 0, 0, 32, file, line);
}
}  // namespace ck_emu

// Device intrinsics used by cellkern kernels.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __int_as_float(int v) { return ck_emu::from_bits<float>(uint32_t(v)); }
inline int __float_as_int(float v) { return int(uint32_t(ck_emu::to_bits(v))); }
inline unsigned __float_as_uint(float v) { return uint32_t(ck_emu::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return ck_emu::from_bits<float>(v); }
inline long long __double_as_longlong(double v) { return (long long)ck_emu::to_bits(v); }
inline double __longlong_as_double(long long v) { return ck_emu::from_bits<double>(uint64_t(v)); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(unsigned(v)); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : a > 1.f ? 1.f : a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float rsqrtf(float a) { return 1.f / std::sqrt(a); }

template <class T>
inline T atomicAdd(T* p, T v) {
  return ck_emu::atomic_add(p, v);
}
template <class T>
inline T atomicSub(T* p, T v) {
  return ck_emu::atomic_add(p, T(0) - v);
}
template <class T>
inline T atomicMax(T* p, T v) {
  return ck_emu::atomic_update(p, [v](T o) { return o < v ? v : o; });
}
template <class T>
inline T atomicMin(T* p, T v) {
  return ck_emu::atomic_update(p, [v](T o) { return v < o ? v : o; });
}
template <class T>
inline T atomicExch(T* p, T v) {
  return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  __atomic_compare_exchange_n(p, &compare, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return compare;
}
template <class T>
inline T atomicOr(T* p, T v) {
  return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
template <class T>
inline T atomicAnd(T* p, T v) {
  return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
}
