// Max-pooling CPU kernels (OpenMP over rows, AVX2 over outputs or channels); compiled once per ISA.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "ops/pool/pool.h"
#include "ops/pool/pool_math.h"

CK_NS_BEGIN
namespace {

using simd::Scalar;
using simd::Vec;

// Rows of a few tens of KiB per task keep OpenMP overhead negligible.
int64_t grain_rows(int64_t row_elems) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_elems)); }

// The (kd, kh) pairs of one output row's window that fall inside the input: a row pointer each, and the
// local index of the pair's first column.
template <class T>
struct WindowRows {
  const T* row[256];
  int code[256];  // kd * KH + kh
  int n = 0;

  void build(const T* plane, const PoolGeom& g, int64_t od, int64_t oh) {
    n = 0;
    for (int64_t kd = 0; kd < g.k[0]; ++kd) {
      int64_t id = od * g.s[0] - g.p[0] + kd * g.d[0];
      if (id < 0 || id >= g.in[0]) continue;
      for (int64_t kh = 0; kh < g.k[1]; ++kh) {
        int64_t ih = oh * g.s[1] - g.p[1] + kh * g.d[1];
        if (ih < 0 || ih >= g.in[1]) continue;
        row[n] = plane + (id * g.in[1] + ih) * g.in[2];
        code[n] = int(kd * g.k[1] + kh);
        ++n;
      }
    }
  }
};

// Output columns [lo, hi) whose whole window row lies inside [0, W).
void interior_cols(const PoolGeom& g, int64_t& lo, int64_t& hi) {
  const int64_t s = g.s[2], p = g.p[2], span = (g.k[2] - 1) * g.d[2];
  lo = std::min<int64_t>(g.out[2], (p + s - 1) / s);
  int64_t last = g.in[2] - 1 - span + p;  // ow * s <= last
  hi = last < 0 ? 0 : std::min<int64_t>(g.out[2], last / s + 1);
  if (hi < lo) hi = lo;
}

template <class T, PoolIndex Mode>
void store_index(void* idx, int64_t o, const PoolGeom& g, int64_t od, int64_t oh, int64_t ow, int local) {
  if (Mode == PoolIndex::local) {
    static_cast<uint8_t*>(idx)[o] = uint8_t(local);
  } else if (Mode == PoolIndex::flat) {
    int64_t kw = local % g.k[2], kh = (local / g.k[2]) % g.k[1], kd = local / (g.k[2] * g.k[1]);
    int64_t id = od * g.s[0] - g.p[0] + kd * g.d[0], ih = oh * g.s[1] - g.p[1] + kh * g.d[1];
    int64_t iw = ow * g.s[2] - g.p[2] + kw * g.d[2];
    static_cast<int64_t*>(idx)[o] = (id * g.in[1] + ih) * g.in[2] + iw;
  }
}

// Lanes j = 0..N-1 of q[j * S], reading nothing outside [q, q + (N-1) * S] except, for S == 2 at q == row
// start, q[2N - 1] (the caller checks the row is that long).
template <int S, class V, class T>
V load_taps(const T* q, const T* row, int64_t s) {
  if (S == 1) return V::load(q);
  if (S == 2) return q > row ? V::load_odd(q - 1) : V::load_even(q);
  return V::load_strided(q, s);
}

// Outputs [ow0, ow1) of one NCDHW row through the vector taps; S is the compile-time stride (0 = runtime).
// The last block is shifted left to end at ow1: recomputing a few outputs is cheaper than a scalar tail.
// Rows of a few hundred elements defeat the hardware prefetcher (two interleaved input streams per output row
// within one page); asking for the data 8 KiB ahead brings 256-wide planes from 17 to 26 GB/s here.
constexpr int64_t kPrefetchBytes = 8192;

template <class T, PoolIndex Mode, int S, class V>
void forward_row_vec(const WindowRows<T>& rows, const PoolGeom& g, int64_t ow0, int64_t ow1, T* out, void* idx,
                     int64_t obase, int64_t od, int64_t oh) {
  const int64_t s = S ? S : g.s[2], KW = g.k[2];
  const V init_idx = V::set1(T(rows.code[0] * KW));
  for (int64_t ow = ow0; ow < ow1; ow += V::N) {
    if (ow + V::N > ow1) ow = ow1 - V::N;
    V m = V::set1(-T(INFINITY)), k = init_idx;
    for (int r = 0; r < rows.n; ++r) {
      const T* src = rows.row[r] + ow * s - g.p[2];
      __builtin_prefetch(reinterpret_cast<const char*>(src) + kPrefetchBytes);
      for (int64_t kw = 0; kw < KW; ++kw) {
        V x = load_taps<S, V>(src + kw * g.d[2], rows.row[r], s);
        if (Mode == PoolIndex::none)
          V::take_max(m, x);
        else
          V::take_max(m, k, x, V::set1(T(rows.code[r] * KW + kw)));
      }
    }
    m.store(out + ow);
    if (Mode == PoolIndex::local) {
      k.store_u8(static_cast<uint8_t*>(idx) + obase + ow);
    } else if (Mode == PoolIndex::flat) {
      T lanes[V::N];
      k.store(lanes);
      for (int j = 0; j < V::N; ++j) store_index<T, Mode>(idx, obase + ow + j, g, od, oh, ow + j, int(lanes[j]));
    }
  }
}

