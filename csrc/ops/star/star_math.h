// Star-convex polygon math written once for CPU, CUDA and the emulator: ray steps, polygon areas and exact
// intersections, skimage's pixel-in-polygon rule, and the NMS pair decision.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "core/hd.h"
#include "ops/star/star.h"

// The O(n) reductions of the NMS pair test have AVX2 forms for the host (GCC does not vectorise them: the
// per-lane accumulators and the select chains defeat it). They do the same IEEE operations per element as the
// scalar forms, and sums keep the scalar forms' four interleaved lanes, so both give identical bits (the
// emulator and CUDA use the scalar forms; the tests compare the kept sets).
#if defined(__AVX2__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#define CK_STAR_AVX2 1
#else
#define CK_STAR_AVX2 0
#endif

CK_NS_BEGIN
namespace star {

// ---- arithmetic that must not be contracted into FMAs -------------------------------------------------------
// Exactness against StarDist / skimage needs each product rounded on its own. Host TUs of this op are compiled
// with -ffp-contract=off (CMakeLists.txt); nvcc contracts by default, so device code spells the rounding out.
CK_HD double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
CK_HD double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
CK_HD double dsub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
CK_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
CK_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
// lrint: round half to even (the default rounding mode), what StarDist's round_to_int does.
CK_HD int64_t rint_i64(float v) {
#if defined(__CUDA_ARCH__)
  return __float2ll_rn(v);
#else
  return (int64_t)std::nearbyint(v);
#endif
}

// Plain min/max: std::fmin/fmax are library calls when NaN semantics must be kept (no NaN reaches these).
CK_HD double dmin(double a, double b) { return a < b ? a : b; }
CK_HD double dmax(double a, double b) { return a > b ? a : b; }

// ---- star_dist: the per-ray tables ------------------------------------------------------------------------

// Whether lrint(fl(o + x)) may differ from o + lrint(x) for an integer origin o with |o + x| < 2^e: only when
// the fraction of x lies within a few ulps (of the largest coordinate) of one half. `tol` is that distance.
CK_HD bool near_half(float x, float tol) {
  const float f = x - std::floor(x);  // exact in float32
  return std::fabs(f - 0.5f) <= tol;
}

// The 2D distance StarDist reports when the ray with unit step (sy, sx) stops at accumulated offset (y, x):
// back off (1 - 0.5 / max(|sy|, |sx|)) of a step, then the float32 length.
CK_HD float stop_dist_2d(float y, float x, float sy, float sx) {
  const float t = 0.5f / std::fmax(std::fabs(sy), std::fabs(sx));
  const float ry = fadd(y, fmul(t - 1.f, sy)), rx = fadd(x, fmul(t - 1.f, sx));
  return std::sqrt(fadd(fmul(ry, ry), fmul(rx, rx)));
}

// 3D: the length of the rounded offset of the first voxel outside (StarDist: sqrt of an int sum, in double).
CK_HD float stop_dist_3d(float z, float y, float x) {
  const int64_t a = rint_i64(z), b = rint_i64(y), c = rint_i64(x);
  return float(std::sqrt(double(a * a + b * b + c * c)));
}

// The exact padded linear offset of step m from an origin (oz, oy, ox) (label-image coordinates), for steps the
// table marks ambiguous: StarDist's lrint(float(o) + offset) per coordinate. Returns false if the voxel would lie
// outside the padded buffer (cannot happen for |step| <= 1; kept as a guard).
CK_HD bool exact_step(const StarDistArgs& a, const float* pos, int64_t oz, int64_t oy, int64_t ox, int64_t& lin) {
  int64_t c[3];
  const int64_t o[3] = {oz, oy, ox};
  for (int d = 0; d < 3; ++d) {
    if (a.nd == 2 && d == 0) {
      c[0] = 0;
      continue;
    }
    const float v = fadd(float(o[d]), pos[a.nd == 2 ? d - 1 : d]);
    c[d] = rint_i64(v) + a.pad[d];
    if (c[d] < 0 || c[d] >= a.pin[d]) return false;
  }
  lin = (c[0] * a.pin[1] + c[1]) * a.pin[2] + c[2];
  return true;
}

// Step m at which the ray k from the origin at padded linear index p0 stops (its label differs from v). The
// padded frame is label 0 and v != 0, so every ray stops inside the table (n_steps covers the image).
template <class L>
CK_HD int64_t march(const StarDistArgs& a, const L* lab, int64_t p0, L v, int k, int64_t oz, int64_t oy,
                    int64_t ox) {
  const int64_t* off = a.offs + int64_t(k) * a.n_steps;
  int64_t m = 1;
  for (; m < a.n_steps; ++m) {
    int64_t o = off[m];
    int64_t p;
    if (o == kAmbiguousStep) {
      if (!exact_step(a, a.pos + (int64_t(k) * a.n_steps + m) * a.nd, oz, oy, ox, p)) break;
    } else {
      p = p0 + o;
    }
    if (lab[p] != v) break;
  }
  return m < a.n_steps ? m : a.n_steps - 1;
}

// ---- 2D geometry (float64, (row, col) = (y, x)) ---------------------------------------------------------

struct V2 {
  double y, x;
};
CK_HD V2 v2(double y, double x) {
  V2 r;
  r.y = y;
  r.x = x;
  return r;
}
CK_HD V2 sub(V2 a, V2 b) { return v2(a.y - b.y, a.x - b.x); }
CK_HD V2 add(V2 a, V2 b) { return v2(a.y + b.y, a.x + b.x); }
CK_HD V2 scale(V2 a, double s) { return v2(a.y * s, a.x * s); }
// z of (x, y) x (x', y'): positive when b is counter-clockwise from a in the (x = col, y = row) frame, the
// direction of increasing ray angle (ray k points along (sin phi_k, cos phi_k) in (row, col)).
CK_HD double cross(V2 a, V2 b) { return a.x * b.y - a.y * b.x; }
CK_HD double dot(V2 a, V2 b) { return a.x * b.x + a.y * b.y; }


// Polygon vertices stored as two arrays (rows y[], cols x[]): the O(n) loops over them vectorise.
struct Verts {
  const double* y;
  const double* x;
  CK_HD V2 operator[](int k) const { return v2(y[k], x[k]); }
};

// A star polygon: centre c and n distances along the rays of the trig table (sin row sn, cos row cs); vertex
// k is c + d_k (sin phi_k, cos phi_k). Distances are read as given (float or double); negative ones count as 0.
template <class D>
CK_HD double ray_len(const D* d, int k) {
  const double v = double(d[k]);
  return v > 0 ? v : 0.0;
}

// The vertices in a frame where the centre sits at `c`.
template <class D>
CK_HD void star_vertices(V2 c, const D* d, int n, const double* sn, const double* cs, double* vy, double* vx) {
  int k = 0;
#if CK_STAR_AVX2
  // GCC leaves this loop scalar (a fifth of the NMS sweep). maxpd(r, 0) is the select below, NaN included: it
  // returns its second operand unless r > 0.
  {
    const __m256d cy = _mm256_set1_pd(c.y), cx = _mm256_set1_pd(c.x), zero = _mm256_setzero_pd();
    for (; k + 4 <= n; k += 4) {
      __m256d r;
      if (sizeof(D) == 4)
        r = _mm256_cvtps_pd(_mm_loadu_ps(reinterpret_cast<const float*>(d + k)));
      else
        r = _mm256_loadu_pd(reinterpret_cast<const double*>(d + k));
      r = _mm256_max_pd(r, zero);
      _mm256_storeu_pd(vy + k, _mm256_add_pd(cy, _mm256_mul_pd(r, _mm256_loadu_pd(sn + k))));
      _mm256_storeu_pd(vx + k, _mm256_add_pd(cx, _mm256_mul_pd(r, _mm256_loadu_pd(cs + k))));
    }
  }
#endif
  for (; k < n; ++k) {
    const double r0 = double(d[k]), r = r0 > 0 ? r0 : 0.0;
    vy[k] = c.y + r * sn[k];
    vx[k] = c.x + r * cs[k];
  }
}

// Area of {x in P : dot(nrm, x) >= off} for a polygon P given by its vertices (as a closed chain: Sutherland-
// Hodgman against one half-plane keeps the winding integral, so this is exact for non-convex P too).
CK_HD double halfplane_area(Verts v, int n, V2 nrm, double off) {
  double s = 0;
  bool have_first = false;
  V2 first = v2(0, 0), last = v2(0, 0);
  V2 a = v[n - 1];
  double fa = dot(nrm, a) - off;
  for (int k = 0; k < n; ++k) {
    const V2 b = v[k];
    const double fb = dot(nrm, b) - off;
    for (int e = 0; e < 2; ++e) {  // emit the crossing, then b if inside
      V2 q;
      if (e == 0) {
        if ((fa >= 0) == (fb >= 0)) continue;
        q = add(a, scale(sub(b, a), fa / (fa - fb)));
      } else {
        if (fb < 0) continue;
        q = b;
      }
      if (!have_first) {
        first = q;
        have_first = true;
      } else {
        s += cross(last, q);
      }
      last = q;
    }
    a = b;
    fa = fb;
  }
  if (have_first) s += cross(last, first);
  return 0.5 * std::fabs(s);
}

// Intersection area of two triangles (each given counter-clockwise or clockwise), by Sutherland-Hodgman.
CK_HD double triangle_overlap(const V2* t1, const V2* t2) {
  V2 buf[2][12];
  int n = 3;
  for (int i = 0; i < 3; ++i) buf[0][i] = t1[i];
  const double o2 = cross(sub(t2[1], t2[0]), sub(t2[2], t2[0]));
  const double sgn = o2 >= 0 ? 1.0 : -1.0;
  int cur = 0;
  for (int e = 0; e < 3 && n > 0; ++e) {
    const V2 a = t2[e], b = t2[(e + 1) % 3];
    const V2 ab = sub(b, a);
    V2* in = buf[cur];
    V2* out = buf[cur ^ 1];
    int m = 0;
    V2 p = in[n - 1];
    double fp = sgn * cross(ab, sub(p, a));
    for (int i = 0; i < n; ++i) {
      const V2 q = in[i];
      const double fq = sgn * cross(ab, sub(q, a));
      if ((fp >= 0) != (fq >= 0)) out[m++] = add(p, scale(sub(q, p), fp / (fp - fq)));
      if (fq >= 0) out[m++] = q;
      p = q;
      fp = fq;
    }
    n = m;
    cur ^= 1;
  }
  if (n < 3) return 0.0;
  double s = 0;
  for (int i = 0; i < n; ++i) s += cross(buf[cur][i], buf[cur][(i + 1) % n]);
  return 0.5 * std::fabs(s);
}

// Result of an intersection query with a decision threshold T on the intersection area.
struct InterResult {
  double area;   // exact area, or a partial sum when `decided`
  int decided;   // 0: area is exact; 1: area > T certainly; -1: area <= T certainly (early exit)
};

// A cheap atan2 in [0, 2 pi) with an error below 2e-5 rad (enough to choose candidate wedges conservatively).
CK_HD double approx_angle(double y, double x) {
  const double ax = std::fabs(x), ay = std::fabs(y);
  const double mx = dmax(ax, ay), mn = dmin(ax, ay);
  if (mx == 0) return 0;
  const double t = mn / mx, t2 = t * t;
  double r = ((-0.0464964749 * t2 + 0.15931422) * t2 - 0.327622764) * t2 * t + t;  // atan(t), |err| < 1e-5
  if (ay > ax) r = 1.5707963267948966 - r;
  if (x < 0) r = 3.141592653589793 - r;
  if (y < 0) r = 6.283185307179586 - r;
  return r;
}

// Exact area(A and B) through the two fans of triangles (each convex, interiors disjoint: the area is the sum of
// the triangle-pair overlaps): the robust fallback. va/vb: vertices, oa/ob: centres, all in one frame. Only B's
// wedges that can meet A's wedge are clipped: when B's centre lies outside that wedge it sees it under an arc of
// less than pi, and B's wedges are the equal angular sectors around its centre, so the arc (widened by one sector
// against the approximate angles) names them; bounding boxes prune the rest. With T >= 0 it stops once area > T
// or area + (A's unvisited wedges) <= T is certain (relative margin 1e-9), as star_sweep.
CK_HD InterResult fan_intersection(Verts va, V2 oa, Verts vb, V2 ob, int n, double areaA, double T) {
  const double step = 6.283185307179586 / n;
  const double margin = 1e-9 * (T > 0 ? T : 0.0) + 1e-12 * areaA;
  double total = 0, doneA = 0;
  for (int k = 0; k < n; ++k) {
    const V2 ta[3] = {oa, va[(k + n - 1) % n], va[k]};
    const double wa = 0.5 * std::fabs(cross(sub(ta[1], oa), sub(ta[2], oa)));
    if (wa == 0) continue;
    const double aymin = dmin(oa.y, dmin(ta[1].y, ta[2].y)), aymax = dmax(oa.y, dmax(ta[1].y, ta[2].y));
    const double axmin = dmin(oa.x, dmin(ta[1].x, ta[2].x)), axmax = dmax(oa.x, dmax(ta[1].x, ta[2].x));
    // which of B's wedges to try: all, or those within the arc under which B's centre sees this wedge
    int l_first = 0, l_count = n;
    {
      const V2 p0 = sub(ta[0], ob), p1 = sub(ta[1], ob), p2 = sub(ta[2], ob);
      const double s0 = cross(sub(ta[1], ta[0]), sub(ob, ta[0])), s1 = cross(sub(ta[2], ta[1]), sub(ob, ta[1])),
                   s2 = cross(sub(ta[0], ta[2]), sub(ob, ta[2]));
      const bool ccw = cross(sub(ta[1], ta[0]), sub(ta[2], ta[0])) > 0;
      const bool outside = ccw ? (s0 < 0 || s1 < 0 || s2 < 0) : (s0 > 0 || s1 > 0 || s2 > 0);
      if (outside && (p0.x != 0 || p0.y != 0) && (p1.x != 0 || p1.y != 0) && (p2.x != 0 || p2.y != 0)) {
        double ang[3] = {approx_angle(p0.y, p0.x), approx_angle(p1.y, p1.x), approx_angle(p2.y, p2.x)};
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2 - i; ++j)
            if (ang[j] > ang[j + 1]) {
              const double t = ang[j];
              ang[j] = ang[j + 1];
              ang[j + 1] = t;
            }
        // the smallest arc holding the three directions starts after the largest gap between them
        const double g0 = ang[1] - ang[0], g1 = ang[2] - ang[1], g2 = ang[0] + 6.283185307179586 - ang[2];
        double lo, width;
        if (g2 >= g0 && g2 >= g1) {
          lo = ang[0];
          width = ang[2] - ang[0];
        } else if (g0 >= g1) {
          lo = ang[1];
          width = ang[0] + 6.283185307179586 - ang[1];
        } else {
          lo = ang[2];
          width = ang[1] + 6.283185307179586 - ang[2];
        }
        const int first = int(std::floor(lo / step)) - 1;
        const int count = int(std::floor((lo + width) / step)) + 1 - first + 1;
        if (count < n) {
          l_first = ((first % n) + n) % n;
          l_count = count;
        }
      }
    }
    for (int t = 0; t < l_count; ++t) {
      const int l = (l_first + t) % n;  // B's wedge between rays l and l + 1
      const V2 b0 = vb[l], b1 = vb[(l + 1) % n];
      const double bymin = dmin(ob.y, dmin(b0.y, b1.y)), bymax = dmax(ob.y, dmax(b0.y, b1.y));
      const double bxmin = dmin(ob.x, dmin(b0.x, b1.x)), bxmax = dmax(ob.x, dmax(b0.x, b1.x));
      if (bymin >= aymax || aymin >= bymax || bxmin >= axmax || axmin >= bxmax) continue;
      if (cross(sub(b0, ob), sub(b1, ob)) == 0) continue;
      const V2 tb[3] = {ob, b0, b1};
      total += triangle_overlap(ta, tb);
    }
    doneA += wa;
    if (T >= 0) {
      if (total > T + margin) return InterResult{total, 1};
      if (total + (areaA - doneA) < T - margin) return InterResult{total, -1};
    }
  }
  return InterResult{total, 0};
}

