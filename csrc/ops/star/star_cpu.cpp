// Star-convex polygon CPU kernels: star_dist (AVX2 over 8 pixels per ray), dist_to_coord, polygons_to_label
// (row bands, skimage's rule), label overlap counts for matching; compiled once per ISA.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "ops/star/star.h"
#include "ops/star/star_math.h"

CK_NS_BEGIN
namespace {

// ---- star_dist ---------------------------------------------------------------------------------------------

// labels -> the zero-framed copy of type L. With Check, returns false as soon as a label does not fit L (used
// to try uint16 first); without, the cast is injective (int32 for labels of <= 32 bits, int64 otherwise), so
// equality and zero are preserved.
template <class In, class L, bool Check>
bool pad_labels(const StarDistArgs& a) {
  const In* src = static_cast<const In*>(a.labels);
  L* dst = static_cast<L*>(a.padded);
  const int64_t rows = a.pin[0] * a.pin[1], W = a.pin[2];
  std::atomic<bool> ok{true};
  parallel_for(rows, std::max<int64_t>(64, kSerialWork / std::max<int64_t>(1, W)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1 && (!Check || ok.load(std::memory_order_relaxed)); ++r) {
      L* d = dst + r * W;
      const int64_t z = r / a.pin[1] - a.pad[0], y = r % a.pin[1] - a.pad[1];
      if (z < 0 || z >= a.in[0] || y < 0 || y >= a.in[1]) {
        std::memset(d, 0, sizeof(L) * W);
        continue;
      }
      const In* s = src + (z * a.in[1] + y) * a.in[2];
      for (int64_t x = 0; x < a.pad[2]; ++x) d[x] = 0;
      if (Check) {
        bool fits = true;
        for (int64_t x = 0; x < a.in[2]; ++x) {
          const In v = s[x];
          fits &= v >= In(0) && uint64_t(v) <= uint64_t(L(~L(0)));
          d[a.pad[2] + x] = L(v);
        }
        if (!fits) ok.store(false, std::memory_order_relaxed);
      } else {
        for (int64_t x = 0; x < a.in[2]; ++x) d[a.pad[2] + x] = L(s[x]);
      }
      for (int64_t x = a.pad[2] + a.in[2]; x < W; ++x) d[x] = 0;
    }
  });
  return ok.load();
}

template <class L>
void march_row_scalar(const StarDistArgs& a, const L* lab, int64_t oz, int64_t oy, int64_t ox0, int64_t ox1) {
  const int64_t z = oz * a.grid[0], y = oy * a.grid[1];
  const int64_t rowbase = ((z + a.pad[0]) * a.pin[1] + (y + a.pad[1])) * a.pin[2] + a.pad[2];
  for (int64_t ox = ox0; ox < ox1; ++ox) {
    const int64_t x = ox * a.grid[2], p0 = rowbase + x;
    const L v = lab[p0];
    float* o = a.out + ((oz * a.osz[1] + oy) * a.osz[2] + ox) * a.n_rays;
    if (v == 0) {
      if (a.zero_background) std::memset(o, 0, sizeof(float) * a.n_rays);
      continue;
    }
    for (int k = 0; k < a.n_rays; ++k) {
      const int64_t m = star::march(a, lab, p0, v, k, z, y, x);
      o[k] = a.dist[int64_t(k) * a.n_steps + m];
    }
  }
}

// Per ray, the steps whose table offset is kAmbiguousStep, ascending, each list closed by a sentinel n_steps:
// the vector loop runs check-free between them.
struct AmbiguousSteps {
  std::vector<int64_t> first;  // ray k's list starts at steps[first[k]]
  std::vector<int64_t> steps;
  explicit AmbiguousSteps(const StarDistArgs& a) : first(size_t(a.n_rays)) {
    for (int k = 0; k < a.n_rays; ++k) {
      first[size_t(k)] = int64_t(steps.size());
      const int64_t* off = a.offs + int64_t(k) * a.n_steps;
      for (int64_t m = 1; m < a.n_steps; ++m)
        if (off[m] == kAmbiguousStep) steps.push_back(m);
      steps.push_back(a.n_steps);
    }
  }
};

