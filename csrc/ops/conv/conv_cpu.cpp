// Convolution CPU kernels: register-blocked direct convolution on NC(D)HW rows (OpenMP over output rows, AVX2
// over output columns, output channels broadcast from packed weights); compiled once per ISA.
//
// The one idea behind forward, grad-input and grad-weight: an output row (n, od, oh) is a sum over "entries"
// (input channel, kd, kh) of a 1D correlation of one input row with kw taps. A register tile holds MO output
// channels x MV vectors of output columns; for every entry and tap it loads MV input vectors and broadcasts MO
// weights (7 loads for 12 FMAs). Input rows are read in place; only tiles that touch padding (or strided taps)
// copy their columns into small per-thread segments first.
#include <algorithm>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "ops/conv/conv.h"
#include "ops/conv/conv_math.h"

#if CK_SIMD_AVX2
#include <immintrin.h>
#endif

CK_NS_BEGIN
namespace {

using simd::Vec;

constexpr int MO = 4;  // output channels per register tile (weights broadcast)
constexpr int MV = 3;  // vectors of output columns per register tile (inputs loaded)

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- weights ------------------------------------------------------------------------------------------------

// wp[ob][e][i] = wf(ob * MO + i, e) for output channels below cout, zero above: the order the micro-kernels
// broadcast them in (MO consecutive values per entry-tap).
template <class T, class F>
std::vector<T> pack_weights(int64_t cout, int64_t E, const F& wf) {
  const int64_t OB = ceil_div(cout, MO);
  std::vector<T> wp(size_t(OB * E * MO), T(0));
  for (int64_t ob = 0; ob < OB; ++ob)
    for (int64_t e = 0; e < E; ++e)
      for (int i = 0; i < MO; ++i) {
        const int64_t o = ob * MO + i;
        if (o < cout) wp[size_t((ob * E + e) * MO + i)] = wf(o, e);
      }
  return wp;
}

// ---- where output rows read their inputs --------------------------------------------------------------------

// Reads of an NC(D)HW input by a convolution with geometry g: entries r = (c, kd, kh) are input rows, taps kw
// are column offsets (direct: stride 1 along w) or gathered columns (expanded: one segment per (r, kw)).
// One instance per thread: it owns the segment buffers.
template <class T>
class GatherRows {
 public:
  using V = Vec<T>;
  GatherRows(const ConvGeom& g, const T* x, int64_t max_cols)
      : g_(g), x_(x), R_(g.Cin * g.k[0] * g.k[1]), KW_(g.k[2]), direct_(g.s[2] == 1),
        span_((g.k[2] - 1) * g.d[2]) {
    seg_w_ = round_up(max_cols + (direct_ ? span_ : 0), V::N) + V::N;
    zero_.assign(size_t(g.in[2] + seg_w_ + V::N), T(0));
    rows_.resize(size_t(R_));
    live_.resize(size_t(R_));
    const int64_t n_seg = direct_ ? R_ : R_ * KW_;
    ptrs_.resize(size_t(n_seg));
    seg_.resize(size_t(n_seg * seg_w_));
  }
  bool direct() const { return direct_; }
  int64_t taps() const { return direct_ ? KW_ : 1; }      // taps per entry in the micro-kernel
  int64_t entries() const { return direct_ ? R_ : R_ * KW_; }
  int64_t tap_step() const { return g_.d[2]; }
  const T* zero() const { return zero_.data(); }

  // Row pointers of output row (n, od, oh); rows in the zero padding point at a zero row.
  void fill(int64_t n, int64_t od, int64_t oh) {
    const ConvGeom& g = g_;
    const int64_t plane = g.in[0] * g.in[1] * g.in[2];
    const T* xn = x_ + n * g.x_bs;
    int64_t r = 0;
    for (int64_t c = 0; c < g.Cin; ++c)
      for (int64_t kd = 0; kd < g.k[0]; ++kd) {
        const int64_t id = conv::map_index(conv::tap_input(od, kd, g.s[0], g.d[0], g.lo[0]), g.in[0], g.pad);
        for (int64_t kh = 0; kh < g.k[1]; ++kh, ++r) {
          const int64_t ih = conv::map_index(conv::tap_input(oh, kh, g.s[1], g.d[1], g.lo[1]), g.in[1], g.pad);
          const bool in = id >= 0 && ih >= 0;
          rows_[r] = in ? xn + c * plane + (id * g.in[1] + ih) * g.in[2] : zero_.data();
          live_[r] = in;
        }
      }
  }

