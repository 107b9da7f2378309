// Kernels that prove the emulator right (and able to fail); nvcc compiles them too, so they stay valid CUDA.
#pragma once
#include "cuda/launch.cuh"

namespace ck {
namespace selftest {

// Reverses n <= 1024 values through shared memory. Without the barrier, each thread reads a slot its
// partner may not have written yet: wrong in every order, since fibers only switch at barriers.
template <bool Sync>
__global__ void reverse_kernel(const float* in, float* out, int n) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  s[t] = in[t];
  if (Sync) __syncthreads();
  out[t] = s[n - 1 - t];
}

// Each iteration stages a tile, then thread t adds its right neighbour's slot. The barrier after the read
// is the one people forget: without it, a thread that runs ahead overwrites its slot before the left
// neighbour has read it. Visible in reverse order, invisible in forward order: orders matter.
template <bool SecondSync>
__global__ void neighbour_sum_kernel(const float* in, float* out, int n, int iters) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  float acc = 0.f;
  for (int k = 0; k < iters; ++k) {
    s[t] = in[k * n + t];
    __syncthreads();
    if (t + 1 < n) acc += s[t + 1];
    if (SecondSync) __syncthreads();
  }
  out[t] = acc;
}

// Thread 5 returns early; the others then wait at a barrier: the emulator must name that barrier.
__global__ void early_return_kernel(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

// Half the block waits at one barrier, half at another: undefined on a GPU, an error here.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// Warp collectives: out has 6 * blockDim.x slots per block: [sum via shfl_down, sum via xor butterfly,
// broadcast of lane 3, inclusive scan via shfl_up, ballot of odd values, any/all flags].
__global__ void warp_kernel(const int* in, int* out) {
  const int t = threadIdx.x + blockIdx.x * blockDim.x, lane = threadIdx.x & 31, n = blockDim.x * gridDim.x;
  const int v = in[t];
  int down = v;
  for (int off = 16; off > 0; off >>= 1) down += __shfl_down_sync(0xffffffffu, down, off);
  int bfly = v;
  for (int m = 1; m < 32; m <<= 1) bfly += __shfl_xor_sync(0xffffffffu, bfly, m);
  const int bcast = __shfl_sync(0xffffffffu, v, 3);
  int scan = v;
  for (int off = 1; off < 32; off <<= 1) {
    int up = __shfl_up_sync(0xffffffffu, scan, off);
    if (lane >= off) scan += up;
  }
  __syncwarp();
  const unsigned odd = __ballot_sync(0xffffffffu, v & 1);
  const int flags = (__any_sync(0xffffffffu, v > 1000) ? 1 : 0) | (__all_sync(0xffffffffu, v >= 0) ? 2 : 0);
  out[0 * n + t] = down;  // lane 0 holds the warp sum
  out[1 * n + t] = bfly;  // every lane holds the warp sum
  out[2 * n + t] = bcast;
  out[3 * n + t] = scan;
  out[4 * n + t] = int(odd);
  out[5 * n + t] = flags;
}

// Shuffles within 8-lane segments (width argument).
__global__ void segment_sum_kernel(const float* in, float* out) {
  const int t = threadIdx.x + blockIdx.x * blockDim.x;
  float v = in[t];
  for (int m = 1; m < 8; m <<= 1) v += __shfl_xor_sync(0xffffffffu, v, m, 8);
  out[t] = v;
}

// Lane 0 waits at a shuffle that lane 1 never reaches (lane 1 is at __syncthreads): a deadlock to report.
__global__ void warp_deadlock_kernel(int* out) {
  if (threadIdx.x == 1) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, int(threadIdx.x), 0);
    __syncthreads();
  }
}

// Atomics across blocks: a histogram (int) and a total (float).
__global__ void atomics_kernel(const int* in, int n, int* hist, int bins, float* total) {
  CK_KERNEL_LOOP(i, n) {
    atomicAdd(&hist[in[i] % bins], 1);
    atomicAdd(total, 1.0f);
  }
}

// Every block writes its id into block-shared memory, syncs, and checks it reads back its own id.
__global__ void block_isolation_kernel(int* out) {
  __shared__ int mine;
  if (threadIdx.x == 0) mine = int(blockIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = mine;
}

// Records the order threads run in (ticket per thread, between two barriers).
__global__ void order_kernel(int* ticket, int* counter) {
  __syncthreads();
  ticket[threadIdx.x] = atomicAdd(counter, 1);
}

// Block sum through dynamic shared memory and __syncthreads_count.
__global__ void block_sum_kernel(const float* in, float* out, int* positives) {
  CK_DYNAMIC_SMEM(float, s);
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * blockDim.x + t];
  const int pos = __syncthreads_count(s[t] > 0.f);
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if (t < half) s[t] += s[t + half];
    __syncthreads();
  }
  if (t == 0) {
    out[blockIdx.x] = s[0];
    positives[blockIdx.x] = pos;
  }
}

// Host launchers, declared in emu/selftest.h (pointers are device memory under CUDA, host memory under the
// emulator). Not inline: defined once, in the one TU per module that includes this file.
void reverse(const float* in, float* out, int n, bool sync) {
  auto k = sync ? &reverse_kernel<true> : &reverse_kernel<false>;
  CK_LAUNCH(k, 1, n, 0, nullptr, in, out, n);
}
void neighbour_sum(const float* in, float* out, int n, int iters, bool second_sync) {
  auto k = second_sync ? &neighbour_sum_kernel<true> : &neighbour_sum_kernel<false>;
  CK_LAUNCH(k, 1, n, 0, nullptr, in, out, n, iters);
}
void early_return(float* out) { CK_LAUNCH(early_return_kernel, 1, 32, 0, nullptr, out); }
void divergent_barrier(float* out) { CK_LAUNCH(divergent_barrier_kernel, 1, 32, 0, nullptr, out); }
void warp_ops(const int* in, int* out, int blocks, int threads) {
  CK_LAUNCH(warp_kernel, blocks, threads, 0, nullptr, in, out);
}
void segment_sum(const float* in, float* out, int blocks, int threads) {
  CK_LAUNCH(segment_sum_kernel, blocks, threads, 0, nullptr, in, out);
}
void warp_deadlock(int* out) { CK_LAUNCH(warp_deadlock_kernel, 1, 32, 0, nullptr, out); }
void atomics(const int* in, int n, int* hist, int bins, float* total, int blocks) {
  CK_LAUNCH(atomics_kernel, blocks, 128, 0, nullptr, in, n, hist, bins, total);
}
void block_isolation(int* out, int blocks, int threads) {
  CK_LAUNCH(block_isolation_kernel, blocks, threads, 0, nullptr, out);
}
void order(int* ticket, int* counter, int threads) { CK_LAUNCH(order_kernel, 1, threads, 0, nullptr, ticket, counter); }
void block_sum(const float* in, float* out, int* positives, int blocks, int threads) {
  CK_LAUNCH(block_sum_kernel, blocks, threads, threads * sizeof(float), nullptr, in, out, positives);
}
void bad_launch(float* out) { CK_LAUNCH(early_return_kernel, 1, 2048, 0, nullptr, out); }

}  // namespace selftest
}  // namespace ck
