// Convolution CPU kernels: register-blocked direct convolution on NC(D)HW rows (OpenMP over output rows, AVX2
// over output columns, output channels broadcast from packed weights); compiled once per ISA.
//
// The one idea behind forward, grad-input and grad-weight: an output row (n, od, oh) is a sum over "entries"
// (input channel, kd, kh) of a 1D correlation of one input row with kw taps. A register tile holds MO output
// channels x MV vectors of output columns; for every entry and tap it loads MV input vectors and broadcasts MO
// weights (7 loads for 12 FMAs).
//
// Input rows are not read in place: rows of one plane are 4 KiB apart and planes 4 MiB apart at 1024^2, so the
// rows a tile needs alias to the same cache sets, and a tile jumping between ~100 rows defeats the prefetchers
// (measured: ~30% of peak in place). Each thread copies the input rows it needs, once, into a small panel
// (padding applied, strided columns de-interleaved into phases so every tap is a contiguous run), keeps them
// while consecutive output rows reuse them, and runs the micro-kernels from there (50-80% of peak).
#include <algorithm>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <type_traits>
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

// ---- scratch buffers ----------------------------------------------------------------------------------------

// Blocks of the large per-call buffers (panels of input rows, Winograd workspaces and partial sums, transformed
// weights), kept when a call ends for the next one: glibc hands big blocks back to the kernel, and fresh ones
// page-faulted on every call (a fifth of a 256-channel weight gradient's time). Best fit among kept blocks at most
// twice the size asked for; at most kBytes kept, the oldest dropped first.
class Recycler {
 public:
  struct Block {
    std::unique_ptr<char[]> p;
    size_t bytes = 0;
  };
  static Recycler& instance() {
    static Recycler* r = new Recycler;  // never destroyed: buffers may still come back during interpreter exit
    return *r;
  }
  Block take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = kept_.size();
      for (size_t i = 0; i < kept_.size(); ++i) {
        const size_t b = kept_[i].bytes;
        if (b >= bytes && b <= 2 * bytes && (best == kept_.size() || b < kept_[best].bytes)) best = i;
      }
      if (best < kept_.size()) {
        Block r = std::move(kept_[best]);
        kept_.erase(kept_.begin() + std::ptrdiff_t(best));
        total_ -= r.bytes;
        return r;
      }
    }
    return Block{std::unique_ptr<char[]>(new char[bytes]), bytes};  // uninitialised: every user writes first
  }
  void give(Block&& b) {
    if (!b.p || b.bytes > kBytes) return;
    std::lock_guard<std::mutex> lock(mu_);
    while (total_ + b.bytes > kBytes) {
      total_ -= kept_.front().bytes;
      kept_.erase(kept_.begin());
    }
    total_ += b.bytes;
    kept_.push_back(std::move(b));
  }

 private:
  static constexpr size_t kBytes = size_t(64) << 20;
  std::mutex mu_;
  std::vector<Block> kept_;  // oldest first
  size_t total_ = 0;
};

// n values of T (trivial), uninitialised, whose block goes back to the Recycler when it is destroyed.
template <class T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(size_t n) : b_(Recycler::instance().take(std::max<size_t>(1, n) * sizeof(T))), n_(n) {}
  Scratch(size_t n, T v) : Scratch(n) { std::fill(data(), data() + n_, v); }
  Scratch(Scratch&& o) noexcept : b_(std::move(o.b_)), n_(o.n_) { o.n_ = 0; }
  Scratch& operator=(Scratch&& o) noexcept {
    if (this != &o) {
      Recycler::instance().give(std::move(b_));
      b_ = std::move(o.b_);
      n_ = o.n_;
      o.n_ = 0;
    }
    return *this;
  }
  ~Scratch() { Recycler::instance().give(std::move(b_)); }
  T* data() { return reinterpret_cast<T*>(b_.p.get()); }
  const T* data() const { return reinterpret_cast<const T*>(b_.p.get()); }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return data()[i]; }
  const T& operator[](size_t i) const { return data()[i]; }

 private:
  Recycler::Block b_;
  size_t n_ = 0;
};

constexpr int MO = 4;        // output channels per register tile (weights broadcast)
constexpr int MV = 3;        // vectors of output columns per register tile (inputs loaded)

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// conv::act_grad lane-wise, for act != none: relu zeroes g where y <= 0 (a NaN y passes g), leaky ReLU scales g
// where y is not > 0 (NaN included).
template <class V>
V act_grad_v(V y, V g, Act act, V slope) {
  return act == Act::relu ? V::zero_where_le0(y, g) : V::select_positive(y, g, g * slope);
}

// dst[i] = gy[i] * act'(y[i]), i < n: a fused activation's gradient applied where a kernel copies gy anyway; a
// plain copy without an activation. GCC left the scalar form unvectorised, and the staging cost the input gradient
// 40% at 32 channels.
template <class T>
void copy_grad(T* dst, const T* gy, const T* y, int64_t n, const ActGrad& a) {
  using V = Vec<T>;
  if (a.act == Act::none) {
    std::memcpy(dst, gy, sizeof(T) * size_t(n));
    return;
  }
  const T slope = T(a.slope);
  const V vs = V::set1(slope);
  int64_t i = 0;
  for (; i + V::N <= n; i += V::N) act_grad_v(V::load(y + i), V::load(gy + i), a.act, vs).store(dst + i);
  for (; i < n; ++i) dst[i] = conv::act_grad(y[i], gy[i], a.act, slope);
}

// |v| as its bit pattern with the sign cleared: orders like the magnitude for finite values, with +inf above
// them and NaN above +inf, so one integer max finds both the largest value and any non-finite one.
inline uint32_t abs_bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u & 0x7fffffffu;
}
inline float from_bits(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
template <class T>
uint32_t max_abs_bits(const T* p, int64_t n) {
  uint32_t m = 0;
  int64_t i = 0;
#if CK_SIMD_AVX2
  if constexpr (std::is_same<T, float>::value) {
    const __m256i mask = _mm256_set1_epi32(0x7fffffff);
    __m256i a = _mm256_setzero_si256(), b = a;
    for (; i + 16 <= n; i += 16) {
      a = _mm256_max_epi32(a, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), mask));
      b = _mm256_max_epi32(b, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)), mask));
    }
    alignas(32) uint32_t l[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(l), _mm256_max_epi32(a, b));
    for (int k = 0; k < 8; ++k) m = std::max(m, l[k]);
  }
#endif
  if constexpr (std::is_same<T, float>::value)
    for (; i < n; ++i) m = std::max(m, abs_bits(p[i]));
  return m;
}

// The y element laid out like gy's element at p (gy's base gy0).
template <class T>
const T* act_at(const ActGrad& a, const T* gy0, const T* p) {
  return a.y ? static_cast<const T*>(a.y) + (p - gy0) : nullptr;
}

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

// The panel of input rows a thread works from, for a convolution with geometry g over a chunk of `cw` output
// columns and blocks of up to `rb` consecutive output rows. A panel row holds the chunk's input columns with
// padding applied, split into s phases (column t goes to phase t % s at t / s) so that tap kw of outputs
// j, j+1, ... is the contiguous run at offset tap_offset(kw) + j. Rows are cached by input position: moving
// to the next output row copies only the rows not already held.
template <class T>
class PanelRows {
 public:
  using V = Vec<T>;
  PanelRows(const ConvGeom& g, const ConvInput& x, int64_t cw, int64_t rb)
      : g_(g), x_(x), cw_(cw), rb_(rb), KD_(g.k[0]), KH_(g.k[1]), KW_(g.k[2]), S_(g.s[2]) {
    const int64_t span = (KW_ - 1) * g.d[2];
    cwin_ = (cw_ - 1) * S_ + span + 1;
    // Every tap of every (vector-rounded) output of the chunk stays inside its phase, for the widest loads too.
    phase_ = round_up(ceil_div(cwin_, S_) + simd::Wide<T>::N, V::N);
    row_len_ = phase_ * S_;
    if ((row_len_ * int64_t(sizeof(T))) % 4096 == 0) row_len_ += 16;  // rows a page apart alias in the caches
    off_.resize(size_t(KW_));
    for (int64_t kw = 0; kw < KW_; ++kw) off_[size_t(kw)] = ((kw * g.d[2]) % S_) * phase_ + (kw * g.d[2]) / S_;
    // Distinct input rows a block of rb output rows can need, per channel: the block spans at most
    // ceil(rb / OH) + 1 (n, od) planes, each needing KD depths x the rows its output rows reach.
    const int64_t rows_in_plane = std::min(rb_, g.out[1]);
    const int64_t hspan = std::min(rows_in_plane * KH_, (rows_in_plane - 1) * g.s[1] + (KH_ - 1) * g.d[1] + 1);
    const int64_t planes = rb_ <= 1 ? 1 : ceil_div(rb_, g.out[1]) + 1;
    cap_ = std::min(rb_ * KD_ * KH_, planes * KD_ * hspan);
    try {  // the one per-thread buffer that grows with the geometry: say how large it was
      data_ = Scratch<T>(size_t(g.Cin * cap_ * row_len_), T(0));
    } catch (const std::bad_alloc&) {
      throw MemoryError(str("conv: could not allocate a ", g.Cin * cap_ * row_len_ * int64_t(sizeof(T)),
                            "-byte panel of input rows (one per thread)"));
    }
    zero_.assign(size_t(row_len_), T(0));
    keys_.assign(size_t(cap_), -2);
    rows_.resize(size_t(rb_ * g.Cin * KD_ * KH_));
    need_.resize(size_t(rb_ * KD_ * KH_));
    slot_of_.resize(size_t(rb_ * KD_ * KH_));
    fills_.resize(size_t(rb_ * KD_ * KH_));
    used_.resize(size_t(cap_));
  }
  // Keep, per held row, the largest |value| over its channels (as abs_bits orders it: NaN above inf above every
  // finite value): the Winograd paths decide from it which tiles the transforms could spoil (wino::Limits).
  void track_magnitude() {
    track_ = true;
    mag_.assign(size_t(cap_), 0u);
  }
  // The largest |value| (abs_bits) over the rows of block row j (every channel and kernel row; padding rows of
  // zero padding count 0). Needs track_magnitude().
  uint32_t magnitude(int64_t j) const {
    uint32_t m = 0;
    const int64_t per_row = KD_ * KH_;
    for (int64_t k = 0; k < per_row; ++k) {
      const int64_t sl = slot_of_[size_t(j * per_row + k)];
      if (sl >= 0) m = std::max(m, mag_[size_t(sl)]);
    }
    return m;
  }
  int64_t entries() const { return g_.Cin * KD_ * KH_; }
  int64_t taps() const { return KW_; }
  const int64_t* tap_offsets() const { return off_.data(); }
  const T* zero() const { return zero_.data(); }

  // Output columns [ow0, ow0 + valid) form the chunk; input columns only invalid outputs would read are zero.
  void set_chunk(int64_t ow0, int64_t valid) {
    const int64_t span = (KW_ - 1) * g_.d[2];
    in0_ = ow0 * S_ - g_.lo[2];
    in_valid_ = (valid - 1) * S_ + span + 1;
    std::fill(keys_.begin(), keys_.end(), -2);
  }

  // Makes the rows of output rows (n[j], od[j], oh[j]), j < nr, available through rows(j).
  void fill(const int64_t* n, const int64_t* od, const int64_t* oh, int64_t nr) {
    const ConvGeom& g = g_;
    const int64_t per_row = KD_ * KH_;
    for (int64_t j = 0; j < nr; ++j)
      for (int64_t kd = 0; kd < KD_; ++kd) {
        const int64_t id = conv::map_index(conv::tap_input(od[j], kd, g.s[0], g.d[0], g.lo[0]), g.in[0], g.pad);
        for (int64_t kh = 0; kh < KH_; ++kh) {
          const int64_t ih = conv::map_index(conv::tap_input(oh[j], kh, g.s[1], g.d[1], g.lo[1]), g.in[1], g.pad);
          need_[size_t(j * per_row + kd * KH_ + kh)] = id < 0 || ih < 0 ? -1 : (n[j] * g.in[0] + id) * g.in[1] + ih;
        }
      }
    // Slots are assigned identically in every channel, so decide once: keep held rows, fill the others into
    // slots this block does not use.
    std::fill(used_.begin(), used_.end(), char(0));
    const int64_t total = nr * per_row;
    for (int64_t u = 0; u < total; ++u) {
      slot_of_[size_t(u)] = -1;
      if (need_[size_t(u)] < 0) continue;
      for (int64_t sl = 0; sl < cap_; ++sl)
        if (keys_[size_t(sl)] == need_[size_t(u)]) {
          slot_of_[size_t(u)] = sl;
          used_[size_t(sl)] = 1;
          break;
        }
    }
    int64_t free_slot = 0, nfill = 0;
    for (int64_t u = 0; u < total; ++u) {
      if (need_[size_t(u)] < 0 || slot_of_[size_t(u)] >= 0) continue;
      for (int64_t v = 0; v < u; ++v)  // the same row needed twice in this block (padding maps, or kh overlap)
        if (need_[size_t(v)] == need_[size_t(u)]) {
          slot_of_[size_t(u)] = slot_of_[size_t(v)];
          break;
        }
      if (slot_of_[size_t(u)] >= 0) continue;
      while (free_slot < cap_ && used_[size_t(free_slot)]) ++free_slot;
      CK_CHECK(free_slot < cap_, "conv panel: row cache overflow (internal error)");
      used_[size_t(free_slot)] = 1;
      slot_of_[size_t(u)] = free_slot;
      keys_[size_t(free_slot)] = need_[size_t(u)];
      fills_[size_t(nfill++)] = free_slot;
      if (track_) mag_[size_t(free_slot)] = 0;
    }
    // Channel by channel, each channel's new rows in order: a block's rows of one plane are one run of memory the
    // hardware prefetchers follow. (Row by row, every copy jumped to another plane: the Winograd weight gradient
    // spent a quarter of its time filling its panels.)
    const int64_t plane = g.in[0] * g.in[1] * g.in[2];
    for (int64_t c = 0; c < g.Cin; ++c)
      for (int64_t k = 0; k < nfill; ++k) {
        const int64_t sl = fills_[size_t(k)], key = keys_[size_t(sl)], ih = key % g.in[1];
        const int64_t id = (key / g.in[1]) % g.in[0], nn = key / (g.in[1] * g.in[0]);
        const T* src = conv::input_plane<T>(x_, nn, c, plane) + (id * g.in[1] + ih) * g.in[2];
        T* dst = slot_ptr(c, sl);
        uint32_t m = 0;
        if (x_.act.y) {
          const GradLoad ld{act_at(x_.act, static_cast<const T*>(x_.data[0]), src) - src, x_.act.act,
                            T(x_.act.act == Act::relu ? 0.0 : x_.act.slope)};
          if (track_)
            m = copy_row_tracked(ld, src, dst);
          else
            copy_row(ld, src, dst);
        } else {
          if (track_)
            m = copy_row_tracked(PlainLoad{}, src, dst);
          else
            copy_row(PlainLoad{}, src, dst);
        }
        if (track_) mag_[size_t(sl)] = std::max(mag_[size_t(sl)], m);
      }
    for (int64_t j = 0; j < nr; ++j)
      for (int64_t c = 0; c < g.Cin; ++c)
        for (int64_t k = 0; k < per_row; ++k) {
          const int64_t sl = slot_of_[size_t(j * per_row + k)];
          rows_[size_t((j * g.Cin + c) * per_row + k)] = sl < 0 ? zero_.data() : slot_ptr(c, sl);
        }
  }
  // Entry pointers (entry e = (c, kd, kh)) of block row j.
  const T* const* rows(int64_t j) const { return rows_.data() + j * g_.Cin * KD_ * KH_; }

  // Queues prefetches of the input rows output row (n, od, oh) will copy that the panel does not hold. The
  // copies are bursts of short rows from planes far apart, which the hardware prefetchers pick up too late
  // (measured: ~9% of the time in memmove); spreading the prefetches over the micro-kernel calls of the
  // current row hides that latency.
  void queue_next(int64_t n, int64_t od, int64_t oh, bool append = false) {
    const ConvGeom& g = g_;
    if (!append) clear_queue();
    const int64_t plane = g.in[0] * g.in[1] * g.in[2];
    const int64_t c0 = std::max<int64_t>(0, std::min(in0_, g.in[2])), c1 = std::max<int64_t>(0, std::min(in0_ + in_valid_, g.in[2]));
    if (c1 <= c0) return;
    for (int64_t kd = 0; kd < KD_; ++kd) {
      const int64_t id = conv::map_index(conv::tap_input(od, kd, g.s[0], g.d[0], g.lo[0]), g.in[0], g.pad);
      for (int64_t kh = 0; kh < KH_; ++kh) {
        const int64_t ih = conv::map_index(conv::tap_input(oh, kh, g.s[1], g.d[1], g.lo[1]), g.in[1], g.pad);
        if (id < 0 || ih < 0) continue;
        const int64_t key = (n * g.in[0] + id) * g.in[1] + ih;
        if (std::find(keys_.begin(), keys_.end(), key) != keys_.end()) continue;
        const int64_t at = (id * g.in[1] + ih) * g.in[2] + c0;
        for (int64_t c = 0; c < g.Cin; ++c) {
          const T* row = conv::input_plane<T>(x_, n, c, plane) + at;
          queue(row, (c1 - c0) * int64_t(sizeof(T)));
          // A gradient input is staged through the activation's derivative: its y rows are read as well.
          if (x_.act.y) queue(act_at(x_.act, static_cast<const T*>(x_.data[0]), row), (c1 - c0) * int64_t(sizeof(T)));
        }
      }
    }
  }
  void clear_queue() {
    pf_.clear();
    pf_pos_ = pf_line_ = 0;
  }
  void queue(const void* p, int64_t bytes) {
    pf_.push_back({static_cast<const char*>(p), (bytes + 63) / 64});
  }
  int64_t queued_lines() const {
    int64_t n = 0;
    for (const auto& q : pf_) n += q.second;
    return n;
  }
  // Issues up to k queued line prefetches.
  void pump(int k) {
    for (; k > 0 && pf_pos_ < int64_t(pf_.size()); --k) {
      __builtin_prefetch(pf_[size_t(pf_pos_)].first + pf_line_ * 64, 0, 2);
      if (++pf_line_ == pf_[size_t(pf_pos_)].second) {
        pf_line_ = 0;
        ++pf_pos_;
      }
    }
  }

 private:
  T* slot_ptr(int64_t c, int64_t sl) { return data_.data() + (c * cap_ + sl) * row_len_; }

  // How copy_row reads the source: as it is, or (a gradient input) as gy * act'(y), y at a fixed offset from gy;
  // the derivative is applied as the row is copied (conv::act_grad).
  struct PlainLoad {
    V load(const T* p) const { return V::load(p); }
    V load_even(const T* p) const { return V::load_even(p); }
    V load_odd(const T* p) const { return V::load_odd(p); }
    T get(const T* p) const { return *p; }
#if CK_SIMD_AVX2
    __m256 load_first(const float* p, __m256i lanes) const { return _mm256_maskload_ps(p, lanes); }
#endif
  };
  struct GradLoad {
    std::ptrdiff_t dy;  // y - gy
    Act act;
    T slope;
    V grad(V g, V y) const { return act_grad_v(y, g, act, V::set1(slope)); }
    V load(const T* p) const { return grad(V::load(p), V::load(p + dy)); }
    V load_even(const T* p) const { return grad(V::load_even(p), V::load_even(p + dy)); }
    V load_odd(const T* p) const { return grad(V::load_odd(p), V::load_odd(p + dy)); }
    T get(const T* p) const { return conv::act_grad(p[dy], *p, act, slope); }
#if CK_SIMD_AVX2
    // The lanes of p set in `lanes` (maskload reads no other), zero elsewhere (act' of a zero gradient is zero).
    __m256 load_first(const float* p, __m256i lanes) const {
      return grad(V{_mm256_maskload_ps(p, lanes)}, V{_mm256_maskload_ps(p + dy, lanes)}).v;
    }
#endif
  };

  template <class L>
  void copy_row(const L& ld, const T* src, T* dst) const {
    const int64_t W = g_.in[2];
    constexpr bool plain = std::is_same<L, PlainLoad>::value;
    if (S_ == 1) {
      int64_t t = 0;
      const int64_t mid0 = std::min(cwin_, std::max<int64_t>(0, -in0_));
      const int64_t mid1 = std::min({cwin_, in_valid_, std::max<int64_t>(0, W - in0_)});
      for (; t < mid0; ++t) dst[t] = at(ld, src, t);
      if (plain && mid1 > t) {
        std::memcpy(dst + t, src + in0_ + t, sizeof(T) * size_t(mid1 - t));
        t = mid1;
      }
      for (; t + V::N <= mid1; t += V::N) ld.load(src + in0_ + t).store(dst + t);
      for (; t < cwin_; ++t) dst[t] = at(ld, src, t);
      return;
    }
    int64_t t = 0;
#if CK_SIMD_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (S_ == 4) {  // Winograd's tile columns: 32 columns -> 8 in each of the 4 phases, in registers
        const int64_t W = g_.in[2];
        const int64_t mid0 = round_up(std::min(cwin_, std::max<int64_t>(0, -in0_)), 4);
        const int64_t mid1 = std::min({cwin_, in_valid_, std::max<int64_t>(0, W - in0_)});
        for (; t < mid0; ++t) dst[(t % 4) * phase_ + t / 4] = at(ld, src, t);
        for (; t + 32 <= mid1; t += 32) deinterleave4(ld, src + in0_ + t, dst + t / 4, phase_);
        if (t < mid1) t = deinterleave4_tail(ld, src + in0_ + t, mid1 - t, dst + t / 4, phase_, nullptr, t);
      }
    }