#if CK_SIMD_AVX2
// Label lanes of one vector: 16 uint16 or 8 int32 origins of one padded row, x, x + gx, ... (gx = 1 or 2: plain
// loads, no gathers, which are slow on AMD), with the compare, the count and the lane mask of that width.
struct U16Lanes {
  using T = uint16_t;
  static constexpr int W = 16;
  template <int GX>
  static __m256i load(const T* p) {
    if (GX == 1) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i lo = _mm256_set1_epi32(0xFFFF);
    const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), lo);
    const __m256i b = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)), lo);
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
  }
  static __m256i eq(__m256i a, __m256i b) { return _mm256_cmpeq_epi16(a, b); }
  static __m256i sub(__m256i a, __m256i b) { return _mm256_sub_epi16(a, b); }
  static uint32_t bits(__m256i m) {  // bit l set when lane l of the mask is
    return uint32_t(_mm_movemask_epi8(_mm_packs_epi16(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1))));
  }
};

struct I32Lanes {
  using T = int32_t;
  static constexpr int W = 8;
  template <int GX>
  static __m256i load(const T* p) {
    if (GX == 1) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8));
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    return _mm256_blend_epi32(_mm256_permutevar8x32_epi32(a, even), _mm256_permutevar8x32_epi32(b, even), 0xF0);
  }
  static __m256i eq(__m256i a, __m256i b) { return _mm256_cmpeq_epi32(a, b); }
  static __m256i sub(__m256i a, __m256i b) { return _mm256_sub_epi32(a, b); }
  static uint32_t bits(__m256i m) { return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(m))); }
};

// Writes the distances of a block's lanes: lane l stopped on ray k at step mst[W * k + l]. Only lanes in the
// bit set `lanes` are written (the others are background in an output that is already zero); four rays per
// store, indexing the table by pointer steps (this loop was a fifth of the call).
template <int W, class M>
inline void write_block(const StarDistArgs& a, float* o, const M* mst, uint32_t lanes) {
  const int64_t ns = a.n_steps;
  while (lanes) {
    const int l = __builtin_ctz(lanes);
    lanes &= lanes - 1;
    float* ol = o + l * a.n_rays;
    const float* d = a.dist;
    const M* ms = mst + l;
    int k = 0;
    for (; k + 4 <= a.n_rays; k += 4, d += 4 * ns, ms += 4 * W)
      _mm_storeu_ps(ol + k, _mm_setr_ps(d[ms[0]], d[ns + ms[W]], d[2 * ns + ms[2 * W]], d[3 * ns + ms[3 * W]]));
    for (; k < a.n_rays; ++k, d += ns, ms += W) ol[k] = d[*ms];
  }
}

