// The small SIMD vocabulary CPU kernels use: AVX2 vectors when the TU is built with -mavx2 -mfma, else one lane;
// Wide<float>, 512 bits when built with AVX-512, for the GEMM micro-kernels alone.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/hd.h"
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define CK_SIMD_AVX2 1
#endif

CK_NS_BEGIN
namespace simd {

// One lane with the vector interface: the portable path and every vector loop's tail.
template <class T>
struct Scalar {
  static constexpr int N = 1;
  T v;
  static Scalar load(const T* p) { return {*p}; }
  static Scalar set1(T x) { return {x}; }
  static Scalar zero() { return {T(0)}; }
  void store(T* p) const { *p = v; }
  static Scalar load_even(const T* p) { return {p[0]}; }
  static Scalar load_odd(const T* p) { return {p[1]}; }
  static Scalar load_strided(const T* p, int64_t) { return {p[0]}; }
  static Scalar load_u8(const uint8_t* p) { return {T(*p)}; }
  void store_u8(uint8_t* p) const { *p = uint8_t(v); }
  static void store_interleaved(T* p, Scalar a, Scalar b) {
    p[0] = a.v;
    p[1] = b.v;
  }
  static void stream_interleaved(T* p, Scalar a, Scalar b) { store_interleaved(p, a, b); }
  static void stream_fence() {}
  static void take_max(Scalar& m, Scalar& idx, Scalar x, Scalar k) {
    if (x.v > m.v || std::isnan(x.v)) {
      m.v = x.v;
      idx.v = k.v;
    }
  }
  static void take_max(Scalar& m, Scalar x) {
    if (x.v > m.v || std::isnan(x.v)) m.v = x.v;
  }
  static Scalar select_eq(Scalar a, Scalar b, Scalar g) { return {a.v == b.v ? g.v : T(0)}; }
  static int count_eq(Scalar a, Scalar b) { return a.v == b.v; }
  Scalar operator+(Scalar o) const { return {v + o.v}; }
  Scalar operator-(Scalar o) const { return {v - o.v}; }
  Scalar operator*(Scalar o) const { return {v * o.v}; }
  static Scalar fmadd(Scalar a, Scalar b, Scalar c) { return {a.v * b.v + c.v}; }
  static Scalar fnmadd(Scalar a, Scalar b, Scalar c) { return {c.v - a.v * b.v}; }
  // a where v < 0, else v (NaN keeps v): the fused activations' select.
  static Scalar blend_negative(Scalar v, Scalar a) { return {v.v < T(0) ? a.v : v.v}; }
  // a where y > 0, else b (NaN takes b): the fused activations' derivative, read from their output.
  static Scalar select_positive(Scalar y, Scalar a, Scalar b) { return {y.v > T(0) ? a.v : b.v}; }
  // 0 where y <= 0, else g (NaN keeps g): relu's derivative, read from its output (torch's threshold_backward).
  static Scalar zero_where_le0(Scalar y, Scalar g) { return {y.v <= T(0) ? T(0) : g.v}; }
  // v in its first n lanes, 0 (not v * 0, which is NaN for inf) in the others.
  static Scalar first_lanes(Scalar v, int64_t n) { return {n > 0 ? v.v : T(0)}; }
  T hsum() const { return v; }
};

#if CK_SIMD_AVX2
template <class T>
struct Avx2;

template <>
struct Avx2<float> {
  static constexpr int N = 8;
  __m256 v;
  static Avx2 load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Avx2 set1(float x) { return {_mm256_set1_ps(x)}; }
  static Avx2 zero() { return {_mm256_setzero_ps()}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  // p[0], p[2], ..., p[14] and p[1], p[3], ..., p[15] (reads p[0..15]).
  static Avx2 load_even(const float* p) { return {deinterleave(p, 0x88)}; }
  static Avx2 load_odd(const float* p) { return {deinterleave(p, 0xDD)}; }
  static Avx2 load_strided(const float* p, int64_t s) {
    return {_mm256_set_ps(p[7 * s], p[6 * s], p[5 * s], p[4 * s], p[3 * s], p[2 * s], p[s], p[0])};
  }
  // Small non-negative integers stored as float lanes (exact below 2^24): window positions of the max.
  static Avx2 load_u8(const uint8_t* p) {
    return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
  }
  void store_u8(uint8_t* p) const {
    __m256i i = _mm256_cvttps_epi32(v);
    __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packus_epi16(w, w));
  }
  // Writes a0 b0 a1 b1 ... a7 b7 to p[0..15].
  static void store_interleaved(float* p, Avx2 a, Avx2 b) {
    __m256 lo = _mm256_unpacklo_ps(a.v, b.v), hi = _mm256_unpackhi_ps(a.v, b.v);
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  // The same with non-temporal stores (p 32-byte aligned): outputs written once and far larger than the caches
  // skip the read for ownership. stream_fence() orders them before the caller's thread finishes.
  static void stream_interleaved(float* p, Avx2 a, Avx2 b) {
    __m256 lo = _mm256_unpacklo_ps(a.v, b.v), hi = _mm256_unpackhi_ps(a.v, b.v);
    _mm256_stream_ps(p, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_stream_ps(p + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  static void stream_fence() { _mm_sfence(); }
  // torch's max-pool rule, lane-wise: take (x, k) where x > m or x is NaN.
  static void take_max(Avx2& m, Avx2& idx, Avx2 x, Avx2 k) {
    __m256 take = _mm256_or_ps(_mm256_cmp_ps(x.v, m.v, _CMP_GT_OQ), _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
    m.v = _mm256_blendv_ps(m.v, x.v, take);
    idx.v = _mm256_blendv_ps(idx.v, k.v, take);
  }
  static void take_max(Avx2& m, Avx2 x) {
    __m256 take = _mm256_or_ps(_mm256_cmp_ps(x.v, m.v, _CMP_GT_OQ), _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
    m.v = _mm256_blendv_ps(m.v, x.v, take);
  }
  // g where a == b, else 0.
  static Avx2 select_eq(Avx2 a, Avx2 b, Avx2 g) { return {_mm256_and_ps(_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ), g.v)}; }
  static int count_eq(Avx2 a, Avx2 b) { return __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ))); }
  Avx2 operator+(Avx2 o) const { return {_mm256_add_ps(v, o.v)}; }
  Avx2 operator-(Avx2 o) const { return {_mm256_sub_ps(v, o.v)}; }
  Avx2 operator*(Avx2 o) const { return {_mm256_mul_ps(v, o.v)}; }
  static Avx2 fmadd(Avx2 a, Avx2 b, Avx2 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  // c - a b, one rounding.
  static Avx2 fnmadd(Avx2 a, Avx2 b, Avx2 c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
  static Avx2 blend_negative(Avx2 v, Avx2 a) {
    return {_mm256_blendv_ps(v.v, a.v, _mm256_cmp_ps(v.v, _mm256_setzero_ps(), _CMP_LT_OQ))};
  }
  static Avx2 select_positive(Avx2 y, Avx2 a, Avx2 b) {
    return {_mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(y.v, _mm256_setzero_ps(), _CMP_GT_OQ))};
  }
  static Avx2 zero_where_le0(Avx2 y, Avx2 g) {
    return {_mm256_andnot_ps(_mm256_cmp_ps(y.v, _mm256_setzero_ps(), _CMP_LE_OQ), g.v)};
  }
  static Avx2 first_lanes(Avx2 v, int64_t n) {
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return {_mm256_and_ps(v.v, _mm256_castsi256_ps(keep))};
  }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }

 private:
  static __m256 deinterleave(const float* p, int imm) {
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    __m256 s = imm == 0x88 ? _mm256_shuffle_ps(a, b, 0x88) : _mm256_shuffle_ps(a, b, 0xDD);
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
  }
};

template <>
struct Avx2<double> {
  static constexpr int N = 4;
  __m256d v;
  static Avx2 load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Avx2 set1(double x) { return {_mm256_set1_pd(x)}; }
  static Avx2 zero() { return {_mm256_setzero_pd()}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  static Avx2 load_even(const double* p) {
    return {_mm256_permute4x64_pd(_mm256_unpacklo_pd(_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)), 0xD8)};
  }
  static Avx2 load_odd(const double* p) {
    return {_mm256_permute4x64_pd(_mm256_unpackhi_pd(_mm256_loadu_pd(p), _mm256_loadu_pd(p + 4)), 0xD8)};
  }
  static Avx2 load_strided(const double* p, int64_t s) { return {_mm256_set_pd(p[3 * s], p[2 * s], p[s], p[0])}; }
  static Avx2 load_u8(const uint8_t* p) {
    int32_t four;
    std::memcpy(&four, p, 4);
    return {_mm256_cvtepi32_pd(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(four)))};
  }
  void store_u8(uint8_t* p) const {
    __m128i i = _mm256_cvttpd_epi32(v);
    __m128i w = _mm_packus_epi32(i, i);
    int32_t four = _mm_cvtsi128_si32(_mm_packus_epi16(w, w));
    std::memcpy(p, &four, 4);
  }
  static void store_interleaved(double* p, Avx2 a, Avx2 b) {
    __m256d lo = _mm256_unpacklo_pd(a.v, b.v), hi = _mm256_unpackhi_pd(a.v, b.v);
    _mm256_storeu_pd(p, _mm256_permute2f128_pd(lo, hi, 0x20));
    _mm256_storeu_pd(p + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
  }
  static void stream_interleaved(double* p, Avx2 a, Avx2 b) {
    __m256d lo = _mm256_unpacklo_pd(a.v, b.v), hi = _mm256_unpackhi_pd(a.v, b.v);
    _mm256_stream_pd(p, _mm256_permute2f128_pd(lo, hi, 0x20));
    _mm256_stream_pd(p + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
  }
  static void stream_fence() { _mm_sfence(); }
  static void take_max(Avx2& m, Avx2& idx, Avx2 x, Avx2 k) {
    __m256d take = _mm256_or_pd(_mm256_cmp_pd(x.v, m.v, _CMP_GT_OQ), _mm256_cmp_pd(x.v, x.v, _CMP_UNORD_Q));
    m.v = _mm256_blendv_pd(m.v, x.v, take);
    idx.v = _mm256_blendv_pd(idx.v, k.v, take);
  }
  static void take_max(Avx2& m, Avx2 x) {
    __m256d take = _mm256_or_pd(_mm256_cmp_pd(x.v, m.v, _CMP_GT_OQ), _mm256_cmp_pd(x.v, x.v, _CMP_UNORD_Q));
    m.v = _mm256_blendv_pd(m.v, x.v, take);
  }
  static Avx2 select_eq(Avx2 a, Avx2 b, Avx2 g) { return {_mm256_and_pd(_mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ), g.v)}; }
  static int count_eq(Avx2 a, Avx2 b) { return __builtin_popcount(_mm256_movemask_pd(_mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ))); }
  Avx2 operator+(Avx2 o) const { return {_mm256_add_pd(v, o.v)}; }
  Avx2 operator-(Avx2 o) const { return {_mm256_sub_pd(v, o.v)}; }
  Avx2 operator*(Avx2 o) const { return {_mm256_mul_pd(v, o.v)}; }
  static Avx2 fmadd(Avx2 a, Avx2 b, Avx2 c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  static Avx2 fnmadd(Avx2 a, Avx2 b, Avx2 c) { return {_mm256_fnmadd_pd(a.v, b.v, c.v)}; }
  static Avx2 blend_negative(Avx2 v, Avx2 a) {
    return {_mm256_blendv_pd(v.v, a.v, _mm256_cmp_pd(v.v, _mm256_setzero_pd(), _CMP_LT_OQ))};
  }
  static Avx2 select_positive(Avx2 y, Avx2 a, Avx2 b) {
    return {_mm256_blendv_pd(b.v, a.v, _mm256_cmp_pd(y.v, _mm256_setzero_pd(), _CMP_GT_OQ))};
  }
  static Avx2 zero_where_le0(Avx2 y, Avx2 g) {
    return {_mm256_andnot_pd(_mm256_cmp_pd(y.v, _mm256_setzero_pd(), _CMP_LE_OQ), g.v)};
  }
  static Avx2 first_lanes(Avx2 v, int64_t n) {
    const __m256i keep = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n < 4 ? n : 4), _mm256_setr_epi64x(0, 1, 2, 3));
    return {_mm256_and_pd(v.v, _mm256_castsi256_pd(keep))};
  }
  double hsum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

template <class T>
using Vec = Avx2<T>;
#else
template <class T>
using Vec = Scalar<T>;
#endif

// The GEMM micro-kernels' vector (the Winograd products): what their loop needs, 16 lanes on AVX-512. Everything else
// stays on Vec, whose 8 lanes the transforms and the panel layouts are written for; half(h) hands a wide vector's
// lanes 8h .. 8h + 7 back to them.
#if CK_SIMD_AVX2 && defined(__AVX512F__) && defined(__AVX512DQ__)
#define CK_SIMD_AVX512 1
struct Avx512F {
  static constexpr int N = 16;
  __m512 v;
  static Avx512F load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Avx512F set1(float x) { return {_mm512_set1_ps(x)}; }
  static Avx512F zero() { return {_mm512_setzero_ps()}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Avx512F fmadd(Avx512F a, Avx512F b, Avx512F c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Avx512F fnmadd(Avx512F a, Avx512F b, Avx512F c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }
  Avx512F operator+(Avx512F o) const { return {_mm512_add_ps(v, o.v)}; }
  Avx512F operator-(Avx512F o) const { return {_mm512_sub_ps(v, o.v)}; }
  Avx512F operator*(Avx512F o) const { return {_mm512_mul_ps(v, o.v)}; }
  static Avx512F blend_negative(Avx512F v, Avx512F a) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(v.v, _mm512_setzero_ps(), _CMP_LT_OQ), v.v, a.v)};
  }
  Avx2<float> half(int h) const {
    return {h == 0 ? _mm512_castps512_ps256(v) : _mm512_extractf32x8_ps(v, 1)};
  }
  // Writes a0 b0 a1 b1 ... a15 b15 to p[0..31] (streaming: p 32-byte aligned), as Avx2's, one half at a time.
  static void store_interleaved(float* p, Avx512F a, Avx512F b) {
    Avx2<float>::store_interleaved(p, a.half(0), b.half(0));
    Avx2<float>::store_interleaved(p + 16, a.half(1), b.half(1));
  }
  static void stream_interleaved(float* p, Avx512F a, Avx512F b) {
    Avx2<float>::stream_interleaved(p, a.half(0), b.half(0));
    Avx2<float>::stream_interleaved(p + 16, a.half(1), b.half(1));
  }
  static void stream_fence() { _mm_sfence(); }
};
template <class T>
struct WideOf {
  using type = Vec<T>;
};
template <>
struct WideOf<float> {
  using type = Avx512F;
};
template <class T>
using Wide = typename WideOf<T>::type;
#else
template <class T>
using Wide = Vec<T>;
#endif

}  // namespace simd
CK_NS_END