#endif
    if (S_ == 2) {  // stride 2: even and odd columns through the vector deinterleave (the scalar loop cost 3x)
      const int64_t W = g_.in[2];
      const int64_t mid0 = round_up(std::min(cwin_, std::max<int64_t>(0, -in0_)), 2);
      const int64_t mid1 = std::min({cwin_, in_valid_, std::max<int64_t>(0, W - in0_)});
      for (; t < mid0; ++t) dst[(t % 2) * phase_ + t / 2] = at(ld, src, t);
      for (; t + 2 * V::N <= mid1; t += 2 * V::N) {
        ld.load_even(src + in0_ + t).store(dst + t / 2);
        ld.load_odd(src + in0_ + t).store(dst + phase_ + t / 2);
      }
    }
    // The rest one column at a time; counters instead of t % S, t / S (a runtime division per column).
    for (int64_t ph = t % S_, q = t / S_; t < cwin_; ++t) {
      dst[ph * phase_ + q] = at(ld, src, t);
      if (++ph == S_) {
        ph = 0;
        ++q;
      }
    }
  }
  // copy_row, returning the largest |value| written (abs_bits). The Winograd panels (stride 4) fold it into the
  // copy (values already in registers; a separate pass over the rows cost the 3D forward ~4%); others scan after.
  template <class L>
  uint32_t copy_row_tracked(const L& ld, const T* src, T* dst) const {
#if CK_SIMD_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (S_ == 4) {
        const int64_t W = g_.in[2];
        const int64_t mid0 = round_up(std::min(cwin_, std::max<int64_t>(0, -in0_)), 4);
        const int64_t mid1 = std::min({cwin_, in_valid_, std::max<int64_t>(0, W - in0_)});
        uint32_t m = 0;
        int64_t t = 0;
        for (; t < mid0; ++t) {
          const float v = at(ld, src, t);
          dst[(t % 4) * phase_ + t / 4] = v;
          m = std::max(m, abs_bits(v));
        }
        __m256i acc = _mm256_setzero_si256();
        for (; t + 32 <= mid1; t += 32) deinterleave4(ld, src + in0_ + t, dst + t / 4, phase_, &acc);
        if (t < mid1) t = deinterleave4_tail(ld, src + in0_ + t, mid1 - t, dst + t / 4, phase_, &acc, t);
        for (int64_t ph = t % 4, q = t / 4; t < cwin_; ++t) {
          const float v = at(ld, src, t);
          dst[ph * phase_ + q] = v;
          m = std::max(m, abs_bits(v));
          if (++ph == 4) {
            ph = 0;
            ++q;
          }
        }
        alignas(32) uint32_t l[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(l), acc);
        for (int k = 0; k < 8; ++k) m = std::max(m, l[k]);
        return m;
      }
    }
#endif
    copy_row(ld, src, dst);
    return max_abs_bits(dst, row_len_);  // positions no copy writes stay zero
  }
#if CK_SIMD_AVX2
  // p[k * stride + q] = s[4 q + k] for q < 8, k < 4 (s read through the loader); with acc, also the lane-wise max
  // of their abs_bits.
  template <class L>
  static void deinterleave4(const L& ld, const float* s, float* p, int64_t stride, __m256i* acc = nullptr) {
    deinterleave4(ld.load(s).v, ld.load(s + 8).v, ld.load(s + 16).v, ld.load(s + 24).v, p, stride, acc);
  }
  // The same for the first n < 32 values of s, zeros after them: the row's last columns, which went one at a time
  // through at() (a fifth of the columns of a 64-tile row, and with an activation's derivative ~half the copy's
  // time). Returns t + n, the column the scalar loop goes on from (it overwrites the zeros past n it needs).
  template <class L>
  static int64_t deinterleave4_tail(const L& ld, const float* s, int64_t n, float* p, int64_t stride, __m256i* acc,
                                    int64_t t) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 v[4];
    for (int k = 0; k < 4; ++k)
      v[k] = ld.load_first(s + 8 * k, _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n) - 8 * k), lane));
    deinterleave4(v[0], v[1], v[2], v[3], p, stride, acc);
    return t + n;
  }
  static void deinterleave4(__m256 v0, __m256 v1, __m256 v2, __m256 v3, float* p, int64_t stride, __m256i* acc) {
    if (acc) {
      const __m256i mask = _mm256_set1_epi32(0x7fffffff);
      const __m256i m01 = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v0), mask),
                                           _mm256_and_si256(_mm256_castps_si256(v1), mask));
      const __m256i m23 = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v2), mask),
                                           _mm256_and_si256(_mm256_castps_si256(v3), mask));
      *acc = _mm256_max_epi32(*acc, _mm256_max_epi32(m01, m23));
    }
    // Lanes: u0 = s0..3 | s16..19, u1 = s4..7 | s20..23, u2 = s8..11 | s24..27, u3 = s12..15 | s28..31.
    const __m256 u0 = _mm256_permute2f128_ps(v0, v2, 0x20), u1 = _mm256_permute2f128_ps(v0, v2, 0x31);
    const __m256 u2 = _mm256_permute2f128_ps(v1, v3, 0x20), u3 = _mm256_permute2f128_ps(v1, v3, 0x31);
    // 4x4 transpose within each 128-bit lane.
    const __m256 a = _mm256_unpacklo_ps(u0, u1), b = _mm256_unpackhi_ps(u0, u1);
    const __m256 c = _mm256_unpacklo_ps(u2, u3), d = _mm256_unpackhi_ps(u2, u3);
    _mm256_storeu_ps(p, _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(a), _mm256_castps_pd(c))));
    _mm256_storeu_ps(p + stride, _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(a), _mm256_castps_pd(c))));
    _mm256_storeu_ps(p + 2 * stride, _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(b), _mm256_castps_pd(d))));
    _mm256_storeu_ps(p + 3 * stride, _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(b), _mm256_castps_pd(d))));
  }
#endif
  template <class L>
  T at(const L& ld, const T* src, int64_t t) const {
    if (t >= in_valid_) return T(0);
    const int64_t m = conv::map_index(in0_ + t, g_.in[2], g_.pad);
    return m < 0 ? T(0) : ld.get(src + m);
  }

  bool track_ = false;
  std::vector<uint32_t> mag_;  // per slot, with track_
  const ConvGeom& g_;
  ConvInput x_;
  int64_t cw_, rb_, KD_, KH_, KW_, S_;
  int64_t cwin_ = 0, phase_ = 0, row_len_ = 0, cap_ = 0, in0_ = 0, in_valid_ = 0;
  std::vector<int64_t> off_;  // panel offset of each tap kw
  Scratch<T> data_;
  std::vector<T> zero_;
  std::vector<int64_t> keys_, need_, slot_of_, fills_;  // fills_: the slots fill() copies, in row order
  std::vector<char> used_;
  std::vector<const T*> rows_;
  std::vector<std::pair<const char*, int64_t>> pf_;  // (address, lines) of rows to prefetch
  int64_t pf_pos_ = 0, pf_line_ = 0;
};

// ---- the forward micro-kernel: MO output channels x NV column vectors ---------------------------------------

// acc[i][j] += sum over the E input rows and their taps of w * x: the loop both micro-kernels below run, on
// vectors V (Vec, or the Winograd GEMMs' simd::Wide).
template <class V, int NV, int KW, class T>
__attribute__((always_inline)) inline void accumulate_fwd(const T* const* rows, int64_t E, int64_t col,
                                                          int64_t kw_rt, const int64_t* offs, const T* wp,
                                                          V (&acc)[MO][NV]) {
  const int64_t taps = KW ? KW : kw_rt;
  int64_t off[KW ? KW : 1];
  if (KW)
    for (int t = 0; t < KW; ++t) off[t] = offs[t] + col;
  for (int64_t e = 0; e < E; ++e) {
    const T* p = rows[e];
    // One tap at a time: 12 accumulators + NV inputs + 1 broadcast weight fill the 16 ymm registers exactly;
    // unrolling the taps makes GCC spill an accumulator (measured: 80% -> 9x% of peak in this loop).
#pragma GCC unroll 1
    for (int64_t t = 0; t < taps; ++t) {
      const T* q = p + (KW ? off[t] : offs[t] + col);
      V x[NV];
      for (int j = 0; j < NV; ++j) x[j] = V::load(q + j * V::N);
      for (int i = 0; i < MO; ++i) {
        const V w = V::set1(wp[i]);
        for (int j = 0; j < NV; ++j) acc[i][j] = V::fmadd(w, x[j], acc[i][j]);
      }
      wp += MO;
    }
  }
}