// W origins of one row at once, one ray at a time: each step loads the W labels the ray reaches and compares
// them with the origins' labels. Instead of recording the stopping step per lane, count the steps each lane
// survives (subtracting the all-ones alive mask): the stop step is that count + 1, or 0 for background lanes,
// whose table distance is 0. Two steps per iteration between ambiguous steps, which are taken one at a time;
// the step after the last one reads at most two more pixels outwards, inside the 4-pixel zero frame. Counters
// have the label width, so uint16 needs n_steps < 32768 (checked by the caller).
template <class V, int GX, int NV>
void march_block(const StarDistArgs& a, const AmbiguousSteps& amb, const typename V::T* lab, int64_t z, int64_t y,
                 int64_t x, const __m256i* vals, const __m256i* fg, typename V::T* mst) {
  using T = typename V::T;
  constexpr int W = V::W;
  const T* base = lab + ((z + a.pad[0]) * a.pin[1] + (y + a.pad[1])) * a.pin[2] + a.pad[2] + x;
  const int64_t lim = a.n_steps - 2;
  for (int k = 0; k < a.n_rays; ++k) {
    const int64_t* off = a.offs + int64_t(k) * a.n_steps;
    const int64_t* next_amb = amb.steps.data() + amb.first[size_t(k)];
    __m256i alive[NV], cnt[NV];
    for (int j = 0; j < NV; ++j) alive[j] = fg[j], cnt[j] = _mm256_setzero_si256();
    auto step = [&](int j, __m256i v) {
      alive[j] = _mm256_and_si256(alive[j], V::eq(v, vals[j]));
      cnt[j] = V::sub(cnt[j], alive[j]);
    };
    auto all_dead = [&]() {
      __m256i any = alive[0];
      for (int j = 1; j < NV; ++j) any = _mm256_or_si256(any, alive[j]);
      return bool(_mm256_testz_si256(any, any));
    };
    int64_t m = 1;
    for (;;) {
      const int64_t end = std::min(lim, *next_amb);  // steps below `end` are plain table steps
      bool dead = false;
      while (m + 1 < end) {
        const int64_t s0 = off[m], s1 = off[m + 1];
        for (int j = 0; j < NV; ++j) step(j, V::template load<GX>(base + j * W * GX + s0));
        for (int j = 0; j < NV; ++j) step(j, V::template load<GX>(base + j * W * GX + s1));
        m += 2;
        if (all_dead()) {
          dead = true;
          break;
        }
      }
      // a lane alive past the table cannot happen (the frame is 0 and the table outlasts every march)
      if (dead || m > lim) break;
      if (m == *next_amb) {
        // rare: evaluate this step exactly per lane (StarDist's rounding of origin + offset)
        const float* pos = a.pos + (int64_t(k) * a.n_steps + m) * a.nd;
        for (int j = 0; j < NV; ++j) {
          alignas(32) T tmp[W];
          for (int l = 0; l < W; ++l) {
            int64_t p;
            tmp[l] = star::exact_step(a, pos, z, y, x + (j * W + l) * GX, p) ? lab[p] : T(0);
          }
          step(j, _mm256_load_si256(reinterpret_cast<const __m256i*>(tmp)));
        }
        ++next_amb;
      } else {
        for (int j = 0; j < NV; ++j) step(j, V::template load<GX>(base + j * W * GX + off[m]));
      }
      ++m;
      if (all_dead()) break;
    }
    for (int j = 0; j < NV; ++j) {
      const __m256i stop = _mm256_and_si256(V::sub(cnt[j], _mm256_set1_epi32(-1)), fg[j]);  // count + 1
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(mst + NV * W * k + j * W), stop);
    }
  }
}

