// Direct 3x3 convolution on bf16 activations with vdpbf16ps (AVX512_BF16): each instruction
// multiplies pairs of bf16 (two input channels) and adds both products into fp32, twice the
// FMA rate of fp32. Only the functions marked REDKERN_BF16DOT use the instruction; dispatch
// calls them only on CPUs that report avx512bf16.
//
// Same structure as conv3x3_direct.h: rows of bf16 input kept with one zero pixel either
// side and an even channel count (pairs), PX pixels x NV vectors of 16 output channels in
// registers, weights packed as bf16 pairs [tap][cin/2][cout_pad][2] (pack.cpp).
#include "cpu/conv3x3_direct.h"
#include "cpu/isa_avx512/simd_avx512.h"

#define REDKERN_BF16DOT __attribute__((target("avx512bf16")))

namespace redkern::cpu {

namespace {

using DotRowJob = direct::RowJob<bf16_t, bf16_t>;  // stride: input channels rounded up to even

template <int PX, int NV>
REDKERN_BF16DOT void dot_block(const DotRowJob& j, int ox, int co) {
  // Loops over PX and NV are unrolled so `acc` stays in registers (see direct_block).
  __m512 acc[PX][NV];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  const int pairs = j.stride / 2;
  for (int ky = 0; ky < 3; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < 3; ++kx) {
      const bf16_t* xp = j.rows[ky] + std::size_t(ox + kx) * j.stride;
      const float* wp = j.packed + std::size_t(ky * 3 + kx) * pairs * j.cout_pad + co;
      for (int cp = 0; cp < pairs; ++cp, xp += 2, wp += j.cout_pad) {
        __m512bh wv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) wv[v] = (__m512bh)_mm512_loadu_ps(wp + v * 16);
#pragma GCC unroll 8
        for (int p = 0; p < PX; ++p) {
          std::int32_t pair;
          std::memcpy(&pair, xp + p * j.stride, sizeof pair);
          const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_dpbf16_ps(acc[p][v], xb, wv[v]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int c = co + v * 16, n = min_int(j.cout - c, 16);
    if (n <= 0) continue;
    const __m512 b = Avx512::loadn(j.bias + c, n);
#pragma GCC unroll 8
    for (int p = 0; p < PX; ++p) {
      const std::size_t at = std::size_t(ox + p) * j.cout + c;
      finish_store<Avx512, bf16_t>(acc[p][v], b, j.extra_row ? j.extra_row + at : nullptr,
                                   j.y_row + at, n, j.epi);
    }
  }
}

template <int NV, int PX>
REDKERN_BF16DOT void dot_block_px(const DotRowJob& j, int px, int ox, int co) {
  if constexpr (PX > 1) {
    if (px < PX) return dot_block_px<NV, PX - 1>(j, px, ox, co);
  }
  dot_block<PX, NV>(j, ox, co);
}

template <int NV>
REDKERN_BF16DOT void dot_block_nv(const DotRowJob& j, int nv, int px, int ox, int co) {
  if constexpr (NV > 1) {
    if (nv < NV) return dot_block_nv<NV - 1>(j, nv, px, ox, co);
  }
  dot_block_px<NV, Avx512::kDirectPixels>(j, px, ox, co);
}

// One output row, pixels outer and output channels inner (all nine taps per block: the
// bf16 weights are half the size of the fp32 ones).
REDKERN_BF16DOT void dot_row(const DotRowJob& j) {
  constexpr int PX = Avx512::kDirectPixels, NV = Avx512::kDirectVecs;
  for (int ox = 0; ox < j.w; ox += PX)
    for (int co = 0; co < j.cout_pad; co += NV * 16)
      dot_block_nv<NV>(j, min_int(NV, (j.cout_pad - co) / 16), min_int(PX, j.w - ox), ox, co);
}

}  // namespace

void conv3x3_direct_bf16dot(const Conv3x3Args& a) {
  direct::for_each_row<Avx512, bf16_t, bf16_t>(a, div_up(a.cin, 2) * 2, dot_row);
}

}  // namespace redkern::cpu