template <class T, int NV, int KW, class V = Vec<T>>
void micro_fwd(const T* const* rows, int64_t E, int64_t col, int64_t kw_rt, const int64_t* offs, const T* wp,
               V (&out)[MO][MV]) {
  V acc[MO][NV];
  for (int i = 0; i < MO; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = out[i][j];
  accumulate_fwd<V, NV, KW>(rows, E, col, kw_rt, offs, wp, acc);
  for (int i = 0; i < MO; ++i)
    for (int j = 0; j < NV; ++j) out[i][j] = acc[i][j];
}

// A full tile (MV vectors, all MO channels real) with the epilogue fused: accumulators start at the bias,
// get the activation and go straight to the output rows. For first layers (9 taps per output) the separate
// epilogue's round trip of 12 accumulators through memory was ~30% of the work.
template <class T, int KW, int ACT>
void tile_fwd(const T* const* rows, int64_t E, int64_t col, int64_t kw_rt, const int64_t* offs, const T* wp,
              const T* bias, T slope_s, T* dst, int64_t plane) {
  using V = Vec<T>;
  V acc[MO][MV];
  for (int i = 0; i < MO; ++i) {
    const V b = V::set1(bias ? bias[i] : T(0));
    for (int j = 0; j < MV; ++j) acc[i][j] = b;
  }
  accumulate_fwd<V, MV, KW>(rows, E, col, kw_rt, offs, wp, acc);
  const V zero = V::zero(), slope = V::set1(slope_s);
  for (int i = 0; i < MO; ++i)
    for (int j = 0; j < MV; ++j) {
      V v = acc[i][j];
      if (ACT == int(Act::relu)) v = V::blend_negative(v, zero);
      if (ACT == int(Act::leaky_relu)) v = V::blend_negative(v, v * slope);
      v.store(dst + i * plane + j * V::N);
    }
}

template <class T>
using TileFwd = void (*)(const T* const*, int64_t, int64_t, int64_t, const int64_t*, const T*, const T*, T, T*, int64_t);

template <class T, int KW>
TileFwd<T> tile_fwd_for(Act act) {
  return act == Act::relu ? &tile_fwd<T, KW, 1> : act == Act::leaky_relu ? &tile_fwd<T, KW, 2> : &tile_fwd<T, KW, 0>;
}

template <class T>
TileFwd<T> pick_tile_fwd(int64_t taps, Act act) {
  return taps == 1   ? tile_fwd_for<T, 1>(act)
         : taps == 2 ? tile_fwd_for<T, 2>(act)
         : taps == 3 ? tile_fwd_for<T, 3>(act)
                     : tile_fwd_for<T, 0>(act);
}

template <class T>
using MicroFwd = void (*)(const T* const*, int64_t, int64_t, int64_t, const int64_t*, const T*, Vec<T> (&)[MO][MV]);

template <class T, int KW>
MicroFwd<T> micro_fwd_for(int nv) {
  return nv == 1 ? &micro_fwd<T, 1, KW> : nv == 2 ? &micro_fwd<T, 2, KW> : &micro_fwd<T, 3, KW>;
}

template <class T>
MicroFwd<T> pick_micro_fwd(int nv, int64_t taps) {
  if (taps == 1) return micro_fwd_for<T, 1>(nv);
  if (taps == 2) return micro_fwd_for<T, 2>(nv);
  if (taps == 3) return micro_fwd_for<T, 3>(nv);
  return micro_fwd_for<T, 0>(nv);
}

// The micro-kernel on simd::Wide vectors, for the GEMM-shaped kernels (Winograd, kernel == stride).
template <class T>
using Gemm = void (*)(const T* const*, int64_t, int64_t, int64_t, const int64_t*, const T*, simd::Wide<T> (&)[MO][MV]);
template <class T>
Gemm<T> pick_gemm(int nv) {
  using W = simd::Wide<T>;
  return nv == 1 ? &micro_fwd<T, 1, 1, W> : nv == 2 ? &micro_fwd<T, 2, 1, W> : &micro_fwd<T, 3, 1, W>;
}

#if CK_SIMD_AVX512
// The same for two blocks of MO output channels at once (weights w0 and w1; out[MO + i] is w1's channel i),
// built for AVX-512's 32 registers: 24 accumulate, and every loaded vector serves 8 channels instead of 4
// (Winograd forward at 32 channels: 12.1 -> 10.2 ms; the transposed k2s2 forward 256 -> 128: 22.4 -> 16.2 ms).
template <class T, int NV>
void gemm_pair(const T* const* rows, int64_t E, int64_t col, const T* w0, const T* w1,
               simd::Wide<T> (&out)[2 * MO][MV]) {
  using W = simd::Wide<T>;
  W acc[2 * MO][NV];
  for (int i = 0; i < 2 * MO; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = out[i][j];
  for (int64_t e = 0; e < E; ++e) {
    const T* p = rows[e] + col;
    W x[NV];
    for (int j = 0; j < NV; ++j) x[j] = W::load(p + j * W::N);
    for (int i = 0; i < MO; ++i) {
      const W a = W::set1(w0[i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = W::fmadd(a, x[j], acc[i][j]);
    }
    for (int i = 0; i < MO; ++i) {
      const W b = W::set1(w1[i]);
      for (int j = 0; j < NV; ++j) acc[MO + i][j] = W::fmadd(b, x[j], acc[MO + i][j]);
    }
    w0 += MO;
    w1 += MO;
  }
  for (int i = 0; i < 2 * MO; ++i)
    for (int j = 0; j < NV; ++j) out[i][j] = acc[i][j];
}
template <class T>
using GemmPair = void (*)(const T* const*, int64_t, int64_t, const T*, const T*, simd::Wide<T> (&)[2 * MO][MV]);
template <class T>
GemmPair<T> pick_gemm_pair(int nv) {
  return nv == 3 ? &gemm_pair<T, 3> : nv == 2 ? &gemm_pair<T, 2> : &gemm_pair<T, 1>;
}
#endif

// Blocks of MO output channels the GEMM-shaped kernels run at once from block ob of OB: two on AVX-512 while two
// are left, else one.
inline int gemm_blocks_at(int64_t ob, int64_t OB) {
#if CK_SIMD_AVX512
  if (ob + 1 < OB) return 2;
#endif
  (void)ob, (void)OB;
  return 1;
}

// The GEMM of nob (gemm_blocks_at) blocks of MO output channels over E entries of nv vectors at column col,
// added to acc's initial values: acc[i] is block 0's channel i (weights w0), acc[MO + i] block 1's (w1).
template <class T>
void gemm_blocks(int nob, int nv, const T* const* rows, int64_t E, int64_t col, const T* w0, const T* w1,
                 simd::Wide<T> (&acc)[2 * MO][MV]) {
#if CK_SIMD_AVX512
  if (nob == 2) {
    pick_gemm_pair<T>(nv)(rows, E, col, w0, w1, acc);
    return;
  }
#endif
  (void)nob, (void)w1;
  static const int64_t zero_off[1] = {0};
  simd::Wide<T> one[MO][MV];
  for (int i = 0; i < MO; ++i)
    for (int v = 0; v < MV; ++v) one[i][v] = acc[i][v];
  pick_gemm<T>(nv)(rows, E, col, 1, zero_off, w0, one);
  for (int i = 0; i < MO; ++i)
    for (int v = 0; v < MV; ++v) acc[i][v] = one[i][v];
}

// What the row driver writes: Cout channels of rows (n, od, oh) with `cols` columns; plane and batch strides.
// Output (od, oh, ow) lands at position (od * step[0] + off[0], oh * step[1] + off[1], ow * step[2] + off[2]) of
// a (D, mem_h, mem_w) plane: the identity, or one phase of a strided convolution's input gradient.
template <class T>
struct RowOut {
  T* y;
  int64_t cout, rows[3], cols;  // rows: N, D, H of the output side
  int64_t plane, bs;
  const T* bias;                 // per output channel, or null
  Act act;
  T slope;
  int64_t mem_h = 0, mem_w = 0;  // 0: the iteration sizes rows[2], cols
  int64_t step[3] = {1, 1, 1}, off[3] = {0, 0, 0};
};

// Output columns per panel chunk: as wide as the row when the panel stays within ~160 KiB, else the row split
// into equal chunks (a narrow last chunk wastes the kernels' reduction on few columns).
int64_t chunk_cols(int64_t cols, int64_t rows_per_chunk_col, int64_t tile, int64_t elem) {
  const int64_t budget = (int64_t(160) << 10) / (elem * std::max<int64_t>(1, rows_per_chunk_col));
  const int64_t cw = std::max<int64_t>(tile, budget / tile * tile);
  const int64_t n_chunks = ceil_div(round_up(cols, tile), cw);
  return std::min(cw, round_up(ceil_div(cols, n_chunks), tile));
}

// The row driver shared by forward and grad-input: per thread, runs of consecutive output rows; per panel
// chunk of columns, per row, per tile of MV vectors, per block of MO output channels: the micro-kernel over
// all entries, then the store (bias and activation fused).
template <class T, class Src, class MakeSrc>
void run_rows(const RowOut<T>& o, const T* wp, int64_t panel_rows, const MakeSrc& make_src) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const int64_t TW = MV * N;
  const int64_t n_rows = o.rows[0] * o.rows[1] * o.rows[2];
  const int64_t OB = ceil_div(o.cout, MO);
  // Few rows and many channels: split the channel blocks too, so every thread has work.
  const int64_t nt = num_threads();
  const int64_t oc_split = n_rows >= 4 * nt ? 1 : std::min<int64_t>(OB, ceil_div(4 * nt, std::max<int64_t>(n_rows, 1)));
  const int64_t ob_chunk = ceil_div(OB, oc_split);
  const int64_t CW = chunk_cols(o.cols, panel_rows, TW, sizeof(T));
  parallel_for(n_rows * oc_split, 1, [&](int64_t b, int64_t e) {
    Src src = make_src(CW);
    const int64_t E = src.entries(), taps = src.taps();
    const int64_t* offs = src.tap_offsets();
    const MicroFwd<T> micro_full = pick_micro_fwd<T>(MV, taps);
    const TileFwd<T> tile_full = pick_tile_fwd<T>(taps, o.act);
    alignas(32) T tmp[N];
    // Items are part-major: a thread's range is a few runs of consecutive rows, each with one channel part.
    for (int64_t run0 = b; run0 < e;) {
      const int64_t part = run0 / n_rows;
      const int64_t run1 = std::min(e, (part + 1) * n_rows);
      const int64_t ob0 = part * ob_chunk, ob1 = std::min(OB, ob0 + ob_chunk);
      for (int64_t cw0 = 0; cw0 < o.cols && ob0 < ob1; cw0 += CW) {
        const int64_t cvalid = std::min(CW, o.cols - cw0);
        src.set_chunk(cw0, cvalid);
        for (int64_t it = run0; it < run1; ++it) {
          const int64_t row = it % n_rows;
          const int64_t oh = row % o.rows[2], od = (row / o.rows[2]) % o.rows[1];
          const int64_t n = row / (o.rows[2] * o.rows[1]);
          src.fill(&n, &od, &oh, 1);
          if (it + 1 < run1) {
            const int64_t nrow = (it + 1) % n_rows;
            src.queue_next(nrow / (o.rows[2] * o.rows[1]), (nrow / o.rows[2]) % o.rows[1], nrow % o.rows[2]);
          }
          const T* const* ptrs = src.rows(0);
          const int64_t mh = o.mem_h ? o.mem_h : o.rows[2], mw = o.mem_w ? o.mem_w : o.cols;
          const int64_t cs = o.step[2];
          T* yrow = o.y + n * o.bs + ((od * o.step[0] + o.off[0]) * mh + oh * o.step[1] + o.off[1]) * mw + o.off[2] +
                    cw0 * cs;
          // Channel blocks outside, column tiles inside: each pass writes MO output rows front to back (the
          // other order scatters 96-byte pieces over all output planes, which alias in the caches) and keeps the
          // block's weights in L1; the panel is re-read from L2.
          for (int64_t ob = ob0; ob < ob1; ++ob) {
            for (int64_t j0 = 0, tw = TW; j0 < cvalid; j0 += tw) {
              // A last tile of one vector is load-bound (5 loads per 4 FMAs): split the last full tile and it
              // into two of two vectors instead.
              const int64_t rem = cvalid - j0;
              tw = rem > TW && rem <= TW + N ? round_up(ceil_div(rem, 2), N) : TW;
              const int64_t valid = std::min(tw, rem);
              if (valid == TW && (ob + 1) * MO <= o.cout && cs == 1) {
                tile_full(ptrs, E, j0, taps, offs, wp + ob * E * taps * MO, o.bias ? o.bias + ob * MO : nullptr,
                          o.slope, yrow + ob * MO * o.plane + j0, o.plane);
                src.pump(8);
                continue;
              }
              const int nv = int(ceil_div(valid, N));
              const MicroFwd<T> micro = nv == MV ? micro_full : pick_micro_fwd<T>(nv, taps);
              V acc[MO][MV];
              for (int i = 0; i < MO; ++i) {
                const int64_t oc = ob * MO + i;
                const V init = V::set1(o.bias && oc < o.cout ? o.bias[oc] : T(0));
                for (int jj = 0; jj < MV; ++jj) acc[i][jj] = init;
              }
              micro(ptrs, E, j0, taps, offs, wp + ob * E * taps * MO, acc);
              src.pump(8);
              const V zero = V::zero(), slope = V::set1(o.slope);
              for (int i = 0; i < MO; ++i) {
                const int64_t oc = ob * MO + i;
                if (oc >= o.cout) break;
                T* dst = yrow + oc * o.plane + j0 * cs;
                for (int jj = 0; jj < nv; ++jj) {
                  V v = acc[i][jj];
                  if (o.act == Act::relu) v = V::blend_negative(v, zero);
                  else if (o.act == Act::leaky_relu) v = V::blend_negative(v, v * slope);
                  if (cs != 1) {
                    v.store(tmp);
                    for (int64_t l = 0; l < std::min<int64_t>(N, valid - jj * N); ++l) dst[(jj * N + l) * cs] = tmp[l];
                  } else if ((jj + 1) * N <= valid) {
                    v.store(dst + jj * N);
                  } else {
                    v.store(tmp);
                    for (int64_t l = 0; l < valid - jj * N; ++l) dst[jj * N + l] = tmp[l];
                  }
                }
              }
            }
          }
        }
      }
      run0 = run1;
    }
  });
}

// ---- Winograd F(4x4, 3x3), float32 on AVX2 --------------------------------------------------------------
//
// Y = A^T [ (G g G^T) .* (B^T d B) ] A turns a 3x3 correlation of a 6x6 input tile into 36 products per 4x4
// outputs instead of 144 (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016; the
// matrices below are that paper's for points 0, +-1, +-2, inf). Per tile row (4 output rows) and chunk of TC
// tiles: the input transform (vectorised over 8 tiles) writes V[xi][entry][tile]; 36 GEMMs
// M[oc][xi][tile] = sum over entries (c, kd) of U[xi][oc][entry] V[xi][entry][tile] run on the direct
// convolution's micro-kernel; the output transform adds the bias, applies the activation and interleaves the
// 4 columns of every tile back into NCHW rows. A 3D kernel's depth taps are entries: each is a 2D Winograd on
// one input plane. The input panel is PanelRows with a 6-tap, stride-4 geometry, so its 4 phases hold the
// tile columns and every tap of 8 consecutive tiles is one contiguous vector.
#if CK_SIMD_AVX2
namespace wino {

// The GEMMs run on simd::Wide vectors (16 tiles on AVX-512, where it doubles their peak), the transforms on Vec's 8.
using GV = simd::Wide<float>;
constexpr int kTC = MV * GV::N;  // tiles per chunk: one GEMM register tile of MV vectors

// Lanes 8h .. 8h + 7 of a GEMM vector, for the 8-lane code.
inline __m256 half8(const simd::Avx2<float>& v, int) { return v.v; }
#if CK_SIMD_AVX512
inline __m256 half8(const simd::Avx512F& v, int h) { return v.half(h).v; }
#endif

// The forward's transforms on NT tiles: Vec's 8 lanes, or AVX-512's 16 (the same operations in the same order, so a
// tile's values do not depend on the width).
template <int NT>
struct LanesOf {
  using type = Vec<float>;
};
#if CK_SIMD_AVX512
template <>
struct LanesOf<16> {
  using type = simd::Avx512F;
};
#endif
template <int NT>
using Lanes = typename LanesOf<NT>::type;

// y = B^T x for one column of 6.
template <class R>
inline void bt6(const R* x, R* y) {
  const R four = R::set1(4.f), five = R::set1(5.f), two = R::set1(2.f);
  y[0] = R::fnmadd(five, x[2], R::fmadd(four, x[0], x[4]));
  const R a = x[3] + x[4], b = x[1] + x[2];
  y[1] = R::fnmadd(four, b, a);
  const R c = x[4] - x[3], d = x[1] - x[2];
  y[2] = R::fmadd(four, d, c);
  const R e = x[4] - x[2], f = x[3] - x[1];
  y[3] = R::fmadd(two, f, e);
  y[4] = R::fnmadd(two, f, e);
  y[5] = R::fnmadd(five, x[3], R::fmadd(four, x[1], x[5]));
}

// y = A^T m for one column of 6 -> 4.
template <class R>
inline void at6(const R* m, R* y) {
  const R a = m[1] + m[2], b = m[1] - m[2];
  const R c = m[3] + m[4], d = m[3] - m[4];
  y[0] = (m[0] + a) + c;
  y[1] = R::fmadd(R::set1(2.f), d, b);
  y[2] = R::fmadd(R::set1(4.f), c, a);
  y[3] = R::fmadd(R::set1(8.f), d, b) + m[5];
}

// y = A v for one column of 4 -> 6 (A: the transpose of at6's A^T): the weight gradient's transform of gy.
inline void a6(const __m256* v, __m256* y) {
  const __m256 s02 = _mm256_add_ps(v[0], v[2]), s13 = _mm256_add_ps(v[1], v[3]);
  const __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(4.f), v[2], v[0]);
  const __m256 q = _mm256_mul_ps(_mm256_set1_ps(2.f), _mm256_fmadd_ps(_mm256_set1_ps(4.f), v[3], v[1]));
  y[0] = v[0];
  y[1] = _mm256_add_ps(s02, s13);
  y[2] = _mm256_sub_ps(s02, s13);
  y[3] = _mm256_add_ps(p, q);
  y[4] = _mm256_sub_ps(p, q);
  y[5] = v[3];
}

// G of F(4x4, 3x3) (points 0, +-1, +-2, inf): the forward's weight transform, the weight gradient's output one.
constexpr double kG[6][3] = {{1.0 / 4, 0, 0},          {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                             {-1.0 / 6, 1.0 / 6, -1.0 / 6}, {1.0 / 24, 1.0 / 12, 1.0 / 6},
                             {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};

// Which tiles the transforms may take, and what the others need. Winograd turns a tile's 36 inputs into
// combinations with coefficients up to |B^T|'s row sums (10 along each dim: |V| <= 100 max|x|), multiplies by
// U = G w G^T (|G|'s row sums are at most 1: |U| <= max|w|), sums E entries and transforms back with A^T (row
// sums up to 19: |Y| <= 361 max|M|). So a tile whose inputs are all at most
//   x_limit = min(FLT_MAX / 200, FLT_MAX / (2 * 36100 * E * max|w|))
// cannot overflow anywhere (every intermediate stays below FLT_MAX / 2), and neither can the direct sum of its
// outputs (at most 9 E max|x| max|w|): both are finite and agree within Winograd's rounding. A tile with a larger
// input, inf or NaN is computed by direct sums (direct_tile), which is what torch computes: a NaN or inf reaches
// only the outputs whose window holds it, and finite huge values keep their finite results. (The transforms
// would spread one NaN to all 16 outputs of every tile holding it, and turn +inf into NaN through inf - inf.)
// Weights that are not finite send the whole call to the direct kernels.
struct Weights {
  Scratch<float> raw;     // the layer's weight tensor as given (what a later call is compared with)
  Scratch<float> U;       // U[xi][ob][e][i] = (G g G^T)[xi], output channel ob * MO + i, entry e = (c, kd)
  Scratch<float> flipped;  // with flip: the taps transposed and reversed, [o][e][3 x 3] (raw is that already without)
  float x_limit = 0.f;    // inputs above it (and inf, NaN) make a tile direct
  bool finite = true;     // every weight finite
  bool flip = false;
  int64_t cout = 0, E = 0, OB = 0, cin = 0, KD = 0;
  // wd[o][e][3 x 3]: the taps untransformed, as the direct tiles read them.
  const float* wd() const { return flip ? flipped.data() : raw.data(); }
};

// Tap k (kh * 3 + kw) of wd[o][e] read from the weight tensor w: itself, or for the input gradient (flip) the
// transposed, reversed tap, o an input channel of w and e = (output channel, kd').
inline float tap_of(const float* w, int64_t o, int64_t e, int k, int64_t E, bool flip, int64_t cin, int64_t KD) {
  if (!flip) return w[(o * E + e) * 9 + k];
  const int64_t oc = e / KD, kd = KD - 1 - e % KD;
  return w[((oc * cin + o) * KD + kd) * 9 + (8 - k)];
}

// How many floats of w from its start tap_of reads: with flip, the channel part of a wider input (cin > cout)
// reads a window of each output channel's taps, and the span runs to the last one.
inline size_t weight_span(int64_t cout, int64_t E, bool flip, int64_t cin, int64_t KD) {
  return size_t(flip ? ((E / KD - 1) * cin + cout) * KD * 9 : cout * E * 9);
}

// The weights in both forms from the tensor w, in double: U for the MO output channels of a block at once (one
// AVX2 double lane each, stored as adjacent floats), blocks spread over the threads. Single-threaded and one
// channel at a time, into fresh zeroed buffers, this took 14 ms of a 27 ms forward at 256 -> 256 channels, 32^2 x 4,
// every training step.
inline Weights transform_weights(const float* w, int64_t cout, int64_t E, int64_t OB, bool flip, int64_t cin,
                                 int64_t KD) {
  using D = __m256d;
  static_assert(MO == 4, "one AVX2 double vector per block of MO output channels");
  const auto& G = kG;
  Weights r;
  r.cout = cout, r.E = E, r.OB = OB, r.flip = flip, r.cin = cin, r.KD = KD;
  const size_t span = weight_span(cout, E, flip, cin, KD);
  r.raw = Scratch<float>(span);
  std::memcpy(r.raw.data(), w, span * sizeof(float));
  if (flip) r.flipped = Scratch<float>(size_t(cout * E * 9));
  r.U = Scratch<float>(size_t(36 * OB * E * MO));
  std::mutex mu;
  double wmax = 0;
  parallel_for(OB, 1, [&](int64_t ob0, int64_t ob1) {
    double m = 0;
    for (int64_t ob = ob0; ob < ob1; ++ob)
      for (int64_t e = 0; e < E; ++e) {
        alignas(32) double g[9][MO];
        for (int i = 0; i < MO; ++i) {
          const int64_t o = ob * MO + i;
          for (int k = 0; k < 9; ++k) {
            const float v = o < cout ? tap_of(w, o, e, k, E, flip, cin, KD) : 0.f;
            if (flip && o < cout) r.flipped[size_t((o * E + e) * 9 + k)] = v;
            g[k][i] = v;
            m = std::isnan(v) ? INFINITY : std::max(m, std::fabs(double(v)));
          }
        }
        // Explicit FMAs: left to contraction, the inlined copies of this body (one thread, several) rounded
        // differently, and a result depended on the thread count.
        D t[6][3];
        for (int a = 0; a < 6; ++a)
          for (int j = 0; j < 3; ++j)
            t[a][j] = _mm256_fmadd_pd(
                _mm256_set1_pd(G[a][2]), _mm256_load_pd(g[6 + j]),
                _mm256_fmadd_pd(_mm256_set1_pd(G[a][1]), _mm256_load_pd(g[3 + j]),
                                _mm256_mul_pd(_mm256_set1_pd(G[a][0]), _mm256_load_pd(g[j]))));
        for (int a = 0; a < 6; ++a)
          for (int b = 0; b < 6; ++b) {
            const D u = _mm256_fmadd_pd(
                t[a][2], _mm256_set1_pd(G[b][2]),
                _mm256_fmadd_pd(t[a][1], _mm256_set1_pd(G[b][1]), _mm256_mul_pd(t[a][0], _mm256_set1_pd(G[b][0]))));
            _mm_storeu_ps(r.U.data() + (((a * 6 + b) * OB + ob) * E + e) * MO, _mm256_cvtpd_ps(u));
          }
      }
    std::lock_guard<std::mutex> lock(mu);
    wmax = std::max(wmax, m);
  });
  constexpr double fmax = 3.4028234663852886e38;
  r.finite = std::isfinite(wmax);
  r.x_limit = float(std::min(fmax / 200, wmax > 0 ? fmax / (2 * 36100.0 * double(E) * wmax) : fmax));
  return r;
}

// The transformed weights, reused while a layer's taps are unchanged: a streamed image runs each layer on slabs of
// a few rows, where transforming 128 x 128 taps costs more than the convolution itself. An entry is reused only
// when the weight tensor is bit-equal (and the shape and use the same), so it cannot go stale; the few most recent
// layers are kept, at most kCacheBytes of them.
inline std::shared_ptr<const Weights> weights_for(const float* w, int64_t cout, int64_t E, int64_t OB,
                                                  bool flip_transpose, int64_t cin, int64_t KD) {
  constexpr size_t kCacheBytes = size_t(64) << 20, kCacheEntries = 32;
  static std::mutex mu;
  static std::list<std::shared_ptr<const Weights>> cache;  // most recently used first
  const auto same = [&](const Weights& c) {
    return c.cout == cout && c.E == E && c.OB == OB && c.flip == flip_transpose && c.cin == cin && c.KD == KD &&
           std::memcmp(c.raw.data(), w, c.raw.size() * sizeof(float)) == 0;
  };
  {
    std::lock_guard<std::mutex> lock(mu);
    for (auto it = cache.begin(); it != cache.end(); ++it)
      if (same(**it)) {
        cache.splice(cache.begin(), cache, it);
        return cache.front();
      }
  }
  auto r = std::make_shared<const Weights>(transform_weights(w, cout, E, OB, flip_transpose, cin, KD));
  const auto bytes = [](const Weights& c) { return (c.raw.size() + c.U.size() + c.flipped.size()) * sizeof(float); };
  if (bytes(*r) <= kCacheBytes / 4) {
    std::lock_guard<std::mutex> lock(mu);
    cache.push_front(r);
    size_t total = 0, n = 0;
    for (auto it = cache.begin(); it != cache.end();) {
      total += bytes(**it);
      if (++n > kCacheEntries || total > kCacheBytes)
        it = cache.erase(it);
      else
        ++it;
    }
  }
  return r;
}

// Bit l set where tile t0 + l (a lane of 8) holds an input above lim (abs_bits; inf and NaN above every finite
// value): rows[e * 6 + r] + off[q] + t0 holds tap (r, q) of the 8 tiles, e < E, as input_tiles reads them.
inline int tiles_over(const float* const* rows, const int64_t* off, int64_t E, int64_t t0, uint32_t lim) {
  const __m256i mask = _mm256_set1_epi32(0x7fffffff);
  __m256i m = _mm256_setzero_si256();
  for (int64_t e = 0; e < E * 6; ++e)
    for (int q = 0; q < 6; ++q)
      m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[e] + off[q] + t0)), mask));
  return _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(m, _mm256_set1_epi32(int(lim)))));
}

// Output tile t (4 x 4 outputs, nrow x ncol of them inside the output) of every output channel by direct sums
// over the panel, as torch computes them: rows[e * 6 + r] + off[q] + t is input (r, q) of the tile, wd the taps
// ([o][e][9]); bias and activation as the transforms' epilogue. y: the tile's first output in channel 0.
inline void direct_tile(const float* const* rows, const int64_t* off, int64_t t, int64_t E, const float* wd,
                        int64_t cout, const float* bias, Act act, float slope, float* y, int64_t plane,
                        int64_t ystride, int64_t nrow, int64_t ncol, std::vector<float>& s) {
  s.resize(size_t(E * 9 * 16));
  for (int64_t e = 0; e < E; ++e)  // s[e][tap][output]: the input each of the 16 outputs reads at each tap
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw)
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) s[size_t(((e * 9 + kh * 3 + kw) * 16) + i * 4 + j)] = rows[e * 6 + i + kh][off[j + kw] + t];
  for (int64_t o = 0; o < cout; ++o) {
    float acc[16] = {};
    const float* wo = wd + o * E * 9;
    for (int64_t k = 0; k < E * 9; ++k) {
      const float wv = wo[k];
      const float* sk = s.data() + k * 16;
      for (int l = 0; l < 16; ++l) acc[l] += wv * sk[l];
    }
    const float b = bias ? bias[o] : 0.f;
    for (int64_t i = 0; i < nrow; ++i)
      for (int64_t j = 0; j < ncol; ++j) y[o * plane + i * ystride + j] = conv::act_apply(acc[i * 4 + j] + b, act, slope);
  }
}

// Per lane of 8 tiles t0 ..: the largest |value| over the taps x taps inputs of each tile, entries e < E
// (rows[e * taps + r] + off[q] + t0), as floats (NaN where one is NaN).
inline __m256 tile_max(const float* const* rows, const int64_t* off, int64_t E, int taps, int64_t t0) {
  const __m256i mask = _mm256_set1_epi32(0x7fffffff);
  __m256i m = _mm256_setzero_si256();
  for (int64_t e = 0; e < E * taps; ++e)
    for (int q = 0; q < taps; ++q)
      m = _mm256_max_epi32(m, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[e] + off[q] + t0)), mask));
  return _mm256_castsi256_ps(m);
}

// The weight gradient's share of tile t by direct sums: gw[k][e][kh][kw] += gy[k][i][j] x[e][i + kh][j + kw] over
// the nrow x ncol outputs of the tile inside the output (gy rows ry[k * 4 + i] + offy[j] + t, x rows
// rx[e * 6 + r] + offx[q] + t), gb[k] += gy. Products in float, as torch forms them; sums in double.
inline void direct_tile_grad(const float* const* rx, const int64_t* offx, const float* const* ry, const int64_t* offy,
                             int64_t t, int64_t E, int64_t cout, int64_t nrow, int64_t ncol, double* gw, double* gb) {
  for (int64_t k = 0; k < cout; ++k)
    for (int64_t i = 0; i < nrow; ++i)
      for (int64_t j = 0; j < ncol; ++j) {
        const float gv = ry[k * 4 + i][offy[j] + t];
        gb[k] += gv;
        for (int64_t e = 0; e < E; ++e)
          for (int kh = 0; kh < 3; ++kh)
            for (int kw = 0; kw < 3; ++kw) gw[(k * E + e) * 9 + kh * 3 + kw] += gv * rx[e * 6 + i + kh][offx[j + kw] + t];
      }
}

// Writes y[4t + j] = v[j][t] for t < 8, j < 4 (32 floats), or its first `n` values; streaming (cache-bypassing)
// stores when asked and y is 32-byte aligned.
// r[k][l] = the (8 k + l)-th of v[j][t] in (t, j) order: r holds y[4 t + j] = v[j][t] for t < 8, j < 4.
inline void interleave4(const __m256* v, __m256* r) {
  const __m256 ab_lo = _mm256_unpacklo_ps(v[0], v[1]), ab_hi = _mm256_unpackhi_ps(v[0], v[1]);
  const __m256 cd_lo = _mm256_unpacklo_ps(v[2], v[3]), cd_hi = _mm256_unpackhi_ps(v[2], v[3]);
  const __m256 s0 = _mm256_shuffle_ps(ab_lo, cd_lo, 0x44), s1 = _mm256_shuffle_ps(ab_lo, cd_lo, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(ab_hi, cd_hi, 0x44), s3 = _mm256_shuffle_ps(ab_hi, cd_hi, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s1, 0x20);
  r[1] = _mm256_permute2f128_ps(s2, s3, 0x20);
  r[2] = _mm256_permute2f128_ps(s0, s1, 0x31);
  r[3] = _mm256_permute2f128_ps(s2, s3, 0x31);
}

// y[4 t + j] += v[j][t] for t < 8, j < 4.
inline void add_interleaved4(float* y, const __m256* v) {
  __m256 r[4];
  interleave4(v, r);
  for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_loadu_ps(y + 8 * k), r[k]));
}

// dst[t * stride + c] = src[c * 8 + t] for c, t < 8 (src 32-byte aligned).
inline void transpose8(const float* src, float* dst, int64_t stride) {
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(src + 8 * i);
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 4h .. 4h + 3: u[4h + m] holds columns m | m + 4 of them
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    _mm256_storeu_ps(dst + m * stride, _mm256_permute2f128_ps(u[m], u[4 + m], 0x20));
    _mm256_storeu_ps(dst + (m + 4) * stride, _mm256_permute2f128_ps(u[m], u[4 + m], 0x31));
  }
}