// Whether the point o lies strictly inside every edge's half-plane of the polygon v (then the polygon is
// star-shaped about o and o sees every edge under a positive angle below pi): the condition for the radial sweep.
// Zero-length edges are skipped; the margin (1e-9 relative) keeps nearly collinear configurations on the fan path.
CK_HD bool in_kernel(Verts v, int n, V2 o) {
  V2 a = sub(v[n - 1], o);
  for (int l = 0; l < n; ++l) {
    const V2 b = sub(v[l], o);
    const V2 e = sub(b, a);
    if (e.x != 0 || e.y != 0) {
      const double c = -cross(e, a);  // cross(e, o - a), o the origin
      const double sc = 1.0 + std::fabs(a.x) + std::fabs(a.y);
      if (!(c > 0) || c * c <= 1e-18 * dot(e, e) * sc * sc) return false;
    }
    a = b;
  }
  return true;
}

#if CK_STAR_AVX2
// The per-edge terms of boundary_clear_edge and seg_dist2 for the four edges l - 1 -> l, ..., l + 2 -> l + 3,
// relative to the point (oy, ox): the same operations as the scalar forms, so the same bits.
struct EdgeTerms4 {
  __m256d aa, bb, ee, t, c;  // |a|^2, |b|^2, |e|^2, -dot(a, e), cross(a, b)
};
inline EdgeTerms4 edge_terms4(Verts v, int l, __m256d oy, __m256d ox) {
  const __m256d ay = _mm256_sub_pd(_mm256_loadu_pd(v.y + l - 1), oy);
  const __m256d ax = _mm256_sub_pd(_mm256_loadu_pd(v.x + l - 1), ox);
  const __m256d by = _mm256_sub_pd(_mm256_loadu_pd(v.y + l), oy);
  const __m256d bx = _mm256_sub_pd(_mm256_loadu_pd(v.x + l), ox);
  const __m256d ey = _mm256_sub_pd(by, ay), ex = _mm256_sub_pd(bx, ax);
  EdgeTerms4 e;
  e.aa = _mm256_add_pd(_mm256_mul_pd(ax, ax), _mm256_mul_pd(ay, ay));
  e.bb = _mm256_add_pd(_mm256_mul_pd(bx, bx), _mm256_mul_pd(by, by));
  e.ee = _mm256_add_pd(_mm256_mul_pd(ex, ex), _mm256_mul_pd(ey, ey));
  e.t = _mm256_sub_pd(_mm256_setzero_pd(), _mm256_add_pd(_mm256_mul_pd(ax, ex), _mm256_mul_pd(ay, ey)));
  e.c = _mm256_sub_pd(_mm256_mul_pd(ax, by), _mm256_mul_pd(ay, bx));
  return e;
}
#endif

