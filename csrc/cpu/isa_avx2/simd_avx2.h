// AVX2 + FMA vectors: 8 floats in a ymm register (16 of them).
#pragma once

#include <immintrin.h>

#include "cpu/kernel_util.h"

namespace redkern::cpu {

struct Avx2 {
  static constexpr int kW = 8;
  using V = __m256;
  // Register blocking: 6 pixels (or tiles) x 2 vectors = 12 accumulators, plus 2 weight
  // vectors and 1 broadcast input, fills the 16 ymm registers without spilling.
  static constexpr int kDirectPixels = 3, kDirectVecs = 4;
  static constexpr int kGemmRows = 3, kGemmVecs = 4;

  static __m256i lanes_below(int n) {  // all-ones in lanes [0, n)
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V loadn(const float* p, int n) { return _mm256_maskload_ps(p, lanes_below(n)); }
  static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static void storen(float* p, V a, int n) { _mm256_maskstore_ps(p, lanes_below(n), a); }

  static V widen(__m128i h) {  // 8 bf16 -> 8 fp32 (exact)
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static __m128i narrow(V a) {  // 8 fp32 -> 8 bf16, nearest even, NaN kept quiet
    const __m256i u = _mm256_castps_si256(a);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
    // packus works per 128-bit lane: pack, then gather the two low quadwords.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    return _mm256_castsi256_si128(packed);
  }
  static V load(const bf16_t* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static V loadn(const bf16_t* p, int n) {
    alignas(16) bf16_t buf[kW] = {};
    for (int i = 0; i < n; ++i) buf[i] = p[i];
    return widen(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
  }
  static void store(bf16_t* p, V a) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(a)); }
  static void storen(bf16_t* p, V a, int n) {
    alignas(16) bf16_t buf[kW];
    _mm_store_si128(reinterpret_cast<__m128i*>(buf), narrow(a));
    for (int i = 0; i < n; ++i) p[i] = buf[i];
  }

  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static float hsum(V a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  // max returns its second operand when either is NaN: keep x second so NaN stays NaN.
  static V relu(V a) { return _mm256_max_ps(_mm256_setzero_ps(), a); }
  // m <= 0 ? 0 : a (ReLU's derivative read from its output m; NaN in m keeps a, as PyTorch's
  // threshold_backward does).
  static V where_positive(V m, V a) { return _mm256_and_ps(_mm256_cmp_ps(m, _mm256_setzero_ps(), _CMP_NLE_UQ), a); }
  // a <= 0 ? slope * a : a (the ordered compare is false for NaN, which stays NaN).
  static V prelu(V a, V slope) {
    return _mm256_blendv_ps(a, _mm256_mul_ps(a, slope), _mm256_cmp_ps(a, _mm256_setzero_ps(), _CMP_LE_OQ));
  }
};

}  // namespace redkern::cpu