  // Pointers for output columns [ow0, ow0 + L) (L a multiple of the vector width; `valid` of them are real
  // outputs): entry e, tap t reads ptr[e] + col + t * tap_step() + j. Interior tiles read the rows in place;
  // the others copy their columns (padding applied; columns only invalid outputs read are zeroed).
  const T* const* tile(int64_t ow0, int64_t L, int64_t valid, int64_t& col) {
    const ConvGeom& g = g_;
    const int64_t W = g.in[2];
    if (direct_) {
      const int64_t c0 = ow0 - g.lo[2], c1 = ow0 + L - 1 - g.lo[2] + span_;
      if (c0 >= 0 && c1 < W && valid == L) {
        col = c0;
        return rows_.data();
      }
      const int64_t need = std::min(L + span_, valid + span_);
      for (int64_t r = 0; r < R_; ++r) {
        if (!live_[r]) {
          ptrs_[r] = zero_.data();
          continue;
        }
        T* s = seg_.data() + r * seg_w_;
        const T* row = rows_[r];
        int64_t j = 0;
        // Columns inside the row copy straight; the padding maps.
        for (; j < need; ++j) {
          const int64_t iw = c0 + j;
          if (iw >= 0 && iw < W) break;
          const int64_t m = conv::map_index(iw, W, g.pad);
          s[j] = m < 0 ? T(0) : row[m];
        }
        const int64_t stop = std::min(need, W - c0);
        if (j < stop) {
          std::memcpy(s + j, row + c0 + j, sizeof(T) * size_t(stop - j));
          j = stop;
        }
        for (; j < need; ++j) {
          const int64_t m = conv::map_index(c0 + j, W, g.pad);
          s[j] = m < 0 ? T(0) : row[m];
        }
        for (; j < L + span_; ++j) s[j] = T(0);
        ptrs_[r] = s;
      }
      col = 0;
      return ptrs_.data();
    }
    for (int64_t r = 0; r < R_; ++r)
      for (int64_t kw = 0; kw < KW_; ++kw) {
        const int64_t e = r * KW_ + kw;
        if (!live_[r]) {
          ptrs_[e] = zero_.data();
          continue;
        }
        T* s = seg_.data() + e * seg_w_;
        const T* row = rows_[r];
        for (int64_t j = 0; j < L; ++j) {
          const int64_t m =
              j < valid ? conv::map_index(conv::tap_input(ow0 + j, kw, g.s[2], g.d[2], g.lo[2]), W, g.pad) : -1;
          s[j] = m < 0 ? T(0) : row[m];
        }
        ptrs_[e] = s;
      }
    col = 0;
    return ptrs_.data();
  }

 private:
  const ConvGeom& g_;
  const T* x_;
  int64_t R_, KW_;
  bool direct_;
  int64_t span_, seg_w_;
  std::vector<T> zero_, seg_;
  std::vector<const T*> rows_, ptrs_;
  std::vector<char> live_;
};

// The transposed reads of the gradient of the input for strided convolutions: output row (n, id, ih) of gx
// gathers gy over entries (o, kd, kh) and taps kw where the tap divides (conv::tap_output).
template <class T>
class ScatterRows {
 public:
  using V = Vec<T>;
  ScatterRows(const ConvGeom& g, const T* gy, int64_t max_cols)
      : g_(g), gy_(gy), R_(g.Cout * g.k[0] * g.k[1]), KW_(g.k[2]) {
    seg_w_ = round_up(max_cols, V::N) + V::N;
    zero_.assign(size_t(g.in[2] + seg_w_ + V::N), T(0));
    rows_.resize(size_t(R_));
    ptrs_.resize(size_t(R_ * KW_));
    seg_.resize(size_t(R_ * KW_ * seg_w_));
  }
  int64_t taps() const { return 1; }
  int64_t entries() const { return R_ * KW_; }
  int64_t tap_step() const { return 0; }