// Whether every boundary segment of the polygon v is at squared distance >= K from o (division-free and
// branch-free: same-object pairs pass it, so an early exit would only add mispredictions).
CK_HD bool boundary_clear_edge(double ay, double ax, double by, double bx, double K) {
  const double ey = by - ay, ex = bx - ax;
  const double aa = ax * ax + ay * ay, bb = bx * bx + by * by;
  const double ee = ex * ex + ey * ey, t = -(ax * ex + ay * ey);  // projection of o on the edge, times |e|^2
  const double c = ax * by - ay * bx;
  // the nearest point is a (t <= 0), b (t >= ee), or inside the segment (distance^2 = c^2 / ee); bitwise logic
  // rather than branches, so the loop over the edges vectorises
  const bool at_a = t <= 0, at_b = t >= ee;
  const bool pass_a = aa >= K, pass_b = bb >= K, pass_m = c * c >= K * ee;
  return (at_a & pass_a) | (!at_a & at_b & pass_b) | (!at_a & !at_b & pass_m);
}

CK_HD bool boundary_clear(Verts v, int n, V2 o, double K) {
  // edge l runs from vertex l - 1 to l; the closing edge separately, so the loop is straight-line
  bool ok = boundary_clear_edge(v.y[n - 1] - o.y, v.x[n - 1] - o.x, v.y[0] - o.y, v.x[0] - o.x, K);
  int l = 1;
#if CK_STAR_AVX2
  const __m256d oy = _mm256_set1_pd(o.y), ox = _mm256_set1_pd(o.x), vk = _mm256_set1_pd(K);
  const __m256d zero = _mm256_setzero_pd();
  __m256d all = _mm256_castsi256_pd(_mm256_set1_epi64x(-1));
  for (; l + 4 <= n; l += 4) {
    const EdgeTerms4 e = edge_terms4(v, l, oy, ox);
    const __m256d at_a = _mm256_cmp_pd(e.t, zero, _CMP_LE_OQ), at_b = _mm256_cmp_pd(e.t, e.ee, _CMP_GE_OQ);
    const __m256d pass_a = _mm256_cmp_pd(e.aa, vk, _CMP_GE_OQ), pass_b = _mm256_cmp_pd(e.bb, vk, _CMP_GE_OQ);
    const __m256d pass_m = _mm256_cmp_pd(_mm256_mul_pd(e.c, e.c), _mm256_mul_pd(vk, e.ee), _CMP_GE_OQ);
    all = _mm256_and_pd(all, _mm256_blendv_pd(_mm256_blendv_pd(pass_m, pass_b, at_b), pass_a, at_a));
  }
  ok &= _mm256_movemask_pd(all) == 0xF;
#endif
  for (; l < n; ++l)
    ok &= boundary_clear_edge(v.y[l - 1] - o.y, v.x[l - 1] - o.x, v.y[l] - o.y, v.x[l] - o.x, K);
  return ok;
}