inline void store_interleaved4(float* y, const __m256* v, int64_t n, bool stream) {
  __m256 r[4];
  interleave4(v, r);
  if (n >= 32) {
    if (stream && (reinterpret_cast<uintptr_t>(y) & 31) == 0)
      for (int k = 0; k < 4; ++k) _mm256_stream_ps(y + 8 * k, r[k]);
    else
      for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, r[k]);
    return;
  }
  alignas(32) float tmp[32];
  for (int k = 0; k < 4; ++k) _mm256_store_ps(tmp + 8 * k, r[k]);
  for (int64_t k = 0; k < n; ++k) y[k] = tmp[k];
}

}  // namespace wino

// Whether the Winograd path applies: 3x3 in (h, w) at stride 1 and dilation 1, float32.
bool winograd_eligible(const ConvGeom& g) {
  return g.k[1] == 3 && g.k[2] == 3 && g.s[1] == 1 && g.s[2] == 1 && g.d[1] == 1 && g.d[2] == 1;
}

// Auto: enough channels that the GEMMs outweigh the transforms (measured below 16 in or out they do not).
bool use_winograd(const ConvGeom& g, ConvAlgo algo) {
  if (algo == ConvAlgo::direct || !winograd_eligible(g)) return false;
  return algo == ConvAlgo::winograd || (g.Cin * g.k[0] >= 16 && g.Cout >= 16);
}

namespace wino {

// B^T d B of NT tiles (vector lanes) of one input plane: rows[r] + off[q] + t0 holds tap (r, q) of the tiles.
// Writes the 36 transformed vectors to dst + xi * xi_stride.
template <int NT = 8>
inline void input_tiles(const float* const* rows, const int64_t* off, int64_t t0, float* dst, int64_t xi_stride) {
  using R = Lanes<NT>;
  R tr[6][6];
  for (int r = 0; r < 6; ++r) {
    const float* p = rows[r] + t0;
    R d[6];
    for (int q = 0; q < 6; ++q) d[q] = R::load(p + off[q]);
    bt6(d, tr[r]);
  }
  for (int k = 0; k < 6; ++k) {
    R col[6], y[6];
    for (int r = 0; r < 6; ++r) col[r] = tr[r][k];
    bt6(col, y);
    for (int a = 0; a < 6; ++a) y[a].store(dst + (a * 6 + k) * xi_stride);
  }
}

// Four 8-tile vectors' outputs into a row: y[4 t + j] = v[j][t], the first n of them.
inline void store_row4(float* y, const Vec<float>* v, int64_t n, bool stream) {
  const __m256 r[4] = {v[0].v, v[1].v, v[2].v, v[3].v};
  store_interleaved4(y, r, n, stream);
}
#if CK_SIMD_AVX512
inline void store_row4(float* y, const simd::Avx512F* v, int64_t n, bool stream) {
  __m256 lo[4], hi[4];
  for (int j = 0; j < 4; ++j) {
    lo[j] = half8(v[j], 0);
    hi[j] = half8(v[j], 1);
  }
  store_interleaved4(y, lo, n, stream);
  if (n > 32) store_interleaved4(y + 32, hi, n - 32, stream);
}
#endif

// A^T m A of NT tiles of one output channel (m + xi * xi_stride), plus bias and activation, interleaved into
// nrow output rows (row stride ystride), ncols of them; streaming stores when asked.
template <int NT = 8>
inline void output_tiles(const float* m, int64_t xi_stride, float bias_s, Act act, float slope_s, float* y,
                         int64_t ystride, int64_t nrow, int64_t ncols, bool stream) {
  using R = Lanes<NT>;
  const R zero = R::zero(), slope = R::set1(slope_s), bias = R::set1(bias_s);
  R tm[6][4];
  for (int a = 0; a < 6; ++a) {
    R row[6];
    for (int k = 0; k < 6; ++k) row[k] = R::load(m + (a * 6 + k) * xi_stride);
    at6(row, tm[a]);
  }
  R Y[4][4];
  for (int j = 0; j < 4; ++j) {
    R col[6], yv[4];
    for (int a = 0; a < 6; ++a) col[a] = tm[a][j];
    at6(col, yv);
    for (int i = 0; i < 4; ++i) {
      R v = yv[i] + bias;
      if (act == Act::relu) v = R::blend_negative(v, zero);
      else if (act == Act::leaky_relu) v = R::blend_negative(v, v * slope);
      Y[i][j] = v;
    }
  }
  for (int64_t i = 0; i < nrow; ++i) store_row4(y + i * ystride, Y[i], ncols, stream);
}

// The 36 GEMMs M[oc][xi][tile] = sum over entries of U[xi][oc][e] V[xi][e][tile] for ntiles <= kTC tiles (one
// register tile wide), on the direct convolution's micro-kernel, two channel blocks at a time on AVX-512;
// vrows[xi * E + e] points at V's row of entry e. The last vector may run past ntiles (within the TCp-long rows):
// those columns of M are never read.
inline void gemms(const float* const* vrows, int64_t E, const float* U, int64_t OB, int64_t ntiles,
                  float* M, int64_t TCp) {
  const int nv = int(ceil_div(ntiles, GV::N));
  CK_CHECK(nv <= MV, "winograd: a block wider than the GEMM tile (internal error)");
  for (int64_t xi = 0; xi < 36; ++xi)
    for (int64_t ob = 0; ob < OB;) {
      const float* w = U + (xi * OB + ob) * E * MO;
      const int nob = gemm_blocks_at(ob, OB);
      GV acc[2 * MO][MV];
      for (int i = 0; i < 2 * MO; ++i)
        for (int jj = 0; jj < MV; ++jj) acc[i][jj] = GV::zero();
      gemm_blocks<float>(nob, nv, vrows + xi * E, E, 0, w, w + E * MO, acc);
      for (int i = 0; i < nob * MO; ++i)
        for (int jj = 0; jj < nv; ++jj) acc[i][jj].store(M + ((ob * MO + i) * 36 + xi) * TCp + jj * GV::N);
      ob += nob;
    }
}

}  // namespace wino

// The forward through Winograd for 2D kernels (kd = 1): items of G (about 3) whole tile rows of one (n, od) plane,
// whose tiles, in transform vectors of NT (8, or 16 on AVX-512 for rows of 16 tiles and more; a row's last vector
// may be partial), are cut into blocks of kTC tiles: every block fills the GEMM's register tile, whatever the row
// width (chunks within a row left a 64-tile row's GEMMs 2/3 and 2 vectors wide, a 32-tile row's 3/4 and 1). V and
// M stay block-sized (L2). (Transforming whole items before the GEMMs, to read U fewer times, was measured
// 1.5-2.5x slower at 32-64 channels: V and M left L2.)
template <int NT>
void winograd_forward_2d_as(const ConvGeom& g, const ConvInput& x, const wino::Weights& W, const RowOut<float>& o) {
  constexpr int64_t kGmax = 8, TCp = wino::kTC, BV = TCp / NT;
  const int64_t Cin = g.Cin, OB = ceil_div(g.Cout, MO);
  const int64_t TH = ceil_div(g.out[1], 4), TWt = ceil_div(g.out[2], 4), OD = g.out[0];
  const int64_t VPR = ceil_div(TWt, NT);  // vectors per tile row
  // Tile rows per item: 3, or as many narrow rows as fill a block, spread evenly over the plane's rows (a 32^2
  // plane's 8 rows of 8 tiles: 2 items of 32 tiles on AVX-512, not 24 + 24 + 16 in 32-tile GEMMs).
  int64_t G = std::min<int64_t>(kGmax, std::max<int64_t>(3, ceil_div(BV, VPR)));
  G = ceil_div(TH, ceil_div(TH, G));
  ConvGeom pg = g;  // the panel sees a 6x6-tap convolution at stride 4: output "pixels" are tiles
  pg.k[1] = pg.k[2] = 6;
  pg.s[1] = pg.s[2] = 4;
  pg.out[1] = TH;
  pg.out[2] = TWt;
  const int64_t THg = ceil_div(TH, G), rows_items = g.N * OD * THg;
  // Few tile rows (a slab of a streamed image, a short image) would leave threads idle or unevenly loaded: cut
  // each row of tiles into CS column slices of VPS vectors too (at least MV each). A tile's result does not depend on the slice or block
  // it is computed in, so the output is the same for every CS. Slices are the outer index: a thread's items walk
  // down one slice, keeping its panel rows.
  int64_t CS = 1;
  const int64_t want = 8 * num_threads();  // items per thread enough that the static split is within ~1/8
  if (rows_items < want) CS = std::max<int64_t>(1, std::min(ceil_div(want, rows_items), VPR / MV));
  const int64_t VPS = ceil_div(VPR, CS);
  CS = ceil_div(VPR, VPS);
  const int64_t items = rows_items * CS;
  // Outputs beyond the caches are written once, in whole lines: streaming stores skip reading them first
  // (measured: 11% of the time sat on those stores' misses).
  const bool stream = g.N * o.bs * int64_t(sizeof(float)) > (int64_t(4) << 20);
  const float* U = W.U.data();
  const uint32_t lim = abs_bits(W.x_limit);
  parallel_for(items, 1, [&](int64_t b, int64_t e) {
    PanelRows<float> src(pg, x, std::min(TWt, VPS * NT), G);
    src.track_magnitude();
    const int64_t* off = src.tap_offsets();
    std::vector<float> scratch;
    Scratch<float> Vb(size_t(36 * Cin * TCp), 0.f), Mb(size_t(OB * MO * 36 * TCp), 0.f);
    std::vector<const float*> vrows(size_t(36 * Cin));
    for (int64_t xi = 0; xi < 36; ++xi)
      for (int64_t c = 0; c < Cin; ++c) vrows[size_t(xi * Cin + c)] = Vb.data() + (xi * Cin + c) * TCp;
    int64_t slice = -1, tc0 = 0, ntc = 0, vpr = 0;  // the panel's column slice: tiles [tc0, tc0 + ntc)
    for (int64_t it = b; it < e; ++it) {
      const int64_t row_it = it % rows_items, cs = it / rows_items;
      if (cs != slice) {
        slice = cs;
        tc0 = cs * VPS * NT;
        ntc = std::min(TWt - tc0, VPS * NT);
        vpr = ceil_div(ntc, NT);
        src.set_chunk(tc0, ntc);
      }
      const int64_t trg = row_it % THg, od = (row_it / THg) % OD, n = row_it / (THg * OD);
      const int64_t t_row0 = trg * G, gr = std::min(G, TH - t_row0);
      int64_t nn[kGmax], odd[kGmax], th[kGmax];
      for (int64_t j = 0; j < gr; ++j) {
        nn[j] = n;
        odd[j] = od;
        th[j] = t_row0 + j;
      }
      src.fill(nn, odd, th, gr);
      bool over[kGmax] = {}, any_over = false;  // tile rows with an input above the limit (rare)
      for (int64_t j = 0; j < gr; ++j) any_over |= over[j] = src.magnitude(j) > lim;
      src.clear_queue();
      if (it + 1 < e && (it + 1) / rows_items == cs) {
        const int64_t ni = (it + 1) % rows_items;
        const int64_t ntr = ni % THg, nod = (ni / THg) % OD, nnext = ni / (THg * OD);
        for (int64_t j = 0; j < G && ntr * G + j < TH; ++j) src.queue_next(nnext, nod, ntr * G + j, true);
      }
      const int64_t nvec = gr * vpr;
      for (int64_t v0 = 0; v0 < nvec; v0 += BV) {
        const int64_t nb = std::min<int64_t>(BV, nvec - v0);
        for (int64_t q = 0; q < nb; ++q) {  // block vector q: tile row j, tiles tc0 + t0 .. + NT - 1
          const int64_t j = (v0 + q) / vpr, t0 = (v0 + q) % vpr * NT;
          const float* const* rows = src.rows(j);
          for (int64_t c = 0; c < Cin; ++c)
            wino::input_tiles<NT>(rows + c * 6, off, t0, Vb.data() + c * TCp + q * NT, Cin * TCp);
        }
        wino::gemms(vrows.data(), Cin, U, OB, nb * NT, Mb.data(), TCp);
        src.pump(64);
        for (int64_t oc = 0; oc < g.Cout; ++oc)
          for (int64_t q = 0; q < nb; ++q) {
            const int64_t j = (v0 + q) / vpr, t0 = (v0 + q) % vpr * NT;
            const int64_t oh0 = (t_row0 + j) * 4, c0 = (tc0 + t0) * 4;
            wino::output_tiles<NT>(Mb.data() + oc * 36 * TCp + q * NT, TCp, o.bias ? o.bias[oc] : 0.f, o.act, o.slope,
                                  o.y + n * o.bs + oc * o.plane + (od * g.out[1] + oh0) * g.out[2] + c0, g.out[2],
                                  std::min<int64_t>(4, g.out[1] - oh0), std::min<int64_t>(4 * NT, g.out[2] - c0),
                                  stream);
          }
        if (any_over) {  // overwrite the tiles above the limit with direct sums
          if (stream) _mm_sfence();
          for (int64_t q = 0; q < nb; ++q) {
            const int64_t j = (v0 + q) / vpr, t0 = (v0 + q) % vpr * NT;
            if (!over[j]) continue;
            int flags = 0;
            for (int64_t h = 0; h < NT; h += 8) flags |= wino::tiles_over(src.rows(j), off, Cin, t0 + h, lim) << h;
            const int64_t oh0 = (t_row0 + j) * 4;
            for (int64_t l = 0; l < NT && t0 + l < ntc; ++l)
              if (flags >> l & 1) {
                const int64_t c0 = (tc0 + t0 + l) * 4;
                wino::direct_tile(src.rows(j), off, t0 + l, Cin, W.wd(), g.Cout, o.bias, o.act, o.slope,
                                  o.y + n * o.bs + (od * g.out[1] + oh0) * g.out[2] + c0, o.plane, g.out[2],
                                  std::min<int64_t>(4, g.out[1] - oh0), std::min<int64_t>(4, g.out[2] - c0), scratch);
              }
          }
        }
      }
    }
    if (stream) _mm_sfence();
  });
}

void winograd_forward_2d(const ConvGeom& g, const ConvInput& x, const wino::Weights& W, const RowOut<float>& o) {
#if CK_SIMD_AVX512
  if (ceil_div(g.out[2], 4) >= 16) return winograd_forward_2d_as<16>(g, x, W, o);
#endif
  winograd_forward_2d_as<8>(g, x, W, o);
}

// The forward through Winograd: x with geometry g into o (RowOut over g.out); U from wino::transform_weights.
// 2D kernels take winograd_forward_2d; 3x3x3 kernels come here.
void winograd_forward(const ConvGeom& g, const ConvInput& x, const wino::Weights& W, const RowOut<float>& o) {
  if (g.k[0] == 1) {
    winograd_forward_2d(g, x, W, o);
    return;
  }
  using V = Vec<float>;
  const int64_t E = g.Cin * g.k[0], OB = ceil_div(g.Cout, MO);
  const int64_t TH = ceil_div(g.out[1], 4), TWt = ceil_div(g.out[2], 4);
  // The panel sees a 6x6-tap convolution at stride 4: output "pixels" are tiles.
  ConvGeom pg = g;
  pg.k[1] = pg.k[2] = 6;
  pg.s[1] = pg.s[2] = 4;
  pg.out[1] = TH;
  pg.out[2] = TWt;
  const int64_t TC = wino::kTC, TCp = TC;  // V/M row length (tiles)
  const int64_t KD = g.k[0], Cin = g.Cin, OD = g.out[0];
  // Items are (n, tile row, od) with od fastest: consecutive output depths share KD - 1 input planes, whose
  // transforms stay cached (3x fewer input transforms for 3x3x3 kernels).
  const int64_t items = g.N * TH * OD;
  const bool stream = g.N * o.bs * int64_t(sizeof(float)) > (int64_t(4) << 20);
  const float* U = W.U.data();
  const uint32_t lim = abs_bits(W.x_limit);
  parallel_for(items, 1, [&](int64_t b, int64_t e) {
    PanelRows<float> src(pg, x, TC, 1);
    src.track_magnitude();
    const int64_t* off = src.tap_offsets();
    std::vector<float> scratch;
    const int64_t S = KD + 1;  // cached transformed planes: the KD an output depth needs, plus one to fill
    Scratch<float> Vb(size_t(36 * S * Cin * TCp), 0.f), Mb(size_t(OB * MO * 36 * TCp), 0.f);
    std::vector<float> Vzero(size_t(TCp), 0.f);
    std::vector<const float*> vrows(size_t(36 * E));
    std::vector<int64_t> slot_key(static_cast<size_t>(S), -1), slot_of(static_cast<size_t>(KD));
    std::vector<char> slot_used(static_cast<size_t>(S));
    for (int64_t tc0 = 0; tc0 < TWt; tc0 += TC) {
      const int64_t tvalid = std::min(TC, TWt - tc0);
      src.set_chunk(tc0, tvalid);
      int64_t cached_for = -1;  // (n, tile row) the cached planes belong to
      for (int64_t it = b; it < e; ++it) {
        const int64_t od = it % OD, t_row = (it / OD) % TH, n = it / (OD * TH);
        if (n * TH + t_row != cached_for) {
          std::fill(slot_key.begin(), slot_key.end(), -1);
          cached_for = n * TH + t_row;
        }
        src.fill(&n, &od, &t_row, 1);
        if (it + 1 < e)
          src.queue_next((it + 1) / (OD * TH), (it + 1) % OD, ((it + 1) / OD) % TH);
        const float* const* rows = src.rows(0);
        // Which cached plane each depth tap reads; transform the missing ones into free slots.
        std::fill(slot_used.begin(), slot_used.end(), char(0));
        for (int64_t kd = 0; kd < KD; ++kd) {
          const int64_t id = conv::map_index(conv::tap_input(od, kd, g.s[0], g.d[0], g.lo[0]), g.in[0], g.pad);
          slot_of[size_t(kd)] = -1;
          if (id < 0) continue;
          for (int64_t sl = 0; sl < S; ++sl)
            if (slot_key[size_t(sl)] == id) {
              slot_of[size_t(kd)] = sl;
              slot_used[size_t(sl)] = 1;
            }
        }
        for (int64_t kd = 0; kd < KD; ++kd) {
          const int64_t id = conv::map_index(conv::tap_input(od, kd, g.s[0], g.d[0], g.lo[0]), g.in[0], g.pad);
          if (id < 0 || slot_of[size_t(kd)] >= 0) continue;
          int64_t sl = 0;
          for (int64_t k2 = 0; k2 < kd; ++k2)  // the same plane twice (padding maps): transform once
            if (slot_of[size_t(k2)] >= 0 && slot_key[size_t(slot_of[size_t(k2)])] == id) sl = -1 - slot_of[size_t(k2)];
          if (sl < 0) {
            slot_of[size_t(kd)] = -1 - sl;
            continue;
          }
          while (slot_used[size_t(sl)]) ++sl;
          slot_used[size_t(sl)] = 1;
          slot_key[size_t(sl)] = id;
          slot_of[size_t(kd)] = sl;
          // Input transform of plane id (read through tap kd's rows): V[xi][slot][c][tile].
          for (int64_t c = 0; c < Cin; ++c)
            for (int64_t t0 = 0; t0 < tvalid; t0 += 8)
              wino::input_tiles(rows + (c * KD + kd) * 6, off, t0, Vb.data() + (sl * Cin + c) * TCp + t0,
                                S * Cin * TCp);
        }
        for (int64_t xi = 0; xi < 36; ++xi)
          for (int64_t c = 0; c < Cin; ++c)
            for (int64_t kd = 0; kd < KD; ++kd) {
              const int64_t sl = slot_of[size_t(kd)];
              vrows[size_t(xi * E + c * KD + kd)] = sl < 0 ? Vzero.data() : Vb.data() + ((xi * S + sl) * Cin + c) * TCp;
            }
        wino::gemms(vrows.data(), E, U, OB, tvalid, Mb.data(), TCp);
        src.pump(64);
        // Output transform, bias, activation, interleave into the output rows.
        const int64_t oh0 = t_row * 4, nrow = std::min<int64_t>(4, g.out[1] - oh0);
        for (int64_t oc = 0; oc < g.Cout; ++oc) {
          float* yplane = o.y + n * o.bs + oc * o.plane + (od * g.out[1] + oh0) * g.out[2];
          for (int64_t t0 = 0; t0 < tvalid; t0 += 8) {
            const int64_t c0 = (tc0 + t0) * 4;
            wino::output_tiles(Mb.data() + oc * 36 * TCp + t0, TCp, o.bias ? o.bias[oc] : 0.f, o.act, o.slope,
                               yplane + c0, g.out[2], nrow, std::min<int64_t>(32, g.out[2] - c0), stream);
          }
        }
        if (src.magnitude(0) > lim) {  // overwrite the tiles above the limit with direct sums
          if (stream) _mm_sfence();
          float* y0 = o.y + n * o.bs + (od * g.out[1] + oh0) * g.out[2];
          for (int64_t t0 = 0; t0 < tvalid; t0 += 8) {
            const int flags = wino::tiles_over(rows, off, E, t0, lim);
            for (int64_t l = 0; l < 8 && t0 + l < tvalid; ++l)
              if (flags >> l & 1) {
                const int64_t c0 = (tc0 + t0 + l) * 4;
                wino::direct_tile(rows, off, t0 + l, E, W.wd(), g.Cout, o.bias, o.act, o.slope, y0 + c0, o.plane,
                                  g.out[2], nrow, std::min<int64_t>(4, g.out[2] - c0), scratch);
              }
          }
        }
      }
    }
    if (stream) _mm_sfence();
  });
}
#endif  // CK_SIMD_AVX2

