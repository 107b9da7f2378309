// Star-convex polyhedron CPU kernels: polyhedron_to_label (z bands, StarDist's rule) and the greedy 3D NMS
// (kept polyhedra as voxel bitmaps, candidates enumerated from an offset table); compiled once per ISA.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "core/check.h"
#include "core/parallel.h"
#include "ops/star3d/star3d.h"
#include "ops/star3d/star3d_math.h"

CK_NS_BEGIN
namespace {

// Below this much work a call stays on one thread (a parallel region costs a time slice on a busy machine).
constexpr int64_t kSerialWork = int64_t(1) << 18;

template <class F>
void dynamic_for(int64_t n, int64_t work, const F& f) {
#ifdef _OPENMP
  const int nt = usable_threads();
  if (nt > 1 && n > 1 && work > kSerialWork) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) f(i);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// ---- polyhedron_to_label -----------------------------------------------------------------------------------

void polyhedron_to_label_cpu(const Render3Args& a) {
  const int R = a.rays.n_rays;
  const int64_t Z = a.shape[0], Y = a.shape[1], X = a.shape[2];
  std::vector<float> pv(size_t(a.n) * 3 * R);
  std::vector<double> inv_d(size_t(a.n) * R), tol(a.n), rin2(a.n), rout2(a.n);
  std::vector<int64_t> box(size_t(a.n) * 6);
  parallel_for(a.n, std::max<int64_t>(16, kSerialWork / (16 * R)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* c = a.points + 3 * i;
      const float* d = a.dist + i * R;
      star3d::sd_vertices(c, d, a.rays.verts, R, pv.data() + i * 3 * R);
      star3d::sd_bbox(pv.data() + i * 3 * R, R, box.data() + 6 * i);
      for (int k = 0; k < R; ++k) inv_d[i * R + k] = 1.0 / double(d[k]);
      tol[i] = star3d::render_tol(c, d, R);
      star3d::render_radii(a.rays, d, tol[i], &rin2[i], &rout2[i]);
    }
  });
  // z bands of a few slices; each band paints the polyhedra reaching it in rank order, so the first (highest
  // probability) polyhedron to cover a voxel keeps it, as in StarDist, and bands never share a voxel
  constexpr int64_t kBand = 2;
  const int64_t nb = (Z + kBand - 1) / kBand;
  std::vector<int64_t> start(nb + 1, 0);
  const int64_t oz = a.origin[0], oy = a.origin[1], ox = a.origin[2];
  for (int64_t i = 0; i < a.n; ++i)  // boxes in window coordinates
    for (int j = 0; j < 2; ++j) {
      box[6 * i + j] -= oz;
      box[6 * i + 2 + j] -= oy;
      box[6 * i + 4 + j] -= ox;
    }
  auto zrange = [&](int64_t i, int64_t& b0, int64_t& b1) {
    const int64_t* bx = box.data() + 6 * i;
    const int64_t z0 = std::max<int64_t>(0, bx[0]), z1 = std::min(Z - 1, bx[1]);
    const bool hit = z0 <= z1 && std::max<int64_t>(0, bx[2]) <= std::min(Y - 1, bx[3]) &&
                     std::max<int64_t>(0, bx[4]) <= std::min(X - 1, bx[5]);
    b0 = hit ? z0 / kBand : 1;
    b1 = hit ? z1 / kBand : 0;
  };
  int64_t work = 0;
  for (int64_t i = 0; i < a.n; ++i) {
    int64_t b0, b1;
    zrange(i, b0, b1);
    for (int64_t b = b0; b <= b1; ++b) ++start[b + 1];
    const int64_t* bx = box.data() + 6 * i;
    work += (bx[1] - bx[0] + 1) * (bx[3] - bx[2] + 1) * (bx[5] - bx[4] + 1);
  }
  for (int64_t b = 0; b < nb; ++b) start[b + 1] += start[b];
  std::vector<int64_t> items(start[nb]), fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < a.n; ++i) {
    int64_t b0, b1;
    zrange(i, b0, b1);
    for (int64_t b = b0; b <= b1; ++b) items[fill[b]++] = i;
  }
  dynamic_for(nb, work * 8, [&](int64_t b) {
    const int64_t zb0 = b * kBand, zb1 = std::min(Z, zb0 + kBand);
    for (int64_t t = start[b]; t < start[b + 1]; ++t) {
      const int64_t i = items[t];
      const int64_t* bx = box.data() + 6 * i;
      const star3d::Poly3 p{a.points + 3 * i, a.dist + i * R, pv.data() + i * 3 * R, inv_d.data() + i * R, tol[i],
                            a.hull_vertex ? a.hull_vertex + i * R : nullptr, rin2[i], rout2[i]};
      const int32_t label = a.labels[i];
      for (int64_t z = std::max(zb0, bx[0]); z < std::min(zb1, bx[1] + 1); ++z)
        for (int64_t y = std::max<int64_t>(0, bx[2]); y <= std::min(Y - 1, bx[3]); ++y) {
          int32_t* row = a.out + (z * Y + y) * X;
          int hint = -1;
          for (int64_t x = std::max<int64_t>(0, bx[4]); x <= std::min(X - 1, bx[5]); ++x) {
            if (!a.use_overlap && row[x] != 0) continue;  // taken by a higher-ranked polyhedron
            if (!star3d::render_inside(a.rays, p, a.mode, z + oz, y + oy, x + ox, hint)) continue;
            row[x] = row[x] == 0 ? label : a.overlap_label;
          }
        }
    }
  });
}