// Whether o lies in the star polygon with vertices v around centre c (n equal sectors from ray 0): o is in the
// triangle (c, v_l, v_l+1) of its sector; the sector comes from an approximate angle, so its neighbours are
// tested too (exact triangle tests).
CK_HD bool in_star(Verts v, V2 c, int n, V2 o) {
  const V2 q = sub(o, c);
  if (q.x == 0 && q.y == 0) return true;
  // the sector of q's approximate angle (a product, not a division: the neighbours are tested anyway)
  int l = int(approx_angle(q.y, q.x) * (n * 0.15915494309189535));  // in [0, n]
  l = l >= n ? l - n : l;
  for (int t = -1; t <= 1; ++t) {
    int l0 = l + t;  // the sector and its neighbours, wrapped without a division (this runs for every pair)
    l0 = l0 < 0 ? l0 + n : (l0 >= n ? l0 - n : l0);
    const int l1 = l0 + 1 == n ? 0 : l0 + 1;
    const V2 a = sub(v[l0], c), b = sub(v[l1], c);
    // inside the closed triangle (0, a, b), counter-clockwise: all three crosses >= 0
    if (cross(a, q) >= 0 && cross(q, b) >= 0 && cross(sub(b, a), sub(q, a)) >= 0 && cross(a, b) > 0) return true;
  }
  return false;
}