  void fill(int64_t n, int64_t id, int64_t ih) {
    const ConvGeom& g = g_;
    const int64_t plane = g.out[0] * g.out[1] * g.out[2];
    const T* gn = gy_ + n * g.y_bs;
    int64_t r = 0;
    for (int64_t o = 0; o < g.Cout; ++o)
      for (int64_t kd = 0; kd < g.k[0]; ++kd) {
        const int64_t od = conv::tap_output(id, kd, g.s[0], g.d[0], g.lo[0], g.out[0]);
        for (int64_t kh = 0; kh < g.k[1]; ++kh, ++r) {
          const int64_t oh = conv::tap_output(ih, kh, g.s[1], g.d[1], g.lo[1], g.out[1]);
          rows_[r] = od >= 0 && oh >= 0 ? gn + o * plane + (od * g.out[1] + oh) * g.out[2] : nullptr;
        }
      }
  }

  const T* const* tile(int64_t iw0, int64_t L, int64_t valid, int64_t& col) {
    const ConvGeom& g = g_;
    for (int64_t r = 0; r < R_; ++r)
      for (int64_t kw = 0; kw < KW_; ++kw) {
        const int64_t e = r * KW_ + kw;
        if (!rows_[r]) {
          ptrs_[e] = zero_.data();
          continue;
        }
        T* s = seg_.data() + e * seg_w_;
        for (int64_t j = 0; j < L; ++j) {
          const int64_t ow = j < valid ? conv::tap_output(iw0 + j, kw, g.s[2], g.d[2], g.lo[2], g.out[2]) : -1;
          s[j] = ow < 0 ? T(0) : rows_[r][ow];
        }
        ptrs_[e] = s;
      }
    col = 0;
    return ptrs_.data();
  }