// Rows of the panel per output column: (channels x kd x kh) rows, each as wide as the chunk.
int64_t panel_rows_of(const ConvGeom& g, int64_t rb) { return g.Cin * g.k[0] * (rb - 1 + g.k[1]); }

// Whether every input position feeds at most one tap of one output (kernel == stride along every dim, dilation
// 1 where the kernel is wider than 1): 1x1 and patchify / 2x2-stride-2 convolutions, and the weight gradient of
// the U-Net's 2x2 transposed convolution.
bool taps_dont_overlap(const ConvGeom& g) {
  for (int a = 0; a < 3; ++a)
    if (g.k[a] != g.s[a] || (g.k[a] > 1 && g.d[a] != 1)) return false;
  return true;
}

// Cache lines to prefetch, issued a few per step of the work that follows (one step per block of output channels):
// the k == s kernels read rows of many planes at once, too many streams for the hardware prefetchers, and ~1000
// prefetches issued together filled the miss buffers and stalled on the prefetches themselves.
class SpreadPrefetch {
 public:
  void clear() { lines_.clear(), at_ = 0, per_ = 0; }
  // Every line of [p, p + n) elements.
  template <class T>
  void add_span(const T* p, int64_t n) {
    if (n <= 0) return;
    const char* b = reinterpret_cast<const char*>(p);
    const char* e = reinterpret_cast<const char*>(p + n);
    for (const char* q = b; q < e; q += 64) lines_.push_back(q);
    if ((e - 1 - b) % 64) lines_.push_back(e - 1);
  }
  void spread_over(int64_t steps) { per_ = (lines_.size() + size_t(steps) - 1) / size_t(std::max<int64_t>(1, steps)); }
  void step() {
    for (size_t q = 0; q < per_ && at_ < lines_.size(); ++q) __builtin_prefetch(lines_[at_++], 0, 3);
  }

 private:
  std::vector<const char*> lines_;
  size_t at_ = 0, per_ = 0;
};

// The column tiles of a row of `width` outputs for the k == s kernels, as their starts followed by `width`: MV
// vectors each, but a row whose vectors leave one over ends in two tiles of MV - 1 (a 1-vector tile broadcasts 4
// weights per 4 FMAs; 128 columns ran 5 x 24 + 8 at ~5% below 4 x 24 + 2 x 16).
std::vector<int64_t> row_tiles(int64_t width, int64_t n) {
  const int64_t tw = MV * n, nvt = ceil_div(width, n);
  const bool split = MV > 2 && nvt % MV == 1 && nvt > MV;
  const int64_t full = nvt / MV - (split ? 1 : 0);
  std::vector<int64_t> at;
  for (int64_t t = 0; t < full; ++t) at.push_back(t * tw);
  int64_t j = full * tw;
  if (split)
    for (int h = 0; h < 2 && j < width; ++h, j += (MV - 1) * n) at.push_back(j);
  for (; j < width; j += tw) at.push_back(j);
  at.push_back(width);
  return at;
}

// Elements at, at + s, ..., at + (P::N - 1) * s (s = 1 or 2) of a row of len: a stride-2 vector whose even loads
// would read past the row's end takes the odd lanes from one element earlier (at >= 1 there, or 2 P::N <= len).
template <class P, class T>
P load_step(const T* row, int64_t at, int64_t s, int64_t len) {
  if (s == 1) return P::load(row + at);
  return at + 2 * P::N <= len ? P::load_even(row + at) : P::load_odd(row + at - 1);
}

// The forward of such a convolution is a GEMM, y[oc][p] = b + sum_e w[oc][e] X[e][p], e = (c, kd, kh, kw): per
// tile of MV vectors of output pixels along a row, X is packed ([e][tile], a stride-s gather of each entry's input
// row, vectorised for strides 1 and 2) in blocks of KB entries that stay in L1 while every block of 4 output
// channels runs the forward micro-kernel over them, the partial sums of earlier blocks parked in a tile buffer.
// (The row driver keeps a whole row's panel and re-reads it from L2 for every block of output channels: 55% of
// peak for the 2x2 / stride-2 convolution of a transposed convolution's input gradient.)
template <class T>
void forward_disjoint(const ConvGeom& g, const ConvInput& x, const T* wp, const RowOut<T>& o) {
  using V = simd::Wide<T>;  // the GEMM's vectors (16 floats on AVX-512); P packs the input
  using P = Vec<T>;
  constexpr int N = V::N;
  constexpr int64_t TW = MV * N, KB = 256;
  const int64_t K = g.k[0] * g.k[1] * g.k[2], E = g.Cin * K, OB = ceil_div(g.Cout, MO);
  const int64_t OW = g.out[2], n_rows = g.N * g.out[0] * g.out[1];
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  const T* bias = o.bias;
  const T slope_s = o.slope;
  parallel_for(n_rows, 1, [&](int64_t b, int64_t e) {
    const int64_t EK = std::min(E, KB);
    std::vector<T> xp(size_t(EK * TW)), tb(size_t(OB * MO * TW));
    std::vector<const T*> rows(static_cast<size_t>(EK));
    for (int64_t k = 0; k < EK; ++k) rows[size_t(k)] = xp.data() + k * TW;
    alignas(64) T tmp[N];
    // Per entry (c, kd, kh, kw): its plane in batch item 0, the part's batch stride, its (kd, kh) and kw; per
    // output row the offset of each (kd, kh) row in a plane (-1: padding). Decoding the entry with divisions at
    // every tile cost ~20% of a 256 -> 128 k2s2 input gradient.
    const int64_t KDH = g.k[0] * g.k[1];
    std::vector<const T*> ebase(static_cast<size_t>(E));
    std::vector<int64_t> ebs(static_cast<size_t>(E)), edh(static_cast<size_t>(E)), ekw(static_cast<size_t>(E));
    for (int64_t en = 0; en < E; ++en) {
      const int64_t c = en / K, kk = en % K;
      ebase[size_t(en)] = conv::input_plane<T>(x, 0, c, in_plane);
      int part = 0;
      while (part + 1 < x.parts && c >= x.c_begin[part + 1]) ++part;
      ebs[size_t(en)] = x.bs[part];
      edh[size_t(en)] = kk / g.k[2];
      ekw[size_t(en)] = kk % g.k[2];
    }
    std::vector<int64_t> roff(static_cast<size_t>(KDH));
    SpreadPrefetch pf;  // the next tile's input lines
    int64_t roff_row = -1, roff_n = 0;
    auto set_row = [&](int64_t row) {
      if (row == roff_row) return;
      const int64_t oh = row % g.out[1], od = (row / g.out[1]) % g.out[0];
      roff_n = row / (g.out[1] * g.out[0]);
      for (int64_t kd = 0; kd < g.k[0]; ++kd)
        for (int64_t kh = 0; kh < g.k[1]; ++kh) {
          const int64_t id = conv::map_index(conv::tap_input(od, kd, g.s[0], 1, g.lo[0]), g.in[0], g.pad);
          const int64_t ih = conv::map_index(conv::tap_input(oh, kh, g.s[1], 1, g.lo[1]), g.in[1], g.pad);
          roff[size_t(kd * g.k[1] + kh)] = id < 0 || ih < 0 ? -1 : (id * g.in[1] + ih) * g.in[2];
        }
      roff_row = row;
    };
    // The input row an entry of output row `row` (set by set_row) reads, or null where it is padding.
    auto entry_row = [&](int64_t en, int64_t* kw_out) -> const T* {
      *kw_out = ekw[size_t(en)];
      const int64_t off = roff[size_t(edh[size_t(en)])];
      return off < 0 ? nullptr : ebase[size_t(en)] + roff_n * ebs[size_t(en)] + off;
    };
    const std::vector<int64_t> tile_at = row_tiles(OW, N);
    const int64_t n_tiles = int64_t(tile_at.size()) - 1;
    for (int64_t row = b; row < e; ++row) {
      const int64_t oh = row % g.out[1], od = (row / g.out[1]) % g.out[0], n = row / (g.out[1] * g.out[0]);
      for (int64_t ti = 0; ti < n_tiles; ++ti) {
        const int64_t j0 = tile_at[size_t(ti)], valid = tile_at[size_t(ti + 1)] - j0;
        const int nv = int(ceil_div(valid, N));
        // The next tile's input (the next row's first tile at the row end) is prefetched while this one runs:
        // its entries sit in up to E different planes, too many streams for the hardware prefetchers.
        const int64_t nrow = ti + 1 < n_tiles ? row : row + 1, nj0 = ti + 1 < n_tiles ? tile_at[size_t(ti + 1)] : 0;
        for (int64_t k0 = 0; k0 < E; k0 += KB) {
          const int64_t ek = std::min(KB, E - k0);
          pf.clear();
          if (nrow < e) {
            set_row(nrow);
            // Every line of the span the tile reads (its first and last only left the middle ones of a stride-2
            // tile to miss), once per row: the kw > 0 entries read the row of kw = 0.
            for (int64_t k = 0; k < ek; ++k) {
              int64_t kw;
              const T* r = entry_row(k0 + k, &kw);
              if (!r || (kw > 0 && k > 0)) continue;
              const int64_t i0 = std::max<int64_t>(0, conv::tap_input(nj0, kw, g.s[2], 1, g.lo[2]));
              pf.add_span(r + i0, std::min(i0 + TW * g.s[2] + g.k[2] - 1, g.in[2]) - i0);
            }
          }
          pf.spread_over(OB);
          set_row(row);
          for (int64_t k = 0; k < ek; ++k) {  // pack entry k0 + k for outputs j0 .. j0 + TW - 1
            T* dst = xp.data() + k * TW;
            int64_t kw;
            const T* xrow = entry_row(k0 + k, &kw);
            if (!xrow) {
              std::fill(dst, dst + TW, T(0));
              continue;
            }
            const int64_t i0 = conv::tap_input(j0, kw, g.s[2], 1, g.lo[2]), s2 = g.s[2];
            // A gradient input (the transposed problem of a 1x1 input gradient) reads gy * act'(y).
            const T* yrow = act_at(x.act, static_cast<const T*>(x.data[0]), xrow);
            const int64_t len = g.in[2];
            if ((s2 == 1 || s2 == 2) && i0 >= 0 && i0 + (nv * N - 1) * s2 < len &&
                (s2 == 1 || i0 >= 1 || nv * N * 2 <= len)) {
              for (int v = 0; v < nv * (N / P::N); ++v) {  // the micro-kernel reads nv vectors
                const int64_t at = i0 + v * s2 * P::N;
                P r = load_step<P>(xrow, at, s2, len);
                if (yrow) r = act_grad_v(load_step<P>(yrow, at, s2, len), r, x.act.act, P::set1(T(x.act.slope)));
                r.store(dst + v * P::N);
              }
            } else {
              for (int64_t j = 0; j < TW; ++j) {
                const int64_t iw = conv::map_index(i0 + j * s2, g.in[2], g.pad);
                const T v = j < valid && iw >= 0 ? xrow[iw] : T(0);
                dst[j] = yrow && j < valid && iw >= 0 ? conv::act_grad(yrow[iw], v, x.act.act, T(x.act.slope)) : v;
              }
            }
          }
          const bool first = k0 == 0, last = k0 + KB >= E;
          for (int64_t ob = 0; ob < OB;) {  // one block of MO channels, or two at once on AVX-512
            const int nob = gemm_blocks_at(ob, OB);
            pf.step();
            if (nob == 2) pf.step();
            V acc[2 * MO][MV];
            T* park = tb.data() + ob * MO * TW;
            for (int i = 0; i < nob * MO; ++i) {
              const int64_t oc = ob * MO + i;
              for (int v = 0; v < MV; ++v)
                acc[i][v] = first ? V::set1(bias && oc < g.Cout ? bias[oc] : T(0)) : V::load(park + i * TW + v * N);
            }
            const T* w0 = wp + (ob * E + k0) * MO;
            gemm_blocks<T>(nob, nv, rows.data(), ek, 0, w0, w0 + E * MO, acc);
            for (int i = 0; i < nob * MO; ++i) {
              const int64_t oc = ob * MO + i;
              if (!last) {
                for (int v = 0; v < MV; ++v) acc[i][v].store(park + i * TW + v * N);
                continue;
              }
              if (oc >= g.Cout) break;
              T* dst = o.y + n * o.bs + oc * o.plane + (od * g.out[1] + oh) * OW + j0;
              for (int v = 0; v < nv; ++v) {
                V r = acc[i][v];
                if (o.act == Act::relu) r = V::blend_negative(r, V::zero());
                else if (o.act == Act::leaky_relu) r = V::blend_negative(r, r * V::set1(slope_s));
                if ((v + 1) * N <= valid) {
                  r.store(dst + v * N);
                } else {
                  r.store(tmp);
                  for (int64_t l = 0; l < valid - v * N; ++l) dst[v * N + l] = tmp[l];
                }
              }
            }
            ob += nob;
          }
        }
      }
    }
  });
}

template <class T>
void forward_typed(const ConvForwardArgs& a) {
  const ConvGeom& g = a.g;
  const T* w = static_cast<const T*>(a.w);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], E = g.Cin * K;
  // First layers (a few taps per output) are bound by writing the output. Streaming stores were measured slower
  // than ordinary ones on this path in every variant tried (96-byte tiles, 64-byte line tiles, rows staged in L1
  // and streamed in whole lines: 26-49 ms vs 14-29 ms for 1->32 @1024^2, 1 thread, fresh or reused outputs),
  // although a plain streaming loop reaches 22 GB/s here; so the direct path stores normally.
  RowOut<T> o{static_cast<T*>(a.y), g.Cout, {g.N, g.out[0], g.out[1]}, g.out[2],
              a.y_cs ? a.y_cs : g.out[0] * g.out[1] * g.out[2], g.y_bs, static_cast<const T*>(a.b), a.act, T(a.slope)};
  const ConvInput& x = a.x;
#if CK_SIMD_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (use_winograd(g, a.algo)) {
      const auto Wp = wino::weights_for(w, g.Cout, g.Cin * g.k[0], ceil_div(g.Cout, MO), false, g.Cin, g.k[0]);
      const wino::Weights& W = *Wp;
      if (W.finite) {  // else torch's direct sums: a NaN or inf weight reaches every output it multiplies
        winograd_forward(g, x, W, o);
        return;
      }
    }
  }
#endif
  const std::vector<T> wp = pack_weights<T>(g.Cout, E, [&](int64_t o, int64_t e) { return w[o * E + e]; });
  if (taps_dont_overlap(g)) {
    forward_disjoint<T>(g, x, wp.data(), o);
    return;
  }
  run_rows<T, PanelRows<T>>(o, wp.data(), panel_rows_of(g, 1) * g.s[2],
                            [&](int64_t cw) { return PanelRows<T>(g, x, cw, 1); });
}

// Kernel equal to the stride along every dim, dilation 1, stride 2 along w (the U-Net's 2x2 / stride-2
// upsampling, and the input gradient of a 2x2 / stride-2 convolution): every gx position receives exactly one
// tap, and gx row (n, id, ih) is a 1x1 convolution of the one gy row (n, od, oh) it comes from, with the taps
// (kd, kh, kw = 0 and 1). The forward micro-kernel computes MO / 2 gx channels for both kw at once (its MO
// "output channels" are the pairs (channel, kw)); the epilogue interleaves the two kw results into consecutive
// columns. (The phase-by-phase path below stores every other column one element at a time.)
bool disjoint_taps(const ConvGeom& g) {
  for (int a = 0; a < 3; ++a)
    if (g.k[a] != g.s[a] || (g.k[a] > 1 && g.d[a] != 1)) return false;
  return g.s[2] == 2;
}

template <class T>
void grad_input_disjoint(const ConvGradInputArgs& a, const RowOut<T>& o) {
  using V = simd::Wide<T>;  // the GEMM's vectors (16 floats on AVX-512)
  constexpr int N = V::N, CB = MO / 2;  // gx channels per micro-kernel call
  const ConvGeom& g = a.g;
  const T* w = static_cast<const T*>(a.w);
  const T* gy = static_cast<const T*>(a.gy);
  const int64_t K = g.k[0] * g.k[1] * 2, taps = g.k[0] * g.k[1], CBn = ceil_div(g.Cin, CB);
  // wp[tap][cb][o][c * 2 + kw] = w[o][cb * CB + c][tap][kw]: the micro-kernel's broadcast order.
  std::vector<T> wp(size_t(taps * CBn * g.Cout * MO), T(0));
  for (int64_t tap = 0; tap < taps; ++tap)
    for (int64_t cb = 0; cb < CBn; ++cb)
      for (int64_t oc = 0; oc < g.Cout; ++oc)
        for (int c = 0; c < CB && cb * CB + c < g.Cin; ++c)
          for (int kw = 0; kw < 2; ++kw)
            wp[size_t(((tap * CBn + cb) * g.Cout + oc) * MO + c * 2 + kw)] = w[(oc * a.w_cin + cb * CB + c) * K + tap * 2 + kw];
  auto bias_of = [&](int64_t c) { return o.bias ? o.bias[c] : T(0); };
  const int64_t OW = g.out[2], W = g.in[2], lo = g.lo[2], plane_y = g.out[0] * g.out[1] * OW;
  const int64_t covered_w = std::min(W, std::max<int64_t>(0, 2 * OW - lo));  // columns a tap reaches
  // gx rows no gy row reaches (output_padding beyond the last tap): the bias only.
  const int64_t gx_rows = g.N * g.in[0] * g.in[1];
  parallel_for(gx_rows, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t ih = r % g.in[1], id = (r / g.in[1]) % g.in[0], n = r / (g.in[1] * g.in[0]);
      if ((id + g.lo[0]) / g.s[0] < g.out[0] && (ih + g.lo[1]) / g.s[1] < g.out[1]) continue;
      for (int64_t c = 0; c < g.Cin; ++c) {
        T* row = o.y + n * o.bs + c * o.plane + (id * g.in[1] + ih) * W;
        std::fill(row, row + W, bias_of(c));
      }
    }
  });
  // Per gy row and tile of TW columns: the tile is packed contiguously ([o][TW], at most ~24 KiB for 256 channels)
  // and every (tap, channel block) runs on it from L1, the weights streaming in order. (Channel blocks outside the
  // tiles re-read the whole row panel from L2 for each block: 70% of peak against 9x% here.)
  const int64_t TW = MV * N;
  const int64_t n_rows = g.N * g.out[0] * g.out[1];
  // Outputs beyond the caches are written once, in whole lines: streaming stores skip reading them first.
  const bool stream = g.N * o.bs * int64_t(sizeof(T)) > (int64_t(4) << 20);
  parallel_for(n_rows, 1, [&](int64_t b, int64_t e) {
    std::vector<T> packed(size_t(g.Cout * TW));
    std::vector<const T*> rows(static_cast<size_t>(g.Cout));
    for (int64_t oc = 0; oc < g.Cout; ++oc) rows[size_t(oc)] = packed.data() + oc * TW;
    alignas(64) T tmp[2 * N];
    const std::vector<int64_t> tile_at = row_tiles(OW, N);
    for (int64_t it = b; it < e; ++it) {
      const int64_t oh = it % g.out[1], od = (it / g.out[1]) % g.out[0], n = it / (g.out[1] * g.out[0]);
      const T* gyrow = gy + n * g.y_bs + (od * g.out[1] + oh) * OW;
      for (int64_t ti = 0; ti + 1 < int64_t(tile_at.size()); ++ti) {
        const int64_t j0 = tile_at[size_t(ti)], valid = tile_at[size_t(ti + 1)] - j0;
        const bool last_tile = ti + 2 == int64_t(tile_at.size());
        const int nv = int(ceil_div(valid, N));
        for (int64_t oc = 0; oc < g.Cout; ++oc) {
          T* dst = packed.data() + oc * TW;
          const T* src = gyrow + oc * plane_y + j0;
          copy_grad(dst, src, act_at(a.act, gy, src), valid, a.act);
          std::fill(dst + valid, dst + TW, T(0));
        }
        // The next tile's rows (the next gy row's first at the row end), spread over this tile's micro-kernel calls.
        const T* next = !last_tile ? gyrow + j0 + valid : it + 1 < e ? gy + ((it + 1) / (g.out[1] * g.out[0])) * g.y_bs +
                        ((((it + 1) / g.out[1]) % g.out[0]) * g.out[1] + (it + 1) % g.out[1]) * OW : nullptr;
        const int64_t calls = taps * CBn, per_call = next ? ceil_div(g.Cout, calls) : 0;
        int64_t pf = 0;
        for (int64_t tap = 0; tap < taps; ++tap) {
          const int64_t id = od * g.s[0] - g.lo[0] + tap / g.k[1], ih = oh * g.s[1] - g.lo[1] + tap % g.k[1];
          const bool inside = id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1];
          T* gxrow = o.y + n * o.bs + (id * g.in[1] + ih) * W;
          for (int64_t cb = 0; cb < CBn;) {  // one channel block, or two at once on AVX-512
            const int ncb = gemm_blocks_at(cb, CBn);
            for (int64_t q = 0; q < per_call * ncb && pf < g.Cout; ++q, ++pf) {
              __builtin_prefetch(next + pf * plane_y, 0, 3);
              __builtin_prefetch(next + pf * plane_y + TW - 1, 0, 3);
            }
            if (!inside) {
              cb += ncb;
              continue;
            }
            V acc[2 * MO][MV];
            for (int i = 0; i < 2 * MO; ++i)
              for (int jj = 0; jj < MV; ++jj) acc[i][jj] = V::zero();
            const T* w0 = wp.data() + (tap * CBn + cb) * g.Cout * MO;
            gemm_blocks<T>(ncb, nv, rows.data(), g.Cout, 0, w0, w0 + g.Cout * MO, acc);
            for (int64_t cc = 0; cc < ncb * CB && (cb * CB + cc) < g.Cin; ++cc) {  // gx channel cb * CB + cc
              const int c = int(cc);
              const V bias = V::set1(bias_of(cb * CB + c));
              T* dst = gxrow + (cb * CB + c) * o.plane;
              for (int jj = 0; jj < nv; ++jj) {
                const int64_t first = 2 * (j0 + jj * N) - lo;  // gx column of kw = 0 of the first lane
                const int64_t count = 2 * std::min<int64_t>(N, valid - jj * N);
                const V v0 = acc[2 * c][jj] + bias, v1 = acc[2 * c + 1][jj] + bias;
                if (first >= 0 && count == 2 * N && first + 2 * N <= W) {
                  if (stream && (reinterpret_cast<uintptr_t>(dst + first) & 31) == 0)
                    V::stream_interleaved(dst + first, v0, v1);
                  else
                    V::store_interleaved(dst + first, v0, v1);
                  continue;
                }
                V::store_interleaved(tmp, v0, v1);
                for (int64_t l = std::max<int64_t>(0, -first); l < count && first + l < W; ++l) dst[first + l] = tmp[l];
              }
            }
            cb += ncb;
          }
          if (inside && last_tile && covered_w < W)  // after the last tile: the columns no tap reaches
            for (int64_t c = 0; c < g.Cin; ++c)
              std::fill(gxrow + c * o.plane + covered_w, gxrow + c * o.plane + W, bias_of(c));
        }
      }
    }
    if (stream) V::stream_fence();
  });
}