// ---- NMS -----------------------------------------------------------------------------------------------------

namespace {

// Integer offsets u with |u| <= reach, sorted by length, with the face whose cone holds u and its coefficients:
// a polyhedron centred on an integer voxel holds centre + u exactly when level(face, coef, 1/d) <= 1, so its
// voxels come from a prefix of this table without locating anything.
struct OffsetTable {
  std::vector<int16_t> off;   // (m, 3)
  std::vector<int32_t> face;  // (m,)
  std::vector<double> coef;   // (m, 3)
  std::vector<double> len;    // (m,) ascending
};

OffsetTable offset_table(const RayTables& t, int reach) {
  OffsetTable tab;
  struct E {
    double len;
    int16_t u[3];
  };
  std::vector<E> es;
  const double r2 = double(reach) * reach;
  for (int z = -reach; z <= reach; ++z)
    for (int y = -reach; y <= reach; ++y)
      for (int x = -reach; x <= reach; ++x) {
        const double l2 = double(z) * z + double(y) * y + double(x) * x;
        if (l2 <= r2) es.push_back({std::sqrt(l2), {int16_t(z), int16_t(y), int16_t(x)}});
      }
  std::stable_sort(es.begin(), es.end(), [](const E& p, const E& q) { return p.len < q.len; });
  const size_t m = es.size();
  tab.off.resize(3 * m);
  tab.face.resize(m);
  tab.coef.resize(3 * m);
  tab.len.resize(m);
  parallel_for(int64_t(m), 4096, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      const double u[3] = {double(es[e].u[0]), double(es[e].u[1]), double(es[e].u[2])};
      for (int j = 0; j < 3; ++j) tab.off[3 * e + j] = es[e].u[j];
      tab.len[e] = es[e].len;
      if (es[e].len == 0) {
        tab.face[e] = -1;  // the centre: always inside
        tab.coef[3 * e] = tab.coef[3 * e + 1] = tab.coef[3 * e + 2] = 0;
      } else {
        tab.face[e] = star3d::locate(t, u, &tab.coef[3 * e]);
      }
    }
  });
  return tab;
}

