// Star-convex polygon CUDA kernels and launchers (star_dist, dist_to_coord, polygons_to_label, NMS); nvcc builds
// them into _cuda, g++ with the SIMT emulator into _emu.
#pragma once
#include <cstring>

#include "cuda/launch.cuh"
#include "ops/star/star.h"
#include "ops/star/star_math.h"

CK_NS_BEGIN
namespace star_cuda {

constexpr int kThreads = 256;

// Device -> host copy of a few bytes (the NMS round loop reads its progress counter).
inline void copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
#if defined(__CUDACC__)
  ::ck::cuda::check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
                    "cudaMemcpyAsync", __FILE__, __LINE__);
  ::ck::cuda::check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize", __FILE__,
                    __LINE__);
#else
  (void)stream;
  std::memcpy(dst, src, bytes);
#endif
}

// ---- star_dist ---------------------------------------------------------------------------------------------

// The zero-framed copy of the labels (int32 for labels of <= 32 bits: an injective cast; int64 otherwise).
template <class In, class L>
__global__ void pad_kernel(StarDistArgs a, const In* __restrict__ src, L* __restrict__ dst) {
  const int64_t total = a.pin[0] * a.pin[1] * a.pin[2];
  CK_KERNEL_LOOP(i, total) {
    const int64_t x = i % a.pin[2] - a.pad[2], r = i / a.pin[2];
    const int64_t y = r % a.pin[1] - a.pad[1], z = r / a.pin[1] - a.pad[0];
    const bool in = z >= 0 && z < a.in[0] && y >= 0 && y < a.in[1] && x >= 0 && x < a.in[2];
    dst[i] = in ? L(src[(z * a.in[1] + y) * a.in[2] + x]) : L(0);
  }
}

// Threads (x: 32 consecutive output pixels, y: rays): a warp marches one ray from 32 neighbouring origins, so its
// label loads at each step are contiguous (for grid 1) and its table reads are one broadcast.
template <class L>
__global__ void march_kernel(StarDistArgs a, const L* __restrict__ lab) {
  const int64_t npix = a.osz[0] * a.osz[1] * a.osz[2];
  const int k = int(blockIdx.y * blockDim.y + threadIdx.y);
  if (k >= a.n_rays) return;  // no barriers in this kernel
  for (int64_t pix = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; pix < npix;
       pix += int64_t(blockDim.x) * gridDim.x) {
    const int64_t ox = pix % a.osz[2], t = pix / a.osz[2];
    const int64_t oy = t % a.osz[1], oz = t / a.osz[1];
    const int64_t z = oz * a.grid[0], y = oy * a.grid[1], x = ox * a.grid[2];
    const int64_t p0 = ((z + a.pad[0]) * a.pin[1] + (y + a.pad[1])) * a.pin[2] + (x + a.pad[2]);
    const L v = lab[p0];
    float* o = a.out + pix * a.n_rays + k;
    if (v == 0) {
      if (a.zero_background) *o = 0.f;
      continue;
    }
    const int64_t m = star::march(a, lab, p0, v, k, z, y, x);
    *o = a.dist[int64_t(k) * a.n_steps + m];
  }
}

template <class L>
void star_dist_typed(const StarDistArgs& a, void* stream) {
  L* pad = static_cast<L*>(a.padded);
  const int64_t total = a.pin[0] * a.pin[1] * a.pin[2];
  dispatch_int(a.label_dtype, [&](auto tag) {
    using In = decltype(tag);
    auto k = &pad_kernel<In, L>;
    CK_LAUNCH(k, cuda::blocks_for(total, kThreads), kThreads, 0, stream, a, static_cast<const In*>(a.labels), pad);
  });
  const int64_t npix = a.osz[0] * a.osz[1] * a.osz[2];
  const dim3 block(32, 8);
  const int64_t bx = (npix + 31) / 32;
  const dim3 grid(unsigned(bx > 65535 ? 65535 : bx), unsigned((a.n_rays + 7) / 8));
  auto k = &march_kernel<L>;
  CK_LAUNCH(k, grid, block, 0, stream, a, static_cast<const L*>(pad));
}