 private:
  const ConvGeom& g_;
  const T* gy_;
  int64_t R_, KW_, seg_w_;
  std::vector<T> zero_, seg_;
  std::vector<const T*> rows_, ptrs_;
};

// ---- the forward micro-kernel: MO output channels x NV column vectors ---------------------------------------

template <class T, int NV, int KW>
void micro_fwd(const T* const* rows, int64_t E, int64_t col, int64_t kw_rt, int64_t step, const T* wp,
               Vec<T> (&out)[MO][MV]) {
  using V = Vec<T>;
  V acc[MO][NV];
  for (int i = 0; i < MO; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = out[i][j];
  const int64_t taps = KW ? KW : kw_rt;
  for (int64_t e = 0; e < E; ++e) {
    const T* p = rows[e] + col;
    for (int64_t t = 0; t < taps; ++t) {
      const T* q = p + t * step;
      V x[NV];
      for (int j = 0; j < NV; ++j) x[j] = V::load(q + j * V::N);
      for (int i = 0; i < MO; ++i) {
        const V w = V::set1(wp[i]);
        for (int j = 0; j < NV; ++j) acc[i][j] = V::fmadd(w, x[j], acc[i][j]);
      }
      wp += MO;
    }
  }
  for (int i = 0; i < MO; ++i)
    for (int j = 0; j < NV; ++j) out[i][j] = acc[i][j];
}

template <class T>
using MicroFwd = void (*)(const T* const*, int64_t, int64_t, int64_t, int64_t, const T*, Vec<T> (&)[MO][MV]);

template <class T, int KW>
MicroFwd<T> micro_fwd_for(int nv) {
  return nv == 1 ? &micro_fwd<T, 1, KW> : nv == 2 ? &micro_fwd<T, 2, KW> : &micro_fwd<T, 3, KW>;
}

template <class T>
MicroFwd<T> pick_micro_fwd(int nv, int64_t taps) {
  if (taps == 1) return micro_fwd_for<T, 1>(nv);
  if (taps == 3) return micro_fwd_for<T, 3>(nv);
  return micro_fwd_for<T, 0>(nv);
}

// What the row driver writes: Cout channels of rows (n, od, oh) with `cols` columns; plane and batch strides.
template <class T>
struct RowOut {
  T* y;
  int64_t cout, rows[3], cols;  // rows: N, D, H of the output side
  int64_t plane, bs;
  const T* bias;                 // per output channel, or null
  Act act;
  T slope;
  bool stream;  // non-temporal stores: outputs far larger than the caches, written once
};

// The row driver shared by forward and grad-input: for each output row, each column tile, each block of MO
// output channels, run the micro-kernel over all entries and store (bias and activation fused).
template <class T, class Src, class MakeSrc>
void run_rows(const RowOut<T>& o, const T* wp, const MakeSrc& make_src) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t TW = MV * N;
  const int64_t n_rows = o.rows[0] * o.rows[1] * o.rows[2];
  const int64_t OB = ceil_div(o.cout, MO);
  // Few rows and many channels: split the channel blocks too, so every thread has work.
  const int64_t nt = num_threads();
  const int64_t oc_split = n_rows >= 4 * nt ? 1 : std::min<int64_t>(OB, ceil_div(4 * nt, std::max<int64_t>(n_rows, 1)));
  const int64_t ob_chunk = ceil_div(OB, oc_split);
  const int64_t items = n_rows * oc_split;
  parallel_for(items, 1, [&](int64_t b, int64_t e) {
    Src src = make_src(TW);
    const int64_t E = src.entries(), taps = src.taps(), step = src.tap_step();
    const MicroFwd<T> micro_full = pick_micro_fwd<T>(MV, taps);
    alignas(32) T tmp[N];
    for (int64_t it = b; it < e; ++it) {
      const int64_t row = it / oc_split, part = it % oc_split;
      const int64_t oh = row % o.rows[2], od = (row / o.rows[2]) % o.rows[1], n = row / (o.rows[2] * o.rows[1]);
      const int64_t ob0 = part * ob_chunk, ob1 = std::min(OB, ob0 + ob_chunk);
      if (ob0 >= ob1) continue;
      src.fill(n, od, oh);
      T* yrow = o.y + n * o.bs + (od * o.rows[2] + oh) * o.cols;
      for (int64_t ow0 = 0; ow0 < o.cols; ow0 += TW) {
        const int64_t valid = std::min(TW, o.cols - ow0);
        const int nv = int(ceil_div(valid, N));
        const int64_t L = nv * N;
        int64_t col;
        const T* const* ptrs = src.tile(ow0, L, valid, col);
        const MicroFwd<T> micro = nv == MV ? micro_full : pick_micro_fwd<T>(nv, taps);
        for (int64_t ob = ob0; ob < ob1; ++ob) {
          V acc[MO][MV];
          for (int i = 0; i < MO; ++i) {
            const int64_t oc = ob * MO + i;
            const V init = V::set1(o.bias && oc < o.cout ? o.bias[oc] : T(0));
            for (int j = 0; j < MV; ++j) acc[i][j] = init;
          }
          micro(ptrs, E, col, taps, step, wp + ob * E * taps * MO, acc);
          const V zero = V::zero(), slope = V::set1(o.slope);
          for (int i = 0; i < MO; ++i) {
            const int64_t oc = ob * MO + i;
            if (oc >= o.cout) break;
            T* dst = yrow + oc * o.plane + ow0;
            for (int j = 0; j < nv; ++j) {
              V v = acc[i][j];
              if (o.act == Act::relu) v = V::blend_negative(v, zero);
              else if (o.act == Act::leaky_relu) v = V::blend_negative(v, v * slope);
              if ((j + 1) * N <= valid) {
                if (o.stream && (reinterpret_cast<uintptr_t>(dst + j * N) % sizeof(V)) == 0)
                  v.store_stream(dst + j * N);
                else
                  v.store(dst + j * N);
              } else {
                v.store(tmp);
                for (int64_t l = 0; l < valid - j * N; ++l) dst[j * N + l] = tmp[l];
              }
            }
          }
        }
      }
    }
#if CK_SIMD_AVX2
    if (o.stream) _mm_sfence();  // streaming stores must be visible before the region ends
#endif
  });
}

template <class T>
void forward_typed(const ConvForwardArgs& a) {
  const ConvGeom& g = a.g;
  const T* w = static_cast<const T*>(a.w);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], E = g.Cin * K;
  const std::vector<T> wp = pack_weights<T>(g.Cout, E, [&](int64_t o, int64_t e) { return w[o * E + e]; });
  RowOut<T> o{static_cast<T*>(a.y), g.Cout, {g.N, g.out[0], g.out[1]}, g.out[2],
              g.out[0] * g.out[1] * g.out[2], g.y_bs, static_cast<const T*>(a.b), a.act, T(a.slope), false};
  // A few taps per output (first layers) make the output write the bound: bypass the caches for it.
  o.stream = E <= 32 && g.N * g.y_bs * int64_t(sizeof(T)) > (int64_t(32) << 20);
  const T* x = static_cast<const T*>(a.x);
  run_rows<T, GatherRows<T>>(o, wp.data(), [&](int64_t cols) { return GatherRows<T>(g, x, cols); });
}