// One output row, W origins per vector. Where two neighbouring vectors both hold foreground, they march together:
// half the ray loops, whose unpredictable exits cost more than the extra steps of the shorter-lived vector
// (2048^2: 1.6M -> 1.2M loop exits). A lane keeps stepping while any lane of its block lives, at most 2 W GX
// pixels beyond the image sideways (wrapping into the 4-row zero frame above or below, never past the buffer).
template <class V, int GX>
void march_row_avx2(const StarDistArgs& a, const AmbiguousSteps& amb, const typename V::T* lab, int64_t oz,
                    int64_t oy, int64_t ox0, int64_t ox1, typename V::T* mst) {
  using T = typename V::T;
  constexpr int W = V::W;
  const int64_t z = oz * a.grid[0], y = oy * a.grid[1];
  const T* row = lab + ((z + a.pad[0]) * a.pin[1] + (y + a.pad[1])) * a.pin[2] + a.pad[2];
  const int64_t nr = a.n_rays;
  float* orow = a.out + (oz * a.osz[1] + oy) * a.osz[2] * nr;
  auto load_fg = [&](int64_t ox, __m256i& vals, __m256i& fg) {
    vals = V::template load<GX>(row + ox * GX);
    fg = _mm256_xor_si256(V::eq(vals, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
    return !_mm256_testz_si256(fg, fg);
  };
  // the block's output is written after the march: ask for its cache lines now
  auto prefetch = [&](float* o, int n) {
    for (int64_t b = 0; b < int64_t(sizeof(float)) * n * nr; b += 64)
      __builtin_prefetch(reinterpret_cast<char*>(o) + b, 1, 3);
  };
  const uint32_t all = uint32_t((uint64_t(1) << W) - 1);
  int64_t ox = ox0;
  while (ox + W <= ox1) {
    __m256i vals[2], fg[2];
    float* o = orow + ox * nr;
    if (!load_fg(ox, vals[0], fg[0])) {
      if (a.zero_background) std::memset(o, 0, sizeof(float) * W * nr);
      ox += W;
      continue;
    }
    if (ox + 2 * W <= ox1 && load_fg(ox + W, vals[1], fg[1])) {
      prefetch(o, 2 * W);
      march_block<V, GX, 2>(a, amb, lab, z, y, ox * GX, vals, fg, mst);
      const uint32_t bits = a.zero_background ? 0xFFFFFFFFu : V::bits(fg[0]) | (V::bits(fg[1]) << W);
      write_block<2 * W>(a, o, mst, W == 16 ? bits : bits & 0xFFFFu);
      ox += 2 * W;
      continue;
    }
    prefetch(o, W);
    march_block<V, GX, 1>(a, amb, lab, z, y, ox * GX, vals, fg, mst);
    write_block<W>(a, o, mst, a.zero_background ? all : V::bits(fg[0]));
    ox += W;
  }
  march_row_scalar(a, lab, oz, oy, ox, ox1);
}
#endif

template <class L>
void star_march_row(const StarDistArgs& a, const AmbiguousSteps& amb, const L* lab, int64_t r) {
  const int64_t oz = r / a.osz[1], oy = r % a.osz[1];
#if CK_SIMD_AVX2
  // the x grid 1 or 2: 16 (uint16 labels) or 8 (int32) origins per vector
  using V = typename std::conditional<std::is_same<L, uint16_t>::value, U16Lanes, I32Lanes>::type;
  if ((a.grid[2] == 1 || a.grid[2] == 2) && std::is_same<L, typename V::T>::value) {
    thread_local std::vector<typename V::T> mst;
    mst.resize(size_t(2 * V::W) * a.n_rays);
    const auto* l = reinterpret_cast<const typename V::T*>(lab);
    if (a.grid[2] == 1)
      march_row_avx2<V, 1>(a, amb, l, oz, oy, 0, a.osz[2], mst.data());
    else
      march_row_avx2<V, 2>(a, amb, l, oz, oy, 0, a.osz[2], mst.data());
    return;
  }
#endif
  march_row_scalar(a, lab, oz, oy, 0, a.osz[2]);
}

template <class L>
void star_march(const StarDistArgs& a) {
  const L* lab = static_cast<const L*>(a.padded);
  const int64_t rows = a.osz[0] * a.osz[1];
  const AmbiguousSteps amb(a);
  const std::vector<int64_t> g =
      page_groups(a.out, a.osz[2] * a.n_rays * int64_t(sizeof(float)), rows, usable_threads());
  dynamic_for(int64_t(g.size()) - 1, rows * a.osz[2] * a.n_rays, [&](int64_t i) {
    for (int64_t r = g[i]; r < g[i + 1]; ++r) star_march_row(a, amb, lab, r);
  });
}

// ---- polygons ------------------------------------------------------------------------------------------------

template <class D>
void coords_typed(const PolyArgs& a) {
  const D* dist = static_cast<const D*>(a.dist);
  const double* sn = a.trig;
  const double* cs = a.trig + a.n_rays;
  parallel_for(a.n, std::max<int64_t>(256, kSerialWork / (16 * a.n_rays)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const D* d = dist + i * a.n_rays;
      float* r = a.coord + i * 2 * a.n_rays;
      float* c = r + a.n_rays;
      const double py = a.points[2 * i], px = a.points[2 * i + 1];
      for (int k = 0; k < a.n_rays; ++k) {
        r[k] = star::coord_of(double(d[k]), sn[k], a.scale[0], py);
        c[k] = star::coord_of(double(d[k]), cs[k], a.scale[1], px);
      }
    }
  });
}

void coords(const PolyArgs& a) {
  if (a.dist_dtype == DType::f64)
    coords_typed<double>(a);
  else
    coords_typed<float>(a);
}

struct Crossing {
  double X;   // where the edge crosses the row (approximate, float64)
  int edge;   // vertex index i of the edge (i - 1 -> i)
  bool rs, ls;
};

// One row of one polygon with skimage's rule (star::pixel_in_polygon), computed from the few edges that cross
// the row: a pixel farther than `delta` from a crossing is decided by the crossing's position, nearer ones by
// skimage's formula itself. With M the largest |coordinate| of the polygon's vertices (the pixels tested lie in
// its box, so |X0| <= M + 1), the crossing computed here is within 11 u M of the exact one and skimage's xcross
// within 8 u (M + |X0|) (u = 2^-53: a few roundings of terms bounded by M, resp. by max|x| |y1 - y0|, since the
// straddling y0, y1 have opposite signs): delta = max(1e-6, 64 u (M + 1)) covers both, so every pixel gets
// skimage's answer whatever the magnitude; inside the documented range (M < 2^23) delta is 1e-6.
// py: the row in image coordinates; c0..c1: columns of `row`, at image coordinates ox + c0..ox + c1.
void raster_row(const float* r, const float* c, int n, int64_t py, int64_t ox, int64_t c0, int64_t c1,
                double delta, int32_t label, int32_t* row, std::vector<Crossing>& cr) {
  cr.clear();
  const double Y = double(py), eps = 1e-12;
  bool vertex_on_row = false;
  double y1 = double(r[n - 1]) - Y;
  for (int i = 0; i < n; ++i) {
    const double y0 = double(r[i]) - Y;
    if (-eps < y0 && y0 < eps) vertex_on_row = true;
    const bool rs = (y0 > 0) != (y1 > 0), ls = (y0 < 0) != (y1 < 0);
    if (rs || ls) {
      const int ip = i == 0 ? n - 1 : i - 1;
      const double ra = r[ip], ca = c[ip], rb = r[i], cb = c[i];
      const double X = ca + (Y - ra) * (cb - ca) / (rb - ra);
      cr.push_back(Crossing{X, i, rs, ls});
    }
    y1 = y0;
  }
  if (cr.empty() && !vertex_on_row) return;
  for (int64_t px = c0; px <= c1; ++px) {
    const double X0 = double(px + ox);
    bool right = false, left = false;
    for (const Crossing& e : cr) {
      bool pos, neg;
      if (e.X > X0 + delta) {
        pos = true;
        neg = false;
      } else if (e.X < X0 - delta) {
        pos = false;
        neg = true;
      } else {
        const int ip = e.edge == 0 ? n - 1 : e.edge - 1;
        const double x0 = double(c[e.edge]) - X0, yy0 = double(r[e.edge]) - Y;
        const double x1 = double(c[ip]) - X0, yy1 = double(r[ip]) - Y;
        const double xc = (x0 * yy1 - x1 * yy0) / (yy1 - yy0);
        pos = xc > 0;
        neg = xc < 0;
      }
      if (e.rs && pos) right = !right;
      if (e.ls && neg) left = !left;
    }
    bool inside = right || left;
    if (!inside && vertex_on_row) {
      for (int i = 0; i < n && !inside; ++i) {
        const double x0 = double(c[i]) - X0, y0 = double(r[i]) - Y;
        inside = -eps < x0 && x0 < eps && -eps < y0 && y0 < eps;
      }
    }
    if (inside) row[px] = label;
  }
}

}  // namespace

