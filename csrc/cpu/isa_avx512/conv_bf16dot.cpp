// Direct KxK convolution on bf16 activations with vdpbf16ps (AVX512_BF16): each instruction
// multiplies pairs of bf16 (two input channels) and adds both products into fp32, twice the
// FMA rate of fp32. Only the functions marked REDKERN_BF16DOT use the instruction; dispatch
// calls them only on CPUs that report avx512bf16.
//
// Same structure as conv_direct.h: rows of bf16 input kept with pw zero pixels either side
// and an even channel count (pairs; read in place from x when cin is even and pw is 0), PX
// pixels x NV vectors of 16 output channels in registers, weights packed as bf16 pairs
// [tap][cin/2][cout_pad][2] (pack.cpp). 3x3 windows at compile time, others at run time.
#include "cpu/conv_direct.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"

#define REDKERN_BF16DOT __attribute__((target("avx512bf16")))

namespace redkern::cpu {

namespace {

using DotRowJob = direct::RowJob<bf16_t, bf16_t>;  // stride: input channels rounded up to even

template <int KH, int KW, int PX, int NV>
REDKERN_BF16DOT void dot_block(const DotRowJob& j, int ox, int co) {
  // Loops over PX and NV are unrolled so `acc` stays in registers (see direct_block).
  __m512 acc[PX][NV];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  const int kh = KH > 0 ? KH : j.kh, kw = KW > 0 ? KW : j.kw;
  const int pairs = j.stride / 2;
  for (int ky = 0; ky < kh; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < kw; ++kx) {
      const bf16_t* xp = j.rows[ky] + std::size_t(ox + kx) * j.stride;
      const float* wp = j.packed + std::size_t(ky * kw + kx) * pairs * j.cout_pad + co;
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
  direct::store_block<Avx512, bf16_t, PX, NV>(acc, j, ox, co);
}

template <int KH, int KW, int NV, int PX>
REDKERN_BF16DOT void dot_block_px(const DotRowJob& j, int px, int ox, int co) {
  if constexpr (PX > 1) {
    if (px < PX) return dot_block_px<KH, KW, NV, PX - 1>(j, px, ox, co);
  }
  dot_block<KH, KW, PX, NV>(j, ox, co);
}

template <int KH, int KW, int NV>
REDKERN_BF16DOT void dot_block_nv(const DotRowJob& j, int nv, int px, int ox, int co) {
  if constexpr (NV > 1) {
    if (nv < NV) return dot_block_nv<KH, KW, NV - 1>(j, nv, px, ox, co);
  }
  dot_block_px<KH, KW, NV, Avx512::kDirectPixels>(j, px, ox, co);
}

// One output row, pixels outer and output channels inner (all taps per block: the bf16
// weights are half the size of the fp32 ones).
template <int KH, int KW>
REDKERN_BF16DOT void dot_row(const DotRowJob& j) {
  constexpr int PX = Avx512::kDirectPixels, NV = Avx512::kDirectVecs;
  for (int ox = 0; ox < j.w; ox += PX)
    for (int co = 0; co < j.cout_pad; co += NV * 16)
      dot_block_nv<KH, KW, NV>(j, min_int(NV, (j.cout_pad - co) / 16), min_int(PX, j.w - ox), ox, co);
}

}  // namespace

void conv_direct_bf16dot(const ConvArgs& a) {
  const int stride = div_up(a.cin, 2) * 2;
  if (a.kh == 3 && a.kw == 3)
    direct::for_each_row<Avx512, bf16_t, bf16_t>(a, stride, dot_row<3, 3>);
  else
    direct::for_each_row<Avx512, bf16_t, bf16_t>(a, stride, dot_row<0, 0>);
}

}  // namespace redkern::cpu
