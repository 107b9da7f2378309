// Star-convex polyhedra: argument validation and the single device dispatch (cpu | cuda | emu).
#include "ops/star3d/star3d.h"

#include <cmath>

#include "core/validate.h"
#include "ops/star3d/star3d_math.h"

namespace ck {
namespace {

void check_2d(const TensorView& t, const char* name, DType dt, int64_t rows, int64_t cols, const TensorView& ref,
              const char* ref_name) {
  check_dtype(t, name, {dt});
  const int64_t s[2] = {rows, cols};
  check_shape(t, name, s, cols < 0 ? 1 : 2);
  check_same_device(t, name, ref, ref_name);
  CK_CHECK_VALUE(t.is_contiguous(), name, ": must be contiguous");
}

RayTables ray_tables(const RayViews& r, const TensorView& ref, const char* ref_name) {
  RayTables t;
  check_dtype(r.verts, "rays.vertices", {DType::f32});
  CK_CHECK_VALUE(r.verts.ndim == 2 && r.verts.shape[1] == 3 && r.verts.shape[0] >= 4,
                 "rays.vertices: expected (n_rays >= 4, 3), got ", shape_str(r.verts));
  check_same_device(r.verts, "rays.vertices", ref, ref_name);
  t.n_rays = int(r.verts.shape[0]);
  CK_CHECK_VALUE(r.faces.ndim == 2 && r.faces.shape[1] == 3 && r.faces.shape[0] >= 4,
                 "rays.faces: expected (n_faces >= 4, 3), got ", shape_str(r.faces));
  t.n_faces = int(r.faces.shape[0]);
  check_2d(r.verts, "rays.vertices", DType::f32, t.n_rays, 3, ref, ref_name);
  check_2d(r.faces, "rays.faces", DType::i32, t.n_faces, 3, ref, ref_name);
  check_2d(r.finv, "rays.finv", DType::f64, t.n_faces, 9, ref, ref_name);
  check_2d(r.fdet, "rays.fdet", DType::f64, t.n_faces, -1, ref, ref_name);
  check_2d(r.adj, "rays.adj", DType::i32, t.n_faces, 3, ref, ref_name);
  check_dtype(r.dirmap, "rays.dirmap", {DType::i32});
  CK_CHECK_VALUE(r.dirmap.ndim == 3 && r.dirmap.shape[0] == 6 && r.dirmap.shape[1] == r.dirmap.shape[2] &&
                     r.dirmap.shape[1] >= 1 && r.dirmap.is_contiguous(),
                 "rays.dirmap: expected a contiguous (6, res, res), got ", shape_str(r.dirmap));
  check_same_device(r.dirmap, "rays.dirmap", ref, ref_name);
  t.res = int(r.dirmap.shape[1]);
  t.verts = r.verts.ptr<float>();
  t.faces = r.faces.ptr<int32_t>();
  t.finv = r.finv.ptr<double>();
  t.fdet = r.fdet.ptr<double>();
  t.adj = r.adj.ptr<int32_t>();
  t.dirmap = r.dirmap.ptr<int32_t>();
  return t;
}

}  // namespace

void polyhedron_to_label(const RayViews& rays, const TensorView& dist, const TensorView& points,
                         const TensorView& labels, const TensorView& hull_vertex, const TensorView& out,
                         const std::vector<int64_t>& origin, int mode, bool use_overlap, int64_t overlap_label,
                         const TensorView& rank, const TensorView& count, bool use_emu, void* stream) {
  Render3Args a;
  check_dtype(dist, "dist", {DType::f32});
  CK_CHECK_VALUE(dist.ndim == 2, "dist: expected (n, n_rays), got ", shape_str(dist));
  a.rays = ray_tables(rays, dist, "dist");
  a.n = dist.shape[0];
  check_2d(dist, "dist", DType::f32, a.n, a.rays.n_rays, dist, "dist");
  check_2d(points, "points", DType::f32, a.n, 3, dist, "dist");
  check_2d(labels, "labels", DType::i32, a.n, -1, dist, "dist");
  if (hull_vertex.ndim != 0) {
    check_2d(hull_vertex, "hull_vertex", DType::u8, a.n, a.rays.n_rays, dist, "dist");
    a.hull_vertex = hull_vertex.ptr<uint8_t>();
  }
  check_dtype(out, "out", {DType::i32});
  CK_CHECK_VALUE(out.ndim == 3 && out.is_contiguous(), "out: expected a contiguous 3D int32 volume, got ",
                 shape_str(out));
  check_same_device(out, "out", dist, "dist");
  check_writable(out, "out");
  CK_CHECK_VALUE(mode >= 0 && mode <= 2, "mode: unknown render mode ", mode);
  CK_CHECK_VALUE(overlap_label >= INT32_MIN && overlap_label <= INT32_MAX, "overlap_label: must fit int32");
  CK_CHECK_VALUE(origin.size() == 3, "origin: expected 3 values");
  for (int j = 0; j < 3; ++j) {
    a.shape[j] = out.shape[j];
    a.origin[j] = origin[j];
    // StarDist's rule runs on float32 voxel coordinates: exact only below 2^24
    CK_CHECK_VALUE(origin[j] >= 0 && origin[j] <= (int64_t(1) << 24) - a.shape[j],
                   "shape/origin: voxel coordinates must stay within [0, 2^24] (float32 coordinates)");
  }
  a.dist = dist.ptr<float>();
  a.points = points.ptr<float>();
  a.labels = labels.ptr<int32_t>();
  a.out = out.ptr<int32_t>();
  a.mode = mode;
  a.use_overlap = use_overlap;
  a.overlap_label = int32_t(overlap_label);
  a.device = dist.device.index;
  Backend b = pick_backend(dist, use_emu);
  if (a.n == 0 || out.numel() == 0) return;
  if (b == Backend::cpu) {
    CK_CPU_CALL(polyhedron_to_label_cpu, a);
    return;
  }
  check_dtype(rank, "rank", {DType::i32});
  CK_CHECK_VALUE(rank.numel() == out.numel() && rank.is_contiguous(), "rank: expected the output's size");
  check_same_device(rank, "rank", dist, "dist");
  a.rank = rank.ptr<int32_t>();
  if (use_overlap) {
    check_dtype(count, "count", {DType::i32});
    CK_CHECK_VALUE(count.numel() == out.numel() && count.is_contiguous(), "count: expected the output's size");
    check_same_device(count, "count", dist, "dist");
    a.count = count.ptr<int32_t>();
  }
  CK_CHECK_VALUE(a.n < INT32_MAX, "dist: at most 2^31 - 2 polyhedra on the device");
  kernels<Star3Kernels>(b, "star3d").render(a, stream);
}

Nms3Stats nms3d(const RayViews& rays, const TensorView& dist, const TensorView& points, double thresh,
                int criterion, const TensorView& bucket_start, const TensorView& bucket_items,
                const std::vector<int64_t>& nb, double bucket, const std::vector<double>& bucket_origin,
                double reach, const TensorView& state, const TensorView& geom, const TensorView& flags, bool use_emu,
                void* stream) {
  Nms3Args a;
  check_dtype(dist, "dist", {DType::f32, DType::f64});
  CK_CHECK_VALUE(dist.ndim == 2, "dist: expected (n, n_rays), got ", shape_str(dist));
  a.rays = ray_tables(rays, dist, "dist");
  a.n = dist.shape[0];
  check_2d(dist, "dist", dist.dtype, a.n, a.rays.n_rays, dist, "dist");
  check_2d(points, "points", DType::f64, a.n, 3, dist, "dist");
  check_2d(state, "state", DType::u8, a.n, -1, dist, "dist");
  check_writable(state, "state");
  CK_CHECK_VALUE(std::isfinite(thresh), "nms_thresh: must be finite, got ", thresh);
  CK_CHECK_VALUE(criterion == 0 || criterion == 1, "criterion: unknown");
  CK_CHECK_VALUE(nb.size() == 3 && bucket_origin.size() == 3, "buckets: expected 3 sizes and 3 origins");
  int64_t total = 1;
  for (int j = 0; j < 3; ++j) {
    CK_CHECK_VALUE(nb[j] >= 1, "buckets: sizes must be >= 1");
    total = checked_mul(total, nb[j], "buckets");
    a.nb[j] = nb[j];
    a.bucket_origin[j] = bucket_origin[j];
  }
  CK_CHECK_VALUE(std::isfinite(bucket) && bucket >= 2 * reach && reach >= 0 && std::isfinite(reach),
                 "buckets: the bucket side must be >= 2 * reach");
  check_2d(bucket_start, "bucket_start", DType::i64, total + 1, -1, dist, "dist");
  check_2d(bucket_items, "bucket_items", DType::i64, a.n, -1, dist, "dist");
  a.dist_dtype = dist.dtype;
  a.dist = dist.data;
  a.points = points.ptr<double>();
  a.thresh = thresh;
  a.criterion = criterion;
  a.bucket_start = bucket_start.ptr<int64_t>();
  a.bucket_items = bucket_items.ptr<int64_t>();
  a.bucket = bucket;
  a.reach = reach;
  a.state = state.ptr<uint8_t>();
  a.device = dist.device.index;
  Backend b = pick_backend(dist, use_emu);
  if (a.n == 0) return Nms3Stats{};
  if (b == Backend::cpu) return CK_CPU_CALL(nms3d_cpu, a);
  check_2d(geom, "geom", DType::f64, a.n, 8, dist, "dist");
  check_2d(flags, "flags", DType::i32, 2, -1, dist, "dist");
  a.geom = geom.ptr<double>();
  a.flags = flags.ptr<int32_t>();
  kernels<Star3Kernels>(b, "star3d").nms(a, stream);
  return Nms3Stats{};
}

void polyhedron_volumes(const RayViews& rays, const TensorView& dist, const TensorView& out) {
  check_dtype(dist, "dist", {DType::f32, DType::f64});
  CK_CHECK_VALUE(dist.ndim == 2, "dist: expected (n, n_rays), got ", shape_str(dist));
  RayTables t = ray_tables(rays, dist, "dist");
  const int64_t n = dist.shape[0];
  check_2d(dist, "dist", dist.dtype, n, t.n_rays, dist, "dist");
  check_2d(out, "out", DType::f64, n, -1, dist, "dist");
  check_writable(out, "out");
  CK_CHECK_VALUE(dist.device.type == DeviceType::cpu, "dist: polyhedron_volumes runs on the CPU");
  double* o = out.ptr<double>();
  for (int64_t i = 0; i < n; ++i)
    o[i] = dist.dtype == DType::f64 ? star3d::volume(t, dist.ptr<double>() + i * t.n_rays)
                                    : star3d::volume(t, dist.ptr<float>() + i * t.n_rays);
}

}  // namespace ck
