// Winograd F(4x4,3x3) on bf16 activations with a bf16 GEMM: V = B^T d B is stored as bf16
// (rounded once, from the fp32 transform), U = G g G^T as bf16 (rounded once, from fp64),
// and each of the 36 products M[pos] = V[pos] * U[pos] accumulates in fp32; the input and
// output transforms, the bias and the epilogue stay fp32 (winograd.h). Two engines:
//   - vdpbf16ps (AVX512_BF16): pairs of input channels per instruction, twice the fp32 FMA
//     rate, register-blocked like the fp32 GEMM (6 tiles x 64 output channels);
//   - AMX (AMX-TILE, AMX-BF16): 16x16 fp32 tiles accumulating 16x32 by 32x16 bf16 products,
//     2x2 tiles (32 tiles x 32 output channels) per block.
// Both read U packed as bf16 pairs [36][cin_pairs][cout_pad][2] (input channels ci even, ci
// odd per 32-bit word), cin_pairs = cin rounded up to 32, halved (pack.cpp): one layout for
// both, so AMX's 32-deep K steps need no edge case; V's rows are padded alike, with zeros.
//
// This unit is compiled with AVX512_BF16 and AMX (CMakeLists.txt) and dispatch calls it only
// on CPUs with AVX512_BF16 (and, for AMX, AMX-BF16 granted by the kernel). Its vector type is
// its own (Avx512Bf16), so none of its template instances can be merged with the plain avx512
// units' (kernel_util.h's linkage rule).
#include <omp.h>

#include <cstdint>
#include <cstring>

#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"
#include "cpu/winograd.h"

namespace redkern::cpu {

namespace {

// AVX-512 with the bf16 rounding in one instruction (vcvtneps2bf16: nearest even, NaN stays
// NaN; it reads and writes subnormals as zero, which bf16 activations never need).
struct Avx512Bf16 : Avx512Ops<Avx512Bf16> {
  static __m256i narrow(V a) { return (__m256i)_mm512_cvtneps_pbh(a); }
};

using Geo = winograd::Geometry<Avx512Bf16>;

// V's row stride (bf16 elements) and U's pair count for `cin` input channels.
int bf16_cin_stride(int cin) { return div_up(cin, 32) * 32; }

// C[R][NV vectors] = A[R][2*pairs] (bf16) * B[pairs][NV vectors][2] (bf16 pairs).
template <int R, int NV>
void dot_block(const bf16_t* a, int lda, const float* b, int ldb, int pairs, float* c, int ldc) {
  // Loops over R and NV are unrolled so `acc` stays in registers (see direct_block).
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int kp = 0; kp < pairs; ++kp, a += 2, b += ldb) {
    __m512bh wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = (__m512bh)_mm512_loadu_ps(b + v * 16);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      std::int32_t pair;
      std::memcpy(&pair, a + std::size_t(r) * lda, sizeof pair);
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], xb, wv[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(c + std::size_t(r) * ldc + v * 16, acc[r][v]);
}

template <int NV>
void dot_block_nv(int nv, const bf16_t* a, int lda, const float* b, int ldb, int pairs, float* c,
                  int ldc) {
  if constexpr (NV > 1) {
    if (nv < NV) return dot_block_nv<NV - 1>(nv, a, lda, b, ldb, pairs, c, ldc);
  }
  dot_block<Avx512Bf16::kGemmRows, NV>(a, lda, b, ldb, pairs, c, ldc);
}

struct DotGemm {
  using VT = bf16_t;
  static constexpr int kRows = Avx512Bf16::kGemmRows;
  static int cin_stride(int cin) { return bf16_cin_stride(cin); }
  static void multiply(const Geo& g, const bf16_t* vbuf, const float* packed, int rows, float* mbuf) {
    constexpr int R = Avx512Bf16::kGemmRows, NV = Avx512Bf16::kGemmVecs;
    const int pairs = div_up(g.cin, 2);  // V's pad channels past these are zeros, U's too
    for (int pos = 0; pos < 36; ++pos) {
      const bf16_t* v = vbuf + std::size_t(pos) * g.tb * g.cin_pad;
      const float* u = packed + std::size_t(pos) * (g.cin_pad / 2) * g.cout_pad;
      float* m = mbuf + std::size_t(pos) * g.tb * g.cout_pad;
      for (int co = 0; co < g.cout_pad; co += NV * 16) {
        const int nv = min_int(NV, (g.cout_pad - co) / 16);
        for (int r = 0; r < rows; r += R)
          dot_block_nv<NV>(nv, v + std::size_t(r) * g.cin_pad, g.cin_pad, u + co, g.cout_pad, pairs,
                           m + std::size_t(r) * g.cout_pad + co, g.cout_pad);
      }
    }
  }
};

// The AMX tile configuration (palette 1): tiles 0-3 the fp32 accumulators C[2][2], 4-5 two
// 16-row slices of V (A), 6-7 two 16-column slices of U (B); each 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  std::uint8_t palette, start_row, reserved[14];
  std::uint16_t colsb[16];
  std::uint8_t rows[16];
};

void amx_configure() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette = 1;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
}

