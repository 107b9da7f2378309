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

// Below this much work a 3D call stays on one thread (a parallel region costs a time slice on a busy machine);
// a quarter of the 2D kernels' threshold: a 3D ray's work per voxel is larger.
constexpr int64_t kSerialWork3d = kSerialWork / 4;

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
  parallel_for(a.n, std::max<int64_t>(16, kSerialWork3d / (16 * R)), [&](int64_t i0, int64_t i1) {
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
  }, kSerialWork3d);
}

// ---- NMS -----------------------------------------------------------------------------------------------------

namespace {

// Every integer offset u in the cube |u|_inf <= reach with the face whose cone holds u: a polyhedron centred on an
// integer voxel holds centre + u exactly when level(face, finv_face u, 1/d) <= 1, so membership needs no walk. Only
// the face is stored (2 bytes: the cube stays in cache); its coefficients are 9 multiply-adds away.
struct OffsetCube {
  int reach = 0;
  int64_t side = 0;
  std::vector<int16_t> face;  // -1: the centre, always inside
  int64_t index(int64_t z, int64_t y, int64_t x) const { return ((z + reach) * side + (y + reach)) * side + x + reach; }
};

OffsetCube offset_cube(const RayTables& t, int reach) {
  OffsetCube c;
  c.reach = reach;
  c.side = 2 * int64_t(reach) + 1;
  c.face.resize(c.side * c.side * c.side);
  parallel_for(c.side * c.side, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t z = r / c.side - reach, y = r % c.side - reach;
      int hint = -1;
      for (int64_t x = -reach; x <= reach; ++x) {
        const double u[3] = {double(z), double(y), double(x)};
        double a[3];
        if (z == 0 && y == 0 && x == 0)
          c.face[c.index(z, y, x)] = -1;
        else
          c.face[c.index(z, y, x)] = int16_t(hint = star3d::locate(t, u, a, hint));
      }
    }
  });
  return c;
}

// The most one kept polyhedron's voxel map may take (bits + row prefix counts: 5 bytes a voxel).
constexpr double kKeptMapBytes = double(int64_t(1) << 32);

// A kept polyhedron as a bitmap over its voxel box, with per-row prefix counts: the number of its voxels in any
// row segment is one subtraction.
struct KeptMap {
  int64_t box[6];
  int64_t wz = 0, wy = 0, wx = 0;
  std::vector<uint8_t> bits;     // (wz, wy, wx)
  std::vector<int32_t> prefix;   // (wz, wy, wx + 1)
  int64_t ones(int64_t z, int64_t y, int64_t x0, int64_t x1) const {  // [x0, x1] in voxel coordinates
    const int32_t* p = prefix.data() + ((z - box[0]) * wy + (y - box[2])) * (wx + 1) - box[4];
    return p[x1 + 1] - p[x0];
  }
};