void star_dist_cpu(const StarDistArgs& args) {
  StarDistArgs a = args;
  // uint16 when every label fits (16-bit step counters need n_steps < 32768), else int32 / int64
  bool small = false;
  if (a.n_steps < 32000)
    dispatch_int(a.label_dtype, [&](auto tag) { small = pad_labels<decltype(tag), uint16_t, true>(a); });
  if (small) {
    a.padded_dtype = DType::u16;
    star_march<uint16_t>(a);
  } else if (dtype_size(a.label_dtype) <= 4) {
    a.padded_dtype = DType::i32;
    dispatch_int(a.label_dtype, [&](auto tag) { pad_labels<decltype(tag), int32_t, false>(a); });
    star_march<int32_t>(a);
  } else {
    a.padded_dtype = DType::i64;
    dispatch_int(a.label_dtype, [&](auto tag) { pad_labels<decltype(tag), int64_t, false>(a); });
    star_march<int64_t>(a);
  }
}

void dist_to_coord_cpu(const PolyArgs& a) { coords(a); }

// Polygons are painted in `order` (ascending prob), each overwriting the earlier ones. Rows are split into
// bands; each band lists the polygons touching it in paint order, so bands paint independently and the result
// equals the sequential one. `labels` arrives zeroed (the Python API allocates it with zeros).
void polygons_to_label_cpu(const PolyArgs& a) {
  coords(a);
  const int n = a.n_rays;
  std::vector<int64_t> r0(a.n), r1(a.n), c0(a.n), c1(a.n);
  std::vector<double> delta(a.n);
  parallel_for(a.n, std::max<int64_t>(256, kSerialWork / (16 * a.n_rays)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* r = a.coord + i * 2 * n;
      star::raster_range(r, n, a.origin[0], a.H, r0[i], r1[i]);
      star::raster_range(r + n, n, a.origin[1], a.W, c0[i], c1[i]);
      float m = 0;
      for (int k = 0; k < 2 * n; ++k) m = std::max(m, std::fabs(r[k]));
      delta[i] = std::max(1e-6, 64 * 0x1p-53 * (double(m) + 1));
    }
  });
  constexpr int64_t kBand = 16;
  const int64_t nb = (a.H + kBand - 1) / kBand;
  std::vector<int64_t> start(nb + 1, 0);
  for (int64_t i = 0; i < a.n; ++i)
    if (r0[i] <= r1[i] && c0[i] <= c1[i])
      for (int64_t b = r0[i] / kBand; b <= r1[i] / kBand; ++b) ++start[b + 1];
  for (int64_t b = 0; b < nb; ++b) start[b + 1] += start[b];
  std::vector<int64_t> items(start[nb]), fill(start.begin(), start.end() - 1);
  for (int64_t r = 0; r < a.n; ++r) {
    const int64_t i = a.order[r];
    CK_CHECK_VALUE(i >= 0 && i < a.n, "order: index out of range");
    if (r0[i] <= r1[i] && c0[i] <= c1[i])
      for (int64_t b = r0[i] / kBand; b <= r1[i] / kBand; ++b) items[fill[b]++] = i;
  }
  const std::vector<int64_t> g = page_groups(a.labels, kBand * a.W * int64_t(sizeof(int32_t)), nb, usable_threads());
  dynamic_for(int64_t(g.size()) - 1, a.n * a.n_rays * 16 + a.H * a.W / 8, [&](int64_t gi) {
    std::vector<Crossing> cr;
    for (int64_t b = g[gi]; b < g[gi + 1]; ++b) {
      const int64_t y0 = b * kBand, y1 = std::min(a.H, y0 + kBand);
      for (int64_t t = start[b]; t < start[b + 1]; ++t) {
        const int64_t i = items[t];
        const float* r = a.coord + i * 2 * n;
        for (int64_t y = std::max(y0, r0[i]); y < std::min(y1, r1[i] + 1); ++y)
          raster_row(r, r + n, n, y + a.origin[0], a.origin[1], c0[i], c1[i], delta[i], int32_t(i + 1),
                     a.labels + y * a.W, cr);
      }
    }
  });
}

