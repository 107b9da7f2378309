// Launchers of the emulator's self-test kernels (emu/selftest.cuh), for the _emu bindings.
#pragma once

namespace ck {
namespace selftest {

void reverse(const float* in, float* out, int n, bool sync);
void neighbour_sum(const float* in, float* out, int n, int iters, bool second_sync);
void early_return(float* out);
void divergent_barrier(float* out);
void warp_ops(const int* in, int* out, int blocks, int threads);
void segment_sum(const float* in, float* out, int blocks, int threads);
void warp_deadlock(int* out);
void atomics(const int* in, int n, int* hist, int bins, float* total, int blocks);
void block_isolation(int* out, int blocks, int threads);
void order(int* ticket, int* counter, int threads);
void block_sum(const float* in, float* out, int* positives, int blocks, int threads);
void bad_launch(float* out);

}  // namespace selftest
}  // namespace ck
