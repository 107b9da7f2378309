// OpenMP helpers: one thread-count setting for the whole extension, and a static-chunk parallel_for.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/hd.h"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace ck {
int num_threads();  // cellkern's own setting (core/parallel.cpp); independent of torch.set_num_threads
void set_num_threads(int n);
}  // namespace ck

CK_NS_BEGIN

// Threads a parallel region opened here would get: 1 inside an enclosing region (no nested teams).
inline int usable_threads() {
#ifdef _OPENMP
  return omp_in_parallel() ? 1 : std::max(1, num_threads());
#else
  return 1;
#endif
}

// Calls f(begin, end) on contiguous chunks of [0, n), one chunk per thread; serial when the work is small
// (n <= grain) or when already inside a parallel region (no nested teams).
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& f) {
  if (n <= 0) return;
#ifdef _OPENMP
  int nt = num_threads();
  if (nt > 1 && n > grain && !omp_in_parallel()) {
    int64_t max_chunks = grain > 0 ? (n + grain - 1) / grain : n;
    nt = int(std::min<int64_t>(nt, max_chunks));
#pragma omp parallel num_threads(nt)
    {
      int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      int64_t chunk = (n + T - 1) / T, b = t * chunk, e = std::min(n, b + chunk);
      if (b < e) f(b, e);
    }
    return;
  }
#endif
  f(int64_t(0), n);
}

// Splits rows [0, n) of an output whose row r starts at base + r * row_bytes into groups [g[i], g[i + 1]) of the
// rows whose middle byte lies on the same 2 MiB page. Threads that take whole groups first-touch different
// transparent huge pages: the kernel zeroes a fresh 2 MiB page while a second thread faulting on it waits, so
// interleaving the rows of one page between threads serialises the zeroing (star_dist 2048^2 on 2 threads, fresh
// output: 60 -> 52 ms, minima of 12). Too few groups to balance `threads` falls back to one row per group.
inline std::vector<int64_t> page_groups(const void* base, int64_t row_bytes, int64_t n, int threads) {
  constexpr uint64_t kPage = uint64_t(2) << 20;
  std::vector<int64_t> g{0};
  const uint64_t mid = uint64_t(reinterpret_cast<uintptr_t>(base)) + uint64_t(row_bytes) / 2;
  for (int64_t r = 1; r < n; ++r)
    if ((mid + uint64_t(r) * uint64_t(row_bytes)) / kPage != (mid + uint64_t(r - 1) * uint64_t(row_bytes)) / kPage)
      g.push_back(r);
  if (int64_t(g.size()) < 8 * int64_t(threads)) {
    g.resize(size_t(n));
    for (int64_t r = 0; r < n; ++r) g[size_t(r)] = r;
  }
  g.push_back(n);
  return g;
}

CK_NS_END