template <class T, PoolIndex Mode>
void forward_nchw(const PoolForwardArgs& a) {
  const PoolGeom& g = a.g;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t plane_in = g.in[0] * g.in[1] * g.in[2], OW = g.out[2];
  const int64_t rows = g.N * g.C * g.out[0] * g.out[1];
  const int64_t s = g.s[2];
  int64_t lo, hi;
  interior_cols(g, lo, hi);
  using V = Vec<T>;
  // Vector blocks need N outputs; at stride 2 the block at the row start also reads tap 2N - 1.
  if (hi - lo < V::N || (s == 2 && lo * 2 - g.p[2] == 0 && 2 * V::N > g.in[2])) hi = lo;
  // Vector lanes carry the window position as a float: exact below 2^24.
  const bool vec = g.k[0] * g.k[1] <= 256 && g.k[0] * g.k[1] * g.k[2] < (int64_t(1) << 24);
  parallel_for(rows, grain_rows(OW), [&](int64_t r0, int64_t r1) {
    auto* wr = new WindowRows<T>;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t oh = r % g.out[1], od = (r / g.out[1]) % g.out[0], nc = r / (g.out[1] * g.out[0]);
      const T* plane = x + nc * plane_in;
      const int64_t obase = r * OW;
      T* orow = out + obase;
      bool vec_row = false;
      if (vec && hi > lo) {
        wr->build(plane, g, od, oh);
        vec_row = wr->n > 0;
        if (vec_row) {
          if (s == 1)
            forward_row_vec<T, Mode, 1, V>(*wr, g, lo, hi, orow, a.idx, obase, od, oh);
          else if (s == 2)
            forward_row_vec<T, Mode, 2, V>(*wr, g, lo, hi, orow, a.idx, obase, od, oh);
          else
            forward_row_vec<T, Mode, 0, V>(*wr, g, lo, hi, orow, a.idx, obase, od, oh);
        }
      }
      // Borders, tails and windows the vector path does not cover: the shared per-window math.
      for (int64_t ow = 0; ow < OW; ++ow) {
        if (vec_row && ow == lo) ow = hi;
        if (ow >= OW) break;
        pool::WindowMax<T> m = pool::window_max(plane, g.in[1] * g.in[2], g.in[2], int64_t(1), g, od, oh, ow);
        orow[ow] = m.val;
        if (Mode == PoolIndex::local) static_cast<uint8_t*>(a.idx)[obase + ow] = uint8_t(m.local);
        if (Mode == PoolIndex::flat) static_cast<int64_t*>(a.idx)[obase + ow] = m.flat;
      }
    }
    delete wr;
  });
}