// ---- matching ------------------------------------------------------------------------------------------------

LabelRange label_range_cpu(DType dt, const void* yt, const void* yp, int64_t n) {
  LabelRange out;
  dispatch_int(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* t = static_cast<const T*>(yt);
    const T* p = static_cast<const T*>(yp);
    const int nt = std::max(1, usable_threads());
    std::vector<LabelRange> part(nt);
    const int64_t chunk = (n + nt - 1) / nt;
    auto work = [&](int w) {
      LabelRange r;
      const int64_t b = w * chunk, e = std::min(n, b + chunk);
      if (b >= e) {
        part[w] = r;
        return;
      }
      T tmn = t[b], tmx = t[b], pmn = p[b], pmx = p[b];
      int64_t both = 0;
      for (int64_t i = b; i < e; ++i) {
        const T a = t[i], c = p[i];
        tmn = a < tmn ? a : tmn;
        tmx = a > tmx ? a : tmx;
        pmn = c < pmn ? c : pmn;
        pmx = c > pmx ? c : pmx;
        both += (a != 0) & (c != 0);
      }
      // unsigned 64-bit labels above int64's range are reported as such (negative) and rejected upstream
      r.min_true = int64_t(tmn);
      r.max_true = int64_t(tmx);
      r.min_pred = int64_t(pmn);
      r.max_pred = int64_t(pmx);
      if (std::is_same<T, uint64_t>::value) {
        if (uint64_t(tmx) > uint64_t(INT64_MAX)) r.min_true = -1;
        if (uint64_t(pmx) > uint64_t(INT64_MAX)) r.min_pred = -1;
      }
      r.both = both;
      part[w] = r;
    };
    run_workers(nt, nt > 1 && n > kSerialWork, work);
    bool first = true;
    for (int w = 0; w < nt; ++w) {
      if (w * chunk >= n) continue;
      const LabelRange& r = part[w];
      if (first) {
        out = r;
        first = false;
      } else {
        out.min_true = std::min(out.min_true, r.min_true);
        out.max_true = std::max(out.max_true, r.max_true);
        out.min_pred = std::min(out.min_pred, r.min_pred);
        out.max_pred = std::max(out.max_pred, r.max_pred);
        out.both += r.both;
      }
    }
  });
  return out;
}