// The gradient of the input (plus a bias: the transposed convolution). Stride 1: a forward convolution of gy with
// the flipped, transposed kernel (padding d * (k - 1) - lo on each side), on Winograd or the direct kernel. Kernel
// equal to the stride: grad_input_disjoint. Otherwise one stride-1 correlation per phase of gx (below).
template <class T>
void grad_input_typed(const ConvGradInputArgs& a) {
  const ConvGeom& g = a.g;
  const T* w = static_cast<const T*>(a.w);
  ConvInput gy = single_input(a.gy, g.y_bs, g.Cout);
  gy.act = a.act;
  const int64_t K = g.k[0] * g.k[1] * g.k[2], wc = a.w_cin;
  RowOut<T> o{static_cast<T*>(a.gx), g.Cin, {g.N, g.in[0], g.in[1]}, g.in[2], g.in[0] * g.in[1] * g.in[2],
              g.x_bs, static_cast<const T*>(a.b), Act::none, T(0)};
  if (disjoint_taps(g)) {
    grad_input_disjoint<T>(a, o);
    return;
  }
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
#if CK_SIMD_AVX2
    if constexpr (std::is_same<T, float>::value) {
      if (use_winograd(t, a.algo)) {
        const auto Wp = wino::weights_for(w, g.Cin, g.Cout * g.k[0], ceil_div(g.Cin, MO), true, wc, g.k[0]);
        const wino::Weights& W = *Wp;
        if (W.finite) {
          winograd_forward(t, gy, W, o);
          return;
        }
      }
    }
#endif
    // wt[c][o][k'] = w[o][c][K - 1 - k'] (all three kernel dims reversed at once).
    const std::vector<T> wp = pack_weights<T>(g.Cin, g.Cout * K, [&](int64_t c, int64_t e) {
      const int64_t oc = e / K, k = e % K;
      return w[(oc * wc + c) * K + (K - 1 - k)];
    });
    if (taps_dont_overlap(t)) {  // 1x1: a GEMM (the head of a U-Net, StarDist's prob / dist)
      forward_disjoint<T>(t, gy, wp.data(), o);
      return;
    }
    run_rows<T, PanelRows<T>>(o, wp.data(), panel_rows_of(t, 1),
                              [&](int64_t cw) { return PanelRows<T>(t, gy, cw, 1); });
    return;
  }
  // Stride > 1: split gx by phase (r_d, r_h, r_w) = position mod stride. Along each dim only the taps k with
  // (r + lo - k d) divisible by s reach phase r, at output offsets c_k = (r + lo - k d) / s that are evenly
  // spaced, so each phase is a stride-1 correlation of gy with those taps (reversed), run on the direct kernel
  // and stored every s-th element. (A gather over all taps wasted 1 - 1/s^2 of its products on zeros and ran
  // at 0.4x torch; measured below.)
  struct Taps {
    int64_t n = 0, k_first = 0, k_step = 1, c_first = 0, c_step = 1;
  };
  auto taps_of = [&](int a, int64_t r) {
    Taps t;
    const int64_t s = g.s[a], d = g.d[a];
    for (int64_t k = g.k[a] - 1; k >= 0; --k) {
      const int64_t v = r + g.lo[a] - k * d;
      if (((v % s) + s) % s) continue;
      const int64_t c = (v >= 0 ? v / s : -((-v) / s));  // exact: v is a multiple of s
      if (t.n == 0) {
        t.k_first = k;
        t.c_first = c;
      } else if (t.n == 1) {
        t.k_step = t.k_first - k;
        t.c_step = c - t.c_first;
      }
      ++t.n;
    }
    return t;
  };
  bool all_phases_hit = true;
  for (int a = 0; a < 3; ++a)
    for (int64_t r = 0; r < std::min(g.s[a], g.in[a]); ++r) all_phases_hit = all_phases_hit && taps_of(a, r).n > 0;
  if (!all_phases_hit)  // some input positions receive no gradient: zero (or the bias), the phases overwrite theirs
    parallel_for(g.N * g.Cin, 1, [&](int64_t b, int64_t e) {
      for (int64_t nc = b; nc < e; ++nc) {
        T* p = o.y + (nc / g.Cin) * g.x_bs + (nc % g.Cin) * o.plane;
        std::fill(p, p + o.plane, o.bias ? o.bias[nc % g.Cin] : T(0));
      }
    });
  for (int64_t r0 = 0; r0 < std::min(g.s[0], g.in[0]); ++r0)
    for (int64_t r1 = 0; r1 < std::min(g.s[1], g.in[1]); ++r1)
      for (int64_t r2 = 0; r2 < std::min(g.s[2], g.in[2]); ++r2) {
        const int64_t r[3] = {r0, r1, r2};
        Taps tp[3];
        ConvGeom t = g;
        bool empty = false;
        for (int a = 0; a < 3; ++a) {
          tp[a] = taps_of(a, r[a]);
          empty = empty || tp[a].n == 0;
          t.in[a] = g.out[a];
          t.out[a] = ceil_div(g.in[a] - r[a], g.s[a]);
          t.k[a] = tp[a].n;
          t.s[a] = 1;
          t.d[a] = tp[a].c_step;
          t.lo[a] = -tp[a].c_first;
        }
        if (empty) continue;
        t.Cin = g.Cout;
        t.Cout = g.Cin;
        t.x_bs = g.y_bs;
        t.y_bs = g.x_bs;
        t.pad = PadMode::zeros;
        const int64_t Kt = t.k[0] * t.k[1] * t.k[2];
        const std::vector<T> wp = pack_weights<T>(g.Cin, g.Cout * Kt, [&](int64_t c, int64_t e) {
          const int64_t oc = e / Kt, kt = e % Kt;
          const int64_t tw = kt % t.k[2], th = (kt / t.k[2]) % t.k[1], td = kt / (t.k[2] * t.k[1]);
          const int64_t kd = tp[0].k_first - td * tp[0].k_step, kh = tp[1].k_first - th * tp[1].k_step;
          const int64_t kw = tp[2].k_first - tw * tp[2].k_step;
          return w[(oc * wc + c) * K + (kd * g.k[1] + kh) * g.k[2] + kw];
        });
        RowOut<T> op = o;
        op.rows[1] = t.out[0];
        op.rows[2] = t.out[1];
        op.cols = t.out[2];
        op.mem_h = g.in[1];
        op.mem_w = g.in[2];
        for (int a = 0; a < 3; ++a) {
          op.step[a] = g.s[a];
          op.off[a] = r[a];
        }
        run_rows<T, PanelRows<T>>(op, wp.data(), panel_rows_of(t, 1),
                                  [&](int64_t cw) { return PanelRows<T>(t, gy, cw, 1); });
      }
}

// ---- grad weight: MO output channels x 3 (entry, tap) columns, reduced over the pixels of a tile ----------

// Rows of gy are zero past `valid` (up to row_len, whole vectors), where the columns hold inputs that only outputs
// outside the output read: those lanes of the last vector are masked to 0 rather than multiplied by gy's zeros, so
// an inf or NaN there adds nothing (torch's sum never reads it).
template <class T>
void micro_gw(int64_t nrows, const T* gt, int64_t row_len, int64_t valid, int64_t oc_stride, const T* const* cols,
              int64_t col_stride, Vec<T> (&acc)[MO][3]) {
  using V = Vec<T>;
  V a[MO][3];
  for (int i = 0; i < MO; ++i)
    for (int t = 0; t < 3; ++t) a[i][t] = V::zero();
  const int64_t full = std::min(row_len, valid / V::N * V::N);
  auto step = [&](const T* gp, V x0, V x1, V x2, int64_t v) __attribute__((always_inline)) {
    for (int i = 0; i < MO; ++i) {
      const V gv = V::load(gp + i * oc_stride + v);
      a[i][0] = V::fmadd(gv, x0, a[i][0]);
      a[i][1] = V::fmadd(gv, x1, a[i][1]);
      a[i][2] = V::fmadd(gv, x2, a[i][2]);
    }
  };
  for (int64_t j = 0; j < nrows; ++j) {
    const T* gp = gt + j * row_len;
    const T* c0 = cols[j * col_stride];
    const T* c1 = cols[j * col_stride + 1];
    const T* c2 = cols[j * col_stride + 2];
    for (int64_t v = 0; v < full; v += V::N) step(gp, V::load(c0 + v), V::load(c1 + v), V::load(c2 + v), v);
    for (int64_t v = full; v < row_len; v += V::N) {
      const int64_t n = valid - v;
      step(gp, V::first_lanes(V::load(c0 + v), n), V::first_lanes(V::load(c1 + v), n),
           V::first_lanes(V::load(c2 + v), n), v);
    }
  }
  for (int i = 0; i < MO; ++i)
    for (int t = 0; t < 3; ++t) acc[i][t] = a[i][t];
}

// out[i] += the lane sum of v[i], i < 4 (the accumulators of MO = 4 channels for one entry-tap).
template <class V, class T>
inline void reduce4_add(const V* v, T* out) {
  for (int i = 0; i < 4; ++i) out[i] += v[i].hsum();
}
#if CK_SIMD_AVX2
inline void reduce4_add(const Vec<float>* v, float* out) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(v[0].v, v[1].v), _mm256_hadd_ps(v[2].v, v[3].v));
  const __m128 r = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  _mm_storeu_ps(out, _mm_add_ps(_mm_loadu_ps(out), r));
}
inline void reduce4_add(const Vec<double>* v, double* out) {
  const __m256d h1 = _mm256_hadd_pd(v[0].v, v[1].v), h2 = _mm256_hadd_pd(v[2].v, v[3].v);
  const __m256d r = _mm256_add_pd(_mm256_permute2f128_pd(h1, h2, 0x20), _mm256_permute2f128_pd(h1, h2, 0x31));
  _mm256_storeu_pd(out, _mm256_add_pd(_mm256_loadu_pd(out), r));
}
#endif
static_assert(MO == 4, "reduce4_add reduces MO = 4 accumulators");

