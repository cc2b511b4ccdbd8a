// AVX-512 (F, BW, VL, DQ) vectors: 16 floats in a zmm register (32 of them).
#pragma once

#include <immintrin.h>

#include "cpu/kernel_util.h"

namespace redkern::cpu {

// The operations, on `Self`'s fp32 -> bf16 rounding (Self::narrow): Avx512 below rounds with
// integer code; isa_avx512/winograd_bf16.cpp's vector type, compiled for AVX512_BF16, with
// vcvtneps2bf16. A distinct Self gives every template on it its own instantiation
// (kernel_util.h's linkage rule), so code built with AVX512_BF16 never stands in for these.
template <class Self>
struct Avx512Ops {
  static constexpr int kW = 16;
  using V = __m512;
  // Register blocking: 6 pixels (or tiles) x 4 vectors (64 channels) = 24 accumulators,
  // plus 4 weight vectors and 1 broadcast input: 29 of the 32 zmm registers.
  static constexpr int kDirectPixels = 6, kDirectVecs = 4;
  static constexpr int kGemmRows = 6, kGemmVecs = 4;

  static __mmask16 lanes_below(int n) { return __mmask16((1u << n) - 1u); }

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(lanes_below(n), p); }
  static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  static void storen(float* p, V a, int n) { _mm512_mask_storeu_ps(p, lanes_below(n), a); }

  static V widen(__m256i h) {  // 16 bf16 -> 16 fp32 (exact)
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static V load(const bf16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V loadn(const bf16_t* p, int n) { return widen(_mm256_maskz_loadu_epi16(lanes_below(n), p)); }
  static void store(bf16_t* p, V a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), Self::narrow(a)); }
  static void storen(bf16_t* p, V a, int n) { _mm256_mask_storeu_epi16(p, lanes_below(n), Self::narrow(a)); }

  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static float hsum(V a) { return _mm512_reduce_add_ps(a); }
  // max returns its second operand when either is NaN: keep x second so NaN stays NaN.
  static V relu(V a) { return _mm512_max_ps(_mm512_setzero_ps(), a); }
  // m <= 0 ? 0 : a (ReLU's derivative read from its output m; NaN in m keeps a, as PyTorch's
  // threshold_backward does).
  static V where_positive(V m, V a) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_NLE_UQ), a);
  }
  // a <= 0 ? slope * a : a (the ordered compare is false for NaN, which stays NaN).
  static V prelu(V a, V slope) {
    return _mm512_mask_mul_ps(a, _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_LE_OQ), a, slope);
  }
};

struct Avx512 : Avx512Ops<Avx512> {
  static __m256i narrow(V a) {  // 16 fp32 -> 16 bf16, nearest even, NaN kept quiet
    const __m512i u = _mm512_castps_si512(a);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }
};

}  // namespace redkern::cpu