// The point at which the ray from the origin along `dir` meets the line through p0, p1.
CK_HD V2 ray_line(V2 dir, V2 p0, V2 p1) {
  const V2 e = sub(p1, p0);
  const double den = cross(dir, e);
  if (den == 0) return v2(0, 0);
  return scale(dir, cross(p0, e) / den);
}

// Exact area(P and Q) when both are star-shaped about P's centre op, which holds when op lies strictly in Q's
// kernel (in_kernel): then P and Q meet in the star-shaped region of radius min(rho_P, rho_Q) in every direction.
// Sweep the directions of P's rays and Q's vertices in angular order; between two consecutive events both
// boundaries are single segments, so the region there is a triangle, or two where the segments cross: O(n + m)
// instead of the O(n m) of the fans. vp, vq: vertices in one frame; dp: P's distances (a zero one makes its two
// sectors empty). With T >= 0 the sweep stops as soon as the partial area exceeds T (decided 1) or can no longer
// reach it (decided -1), margin 1e-9 relative.
template <class D>
CK_HD InterResult star_sweep(Verts vp, const D* dp, V2 op, Verts vq, int n, const double* sn,
                             const double* cs, double areaP, double areaQ, double T) {
  // Q's vertex angles about op increase cyclically: its first vertex at angle >= 0 (upper half plane, or the
  // +x axis) follows the one vertex in the lower half. Exact sign tests, no angles.
  auto lower = [&](int l) {
    const V2 q = sub(vq[l], op);
    return q.y < 0 || (q.y == 0 && q.x < 0);
  };
  int l0 = 0;
  for (int l = 0; l < n; ++l)
    if (lower((l + n - 1) % n) && !lower(l)) {
      l0 = l;
      break;
    }
  const double margin = 1e-9 * (T > 0 ? T : 0.0) + 1e-12 * (areaP + areaQ);
  double total = 0, doneP = 0, doneQ = 0;
  int kn = 0, ln = 0;  // events consumed
  V2 firstP = v2(0, 0), firstQ = v2(0, 0), prevP = v2(0, 0), prevQ = v2(0, 0);
  bool have_prev = false;
  while (kn < n || ln < n) {
    const int L = (l0 + ln) % n;     // Q's next vertex ...
    const int Lp = (L + n - 1) % n;  // ... so Q's current edge is Lp -> L
    // both next events lie less than pi ahead (a sector of P, an edge of Q seen from inside its kernel), so the
    // sign of a cross product orders them
    const bool takeP = kn < n && (ln >= n || cross(v2(sn[kn], cs[kn]), sub(vq[L], op)) >= 0);
    V2 pP, pQ;
    if (takeP) {
      const V2 dir = v2(sn[kn], cs[kn]);
      pP = sub(vp[kn], op);
      pQ = ray_line(dir, sub(vq[Lp], op), sub(vq[L], op));
    } else {
      pQ = sub(vq[L], op);
      // P's current sector lies between rays k0 = kn - 1 and k1 = kn (wrapping); a zero distance empties it
      const int k1 = kn < n ? kn : 0, k0 = (k1 + n - 1) % n;
      if (ray_len(dp, k0) == 0 || ray_len(dp, k1) == 0)
        pP = v2(0, 0);
      else
        pP = ray_line(pQ, sub(vp[k0], op), sub(vp[k1], op));
    }
    if (have_prev) {
      // the interval from the previous event: P's points prevP -> pP, Q's prevQ -> pQ, on one segment each
      doneP += 0.5 * cross(prevP, pP);
      doneQ += 0.5 * cross(prevQ, pQ);
      const bool s0 = dot(prevP, prevP) <= dot(prevQ, prevQ), s1 = dot(pP, pP) <= dot(pQ, pQ);
      const V2 m0 = s0 ? prevP : prevQ, m1 = s1 ? pP : pQ;
      if (s0 == s1) {
        total += 0.5 * cross(m0, m1);
      } else {
        const V2 ea = sub(pP, prevP), eb = sub(pQ, prevQ);
        const double den = cross(ea, eb);
        double t = den != 0 ? cross(sub(prevQ, prevP), eb) / den : 0.5;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        const V2 X = add(prevP, scale(ea, t));
        total += 0.5 * (cross(m0, X) + cross(X, m1));
      }
      if (T >= 0) {
        if (total > T + margin) return InterResult{total, 1};
        if (total + dmin(areaP - doneP, areaQ - doneQ) < T - margin) return InterResult{total, -1};
      }
    } else {
      firstP = pP;
      firstQ = pQ;
      have_prev = true;
    }
    prevP = pP;
    prevQ = pQ;
    if (takeP)
      ++kn;
    else
      ++ln;
  }
  // the last interval wraps around to ray 0
  {
    const bool s0 = dot(prevP, prevP) <= dot(prevQ, prevQ), s1 = dot(firstP, firstP) <= dot(firstQ, firstQ);
    const V2 m0 = s0 ? prevP : prevQ, m1 = s1 ? firstP : firstQ;
    if (s0 == s1) {
      total += 0.5 * cross(m0, m1);
    } else {
      const V2 ea = sub(firstP, prevP), eb = sub(firstQ, prevQ);
      const double den = cross(ea, eb);
      double t = den != 0 ? cross(sub(prevQ, prevP), eb) / den : 0.5;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const V2 X = add(prevP, scale(ea, t));
      total += 0.5 * (cross(m0, X) + cross(X, m1));
    }
  }
  return InterResult{total, 0};
}

