// OpenMP helpers: one thread-count setting for the whole extension, and the only ways cellkern opens a parallel
// region (parallel_for, dynamic_for, run_workers), each of which carries exceptions out of the region.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
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

// An exception must not leave an OpenMP region's thread: the runtime calls std::terminate, so an out-of-memory
// error in a worker killed the Python process where the same call on one thread raised MemoryError. Every region
// runs its work through one of these: the first exception is kept (later ones are dropped), work not yet started
// is skipped once one is kept, and the caller rethrows it after the region has joined, on the calling thread,
// where the bindings turn it into the matching Python exception.
class RegionErrors {
 public:
  // Runs f() unless an earlier piece of work failed; keeps its exception instead of letting it out.
  template <class F>
  void run(const F& f) noexcept {
    if (failed()) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  // Call after the region: rethrows the kept exception, if any.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr first_;
};

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
    RegionErrors errors;
#pragma omp parallel num_threads(nt)
    {
      int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      int64_t chunk = (n + T - 1) / T, b = t * chunk, e = std::min(n, b + chunk);
      if (b < e) errors.run([&] { f(b, e); });
    }
    errors.rethrow();
    return;
  }
#endif
  f(int64_t(0), n);
}

// Below this much work (elements touched) dynamic_for stays on one thread: a parallel region costs little on an
// idle machine but a whole scheduler time slice (milliseconds) when the cores are oversubscribed.
constexpr int64_t kSerialWork = int64_t(1) << 20;

// Runs f(i) for i in [0, n) with dynamic scheduling, for loops whose items vary a lot in cost (objects unevenly
// spread over rows), where static chunks would leave a thread idle. Serial when `work` <= serial_work.
template <class F>
void dynamic_for(int64_t n, int64_t work, const F& f, int64_t serial_work = kSerialWork) {
#ifdef _OPENMP
  const int nt = usable_threads();
  if (nt > 1 && n > 1 && work > serial_work) {
    RegionErrors errors;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < n; ++i) errors.run([&] { f(i); });
    errors.rethrow();
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

// Runs f(w) for each worker w in [0, workers), concurrently (one thread each) when `parallel` and not already
// inside a region, else one after the other: for kernels that split work into per-worker parts themselves.
template <class F>
void run_workers(int workers, bool parallel, const F& f) {
#ifdef _OPENMP
  if (parallel && workers > 1 && !omp_in_parallel()) {
    RegionErrors errors;
#pragma omp parallel for schedule(static, 1) num_threads(workers)
    for (int w = 0; w < workers; ++w) errors.run([&] { f(w); });
    errors.rethrow();
    return;
  }
#endif
  for (int w = 0; w < workers; ++w) f(w);
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
