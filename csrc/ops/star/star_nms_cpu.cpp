// Polygon non-maximum suppression on the CPU: candidate gathering + stable radix sort, per-candidate geometry
// (OpenMP), a bucket grid over centres, and the greedy sweep deciding each pair with star::suppresses (with a
// helper thread precomputing the pairs of likely kept candidates).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <sys/mman.h>

#include "core/check.h"
#include "core/parallel.h"
#include "ops/star/star.h"
#include "ops/star/star_math.h"

CK_NS_BEGIN
namespace {

// Per-thread scratch that survives across calls. Freed memory of this size goes back to the OS between calls,
// and mapping it again costs a page fault per 4 KiB (~8000 of them, 20 ms, for a 2048^2 image): reusing the
// buffers avoids that. Contents are not preserved; callers initialise what they read. Over kScratchCap bytes the
// buffers are released after the call.
constexpr size_t kScratchCap = size_t(256) << 20;
constexpr size_t kHugePage = size_t(2) << 20;
// One buffer, 2 MiB aligned and advised into transparent huge pages: the sweep reads the per-slot arrays (tens
// of MB on large images) at scattered slots, which 4 KiB pages turn into TLB misses as well as cache misses.
struct ScratchBuf {
  void* p = nullptr;
  size_t cap = 0;
  ~ScratchBuf() { release(); }
  void release() {
    std::free(p);
    p = nullptr;
    cap = 0;
  }
  void* get(size_t bytes) {
    if (bytes <= cap) return p;
    release();
    const size_t sz = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    p = std::aligned_alloc(kHugePage, sz);
    CK_CHECK(p != nullptr, "star NMS: out of memory allocating ", sz, " bytes of scratch");
#ifdef MADV_HUGEPAGE
    madvise(p, sz, MADV_HUGEPAGE);  // advice only: without THP this is 4 KiB pages as before
#endif
    cap = sz;
    return p;
  }
};
ScratchBuf& scratch_buf(int slot) {
  thread_local ScratchBuf bufs[16];
  return bufs[slot];
}
template <class T>
T* scratch(int slot, size_t n) {
  return static_cast<T*>(scratch_buf(slot).get(std::max<size_t>(1, n) * sizeof(T)));
}
void scratch_trim() {
  size_t total = 0;
  for (int i = 0; i < 16; ++i) total += scratch_buf(i).cap;
  if (total > kScratchCap)
    for (int i = 0; i < 16; ++i) scratch_buf(i).release();
}

// Key whose ascending order is descending probability (-0 folded into +0, so equal values compare equal).
uint32_t desc_key(float p) {
  if (p == 0) p = 0;
  uint32_t u;
  std::memcpy(&u, &p, 4);
  const uint32_t asc = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~asc;
}

// Whether every |value| is at most kStarDistMax (so finite), from the bits: the magnitude of an IEEE value orders
// like its bits without the sign, and NaN and infinities sort above every finite value (integer ops: the loop
// vectorises, a floating-point compare chain with NaN semantics does not).
template <class D>
bool all_in_range(const D* v, int n) {
  using U = typename std::conditional<sizeof(D) == 4, uint32_t, uint64_t>::type;
  const U mag = sizeof(D) == 4 ? U(0x7fffffffu) : U(0x7fffffffffffffffull);
  const D lim = D(kStarDistMax);
  U top;
  std::memcpy(&top, &lim, sizeof(U));
  U bad = 0;
  for (int k = 0; k < n; ++k) {
    U b;
    std::memcpy(&b, v + k, sizeof(U));
    bad |= U((b & mag) > top);
  }
  return bad == 0;
}

// The value of largest magnitude (NaN first) of a row that failed all_in_range, for the error message.
template <class D>
double worst_value(const D* v, int n) {
  double w = 0;
  for (int k = 0; k < n; ++k) {
    const double x = double(v[k]);
    if (std::isnan(x)) return x;
    if (std::fabs(x) > std::fabs(w)) w = x;
  }
  return w;
}

// 11-bit digits: 32-bit keys in 3 passes, the cells of a 2048^2 image in 2; the counts stay in L1.
constexpr int kRadixBits = 11, kRadix = 1 << kRadixBits;

// Stable LSD radix sort of (key, value) by key: raster order survives among equal probabilities.
void radix_sort(uint32_t* key, int64_t* val, int64_t n) {
  uint32_t* ka = key;
  uint32_t* kb = scratch<uint32_t>(1, n);
  int64_t* va = val;
  int64_t* vb = scratch<int64_t>(2, n);
  std::vector<int64_t> cnt(kRadix + 1);
  for (int shift = 0; shift < 32; shift += kRadixBits) {
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++cnt[((ka[i] >> shift) & (kRadix - 1)) + 1];
    if (cnt[((ka[0] >> shift) & (kRadix - 1)) + 1] == n) continue;  // all equal in this digit
    for (int b = 0; b < kRadix; ++b) cnt[b + 1] += cnt[b];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t d = cnt[(ka[i] >> shift) & (kRadix - 1)]++;
      kb[d] = ka[i];
      vb[d] = va[i];
    }
    std::swap(ka, kb);
    std::swap(va, vb);
  }
  if (va != val) std::memcpy(val, va, sizeof(int64_t) * n);
}

