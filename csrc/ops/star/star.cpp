// Star-convex polygons' single dispatch point: validate every argument, build the ray tables on the host, then
// run the CPU, CUDA or emulator kernels.
#include "ops/star/star.h"

#include <algorithm>
#include <cmath>

#include "core/validate.h"
#include "ops/star/star_math.h"

namespace ck {
namespace {

bool is_int_dtype(DType d) {
  return d == DType::i8 || d == DType::i16 || d == DType::i32 || d == DType::i64 || d == DType::u8 ||
         d == DType::u16 || d == DType::u32 || d == DType::u64;
}

void check_labels_dtype(const TensorView& t, const char* name) {
  CK_CHECK_TYPE(is_int_dtype(t.dtype), name, ": expected an integer label image (int8..int64, uint8..uint64), got ",
                dtype_name(t.dtype));
}

void check_contig(const TensorView& t, const char* name) {
  CK_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous array (the Python API makes one)");
}

void check_out(const TensorView& t, const char* name, DType dt, const int64_t* shape, int ndim,
               const TensorView& ref, const char* ref_name) {
  check_dtype(t, name, {dt});
  check_shape(t, name, shape, ndim);
  check_same_device(t, name, ref, ref_name);
  check_contig(t, name);
  check_writable(t, name);
}

void check_in(const TensorView& t, const char* name, DType dt, const int64_t* shape, int ndim, const TensorView& ref,
              const char* ref_name) {
  check_dtype(t, name, {dt});
  check_shape(t, name, shape, ndim);
  check_same_device(t, name, ref, ref_name);
  check_contig(t, name);
}

}  // namespace

// ---- star_dist ------------------------------------------------------------------------------------------------

int64_t star_table_steps(const std::vector<int64_t>& shape) {
  const int nd = int(shape.size());
  CK_CHECK_VALUE(nd == 2 || nd == 3, "labels: expected a 2D or 3D image, got ", nd, " dims");
  int64_t mx = 1;
  for (int64_t s : shape) {
    CK_CHECK_VALUE(s >= 0, "labels: negative size");
    mx = std::max(mx, s);
  }
  CK_CHECK_VALUE(mx < (int64_t(1) << 22), "labels: a side of ", mx,
                 " pixels is too long for StarDist's float32 ray marching (offsets stop growing near 2^23)");
  // every ray has a component >= 1/sqrt(nd): it leaves any image of side mx within sqrt(nd) (mx + 1) steps;
  // 1% covers the float32 drift of the accumulated offsets (verified in star_dist_tables)
  return int64_t(std::ceil(std::sqrt(double(nd)) * double(mx + 2) * 1.01)) + 16;
}

void star_dist_tables(const TensorView& steps, const std::vector<int64_t>& shape, const TensorView& offs,
                      const TensorView& pos, const TensorView& dist) {
  const int nd = int(shape.size());
  const int64_t n_steps = star_table_steps(shape);
  check_dtype(steps, "steps", {DType::f32});
  CK_CHECK_VALUE(steps.ndim == 2 && steps.shape[1] == nd, "steps: expected shape (n_rays, ", nd, "), got ",
                 shape_str(steps));
  const int64_t n_rays = steps.shape[0];
  CK_CHECK_VALUE(n_rays >= 1 && n_rays <= kMaxRays, "n_rays must be in [1, ", kMaxRays, "], got ", n_rays);
  check_contig(steps, "steps");
  CK_CHECK_VALUE(steps.device.type == DeviceType::cpu, "steps: the ray tables are built on the host");
  const int64_t so[2] = {n_rays, n_steps}, sp[3] = {n_rays, n_steps, nd};
  check_out(offs, "offs", DType::i64, so, 2, steps, "steps");
  check_out(pos, "pos", DType::f32, sp, 3, steps, "steps");
  check_out(dist, "dist", DType::f32, so, 2, steps, "steps");

  int64_t in[3] = {1, 1, 1}, pin[3] = {1, 1, 1};
  for (int d = 0; d < nd; ++d) {
    in[3 - nd + d] = shape[d];
    pin[3 - nd + d] = shape[d] + 2 * kStarPad;
  }
  const int64_t stride[3] = {pin[1] * pin[2], pin[2], 1};
  // |origin + offset| < 2^e for every coordinate a march can see; a float32 sum of that size is exact to
  // 2^(e - 24), so fractions farther than 2^(e - 22) from one half round the same for every origin.
  const double max_coord = double(std::max({in[0], in[1], in[2]}) + n_steps + 8);
  const int e = int(std::ceil(std::log2(max_coord)));
  const float tol = std::ldexp(1.0f, e - 22);

  const float* s = steps.ptr<float>();
  int64_t* O = offs.ptr<int64_t>();
  float* P = pos.ptr<float>();
  float* D = dist.ptr<float>();
  for (int64_t k = 0; k < n_rays; ++k) {
    float st[3] = {0, 0, 0}, x[3] = {0, 0, 0};
    for (int d = 0; d < nd; ++d) {
      st[3 - nd + d] = s[k * nd + d];
      CK_CHECK_VALUE(std::isfinite(st[3 - nd + d]) && std::fabs(st[3 - nd + d]) <= 1.0f,
                     "steps: ray components must be finite and in [-1, 1]");
    }
    CK_CHECK_VALUE(std::fmax(std::fabs(st[0]), std::fmax(std::fabs(st[1]), std::fabs(st[2]))) > 0,
                   "steps: ray ", k, " is the zero vector");
    int64_t* o = O + k * n_steps;
    float* p = P + k * n_steps * nd;
    float* dd = D + k * n_steps;
    o[0] = 0;
    for (int d = 0; d < nd; ++d) p[d] = 0;
    dd[0] = 0;
    int64_t exit_step = -1;
    for (int64_t m = 1; m < n_steps; ++m) {
      bool amb = false, out = false;
      int64_t lin = 0;
      for (int d = 3 - nd; d < 3; ++d) {
        x[d] = star::fadd(x[d], st[d]);  // float32 accumulation, as StarDist
        amb = amb || star::near_half(x[d], tol);
        lin += star::rint_i64(x[d]) * stride[d];
        out = out || std::fabs(double(x[d])) > double(in[d] + 1);
      }
      o[m] = amb ? kAmbiguousStep : lin;
      for (int d = 0; d < nd; ++d) p[m * nd + d] = x[3 - nd + d];
      dd[m] = nd == 2 ? star::stop_dist_2d(x[1], x[2], st[1], st[2]) : star::stop_dist_3d(x[0], x[1], x[2]);
      if (out && exit_step < 0) exit_step = m;
    }
    CK_CHECK_VALUE(exit_step > 0 && exit_step + 3 <= n_steps, "ray ", k, " does not leave the image within ", n_steps,
                   " steps (float32 offsets stopped growing: the image is too large)");
  }
}

int64_t star_padded_bytes(const std::vector<int64_t>& shape, int label_itemsize) {
  int64_t n = 1;
  for (int64_t s : shape) n = checked_mul(n, s + 2 * kStarPad, "the padded label image size");
  return checked_mul(n, label_itemsize <= 4 ? 4 : 8, "the padded label image size");
}

void star_dist(const TensorView& labels, const TensorView& padded, const TensorView& offs, const TensorView& pos,
               const TensorView& dist, const TensorView& out, const std::vector<int64_t>& grid, bool zero_background,
               bool use_emu, void* stream) {
  check_labels_dtype(labels, "labels");
  const int nd = labels.ndim;
  CK_CHECK_VALUE(nd == 2 || nd == 3, "labels: expected a 2D (H, W) or 3D (D, H, W) label image, got shape ",
                 shape_str(labels));
  check_contig(labels, "labels");
  CK_CHECK_VALUE(int(grid.size()) == nd, "grid: expected ", nd, " values, got ", grid.size());
  StarDistArgs a;
  a.nd = nd;
  for (int d = 0; d < nd; ++d) {
    const int D = 3 - nd + d;
    CK_CHECK_VALUE(grid[d] >= 1, "grid: values must be positive, got ", grid[d]);
    a.in[D] = labels.shape[d];
    a.grid[D] = grid[d];
    a.osz[D] = labels.shape[d] == 0 ? 0 : (labels.shape[d] - 1) / grid[d] + 1;
    a.pad[D] = kStarPad;
    a.pin[D] = labels.shape[d] + 2 * kStarPad;
  }
  a.n_steps = star_table_steps(std::vector<int64_t>(labels.shape, labels.shape + nd));
  CK_CHECK_VALUE(offs.ndim == 2, "offs: expected the (n_rays, n_steps) table, got shape ", shape_str(offs));
  a.n_rays = int(offs.shape[0]);
  CK_CHECK_VALUE(a.n_rays >= 1 && a.n_rays <= kMaxRays, "n_rays must be in [1, ", kMaxRays, "], got ", a.n_rays);
  const int64_t so[2] = {a.n_rays, a.n_steps}, sp[3] = {a.n_rays, a.n_steps, nd};
  check_in(offs, "offs", DType::i64, so, 2, labels, "labels");
  check_in(pos, "pos", DType::f32, sp, 3, labels, "labels");
  check_in(dist, "dist", DType::f32, so, 2, labels, "labels");
  a.label_dtype = labels.dtype;
  a.padded_dtype = dtype_size(labels.dtype) <= 4 ? DType::i32 : DType::i64;
  const int64_t sbytes[1] = {star_padded_bytes(std::vector<int64_t>(labels.shape, labels.shape + nd),
                                               dtype_size(labels.dtype))};
  check_out(padded, "padded", DType::u8, sbytes, 1, labels, "labels");
  int64_t sout[4];
  for (int d = 0; d < nd; ++d) sout[d] = a.osz[3 - nd + d];
  sout[nd] = a.n_rays;
  check_out(out, "out", DType::f32, sout, nd + 1, labels, "labels");
  check_no_overlap(out, "out", labels, "labels");
  check_no_overlap(padded, "padded", labels, "labels");
  check_no_overlap(out, "out", padded, "padded");
  a.labels = labels.data;
  a.padded = padded.data;
  a.offs = offs.ptr<int64_t>();
  a.pos = pos.ptr<float>();
  a.dist = dist.ptr<float>();
  a.out = out.ptr<float>();
  a.zero_background = zero_background;
  a.device = labels.device.index;
  Backend b = pick_backend(labels, use_emu);
  if (labels.numel() == 0) return;
  if (b == Backend::cpu)
    CK_CPU_CALL(star_dist_cpu, a);
  else
    kernels<StarKernels>(b, "star").star_dist(a, stream);
}

// ---- polygons ------------------------------------------------------------------------------------------------

namespace {

PolyArgs poly_args(const TensorView& dist, const TensorView& points, const TensorView& trig, double sy, double sx,
                   const TensorView& coord) {
  check_dtype(dist, "dist", {DType::f32, DType::f64});
  CK_CHECK_VALUE(dist.ndim == 2, "dist: expected shape (n_polys, n_rays), got ", shape_str(dist));
  PolyArgs a;
  a.n = dist.shape[0];
  a.n_rays = int(dist.shape[1]);
  CK_CHECK_VALUE(a.n_rays >= 3 && a.n_rays <= kMaxRays, "dist: n_rays must be in [3, ", kMaxRays, "], got ",
                 dist.shape[1]);
  check_contig(dist, "dist");
  const int64_t sp[2] = {a.n, 2}, st[2] = {2, a.n_rays}, sc[3] = {a.n, 2, a.n_rays};
  check_in(points, "points", DType::f64, sp, 2, dist, "dist");
  check_in(trig, "trig", DType::f64, st, 2, dist, "dist");
  check_out(coord, "coord", DType::f32, sc, 3, dist, "dist");
  CK_CHECK_VALUE(std::isfinite(sy) && std::isfinite(sx), "scale_dist: must be finite");
  a.dist_dtype = dist.dtype;
  a.dist = dist.data;
  a.points = points.ptr<double>();
  a.trig = trig.ptr<double>();
  a.scale[0] = sy;
  a.scale[1] = sx;
  a.coord = coord.ptr<float>();
  a.device = dist.device.index;
  return a;
}

}  // namespace

void dist_to_coord(const TensorView& dist, const TensorView& points, const TensorView& trig, double scale_y,
                   double scale_x, const TensorView& coord, bool use_emu, void* stream) {
  PolyArgs a = poly_args(dist, points, trig, scale_y, scale_x, coord);
  Backend b = pick_backend(dist, use_emu);
  if (a.n == 0) return;
  if (b == Backend::cpu)
    CK_CPU_CALL(dist_to_coord_cpu, a);
  else
    kernels<StarKernels>(b, "star").dist_to_coord(a, stream);
}

void polygons_to_label(const TensorView& dist, const TensorView& points, const TensorView& trig,
                       const TensorView& order, double scale_y, double scale_x, const TensorView& coord,
                       const TensorView& labels, int64_t origin_y, int64_t origin_x, bool use_emu, void* stream) {
  PolyArgs a = poly_args(dist, points, trig, scale_y, scale_x, coord);
  const int64_t so[1] = {a.n};
  check_in(order, "order", DType::i64, so, 1, dist, "dist");
  check_dtype(labels, "labels", {DType::i32});
  CK_CHECK_VALUE(labels.ndim == 2, "shape: expected a 2D image shape, got ", shape_str(labels));
  check_same_device(labels, "labels", dist, "dist");
  check_contig(labels, "labels");
  check_writable(labels, "labels");
  a.order = order.ptr<int64_t>();
  a.H = labels.shape[0];
  a.W = labels.shape[1];
  a.labels = labels.ptr<int32_t>();
  CK_CHECK_VALUE(origin_y >= 0 && origin_x >= 0, "origin: must be non-negative, got (", origin_y, ", ", origin_x, ")");
  CK_CHECK_VALUE(origin_y <= (int64_t(1) << 52) - a.H && origin_x <= (int64_t(1) << 52) - a.W,
                 "origin: the window must end below 2^52 (pixel centres exact in float64)");
  a.origin[0] = origin_y;
  a.origin[1] = origin_x;
  Backend b = pick_backend(dist, use_emu);
  if (a.H == 0 || a.W == 0) return;
  if (b == Backend::cpu)
    CK_CPU_CALL(polygons_to_label_cpu, a);
  else
    kernels<StarKernels>(b, "star").polygons_to_label(a, stream);
}

// ---- NMS -----------------------------------------------------------------------------------------------------

int64_t nms_candidates(const TensorView& prob, double thresh, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                       const TensorView& cand) {
  check_dtype(prob, "prob", {DType::f32, DType::f64});
  CK_CHECK_VALUE(prob.ndim == 2, "prob: expected shape (Ny, Nx), got ", shape_str(prob));
  check_contig(prob, "prob");
  CK_CHECK_VALUE(prob.device.type == DeviceType::cpu, "prob: candidates are gathered on the host here");
  CK_CHECK_VALUE(!std::isnan(thresh), "prob_thresh: must not be NaN");
  y0 = std::max<int64_t>(0, y0);
  x0 = std::max<int64_t>(0, x0);
  y1 = std::min(prob.shape[0], y1);
  x1 = std::min(prob.shape[1], x1);
  if (cand.ndim != 0) {
    check_dtype(cand, "cand", {DType::i64});
    CK_CHECK_VALUE(cand.ndim == 1, "cand: expected a 1D array");
    check_contig(cand, "cand");
    check_writable(cand, "cand");
  }
  const float* pf = prob.dtype == DType::f32 ? prob.ptr<float>() : nullptr;
  const double* pd = prob.dtype == DType::f64 ? prob.ptr<double>() : nullptr;
  if (y1 <= y0 || x1 <= x0) return 0;
  int64_t* out = cand.ndim != 0 ? cand.ptr<int64_t>() : nullptr;
  // room for every cell of the window, so one call counts and gathers (untouched pages of it cost nothing)
  if (out)
    CK_CHECK_VALUE(cand.shape[0] >= (y1 - y0) * (x1 - x0), "cand: expected room for ", (y1 - y0) * (x1 - x0),
                   " cells (the window), got ", cand.shape[0]);
  return CK_CPU_CALL(nms_candidates_cpu, pf, pd, prob.shape[1], thresh, y0, y1, x0, x1, out);
}

NmsStats nms(const TensorView& dist, const TensorView& cand, const TensorView& trig, const std::vector<int64_t>& grid,
             double thresh, int criterion, const TensorView& state, const TensorView& cellmap, const TensorView& geom,
             const TensorView& flags, const TensorView& prob, const std::vector<int64_t>& window, bool use_emu,
             void* stream) {
  check_dtype(dist, "dist", {DType::f32, DType::f64});
  CK_CHECK_VALUE(dist.ndim == 3, "dist: expected shape (Ny, Nx, n_rays), got ", shape_str(dist));
  check_contig(dist, "dist");
  NmsArgs a;
  a.ny = dist.shape[0];
  a.nx = dist.shape[1];
  a.n_rays = int(dist.shape[2]);
  CK_CHECK_VALUE(a.n_rays >= 3 && a.n_rays <= kMaxRays, "dist: n_rays must be in [3, ", kMaxRays, "], got ",
                 dist.shape[2]);
  CK_CHECK_VALUE(grid.size() == 2 && grid[0] >= 1 && grid[1] >= 1, "grid: expected 2 positive values");
  a.grid[0] = grid[0];
  a.grid[1] = grid[1];
  CK_CHECK_VALUE(thresh >= 0 && thresh <= 1, "nms_thresh: must be in [0, 1], got ", thresh);
  CK_CHECK_VALUE(criterion == 0 || criterion == 1, "criterion: 0 (smaller area) or 1 (IoU)");
  check_dtype(cand, "cand", {DType::i64});
  CK_CHECK_VALUE(cand.ndim == 1, "cand: expected a 1D array of cell indices");
  check_same_device(cand, "cand", dist, "dist");
  check_contig(cand, "cand");
  a.count = cand.shape[0];
  const int64_t st[2] = {2, a.n_rays}, ss[1] = {a.count};
  check_in(trig, "trig", DType::f64, st, 2, dist, "dist");
  check_out(state, "state", DType::u8, ss, 1, dist, "dist");
  a.dist_dtype = dist.dtype;
  a.dist = dist.data;
  a.cand = cand.ptr<int64_t>();
  a.trig = trig.ptr<double>();
  a.thresh = thresh;
  a.criterion = criterion;
  a.state = state.ptr<uint8_t>();
  a.device = dist.device.index;
  Backend b = pick_backend(dist, use_emu);
  if (b != Backend::cpu) {
    const int64_t sc[2] = {a.ny, a.nx}, sg[2] = {a.count, 8}, sf[1] = {4};
    check_out(cellmap, "cellmap", DType::i32, sc, 2, dist, "dist");
    check_out(geom, "geom", DType::f64, sg, 2, dist, "dist");
    check_out(flags, "flags", DType::i32, sf, 1, dist, "dist");
    a.cellmap = cellmap.ptr<int32_t>();
    a.geom = geom.ptr<double>();
    a.flags = flags.ptr<int32_t>();
    CK_CHECK_VALUE(a.count < (int64_t(1) << 31), "too many NMS candidates for the CUDA path: ", a.count);
  }
  if (b == Backend::cpu && prob.ndim != 0) {
    check_dtype(prob, "prob", {DType::f32, DType::f64});
    const int64_t sp[2] = {a.ny, a.nx};
    check_shape(prob, "prob", sp, 2);
    check_contig(prob, "prob");
    check_same_device(prob, "prob", dist, "dist");
    CK_CHECK_VALUE(window.size() == 4 && window[0] >= 0 && window[1] <= a.ny && window[2] >= 0 && window[3] <= a.nx,
                   "window: expected (y0, y1, x0, x1) inside the prediction grid");
    a.prob_dtype = prob.dtype;
    a.prob = prob.data;
    for (int i = 0; i < 4; ++i) a.win[i] = window[i];
  }
  if (a.count == 0) return NmsStats{};
  if (b == Backend::cpu) return CK_CPU_CALL(nms_cpu, a);
  kernels<StarKernels>(b, "star").nms(a, stream);
  return NmsStats{};
}

// ---- matching ------------------------------------------------------------------------------------------------

LabelRange label_range(const TensorView& y_true, const TensorView& y_pred) {
  check_labels_dtype(y_true, "y_true");
  check_same_dtype(y_pred, "y_pred", y_true, "y_true");
  check_shape(y_pred, "y_pred", y_true.shape, y_true.ndim);
  check_contig(y_true, "y_true");
  check_contig(y_pred, "y_pred");
  CK_CHECK_VALUE(y_true.device.type == DeviceType::cpu && y_pred.device.type == DeviceType::cpu,
                 "matching runs on host arrays");
  return CK_CPU_CALL(label_range_cpu, y_true.dtype, y_true.data, y_pred.data, y_true.numel());
}

std::vector<int64_t> label_overlap(const TensorView& y_true, const TensorView& y_pred, const TensorView& lut_true,
                                   const TensorView& lut_pred, const TensorView& size_true,
                                   const TensorView& size_pred, const TensorView& pair_true,
                                   const TensorView& pair_pred, const TensorView& pair_count) {
  LabelRange r = label_range(y_true, y_pred);
  CK_CHECK_VALUE(r.min_true >= 0, "y_true: labels must be non-negative, found ", r.min_true);
  CK_CHECK_VALUE(r.min_pred >= 0, "y_pred: labels must be non-negative, found ", r.min_pred);
  const int64_t lt[1] = {r.max_true + 1}, lp[1] = {r.max_pred + 1};
  check_out(lut_true, "lut_true", DType::i32, lt, 1, y_true, "y_true");
  check_out(lut_pred, "lut_pred", DType::i32, lp, 1, y_true, "y_true");
  check_out(size_true, "size_true", DType::i64, lt, 1, y_true, "y_true");
  check_out(size_pred, "size_pred", DType::i64, lp, 1, y_true, "y_true");
  check_dtype(pair_true, "pair_true", {DType::i32});
  check_dtype(pair_pred, "pair_pred", {DType::i32});
  check_dtype(pair_count, "pair_count", {DType::i64});
  const int64_t cap = pair_true.ndim == 1 ? pair_true.shape[0] : -1;
  CK_CHECK_VALUE(cap >= r.both, "pair_true: expected room for ", r.both, " pairs");
  const int64_t sc[1] = {cap};
  check_out(pair_true, "pair_true", DType::i32, sc, 1, y_true, "y_true");
  check_out(pair_pred, "pair_pred", DType::i32, sc, 1, y_true, "y_true");
  check_out(pair_count, "pair_count", DType::i64, sc, 1, y_true, "y_true");
  int64_t counts[3] = {0, 0, 0};
  CK_CPU_CALL(label_overlap_cpu, y_true.dtype, y_true.data, y_pred.data, y_true.numel(), lut_true.ptr<int32_t>(),
              r.max_true, lut_pred.ptr<int32_t>(), r.max_pred, size_true.ptr<int64_t>(), size_pred.ptr<int64_t>(),
              pair_true.ptr<int32_t>(), pair_pred.ptr<int32_t>(), pair_count.ptr<int64_t>(), cap, counts);
  return std::vector<int64_t>(counts, counts + 3);
}

}  // namespace ck