inline void star_dist(const StarDistArgs& args, void* stream) {
  cuda::set_device(args.device);
  StarDistArgs a = args;
  if (dtype_size(a.label_dtype) <= 4) {
    a.padded_dtype = DType::i32;
    star_dist_typed<int32_t>(a, stream);
  } else {
    a.padded_dtype = DType::i64;
    star_dist_typed<int64_t>(a, stream);
  }
}

// ---- dist_to_coord / polygons_to_label ---------------------------------------------------------------------

template <class D>
__global__ void coord_kernel(PolyArgs a) {
  const D* dist = static_cast<const D*>(a.dist);
  const int64_t total = a.n * a.n_rays;
  CK_KERNEL_LOOP(t, total) {
    const int64_t i = t / a.n_rays;
    const int k = int(t % a.n_rays);
    const double d = double(dist[t]);
    float* r = a.coord + i * 2 * a.n_rays;
    r[k] = star::coord_of(d, a.trig[k], a.scale[0], a.points[2 * i]);
    r[a.n_rays + k] = star::coord_of(d, a.trig[a.n_rays + k], a.scale[1], a.points[2 * i + 1]);
  }
}

// One block per polygon (by paint rank r): its threads test the pixels of the polygon's bounding range with
// skimage's rule and keep the highest rank per pixel (atomicMax: order-independent, so deterministic).
__global__ void paint_kernel(PolyArgs a) {
  for (int64_t r = blockIdx.x; r < a.n; r += gridDim.x) {
    const int64_t i = a.order[r];
    if (i < 0 || i >= a.n) continue;
    const float* rr = a.coord + i * 2 * a.n_rays;
    const float* cc = rr + a.n_rays;
    int64_t r0, r1, c0, c1;
    star::raster_range(rr, a.n_rays, a.origin[0], a.H, r0, r1);
    star::raster_range(cc, a.n_rays, a.origin[1], a.W, c0, c1);
    if (r1 < r0 || c1 < c0) continue;
    const int64_t w = c1 - c0 + 1, total = (r1 - r0 + 1) * w;
    for (int64_t p = threadIdx.x; p < total; p += blockDim.x) {
      const int64_t y = r0 + p / w, x = c0 + p % w;
      if (star::pixel_in_polygon(rr, cc, a.n_rays, double(y + a.origin[0]), double(x + a.origin[1])))
        atomicMax(a.labels + y * a.W + x, int32_t(r + 1));
    }
  }
}

// paint rank + 1 -> label (input index + 1)
__global__ void rank_to_label_kernel(PolyArgs a) {
  const int64_t total = a.H * a.W;
  CK_KERNEL_LOOP(p, total) {
    const int32_t v = a.labels[p];
    if (v > 0) a.labels[p] = int32_t(a.order[v - 1] + 1);
  }
}

inline void launch_coords(const PolyArgs& a, void* stream) {
  const int64_t total = a.n * a.n_rays;
  if (a.dist_dtype == DType::f64) {
    auto k = &coord_kernel<double>;
    CK_LAUNCH(k, cuda::blocks_for(total, kThreads), kThreads, 0, stream, a);
  } else {
    auto k = &coord_kernel<float>;
    CK_LAUNCH(k, cuda::blocks_for(total, kThreads), kThreads, 0, stream, a);
  }
}

inline void dist_to_coord(const PolyArgs& a, void* stream) {
  cuda::set_device(a.device);
  launch_coords(a, stream);
}

inline void polygons_to_label(const PolyArgs& a, void* stream) {
  cuda::set_device(a.device);
  launch_coords(a, stream);
  const unsigned blocks = unsigned(a.n < 65535 ? a.n : 65535);
  auto kp = &paint_kernel;
  CK_LAUNCH(kp, blocks, 128, 0, stream, a);
  auto kr = &rank_to_label_kernel;
  CK_LAUNCH(kr, cuda::blocks_for(a.H * a.W, kThreads), kThreads, 0, stream, a);
}

// ---- NMS ---------------------------------------------------------------------------------------------------

