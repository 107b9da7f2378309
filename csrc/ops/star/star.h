// Star-convex polygons (StarDist semantics): argument blocks every backend receives, kernel tables, the C++ API.
#pragma once
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "core/cpu_isa.h"
#include "core/dtypes.h"
#include "core/registry.h"
#include "core/tensor_view.h"

namespace ck {

// Calls f(T()) with T the C++ type of an integer label dtype (the CPU kernels and the CUDA launchers).
template <class F>
void dispatch_int(DType dt, const F& f) {
  switch (dt) {
    case DType::i8: f(int8_t()); break;
    case DType::i16: f(int16_t()); break;
    case DType::i32: f(int32_t()); break;
    case DType::i64: f(int64_t()); break;
    case DType::u8: f(uint8_t()); break;
    case DType::u16: f(uint16_t()); break;
    case DType::u32: f(uint32_t()); break;
    case DType::u64: f(uint64_t()); break;
    default: throw ValueError(str("unsupported label dtype ", dtype_name(dt)));
  }
}

// ---- the documented ranges (python/cellkern/star/_checks.py derives them; the Python API checks them first) ----

// Largest |distance| (times scale_dist) and |centre coordinate| of a 2D polygon, in pixels (2^22). Vertices then
// stay below 2^23, where StarDist's float32 vertices still resolve half pixels; the CPU rasteriser's float64
// crossing positions and skimage's formula are then within 17 eps 2^24 ~ 3e-8 px of the exact crossing, far
// inside its 1e-6 px slack; the NMS's bucket indices and float boxes stay far from overflow.
constexpr double kStarDistMax = 4194304.0;
// Rays per polygon / polyhedron the kernels accept (their per-ray tables and local arrays are sized by it).
constexpr int kMaxRays = 4096;

// ---- star_dist (2D and 3D) ------------------------------------------------------------------------------------
//
// The march of one ray does not depend on its origin except through the rounding of origin + offset (see
// star_math.h), so the host tabulates, per ray and step m, the float32 offset StarDist accumulates, its rounded
// integer step as a linear offset into a zero-padded copy of the labels (or kAmbiguousStep when rounding could
// depend on the origin), and the distance StarDist reports when the ray stops at step m. Kernels then only
// compare labels; CPU, CUDA and the emulator read the same tables, so they agree bit for bit.

constexpr int64_t kAmbiguousStep = INT64_MIN;  // recompute this step exactly from the float32 offset
constexpr int kStarPad = 4;  // zero frame around the labels: a step moves at most 2 pixels, the vector loop
                             // reads one step past the stop

struct StarDistArgs {
  int nd = 2;                   // 2 or 3
  int64_t in[3] = {1, 1, 1};    // label image size (d, h, w); d = 1 in 2D
  int64_t osz[3] = {1, 1, 1};   // output grid size: (in - 1) / grid + 1
  int64_t grid[3] = {1, 1, 1};
  int64_t pad[3] = {0, 0, 0};   // zero frame per dim (kStarPad on the image dims, 0 for 2D depth)
  int64_t pin[3] = {1, 1, 1};   // padded size
  int n_rays = 0;
  int64_t n_steps = 0;          // table length per ray
  DType label_dtype = DType::unknown;
  const void* labels = nullptr;  // contiguous (d, h, w)
  // The zero-framed copy (pin[0], pin[1], pin[2]) lives in a byte workspace of star_padded_bytes(); its element
  // type is the backend's choice: u16 when every label fits (CPU: twice the lanes per vector), else i32 for labels
  // of <= 32 bits (a cast that keeps equality and zero), i64 otherwise. Only equality is ever tested.
  DType padded_dtype = DType::i32;
  void* padded = nullptr;
  const int64_t* offs = nullptr;    // (n_rays, n_steps) linear offsets into `padded`, or kAmbiguousStep
  const float* pos = nullptr;       // (n_rays, n_steps, nd) float32 offsets StarDist accumulates (z, y, x)
  const float* dist = nullptr;      // (n_rays, n_steps) distance reported when stopping at step m (dist[0] = 0)
  float* out = nullptr;             // (out..., n_rays)
  bool zero_background = true;      // false: `out` is known to be zero already, background is not written
  int device = 0;
};

// ---- polygons (dist_to_coord, polygons_to_label) ---------------------------------------------------------

struct PolyArgs {
  int64_t n = 0;                 // polygons
  int n_rays = 0;
  DType dist_dtype = DType::f32;  // f32 or f64
  const void* dist = nullptr;     // (n, n_rays)
  const double* points = nullptr;  // (n, 2) row, col
  const double* trig = nullptr;    // (2, n_rays): sin, cos of the ray angles in float64 (np.linspace)
  double scale[2] = {1, 1};
  float* coord = nullptr;          // (n, 2, n_rays) float32 vertices (dist_to_coord output / p2l workspace)
  // polygons_to_label
  const int64_t* order = nullptr;  // (n,) paint order: ascending prob, stable; polygon order[r] has priority r
  int64_t H = 0, W = 0;
  int64_t origin[2] = {0, 0};      // image coordinates of labels[0, 0]: a window of a larger image, painted as that
                                   // image would be (vertices and the pixel rule stay in image coordinates)
  int32_t* labels = nullptr;       // (H, W) output; label of polygon i is i + 1
  int device = 0;
};

// ---- non-maximum suppression ------------------------------------------------------------------------------

struct NmsArgs {
  int64_t ny = 0, nx = 0;          // prediction grid
  int n_rays = 0;
  int64_t grid[2] = {1, 1};
  DType dist_dtype = DType::f32;
  const void* dist = nullptr;       // (ny, nx, n_rays) contiguous
  const int64_t* cand = nullptr;    // (count,) candidate cells (y * nx + x) in descending prob order
  int64_t count = 0;
  const double* trig = nullptr;     // (2, n_rays) sin, cos (float64)
  double thresh = 0.4;
  int criterion = 0;                // 0: inter / min(area) (StarDist), 1: IoU
  uint8_t* state = nullptr;         // (count,) output: 1 kept, 2 suppressed (0 = undecided, device workspace)
  // CPU, optional: the probabilities and the candidate window [y0, y1) x [x0, x1) let a helper thread work ahead
  // on the candidates that are local maxima (likely kept); without them the sweep is single-threaded
  DType prob_dtype = DType::f32;
  const void* prob = nullptr;       // (ny, nx)
  int64_t win[4] = {0, 0, 0, 0};
  // CUDA workspace (Python allocates): cell map and per-candidate geometry
  int32_t* cellmap = nullptr;       // (ny, nx)
  double* geom = nullptr;           // (count, 8): area, ymin, ymax, xmin, xmax, rmax, rin2, -
  int32_t* flags = nullptr;         // (4,)
  int device = 0;
};

struct NmsStats {  // what the CPU sweep did (benchmarks and tests read it)
  int64_t pairs = 0, bbox_rejected = 0, bound_decided = 0, disk_decided = 0, sweep = 0, sweep_early = 0, fan = 0;
  int64_t maxima = 0, helped = 0;  // candidates that are local maxima; kept ones whose pairs the helper had done
  // wall time of the phases, ms: raster order, per-candidate geometry, bucket grid, local maxima, greedy sweep
  double ms_order = 0, ms_geometry = 0, ms_buckets = 0, ms_maxima = 0, ms_sweep = 0;
};

// ---- the launchers a device backend (cuda, emu) registers under the name "star" ----
struct StarKernels {
  void (*star_dist)(const StarDistArgs&, void* stream);
  void (*dist_to_coord)(const PolyArgs&, void* stream);
  void (*polygons_to_label)(const PolyArgs&, void* stream);
  void (*nms)(const NmsArgs&, void* stream);
};

// ---- C++ API (validation + dispatch; see star.cpp) ----

// Length of the per-ray tables for an image of this (padded) size; the tables cover every march from any
// origin inside the image.
int64_t star_table_steps(const std::vector<int64_t>& shape);
// Fills the tables (host memory) from the float32 unit steps (n_rays, nd) in (z,) y, x order.
void star_dist_tables(const TensorView& steps, const std::vector<int64_t>& shape, const TensorView& offs,
                      const TensorView& pos, const TensorView& dist);
// Bytes of the padded-label workspace star_dist needs for labels of this shape and dtype size.
int64_t star_padded_bytes(const std::vector<int64_t>& shape, int label_itemsize);
void star_dist(const TensorView& labels, const TensorView& padded, const TensorView& offs, const TensorView& pos,
               const TensorView& dist, const TensorView& out, const std::vector<int64_t>& grid, bool zero_background,
               bool use_emu, void* stream);

void dist_to_coord(const TensorView& dist, const TensorView& points, const TensorView& trig, double scale_y,
                   double scale_x, const TensorView& coord, bool use_emu, void* stream);
void polygons_to_label(const TensorView& dist, const TensorView& points, const TensorView& trig,
                       const TensorView& order, double scale_y, double scale_x, const TensorView& coord,
                       const TensorView& labels, int64_t origin_y, int64_t origin_x, bool use_emu, void* stream);

// Candidates: cells with prob > thresh inside the border window [y0, y1) x [x0, x1), in descending prob order
// (stable: raster order breaks ties). Returns the count; with cand.ndim == 0 it only counts.
int64_t nms_candidates(const TensorView& prob, double thresh, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                       const TensorView& cand);
NmsStats nms(const TensorView& dist, const TensorView& cand, const TensorView& trig, const std::vector<int64_t>& grid,
             double thresh, int criterion, const TensorView& state, const TensorView& cellmap, const TensorView& geom,
             const TensorView& flags, const TensorView& prob, const std::vector<int64_t>& window, bool use_emu,
             void* stream);

// Matching: label ranges, then overlap counts between two label images (CPU).
struct LabelRange {
  int64_t min_true = 0, max_true = 0, min_pred = 0, max_pred = 0, both = 0;  // both: pixels with both > 0
};
LabelRange label_range(const TensorView& y_true, const TensorView& y_pred);
// lut_* (max + 1) int32 receive compact ids (1..n in ascending label order, 0 for background and absent
// labels); size_* (max + 1) int64 the pixel count per compact id (index 0: background); pairs the distinct
// (true id, pred id, count) with both ids > 0. Returns {n_true, n_pred, n_pairs}.
std::vector<int64_t> label_overlap(const TensorView& y_true, const TensorView& y_pred, const TensorView& lut_true,
                                   const TensorView& lut_pred, const TensorView& size_true,
                                   const TensorView& size_pred, const TensorView& pair_true,
                                   const TensorView& pair_pred, const TensorView& pair_count);

}  // namespace ck

CK_CPU_DECLARE(void star_dist_cpu(const StarDistArgs& a))
CK_CPU_DECLARE(void dist_to_coord_cpu(const PolyArgs& a))
CK_CPU_DECLARE(void polygons_to_label_cpu(const PolyArgs& a))
CK_CPU_DECLARE(int64_t nms_candidates_cpu(const float* probf, const double* probd, int64_t nx, double thresh,
                                          int64_t y0, int64_t y1, int64_t x0, int64_t x1, int64_t* cand))
CK_CPU_DECLARE(NmsStats nms_cpu(const NmsArgs& a))
CK_CPU_DECLARE(LabelRange label_range_cpu(DType dt, const void* yt, const void* yp, int64_t n))
CK_CPU_DECLARE(void label_overlap_cpu(DType dt, const void* yt, const void* yp, int64_t n, int32_t* lut_t,
                                      int64_t max_t, int32_t* lut_p, int64_t max_p, int64_t* size_t_,
                                      int64_t* size_p, int32_t* pair_t, int32_t* pair_p, int64_t* pair_n,
                                      int64_t pair_cap, int64_t* counts))
