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

// Calls f(In()) with In the C++ type of an integer label dtype.
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
    star::raster_range(rr, a.n_rays, a.H, r0, r1);
    star::raster_range(cc, a.n_rays, a.W, c0, c1);
    if (r1 < r0 || c1 < c0) continue;
    const int64_t w = c1 - c0 + 1, total = (r1 - r0 + 1) * w;
    for (int64_t p = threadIdx.x; p < total; p += blockDim.x) {
      const int64_t y = r0 + p / w, x = c0 + p % w;
      if (star::pixel_in_polygon(rr, cc, a.n_rays, double(y), double(x)))
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

inline void nms(const NmsArgs&, void*) { throw RuntimeError("star NMS on CUDA: not built yet"); }

}  // namespace star_cuda
CK_NS_END