template <class P>
int64_t candidates_typed(const P* prob, int64_t nx, P thresh, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                         int64_t* cand) {
  const int64_t rows = y1 - y0;
  std::vector<int64_t> cnt(rows + 1, 0);
  parallel_for(rows, std::max<int64_t>(16, (int64_t(1) << 20) / std::max<int64_t>(1, x1 - x0)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const P* p = prob + (y0 + r) * nx;
      int64_t c = 0;
      for (int64_t x = x0; x < x1; ++x) c += p[x] > thresh;
      cnt[r + 1] = c;
    }
  });
  for (int64_t r = 0; r < rows; ++r) cnt[r + 1] += cnt[r];
  const int64_t n = cnt[rows];
  if (!cand || n == 0) return n;
  parallel_for(rows, std::max<int64_t>(16, (int64_t(1) << 20) / std::max<int64_t>(1, x1 - x0)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const P* p = prob + (y0 + r) * nx;
      int64_t o = cnt[r];
      int64_t x = x0;
      // most of an image is below the threshold: skip 8 cells at a time when none is above
      for (; x + 8 <= x1; x += 8) {
        bool any = false;
        for (int i = 0; i < 8; ++i) any |= p[x + i] > thresh;
        if (!any) continue;
        for (int i = 0; i < 8; ++i)
          if (p[x + i] > thresh) cand[o++] = (y0 + r) * nx + x + i;
      }
      for (; x < x1; ++x)
        if (p[x] > thresh) cand[o++] = (y0 + r) * nx + x;
    }
  });
  if (std::is_same<P, float>::value) {
    uint32_t* key = scratch<uint32_t>(0, n);
    parallel_for(n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) key[i] = desc_key(float(prob[cand[i]]));
    });
    radix_sort(key, cand, n);
  } else {
    std::stable_sort(cand, cand + n, [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
  }
  return n;
}

// Stable LSD radix sort of 64-bit values by their bits [lo, hi) (digits may read zero bits past hi).
void radix_sort_u64(uint64_t*& v, uint64_t*& tmp, int64_t n, int lo, int hi) {
  std::vector<int64_t> cnt(kRadix + 1);
  for (int shift = lo; shift < hi; shift += kRadixBits) {
    std::fill(cnt.begin(), cnt.end(), 0);
    for (int64_t i = 0; i < n; ++i) ++cnt[((v[i] >> shift) & (kRadix - 1)) + 1];
    for (int b = 0; b < kRadix; ++b) cnt[b + 1] += cnt[b];
    for (int64_t i = 0; i < n; ++i) tmp[cnt[(v[i] >> shift) & (kRadix - 1)]++] = v[i];
    std::swap(v, tmp);
  }
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr size_t kPrefetchAhead = 8;  // pair tests ahead whose candidate data the sweep prefetches
constexpr size_t kAhead = 32;  // local maxima the helper may list past the sweep (measured: 4 and unbounded are slower)

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Below this many candidates the sweep runs alone (a second thread costs more than it saves).
constexpr int64_t kHelperMin = 8192;

void count_path(NmsStats& st, int path) {
  ++st.pairs;
  switch (path) {
    case star::kPathBbox: ++st.bbox_rejected; break;
    case star::kPathBound: ++st.bound_decided; break;
    case star::kPathSweep: ++st.sweep; break;
    case star::kPathSweepEarly: ++st.sweep_early; break;
    case star::kPathDisk: ++st.disk_decided; break;
    default: ++st.fan; break;
  }
}

// A bucket entry: the candidate's rank and slot, and its bounding box rounded outwards to float, so the scan
// of a bucket rejects disjoint boxes from this sequential array without touching the scattered per-slot data.
struct FBox {
  float ymin, ymax, xmin, xmax;
};
struct Item {
  int64_t rank, slot;
  FBox box;
};

// Floats at or below (above) v: widened by 1e-6 relative first, more than float's half-ulp rounding can undo.
// Branch-free (a nextafter after each rounding mispredicts half the time and ran 4x slower).
inline float round_down(double v) { return float(v - (std::fabs(v) * 1e-6 + 1e-30)); }
inline float round_up(double v) { return float(v + (std::fabs(v) * 1e-6 + 1e-30)); }

// floor(v / S) clamped to the bucket range [0, nb - 1], clamped as a double: converting a far coordinate
// (beyond int64) first would be undefined, and once made every bucket range empty (no pair tested at all).
inline int64_t bucket_of(double v, double S, int64_t nb) {
  const double b = std::floor(v / S);
  return !(b > 0) ? 0 : (b >= double(nb - 1) ? nb - 1 : int64_t(b));
}

// Everything per candidate is stored by "slot", the candidate's position in raster order: the candidates a kept
// polygon meets lie in a few nearby rows, so their slots are close and their data shares cache lines and pages
// (by rank they would be scattered over the whole arrays). Centres are bucketed on a square grid of side S
// pixels; each bucket lists (rank, slot) in rank order and knows the largest circumradius in it, so a kept
// polygon visits only buckets whose candidates can reach its bounding box, and inside a bucket starts after its
// own rank.
template <class D>
NmsStats nms_typed(const NmsArgs& a) {
  const int n = a.n_rays;
  const double* sn = a.trig;
  const double* cs = a.trig + n;
  const D* dist = static_cast<const D*>(a.dist);
  const int64_t count = a.count;
  for (int64_t r = 0; r < count; ++r)
    CK_CHECK_VALUE(a.cand[r] >= 0 && a.cand[r] < a.ny * a.nx, "cand: cell index out of range at ", r);

  double t0 = now_ms(), t1;
  // raster order of the candidates: slot -> rank, rank -> slot
  int64_t* rank_of = scratch<int64_t>(3, count);
  int64_t* slot_of = scratch<int64_t>(4, count);
  int64_t* cell_of = scratch<int64_t>(15, count);  // slot -> cell, read in slot order (cand[] is by rank)
  {
    int bits = 1;  // the width of the largest cell index
    while (bits < 64 && (uint64_t(a.ny * a.nx - 1) >> bits) != 0) ++bits;
    if (bits + 32 <= 64 && count < (int64_t(1) << 32)) {
      uint64_t* key = scratch<uint64_t>(0, count);
      uint64_t* tmp = scratch<uint64_t>(1, count);
      for (int64_t r = 0; r < count; ++r) key[r] = (uint64_t(a.cand[r]) << 32) | uint64_t(r);
      radix_sort_u64(key, tmp, count, 32, 32 + bits);  // by cell; stable: equal cells (invalid input) keep rank order
      for (int64_t s = 0; s < count; ++s) {
        rank_of[s] = int64_t(key[s] & 0xffffffffu);
        cell_of[s] = int64_t(key[s] >> 32);
      }
    } else {
      for (int64_t r = 0; r < count; ++r) rank_of[r] = r;
      std::stable_sort(rank_of, rank_of + count, [&](int64_t x, int64_t y) { return a.cand[x] < a.cand[y]; });
      for (int64_t s = 0; s < count; ++s) cell_of[s] = a.cand[rank_of[s]];
    }
    for (int64_t s = 0; s < count; ++s) slot_of[rank_of[s]] = s;
  }
  t1 = now_ms();
  const double ms_order = t1 - t0;
  t0 = t1;
  // With a second thread and the probabilities, a helper thread works ahead of the sweep on the candidates that
  // are local maxima of the probabilities (see below): is_max by slot, found with the geometry.
  const bool helper = a.prob != nullptr && usable_threads() > 1 && count >= kHelperMin;
  uint8_t* is_max = scratch<uint8_t>(11, helper ? count : 0);
  const int64_t wy0 = a.win[0], wy1 = a.win[1], wx0 = a.win[2], wx1 = a.win[3];
  auto local_max = [&](const auto* prob, int64_t c) {
    const int64_t cy = c / a.nx, cx = c % a.nx;
    for (int64_t yy = std::max(wy0, cy - 1); yy <= std::min(wy1 - 1, cy + 1); ++yy)
      for (int64_t xx = std::max(wx0, cx - 1); xx <= std::min(wx1 - 1, cx + 1); ++xx) {
        const int64_t q = yy * a.nx + xx;  // outranks c: higher probability, ties to the earlier cell
        if (prob[q] > prob[c] || (prob[q] == prob[c] && q < c)) return false;
      }
    return true;
  };
  // per slot: a compact copy of the distances, centre, bounding box, area, circumradius
  D* cd = scratch<D>(5, size_t(count) * n);
  star::PolyGeom* geo = scratch<star::PolyGeom>(6, count);
  FBox* fbox = scratch<FBox>(14, count);
  star::V2* ctr = scratch<star::V2>(7, count);
  std::atomic<int64_t> bad{-1};
  parallel_for(count, 4096, [&](int64_t b, int64_t e) {  // a few microseconds each: serial below 4096
    std::vector<double> sy(n), sx(n);
    for (int64_t s = b; s < e; ++s) {
      // cells come in raster order with gaps the hardware prefetcher does not follow: ask a few ahead
      if (s + 8 < e) {
        const char* ahead = reinterpret_cast<const char*>(dist + cell_of[s + 8] * n);
        for (size_t o = 0; o < sizeof(D) * n; o += 64) __builtin_prefetch(ahead + o, 0, 0);
      }
      const int64_t cell = cell_of[s];
      const D* d = dist + cell * n;
      D* c = cd + s * n;
      std::memcpy(c, d, sizeof(D) * n);
      if (!all_in_range(c, n)) bad.store(rank_of[s]);
      ctr[s] = star::v2(double(cell / a.nx * a.grid[0]), double(cell % a.nx * a.grid[1]));
      geo[s] = star::poly_geom(ctr[s], c, n, sn, cs, sy.data(), sx.data());
      if (helper)
        is_max[s] = a.prob_dtype == DType::f64 ? local_max(static_cast<const double*>(a.prob), cell)
                                               : local_max(static_cast<const float*>(a.prob), cell);
      const star::PolyGeom& g = geo[s];
      fbox[s] = FBox{round_down(g.ymin), round_up(g.ymax), round_down(g.xmin), round_up(g.xmax)};
    }
  });
  if (bad.load() >= 0) {
    const double w = worst_value(dist + a.cand[bad.load()] * n, n);
    CK_CHECK_VALUE(std::isfinite(w), "dist: non-finite distances at NMS candidate ", bad.load(), " (rank): ", w);
    throw ValueError(str("dist: distances at NMS candidates must lie within +-", int64_t(kStarDistMax),
                         " px (2^22, the documented range); candidate ", bad.load(), " (rank) has ", w));
  }

  t1 = now_ms();
  const double ms_geometry = t1 - t0;
  t0 = t1;
  // bucket grid over the centres
  double mean_r = 0;
  for (int64_t s = 0; s < count; ++s) mean_r += geo[s].rmax;
  mean_r /= double(count);
  const double Hpx = double((a.ny - 1) * a.grid[0] + 1), Wpx = double((a.nx - 1) * a.grid[1] + 1);
  // Buckets of side 2x the mean circumradius (clamped to [8, 256] px), but at most ~4 per candidate along the
  // longer side and overall: the candidates of a large grid factor are spread thin over a canvas that could
  // otherwise ask for billions of buckets (grid 2^19: bad_alloc). The buckets only prune; results do not change.
  const double cap = double(4 * count + 64);
  const double S = std::max({std::min(256.0, std::max(8.0, 2 * mean_r)), std::max(Hpx, Wpx) / cap,
                             std::sqrt(Hpx * Wpx / cap)});
  const int64_t nby = int64_t(std::ceil(Hpx / S)), nbx = int64_t(std::ceil(Wpx / S)), nb = nby * nbx;
  std::vector<int64_t> start(nb + 1, 0);
  int64_t* bid = scratch<int64_t>(8, count);
  std::vector<double> brmax(nb, 0);
  for (int64_t s = 0; s < count; ++s) {
    const int64_t by = std::min(nby - 1, int64_t(ctr[s].y / S)), bx = std::min(nbx - 1, int64_t(ctr[s].x / S));
    bid[s] = by * nbx + bx;
    ++start[bid[s] + 1];
    brmax[bid[s]] = std::max(brmax[bid[s]], geo[s].rmax);
  }
  for (int64_t b = 0; b < nb; ++b) start[b + 1] += start[b];
  Item* items = scratch<Item>(9, count);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t r = 0; r < count; ++r) {  // in rank order: each bucket's list comes out sorted by rank
      const int64_t s = slot_of[r];
      items[fill[bid[s]]++] = Item{r, s, fbox[s]};
    }
  }
  double Rmax = 0;
  for (double r : brmax) Rmax = std::max(Rmax, r);

  // The greedy sweep, by rank, on the calling thread. With a second thread and the probabilities, a helper works
  // ahead of it on the candidates that are local maxima of the probabilities (almost every kept polygon is one):
  // for such a candidate it lists which later candidates it would suppress. When the sweep keeps a candidate
  // whose list is ready it only applies the list; otherwise it tests the pairs itself -- it never waits for the
  // helper, so a helper that gets no CPU (an oversubscribed machine) costs nothing. Pair tests are deterministic
  // and suppression is final, so the result is the sequential one either way.
  // state by slot: 0 undecided, 1 kept, 2 suppressed; read by the helper while the sweep writes (relaxed atomics)
  uint8_t* st_slot = scratch<uint8_t>(10, count);
  std::memset(st_slot, 0, count);
  auto load_state = [&](int64_t sl) { return __atomic_load_n(&st_slot[sl], __ATOMIC_RELAXED); };
  auto store_state = [&](int64_t sl, uint8_t v) { __atomic_store_n(&st_slot[sl], v, __ATOMIC_RELAXED); };

  // Visits the later candidates whose boxes meet kept polygon si's (rank i); decide(sj) tests one. Two passes:
  // the first lists the undecided candidates whose float boxes meet, the second tests them, prefetching the
  // per-slot data (scattered over arrays of tens of MB) kPrefetchAhead entries ahead: prefetching the whole list
  // while listing it (~80 entries, 240 cache lines) made the sweep 4-7% slower.
  // Only decide(sj) changes a state, and only sj's, so listing first visits the same pairs.
  auto prefetch_slot = [&](int64_t sj) {
    __builtin_prefetch(&geo[sj]);
    const char* dj = reinterpret_cast<const char*>(cd + sj * n);
    for (size_t o = 0; o < sizeof(D) * n; o += 64) __builtin_prefetch(dj + o);
  };
  auto neighbours = [&](int64_t i, const star::PolyGeom& gi, std::vector<int64_t>& near, const auto& decide) {
    near.clear();
    const int64_t by0 = bucket_of(gi.ymin - Rmax, S, nby), by1 = bucket_of(gi.ymax + Rmax, S, nby);
    const int64_t bx0 = bucket_of(gi.xmin - Rmax, S, nbx), bx1 = bucket_of(gi.xmax + Rmax, S, nbx);
    const float fymin = round_down(gi.ymin), fymax = round_up(gi.ymax);
    const float fxmin = round_down(gi.xmin), fxmax = round_up(gi.xmax);
    for (int64_t by = by0; by <= by1; ++by) {
      for (int64_t bx = bx0; bx <= bx1; ++bx) {
        const int64_t b = by * nbx + bx;
        const double rr = brmax[b];
        // centres in this bucket lie in [by S, (by+1) S) x [bx S, (bx+1) S); their polygons within rr of them
        if (by * S - rr >= gi.ymax || (by + 1) * S + rr <= gi.ymin || bx * S - rr >= gi.xmax ||
            (bx + 1) * S + rr <= gi.xmin)
          continue;
        const Item* it = items + start[b];
        const Item* end = items + start[b + 1];
        it = std::upper_bound(it, end, i, [](int64_t v, const Item& x) { return v < x.rank; });
        for (; it != end; ++it) {
          // the float boxes contain the exact ones: this only rejects boxes that are certainly disjoint
          const FBox& bj = it->box;
          if (fxmax <= bj.xmin || bj.xmax <= fxmin || fymax <= bj.ymin || bj.ymax <= fymin) continue;
          const int64_t sj = it->slot;
          if (load_state(sj) != 0) continue;
          if (near.size() < kPrefetchAhead) prefetch_slot(sj);
          near.push_back(sj);
        }
      }
    }
    for (size_t t = 0; t < near.size(); ++t) {
      const int64_t sj = near[t];
      if (t + kPrefetchAhead < near.size()) prefetch_slot(near[t + kPrefetchAhead]);
      const star::PolyGeom& gj = geo[sj];
      if (gi.xmax <= gj.xmin || gj.xmax <= gi.xmin || gi.ymax <= gj.ymin || gj.ymax <= gi.ymin) continue;
      decide(sj);
    }
  };
  // The pair tests of kept candidate si against its undecided later neighbours; suppressed(sj) gets each hit.
  struct Scratch {
    std::vector<double> ay, ax, by, bx;
    std::vector<int64_t> near;
    explicit Scratch(int n) : ay(n), ax(n), by(n), bx(n) {}
  };
  auto test_all = [&](int64_t i, int64_t si, Scratch& w, NmsStats& st, const auto& suppressed) {
    star::PolyGeom gi = geo[si];
    const D* di = cd + si * n;
    const star::V2 ci = ctr[si];
    const star::Verts va{w.ay.data(), w.ax.data()}, vb{w.by.data(), w.bx.data()};
    star::star_vertices(star::v2(0, 0), di, n, sn, cs, w.ay.data(), w.ax.data());
    gi.rin2 = star::clearance2(va, n, star::v2(0, 0));
    neighbours(i, gi, w.near, [&](int64_t sj) {
      const star::PolyGeom& gj = geo[sj];
      const D* dj = cd + sj * n;
      const star::V2 cb = star::sub(ctr[sj], ci);
      star::star_vertices(cb, dj, n, sn, cs, w.by.data(), w.bx.data());
      int path;
      if (star::suppresses(va, di, gi, vb, dj, cb, gj, n, sn, cs, a.thresh, a.criterion, &path)) suppressed(sj);
      count_path(st, path);
    });
  };

  t1 = now_ms();
  const double ms_buckets = t1 - t0;
  t0 = t1;
  // the local maxima (found with the geometry), in rank order
  std::vector<int64_t> maxima;
  if (helper) {
    for (int64_t sl = 0; sl < count; ++sl)
      if (is_max[sl]) maxima.push_back(rank_of[sl]);
    std::sort(maxima.begin(), maxima.end());
  }
  // Local maxima are queued in rank order; the helper takes them one by one, at most kAhead past the sweep (lists
  // made too early test candidates that nearer objects will have suppressed, and some maxima get suppressed
  // themselves), and lists for each the later candidates it would suppress. Per slot: 0 free, 1 being listed,
  // 2 list ready, 3 the sweep tests it itself, 4 skipped (already suppressed when taken). When the sweep keeps a
  // maximum whose list is still being made, it takes queued maxima meanwhile instead of testing the same pairs
  // twice (that had duplicated ~15% of the pairs); it waits only for a list already being made.
  uint8_t* claim = scratch<uint8_t>(12, helper ? count : 0);
  int64_t* list_of = scratch<int64_t>(13, helper ? count : 0);
  if (helper) std::memset(claim, 0, count);
  for (size_t q = 0; q < maxima.size(); ++q) list_of[slot_of[maxima[q]]] = int64_t(q);
  std::vector<std::vector<int64_t>> lists(maxima.size());
  std::atomic<size_t> next_q{0}, sweep_q{0};
  std::atomic<bool> done{false}, helper_failed{false};
  NmsStats st, st_helper;

  // Takes the next queued maximum and lists its suppressions; false once the queue is empty.
  auto list_next = [&](Scratch& w, NmsStats& s) {
    const size_t q = next_q.fetch_add(1, std::memory_order_relaxed);
    if (q >= maxima.size()) return false;
    const int64_t i = maxima[q], si = slot_of[i];
    uint8_t f = 0;
    if (!__atomic_compare_exchange_n(&claim[si], &f, uint8_t(1), false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return true;  // the sweep got there first
    if (load_state(si) == 2) {  // already suppressed: it will never be kept
      __atomic_store_n(&claim[si], uint8_t(4), __ATOMIC_RELEASE);
      return true;
    }
    std::vector<int64_t>& out = lists[q];
    test_all(i, si, w, s, [&](int64_t sj) { out.push_back(sj); });
    __atomic_store_n(&claim[si], uint8_t(2), __ATOMIC_RELEASE);
    return true;
  };
  auto sweep = [&]() {
    Scratch w(n);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t si = slot_of[i];
      if (load_state(si) == 2) continue;
      store_state(si, 1);
      if (!(geo[si].area > 0)) continue;  // a zero-area polygon overlaps nothing
      bool listed = false;
      if (helper && is_max[si]) {
        sweep_q.store(size_t(list_of[si]) + 1, std::memory_order_relaxed);
        for (;;) {
          uint8_t f = __atomic_load_n(&claim[si], __ATOMIC_ACQUIRE);
          if (f == 2) {
            listed = true;
            break;
          }
          if (f == 0) {
            if (__atomic_compare_exchange_n(&claim[si], &f, uint8_t(3), false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
              break;  // ours to test
            continue;   // the helper took it just now: look again
          }
          if (f != 1) break;  // 3 or 4 cannot happen for a kept maximum; never spin on them
          if (helper_failed.load(std::memory_order_relaxed)) break;  // its list will never come: test it here
          if (!list_next(w, st)) cpu_relax();  // being listed: do queued work meanwhile
        }
      }
      if (listed) {
        ++st.helped;
        for (int64_t sj : lists[list_of[si]])
          if (load_state(sj) == 0) store_state(sj, 2);
        continue;
      }
      test_all(i, si, w, st, [&](int64_t sj) { store_state(sj, 2); });
    }
    done.store(true);
  };
  auto help = [&]() {
    Scratch w(n);
    while (!done.load(std::memory_order_relaxed)) {
      if (next_q.load(std::memory_order_relaxed) >= sweep_q.load(std::memory_order_relaxed) + kAhead) {
        cpu_relax();
        continue;
      }
      if (!list_next(w, st_helper)) break;
    }
  };
  t1 = now_ms();
  const double ms_maxima = t1 - t0;
  t0 = t1;
  if (helper) {
    // Either side may throw (out of memory): the helper's failure makes the sweep stop waiting for its lists and
    // test those maxima itself; the sweep's failure ends the helper's loop (done), so neither spins forever.
    run_workers(2, true, [&](int w) {
      if (w == 0) {
        try {
          sweep();
        } catch (...) {
          done.store(true);
          throw;
        }
      } else {
        try {
          help();
        } catch (...) {
          helper_failed.store(true);
          throw;
        }
      }
    });
  } else {
    sweep();
  }
  st.ms_order = ms_order;
  st.ms_geometry = ms_geometry;
  st.ms_buckets = ms_buckets;
  st.ms_maxima = ms_maxima;
  st.ms_sweep = now_ms() - t0;
  st.maxima = int64_t(maxima.size());
  // the helper's pair counts only for lists the sweep used would be exact; report all its work
  st.pairs += st_helper.pairs;
  st.bbox_rejected += st_helper.bbox_rejected;
  st.bound_decided += st_helper.bound_decided;
  st.disk_decided += st_helper.disk_decided;
  st.sweep += st_helper.sweep;
  st.sweep_early += st_helper.sweep_early;
  st.fan += st_helper.fan;
  for (int64_t s = 0; s < count; ++s) a.state[rank_of[s]] = st_slot[s];
  scratch_trim();
  return st;
}

}  // namespace

int64_t nms_candidates_cpu(const float* probf, const double* probd, int64_t nx, double thresh, int64_t y0,
                           int64_t y1, int64_t x0, int64_t x1, int64_t* cand) {
  // numpy compares a float32 array with a Python float in float32: do the same
  if (probf) return candidates_typed<float>(probf, nx, float(thresh), y0, y1, x0, x1, cand);
  return candidates_typed<double>(probd, nx, thresh, y0, y1, x0, x1, cand);
}

NmsStats nms_cpu(const NmsArgs& a) {
  if (a.dist_dtype == DType::f64) return nms_typed<double>(a);
  return nms_typed<float>(a);
}

CK_NS_END