#if CK_SIMD_AVX2
// The weight gradient through Winograd F(3x3, 4x4), float32 3x3 at stride 1 and dilation 1: the transpose of the
// forward's F(4x4, 3x3), with the same B and with A and G trading places,
//   gw = G^T [ sum over tiles of (A gy_tile A^T) .* (B^T x_tile B) ] G,
// so per 6x6 input tile and 4x4 gy tile 36 products stand for the 144 of the direct sum (the transforms are the
// forward's panel and input transform for x, a6 for gy). The sum over tiles is 36 GEMMs M[xi][k][e] = sum_t
// Y[xi][k][t] X[xi][e][t] on the forward's micro-kernel, the tiles as its entries (Y packed MO channels per tile
// as its weights, X channel-contiguous per tile as its input rows); G^T M G runs once at the end, in double. A
// 3x3x3 kernel's depth taps are entries e = (c, kd), as in the forward. Blocks of up to TB tiles, tile rows
// grouped when narrower, keep each GEMM's sum over many tiles in registers; each thread sums its own M over a
// fixed range of blocks (deterministic for a fixed thread count). The bias gradient is the sum of Y at
// xi = (1, 1) (A's second row is all ones).
//
// Non-finite and huge values (as wino::Weights explains for the forward): here |X| <= 100 max|x| (B as there),
// |Y| <= 225 max|gy| (A's row sums reach 15), and M sums up to T tiles of X Y, so a tile takes the transforms
// when max|x| <= FLT_MAX / 200, max|gy| <= FLT_MAX / 450 and max|x| max|gy| <= FLT_MAX / (45000 T): no
// intermediate overflows and the direct sum of its products is finite too. Other tiles are taken out of the
// GEMMs (their X and Y rows zeroed) and add their products of gy and x directly, only over outputs inside the output
// (the transforms' zero padding of gy past the output times an inf x would make NaN where torch has none).
void winograd_grad_weight(const ConvGradWeightArgs& a) {
  using V = Vec<float>;
  constexpr int N = V::N;
  const ConvGeom& g = a.g;
  using GV = wino::GV;  // the GEMMs' vectors of entries
  const int64_t KD = g.k[0], E = g.Cin * KD, OB = ceil_div(g.Cout, MO), CP = OB * MO, EP = round_up(E, GV::N);
  const int64_t TH = ceil_div(g.out[1], 4), TWt = ceil_div(g.out[2], 4), OD = g.out[0];
  // Tiles per block: 64 rather than 96 made the 64^2 and 128^2 layers of the U-Net 6-10% faster on AVX-512 (their
  // Xt, 36 x tiles x channels, is written and read back from L2 in every block).
  constexpr int64_t TB = 64;
  // Tile rows per block: narrow rows grouped up to TB tiles, never more than a plane has (a block stays in its
  // plane, and the panels are sized for G rows: 96 rows of a 4 x 4 gradient had each thread fault in 56 MB).
  const int64_t G = std::min(TH, TWt < TB ? std::max<int64_t>(1, TB / TWt) : int64_t(1));
  const int64_t TC = ceil_div(TWt, ceil_div(TWt, TB));  // tiles per row chunk: balanced, at most TB
  const int64_t THg = ceil_div(TH, G), n_chunks = ceil_div(TWt, TC);
  const int64_t TP = round_up(G * TC, N) + N;  // tile pitch of X and Y (a vector may run past a row's last tile)
  // x as the forward's panel sees it (a 6x6-tap, stride-4 convolution whose outputs are tiles), gy as a 4x4-tap,
  // stride-4 one (positions past the output are zeros; a fused activation's derivative applies as it is copied).
  ConvGeom px = g;
  px.k[1] = px.k[2] = 6;
  px.s[1] = px.s[2] = 4;
  px.out[1] = TH;
  px.out[2] = TWt;
  ConvGeom py = g;
  py.Cin = g.Cout;
  for (int i = 0; i < 3; ++i) {
    py.in[i] = g.out[i];
    py.k[i] = py.s[i] = i == 0 ? 1 : 4;
    py.d[i] = 1;
    py.lo[i] = 0;
  }
  py.out[0] = OD;
  py.out[1] = TH;
  py.out[2] = TWt;
  py.pad = PadMode::zeros;
  py.x_bs = g.y_bs;
  ConvInput gyin = single_input(a.gy, g.y_bs, g.Cout);
  gyin.act = a.act;
  const int64_t blocks = g.N * OD * THg * n_chunks;
  const int T_ = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), blocks)));
  std::vector<Scratch<float>> parts(static_cast<size_t>(T_));
  std::vector<std::vector<float>> bparts(static_cast<size_t>(T_));
  // The direct sums of the tiles kept out of the transforms, per thread ([Cout][E][9], then [Cout]); allocated
  // when a thread meets one.
  std::vector<std::vector<double>> dparts(static_cast<size_t>(T_));
  constexpr double fmax = 3.4028234663852886e38;
  const float x_lim = float(fmax / 200), gy_lim = float(fmax / 450);
  const float prod_lim = float(fmax / (45000.0 * double(g.N * OD * TH * TWt)));
  parallel_for(T_, 0, [&](int64_t t0_, int64_t t1_) {
    for (int64_t slot = t0_; slot < t1_; ++slot) {
      Scratch<float>& Mp = parts[size_t(slot)];
      std::vector<float>& bp = bparts[size_t(slot)];
      Mp = Scratch<float>(size_t(36 * OB * EP * MO), 0.f);
      bp.assign(size_t(CP), 0.f);
      PanelRows<float> sx(px, a.x, TC, G), sy(py, gyin, TC, G);
      sx.track_magnitude();
      sy.track_magnitude();
      const int64_t* offx = sx.tap_offsets();
      const int64_t* offy = sy.tap_offsets();
      std::vector<double>& dp = dparts[size_t(slot)];
      // Xt[xi][tile][e] (channels contiguous) and Yt[xi][ob][tile][i] (MO channels per tile): the forward's GEMM
      // with tiles as its entries, Yt as its packed weights and Xt's rows as its input rows.
      Scratch<float> Xt(size_t(36 * TP * EP), 0.f), Yt(size_t(36 * OB * TP * MO), 0.f);
      std::vector<const float*> xrows(size_t(36 * TP));
      for (int64_t q = 0; q < 36 * TP; ++q) xrows[size_t(q)] = Xt.data() + q * EP;
      const int64_t b0 = blocks * slot / T_, b1 = blocks * (slot + 1) / T_;
      // Blocks are chunk-major (each chunk keeps its panels' column window), then (n, od, tile row group).
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t ch = blk / (g.N * OD * THg), rest = blk % (g.N * OD * THg);
        const int64_t trg = rest % THg, od = (rest / THg) % OD, n = rest / (THg * OD);
        const int64_t tc0 = ch * TC, tvalid = std::min(TC, TWt - tc0);
        if (blk == b0 || rest == 0) {
          sx.set_chunk(tc0, tvalid);
          sy.set_chunk(tc0, tvalid);
        }
        const int64_t t_row0 = trg * G, gr = std::min(G, TH - t_row0), ntiles = gr * tvalid;
        int64_t nn[TB], odd[TB], th[TB];
        for (int64_t j = 0; j < gr; ++j) {
          nn[j] = n;
          odd[j] = od;
          th[j] = t_row0 + j;
        }
        sx.fill(nn, odd, th, gr);
        sy.fill(nn, odd, th, gr);
        // The next block's rows, prefetched while this block's GEMMs run: its copies had waited on memory.
        sx.clear_queue();
        sy.clear_queue();
        if (blk + 1 < b1 && (rest + 1) % (g.N * OD * THg) != 0) {
          const int64_t nr = rest + 1, ntrg = nr % THg, nod = (nr / THg) % OD, nnn = nr / (THg * OD);
          for (int64_t j = 0; j < G && ntrg * G + j < TH; ++j) {
            sx.queue_next(nnn, nod, ntrg * G + j, true);
            sy.queue_next(nnn, nod, ntrg * G + j, true);
          }
        }
        const int pf_per_gemm = int(ceil_div(sx.queued_lines() + sy.queued_lines(), 36 * OB * ceil_div(EP, MV * GV::N)));
        // Xt: the forward's input transform, 8 channels x 8 tiles at a time through a stack buffer, then an 8 x 8
        // transpose per xi. Row j of the group starts at tile j * tvalid, rows in order: the tiles a vector writes
        // past a row's end are overwritten by the next row's.
        for (int64_t j = 0; j < gr; ++j) {
          const float* const* rows = sx.rows(j);
          for (int64_t t0 = 0; t0 < tvalid; t0 += N)
            for (int64_t e0 = 0; e0 < EP; e0 += N) {
              alignas(32) float tmp[36][N][N];  // [xi][channel][tile]
              for (int c = 0; c < N; ++c) {
                const int64_t e = e0 + c;
                if (e < E)
                  wino::input_tiles(rows + e * 6, offx, t0, tmp[0][c], N * N);
                else
                  for (int xi = 0; xi < 36; ++xi) _mm256_store_ps(tmp[xi][c], _mm256_setzero_ps());
              }
              for (int xi = 0; xi < 36; ++xi)
                wino::transpose8(tmp[xi][0], Xt.data() + (xi * TP + j * tvalid + t0) * EP + e0, EP);
            }
        }
        // Yt: A gy A^T for the MO channels of a block and 8 tiles, interleaved channel-fastest; the same placement.
        for (int64_t j = 0; j < gr; ++j) {
          const float* const* rows = sy.rows(j);
          for (int64_t ob = 0; ob < OB; ++ob)
            for (int64_t t0 = 0; t0 < tvalid; t0 += N) {
              __m256 tmp[36][MO];
              for (int i = 0; i < MO; ++i) {
                const int64_t k = ob * MO + i;
                if (k >= g.Cout) {
                  for (int xi = 0; xi < 36; ++xi) tmp[xi][i] = _mm256_setzero_ps();
                  continue;
                }
                __m256 h[4][6];
                for (int r = 0; r < 4; ++r) {
                  const float* p = rows[k * 4 + r] + t0;
                  __m256 v[4];
                  for (int q = 0; q < 4; ++q) v[q] = _mm256_loadu_ps(p + offy[q]);
                  wino::a6(v, h[r]);
                }
                for (int c = 0; c < 6; ++c) {
                  __m256 col[4], y[6];
                  for (int r = 0; r < 4; ++r) col[r] = h[r][c];
                  wino::a6(col, y);
                  for (int q = 0; q < 6; ++q) tmp[q * 6 + c][i] = y[q];
                }
              }
              for (int xi = 0; xi < 36; ++xi)
                wino::store_interleaved4(Yt.data() + ((xi * OB + ob) * TP + j * tvalid + t0) * MO, tmp[xi], 32,
                                         false);
            }
        }
        for (int64_t j = 0; j < gr; ++j) {  // tiles over the limits: out of the GEMMs, into direct sums
          const float xm = from_bits(sx.magnitude(j)), gm = from_bits(sy.magnitude(j));
          if (xm <= x_lim && gm <= gy_lim && xm * gm <= prod_lim) continue;
          const float* const* rx = sx.rows(j);
          const float* const* ry = sy.rows(j);
          for (int64_t t0 = 0; t0 < tvalid; t0 += N) {
            alignas(32) float xmax[N], gmax[N];
            _mm256_store_ps(xmax, wino::tile_max(rx, offx, E, 6, t0));
            _mm256_store_ps(gmax, wino::tile_max(ry, offy, g.Cout, 4, t0));
            for (int64_t l = 0; l < N && t0 + l < tvalid; ++l) {
              if (xmax[l] <= x_lim && gmax[l] <= gy_lim && xmax[l] * gmax[l] <= prod_lim) continue;
              const int64_t t = t0 + l, lane = j * tvalid + t;
              for (int64_t xi = 0; xi < 36; ++xi) {
                std::fill_n(Xt.data() + (xi * TP + lane) * EP, EP, 0.f);
                for (int64_t ob = 0; ob < OB; ++ob) std::fill_n(Yt.data() + ((xi * OB + ob) * TP + lane) * MO, MO, 0.f);
              }
              if (dp.empty()) dp.assign(size_t(g.Cout * E * 9 + g.Cout), 0.0);
              wino::direct_tile_grad(rx, offx, ry, offy, t, E, g.Cout, std::min<int64_t>(4, g.out[1] - (t_row0 + j) * 4),
                                     std::min<int64_t>(4, g.out[2] - (tc0 + t) * 4), dp.data(), dp.data() + g.Cout * E * 9);
            }
          }
        }
        for (int64_t ob = 0; ob < OB; ++ob) {  // the bias: Y at xi = (1, 1) is each tile's sum of gy
          const float* row = Yt.data() + (7 * OB + ob) * TP * MO;
          __m128 sum = _mm_setzero_ps();
          for (int64_t t = 0; t < ntiles; ++t) sum = _mm_add_ps(sum, _mm_loadu_ps(row + t * MO));
          _mm_storeu_ps(bp.data() + ob * MO, _mm_add_ps(_mm_loadu_ps(bp.data() + ob * MO), sum));
        }
        // The 36 GEMMs over this block's tiles: the forward's micro-kernel, a block of MO output channels x MV
        // vectors of entries (24, or 48 on AVX-512) accumulated over every tile in registers, then added to M once
        // (the reduction over tiles in vector lanes it replaces ended every 12 vectors in horizontal adds: the
        // weight gradient ran 1.5x the forward's time at 128 channels). Padded entries read Xt columns that stay
        // zero.
        for (int64_t xi = 0; xi < 36; ++xi)
          for (int64_t e0 = 0; e0 < EP; e0 += MV * GV::N) {
            const int nvec = int(std::min<int64_t>(MV, (EP - e0) / GV::N));
            for (int64_t ob = 0; ob < OB;) {  // one block of MO channels, or two at once on AVX-512
              const int nb = gemm_blocks_at(ob, OB);
              const float* y0 = Yt.data() + (xi * OB + ob) * TP * MO;
              GV acc[2 * MO][MV];
              for (int i = 0; i < 2 * MO; ++i)
                for (int jv = 0; jv < MV; ++jv) acc[i][jv] = GV::zero();
              gemm_blocks<float>(nb, nvec, xrows.data() + xi * TP, ntiles, e0, y0, y0 + TP * MO, acc);
              for (int b = 0; b < nb; ++b) {
                float* pb = Mp.data() + ((xi * OB + ob + b) * EP + e0) * MO;
                const GV(*ab)[MV] = acc + b * MO;  // this block's MO rows
                for (int jv = 0; jv < nvec; ++jv)
                  for (int h = 0; h < GV::N / N; ++h) {
                    const __m256 v[MO] = {wino::half8(ab[0][jv], h), wino::half8(ab[1][jv], h),
                                          wino::half8(ab[2][jv], h), wino::half8(ab[3][jv], h)};
                    wino::add_interleaved4(pb + (jv * GV::N + h * N) * MO, v);
                  }
              }
              sx.pump(pf_per_gemm * nb);
              sy.pump(pf_per_gemm * nb);
              ob += nb;
            }
          }
      }
    }
  });
  // Sum the threads' M in a fixed order, then G^T M G, in double, for the MO output channels of a block at once
  // (their M values are adjacent; separable: 3x6 then 3x3).
  using D = __m256d;
  static_assert(MO == 4, "one AVX2 double vector per block of MO output channels");
  float* gw = static_cast<float*>(a.gw);
  float* gb = static_cast<float*>(a.gb);
  parallel_for(OB, 1, [&](int64_t ob0, int64_t ob1) {
    alignas(32) double out[4];
    for (int64_t ob = ob0; ob < ob1; ++ob)
      for (int64_t e = 0; e < E; ++e) {
        D M[36];
        for (int64_t xi = 0; xi < 36; ++xi) {
          D s = _mm256_setzero_pd();
          for (int t = 0; t < T_; ++t)
            s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm_loadu_ps(parts[size_t(t)].data() + ((xi * OB + ob) * EP + e) * MO)));
          M[xi] = s;
        }
        D Tm[3][6];
        for (int r = 0; r < 3; ++r)
          for (int q = 0; q < 6; ++q) {
            D s = _mm256_setzero_pd();
            for (int p = 0; p < 6; ++p) s = _mm256_fmadd_pd(_mm256_set1_pd(wino::kG[p][r]), M[p * 6 + q], s);
            Tm[r][q] = s;
          }
        for (int r = 0; r < 3; ++r)
          for (int c = 0; c < 3; ++c) {
            D s = _mm256_setzero_pd();
            for (int q = 0; q < 6; ++q) s = _mm256_fmadd_pd(Tm[r][q], _mm256_set1_pd(wino::kG[q][c]), s);
            _mm256_store_pd(out, s);
            for (int i = 0; i < MO && ob * MO + i < g.Cout; ++i) {
              const int64_t at = ((ob * MO + i) * E + e) * 9 + r * 3 + c;
              for (int t = 0; t < T_; ++t)
                if (!dparts[size_t(t)].empty()) out[i] += dparts[size_t(t)][size_t(at)];
              gw[at] = float(out[i]);
            }
          }
      }
  });
  if (gb)
    for (int64_t k = 0; k < g.Cout; ++k) {
      double s = 0;
      for (int t = 0; t < T_; ++t) {
        s += bparts[size_t(t)][size_t(k)];
        if (!dparts[size_t(t)].empty()) s += dparts[size_t(t)][size_t(g.Cout * E * 9 + k)];
      }
      gb[k] = float(s);
    }
}
#endif  // CK_SIMD_AVX2

// Channels [c0, c0 + cc) of a (possibly multi-part) input, as an input of its own.
template <class T>
ConvInput channel_slice(const ConvInput& x, int64_t c0, int64_t cc, int64_t plane) {
  ConvInput r;
  r.parts = 0;
  for (int p = 0; p < x.parts; ++p) {
    const int64_t lo = std::max(c0, x.c_begin[p]), hi = std::min(c0 + cc, x.c_begin[p + 1]);
    if (lo >= hi) continue;
    r.data[r.parts] = static_cast<const T*>(x.data[p]) + (lo - x.c_begin[p]) * (x.cs[p] ? x.cs[p] : plane);
    r.bs[r.parts] = x.bs[p];
    r.cs[r.parts] = x.cs[p];
    r.c_begin[r.parts + 1] = hi - c0;
    ++r.parts;
  }
  return r;
}

