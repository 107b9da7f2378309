// Star-convex polygon math written once for CPU, CUDA and the emulator: ray steps, polygon areas and exact
// intersections, skimage's pixel-in-polygon rule, and the NMS pair decision.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/hd.h"
#include "ops/star/star.h"

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

// A monotone stand-in for the angle of (y, x) in [0, 4): cheaper than atan2, same order. (0, 0) gives NaN.
CK_HD double pseudo_angle(double y, double x) {
  if (y >= 0) return x >= 0 ? y / (x + y) : 1 - x / (y - x);
  return x < 0 ? 2 - y / (-x - y) : 3 + x / (x - y);
}

// A star polygon: centre, n distances along the rays of the trig table (sin row, cos row), vertices
// centre + d_k (sin phi_k, cos phi_k). Distances are read as given (float or double) and taken as >= 0.
template <class D>
struct Star {
  V2 c;
  const D* d;
  CK_HD double dist(int k) const {
    const double v = double(d[k]);
    return v > 0 ? v : 0.0;
  }
  // vertex k relative to `o`
  CK_HD V2 vert(int k, const double* sn, const double* cs, V2 o) const {
    const double r = dist(k);
    return v2((c.y - o.y) + r * sn[k], (c.x - o.x) + r * cs[k]);
  }
};

// Area of the polygon: the shoelace sum around its centre (the fan of n triangles).
template <class D>
CK_HD double star_area(const Star<D>& p, int n, const double* sn, const double* cs) {
  double s = 0;
  V2 prev = p.vert(n - 1, sn, cs, p.c);
  for (int k = 0; k < n; ++k) {
    V2 cur = p.vert(k, sn, cs, p.c);
    s += cross(prev, cur);
    prev = cur;
  }
  return 0.5 * std::fabs(s);
}