// Greedy NMS in parallel rounds, with exactly the sequential result: a candidate is decided once it can be -
// suppressed by a kept higher-ranked candidate (then it is suppressed, whatever the undecided ones do), or kept
// when every higher-ranked candidate whose box meets its own is decided and none suppresses it. Each round
// decides at least the highest-ranked undecided candidate; in practice a handful of rounds decide all. Decisions
// are final, so reading a neighbour's state while another thread writes it is harmless (either value leads to
// a correct decision, now or in a later round). Candidates meet through a cell map (rank per prediction cell);
// a candidate looks at the cells whose polygons can reach its box (its box widened by the largest radius).

constexpr int kMaxDeviceRays = 256;  // local arrays per thread in the pair test

template <class D>
__global__ void nms_prep_kernel(NmsArgs a) {
  const D* dist = static_cast<const D*>(a.dist);
  const int n = a.n_rays;
  const double* sn = a.trig;
  const double* cs = a.trig + n;
  double vy[kMaxDeviceRays], vx[kMaxDeviceRays];
  CK_KERNEL_LOOP(r, a.count) {
    const int64_t cell = a.cand[r];
    a.state[r] = 0;
    if (cell < 0 || cell >= a.ny * a.nx) {
      atomicOr(a.flags + 3, 2);
      continue;
    }
    const D* d = dist + cell * n;
    bool finite = true, in_range = true;  // the documented range: |d| <= kStarDistMax
    for (int k = 0; k < n; ++k) {
      finite = finite && std::isfinite(double(d[k]));
      in_range = in_range && std::fabs(double(d[k])) <= kStarDistMax;
    }
    if (!finite) atomicOr(a.flags + 3, 1);
    if (!in_range) atomicOr(a.flags + 3, 4);
    const star::V2 c = star::v2(double(cell / a.nx * a.grid[0]), double(cell % a.nx * a.grid[1]));
    star::PolyGeom g = star::poly_geom(c, d, n, sn, cs, vy, vx);
    g.rin2 = star::clearance2(star::Verts{vy, vx}, n, star::v2(0, 0));
    double* o = a.geom + r * 8;
    o[0] = g.area;
    o[1] = g.ymin;
    o[2] = g.ymax;
    o[3] = g.xmin;
    o[4] = g.xmax;
    o[5] = g.rmax;
    o[6] = g.rin2;
    o[7] = 0;
    a.cellmap[cell] = int32_t(r);
    atomicMax(a.flags, __float_as_int(float(g.rmax)));  // non-negative floats order like their bits
  }
}

CK_HD star::PolyGeom load_geom(const double* p) {
  star::PolyGeom g;
  g.area = p[0];
  g.ymin = p[1];
  g.ymax = p[2];
  g.xmin = p[3];
  g.xmax = p[4];
  g.rmax = p[5];
  g.rin2 = p[6];
  return g;
}