// Bounding box, area and circumradius of a candidate (what the NMS prunes with), from its absolute centre.
struct PolyGeom {
  double area, ymin, ymax, xmin, xmax, rmax;
  double rin2;  // squared distance from the centre to the boundary, or -1 when not computed yet
};

// The clearance term of one edge (from a to b, relative to the point): squared distance to the segment.
CK_HD double seg_dist2(double ay, double ax, double by, double bx) {
  const double ey = by - ay, ex = bx - ax;
  const double ee = ex * ex + ey * ey, t = -(ax * ex + ay * ey);
  const double c = ax * by - ay * bx;
  const double mid = ee > 0 ? c * c / ee : ax * ax + ay * ay;
  return t <= 0 ? ax * ax + ay * ay : (t >= ee ? bx * bx + by * by : mid);
}

// Squared distance from o to the boundary segments of the polygon v. Four interleaved minima: one running min
// is a chain of dependent compares (the compiler may not reorder floating-point reductions).
CK_HD double clearance2(Verts v, int n, V2 o) {
  double m[4] = {1e300, 1e300, 1e300, 1e300};
  m[0] = seg_dist2(v.y[n - 1] - o.y, v.x[n - 1] - o.x, v.y[0] - o.y, v.x[0] - o.x);
  int k = 1;
#if CK_STAR_AVX2
  // a minimum does not depend on the order: one vector of running minima
  const __m256d oy = _mm256_set1_pd(o.y), ox = _mm256_set1_pd(o.x), zero = _mm256_setzero_pd();
  __m256d mv = _mm256_set1_pd(1e300);
  for (; k + 4 <= n; k += 4) {
    const EdgeTerms4 e = edge_terms4(v, k, oy, ox);
    const __m256d mid = _mm256_blendv_pd(e.aa, _mm256_div_pd(_mm256_mul_pd(e.c, e.c), e.ee),
                                         _mm256_cmp_pd(e.ee, zero, _CMP_GT_OQ));
    const __m256d d = _mm256_blendv_pd(_mm256_blendv_pd(mid, e.bb, _mm256_cmp_pd(e.t, e.ee, _CMP_GE_OQ)), e.aa,
                                       _mm256_cmp_pd(e.t, zero, _CMP_LE_OQ));
    mv = _mm256_min_pd(mv, d);
  }
  alignas(32) double mm[4];
  _mm256_store_pd(mm, mv);
  m[1] = dmin(dmin(mm[0], mm[1]), dmin(mm[2], mm[3]));
#endif
  for (; k < n; ++k)
    m[k & 3] = dmin(m[k & 3], seg_dist2(v.y[k - 1] - o.y, v.x[k - 1] - o.x, v.y[k] - o.y, v.x[k] - o.x));
  return dmin(dmin(m[0], m[1]), dmin(m[2], m[3]));
}