// Channels-last: one output pixel per step, vectors over channels.
template <class T, PoolIndex Mode>
void forward_nhwc(const PoolForwardArgs& a) {
  const PoolGeom& g = a.g;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t C = g.C, pixels = g.N * g.out[0] * g.out[1] * g.out[2];
  // Taps inside the input, at most: per dim, the kernel or the input positions a dilated window can hit (a
  // kernel of 2^20 with padding 2^19 on an 8x8 input has 64, not 2^40).
  int64_t vol = 1;
  for (int i = 0; i < 3; ++i) vol *= std::min(g.k[i], (g.in[i] + g.d[i] - 1) / g.d[i]);
  parallel_for(pixels, grain_rows(C), [&](int64_t p0, int64_t p1) {
    std::vector<const T*> taps(vol);
    std::vector<int> code(vol);
    for (int64_t px = p0; px < p1; ++px) {
      const int64_t ow = px % g.out[2], oh = (px / g.out[2]) % g.out[1], od = (px / (g.out[2] * g.out[1])) % g.out[0];
      const int64_t n = px / (g.out[2] * g.out[1] * g.out[0]);
      const T* img = x + n * g.in[0] * g.in[1] * g.in[2] * C;
      int nt = 0;
      int first_local = 0;
      // The window's in-range positions per dim: [first, end) in steps of d (pool_math.h's window_max bounds).
      const int64_t opos[3] = {od, oh, ow};
      int64_t start[3], first[3], end[3];
      for (int i = 0; i < 3; ++i) {
        start[i] = opos[i] * g.s[i] - g.p[i];
        first[i] = pool::first_valid(start[i], g.d[i]);
        end[i] = std::min(g.in[i], start[i] + (g.k[i] - 1) * g.d[i] + 1);
      }
      for (int64_t id = first[0]; id < end[0]; id += g.d[0]) {
        const int64_t kd = (id - start[0]) / g.d[0];
        for (int64_t ih = first[1]; ih < end[1]; ih += g.d[1]) {
          const int64_t kh = (ih - start[1]) / g.d[1];
          for (int64_t iw = first[2]; iw < end[2]; iw += g.d[2]) {
            const int64_t kw = (iw - start[2]) / g.d[2];
            int64_t flat = (id * g.in[1] + ih) * g.in[2] + iw;
            // window positions fit an int only for local indices (<= 256 taps); the other modes do not read them
            const int local = Mode == PoolIndex::local ? int((kd * g.k[1] + kh) * g.k[2] + kw) : 0;
            if (nt == 0) first_local = local;
            taps[nt] = img + flat * C;
            code[nt] = Mode == PoolIndex::flat ? int(nt) : local;
            ++nt;
          }
        }
      }
      // Flat indices can pass 2^24 (not exact in float lanes), so in flat mode lanes carry the tap number.
      std::vector<int64_t> flat_of;
      if (Mode == PoolIndex::flat) {
        flat_of.resize(nt);
        for (int t = 0; t < nt; ++t) flat_of[t] = (taps[t] - img) / C;
      }
      T* o = out + px * C;
      if (nt == 0) {  // a window that lies wholly in padding/dilation gaps: -inf and torch's first position
        pool::WindowMax<T> w = pool::window_max(img, g.in[1] * g.in[2] * C, g.in[2] * C, C, g, od, oh, ow);
        for (int64_t c = 0; c < C; ++c) {
          o[c] = w.val;
          store_index<T, Mode>(a.idx, px * C + c, g, od, oh, ow, w.local);
        }
        continue;
      }
      auto run = [&](auto tag, int64_t c) {
        using V = decltype(tag);
        V m = V::set1(-T(INFINITY)), k = V::set1(T(Mode == PoolIndex::flat ? 0 : first_local));
        for (int t = 0; t < nt; ++t) {
          V v = V::load(taps[t] + c);
          if (Mode == PoolIndex::none)
            V::take_max(m, v);
          else
            V::take_max(m, k, v, V::set1(T(code[t])));
        }
        m.store(o + c);
        if (Mode == PoolIndex::local) k.store_u8(static_cast<uint8_t*>(a.idx) + px * C + c);
        if (Mode == PoolIndex::flat) {
          T lanes[V::N];
          k.store(lanes);
          for (int j = 0; j < V::N; ++j) static_cast<int64_t*>(a.idx)[px * C + c + j] = flat_of[int(lanes[j])];
        }
      };
      int64_t c = 0;
      for (; c + Vec<T>::N <= C; c += Vec<T>::N) run(Vec<T>{}, c);
      for (; c < C; ++c) run(Scalar<T>{}, c);
    }
  });
}

// Per-plane lookup from a local window index to its (kd, kh) code and its column offset.
struct LocalTables {
  int code[256];
  int64_t col[256];
  LocalTables(const PoolGeom& g) {
    for (int l = 0; l < 256; ++l) {
      code[l] = int(l / g.k[2]);
      col[l] = (l % g.k[2]) * g.d[2];
    }
  }
};

// Calls f(od, oh, code) for each output row whose window covers input row (id, ih), in output order; code is
// kd * KH + kh, the input row's place inside that window. Returns how many there were.
template <class F>
int covering_rows(const PoolGeom& g, int64_t id, int64_t ih, const F& f) {
  int64_t dlo, dhi, hlo, hhi;
  pool::window_range(id, g.k[0], g.s[0], g.p[0], g.d[0], g.out[0], dlo, dhi);
  pool::window_range(ih, g.k[1], g.s[1], g.p[1], g.d[1], g.out[1], hlo, hhi);
  int n = 0;
  for (int64_t od = dlo; od <= dhi; ++od) {
    if ((id + g.p[0] - od * g.s[0]) % g.d[0]) continue;
    const int64_t kd = (id + g.p[0] - od * g.s[0]) / g.d[0];
    for (int64_t oh = hlo; oh <= hhi; ++oh) {
      if ((ih + g.p[1] - oh * g.s[1]) % g.d[1]) continue;
      f(od, oh, int(kd * g.k[1] + (ih + g.p[1] - oh * g.s[1]) / g.d[1]));
      ++n;
    }
  }
  return n;
}