// dst[c * ds + r] = src[r * ss + c] for r < rows, c < cols: in 8 x 8 and 4 x 4 blocks of float in registers
// (the k == s weight gradient packs both operands transposed; scalar strided copies were ~30% of its packing).
template <class T>
void transpose_block(const T* src, int64_t ss, T* dst, int64_t ds, int64_t rows, int64_t cols) {
  int64_t r0 = 0, c_done = 0;
#if CK_SIMD_AVX2
  if constexpr (std::is_same<T, float>::value) {
    c_done = cols - cols % 8;
    for (; r0 + 8 <= rows; r0 += 8)
      for (int64_t c0 = 0; c0 < c_done; c0 += 8) {
        const float* s0 = src + r0 * ss + c0;
        __m256 t[8], u[8];
        for (int i = 0; i < 8; i += 2) {
          const __m256 a = _mm256_loadu_ps(s0 + i * ss), b = _mm256_loadu_ps(s0 + (i + 1) * ss);
          t[i] = _mm256_unpacklo_ps(a, b);
          t[i + 1] = _mm256_unpackhi_ps(a, b);
        }
        for (int i = 0; i < 8; i += 4) {
          u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
          u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
          u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
          u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        float* d0 = dst + c0 * ds + r0;
        for (int i = 0; i < 4; ++i) {
          _mm256_storeu_ps(d0 + i * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
          _mm256_storeu_ps(d0 + (i + 4) * ds, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
        }
      }
    for (; r0 + 4 <= rows; r0 += 4)
      for (int64_t c0 = 0; c0 + 4 <= c_done; c0 += 4) {
        __m128 a = _mm_loadu_ps(src + r0 * ss + c0), b = _mm_loadu_ps(src + (r0 + 1) * ss + c0);
        __m128 c = _mm_loadu_ps(src + (r0 + 2) * ss + c0), d = _mm_loadu_ps(src + (r0 + 3) * ss + c0);
        _MM_TRANSPOSE4_PS(a, b, c, d);
        float* d0 = dst + c0 * ds + r0;
        _mm_storeu_ps(d0, a), _mm_storeu_ps(d0 + ds, b), _mm_storeu_ps(d0 + 2 * ds, c), _mm_storeu_ps(d0 + 3 * ds, d);
      }
    for (int64_t r = 0; r < r0; ++r)  // the columns past the last block of 8
      for (int64_t c = c_done; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
  }
#endif
  for (int64_t r = r0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
}

// The weight gradient of such a convolution is a plain GEMM over pixels, gw[oc][e] = sum_p gy[oc][p] X[e][p],
// e = (c, kd, kh, kw), X[e][p] the input at tap e of output p. Each block of output pixels packs X transposed
// ([p][EB entries], from L1) and gy ([ob][p][MO], the activation's derivative applied), and the forward's GEMM
// micro-kernel runs with the pixels as its reduction: MV vectors of entries x MO output channels, broadcasting gy,
// two channel blocks at once on AVX-512. (The direct path's pixel reductions read both operands as vectors: 7
// loads per 12 FMAs, 55-65% of peak on these shapes.)
template <class T>
void grad_weight_disjoint(const ConvGradWeightArgs& a) {
  using V = simd::Wide<T>;
  constexpr int N = V::N, EB = MV * N;  // entries per block: MV vectors
  const ConvGeom& g = a.g;
  const T* gy = static_cast<const T*>(a.gy);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], E = g.Cin * K, OW = g.out[2];
  const int64_t OB = ceil_div(g.Cout, MO), CP = OB * MO, NEB = ceil_div(E, EB);
  const int64_t out_plane = g.out[0] * g.out[1] * OW, in_plane = g.in[0] * g.in[1] * g.in[2];
  const int64_t n_rows = g.N * g.out[0] * g.out[1];
  // Blocks of whole output rows, about 24 KiB of packed X (256 pixels x 24 entries of float on AVX2, 128 x 48 on
  // AVX-512): it is re-read from L1 for every block of output channels.
  const int64_t px = std::max<int64_t>(1, (int64_t(24) << 10) / (EB * int64_t(sizeof(T))));
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>(n_rows, px / std::max<int64_t>(1, OW)));
  const int64_t PB = RB * OW, n_blocks = ceil_div(n_rows, RB);
  const int T_ = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), n_blocks)));
  std::vector<std::vector<T>> parts(static_cast<size_t>(T_)), bparts(static_cast<size_t>(T_));
  parallel_for(T_, 0, [&](int64_t t0_, int64_t t1_) {
    for (int64_t slot = t0_; slot < t1_; ++slot) {
      std::vector<T>& part = parts[size_t(slot)];  // [ob][entry block][MO][EB]
      std::vector<T>& bpart = bparts[size_t(slot)];
      part.assign(size_t(OB * NEB * MO * EB), T(0));
      bpart.assign(size_t(CP), T(0));
      std::vector<T> gt(size_t(CP * PB), T(0)), grow(size_t(MO * PB)), xt(size_t(PB * EB)), xr(size_t(EB * PB));
      std::vector<const T*> xrows(static_cast<size_t>(PB));  // the micro-kernel's "entries": pixels
      for (int64_t p = 0; p < PB; ++p) xrows[size_t(p)] = xt.data() + p * EB;
      SpreadPrefetch pf;  // input lines of the next entry block
      // gy's row `row` of channel oc; the input row entry e reads for output row `row` (null: padding), and its kw.
      auto gy_row = [&](int64_t oc, int64_t row) {
        const int64_t oh = row % g.out[1], od = (row / g.out[1]) % g.out[0], n = row / (g.out[1] * g.out[0]);
        return gy + n * g.y_bs + oc * out_plane + (od * g.out[1] + oh) * OW;
      };
      auto entry_row = [&](int64_t e, int64_t row, int64_t* kw_out) -> const T* {
        const int64_t c = e / K, kk = e % K, kh = (kk / g.k[2]) % g.k[1], kd = kk / (g.k[2] * g.k[1]);
        *kw_out = kk % g.k[2];
        const int64_t oh = row % g.out[1], od = (row / g.out[1]) % g.out[0], n = row / (g.out[1] * g.out[0]);
        const int64_t id = conv::map_index(conv::tap_input(od, kd, g.s[0], 1, g.lo[0]), g.in[0], g.pad);
        const int64_t ih = conv::map_index(conv::tap_input(oh, kh, g.s[1], 1, g.lo[1]), g.in[1], g.pad);
        if (id < 0 || ih < 0) return nullptr;
        return conv::input_plane<T>(a.x, n, c, in_plane) + (id * g.in[1] + ih) * g.in[2];
      };
      const int64_t b0 = n_blocks * slot / T_, b1 = n_blocks * (slot + 1) / T_;
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t r0 = blk * RB, nr = std::min(RB, n_rows - r0), np = nr * OW;
        // gy of the block's rows (consecutive in a plane unless they cross (n, od)), MO channels at a time, then
        // interleaved by channel block.
        for (int64_t ob = 0; ob < OB; ++ob) {
          for (int i = 0; i < MO; ++i) {
            const int64_t oc = ob * MO + i;
            T* dst = grow.data() + i * PB;
            if (oc >= g.Cout) {
              std::fill(dst, dst + np, T(0));
              continue;
            }
            for (int64_t j = 0; j < nr; ++j) {
              const T* src = gy_row(oc, r0 + j);
              copy_grad(dst + j * OW, src, act_at(a.act, gy, src), OW, a.act);
            }
            using P = Vec<T>;
            P s0 = P::zero(), s1 = P::zero();
            int64_t p = 0;
            for (; p + 2 * P::N <= np; p += 2 * P::N) s0 = s0 + P::load(dst + p), s1 = s1 + P::load(dst + p + P::N);
            T tail = T(0);
            for (; p < np; ++p) tail += dst[p];
            bpart[size_t(oc)] += (s0 + s1).hsum() + tail;
          }
          transpose_block(grow.data(), PB, gt.data() + ob * PB * MO, int64_t(MO), int64_t(MO), np);
        }
        for (int64_t eb = 0; eb < NEB; ++eb) {
          // Prefetched a few lines per channel block while this entry block runs: the next entry block's input
          // rows (the next pixel block's first at the last), and a share of the next pixel block's gy rows. Packing
          // waited on them (~17% and ~12% of a k2s2 256 -> 128 weight gradient): too many streams for the hardware
          // prefetchers. The kw > 0 entries read the row of kw = 0.
          pf.clear();
          const bool last_eb = eb + 1 == NEB;
          const int64_t nb_r0 = last_eb ? r0 + RB : r0, nb_nr = std::min(RB, n_rows - nb_r0);
          if (!last_eb || blk + 1 < b1) {
            const int64_t e0 = last_eb ? 0 : (eb + 1) * EB;
            for (int64_t jj = 0; jj < EB && e0 + jj < E; ++jj)
              for (int64_t j = 0; j < nb_nr; ++j) {
                int64_t kw;
                const T* r = entry_row(e0 + jj, nb_r0 + j, &kw);
                if (r && !(kw > 0 && jj > 0)) pf.add_span(r, g.in[2]);
              }
          }
          if (blk + 1 < b1) {
            const int64_t nr1 = std::min(RB, n_rows - r0 - RB);
            for (int64_t oc = g.Cout * eb / NEB; oc < g.Cout * (eb + 1) / NEB; ++oc)
              for (int64_t j = 0; j < nr1; ++j) pf.add_span(gy_row(oc, r0 + RB + j), OW);
          }
          pf.spread_over(OB);
          const int64_t ne = std::min<int64_t>(EB, E - eb * EB);
          // X for entries eb * EB ..: xr[j][p] (zero past the last entry), then transposed into xt[p][j].
          for (int64_t jj = 0; jj < EB; ++jj) {
            T* dst = xr.data() + jj * PB;
            if (jj >= ne) {
              std::fill(dst, dst + np, T(0));
              continue;
            }
            for (int64_t j = 0; j < nr; ++j, dst += OW) {
              int64_t kw;
              const T* xrow = entry_row(eb * EB + jj, r0 + j, &kw);
              if (!xrow) {
                std::fill(dst, dst + OW, T(0));
                continue;
              }
              // outputs [in0, in1) read inside the row (ow * s + off): copied without mapping each position
              // (the mapping was ~20% of a 256 -> 128 k2s2 weight gradient)
              const int64_t s2 = g.s[2], off = kw - g.lo[2];
              const int64_t in0 = std::min(OW, off >= 0 ? 0 : ceil_div(-off, s2));
              const int64_t in1 = std::max(in0, std::min(OW, g.in[2] - off <= 0 ? 0 : ceil_div(g.in[2] - off, s2)));
              for (int64_t ow = 0; ow < in0; ++ow) {
                const int64_t iw = conv::map_index(conv::tap_input(ow, kw, s2, 1, g.lo[2]), g.in[2], g.pad);
                dst[ow] = iw < 0 ? T(0) : xrow[iw];
              }
              const T* src = xrow + off;
              int64_t ow = in0;
              using P = Vec<T>;
              if (s2 == 1 || s2 == 2)
                for (; ow + P::N <= in1 && (s2 == 1 || off + 2 * ow >= 1 || 2 * P::N <= g.in[2]); ow += P::N)
                  load_step<P>(xrow, off + ow * s2, s2, g.in[2]).store(dst + ow);
              for (; ow < in1; ++ow) dst[ow] = src[ow * s2];
              for (ow = in1; ow < OW; ++ow) {
                const int64_t iw = conv::map_index(conv::tap_input(ow, kw, s2, 1, g.lo[2]), g.in[2], g.pad);
                dst[ow] = iw < 0 ? T(0) : xrow[iw];
              }
            }
          }
          transpose_block(xr.data(), PB, xt.data(), int64_t(EB), int64_t(EB), np);
          const int nv = int(ceil_div(ne, N));
          for (int64_t ob = 0; ob < OB;) {  // one block of MO channels, or two at once on AVX-512
            const int nob = gemm_blocks_at(ob, OB);
            pf.step();
            if (nob == 2) pf.step();
            // channel i's partial sums: block ob + i / MO's (NEB * MO * EB apart), row i % MO
            auto acc_at = [&](int i) { return part.data() + ((ob + i / MO) * NEB + eb) * MO * EB + (i % MO) * EB; };
            V acc[2 * MO][MV];
            for (int i = 0; i < nob * MO; ++i)
              for (int v = 0; v < MV; ++v) acc[i][v] = V::load(acc_at(i) + v * N);
            const T* g0 = gt.data() + ob * PB * MO;
            gemm_blocks<T>(nob, nv, xrows.data(), np, 0, g0, g0 + PB * MO, acc);
            for (int i = 0; i < nob * MO; ++i)
              for (int v = 0; v < MV; ++v) acc[i][v].store(acc_at(i) + v * N);
            ob += nob;
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
      for (int t = 0; t < T_; ++t) s += parts[size_t(t)][size_t(((ob * NEB + e / EB) * MO + i) * EB + e % EB)];
      gw[oc * E + e] = s;
    }
    if (gb) {
      T s = T(0);
      for (int t = 0; t < T_; ++t) s += bparts[size_t(t)][size_t(oc)];
      gb[oc] = s;
    }
  }
}

template <class T>
void grad_weight_typed(const ConvGradWeightArgs& a) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const ConvGeom& g = a.g;
#if CK_SIMD_AVX2
  if constexpr (std::is_same<T, float>::value) {
    if (use_winograd(g, a.algo)) {
      winograd_grad_weight(a);
      return;
    }
  }
#endif
  if (taps_dont_overlap(g)) {
    grad_weight_disjoint<T>(a);
    return;
  }
  const T* gy = static_cast<const T*>(a.gy);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], E = g.Cin * K;
  const int64_t OB = ceil_div(g.Cout, MO), CP = OB * MO;
  const int64_t OW = g.out[2], n_rows = g.N * g.out[0] * g.out[1];
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2], in_plane = g.in[0] * g.in[1] * g.in[2];
  // Blocks of RB output rows x L columns: long enough (~512-1024 pixels) to amortise the reduction of the
  // accumulators, small enough that the panel stays in the caches across output-channel blocks.
  const int64_t RB = std::max<int64_t>(1, std::min<int64_t>({n_rows, int64_t(64), 1024 / round_up(OW, N)}));
  // Channel chunks of CC channels: the panel of a block holds every channel's rows, so with many channels
  // (deep layers: 256 channels of 32^2) it would only fit a few columns, and the micro-kernel's reduction would
  // run over a vector or two per row (measured: 59 GFLOP/s against 9x with chunks on one core). A chunk keeps
  // about 3/4 of the panel budget for at least 64 columns or the whole row.
  ConvGeom gc = g;
  gc.Cin = 1;
  const int64_t cols_min = std::min<int64_t>(round_up(OW, N), 64);
  const int64_t per_channel = panel_rows_of(gc, RB) * g.s[2] * (cols_min + 2 * N) * int64_t(sizeof(T));
  const int64_t cc_max = std::max<int64_t>(1, std::min<int64_t>(g.Cin, (int64_t(120) << 10) / per_channel));
  const int64_t n_chunks = ceil_div(g.Cin, cc_max), CC = ceil_div(g.Cin, n_chunks);
  gc.Cin = CC;
  const int64_t L = chunk_cols(OW, panel_rows_of(gc, RB) * g.s[2], N, sizeof(T));
  const int64_t n_cc = ceil_div(OW, L);
  // Entry-taps of a chunk padded to whole groups of three: the padding reads zero rows and is not accumulated.
  const int64_t EP = round_up(CC * K, 3), EA = E + 2;
  // Contiguous row ranges per thread (panel rows are reused between consecutive row blocks).
  const int T_ = int(std::max<int64_t>(1, std::min<int64_t>(num_threads(), ceil_div(n_rows, RB))));
  std::vector<std::vector<T>> parts(static_cast<size_t>(T_)), bparts(static_cast<size_t>(T_));
  parallel_for(T_, 0, [&](int64_t t0, int64_t t1) {
    for (int64_t slot = t0; slot < t1; ++slot) {
      std::vector<T>& part = parts[size_t(slot)];
      std::vector<T>& bpart = bparts[size_t(slot)];
      part.assign(size_t(OB * EA * MO), T(0));
      bpart.assign(size_t(CP), T(0));
      std::vector<T> gt(size_t(CP * RB * L));
      std::vector<const T*> cols(size_t(RB * EP));
      const int64_t rb_begin = ceil_div(n_rows, RB) * slot / T_, rb_end = ceil_div(n_rows, RB) * (slot + 1) / T_;
      for (int64_t c0 = 0; c0 < g.Cin; c0 += CC) {
        ConvGeom gk = g;
        gk.Cin = std::min(CC, g.Cin - c0);
        const int64_t Ek = gk.Cin * K;
        PanelRows<T> src(gk, channel_slice<T>(a.x, c0, gk.Cin, in_plane), L, RB);
        const int64_t R = src.entries(), KW = src.taps();
        const int64_t* offs = src.tap_offsets();
        for (int64_t cc = 0; cc < n_cc; ++cc) {
          const int64_t ow0 = cc * L, valid = std::min(L, OW - ow0), Lv = round_up(valid, N);
          src.set_chunk(ow0, valid);
          for (int64_t rb = rb_begin; rb < rb_end; ++rb) {
            const int64_t r0 = rb * RB, nr = std::min(RB, n_rows - r0);
            int64_t nn[64], od[64], oh[64];
            for (int64_t j = 0; j < nr; ++j) {
              const int64_t row = r0 + j;
              oh[j] = row % g.out[1];
              od[j] = (row / g.out[1]) % g.out[0];
              nn[j] = row / (g.out[1] * g.out[0]);
            }
            src.fill(nn, od, oh, nr);
            // Prefetch the next block's new input rows and its gy rows while this block computes.
            src.clear_queue();
            for (int64_t j = 0; j < RB && rb + 1 < rb_end && r0 + RB + j < n_rows; ++j) {
              const int64_t row = r0 + RB + j, ph = row % g.out[1], pd = (row / g.out[1]) % g.out[0];
              const int64_t pn = row / (g.out[1] * g.out[0]);
              src.queue_next(pn, pd, ph, true);
              for (int64_t oc = 0; oc < g.Cout; ++oc)
                src.queue(gy + pn * g.y_bs + oc * out_plane + (pd * g.out[1] + ph) * OW + ow0,
                          valid * int64_t(sizeof(T)));
            }
            // The block of gy, zero-padded to whole vectors and to MO-channel blocks: [oc][row][col]. The bias
            // gradient sums it once (first chunk).
            for (int64_t oc = 0; oc < CP; ++oc)
              for (int64_t j = 0; j < nr; ++j) {
                T* dst = gt.data() + (oc * RB + j) * Lv;
                if (oc < g.Cout) {
                  const T* srow = gy + nn[j] * g.y_bs + oc * out_plane + (od[j] * g.out[1] + oh[j]) * OW + ow0;
                  copy_grad(dst, srow, act_at(a.act, gy, srow), valid, a.act);
                  std::fill(dst + valid, dst + Lv, T(0));
                  if (c0 == 0) {
                    V s = V::zero();
                    for (int64_t v = 0; v < Lv; v += N) s = s + V::load(dst + v);
                    bpart[size_t(oc)] += s.hsum();
                  }
                } else {
                  std::fill(dst, dst + Lv, T(0));
                }
              }
            for (int64_t j = 0; j < nr; ++j) {
              const T* const* p = src.rows(j);
              const T** c = cols.data() + j * EP;
              for (int64_t r = 0; r < R; ++r)
                for (int64_t t = 0; t < KW; ++t) c[r * KW + t] = p[r] + offs[t];
              for (int64_t e = Ek; e < EP; ++e) c[e] = src.zero();
            }
            for (int64_t ob = 0; ob < OB; ++ob) {
              const T* gtile = gt.data() + ob * MO * RB * Lv;
              T* pb = part.data() + (ob * EA + c0 * K) * MO;
              for (int64_t c = 0; c < Ek; c += 3) {
                V acc[MO][3];
                micro_gw<T>(nr, gtile, Lv, valid, RB * Lv, cols.data() + c, EP, acc);
                // Padding entries (past Ek) read zero rows: 0 * gy, NaN where gy is not finite, and their slots
                // are the next chunk's first entries.
                for (int t = 0; t < 3 && c + t < Ek; ++t) {
                  const V col[MO] = {acc[0][t], acc[1][t], acc[2][t], acc[3][t]};
                  reduce4_add(col, pb + (c + t) * MO);
                }
                src.pump(3);
              }
            }
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
      for (int t = 0; t < T_; ++t) s += parts[size_t(t)][size_t((ob * EA + e) * MO + i)];
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

// Per-channel sums over batch and plane (a transposed convolution's bias gradient); fixed order per channel. gy's
// planes are dense, its channels and batch items at any stride (a channel part of a wider gradient).
template <class T>
void bias_grad_typed(const ConvBiasGradArgs& a) {
  using V = Vec<T>;
  constexpr int N = V::N;
  const T* gy = static_cast<const T*>(a.gy);
  T* gb = static_cast<T*>(a.gb);
  parallel_for(a.C, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      V acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
      T tail = T(0);
      for (int64_t n = 0; n < a.N; ++n) {
        const T* p = gy + n * a.bs + c * a.cs;
        int64_t i = 0;
        for (; i + 4 * N <= a.plane; i += 4 * N)
          for (int k = 0; k < 4; ++k) acc[k] = acc[k] + V::load(p + i + k * N);
        for (; i < a.plane; ++i) tail += p[i];
      }
      gb[c] = ((acc[0] + acc[1]) + (acc[2] + acc[3])).hsum() + tail;
    }
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

// ---- sparse geometry (ConvAlgo::gather): windows that reach far beyond the input --------------------------
//
// A stride of 2^31 - 1, or a dilation of 2^30 with as much padding, on a small input: the panels above would hold
// rows as wide as the windows' reach (gigabytes, a minute of copying zeros) for a few outputs. Here each dim lists,
// once, the (tap, input position) pairs of every output that read the input (conv_math.h's maps), and every
// output, input gradient or weight tap sums over those pairs only: the work is that of the products that read
// real data. Scalar loops: these shapes are rare and their work small.

// Along one dim, output o reads input pos[j] through tap tap[j] for j in [at[o], at[o + 1]).
struct TapList {
  std::vector<int64_t> at, tap, pos;
};

TapList tap_list(int64_t out, int64_t in, int64_t k, int64_t s, int64_t d, int64_t lo, PadMode pad) {
  TapList t;
  t.at.push_back(0);
  for (int64_t o = 0; o < out; ++o) {
    int64_t k0 = 0, k1 = k;
    if (pad == PadMode::zeros) {  // only the taps that land in [0, in): never a walk over a window of padding
      const int64_t base = conv::tap_input(o, 0, s, d, lo);
      k0 = base >= 0 ? 0 : std::min(k, (-base + d - 1) / d);
      k1 = base > in - 1 ? 0 : std::min(k, (in - 1 - base) / d + 1);
    }
    for (int64_t kk = k0; kk < k1; ++kk) {
      const int64_t i = conv::map_index(conv::tap_input(o, kk, s, d, lo), in, pad);
      if (i < 0) continue;
      t.tap.push_back(kk);
      t.pos.push_back(i);
    }
    t.at.push_back(int64_t(t.tap.size()));
  }
  return t;
}

// The same pairs grouped by input position: input i is read by output pos[j] through tap tap[j], j in [at[i],
// at[i + 1]), outputs in increasing order.
TapList invert(const TapList& f, int64_t in) {
  TapList r;
  r.at.assign(size_t(in + 1), 0);
  for (int64_t p : f.pos) ++r.at[size_t(p + 1)];
  for (int64_t i = 0; i < in; ++i) r.at[size_t(i + 1)] += r.at[size_t(i)];
  r.tap.resize(f.tap.size());
  r.pos.resize(f.pos.size());
  std::vector<int64_t> fill(r.at.begin(), r.at.end() - 1);
  for (int64_t o = 0; o + 1 < int64_t(f.at.size()); ++o)
    for (int64_t j = f.at[size_t(o)]; j < f.at[size_t(o + 1)]; ++j) {
      const int64_t q = fill[size_t(f.pos[size_t(j)])]++;
      r.tap[size_t(q)] = f.tap[size_t(j)];
      r.pos[size_t(q)] = o;
    }
  return r;
}

struct TapLists {
  TapList d[3];
  TapLists(const ConvGeom& g, bool by_input) {
    for (int a = 0; a < 3; ++a) {
      d[a] = tap_list(g.out[a], g.in[a], g.k[a], g.s[a], g.d[a], g.lo[a], g.pad);
      if (by_input) d[a] = invert(d[a], g.in[a]);
    }
  }
  // f(flat tap, flat position) for every pair of the point (p0, p1, p2); sizes: the kernel's and the positions'.
  template <class F>
  void each(int64_t p0, int64_t p1, int64_t p2, const int64_t* k, const int64_t* n, const F& f) const {
    for (int64_t j0 = d[0].at[size_t(p0)]; j0 < d[0].at[size_t(p0 + 1)]; ++j0)
      for (int64_t j1 = d[1].at[size_t(p1)]; j1 < d[1].at[size_t(p1 + 1)]; ++j1) {
        const int64_t t01 = d[0].tap[size_t(j0)] * k[1] + d[1].tap[size_t(j1)];
        const int64_t q01 = d[0].pos[size_t(j0)] * n[1] + d[1].pos[size_t(j1)];
        for (int64_t j2 = d[2].at[size_t(p2)]; j2 < d[2].at[size_t(p2 + 1)]; ++j2)
          f(t01 * k[2] + d[2].tap[size_t(j2)], q01 * n[2] + d[2].pos[size_t(j2)]);
      }
  }
};

// A gradient input read through a fused activation's derivative (y laid out as gy), or as it is.
template <class T>
T grad_at(const T* gy, const T* y, int64_t i, const ActGrad& a) {
  return y ? conv::act_grad(y[i], gy[i], a.act, T(a.act == Act::relu ? 0.0 : a.slope)) : gy[i];
}

template <class T>
void forward_gather(const ConvForwardArgs& a) {
  const ConvGeom& g = a.g;
  const TapLists L(g, false);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], pin = g.in[0] * g.in[1] * g.in[2];
  const int64_t pout = g.out[0] * g.out[1] * g.out[2];
  const T* w = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.b);
  const T* x0 = static_cast<const T*>(a.x.data[0]);
  parallel_for(g.N * g.Cout, 1, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / g.Cout, oc = nc % g.Cout;
      T* y = static_cast<T*>(a.y) + n * g.y_bs + oc * (a.y_cs ? a.y_cs : pout);
      for (int64_t od = 0; od < g.out[0]; ++od)
        for (int64_t oh = 0; oh < g.out[1]; ++oh)
          for (int64_t ow = 0; ow < g.out[2]; ++ow) {
            T acc = bias ? bias[oc] : T(0);
            for (int64_t c = 0; c < g.Cin; ++c) {
              const T* xp = conv::input_plane<T>(a.x, n, c, pin);
              const T* yp = act_at(a.x.act, x0, xp);
              const T* wc = w + (oc * g.Cin + c) * K;
              L.each(od, oh, ow, g.k, g.in, [&](int64_t t, int64_t q) { acc += wc[t] * grad_at(xp, yp, q, a.x.act); });
            }
            y[(od * g.out[1] + oh) * g.out[2] + ow] = conv::act_apply(acc, a.act, T(a.slope));
          }
    }
  });
}

// Any padding mode: the tap lists map every tap through it, so an input reached by several padded positions
// (replicate, reflect, circular) sums them all.
template <class T>
void grad_input_gather(const ConvGradInputArgs& a) {
  const ConvGeom& g = a.g;
  const TapLists L(g, true);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], pin = g.in[0] * g.in[1] * g.in[2];
  const int64_t pout = g.out[0] * g.out[1] * g.out[2];
  const T* w = static_cast<const T*>(a.w);
  const T* bias = static_cast<const T*>(a.b);
  const T* gy = static_cast<const T*>(a.gy);
  const T* ya = static_cast<const T*>(a.act.y);
  parallel_for(g.N * g.Cin, 1, [&](int64_t b, int64_t e) {
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc / g.Cin, c = nc % g.Cin;
      T* gx = static_cast<T*>(a.gx) + n * g.x_bs + c * pin;
      for (int64_t id = 0; id < g.in[0]; ++id)
        for (int64_t ih = 0; ih < g.in[1]; ++ih)
          for (int64_t iw = 0; iw < g.in[2]; ++iw) {
            T acc = bias ? bias[c] : T(0);
            for (int64_t oc = 0; oc < g.Cout; ++oc) {
              const T* gp = gy + n * g.y_bs + oc * pout;
              const T* yp = ya ? ya + n * g.y_bs + oc * pout : nullptr;
              const T* wc = w + (oc * a.w_cin + c) * K;
              L.each(id, ih, iw, g.k, g.out, [&](int64_t t, int64_t q) { acc += wc[t] * grad_at(gp, yp, q, a.act); });
            }
            gx[(id * g.in[1] + ih) * g.in[2] + iw] = acc;
          }
    }
  });
}

template <class T>
void grad_weight_gather(const ConvGradWeightArgs& a) {
  const ConvGeom& g = a.g;
  const TapLists L(g, false);
  const int64_t K = g.k[0] * g.k[1] * g.k[2], pin = g.in[0] * g.in[1] * g.in[2];
  const int64_t pout = g.out[0] * g.out[1] * g.out[2];
  const T* gy = static_cast<const T*>(a.gy);
  const T* ya = static_cast<const T*>(a.act.y);
  parallel_for(g.Cout * g.Cin, 1, [&](int64_t b, int64_t e) {
    std::vector<T> acc(static_cast<size_t>(K));
    for (int64_t pair = b; pair < e; ++pair) {
      const int64_t oc = pair / g.Cin, c = pair % g.Cin;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t n = 0; n < g.N; ++n) {
        const T* xp = conv::input_plane<T>(a.x, n, c, pin);
        const T* gp = gy + n * g.y_bs + oc * pout;
        const T* yp = ya ? ya + n * g.y_bs + oc * pout : nullptr;
        for (int64_t od = 0; od < g.out[0]; ++od)
          for (int64_t oh = 0; oh < g.out[1]; ++oh)
            for (int64_t ow = 0; ow < g.out[2]; ++ow) {
              const T gv = grad_at(gp, yp, (od * g.out[1] + oh) * g.out[2] + ow, a.act);
              L.each(od, oh, ow, g.k, g.in, [&](int64_t t, int64_t q) { acc[size_t(t)] += gv * xp[q]; });
            }
      }
      std::copy(acc.begin(), acc.end(), static_cast<T*>(a.gw) + pair * K);
    }
  });
  if (!a.gb) return;
  parallel_for(g.Cout, 1, [&](int64_t b, int64_t e) {
    for (int64_t oc = b; oc < e; ++oc) {
      T s = T(0);
      for (int64_t n = 0; n < g.N; ++n) {
        const T* gp = gy + n * g.y_bs + oc * pout;
        const T* yp = ya ? ya + n * g.y_bs + oc * pout : nullptr;
        for (int64_t i = 0; i < pout; ++i) s += grad_at(gp, yp, i, a.act);
      }
      static_cast<T*>(a.gb)[oc] = s;
    }
  });
}

}  // namespace

void conv_forward_cpu(const ConvForwardArgs& a) {
  if (a.algo == ConvAlgo::gather)
    CK_DISPATCH_FLOAT(a.dtype, forward_gather<scalar_t>(a));
  else
    CK_DISPATCH_FLOAT(a.dtype, forward_typed<scalar_t>(a));
}
void conv_grad_input_cpu(const ConvGradInputArgs& a) {
  if (a.algo == ConvAlgo::gather)
    CK_DISPATCH_FLOAT(a.dtype, grad_input_gather<scalar_t>(a));
  else
    CK_DISPATCH_FLOAT(a.dtype, grad_input_typed<scalar_t>(a));
}
void conv_grad_weight_cpu(const ConvGradWeightArgs& a) {
  if (a.algo == ConvAlgo::gather)
    CK_DISPATCH_FLOAT(a.dtype, grad_weight_gather<scalar_t>(a));
  else
    CK_DISPATCH_FLOAT(a.dtype, grad_weight_typed<scalar_t>(a));
}
void conv_fold_cpu(const ConvFoldArgs& a) { CK_DISPATCH_FLOAT(a.dtype, fold_typed<scalar_t>(a)); }
void conv_bias_grad_cpu(const ConvBiasGradArgs& a) { CK_DISPATCH_FLOAT(a.dtype, bias_grad_typed<scalar_t>(a)); }

CK_NS_END