namespace {

// A small open-addressing hash map (key -> count) per thread for the (true id, pred id) pairs.
struct PairMap {
  std::vector<uint64_t> keys;
  std::vector<int64_t> vals;
  uint64_t mask = 0;
  int64_t used = 0;
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  explicit PairMap(int64_t cap) {
    uint64_t c = 64;
    while (c < uint64_t(2 * cap)) c <<= 1;
    keys.assign(c, kEmpty);
    vals.assign(c, 0);
    mask = c - 1;
  }
  static uint64_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return k;
  }
  void add(uint64_t k) {
    if (2 * (used + 1) > int64_t(mask + 1)) grow();
    uint64_t h = hash(k) & mask;
    while (keys[h] != kEmpty && keys[h] != k) h = (h + 1) & mask;
    if (keys[h] == kEmpty) {
      keys[h] = k;
      ++used;
    }
    ++vals[h];
  }
  void grow() {
    std::vector<uint64_t> ok = std::move(keys);
    std::vector<int64_t> ov = std::move(vals);
    keys.assign(ok.size() * 2, kEmpty);
    vals.assign(ok.size() * 2, 0);
    mask = keys.size() - 1;
    for (size_t i = 0; i < ok.size(); ++i) {
      if (ok[i] == kEmpty) continue;
      uint64_t h = hash(ok[i]) & mask;
      while (keys[h] != kEmpty) h = (h + 1) & mask;
      keys[h] = ok[i];
      vals[h] = ov[i];
    }
  }
};

}  // namespace