// The U-Net case (2-wide windows at stride 2, no padding): output ow owns columns 2ow and 2ow + 1 of each row
// its window covers. Writes outputs [0, n) (n <= IW / 2) and returns how many it did; `accumulate` when other
// output rows reach this input row too (else it stores, and may recompute an overlapping last block).
template <class T>
int64_t s2k2_row(const uint8_t* li, const T* go, T* row, int64_t n, int code, bool accumulate, int64_t& hits) {
  using V = Vec<T>;
  if (n < V::N) return 0;
  const V c0 = V::set1(T(code * 2)), c1 = V::set1(T(code * 2 + 1));
  for (int64_t ow = 0; ow < n; ow += V::N) {
    int64_t fresh = V::N;  // lanes not already done by the previous block
    if (ow + V::N > n) {
      if (accumulate) return ow;
      fresh = n - ow;
      ow = n - V::N;
    }
    const V l = V::load_u8(li + ow), gv = V::load(go + ow);
    const V even = V::select_eq(l, c0, gv), odd = V::select_eq(l, c1, gv);
    if (fresh == V::N) {
      hits += V::count_eq(l, c0) + V::count_eq(l, c1);
    } else {
      for (int64_t j = V::N - fresh; j < V::N; ++j) hits += (li[ow + j] >> 1) == code;
    }
    T* dst = row + 2 * ow;
    if (!accumulate) {
      V::store_interleaved(dst, even, odd);
    } else {
      T tmp[2 * V::N];
      V::store_interleaved(tmp, even, odd);
      (V::load(dst) + V::load(tmp)).store(dst);
      (V::load(dst + V::N) + V::load(tmp + V::N)).store(dst + V::N);
    }
  }
  return n;
}

// Backward in NCDHW: each task owns whole grad_input rows. A row is zeroed, then receives the gradient of
// every output row whose window covers it (in output order, as torch's scatter adds), so each grad_input
// element is written while the row is hot in cache and threads never share a row.
// Every output's gradient must land exactly once; `matched` counts landings so that indices pointing outside
// their window are reported instead of silently dropped.
template <class T, PoolIndex Mode>
void backward_nchw(const PoolBackwardArgs& a, std::atomic<int64_t>& matched) {
  const PoolGeom& g = a.g;
  const T* gout = static_cast<const T*>(a.grad_out);
  T* gin = static_cast<T*>(a.grad_in);
  const int64_t IW = g.in[2], OW = g.out[2];
  const int64_t rows = g.N * g.C * g.in[0] * g.in[1];
  const LocalTables tab(g);
  const bool s2k2 = Mode == PoolIndex::local && g.s[2] == 2 && g.k[2] == 2 && g.d[2] == 1 && g.p[2] == 0;
  parallel_for(rows, grain_rows(IW), [&](int64_t r0, int64_t r1) {
    int64_t hits = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ih = r % g.in[1], id = (r / g.in[1]) % g.in[0], nc = r / (g.in[1] * g.in[0]);
      T* row = gin + r * IW;
      std::memset(row, 0, sizeof(T) * IW);
      const bool shared_row = covering_rows(g, id, ih, [](int64_t, int64_t, int) {}) > 1;
      covering_rows(g, id, ih, [&](int64_t od, int64_t oh, int code) {
        const int64_t o0 = ((nc * g.out[0] + od) * g.out[1] + oh) * OW;
        const T* go = gout + o0;
        int64_t ow = 0;
        if (s2k2)
          ow = s2k2_row(static_cast<const uint8_t*>(a.idx) + o0, go, row, std::min(OW, IW / 2), code, shared_row, hits);
        for (; ow < OW; ++ow) {
          int64_t iw;
          if (Mode == PoolIndex::local) {
            const int l = static_cast<const uint8_t*>(a.idx)[o0 + ow];
            if (tab.code[l] != code) continue;
            iw = ow * g.s[2] - g.p[2] + tab.col[l];
          } else {
            const int64_t f = static_cast<const int64_t*>(a.idx)[o0 + ow];
            if (f < 0 || f / IW != id * g.in[1] + ih) continue;
            iw = f % IW;
          }
          if (iw < 0 || iw >= IW) continue;
          row[iw] += go[ow];
          ++hits;
        }
      });
    }
    matched += hits;
  });
}