template <class D>
__global__ void nms_round_kernel(NmsArgs a, double R) {
  const D* dist = static_cast<const D*>(a.dist);
  const int n = a.n_rays;
  const double* sn = a.trig;
  const double* cs = a.trig + n;
  volatile uint8_t* state = a.state;
  double ay[kMaxDeviceRays], ax[kMaxDeviceRays], by[kMaxDeviceRays], bx[kMaxDeviceRays];
  CK_KERNEL_LOOP(v, a.count) {
    if (state[v] != 0) continue;
    const star::PolyGeom gv = load_geom(a.geom + v * 8);
    const int64_t cellv = a.cand[v];
    const star::V2 cv = star::v2(double(cellv / a.nx * a.grid[0]), double(cellv % a.nx * a.grid[1]));
    // cells whose centres lie within R of v's box
    int64_t iy0 = int64_t(std::ceil((gv.ymin - R) / a.grid[0])), iy1 = int64_t(std::floor((gv.ymax + R) / a.grid[0]));
    int64_t ix0 = int64_t(std::ceil((gv.xmin - R) / a.grid[1])), ix1 = int64_t(std::floor((gv.xmax + R) / a.grid[1]));
    iy0 = iy0 < 0 ? 0 : iy0;
    ix0 = ix0 < 0 ? 0 : ix0;
    iy1 = iy1 > a.ny - 1 ? a.ny - 1 : iy1;
    ix1 = ix1 > a.nx - 1 ? a.nx - 1 : ix1;
    bool pending = false, suppressed = false;
    const bool empty = !(gv.area > 0);  // a zero-area polygon is suppressed by nobody
    for (int64_t iy = iy0; iy <= iy1 && !suppressed; ++iy) {
      for (int64_t ix = ix0; ix <= ix1 && !suppressed; ++ix) {
        const int32_t u = a.cellmap[iy * a.nx + ix];
        if (u < 0 || int64_t(u) >= v) continue;
        const uint8_t su = state[u];
        if (su == 2) continue;
        const star::PolyGeom gu = load_geom(a.geom + int64_t(u) * 8);
        if (gu.xmax <= gv.xmin || gv.xmax <= gu.xmin || gu.ymax <= gv.ymin || gv.ymax <= gu.ymin) continue;
        if (su == 0) {
          pending = true;
          continue;
        }
        if (empty || !(gu.area > 0)) continue;
        const int64_t cellu = a.cand[u];
        const D* du = dist + cellu * n;
        const D* dv = dist + cellv * n;
        const star::V2 cu = star::v2(double(cellu / a.nx * a.grid[0]), double(cellu % a.nx * a.grid[1]));
        const star::V2 cb = star::sub(cv, cu);
        star::star_vertices(star::v2(0, 0), du, n, sn, cs, ay, ax);
        star::star_vertices(cb, dv, n, sn, cs, by, bx);
        int path;
        suppressed = star::suppresses(star::Verts{ay, ax}, du, gu, star::Verts{by, bx}, dv, cb, gv, n, sn, cs,
                                      a.thresh, a.criterion, &path);
      }
    }
    if (suppressed) {
      state[v] = 2;
      atomicAdd(a.flags + 1, 1);
    } else if (!pending) {
      state[v] = 1;
      atomicAdd(a.flags + 1, 1);
    }
  }
}

template <class D>
void nms_typed(const NmsArgs& a, void* stream) {
  cuda::memset_async(a.cellmap, 0xFF, sizeof(int32_t) * size_t(a.ny * a.nx), stream);
  cuda::memset_async(a.flags, 0, sizeof(int32_t) * 4, stream);
  const unsigned blocks = cuda::blocks_for(a.count, 128);
  auto kp = &nms_prep_kernel<D>;
  CK_LAUNCH(kp, blocks, 128, 0, stream, a);
  int32_t f[4];
  copy_to_host(f, a.flags, sizeof(f), stream);
  if (f[3] & 2) throw ValueError("cand: cell index out of range");
  if (f[3] & 1) throw ValueError("dist: non-finite distances at NMS candidates");
  if (f[3] & 4)
    throw ValueError(str("dist: distances at NMS candidates must lie within +-", int64_t(kStarDistMax),
                         " px (2^22, the documented range)"));
  float rmax;
  std::memcpy(&rmax, &f[0], sizeof(float));
  const double R = double(rmax) + 1.0;  // + 1: the float32 rounding of the largest radius
  auto kr = &nms_round_kernel<D>;
  for (int64_t round = 0; round <= a.count; ++round) {
    CK_LAUNCH(kr, blocks, 128, 0, stream, a, R);
    copy_to_host(f, a.flags, sizeof(f), stream);
    if (f[1] >= a.count) return;
  }
  throw RuntimeError("star NMS: the rounds did not converge (internal error)");
}

inline void nms(const NmsArgs& a, void* stream) {
  cuda::set_device(a.device);
  if (a.n_rays > kMaxDeviceRays)
    throw ValueError(str("dist: the CUDA NMS supports up to ", kMaxDeviceRays, " rays, got ", a.n_rays));
  if (a.dist_dtype == DType::f64)
    nms_typed<double>(a, stream);
  else
    nms_typed<float>(a, stream);
}

}  // namespace star_cuda
CK_NS_END