// Area of {x in P : dot(nrm, x - o) >= off}, P a star polygon (as a closed chain; Sutherland-Hodgman against
// one half-plane keeps the winding integral, so it is exact for non-convex P too). Vertices relative to o.
template <class D>
CK_HD double star_halfplane_area(const Star<D>& p, int n, const double* sn, const double* cs, V2 o, V2 nrm,
                                 double off) {
  double s = 0;
  bool have_first = false;
  V2 first = v2(0, 0), last = v2(0, 0);
  auto emit = [&](V2 q) {
    if (!have_first) {
      first = q;
      have_first = true;
    } else {
      s += cross(last, q);
    }
    last = q;
  };
  V2 a = p.vert(n - 1, sn, cs, o);
  double fa = dot(nrm, a) - off;
  for (int k = 0; k < n; ++k) {
    V2 b = p.vert(k, sn, cs, o);
    double fb = dot(nrm, b) - off;
    if ((fa >= 0) != (fb >= 0)) {
      const double t = fa / (fa - fb);
      emit(add(a, scale(sub(b, a), t)));
    }
    if (fb >= 0) emit(b);
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

// Exact intersection area through the two fans of triangles (each triangle convex, interiors disjoint, so
// area(A and B) = sum of triangle-pair overlaps). O(n^2) with bounding-box pruning: the robust fallback.
template <class D>
CK_HD double fan_intersection(const Star<D>& A, const Star<D>& B, int n, const double* sn, const double* cs) {
  const V2 o = A.c;
  double total = 0;
  V2 a0 = A.vert(n - 1, sn, cs, o);
  const V2 ca = v2(0, 0), cb = sub(B.c, o);
  for (int k = 0; k < n; ++k) {
    const V2 a1 = A.vert(k, sn, cs, o);
    const V2 ta[3] = {ca, a0, a1};
    a0 = a1;
    if (cross(ta[1], ta[2]) == 0) continue;
    const double aymin = std::fmin(0.0, std::fmin(ta[1].y, ta[2].y)), aymax = std::fmax(0.0, std::fmax(ta[1].y, ta[2].y));
    const double axmin = std::fmin(0.0, std::fmin(ta[1].x, ta[2].x)), axmax = std::fmax(0.0, std::fmax(ta[1].x, ta[2].x));
    V2 b0 = B.vert(n - 1, sn, cs, o);
    for (int l = 0; l < n; ++l) {
      const V2 b1 = B.vert(l, sn, cs, o);
      const V2 tb[3] = {cb, b0, b1};
      b0 = b1;
      const double bymin = std::fmin(cb.y, std::fmin(tb[1].y, tb[2].y)), bymax = std::fmax(cb.y, std::fmax(tb[1].y, tb[2].y));
      const double bxmin = std::fmin(cb.x, std::fmin(tb[1].x, tb[2].x)), bxmax = std::fmax(cb.x, std::fmax(tb[1].x, tb[2].x));
      if (bymin >= aymax || aymin >= bymax || bxmin >= axmax || axmin >= bxmax) continue;
      if (cross(sub(tb[1], cb), sub(tb[2], cb)) == 0) continue;
      total += triangle_overlap(ta, tb);
    }
  }
  return total;
}

// Whether the point o lies strictly inside every edge's half-plane of Q (then Q is star-shaped about o with
// every edge seen under a positive angle): the condition for the radial sweep below. Zero-length edges are
// skipped; the margin keeps nearly collinear configurations on the robust fan path.
template <class D>
CK_HD bool in_kernel(const Star<D>& Q, int n, const double* sn, const double* cs, V2 o) {
  V2 a = Q.vert(n - 1, sn, cs, o);
  for (int l = 0; l < n; ++l) {
    const V2 b = Q.vert(l, sn, cs, o);
    const V2 e = sub(b, a);
    if (e.x != 0 || e.y != 0) {
      // cross(e, o - a) with o the origin; must exceed a relative margin times |e| * scale
      const double c = cross(e, v2(-a.y, -a.x));
      const double len = std::sqrt(dot(e, e));
      const double scale_ = 1.0 + std::fabs(a.x) + std::fabs(a.y);
      if (!(c > 1e-9 * len * scale_)) return false;
    }
    a = b;
  }
  return true;
}

// The point at which the ray from the origin along `dir` meets the line through p0, p1.
CK_HD V2 ray_line(V2 dir, V2 p0, V2 p1) {
  const V2 e = sub(p1, p0);
  const double den = cross(dir, e);
  if (den == 0) return v2(0, 0);
  return scale(dir, cross(p0, e) / den);
}

// Result of an intersection query with a decision threshold on the intersection area.
struct InterResult {
  double area;   // exact area, or a partial sum when `decided`
  int decided;   // 0: area is exact; 1: area > T certainly; -1: area <= T certainly (early exit)
};

// Exact area(P and Q) when both are star-shaped about P's centre, which holds when P's centre is strictly in
// Q's kernel (in_kernel): then P and Q intersect in the star-shaped region with radius min(rho_P, rho_Q) in every
// direction. Sweep the directions of P's rays and Q's vertices in angular order; between two consecutive events
// both boundaries are single segments, so the region there is a triangle, or two if the segments cross:
// O(n + m) instead of the O(n m) of the fans. With T >= 0 the sweep stops as soon as the partial area exceeds
// T (decided 1) or can no longer reach it (decided -1), each with a relative margin of 1e-9.
template <class D>
CK_HD InterResult star_sweep(const Star<D>& P, const Star<D>& Q, int n, const double* sn, const double* cs,
                             double areaP, double areaQ, double T) {
  const V2 o = P.c;
  // Q's first vertex at angle >= 0 about o: its vertex angles increase cyclically, find the wrap.
  auto qv = [&](int l) { return Q.vert(l, sn, cs, o); };
  int l0 = 0;
  {
    double best = 10;
    for (int l = 0; l < n; ++l) {
      const V2 q = qv(l);
      const double a = pseudo_angle(q.y, q.x);
      if (a < best) {
        best = a;
        l0 = l;
      }
    }
  }
  const double margin = 1e-9 * (T > 0 ? T : 0.0) + 1e-12 * (areaP + areaQ);
  double total = 0, doneP = 0, doneQ = 0;
  int kn = 0, ln = 0;  // events consumed
  V2 firstP = v2(0, 0), firstQ = v2(0, 0), prevP = v2(0, 0), prevQ = v2(0, 0);
  bool have_prev = false;
  // P's edge from vertex k-1 to k; a sector with a zero distance is degenerate (rho_P = 0 inside it)
  auto p_point_on_sector = [&](int k, V2 dir) {
    const int k0 = (k + n - 1) % n;
    if (P.dist(k0) == 0 || P.dist(k) == 0) return v2(0, 0);
    return ray_line(dir, P.vert(k0, sn, cs, o), P.vert(k, sn, cs, o));
  };
  auto interval = [&](V2 a0, V2 b0, V2 a1, V2 b1) {
    // a: P's boundary points, b: Q's, at the start and end direction of the interval
    doneP += 0.5 * cross(a0, a1);
    doneQ += 0.5 * cross(b0, b1);
    const bool s0 = dot(a0, a0) <= dot(b0, b0), s1 = dot(a1, a1) <= dot(b1, b1);
    const V2 m0 = s0 ? a0 : b0, m1 = s1 ? a1 : b1;
    if (s0 == s1) {
      total += 0.5 * cross(m0, m1);
    } else {
      const V2 ea = sub(a1, a0), eb = sub(b1, b0);
      const double den = cross(ea, eb);
      double t = den != 0 ? cross(sub(b0, a0), eb) / den : 0.5;
      t = t < 0 ? 0 : t > 1 ? 1 : t;
      const V2 X = add(a0, scale(ea, t));
      total += 0.5 * (cross(m0, X) + cross(X, m1));
    }
  };
  while (kn < n || ln < n) {
    const int L = (l0 + ln) % n;            // Q's next vertex
    const int Lp = (L + n - 1) % n;         // ... so Q's current edge is Lp -> L
    bool takeP;
    V2 dir;
    if (kn >= n) {
      takeP = false;
    } else if (ln >= n) {
      takeP = true;
    } else {
      const V2 q = qv(L);
      takeP = pseudo_angle(sn[kn], cs[kn]) <= pseudo_angle(q.y, q.x);
    }
    V2 pP, pQ;
    if (takeP) {
      dir = v2(sn[kn], cs[kn]);
      pP = P.vert(kn, sn, cs, o);
      pQ = ray_line(dir, qv(Lp), qv(L));
    } else {
      pQ = qv(L);
      dir = pQ;
      pP = kn < n ? p_point_on_sector(kn, dir) : p_point_on_sector(0, dir);
    }
    if (have_prev) {
      interval(prevP, prevQ, pP, pQ);
      if (T >= 0) {
        if (total > T + margin) return InterResult{total, 1};
        const double rest = std::fmin(areaP - doneP, areaQ - doneQ);
        if (total + rest < T - margin) return InterResult{total, -1};
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
  interval(prevP, prevQ, firstP, firstQ);  // wrap around to ray 0
  return InterResult{total, 0};
}

// Bounding box, area and circumradius of a candidate (what the NMS prunes with).
struct PolyGeom {
  double area, ymin, ymax, xmin, xmax, rmax;
};

template <class D>
CK_HD PolyGeom poly_geom(const Star<D>& p, int n, const double* sn, const double* cs) {
  PolyGeom g;
  g.ymin = g.ymax = p.c.y;
  g.xmin = g.xmax = p.c.x;
  g.rmax = 0;
  const V2 zero = v2(0, 0);
  for (int k = 0; k < n; ++k) {
    const V2 v = p.vert(k, sn, cs, zero);
    g.ymin = std::fmin(g.ymin, v.y);
    g.ymax = std::fmax(g.ymax, v.y);
    g.xmin = std::fmin(g.xmin, v.x);
    g.xmax = std::fmax(g.xmax, v.x);
    g.rmax = std::fmax(g.rmax, p.dist(k));
  }
  g.area = star_area(p, n, sn, cs);
  return g;
}

// How a pair was decided (statistics for tests and benchmarks).
enum PairPath { kPathBbox = 0, kPathBound = 1, kPathSweep = 2, kPathSweepEarly = 3, kPathFan = 4 };

// The NMS rule: does kept polygon A suppress candidate B? criterion 0: area(A and B) / min(area) > thresh
// (StarDist), 1: IoU > thresh. A pair with a zero-area polygon has overlap 0. The answer is the exact one up to
// float64 rounding: cheap bounds decide only with a relative margin, else the area is computed exactly.
template <class D>
CK_HD bool suppresses(const Star<D>& A, const PolyGeom& ga, const Star<D>& B, const PolyGeom& gb, int n,
                      const double* sn, const double* cs, double thresh, int criterion, int* path) {
  *path = kPathBbox;
  if (!(ga.area > 0) || !(gb.area > 0)) return false;
  if (ga.xmax <= gb.xmin || gb.xmax <= ga.xmin || ga.ymax <= gb.ymin || gb.ymax <= ga.ymin) return false;
  const double amin = std::fmin(ga.area, gb.area);
  // the decision in terms of the intersection area: inter > T
  const double T = criterion == 0 ? thresh * amin : thresh * (ga.area + gb.area) / (1 + thresh);
  const double margin = 1e-9 * T + 1e-12 * (ga.area + gb.area);
  // Upper bound: project both on the axis through the centres; A and B meet only in the slab where their
  // projections overlap, so inter <= min(area of A beyond B's near end, area of B before A's far end).
  const V2 dc = sub(B.c, A.c);
  const double dlen = std::sqrt(dot(dc, dc));
  if (dlen > 0) {
    const V2 u = scale(dc, 1.0 / dlen);
    double hA = -1e300, lB = 1e300;
    for (int k = 0; k < n; ++k) {
      hA = std::fmax(hA, dot(u, A.vert(k, sn, cs, A.c)));
      lB = std::fmin(lB, dot(u, B.vert(k, sn, cs, A.c)));
    }
    if (hA <= lB) {
      *path = kPathBound;
      return false;
    }
    // only worth clipping when the slab cuts both polygons noticeably
    const double ub_slab = std::fmin(ga.area, gb.area);
    if (lB > 0 || hA < dlen) {
      const double capA = star_halfplane_area(A, n, sn, cs, A.c, u, lB);
      const double capB = star_halfplane_area(B, n, sn, cs, A.c, scale(u, -1.0), -hA);
      const double ub = std::fmin(ub_slab, std::fmin(capA, capB));
      if (ub < T - margin) {
        *path = kPathBound;
        return false;
      }
    }
  }
  double inter;
  if (in_kernel(B, n, sn, cs, A.c)) {
    InterResult r = star_sweep(A, B, n, sn, cs, ga.area, gb.area, T);
    *path = r.decided ? kPathSweepEarly : kPathSweep;
    if (r.decided) return r.decided > 0;
    inter = r.area;
  } else if (in_kernel(A, n, sn, cs, B.c)) {
    InterResult r = star_sweep(B, A, n, sn, cs, gb.area, ga.area, T);
    *path = r.decided ? kPathSweepEarly : kPathSweep;
    if (r.decided) return r.decided > 0;
    inter = r.area;
  } else {
    *path = kPathFan;
    inter = fan_intersection(A, B, n, sn, cs);
  }
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

// skimage's bounding range of rows/cols tested: [max(0, int(min)), min(size - 1, ceil(max))], int() truncating.
CK_HD void raster_range(const float* v, int n, int64_t size, int64_t& lo, int64_t& hi) {
  double mn = double(v[0]), mx = double(v[0]);
  for (int i = 1; i < n; ++i) {
    mn = std::fmin(mn, double(v[i]));
    mx = std::fmax(mx, double(v[i]));
  }
  const double big = 9.0e18;
  mn = std::fmax(-big, std::fmin(big, mn));
  mx = std::fmax(-big, std::fmin(big, mx));
  lo = int64_t(std::trunc(mn));
  if (lo < 0) lo = 0;
  hi = int64_t(std::ceil(mx));
  if (hi > size - 1) hi = size - 1;
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