// Box, circumradius and area from the distances; vy, vx: scratch of n doubles (the vertices relative to the
// centre). rin2 (the clearance) is left at -1: it is computed where needed. Four interleaved accumulators per
// reduction, as clearance2.
template <class D>
CK_HD PolyGeom poly_geom(V2 c, const D* d, int n, const double* sn, const double* cs, double* vy, double* vx) {
  star_vertices(v2(0, 0), d, n, sn, cs, vy, vx);
  double ymin[4] = {0, 0, 0, 0}, ymax[4] = {0, 0, 0, 0}, xmin[4] = {0, 0, 0, 0}, xmax[4] = {0, 0, 0, 0};
  double rmax[4] = {0, 0, 0, 0}, s[4] = {0, 0, 0, 0};
  s[0] = vx[n - 1] * vy[0] - vy[n - 1] * vx[0];
  int k0 = 0;
#if CK_STAR_AVX2
  if (n >= 8) {
    // lane j holds the scalar form's accumulators [j]; the first block's cross terms (k = 1..3) are scalar
    __m256d vymin = _mm256_setzero_pd(), vymax = vymin, vxmin = vymin, vxmax = vymin, vr = vymin;
    __m256d vs = _mm256_set_pd(vx[2] * vy[3] - vy[2] * vx[3], vx[1] * vy[2] - vy[1] * vx[2],
                               vx[0] * vy[1] - vy[0] * vx[1], s[0]);
    for (; k0 + 4 <= n; k0 += 4) {
      const __m256d y = _mm256_loadu_pd(vy + k0), x = _mm256_loadu_pd(vx + k0);
      vymin = _mm256_min_pd(y, vymin);  // (a < b ? a : b) is minpd(a, b) with the operands swapped
      vymax = _mm256_max_pd(y, vymax);
      vxmin = _mm256_min_pd(x, vxmin);
      vxmax = _mm256_max_pd(x, vxmax);
      __m256d r;
      if (sizeof(D) == 4)
        r = _mm256_cvtps_pd(_mm_loadu_ps(reinterpret_cast<const float*>(d + k0)));
      else
        r = _mm256_loadu_pd(reinterpret_cast<const double*>(d + k0));
      vr = _mm256_max_pd(_mm256_max_pd(r, _mm256_setzero_pd()), vr);
      if (k0 > 0) {
        const __m256d py = _mm256_loadu_pd(vy + k0 - 1), px = _mm256_loadu_pd(vx + k0 - 1);
        vs = _mm256_add_pd(vs, _mm256_sub_pd(_mm256_mul_pd(px, y), _mm256_mul_pd(py, x)));
      }
    }
    _mm256_storeu_pd(ymin, vymin);
    _mm256_storeu_pd(ymax, vymax);
    _mm256_storeu_pd(xmin, vxmin);
    _mm256_storeu_pd(xmax, vxmax);
    _mm256_storeu_pd(rmax, vr);
    _mm256_storeu_pd(s, vs);
  }
#endif
  for (int k = k0; k < n; ++k) {
    const int j = k & 3;
    ymin[j] = dmin(ymin[j], vy[k]);
    ymax[j] = dmax(ymax[j], vy[k]);
    xmin[j] = dmin(xmin[j], vx[k]);
    xmax[j] = dmax(xmax[j], vx[k]);
    const double r0 = double(d[k]);
    rmax[j] = dmax(rmax[j], r0 > 0 ? r0 : 0.0);
    if (k > 0) s[j] += vx[k - 1] * vy[k] - vy[k - 1] * vx[k];
  }
  PolyGeom g;
  g.ymin = c.y + dmin(dmin(ymin[0], ymin[1]), dmin(ymin[2], ymin[3]));
  g.ymax = c.y + dmax(dmax(ymax[0], ymax[1]), dmax(ymax[2], ymax[3]));
  g.xmin = c.x + dmin(dmin(xmin[0], xmin[1]), dmin(xmin[2], xmin[3]));
  g.xmax = c.x + dmax(dmax(xmax[0], xmax[1]), dmax(xmax[2], xmax[3]));
  g.rmax = dmax(dmax(rmax[0], rmax[1]), dmax(rmax[2], rmax[3]));
  g.area = 0.5 * std::fabs((s[0] + s[1]) + (s[2] + s[3]));
  g.rin2 = -1;
  return g;
}

// How a pair was decided (statistics for tests and benchmarks).
enum PairPath { kPathBbox = 0, kPathBound = 1, kPathSweep = 2, kPathSweepEarly = 3, kPathFan = 4, kPathDisk = 5 };

