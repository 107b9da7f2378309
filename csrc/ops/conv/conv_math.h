// Convolution math written once for CPU, CUDA and the emulator: sizes, padding maps, activations, the taps.
#pragma once
#include <cstdint>

#include "core/hd.h"
#include "ops/conv/conv.h"

CK_NS_BEGIN
namespace conv {

// torch's output size: floor((in + lo + hi - d * (k - 1) - 1) / s) + 1 (may be <= 0 for invalid sizes).
CK_HD int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t hi) {
  const int64_t span = in + lo + hi - d * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

// The input position that position i (possibly outside [0, n)) reads under the padding mode, or -1 for a zero.
// reflect mirrors about the edge without repeating it (torch's 'reflect', which needs pad < n); circular wraps.
CK_HD int64_t map_index(int64_t i, int64_t n, PadMode m) {
  if (i >= 0 && i < n) return i;
  switch (m) {
    case PadMode::reflect: {
      if (n == 1) return 0;
      const int64_t period = 2 * (n - 1);
      int64_t r = i % period;
      if (r < 0) r += period;
      return r < n ? r : period - r;
    }
    case PadMode::replicate:
      return i < 0 ? 0 : n - 1;
    case PadMode::circular: {
      int64_t r = i % n;
      return r < 0 ? r + n : r;
    }
    default:
      return -1;
  }
}

// The fused activation (NaN passes through, as torch's relu / leaky_relu).
template <class T>
CK_HD T act_apply(T v, Act a, T slope) {
  if (a == Act::none || !(v < T(0))) return v;
  return a == Act::relu ? T(0) : v * slope;
}

// Gradient through the activation, read from its output y, as torch's autograd computes it: relu's
// threshold_backward(g, y, 0) is y <= 0 ? 0 : g, so a NaN output passes g and an output of exactly 0 stops it
// (an exact 0, even where g is NaN or inf); leaky_relu_backward is z > 0 ? g : g * slope on the input z, and for
// slope >= 0 y > 0 exactly where z > 0 (NaN, 0 and -0 take g * slope).
template <class T>
CK_HD T act_grad(T y, T g, Act a, T slope) {
  if (a == Act::none) return g;
  if (a == Act::relu) return y <= T(0) ? T(0) : g;
  return y > T(0) ? g : g * slope;
}

// The input position tap k of output o reads, before padding: o * s - lo + k * d.
CK_HD int64_t tap_input(int64_t o, int64_t k, int64_t s, int64_t d, int64_t lo) { return o * s - lo + k * d; }

// The output position whose tap k reads input position i, or -1 when none does (the transposed convolution's
// gather, used by the gradient of the input): o = (i + lo - k * d) / s when that divides and 0 <= o < nout.
CK_HD int64_t tap_output(int64_t i, int64_t k, int64_t s, int64_t d, int64_t lo, int64_t nout) {
  const int64_t t = i + lo - k * d;
  if (t < 0 || t % s) return -1;
  const int64_t o = t / s;
  return o < nout ? o : -1;
}

// The (n, c) plane of an input given as channel parts (plane = elements per channel plane, the channel stride
// where the part does not give its own).
template <class T>
CK_HD const T* input_plane(const ConvInput& x, int64_t n, int64_t c, int64_t plane) {
  int p = 0;
  while (p + 1 < x.parts && c >= x.c_begin[p + 1]) ++p;
  return static_cast<const T*>(x.data[p]) + n * x.bs[p] + (c - x.c_begin[p]) * (x.cs[p] ? x.cs[p] : plane);
}

// x at the input position tap (kd, kh, kw) of output (od, oh, ow) reads, padding applied. `plane` is one
// (n, c) spatial plane of the input.
template <class T>
CK_HD T input_tap(const T* plane, const ConvGeom& g, int64_t od, int64_t oh, int64_t ow, int64_t kd, int64_t kh,
                  int64_t kw) {
  const int64_t id = map_index(tap_input(od, kd, g.s[0], g.d[0], g.lo[0]), g.in[0], g.pad);
  const int64_t ih = map_index(tap_input(oh, kh, g.s[1], g.d[1], g.lo[1]), g.in[1], g.pad);
  const int64_t iw = map_index(tap_input(ow, kw, g.s[2], g.d[2], g.lo[2]), g.in[2], g.pad);
  if (id < 0 || ih < 0 || iw < 0) return T(0);
  return plane[(id * g.in[1] + ih) * g.in[2] + iw];
}

// gy at the output that reaches input (id, ih, iw) through tap (kd, kh, kw), or 0 (zero padding only: the
// other modes take the gradient of the padded input and fold it). `plane` is one (n, c) plane of gy, `yplane`
// the forward output's matching plane when an activation is fused (its derivative applies), else null.
template <class T>
CK_HD T output_tap(const T* plane, const T* yplane, Act act, T slope, const ConvGeom& g, int64_t id, int64_t ih,
                   int64_t iw, int64_t kd, int64_t kh, int64_t kw) {
  const int64_t od = tap_output(id, kd, g.s[0], g.d[0], g.lo[0], g.out[0]);
  const int64_t oh = tap_output(ih, kh, g.s[1], g.d[1], g.lo[1], g.out[1]);
  const int64_t ow = tap_output(iw, kw, g.s[2], g.d[2], g.lo[2], g.out[2]);
  if (od < 0 || oh < 0 || ow < 0) return T(0);
  const int64_t i = (od * g.out[1] + oh) * g.out[2] + ow;
  return yplane ? act_grad(yplane[i], plane[i], act, slope) : plane[i];
}

// The j-th padded position (0 <= j <= lo + hi) that may read input i along one dim: j = 0 is i's own position
// i + lo; the rest scan the padding, returning -1 where the padding reads another input. The adjoint of
// padding sums the padded gradient over these positions.
CK_HD int64_t fold_source(int64_t i, int64_t n, int64_t lo, int64_t hi, PadMode m, int64_t j) {
  if (j == 0) return i + lo;
  const int64_t q = j <= lo ? j - 1 : n + lo + (j - lo - 1);
  (void)hi;
  return map_index(q - lo, n, m) == i ? q : -1;
}

}  // namespace conv
CK_NS_END
