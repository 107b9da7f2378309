// Star-convex polyhedra (StarDist 3D semantics): argument blocks every backend receives, the C++ API.
#pragma once
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "core/cpu_isa.h"
#include "core/dtypes.h"
#include "core/registry.h"
#include "core/tensor_view.h"

namespace ck {

// ---- the ray set, tabulated once per Rays object (python/cellkern/star/_rays3d_tables) ----------------------
//
// A polyhedron with distances d has vertices centre + d_k * ray_k and the triangular faces (A, B, C) of the ray
// set. Face f's cone is spanned by its three unit rays; an offset u from the centre has coefficients
// alpha = finv_f * u on them, and when u lies in that cone (alpha >= 0) it is inside the polyhedron exactly when
// alpha_A / d_A + alpha_B / d_B + alpha_C / d_C <= 1. The cones do not depend on d, so one table serves every
// polyhedron; a point is located by a walk over face neighbours from a cube-map guess.
struct RayTables {
  int n_rays = 0, n_faces = 0;
  const float* verts = nullptr;    // (n_rays, 3) float32 unit rays (z, y, x), what StarDist computes with
  const int32_t* faces = nullptr;  // (n_faces, 3), StarDist's orientation
  const double* finv = nullptr;    // (n_faces, 9) row-major inverse of the matrix whose columns are the face's rays
  const double* fdet = nullptr;    // (n_faces,) det of that matrix: volume = |sum_f d_A d_B d_C fdet_f| / 6
  const int32_t* adj = nullptr;    // (n_faces, 3) the face across the edge opposite vertex k
  const int32_t* dirmap = nullptr;  // (6, res, res) a face near each cube-map cell's direction
  int res = 0;
};

// ---- polyhedron_to_label -------------------------------------------------------------------------------------
enum class RenderMode : int { full = 0, kernel = 1, bbox = 2 };

struct Render3Args {
  RayTables rays;
  int64_t n = 0;                    // polyhedra, in paint order (descending probability): rank r = row r
  const float* dist = nullptr;      // (n, n_rays) float32, > 0
  const float* points = nullptr;    // (n, 3) float32 centres (z, y, x)
  const int32_t* labels = nullptr;  // (n,) the label of each row
  // (n, n_rays) or null: vertex k of row r lies exactly on a voxel centre that StarDist's Qhull hull test puts
  // outside the hull (python/cellkern/star/polyhedra.py), so only its kernel test can paint that voxel.
  const uint8_t* hull_vertex = nullptr;
  int64_t shape[3] = {0, 0, 0};
  int64_t origin[3] = {0, 0, 0};    // voxel coordinates of out[0, 0, 0]: a window of a larger volume, painted as
                                    // that volume would be (the rule runs in the volume's coordinates)
  int32_t* out = nullptr;           // (shape) zeroed int32 output
  int mode = 0;                     // RenderMode
  bool use_overlap = false;         // voxels covered by two or more polyhedra get overlap_label
  int32_t overlap_label = 0;
  // CUDA workspace (Python allocates): per voxel the lowest rank covering it (int32, set to INT32_MAX by the
  // launcher) and, with use_overlap, how many cover it
  int32_t* rank = nullptr;
  int32_t* count = nullptr;
  int device = 0;
};

// ---- non-maximum suppression ---------------------------------------------------------------------------------
//
// Candidates in descending score order. A candidate is suppressed when a kept higher-ranked one shares more than
// thresh of the smaller analytic volume (criterion 1: IoU) in voxels: |V_i & V_j| counted on integer voxel
// centres inside both (unclipped), boundary included (1e-9 relative). Candidates meet through a bucket grid of
// their centres: bucket b holds bucket_items[bucket_start[b] : bucket_start[b + 1]] (ranks), buckets of side
// `bucket` voxels from `bucket_origin`, nb[3] of them.
struct Nms3Args {
  RayTables rays;
  int64_t n = 0;
  DType dist_dtype = DType::f32;
  const void* dist = nullptr;        // (n, n_rays) f32 or f64, in rank order
  const double* points = nullptr;    // (n, 3) centres (z, y, x), in rank order
  double thresh = 0.5;
  int criterion = 0;                 // 0: inter / min(volume) (StarDist), 1: IoU
  const int64_t* bucket_start = nullptr;
  const int64_t* bucket_items = nullptr;
  int64_t nb[3] = {1, 1, 1};
  double bucket = 1, bucket_origin[3] = {0, 0, 0};
  double reach = 0;                  // the largest distance of any candidate (rounded up)
  uint8_t* state = nullptr;          // (n,) output: 1 kept, 2 suppressed (0 undecided: device workspace)
  // CUDA workspace (Python allocates)
  double* geom = nullptr;            // (n, 8): volume, box z0 z1 y0 y1 x0 x1, -
  int32_t* flags = nullptr;          // (2,)
  int device = 0;
};

struct Nms3Stats {
  // kept; pairs met in the bucket grid, rejected by boxes, decided by the bound on the count (i's voxels near k),
  // stopped early once decided; voxels examined
  int64_t kept = 0, pairs = 0, box_rejected = 0, bounded = 0, early = 0, voxels = 0;
  bool table = false;  // integer centres: membership from the cube of offsets
  double ms_geometry = 0, ms_sweep = 0;
};

// ---- the launchers a device backend (cuda, emu) registers under the name "star3d" ----
struct Star3Kernels {
  void (*render)(const Render3Args&, void* stream);
  void (*nms)(const Nms3Args&, void* stream);
};

// ---- C++ API (validation + dispatch; see star3d.cpp) ----
// The ray tables as arrays on the call's device: verts (R, 3) f32, faces (F, 3) i32, finv (F, 9) f64,
// fdet (F,) f64, adj (F, 3) i32, dirmap (6, res, res) i32.
struct RayViews {
  TensorView verts, faces, finv, fdet, adj, dirmap;
};

void polyhedron_to_label(const RayViews& rays, const TensorView& dist, const TensorView& points,
                         const TensorView& labels, const TensorView& hull_vertex, const TensorView& out,
                         const std::vector<int64_t>& origin, int mode, bool use_overlap, int64_t overlap_label,
                         const TensorView& rank, const TensorView& count, bool use_emu, void* stream);
Nms3Stats nms3d(const RayViews& rays, const TensorView& dist, const TensorView& points, double thresh,
                int criterion, const TensorView& bucket_start, const TensorView& bucket_items,
                const std::vector<int64_t>& nb, double bucket, const std::vector<double>& bucket_origin,
                double reach, const TensorView& state, const TensorView& geom, const TensorView& flags, bool use_emu,
                void* stream);
// Analytic volumes (n,) of polyhedra (n, n_rays) (CPU).
void polyhedron_volumes(const RayViews& rays, const TensorView& dist, const TensorView& out);

}  // namespace ck

CK_CPU_DECLARE(void polyhedron_to_label_cpu(const Render3Args& a))
CK_CPU_DECLARE(Nms3Stats nms3d_cpu(const Nms3Args& a))