template <class D>
Nms3Stats nms3d_typed(const Nms3Args& a) {
  Nms3Stats st;
  const auto t0 = std::chrono::steady_clock::now();
  const int R = a.rays.n_rays;
  const D* dist = static_cast<const D*>(a.dist);
  const int64_t n = a.n;
  std::vector<double> vol(n), dmax(n);
  std::vector<int64_t> box(size_t(n) * 6);
  bool integral = true;
  for (int64_t i = 0; i < 3 * n && integral; ++i)
    integral = a.points[i] == std::floor(a.points[i]) && std::fabs(a.points[i]) < 1e15;
  parallel_for(n, std::max<int64_t>(16, kSerialWork / (4 * R)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const D* d = dist + i * R;
      vol[i] = star3d::volume(a.rays, d);
      star3d::nms_box(a.rays, a.points + 3 * i, d, box.data() + 6 * i);
      double m = 0;
      for (int k = 0; k < R; ++k) m = std::max(m, double(d[k]));
      dmax[i] = m;
    }
  });
  // the offset table pays off for integer centres (every grid candidate) and a table of moderate size
  const int reach = int(std::ceil(a.reach)) + 1;
  st.table = integral && reach <= 96;
  OffsetTable tab;
  if (st.table) tab = offset_table(a.rays, reach);
  st.ms_geometry = ms_since(t0);

  const auto t1 = std::chrono::steady_clock::now();
  std::vector<uint8_t> bitmap;
  std::vector<double> inv_i(R);
  std::vector<int64_t> nbrs;
  const int nt = std::max(1, usable_threads());
  std::vector<std::vector<double>> inv_t(nt, std::vector<double>(R));
  std::vector<Nms3Stats> part(nt);
  for (int64_t i = 0; i < n; ++i) {
    if (a.state[i] == 2) continue;
    a.state[i] = 1;
    ++st.kept;
    // neighbours first: a kept candidate with none needs no bitmap
    nbrs.clear();
    const double* ci = a.points + 3 * i;
    const int64_t* bi = box.data() + 6 * i;
    int64_t bc[3];
    for (int j = 0; j < 3; ++j)
      bc[j] = std::min(a.nb[j] - 1, std::max<int64_t>(0, int64_t(std::floor((ci[j] - a.bucket_origin[j]) / a.bucket))));
    for (int64_t z = std::max<int64_t>(0, bc[0] - 1); z <= std::min(a.nb[0] - 1, bc[0] + 1); ++z)
      for (int64_t y = std::max<int64_t>(0, bc[1] - 1); y <= std::min(a.nb[1] - 1, bc[1] + 1); ++y)
        for (int64_t x = std::max<int64_t>(0, bc[2] - 1); x <= std::min(a.nb[2] - 1, bc[2] + 1); ++x) {
          const int64_t b = (z * a.nb[1] + y) * a.nb[2] + x;
          for (int64_t t = a.bucket_start[b]; t < a.bucket_start[b + 1]; ++t) {
            const int64_t k = a.bucket_items[t];
            if (k <= i || a.state[k] == 2) continue;
            ++st.pairs;
            const int64_t* bk = box.data() + 6 * k;
            if (bk[0] > bi[1] || bi[0] > bk[1] || bk[2] > bi[3] || bi[2] > bk[3] || bk[4] > bi[5] || bi[4] > bk[5]) {
              ++st.box_rejected;
              continue;
            }
            nbrs.push_back(k);
          }
        }
    if (nbrs.empty()) continue;
    // kept polyhedron i as a bitmap over its box
    const int64_t wz = bi[1] - bi[0] + 1, wy = bi[3] - bi[2] + 1, wx = bi[5] - bi[4] + 1;
    if (wz <= 0 || wy <= 0 || wx <= 0) continue;  // holds no voxel: overlaps nothing
    bitmap.assign(size_t(wz * wy * wx), 0);
    const D* di = dist + i * R;
    for (int k = 0; k < R; ++k) inv_i[k] = star3d::inv_dist(di[k]);
    if (st.table) {
      const int64_t m = std::upper_bound(tab.len.begin(), tab.len.end(), dmax[i] + 1e-9) - tab.len.begin();
      for (int64_t e = 0; e < m; ++e) {
        if (tab.face[e] >= 0 && star3d::level(a.rays, tab.face[e], &tab.coef[3 * e], inv_i.data()) > 1 + star3d::kFaceTol)
          continue;
        const int64_t z = int64_t(ci[0]) + tab.off[3 * e] - bi[0], y = int64_t(ci[1]) + tab.off[3 * e + 1] - bi[2],
                      x = int64_t(ci[2]) + tab.off[3 * e + 2] - bi[4];
        if (z >= 0 && z < wz && y >= 0 && y < wy && x >= 0 && x < wx) bitmap[(z * wy + y) * wx + x] = 1;
      }
    } else {
      for (int64_t z = 0; z < wz; ++z)
        for (int64_t y = 0; y < wy; ++y)
          for (int64_t x = 0; x < wx; ++x) {
            const double u[3] = {double(bi[0] + z) - ci[0], double(bi[2] + y) - ci[1], double(bi[4] + x) - ci[2]};
            bitmap[(z * wy + y) * wx + x] = star3d::nms_inside(a.rays, u, inv_i.data());
          }
    }
    dynamic_for(int64_t(nbrs.size()), int64_t(nbrs.size()) * int64_t(bitmap.size()), [&](int64_t q) {
#ifdef _OPENMP
      const int tid = omp_in_parallel() ? omp_get_thread_num() : 0;
#else
      const int tid = 0;
#endif
      Nms3Stats& ps = part[tid];
      double* inv_k = inv_t[tid].data();
      const int64_t k = nbrs[q];
      const D* dk = dist + k * R;
      for (int r = 0; r < R; ++r) inv_k[r] = star3d::inv_dist(dk[r]);
      const double limit = star3d::nms_limit(vol[i], vol[k], a.thresh, a.criterion);
      const double* ck = a.points + 3 * k;
      int64_t count = 0;
      bool suppress = false;
      if (st.table) {
        const int64_t m = std::upper_bound(tab.len.begin(), tab.len.end(), dmax[k] + 1e-9) - tab.len.begin();
        const int64_t oz = int64_t(ck[0]) - bi[0], oy = int64_t(ck[1]) - bi[2], ox = int64_t(ck[2]) - bi[4];
        for (int64_t e = 0; e < m; ++e) {
          // at most every remaining entry could still count
          if (double(count + (m - e)) <= limit) {
            ++ps.early;
            break;
          }
          const int64_t z = oz + tab.off[3 * e], y = oy + tab.off[3 * e + 1], x = ox + tab.off[3 * e + 2];
          if (z < 0 || z >= wz || y < 0 || y >= wy || x < 0 || x >= wx || !bitmap[(z * wy + y) * wx + x]) continue;
          ++ps.voxels;
          if (tab.face[e] >= 0 &&
              star3d::level(a.rays, tab.face[e], &tab.coef[3 * e], inv_k) > 1 + star3d::kFaceTol)
            continue;
          if (double(++count) > limit) {
            suppress = true;
            break;
          }
        }
      } else {
        const int64_t* bk = box.data() + 6 * k;
        const int64_t z0 = std::max(bi[0], bk[0]), z1 = std::min(bi[1], bk[1]);
        const int64_t y0 = std::max(bi[2], bk[2]), y1 = std::min(bi[3], bk[3]);
        const int64_t x0 = std::max(bi[4], bk[4]), x1 = std::min(bi[5], bk[5]);
        int64_t left = (z1 - z0 + 1) * (y1 - y0 + 1) * (x1 - x0 + 1);
        for (int64_t z = z0; z <= z1 && !suppress; ++z)
          for (int64_t y = y0; y <= y1 && !suppress; ++y)
            for (int64_t x = x0; x <= x1; ++x, --left) {
              if (double(count + left) <= limit) {
                ++ps.early;
                z = z1 + 1, y = y1 + 1;
                break;
              }
              if (!bitmap[((z - bi[0]) * wy + (y - bi[2])) * wx + (x - bi[4])]) continue;
              ++ps.voxels;
              const double u[3] = {double(z) - ck[0], double(y) - ck[1], double(x) - ck[2]};
              if (!star3d::nms_inside(a.rays, u, inv_k)) continue;
              if (double(++count) > limit) {
                suppress = true;
                break;
              }
            }
      }
      if (suppress) a.state[k] = 2;
    });
  }
  for (const auto& p : part) {
    st.voxels += p.voxels;
    st.early += p.early;
  }
  st.ms_sweep = ms_since(t1);
  return st;
}

}  // namespace

Nms3Stats nms3d_cpu(const Nms3Args& a) {
  return a.dist_dtype == DType::f64 ? nms3d_typed<double>(a) : nms3d_typed<float>(a);
}

CK_NS_END