// Backward in channels-last: same row ownership, rows are (n, id, ih) with W * C elements.
template <class T, PoolIndex Mode>
void backward_nhwc(const PoolBackwardArgs& a, std::atomic<int64_t>& matched) {
  const PoolGeom& g = a.g;
  const T* gout = static_cast<const T*>(a.grad_out);
  T* gin = static_cast<T*>(a.grad_in);
  const int64_t C = g.C, IW = g.in[2], OW = g.out[2];
  const int64_t rows = g.N * g.in[0] * g.in[1];
  const LocalTables tab(g);
  parallel_for(rows, grain_rows(IW * C), [&](int64_t r0, int64_t r1) {
    int64_t hits = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ih = r % g.in[1], id = (r / g.in[1]) % g.in[0], n = r / (g.in[1] * g.in[0]);
      T* row = gin + r * IW * C;
      std::memset(row, 0, sizeof(T) * IW * C);
      covering_rows(g, id, ih, [&](int64_t od, int64_t oh, int code) {
        const int64_t o0 = ((n * g.out[0] + od) * g.out[1] + oh) * OW * C;
        for (int64_t ow = 0; ow < OW; ++ow)
          for (int64_t c = 0; c < C; ++c) {
            const int64_t o = o0 + ow * C + c;
            int64_t iw;
            if (Mode == PoolIndex::local) {
              const int l = static_cast<const uint8_t*>(a.idx)[o];
              if (tab.code[l] != code) continue;
              iw = ow * g.s[2] - g.p[2] + tab.col[l];
            } else {
              const int64_t f = static_cast<const int64_t*>(a.idx)[o];
              if (f < 0 || f / IW != id * g.in[1] + ih) continue;
              iw = f % IW;
            }
            if (iw < 0 || iw >= IW) continue;
            row[iw * C + c] += gout[o];
            ++hits;
          }
      });
    }
    matched += hits;
  });
}

template <class T>
void forward_typed(const PoolForwardArgs& a) {
  switch (a.mode) {
    case PoolIndex::none:
      return a.g.channels_last ? forward_nhwc<T, PoolIndex::none>(a) : forward_nchw<T, PoolIndex::none>(a);
    case PoolIndex::local:
      return a.g.channels_last ? forward_nhwc<T, PoolIndex::local>(a) : forward_nchw<T, PoolIndex::local>(a);
    case PoolIndex::flat:
      return a.g.channels_last ? forward_nhwc<T, PoolIndex::flat>(a) : forward_nchw<T, PoolIndex::flat>(a);
  }
}

template <class T>
void backward_typed(const PoolBackwardArgs& a, std::atomic<int64_t>& matched) {
  if (a.mode == PoolIndex::local)
    a.g.channels_last ? backward_nhwc<T, PoolIndex::local>(a, matched) : backward_nchw<T, PoolIndex::local>(a, matched);
  else
    a.g.channels_last ? backward_nhwc<T, PoolIndex::flat>(a, matched) : backward_nchw<T, PoolIndex::flat>(a, matched);
}

}  // namespace

void max_pool_forward_cpu(const PoolForwardArgs& a) { CK_DISPATCH_FLOAT(a.dtype, forward_typed<scalar_t>(a)); }

void max_pool_backward_cpu(const PoolBackwardArgs& a) {
  std::atomic<int64_t> matched{0};
  CK_DISPATCH_FLOAT(a.dtype, backward_typed<scalar_t>(a, matched));
  const PoolGeom& g = a.g;
  // A window that lies wholly in the padding (possible with dilation) has no input element: its output is -inf,
  // as torch's, and its gradient goes nowhere, so it is not expected to match. A window is real exactly when it
  // holds an input position in every dim.
  int64_t real = g.N * g.C;
  for (int dim = 0; dim < 3; ++dim) {
    int64_t n = 0;
    for (int64_t o = 0; o < g.out[dim]; ++o)
      for (int64_t t = 0; t < g.k[dim]; ++t) {
        const int64_t i = o * g.s[dim] - g.p[dim] + t * g.d[dim];
        if (i >= 0 && i < g.in[dim]) {
          ++n;
          break;
        }
      }
    real *= n;
  }
  CK_CHECK_VALUE(matched.load() == real,
                 "indices: found an index outside its pooling window (indices must come from the "
                 "forward pass with the same parameters)");
}

CK_NS_END
