// Polygon non-maximum suppression on the CPU: candidate gathering + stable radix sort, per-candidate geometry
// (OpenMP), a bucket grid over centres, and the greedy sweep deciding each pair with star::suppresses.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/parallel.h"
#include "ops/star/star.h"
#include "ops/star/star_math.h"

CK_NS_BEGIN
namespace {

// Key whose ascending order is descending probability (-0 folded into +0, so equal values compare equal).
uint32_t desc_key(float p) {
  if (p == 0) p = 0;
  uint32_t u;
  std::memcpy(&u, &p, 4);
  const uint32_t asc = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~asc;
}

// Stable LSD radix sort of (key, value) by key: raster order survives among equal probabilities.
void radix_sort(std::vector<uint32_t>& key, int64_t* val, int64_t n) {
  std::vector<uint32_t> k2(n);
  std::vector<int64_t> v2(n);
  uint32_t* ka = key.data();
  uint32_t* kb = k2.data();
  int64_t* va = val;
  int64_t* vb = v2.data();
  for (int shift = 0; shift < 32; shift += 8) {
    int64_t cnt[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++cnt[((ka[i] >> shift) & 255) + 1];
    if (cnt[((ka[0] >> shift) & 255) + 1] == n) continue;  // all equal in this digit
    for (int b = 0; b < 256; ++b) cnt[b + 1] += cnt[b];
    for (int64_t i = 0; i < n; ++i) {
      const int64_t d = cnt[(ka[i] >> shift) & 255]++;
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
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
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
  parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const P* p = prob + (y0 + r) * nx;
      int64_t o = cnt[r];
      for (int64_t x = x0; x < x1; ++x)
        if (p[x] > thresh) cand[o++] = (y0 + r) * nx + x;
    }
  });
  if (std::is_same<P, float>::value) {
    std::vector<uint32_t> key(n);
    parallel_for(n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) key[i] = desc_key(float(prob[cand[i]]));
    });
    radix_sort(key, cand, n);
  } else {
    std::stable_sort(cand, cand + n, [&](int64_t a, int64_t b) { return prob[a] > prob[b]; });
  }
  return n;
}

// Candidate centres are bucketed on a square grid of side S pixels; each bucket lists its candidates in rank
// order and knows the largest circumradius among them, so a kept polygon visits only buckets whose candidates
// can reach its bounding box, and inside a bucket starts after its own rank.
struct Buckets {
  double S = 16;
  int64_t nby = 1, nbx = 1;
  std::vector<int64_t> start, items;
  std::vector<double> rmax;
};