// The gradient of the input. Stride 1: a forward convolution of gy with the flipped, transposed kernel
// (padding d * (k - 1) - lo on each side). Otherwise the transposed gather of ScatterRows.
template <class T>
void grad_input_typed(const ConvGradInputArgs& a) {
  const ConvGeom& g = a.g;
  const T* w = static_cast<const T*>(a.w);
  const T* gy = static_cast<const T*>(a.gy);
  const int64_t K = g.k[0] * g.k[1] * g.k[2];
  RowOut<T> o{static_cast<T*>(a.gx), g.Cin, {g.N, g.in[0], g.in[1]}, g.in[2], g.in[0] * g.in[1] * g.in[2],
              g.x_bs, nullptr, Act::none, T(0), false};
  if (g.s[0] == 1 && g.s[1] == 1 && g.s[2] == 1) {
    ConvGeom t = g;
    t.Cin = g.Cout;
    t.Cout = g.Cin;
    for (int i = 0; i < 3; ++i) {
      t.in[i] = g.out[i];
      t.out[i] = g.in[i];
      t.lo[i] = g.d[i] * (g.k[i] - 1) - g.lo[i];
    }
    t.x_bs = g.y_bs;
    t.y_bs = g.x_bs;
    t.pad = PadMode::zeros;
    // wt[c][o][k'] = w[o][c][K - 1 - k'] (all three kernel dims reversed at once).
    const std::vector<T> wp = pack_weights<T>(g.Cin, g.Cout * K, [&](int64_t c, int64_t e) {
      const int64_t oc = e / K, k = e % K;
      return w[(oc * g.Cin + c) * K + (K - 1 - k)];
    });
    run_rows<T, GatherRows<T>>(o, wp.data(), [&](int64_t cols) { return GatherRows<T>(t, gy, cols); });
    return;
  }
  const std::vector<T> wp = pack_weights<T>(g.Cin, g.Cout * K, [&](int64_t c, int64_t e) {
    const int64_t oc = e / K, k = e % K;
    return w[(oc * g.Cin + c) * K + k];
  });
  run_rows<T, ScatterRows<T>>(o, wp.data(), [&](int64_t cols) { return ScatterRows<T>(g, gy, cols); });
}

// ---- grad weight: MO output channels x 3 (entry, tap) columns, reduced over the pixels of a tile ----------

template <class T>
void micro_gw(int64_t nrows, const T* gt, int64_t row_len, int64_t oc_stride, const T* const* cols,
              int64_t col_stride, Vec<T> (&acc)[MO][3]) {
  using V = Vec<T>;
  V a[MO][3];
  for (int i = 0; i < MO; ++i)
    for (int t = 0; t < 3; ++t) a[i][t] = V::zero();
  for (int64_t j = 0; j < nrows; ++j) {
    const T* gp = gt + j * row_len;
    const T* c0 = cols[j * col_stride];
    const T* c1 = cols[j * col_stride + 1];
    const T* c2 = cols[j * col_stride + 2];
    for (int64_t v = 0; v < row_len; v += V::N) {
      const V x0 = V::load(c0 + v), x1 = V::load(c1 + v), x2 = V::load(c2 + v);
      for (int i = 0; i < MO; ++i) {
        const V gv = V::load(gp + i * oc_stride + v);
        a[i][0] = V::fmadd(gv, x0, a[i][0]);
        a[i][1] = V::fmadd(gv, x1, a[i][1]);
        a[i][2] = V::fmadd(gv, x2, a[i][2]);
      }
    }
  }
  for (int i = 0; i < MO; ++i)
    for (int t = 0; t < 3; ++t) acc[i][t] = a[i][t];
}