struct PairStats {
  int64_t voxels = 0, early = 0, bounded = 0;
};

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
  parallel_for(n, std::max<int64_t>(16, kSerialWork3d / (4 * R)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const D* d = dist + i * R;
      vol[i] = star3d::volume(a.rays, d);
      star3d::nms_box(a.rays, a.points + 3 * i, d, box.data() + 6 * i);
      double m = 0;
      for (int k = 0; k < R; ++k) m = std::max(m, double(d[k]));
      dmax[i] = m;
    }
  });
  // the cube of offsets pays off for integer centres (every grid candidate) of moderate size (reach 64: 4.4 MB)
  const int reach = int(std::ceil(a.reach)) + 1;
  st.table = integral && reach <= 64 && a.rays.n_faces < 32768;
  OffsetCube cube;
  if (st.table) cube = offset_cube(a.rays, reach);
  st.ms_geometry = ms_since(t0);

  // whether voxel (z, y, x) lies in polyhedron k (1 / d in inv)
  auto member = [&](int64_t k, const double* inv, int64_t z, int64_t y, int64_t x) {
    const double* c = a.points + 3 * k;
    if (st.table) {
      const int64_t dz = z - int64_t(c[0]), dy = y - int64_t(c[1]), dx = x - int64_t(c[2]);
      const int f = cube.face[cube.index(dz, dy, dx)];
      if (f < 0) return true;
      const double u[3] = {double(dz), double(dy), double(dx)};
      double w[3];
      star3d::coeffs(a.rays, f, u, w);
      return star3d::level(a.rays, f, w, inv) <= 1 + star3d::kFaceTol;
    }
    const double u[3] = {double(z) - c[0], double(y) - c[1], double(x) - c[2]};
    return star3d::nms_inside(a.rays, u, inv);
  };

  const auto t1 = std::chrono::steady_clock::now();
  KeptMap km;
  std::vector<double> inv_i(R);
  std::vector<int64_t> nbrs;
  const int nt = std::max(1, usable_threads());
  std::vector<std::vector<double>> inv_t(nt, std::vector<double>(R));
  std::vector<std::vector<int64_t>> span_t(nt);  // (z, y, x0, x1) row segments of the pair at hand
  std::vector<PairStats> part(nt);
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
    std::copy(bi, bi + 6, km.box);
    km.wz = bi[1] - bi[0] + 1, km.wy = bi[3] - bi[2] + 1, km.wx = bi[5] - bi[4] + 1;
    if (km.wz <= 0 || km.wy <= 0 || km.wx <= 0) continue;  // holds no voxel: overlaps nothing
    // 5 bytes per voxel of the box: distances near the documented limit (2^10) ask for tens of GB, which zero-filling
    // would page in until the machine runs out; refuse before allocating instead
    const double map_bytes = double(km.wz) * double(km.wy) * (5.0 * double(km.wx) + 4.0);
    if (map_bytes > kKeptMapBytes)
      throw MemoryError(str("non_maximum_suppression_3d: a kept polyhedron's voxel map (", km.wz, " x ", km.wy, " x ",
                            km.wx, " voxels) needs ", int64_t(map_bytes), " bytes, above the ", int64_t(kKeptMapBytes),
                            "-byte limit of one map (distances up to about 450 voxels fit)"));
    km.bits.assign(size_t(km.wz * km.wy * km.wx), 0);
    km.prefix.assign(size_t(km.wz * km.wy * (km.wx + 1)), 0);
    const D* di = dist + i * R;
    for (int k = 0; k < R; ++k) inv_i[k] = star3d::inv_dist(di[k]);
    parallel_for(km.wz * km.wy, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t z = bi[0] + r / km.wy, y = bi[2] + r % km.wy;
        uint8_t* row = km.bits.data() + r * km.wx;
        int32_t* pre = km.prefix.data() + r * (km.wx + 1);
        for (int64_t x = 0; x < km.wx; ++x) {
          row[x] = member(i, inv_i.data(), z, y, bi[4] + x);
          pre[x + 1] = pre[x] + row[x];
        }
      }
    });
    dynamic_for(int64_t(nbrs.size()), int64_t(nbrs.size()) * int64_t(km.bits.size()), [&](int64_t q) {
#ifdef _OPENMP
      const int tid = omp_in_parallel() ? omp_get_thread_num() : 0;
#else
      const int tid = 0;
#endif
      PairStats& ps = part[tid];
      double* inv_k = inv_t[tid].data();
      const int64_t k = nbrs[q];
      const D* dk = dist + k * R;
      for (int r = 0; r < R; ++r) inv_k[r] = star3d::inv_dist(dk[r]);
      const double limit = star3d::nms_limit(vol[i], vol[k], a.thresh, a.criterion);
      const double* ck = a.points + 3 * k;
      const int64_t* bk = box.data() + 6 * k;
      // the rows of both boxes, each cut to k's ball: k's voxels lie there, so i's voxels there bound the count
      const int64_t z0 = std::max(bi[0], bk[0]), z1 = std::min(bi[1], bk[1]);
      const int64_t y0 = std::max(bi[2], bk[2]), y1 = std::min(bi[3], bk[3]);
      const double r2 = dmax[k] * dmax[k] * (1 + 1e-9) + 1e-9;
      std::vector<int64_t>& spans = span_t[tid];
      spans.clear();
      int64_t bound = 0;
      for (int64_t z = z0; z <= z1; ++z) {
        const double dz = double(z) - ck[0];
        for (int64_t y = y0; y <= y1; ++y) {
          const double dy = double(y) - ck[1], h2 = r2 - dz * dz - dy * dy;
          if (h2 < 0) continue;
          const double h = std::sqrt(h2);
          const int64_t x0 = std::max(std::max(bi[4], bk[4]), int64_t(std::ceil(ck[2] - h)));
          const int64_t x1 = std::min(std::min(bi[5], bk[5]), int64_t(std::floor(ck[2] + h)));
          if (x0 > x1) continue;
          const int64_t ones = km.ones(z, y, x0, x1);
          if (!ones) continue;
          bound += ones;
          spans.insert(spans.end(), {z, y, x0, x1});
        }
      }
      if (double(bound) <= limit) {  // even all of i's voxels near k would not suppress it
        ++ps.bounded;
        return;
      }
      int64_t count = 0;
      for (size_t t = 0; t < spans.size(); t += 4) {
        const int64_t z = spans[t], y = spans[t + 1];
        const uint8_t* row = km.bits.data() + ((z - bi[0]) * km.wy + (y - bi[2])) * km.wx - bi[4];
        for (int64_t x = spans[t + 2]; x <= spans[t + 3]; ++x) {
          if (!row[x]) continue;
          --bound;  // i's voxels left unexamined
          ++ps.voxels;
          if (member(k, inv_k, z, y, x) && double(++count) > limit) {
            a.state[k] = 2;
            return;
          }
          if (double(count + bound) <= limit) {
            ++ps.early;
            return;
          }
        }
      }
    }, kSerialWork3d);
  }
  for (const auto& p : part) {
    st.voxels += p.voxels;
    st.early += p.early;
    st.bounded += p.bounded;
  }
  st.ms_sweep = ms_since(t1);
  return st;
}

}  // namespace

Nms3Stats nms3d_cpu(const Nms3Args& a) {
  return a.dist_dtype == DType::f64 ? nms3d_typed<double>(a) : nms3d_typed<float>(a);
}

CK_NS_END