template <class D>
NmsStats nms_typed(const NmsArgs& a) {
  const int n = a.n_rays;
  const double* sn = a.trig;
  const double* cs = a.trig + n;
  const D* dist = static_cast<const D*>(a.dist);
  const int64_t count = a.count;
  std::vector<star::PolyGeom> geo(count);
  std::vector<star::V2> ctr(count);
  std::atomic<int64_t> bad{-1};
  parallel_for(count, 512, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t cell = a.cand[i];
      if (cell < 0 || cell >= a.ny * a.nx) {
        bad.store(i);
        continue;
      }
      const D* d = dist + cell * n;
      for (int k = 0; k < n; ++k)
        if (!std::isfinite(double(d[k]))) bad.store(i);
      ctr[i] = star::v2(double(cell / a.nx * a.grid[0]), double(cell % a.nx * a.grid[1]));
      star::Star<D> p{ctr[i], d};
      geo[i] = star::poly_geom(p, n, sn, cs);
    }
  });
  CK_CHECK_VALUE(bad.load() < 0, "dist: non-finite distances (or an invalid cell) at NMS candidate ", bad.load());

  // bucket grid over the centres
  Buckets bk;
  double mean_r = 0;
  for (int64_t i = 0; i < count; ++i) mean_r += geo[i].rmax;
  mean_r /= double(count);
  bk.S = std::min(256.0, std::max(8.0, 2 * mean_r));
  const double Hpx = double((a.ny - 1) * a.grid[0] + 1), Wpx = double((a.nx - 1) * a.grid[1] + 1);
  bk.nby = int64_t(std::ceil(Hpx / bk.S));
  bk.nbx = int64_t(std::ceil(Wpx / bk.S));
  const int64_t nb = bk.nby * bk.nbx;
  bk.start.assign(nb + 1, 0);
  bk.rmax.assign(nb, 0);
  std::vector<int64_t> bid(count);
  for (int64_t i = 0; i < count; ++i) {
    const int64_t by = std::min(bk.nby - 1, int64_t(ctr[i].y / bk.S)), bx = std::min(bk.nbx - 1, int64_t(ctr[i].x / bk.S));
    bid[i] = by * bk.nbx + bx;
    ++bk.start[bid[i] + 1];
    bk.rmax[bid[i]] = std::max(bk.rmax[bid[i]], geo[i].rmax);
  }
  for (int64_t b = 0; b < nb; ++b) bk.start[b + 1] += bk.start[b];
  bk.items.resize(count);
  {
    std::vector<int64_t> fill(bk.start.begin(), bk.start.end() - 1);
    for (int64_t i = 0; i < count; ++i) bk.items[fill[bid[i]]++] = i;  // rank order within each bucket
  }
  double Rmax = 0;
  for (double r : bk.rmax) Rmax = std::max(Rmax, r);

  // the greedy sweep: state 0 undecided, 1 kept, 2 suppressed
  uint8_t* state = a.state;
  std::memset(state, 0, count);
  NmsStats st;
  for (int64_t i = 0; i < count; ++i) {
    if (state[i] == 2) continue;
    state[i] = 1;
    const star::PolyGeom& gi = geo[i];
    if (!(gi.area > 0)) continue;  // a zero-area polygon overlaps nothing
    const star::Star<D> A{ctr[i], dist + a.cand[i] * n};
    const int64_t by0 = std::max<int64_t>(0, int64_t(std::floor((gi.ymin - Rmax) / bk.S)));
    const int64_t by1 = std::min<int64_t>(bk.nby - 1, int64_t(std::floor((gi.ymax + Rmax) / bk.S)));
    const int64_t bx0 = std::max<int64_t>(0, int64_t(std::floor((gi.xmin - Rmax) / bk.S)));
    const int64_t bx1 = std::min<int64_t>(bk.nbx - 1, int64_t(std::floor((gi.xmax + Rmax) / bk.S)));
    for (int64_t by = by0; by <= by1; ++by) {
      for (int64_t bx = bx0; bx <= bx1; ++bx) {
        const int64_t b = by * bk.nbx + bx;
        const double r = bk.rmax[b];
        // centres in this bucket lie in [by S, (by+1) S) x [bx S, (bx+1) S); their polygons within r of them
        if (by * bk.S - r >= gi.ymax || (by + 1) * bk.S + r <= gi.ymin || bx * bk.S - r >= gi.xmax ||
            (bx + 1) * bk.S + r <= gi.xmin)
          continue;
        const int64_t* it = bk.items.data() + bk.start[b];
        const int64_t* end = bk.items.data() + bk.start[b + 1];
        it = std::upper_bound(it, end, i);
        for (; it != end; ++it) {
          const int64_t j = *it;
          if (state[j] != 0) continue;
          const star::PolyGeom& gj = geo[j];
          if (gi.xmax <= gj.xmin || gj.xmax <= gi.xmin || gi.ymax <= gj.ymin || gj.ymax <= gi.ymin) continue;
          ++st.pairs;
          const star::Star<D> B{ctr[j], dist + a.cand[j] * n};
          int path;
          if (star::suppresses(A, gi, B, gj, n, sn, cs, a.thresh, a.criterion, &path)) state[j] = 2;
          switch (path) {
            case star::kPathBbox: ++st.bbox_rejected; break;
            case star::kPathBound: ++st.bound_decided; break;
            case star::kPathSweep: ++st.sweep; break;
            case star::kPathSweepEarly: ++st.sweep_early; break;
            default: ++st.fan; break;
          }
        }
      }
    }
  }
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
