// Star-convex polyhedron CUDA kernels and launchers (polyhedron_to_label, 3D NMS); nvcc builds them into _cuda,
// g++ with the SIMT emulator into _emu.
#pragma once
#include <climits>
#include <cstring>

#include "cuda/launch.cuh"
#include "ops/star3d/star3d.h"
#include "ops/star3d/star3d_math.h"

CK_NS_BEGIN
namespace star3d_cuda {

constexpr int kThreads = 256;
constexpr int kMaxDeviceRays = 1024;  // shared memory per polyhedron: 20 bytes a ray

inline void copy_to_host3(void* dst, const void* src, size_t bytes, void* stream) {
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

// ---- polyhedron_to_label ---------------------------------------------------------------------------------------

__global__ void fill_kernel(int32_t* p, int64_t n, int32_t v) {
  CK_KERNEL_LOOP(i, n) p[i] = v;
}

// One block per polyhedron (rank r): the vertices in shared memory, the threads test the voxels of its box and
// keep the lowest rank per voxel (atomicMin: the highest probability wins whatever the block order).
__global__ void render_kernel(Render3Args a) {
  const int R = a.rays.n_rays;
  CK_DYNAMIC_SMEM(double, smem);
  double* inv_d = smem;                              // (R,)
  float* pv = reinterpret_cast<float*>(smem + R);    // (R, 3)
  __shared__ int64_t box[6];
  __shared__ double tol, rin2, rout2;
  const int64_t Z = a.shape[0], Y = a.shape[1], X = a.shape[2];
  for (int64_t r = blockIdx.x; r < a.n; r += gridDim.x) {
    const float* c = a.points + 3 * r;
    const float* d = a.dist + r * R;
    for (int k = threadIdx.x; k < R; k += blockDim.x) {
      inv_d[k] = 1.0 / double(d[k]);
      for (int j = 0; j < 3; ++j) pv[3 * k + j] = star3d::fadd(c[j], star3d::fmul(d[k], a.rays.verts[3 * k + j]));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      star3d::sd_bbox(pv, R, box);
      tol = star3d::render_tol(c, d, R);
      star3d::render_radii(a.rays, d, tol, &rin2, &rout2);
    }
    __syncthreads();
    // in window coordinates
    const int64_t oz = a.origin[0], oy = a.origin[1], ox = a.origin[2];
    const int64_t z0 = box[0] - oz < 0 ? 0 : box[0] - oz, z1 = box[1] - oz > Z - 1 ? Z - 1 : box[1] - oz;
    const int64_t y0 = box[2] - oy < 0 ? 0 : box[2] - oy, y1 = box[3] - oy > Y - 1 ? Y - 1 : box[3] - oy;
    const int64_t x0 = box[4] - ox < 0 ? 0 : box[4] - ox, x1 = box[5] - ox > X - 1 ? X - 1 : box[5] - ox;
    if (z0 <= z1 && y0 <= y1 && x0 <= x1) {
      const star3d::Poly3 p{c, d, pv, inv_d, tol, a.hull_vertex ? a.hull_vertex + r * R : nullptr, rin2, rout2};
      int hint = -1;
      const int64_t wy = y1 - y0 + 1, wx = x1 - x0 + 1, total = (z1 - z0 + 1) * wy * wx;
      for (int64_t q = threadIdx.x; q < total; q += blockDim.x) {
        const int64_t z = z0 + q / (wy * wx), y = y0 + q / wx % wy, x = x0 + q % wx;
        if (!star3d::render_inside(a.rays, p, a.mode, z + oz, y + oy, x + ox, hint)) continue;
        const int64_t v = (z * Y + y) * X + x;
        atomicMin(a.rank + v, int32_t(r));
        if (a.use_overlap) atomicAdd(a.count + v, 1);
      }
    }
    __syncthreads();
  }
}

__global__ void rank_to_label_kernel(Render3Args a) {
  const int64_t total = a.shape[0] * a.shape[1] * a.shape[2];
  CK_KERNEL_LOOP(v, total) {
    const int32_t r = a.rank[v];
    if (r == INT32_MAX) continue;
    a.out[v] = (a.use_overlap && a.count[v] > 1) ? a.overlap_label : a.labels[r];
  }
}

inline void render(const Render3Args& a, void* stream) {
  cuda::set_device(a.device);
  if (a.rays.n_rays > kMaxDeviceRays)
    throw ValueError(str("dist: the CUDA polyhedron_to_label supports up to ", kMaxDeviceRays, " rays"));
  const int64_t total = a.shape[0] * a.shape[1] * a.shape[2];
  auto kf = &fill_kernel;
  CK_LAUNCH(kf, cuda::blocks_for(total, kThreads), kThreads, 0, stream, a.rank, total, int32_t(INT32_MAX));
  if (a.use_overlap) cuda::memset_async(a.count, 0, sizeof(int32_t) * size_t(total), stream);
  const unsigned blocks = unsigned(a.n < 65535 ? a.n : 65535);
  const size_t smem = size_t(a.rays.n_rays) * (sizeof(double) + 3 * sizeof(float));
  auto kr = &render_kernel;
  CK_LAUNCH(kr, blocks, 128, smem, stream, a);
  auto kl = &rank_to_label_kernel;
  CK_LAUNCH(kl, cuda::blocks_for(total, kThreads), kThreads, 0, stream, a);
}

// ---- NMS -------------------------------------------------------------------------------------------------------
//
// Greedy NMS in parallel rounds with exactly the sequential result (as the 2D kernels): a candidate is decided
// once a kept higher-ranked candidate suppresses it, or when every higher-ranked candidate that could is decided
// and none does. One thread per candidate counts the voxel overlap with each neighbour (correct, not fast: the
// CPU sweep is the tuned path).

template <class D>
__global__ void nms_prep_kernel(Nms3Args a) {
  const D* dist = static_cast<const D*>(a.dist);
  CK_KERNEL_LOOP(i, a.n) {
    const D* d = dist + i * a.rays.n_rays;
    double* g = a.geom + 8 * i;
    g[0] = star3d::volume(a.rays, d);
    int64_t box[6];
    star3d::nms_box(a.rays, a.points + 3 * i, d, box);
    for (int j = 0; j < 6; ++j) g[1 + j] = double(box[j]);
    g[7] = 0;
  }
}

template <class D>
__device__ int64_t nms_overlap(const Nms3Args& a, int64_t i, int64_t k, double limit) {
  const D* dist = static_cast<const D*>(a.dist);
  const int R = a.rays.n_rays;
  const double* gi = a.geom + 8 * i;
  const double* gk = a.geom + 8 * k;
  const double* ci = a.points + 3 * i;
  const double* ck = a.points + 3 * k;
  int64_t lo[3], hi[3];
  for (int j = 0; j < 3; ++j) {
    lo[j] = int64_t(gi[1 + 2 * j] > gk[1 + 2 * j] ? gi[1 + 2 * j] : gk[1 + 2 * j]);
    hi[j] = int64_t(gi[2 + 2 * j] < gk[2 + 2 * j] ? gi[2 + 2 * j] : gk[2 + 2 * j]);
  }
  int64_t count = 0;
  for (int64_t z = lo[0]; z <= hi[0]; ++z)
    for (int64_t y = lo[1]; y <= hi[1]; ++y)
      for (int64_t x = lo[2]; x <= hi[2]; ++x) {
        const double ui[3] = {double(z) - ci[0], double(y) - ci[1], double(x) - ci[2]};
        if (!star3d::nms_inside_dist(a.rays, ui, dist + i * R)) continue;
        const double uk[3] = {double(z) - ck[0], double(y) - ck[1], double(x) - ck[2]};
        if (!star3d::nms_inside_dist(a.rays, uk, dist + k * R)) continue;
        if (double(++count) > limit) return count;
      }
  return count;
}

template <class D>
__global__ void nms_round_kernel(Nms3Args a) {
  volatile uint8_t* state = a.state;
  CK_KERNEL_LOOP(k, a.n) {
    if (state[k] != 0) continue;
    const double* gk = a.geom + 8 * k;
    const double* ck = a.points + 3 * k;
    int64_t bc[3];
    for (int j = 0; j < 3; ++j) {
      int64_t b = int64_t(floor((ck[j] - a.bucket_origin[j]) / a.bucket));
      bc[j] = b < 0 ? 0 : b > a.nb[j] - 1 ? a.nb[j] - 1 : b;
    }
    bool pending = false, suppressed = false;
    for (int64_t z = bc[0] - 1; z <= bc[0] + 1 && !suppressed; ++z)
      for (int64_t y = bc[1] - 1; y <= bc[1] + 1 && !suppressed; ++y)
        for (int64_t x = bc[2] - 1; x <= bc[2] + 1 && !suppressed; ++x) {
          if (z < 0 || y < 0 || x < 0 || z >= a.nb[0] || y >= a.nb[1] || x >= a.nb[2]) continue;
          const int64_t b = (z * a.nb[1] + y) * a.nb[2] + x;
          for (int64_t t = a.bucket_start[b]; t < a.bucket_start[b + 1] && !suppressed; ++t) {
            const int64_t i = a.bucket_items[t];
            if (i >= k) continue;
            const uint8_t si = state[i];
            if (si == 2) continue;
            const double* gi = a.geom + 8 * i;
            if (gi[1] > gk[2] || gk[1] > gi[2] || gi[3] > gk[4] || gk[3] > gi[4] || gi[5] > gk[6] || gk[5] > gi[6])
              continue;
            const double limit = star3d::nms_limit(gi[0], gk[0], a.thresh, a.criterion);
            if (double(nms_overlap<D>(a, i, k, limit)) <= limit) continue;
            if (si == 1)
              suppressed = true;
            else
              pending = true;
          }
        }
    if (suppressed) {
      state[k] = 2;
      atomicAdd(a.flags, 1);
    } else if (!pending) {
      state[k] = 1;
      atomicAdd(a.flags, 1);
    }
  }
}

template <class D>
void nms_typed(const Nms3Args& a, void* stream) {
  const unsigned blocks = cuda::blocks_for(a.n, 128);
  auto kp = &nms_prep_kernel<D>;
  CK_LAUNCH(kp, blocks, 128, 0, stream, a);
  cuda::memset_async(a.state, 0, size_t(a.n), stream);
  cuda::memset_async(a.flags, 0, sizeof(int32_t) * 2, stream);
  auto kr = &nms_round_kernel<D>;
  int32_t f[2] = {0, 0};
  bool done = false;
  for (int64_t round = 0; round <= a.n && !done; ++round) {
    CK_LAUNCH(kr, blocks, 128, 0, stream, a);
    copy_to_host3(f, a.flags, sizeof(f), stream);
    done = f[0] >= a.n;
  }
  if (!done) throw RuntimeError("3D NMS: the rounds did not converge (internal error)");
}

inline void nms(const Nms3Args& a, void* stream) {
  cuda::set_device(a.device);
  if (a.dist_dtype == DType::f64)
    nms_typed<double>(a, stream);
  else
    nms_typed<float>(a, stream);
}

}  // namespace star3d_cuda
CK_NS_END