// C[32][16 * NC] = A[32][32 * kblocks] * B (pairs [16 * kblocks][16 * NC][2]); strides in bytes.
template <int NC>
void amx_block(const bf16_t* a, int lda, const float* b, int ldb, int kblocks, float* c, int ldc) {
  const char* ap = reinterpret_cast<const char*>(a);
  const char* bp = reinterpret_cast<const char*>(b);
  char* cp = reinterpret_cast<char*>(c);
  _tile_zero(0);
  _tile_zero(2);
  if constexpr (NC == 2) {
    _tile_zero(1);
    _tile_zero(3);
  }
  for (int kb = 0; kb < kblocks; ++kb, ap += 64, bp += std::size_t(16) * ldb) {
    _tile_loadd(4, ap, lda);
    _tile_loadd(5, ap + std::size_t(16) * lda, lda);
    _tile_loadd(6, bp, ldb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(2, 5, 6);
    if constexpr (NC == 2) {
      _tile_loadd(7, bp + 64, ldb);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, cp, ldc);
  _tile_stored(2, cp + std::size_t(16) * ldc, ldc);
  if constexpr (NC == 2) {
    _tile_stored(1, cp + 64, ldc);
    _tile_stored(3, cp + std::size_t(16) * ldc + 64, ldc);
  }
}

struct AmxGemm {
  using VT = bf16_t;
  static constexpr int kRows = 32;
  static int cin_stride(int cin) { return bf16_cin_stride(cin); }
  static void multiply(const Geo& g, const bf16_t* vbuf, const float* packed, int rows, float* mbuf) {
    // The configuration is per thread and cheap next to a block's 36 GEMMs: set it here, so no
    // other code on this thread runs with AMX state live.
    amx_configure();
    const int kblocks = g.cin_pad / 32, lda = g.cin_pad * 2, ldb = g.cout_pad * 4,
              ldc = g.cout_pad * 4;
    for (int pos = 0; pos < 36; ++pos) {
      const bf16_t* v = vbuf + std::size_t(pos) * g.tb * g.cin_pad;
      const float* u = packed + std::size_t(pos) * (g.cin_pad / 2) * g.cout_pad;
      float* m = mbuf + std::size_t(pos) * g.tb * g.cout_pad;
      for (int co = 0; co < g.cout_pad; co += 32) {
        for (int r = 0; r < rows; r += 32) {
          const bf16_t* ar = v + std::size_t(r) * g.cin_pad;
          float* cr = m + std::size_t(r) * g.cout_pad + co;
          if (g.cout_pad - co >= 32)
            amx_block<2>(ar, lda, u + co, ldb, kblocks, cr, ldc);
          else
            amx_block<1>(ar, lda, u + co, ldb, kblocks, cr, ldc);
        }
      }
    }
    _tile_release();
  }
};

// Seconds for `iters` rounds of kChains independent chains of `step` (one thread).
template <class Step>
double time_chains(long iters, Step step) {
  constexpr int kChains = 24;  // twice what latency x units of current cores need (fma_peak.h)
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(float(i));
  const double t0 = omp_get_wtime();
  // Unrolled so that the chains live in registers: as a loop, GCC kept them in memory and the
  // probe timed store forwarding instead, reading 1.67 or 3.1 by process on an AMD Zen 5
  // whose true ratio (long loops, registers) is 2.00.
  for (long it = 0; it < iters; ++it)
#pragma GCC unroll 24
    for (int i = 0; i < kChains; ++i) acc[i] = step(acc[i]);
  const double t1 = omp_get_wtime();
  __m512 sum = acc[0];
  for (int i = 1; i < kChains; ++i) sum = _mm512_add_ps(sum, acc[i]);
  volatile float sink = _mm512_reduce_add_ps(sum);  // keeps the chains alive
  (void)sink;
  return t1 - t0;
}

}  // namespace

double bf16_dot_speedup() {
  constexpr long kIters = 1L << 16;  // x 24 instructions: well under a millisecond each
  volatile float seed = 0.999999f;
  const __m512 m = _mm512_set1_ps(seed), c = _mm512_set1_ps(1e-7f);
  const __m512bh pairs = _mm512_cvtne2ps_pbh(_mm512_set1_ps(seed * 1e-3f), _mm512_set1_ps(seed * 1e-3f));
  double fma = 1e30, dot = 1e30;
  for (int rep = 0; rep < 5; ++rep) {  // alternating, best of each: a burst of load hits both
    const double f = time_chains(kIters, [&](__m512 a) { return _mm512_fmadd_ps(a, m, c); });
    const double d = time_chains(kIters, [&](__m512 a) { return _mm512_dpbf16_ps(a, pairs, pairs); });
    fma = f < fma ? f : fma;
    dot = d < dot ? d : dot;
  }
  return 2.0 * fma / dot;  // a vdpbf16ps does 32 multiply-adds, an FMA 16
}

void conv_winograd4_bf16dot(const ConvArgs& a) {
  winograd::conv_winograd<Avx512Bf16, bf16_t, winograd::F4, DotGemm>(a);
}

void conv_winograd4_amx(const ConvArgs& a) { winograd::conv_winograd<Avx512Bf16, bf16_t, winograd::F4, AmxGemm>(a); }

}  // namespace redkern::cpu