// The NMS rule: does kept polygon A suppress candidate B? criterion 0: area(A and B) / min(area) > thresh
// (StarDist), 1: IoU > thresh. A pair with a zero-area polygon has overlap 0. The answer is the exact one up to
// float64 rounding: cheap bounds decide only with a relative margin, else the area is computed exactly.
// Frame: A's centre at the origin; va, vb: the vertices in that frame, cb: B's centre. ga.rin2 must be known.
template <class D>
CK_HD bool suppresses(Verts va, const D* da, const PolyGeom& ga, Verts vb, const D* db, V2 cb,
                      const PolyGeom& gb, int n, const double* sn, const double* cs, double thresh,
                      int criterion, int* path) {
  *path = kPathBbox;
  if (!(ga.area > 0) || !(gb.area > 0)) return false;
  if (ga.xmax <= gb.xmin || gb.xmax <= ga.xmin || ga.ymax <= gb.ymin || gb.ymax <= ga.ymin) return false;
  const double amin = dmin(ga.area, gb.area);
  // the decision in terms of the intersection area: inter > T
  const double T = criterion == 0 ? thresh * amin : thresh * (ga.area + gb.area) / (1 + thresh);
  const double margin = 1e-9 * T + 1e-12 * (ga.area + gb.area);
  // Lower bound: a disk around either centre that lies in both polygons (the centre is inside both and at least
  // r from both boundaries) gives inter >= pi r^2. Decides most pairs of one object (the kept centre lies deep
  // inside both) in O(n) flops.
  const V2 origin = v2(0, 0);
  {
    const double K = (T + margin) / 3.141592653589793;
    // ga.rin2 is known (the caller computes it once per kept polygon); B's only when needed. Cheapest tests
    // first: most pairs of one object pass the first clause, and then B's centre is never located in A.
    if ((ga.rin2 >= K && in_star(vb, cb, n, origin) && boundary_clear(vb, n, origin, K)) ||
        (in_star(va, origin, n, cb) && boundary_clear(va, n, cb, K) &&
         (gb.rin2 >= 0 ? gb.rin2 : clearance2(vb, n, cb)) >= K)) {
      *path = kPathDisk;
      return true;
    }
  }
  // Upper bound: project both on the axis through the centres; A and B meet only in the slab where their
  // projections overlap, so inter <= min(area of A beyond B's near end, area of B before A's far end).
  const double dlen = std::sqrt(dot(cb, cb));
  if (dlen > 0) {
    const V2 u = scale(cb, 1.0 / dlen);
    // four interleaved maxima / minima (see clearance2)
    double hA4[4] = {-1e300, -1e300, -1e300, -1e300}, lB4[4] = {1e300, 1e300, 1e300, 1e300};
    int k0 = 0;
#if CK_STAR_AVX2
    {
      const __m256d uy = _mm256_set1_pd(u.y), ux = _mm256_set1_pd(u.x);
      __m256d h = _mm256_set1_pd(-1e300), l = _mm256_set1_pd(1e300);
      for (; k0 + 4 <= n; k0 += 4) {
        const __m256d pa = _mm256_add_pd(_mm256_mul_pd(ux, _mm256_loadu_pd(va.x + k0)),
                                         _mm256_mul_pd(uy, _mm256_loadu_pd(va.y + k0)));
        const __m256d pb = _mm256_add_pd(_mm256_mul_pd(ux, _mm256_loadu_pd(vb.x + k0)),
                                         _mm256_mul_pd(uy, _mm256_loadu_pd(vb.y + k0)));
        h = _mm256_max_pd(h, pa);
        l = _mm256_min_pd(l, pb);
      }
      _mm256_storeu_pd(hA4, h);
      _mm256_storeu_pd(lB4, l);
    }
#endif
    for (int k = k0; k < n; ++k) {
      const double pa = u.x * va.x[k] + u.y * va.y[k], pb = u.x * vb.x[k] + u.y * vb.y[k];
      hA4[k & 3] = dmax(hA4[k & 3], pa);
      lB4[k & 3] = dmin(lB4[k & 3], pb);
    }
    const double hA = dmax(dmax(hA4[0], hA4[1]), dmax(hA4[2], hA4[3]));
    const double lB = dmin(dmin(lB4[0], lB4[1]), dmin(lB4[2], lB4[3]));
    if (hA <= lB) {
      *path = kPathBound;
      return false;
    }
    // only worth clipping when the slab cuts a polygon short of its centre (different objects, typically)
    if (lB > 0 || hA < dlen) {
      const double capA = halfplane_area(va, n, u, lB);
      const double capB = halfplane_area(vb, n, scale(u, -1.0), -hA);
      if (dmin(capA, capB) < T - margin) {
        *path = kPathBound;
        return false;
      }
    }
  }
  double inter;
  InterResult r;
  if (in_kernel(vb, n, origin)) {
    r = star_sweep(va, da, origin, vb, n, sn, cs, ga.area, gb.area, T);
    *path = r.decided ? kPathSweepEarly : kPathSweep;
  } else if (in_kernel(va, n, cb)) {
    r = star_sweep(vb, db, cb, va, n, sn, cs, gb.area, ga.area, T);
    *path = r.decided ? kPathSweepEarly : kPathSweep;
  } else {
    r = fan_intersection(va, origin, vb, cb, n, ga.area, T);
    *path = kPathFan;
  }
  if (r.decided) return r.decided > 0;
  inter = r.area;
  // the final comparison in the oracle's form
  const double denom = criterion == 0 ? amin : ga.area + gb.area - inter;
  return denom > 0 && inter / denom > thresh;
}

// ---- rasterisation: skimage.draw.polygon's pixel rule ---------------------------------------------------

// Whether the pixel centre (py, px) is drawn for the polygon with float32 vertices (rows r, cols c): skimage's
// crossing test (O'Rourke), inside or on an edge or vertex, with its float64 arithmetic in its order.
CK_HD bool pixel_in_polygon(const float* r, const float* c, int n, double py, double px) {
  const double eps = 1e-12;
  bool right = false, left = false;
  double x1 = dsub(double(c[n - 1]), px), y1 = dsub(double(r[n - 1]), py);
  for (int i = 0; i < n; ++i) {
    const double x0 = dsub(double(c[i]), px), y0 = dsub(double(r[i]), py);
    if (-eps < x0 && x0 < eps && -eps < y0 && y0 < eps) return true;
    const bool rs = (y0 > 0) != (y1 > 0), ls = (y0 < 0) != (y1 < 0);
    if (rs || ls) {
      const double xc = dsub(dmul(x0, y1), dmul(x1, y0)) / dsub(y1, y0);
      if (rs && xc > 0) right = !right;
      if (ls && xc < 0) left = !left;
    }
    x1 = x0;
    y1 = y0;
  }
  return right || left;
}

// skimage's bounding range of rows/cols tested, [max(0, int(min)), min(size - 1, ceil(max))] (int() truncating),
// for a window of `size` pixels starting at image coordinate `origin` >= 0: the same range intersected with the
// window, returned in window coordinates.
CK_HD void raster_range(const float* v, int n, int64_t origin, int64_t size, int64_t& lo, int64_t& hi) {
  double mn = double(v[0]), mx = double(v[0]);
  for (int i = 1; i < n; ++i) {
    mn = dmin(mn, double(v[i]));
    mx = dmax(mx, double(v[i]));
  }
  const double big = 9.0e18;
  mn = dmax(-big, dmin(big, mn));
  mx = dmax(-big, dmin(big, mx));
  lo = int64_t(std::trunc(mn));
  if (lo < origin) lo = origin;
  hi = int64_t(std::ceil(mx));
  if (hi > origin + size - 1) hi = origin + size - 1;
  lo -= origin;
  hi -= origin;
}

// dist_to_coord for one vertex, in StarDist's float32 rounding steps: offset = f32(d * trig), then
// f32(offset * scale), then f32(that + point) (numpy computes each step in float64 and casts back).
CK_HD float coord_of(double d, double trig, double scale_, double point) {
  const float off = float(dmul(d, trig));
  const float sc = float(dmul(double(off), scale_));
  return float(dadd(double(sc), point));
}

}  // namespace star
CK_NS_END