void label_overlap_cpu(DType dt, const void* yt, const void* yp, int64_t n, int32_t* lut_t, int64_t max_t,
                       int32_t* lut_p, int64_t max_p, int64_t* size_t_, int64_t* size_p, int32_t* pair_t,
                       int32_t* pair_p, int64_t* pair_n, int64_t pair_cap, int64_t* counts) {
  dispatch_int(dt, [&](auto tag) {
    using T = decltype(tag);
    const T* t = static_cast<const T*>(yt);
    const T* p = static_cast<const T*>(yp);
    const int nt = std::max(1, usable_threads());
    const int64_t chunk = (n + nt - 1) / nt;
    // 1. which labels occur (every writer stores the same 1; reading first keeps the hot entries shared)
    std::memset(lut_t, 0, sizeof(int32_t) * (max_t + 1));
    std::memset(lut_p, 0, sizeof(int32_t) * (max_p + 1));
    parallel_for(n, kSerialWork, [&](int64_t b, int64_t e) {
      int32_t* __restrict lt = lut_t;
      int32_t* __restrict lp = lut_p;
      for (int64_t i = b; i < e; ++i) {
        const int64_t a = int64_t(t[i]), c = int64_t(p[i]);
        if (!__atomic_load_n(&lt[a], __ATOMIC_RELAXED)) __atomic_store_n(&lt[a], 1, __ATOMIC_RELAXED);
        if (!__atomic_load_n(&lp[c], __ATOMIC_RELAXED)) __atomic_store_n(&lp[c], 1, __ATOMIC_RELAXED);
      }
    });
    // 2. compact ids in ascending label order (np.unique's order), background 0
    auto compact = [](int32_t* lut, int64_t mx) {
      int32_t id = 0;
      lut[0] = 0;
      for (int64_t v = 1; v <= mx; ++v) lut[v] = lut[v] ? ++id : 0;
      return int64_t(id);
    };
    const int64_t n_true = compact(lut_t, max_t), n_pred = compact(lut_p, max_p);
    CK_CHECK_VALUE(n_true < INT32_MAX && n_pred < INT32_MAX, "too many labels");
    // 3. sizes and 4. pair counts, per thread, then merged
    std::vector<std::vector<int64_t>> st(nt, std::vector<int64_t>(n_true + 1, 0)),
        sp(nt, std::vector<int64_t>(n_pred + 1, 0));
    std::vector<PairMap> maps;
    maps.reserve(nt);
    for (int w = 0; w < nt; ++w) maps.emplace_back(std::min<int64_t>(4 * (n_true + n_pred) / nt + 64, 1 << 22));
    auto work = [&](int w) {
      const int64_t b = w * chunk, e = std::min(n, b + chunk);
      int64_t* __restrict a1 = st[w].data();
      int64_t* __restrict a2 = sp[w].data();
      const int32_t* __restrict lt = lut_t;
      const int32_t* __restrict lp = lut_p;
      PairMap& m = maps[w];
      // background in both images (most pixels) is not counted here: incrementing one counter every pixel is a
      // chain of dependent read-modify-writes; its size follows from the total
      for (int64_t i = b; i < e; ++i) {
        const int32_t it = lt[int64_t(t[i])], ip = lp[int64_t(p[i])];
        if (it | ip) {
          ++a1[it];
          ++a2[ip];
          if (it && ip) m.add((uint64_t(uint32_t(it)) << 32) | uint32_t(ip));
        }
      }
    };
    run_workers(nt, nt > 1 && n > kSerialWork, work);
    for (int64_t i = 0; i <= n_true; ++i) {
      int64_t s = 0;
      for (int w = 0; w < nt; ++w) s += st[w][i];
      size_t_[i] = s;
    }
    for (int64_t i = 0; i <= n_pred; ++i) {
      int64_t s = 0;
      for (int w = 0; w < nt; ++w) s += sp[w][i];
      size_p[i] = s;
    }
    int64_t fg_t = 0, fg_p = 0;
    for (int64_t i = 1; i <= n_true; ++i) fg_t += size_t_[i];
    for (int64_t i = 1; i <= n_pred; ++i) fg_p += size_p[i];
    size_t_[0] = n - fg_t;
    size_p[0] = n - fg_p;
    std::vector<std::pair<uint64_t, int64_t>> all;
    for (auto& m : maps)
      for (size_t h = 0; h < m.keys.size(); ++h)
        if (m.keys[h] != PairMap::kEmpty) all.emplace_back(m.keys[h], m.vals[h]);
    std::sort(all.begin(), all.end());
    int64_t np = 0;
    for (size_t i = 0; i < all.size();) {
      size_t j = i;
      int64_t c = 0;
      while (j < all.size() && all[j].first == all[i].first) c += all[j++].second;
      CK_CHECK(np < pair_cap, "internal: pair buffer too small");
      pair_t[np] = int32_t(all[i].first >> 32);
      pair_p[np] = int32_t(all[i].first & 0xffffffffu);
      pair_n[np] = c;
      ++np;
      i = j;
    }
    counts[0] = n_true;
    counts[1] = n_pred;
    counts[2] = np;
  });
}

CK_NS_END
