// Max-pooling math written once for CPU, CUDA and the emulator: output sizes, one window's max, one input's grad.
#pragma once
#include <cmath>
#include <cstdint>

#include "core/hd.h"
#include "ops/pool/pool.h"

CK_NS_BEGIN
namespace pool {

CK_HD int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// torch's pooling_output_shape, including the ceil_mode rule that the last window must start inside the
// input or the left padding.
CK_HD int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  int64_t o = floor_div(in + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0), s) + 1;
  if (ceil_mode && (o - 1) * s >= in + p) --o;
  return o;
}

// First in-range position of the window starting at `start` (may be negative under padding).
CK_HD int64_t first_valid(int64_t start, int64_t d) { return start >= 0 ? start : start + ((-start + d - 1) / d) * d; }

template <class T>
CK_HD bool is_nan(T v) {
  return v != v;
}

struct Coord {
  int64_t n, c, d, h, w;
};

// Coordinates of element i of a dense (N, C, D, H, W) tensor with spatial size sz, stored NCDHW or NDHWC.
CK_HD Coord unravel(int64_t i, int64_t C, const int64_t* sz, bool channels_last) {
  Coord r;
  if (channels_last) {
    r.c = i % C;
    i /= C;
  }
  r.w = i % sz[2];
  i /= sz[2];
  r.h = i % sz[1];
  i /= sz[1];
  r.d = i % sz[0];
  i /= sz[0];
  if (!channels_last) {
    r.c = i % C;
    i /= C;
  }
  r.n = i;
  return r;
}

// Offset of the (n, c) slice of such a tensor, and its spatial element strides.
CK_HD int64_t slice_offset(int64_t n, int64_t c, int64_t C, const int64_t* sz, bool channels_last, int64_t& sd,
                           int64_t& sh, int64_t& sw) {
  const int64_t plane = sz[0] * sz[1] * sz[2];
  sw = channels_last ? C : 1;
  sh = sz[2] * sw;
  sd = sz[1] * sh;
  return channels_last ? n * plane * C + c : (n * C + c) * plane;
}

template <class T>
struct WindowMax {
  T val;
  int64_t flat;  // (id * H + ih) * W + iw, torch's index
  int local;     // (kd * KH + kh) * KW + kw, position inside the window
};

// The max over one pooling window with torch's rule: scan in (kd, kh, kw) order, take a value that is
// greater than the running max or NaN. So ties keep the first, NaN wins (the last NaN), and an all -inf
// window reports its first in-range position. `plane` is the (n, c) slice; sd, sh, sw are element strides.
template <class T>
CK_HD WindowMax<T> window_max(const T* plane, int64_t sd, int64_t sh, int64_t sw, const PoolGeom& g, int64_t od,
                              int64_t oh, int64_t ow) {
  const int64_t o[3] = {od, oh, ow};
  int64_t start[3], first[3], end[3];
  for (int i = 0; i < 3; ++i) {
    start[i] = o[i] * g.s[i] - g.p[i];
    first[i] = first_valid(start[i], g.d[i]);
    int64_t stop = start[i] + (g.k[i] - 1) * g.d[i] + 1;
    end[i] = stop < g.in[i] ? stop : g.in[i];
  }
  WindowMax<T> r;
  r.val = -T(INFINITY);
  r.flat = (first[0] * g.in[1] + first[1]) * g.in[2] + first[2];
  r.local = int((((first[0] - start[0]) / g.d[0]) * g.k[1] + (first[1] - start[1]) / g.d[1]) * g.k[2] +
                (first[2] - start[2]) / g.d[2]);
  for (int64_t id = first[0]; id < end[0]; id += g.d[0])
    for (int64_t ih = first[1]; ih < end[1]; ih += g.d[1])
      for (int64_t iw = first[2]; iw < end[2]; iw += g.d[2]) {
        T v = plane[id * sd + ih * sh + iw * sw];
        if (v > r.val || is_nan(v)) {
          r.val = v;
          r.flat = (id * g.in[1] + ih) * g.in[2] + iw;
          r.local =
              int((((id - start[0]) / g.d[0]) * g.k[1] + (ih - start[1]) / g.d[1]) * g.k[2] + (iw - start[2]) / g.d[2]);
        }
      }
  return r;
}

// Outputs [lo, hi] along one dim whose window can contain input position i (hi < lo when none).
CK_HD void window_range(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, int64_t out, int64_t& lo, int64_t& hi) {
  int64_t a = i + p - (k - 1) * d;
  lo = a <= 0 ? 0 : (a + s - 1) / s;
  hi = (i + p) / s;
  if (hi > out - 1) hi = out - 1;
}

// Does the index stored for output (od, oh, ow) point at input (id, ih, iw)?
template <class I>
CK_HD bool index_hits(I stored, PoolIndex mode, const PoolGeom& g, int64_t id, int64_t ih, int64_t iw, int64_t od,
                      int64_t oh, int64_t ow) {
  if (mode == PoolIndex::flat) return int64_t(stored) == (id * g.in[1] + ih) * g.in[2] + iw;
  int64_t kd = (id + g.p[0] - od * g.s[0]) / g.d[0];
  int64_t kh = (ih + g.p[1] - oh * g.s[1]) / g.d[1];
  int64_t kw = (iw + g.p[2] - ow * g.s[2]) / g.d[2];
  return int64_t(stored) == (kd * g.k[1] + kh) * g.k[2] + kw;
}

// The gradient reaching input (id, ih, iw): the sum of grad_out over the windows whose max it was, in output
// order (the order torch's scatter adds them). og/oi are the (n, c) slices of grad_out and the indices.
template <class T, class I>
CK_HD T input_grad(const T* og, const I* oi, int64_t osd, int64_t osh, int64_t osw, PoolIndex mode, const PoolGeom& g,
                   int64_t id, int64_t ih, int64_t iw) {
  const int64_t i[3] = {id, ih, iw};
  int64_t lo[3], hi[3];
  for (int a = 0; a < 3; ++a) window_range(i[a], g.k[a], g.s[a], g.p[a], g.d[a], g.out[a], lo[a], hi[a]);
  T acc = T(0);
  for (int64_t od = lo[0]; od <= hi[0]; ++od) {
    if ((id + g.p[0] - od * g.s[0]) % g.d[0]) continue;
    for (int64_t oh = lo[1]; oh <= hi[1]; ++oh) {
      if ((ih + g.p[1] - oh * g.s[1]) % g.d[1]) continue;
      for (int64_t ow = lo[2]; ow <= hi[2]; ++ow) {
        if ((iw + g.p[2] - ow * g.s[2]) % g.d[2]) continue;
        int64_t o = od * osd + oh * osh + ow * osw;
        if (index_hits(oi[o], mode, g, id, ih, iw, od, oh, ow)) acc += og[o];
      }
    }
  }
  return acc;
}

}  // namespace pool
CK_NS_END