template <class T>
void grad_weight_typed(const ConvGradWeightArgs& a) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const ConvGeom& g = a.g;
  const T* gy = static_cast<const T*>(a.gy);
  const T* x = static_cast<const T*>(a.x);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], E = g.Cin * K;
  const int64_t OB = ceil_div(g.Cout, MO), CP = OB * MO;
  const int64_t OW = g.out[2], n_rows = g.N * g.out[0] * g.out[1];
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2];
  // Tiles of a few output rows x up to 256 columns: long enough to amortise the reduction of the
  // accumulators, small enough that the tile's inputs stay in the caches across output-channel blocks.
  const int64_t L = std::min<int64_t>(round_up(OW, N), 256);
  const int64_t n_cc = ceil_div(OW, L);
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(n_rows, 512 / L));
  const int64_t n_rb = ceil_div(n_rows, RB);
  const int64_t tiles = n_rb * n_cc;
  const int64_t EP = round_up(E, 3);  // entry-taps padded to whole groups of three (padding reads zeros)
  const int T_ = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), tiles)));
  std::vector<std::vector<T>> parts(static_cast<size_t>(T_)), bparts(static_cast<size_t>(T_));
  parallel_for(T_, 0, [&](int64_t t0, int64_t t1) {
    for (int64_t slot = t0; slot < t1; ++slot) {
      std::vector<T>& part = parts[size_t(slot)];
      std::vector<T>& bpart = bparts[size_t(slot)];
      part.assign(size_t(OB * EP * MO), T(0));
      bpart.assign(size_t(CP), T(0));
      std::vector<GatherRows<T>> srcs;
      srcs.reserve(size_t(RB));
      for (int64_t j = 0; j < RB; ++j) srcs.emplace_back(g, x, L);
      std::vector<T> gt(size_t(CP * RB * L));
      std::vector<const T*> cols(size_t(RB * EP));
      const int64_t tb = tiles * slot / T_, te = tiles * (slot + 1) / T_;
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t rb = tile / n_cc, ow0 = (tile % n_cc) * L;
        const int64_t r0 = rb * RB, nr = std::min(RB, n_rows - r0);
        const int64_t valid = std::min(L, OW - ow0);
        // The tile of gy, zero-padded to whole vectors and to MO-channel blocks: [oc][row][col].
        for (int64_t oc = 0; oc < CP; ++oc)
          for (int64_t j = 0; j < nr; ++j) {
            T* dst = gt.data() + (oc * RB + j) * L;
            if (oc < g.Cout) {
              const int64_t row = r0 + j, oh = row % g.out[1], od = (row / g.out[1]) % g.out[0];
              const int64_t n = row / (g.out[1] * g.out[0]);
              const T* srow = gy + n * g.y_bs + oc * out_plane + (od * g.out[1] + oh) * OW + ow0;
              std::memcpy(dst, srow, sizeof(T) * size_t(valid));
              std::fill(dst + valid, dst + L, T(0));
              V s = V::zero();
              for (int64_t v = 0; v < L; v += N) s = s + V::load(dst + v);
              bpart[size_t(oc)] += s.hsum();
            } else {
              std::fill(dst, dst + L, T(0));
            }
          }
        // Column pointers for every (row, entry, tap).
        for (int64_t j = 0; j < nr; ++j) {
          const int64_t row = r0 + j, oh = row % g.out[1], od = (row / g.out[1]) % g.out[0];
          const int64_t n = row / (g.out[1] * g.out[0]);
          GatherRows<T>& src = srcs[size_t(j)];
          src.fill(n, od, oh);
          int64_t col;
          const T* const* p = src.tile(ow0, L, valid, col);
          const T** c = cols.data() + j * EP;
          if (src.direct()) {
            const int64_t R = src.entries(), KW = src.taps(), step = src.tap_step();
            for (int64_t r = 0; r < R; ++r)
              for (int64_t t = 0; t < KW; ++t) c[r * KW + t] = p[r] + col + t * step;
          } else {
            for (int64_t e = 0; e < E; ++e) c[e] = p[e] + col;
          }
          for (int64_t e = E; e < EP; ++e) c[e] = src.zero();
        }
        for (int64_t ob = 0; ob < OB; ++ob) {
          const T* gtile = gt.data() + ob * MO * RB * L;
          T* pb = part.data() + ob * EP * MO;
          for (int64_t c = 0; c < EP; c += 3) {
            V acc[MO][3];
            micro_gw<T>(nr, gtile, L, RB * L, cols.data() + c, EP, acc);
            for (int t = 0; t < 3; ++t)
              for (int i = 0; i < MO; ++i) pb[(c + t) * MO + i] += acc[i][t].hsum();
          }
        }
      }
    }
  });
  T* gw = static_cast<T*>(a.gw);
  T* gb = static_cast<T*>(a.gb);
  for (int64_t oc = 0; oc < g.Cout; ++oc) {
    const int64_t ob = oc / MO, i = oc % MO;
    for (int64_t e = 0; e < E; ++e) {
      T s = T(0);
      for (int t = 0; t < T_; ++t) s += parts[size_t(t)][size_t((ob * EP + e) * MO + i)];
      gw[oc * E + e] = s;
    }
    if (gb) {
      T s = T(0);
      for (int t = 0; t < T_; ++t) s += bparts[size_t(t)][size_t(oc)];
      gb[oc] = s;
    }
  }
}

// ---- elementwise helpers of the backward --------------------------------------------------------------------

template <class T>
void act_grad_typed(const ConvActGradArgs& a) {
  const T* gy = static_cast<const T*>(a.gy);
  const T* y = static_cast<const T*>(a.y);
  T* gz = static_cast<T*>(a.gz);
  const T slope = T(a.slope);
  const Act act = a.act;
  parallel_for(a.n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) gz[i] = conv::act_grad(y[i], gy[i], act, slope);
  });
}

// The adjoint of padding on the CPU: copy each input's own position, then add every padded position onto the
// input it reads (serial within a plane, so the sum order is fixed).
template <class T>
void fold_typed(const ConvFoldArgs& a) {
  const T* gp = static_cast<const T*>(a.gp);
  T* gx = static_cast<T*>(a.gx);
  int64_t P[3], n_in = 1, n_p = 1;
  for (int i = 0; i < 3; ++i) {
    P[i] = a.in[i] + a.lo[i] + a.hi[i];
    n_in *= a.in[i];
    n_p *= P[i];
  }
  parallel_for(a.planes, 1, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const T* src = gp + pl * n_p;
      T* dst = gx + pl * n_in;
      for (int64_t i0 = 0; i0 < a.in[0]; ++i0)
        for (int64_t i1 = 0; i1 < a.in[1]; ++i1)
          std::memcpy(dst + (i0 * a.in[1] + i1) * a.in[2],
                      src + ((i0 + a.lo[0]) * P[1] + i1 + a.lo[1]) * P[2] + a.lo[2], sizeof(T) * size_t(a.in[2]));
      for (int64_t q0 = 0; q0 < P[0]; ++q0) {
        const int64_t m0 = conv::map_index(q0 - a.lo[0], a.in[0], a.pad);
        const bool in0 = q0 >= a.lo[0] && q0 < a.lo[0] + a.in[0];
        for (int64_t q1 = 0; q1 < P[1]; ++q1) {
          const int64_t m1 = conv::map_index(q1 - a.lo[1], a.in[1], a.pad);
          const bool in1 = q1 >= a.lo[1] && q1 < a.lo[1] + a.in[1];
          const T* srow = src + (q0 * P[1] + q1) * P[2];
          T* drow = dst + (m0 * a.in[1] + m1) * a.in[2];
          for (int64_t q2 = 0; q2 < P[2]; ++q2) {
            const bool in2 = q2 >= a.lo[2] && q2 < a.lo[2] + a.in[2];
            if (in0 && in1 && in2) {
              q2 = a.lo[2] + a.in[2] - 1;  // the interior was copied above
              continue;
            }
            drow[conv::map_index(q2 - a.lo[2], a.in[2], a.pad)] += srow[q2];
          }
        }
      }
    }
  });
}

}  // namespace

void conv_forward_cpu(const ConvForwardArgs& a) { CK_DISPATCH_FLOAT(a.dtype, forward_typed<scalar_t>(a)); }
void conv_grad_input_cpu(const ConvGradInputArgs& a) { CK_DISPATCH_FLOAT(a.dtype, grad_input_typed<scalar_t>(a)); }
void conv_grad_weight_cpu(const ConvGradWeightArgs& a) {
  CK_DISPATCH_FLOAT(a.dtype, grad_weight_typed<scalar_t>(a));
}
void conv_act_grad_cpu(const ConvActGradArgs& a) { CK_DISPATCH_FLOAT(a.dtype, act_grad_typed<scalar_t>(a)); }
void conv_fold_cpu(const ConvFoldArgs& a) { CK_DISPATCH_FLOAT(a.dtype, fold_typed<scalar_t>(a)); }

CK_NS_END
