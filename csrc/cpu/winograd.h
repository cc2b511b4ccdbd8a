// Winograd F(4x4, 3x3) and F(6x6, 3x3) convolution (3x3 kernels, padding 1), a template on the
// ISA's vector type S, the activation storage type T (float or bf16_t), the tile (F4 or F6
// below) and the GEMM engine of step 2 (fp32 FMAs here; bf16 dot products and AMX tiles in
// isa_avx512/winograd_bf16.cpp, which store V as bf16 and run F4 only).
// Instantiated once per ISA translation unit.
//
// Each m x m output tile needs an a x a input tile d (a = m + 2); with U = G g G^T (packed once
// per weight, see pack.cpp) the tile is Y = A^T [sum over cin of U (.) (B^T d B)] A: a^2
// products per m^2 outputs per channel pair instead of 9 m^2 (F4: 36 per 16, F6: 64 per 36,
// 21% fewer). Work goes in blocks of `tb` tiles, per thread:
//   1. input transform: V[a^2][tb][cin_pad] = B^T d B, vectorised across channels (NHWC);
//   2. for each of the a^2 positions, a small GEMM M[pos] = V[pos] (tb x cin) * U[pos]
//      (cin x cout_pad), register-blocked like the direct kernel (rows = tiles);
//   3. output transform A^T M A, then bias and the epilogue, stored straight to y (RED-Net's
//      epilogues as fixed code, any other through the general one; kernel_util.h).
// V and M stay in L2 for the whole block; only x, extra and y touch main memory.
// Tiles past the image edge read zeros and store only their in-image pixels.
#pragma once

#include <new>

#include "cpu/kernel_util.h"

namespace redkern::cpu::winograd {

// The transforms interpolate at 0, 1, -1, 1/2, -2 and infinity rather than the usual
// 0, +-1, +-2: fp32 results come out about twice as accurate for the same cost (Barabasz et
// al., "Error analysis and improving the accuracy of Winograd convolution", 2020). With
// these points B^T, G and A^T are (G is applied at pack time, pack.cpp):
//   B^T = [1 -3/2 -2  3/2  1  0]   G = [   1      0      0  ]   A^T = [1  1  1  1    1  0]
//         [0  -1  1/2 5/2  1  0]       [  1/3    1/3    1/3 ]         [0  1 -1  1/2 -2  0]
//         [0   1 -5/2 1/2  1  0]       [ -1/3    1/3   -1/3 ]         [0  1  1  1/4  4  0]
//         [0  -2  -1   2   1  0]       [-16/15 -8/15  -4/15 ]         [0  1 -1  1/8 -8  1]
//         [0  1/2 -1 -1/2  1  0]       [ 1/15  -2/15   4/15 ]
//         [0   1 -3/2 -2  3/2 1]       [   0      0      1  ]

// G (6x3) exactly: row j is (1, p, p^2) / prod_{q != p} (p - q) for the points p = 0, 1, -1,
// 1/2, -2, and (0, 0, 1) for infinity. Applied in fp64 (pack.cpp, wgrad.cpp).
constexpr double kG[6][3] = {{1, 0, 0},
                             {1.0 / 3, 1.0 / 3, 1.0 / 3},
                             {-1.0 / 3, 1.0 / 3, -1.0 / 3},
                             {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                             {1.0 / 15, -2.0 / 15, 4.0 / 15},
                             {0, 0, 1}};

// B^T applied to 6 values (one row or column of an input tile).
template <class S>
inline void input_1d(const typename S::V d[6], typename S::V out[6]) {
  const auto half = S::set1(0.5f), three_halves = S::set1(1.5f), five_halves = S::set1(2.5f),
             two = S::set1(2.0f), minus_two = S::set1(-2.0f);
  const auto d31 = S::sub(d[3], d[1]), d42 = S::sub(d[4], d[2]);
  out[0] = S::fma(three_halves, d31, S::fma(minus_two, d[2], S::add(d[0], d[4])));
  out[1] = S::fma(half, d[2], S::fma(five_halves, d[3], S::sub(d[4], d[1])));
  out[2] = S::fma(S::set1(-2.5f), d[2], S::fma(half, d[3], S::add(d[4], d[1])));
  out[3] = S::fma(two, d31, d42);
  out[4] = S::fma(S::set1(-0.5f), d31, d42);
  out[5] = S::fma(three_halves, d42, S::fma(minus_two, d[3], S::add(d[1], d[5])));
}

// A^T applied to 6 values (one row or column of a transformed output tile).
template <class S>
inline void output_1d(const typename S::V m[6], typename S::V out[4]) {
  const auto s12 = S::add(m[1], m[2]), d12 = S::sub(m[1], m[2]);
  out[0] = S::add(S::add(m[0], s12), S::add(m[3], m[4]));
  out[1] = S::fma(S::set1(0.5f), m[3], S::fma(S::set1(-2.0f), m[4], d12));
  out[2] = S::fma(S::set1(0.25f), m[3], S::fma(S::set1(4.0f), m[4], s12));
  out[3] = S::add(S::fma(S::set1(0.125f), m[3], S::fma(S::set1(-8.0f), m[4], d12)), m[5]);
}

// F(4x4,3x3): the transforms above. Algorithm::kWinograd4x4 and the bf16-GEMM engines.
struct F4 {
  static constexpr int kM = 4, kAlpha = 6;
  template <class S>
  static void input(const typename S::V d[6], typename S::V out[6]) { input_1d<S>(d, out); }
  template <class S>
  static void output(const typename S::V m[6], typename S::V out[4]) { output_1d<S>(m, out); }
};

// F(6x6,3x3) interpolates at 0, 1, -1, 2, -2, 1/2, -1/2 and infinity, the usual points: every
// entry of B^T and A^T is exact in fp32, and a 64-channel layer's error is about 1e-5 of its
// magnitude, 5x F4's (the other point sets tried in a float32 model of the kernel were no better
// than 0.8x this, and rounded their transforms). With row 0 of B^T and G negated (their
// product is unchanged):
//   B^T = [1   0  -21/4   0    21/4   0   -1  0]   A^T = [1 1  1  1   1   1     1    0]
//         [0   1    1   -17/4 -17/4   1    1  0]         [0 1 -1  2  -2  1/2  -1/2   0]
//         [0  -1    1    17/4 -17/4  -1    1  0]         [0 1  1  4   4  1/4   1/4   0]
//         [0  1/2  1/4  -5/2  -5/4    2    1  0]         [0 1 -1  8  -8  1/8  -1/8   0]
//         [0 -1/2  1/4   5/2  -5/4   -2    1  0]         [0 1  1 16  16  1/16  1/16  0]
//         [0   2    4   -5/2   -5    1/2   1  0]         [0 1 -1 32 -32  1/32 -1/32  1]
//         [0  -2    4    5/2   -5   -1/2   1  0]
//         [0  -1    0    21/4   0   -21/4  0  1]
// G's row j is (1, p, p^2) / prod_{q != p} (p - q) as for F4 (row 0 negated), (0, 0, 1) last.
constexpr double kG6[8][3] = {{1, 0, 0},
                              {-2.0 / 9, -2.0 / 9, -2.0 / 9},
                              {-2.0 / 9, 2.0 / 9, -2.0 / 9},
                              {1.0 / 90, 1.0 / 45, 2.0 / 45},
                              {1.0 / 90, -1.0 / 45, 2.0 / 45},
                              {32.0 / 45, 16.0 / 45, 8.0 / 45},
                              {32.0 / 45, -16.0 / 45, 8.0 / 45},
                              {0, 0, 1}};

struct F6 {
  static constexpr int kM = 6, kAlpha = 8;

  // B^T applied to 8 values: the rows pair up as t +- u (1-2, 3-4, 5-6).
  template <class S>
  static void input(const typename S::V d[8], typename S::V out[8]) {
    const auto c = S::set1(5.25f), c2 = S::set1(-4.25f), c3 = S::set1(-1.25f),
               c4 = S::set1(-2.5f), half = S::set1(0.5f), two = S::set1(2.0f);
    out[0] = S::fma(c, S::sub(d[4], d[2]), S::sub(d[0], d[6]));
    out[7] = S::fma(c, S::sub(d[3], d[5]), S::sub(d[7], d[1]));
    const auto t1 = S::fma(c2, d[4], S::add(d[2], d[6]));
    const auto u1 = S::fma(c2, d[3], S::add(d[1], d[5]));
    out[1] = S::add(t1, u1);
    out[2] = S::sub(t1, u1);
    const auto t2 = S::fma(c3, d[4], S::fma(S::set1(0.25f), d[2], d[6]));
    const auto u2 = S::fma(two, d[5], S::fma(c4, d[3], S::mul(half, d[1])));
    out[3] = S::add(t2, u2);
    out[4] = S::sub(t2, u2);
    const auto t3 = S::fma(S::set1(4.0f), S::fma(c3, d[4], d[2]), d[6]);
    const auto u3 = S::fma(half, d[5], S::fma(c4, d[3], S::mul(two, d[1])));
    out[5] = S::add(t3, u3);
    out[6] = S::sub(t3, u3);
  }

  // A^T applied to 8 values.
  template <class S>
  static void output(const typename S::V m[8], typename S::V out[6]) {
    const auto s12 = S::add(m[1], m[2]), d12 = S::sub(m[1], m[2]);
    const auto s34 = S::add(m[3], m[4]), d34 = S::sub(m[3], m[4]);
    const auto s56 = S::add(m[5], m[6]), d56 = S::sub(m[5], m[6]);
    out[0] = S::add(S::add(m[0], s12), S::add(s34, s56));
    out[1] = S::fma(S::set1(0.5f), d56, S::fma(S::set1(2.0f), d34, d12));
    out[2] = S::fma(S::set1(0.25f), s56, S::fma(S::set1(4.0f), s34, s12));
    out[3] = S::fma(S::set1(0.125f), d56, S::fma(S::set1(8.0f), d34, d12));
    out[4] = S::fma(S::set1(0.0625f), s56, S::fma(S::set1(16.0f), s34, s12));
    out[5] = S::add(S::fma(S::set1(0.03125f), d56, S::fma(S::set1(32.0f), d34, d12)), m[7]);
  }
};

// S: a template only so each ISA gets its own copy (kernel_util.h). Tile: F4 or F6.
template <class S, class Tile = F4>
struct Geometry {
  static constexpr int kM = Tile::kM, kAlpha = Tile::kAlpha, kPositions = kAlpha * kAlpha;
  int n, h, w, cin, cout;  // the input: n images of h x w pixels
  int oh, ow;              // the output's rows and columns (h + 2 ph - 2, w + 2 pw - 2)
  int ph, pw;              // padding 0 or 1: an input tile starts ph rows up, pw columns left
  int tiles_y, tiles_x;    // tiles over the output
  int cin_pad, cout_pad;   // row strides of V and M (and U's column count)
  int tb;                  // tiles per block: a multiple of S::kGemmRows

  Geometry(int n_, int h_, int w_, int cin_, int cout_, int ph_, int pw_, int cin_pad_, int cout_pad_)
      : n(n_), h(h_), w(w_), cin(cin_), cout(cout_), oh(h_ + 2 * ph_ - 2), ow(w_ + 2 * pw_ - 2),
        ph(ph_), pw(pw_), tiles_y(div_up(oh, kM)), tiles_x(div_up(ow, kM)), cin_pad(cin_pad_),
        cout_pad(cout_pad_), tb(0) {}

  // Image, top row and left column (in output pixels) of tile t.
  void locate(long t, int& b, int& y0, int& x0) const {
    const long per_image = long(tiles_y) * tiles_x;
    b = int(t / per_image);
    const int r = int(t % per_image);
    y0 = r / tiles_x * kM;
    x0 = r % tiles_x * kM;
  }
};

// B^T d B for one channel vector of one input tile, stored to v + pos * pstride. rows[r] is
// the start of input row r of the tile (null above or below the image), x0 the tile's left
// column. Interior tiles (kEdge false) load without checks; edge tiles read zeros outside
// the image and only `n` channels. VT: V's storage type (float, or bf16_t for the bf16 GEMMs).
template <class S, class T, bool kEdge, bool kMask, class VT, class Tile>
inline void input_tile(const T* const rows[], int x0, int w, int cin, int c, int n, VT* v,
                       std::size_t pstride, const T* const mrows[] = nullptr) {
  using V = typename S::V;
  constexpr int A = Tile::kAlpha;
  V e[A][A];
#pragma GCC unroll 8
  for (int r = 0; r < A; ++r) {
    V d[A];
#pragma GCC unroll 8
    for (int k = 0; k < A; ++k) {
      const int ix = x0 + k;
      const std::size_t at = std::size_t(ix) * cin + c;
      if (!kEdge) {
        d[k] = S::load(rows[r] + at);
        if constexpr (kMask) d[k] = S::where_positive(S::load(mrows[r] + at), d[k]);
      } else if (rows[r] == nullptr || ix < 0 || ix >= w) {
        d[k] = S::zero();
      } else {
        d[k] = n == S::kW ? S::load(rows[r] + at) : S::loadn(rows[r] + at, n);
        if constexpr (kMask)
          d[k] = S::where_positive(n == S::kW ? S::load(mrows[r] + at) : S::loadn(mrows[r] + at, n), d[k]);
      }
    }
    Tile::template input<S>(d, e[r]);
  }
#pragma GCC unroll 8
  for (int k = 0; k < A; ++k) {
    V col[A], out[A];
#pragma GCC unroll 8
    for (int r = 0; r < A; ++r) col[r] = e[r][k];
    Tile::template input<S>(col, out);
#pragma GCC unroll 8
    for (int r = 0; r < A; ++r) S::store(v + std::size_t(r * A + k) * pstride, out[r]);
  }
}

// Step 1: V[pos][i][c] for tiles t0 .. t0+nt-1; rows nt .. rows-1 of V and channels past
// the last vector (up to cin_pad) are zeroed, since the GEMMs may read them (0 * garbage could
// be NaN). With kMask, x is read as mask <= 0 ? 0 : x (mask laid out as x; NaN keeps x).
template <class S, class T, bool kMask, class VT, class Tile>
void transform_inputs(const Geometry<S, Tile>& g, const T* x, long t0, int nt, int rows, VT* vbuf,
                      const T* mask = nullptr) {
  constexpr int A = Tile::kAlpha, P = A * A;
  const std::size_t pstride = std::size_t(g.tb) * g.cin_pad;
  for (int i = 0; i < nt; ++i) {
    int b, y0, x0;
    g.locate(t0 + i, b, y0, x0);
    y0 -= g.ph, x0 -= g.pw;  // where the input tile starts
    const T* in_rows[A];
    const T* mask_rows[A] = {};
    for (int r = 0; r < A; ++r) {
      const int iy = y0 + r;
      const std::size_t row = (std::size_t(b) * g.h + iy) * g.w * g.cin;
      in_rows[r] = iy >= 0 && iy < g.h ? x + row : nullptr;
      if constexpr (kMask) mask_rows[r] = in_rows[r] ? mask + row : nullptr;
    }
    const bool interior = y0 >= 0 && y0 + A <= g.h && x0 >= 0 && x0 + A <= g.w;
    VT* v = vbuf + std::size_t(i) * g.cin_pad;
    for (int c = 0; c < g.cin; c += S::kW) {
      const int n = min_int(S::kW, g.cin - c);
      if (interior && n == S::kW)
        input_tile<S, T, false, kMask, VT, Tile>(in_rows, x0, g.w, g.cin, c, n, v + c, pstride, mask_rows);
      else
        input_tile<S, T, true, kMask, VT, Tile>(in_rows, x0, g.w, g.cin, c, n, v + c, pstride, mask_rows);
    }
    for (int pos = 0; pos < P; ++pos)
      for (int c = div_up(g.cin, S::kW) * S::kW; c < g.cin_pad; ++c) v[pos * pstride + c] = VT(0);
  }
  for (int pos = 0; pos < P; ++pos)
    for (int i = nt; i < rows; ++i)
      for (int c = 0; c < g.cin_pad; ++c) vbuf[pos * pstride + std::size_t(i) * g.cin_pad + c] = VT(0);
}

// C[R][NV vectors] = A[R][k] * B[k][NV vectors], all row-major with the given strides.
template <class S, int R, int NV>
void gemm_block(const float* a, int lda, const float* b, int ldb, int k, float* c, int ldc) {
  // Loops over R and NV are unrolled so `acc` stays in registers (see direct_block).
  using V = typename S::V;
  V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
  for (int kk = 0; kk < k; ++kk, ++a, b += ldb) {
    V wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = S::load(b + v * S::kW);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V xb = S::bcast(a + r * lda);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(xb, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) S::store(c + std::size_t(r) * ldc + v * S::kW, acc[r][v]);
}

// Calls gemm_block with a compile-time NV = nv (1..NV).
template <class S, int NV>
void gemm_block_nv(int nv, const float* a, int lda, const float* b, int ldb, int k, float* c,
                   int ldc) {
  if constexpr (NV > 1) {
    if (nv < NV) return gemm_block_nv<S, NV - 1>(nv, a, lda, b, ldb, k, c, ldc);
  }
  gemm_block<S, S::kGemmRows, NV>(a, lda, b, ldb, k, c, ldc);
}

// Step 2's engines. Each says how V is stored (VT, its row stride for `cin` channels), how
// many rows (tiles) it multiplies at a time, and computes M[pos] = V[pos] * U[pos] for the
// first `rows` tiles of the block (rows a multiple of kRows).
// This one: fp32 V and U ([a^2][cin][cout_pad], Algorithm::kWinograd4x4 and kWinograd6x6),
// fp32 FMAs, either tile.
template <class S>
struct FmaGemm {
  using VT = float;
  static constexpr int kRows = S::kGemmRows;
  static int cin_stride(int cin) { return padded_cout(cin); }
  template <class Tile>
  static void multiply(const Geometry<S, Tile>& g, const float* vbuf, const float* packed, int rows,
                       float* mbuf) {
    constexpr int R = S::kGemmRows, NV = S::kGemmVecs;
    for (int pos = 0; pos < Geometry<S, Tile>::kPositions; ++pos) {
      const float* v = vbuf + std::size_t(pos) * g.tb * g.cin_pad;
      const float* u = packed + std::size_t(pos) * g.cin * g.cout_pad;
      float* m = mbuf + std::size_t(pos) * g.tb * g.cout_pad;
      for (int co = 0; co < g.cout_pad; co += NV * S::kW) {
        const int nv = min_int(NV, (g.cout_pad - co) / S::kW);
        for (int r = 0; r < rows; r += R)
          gemm_block_nv<S, NV>(nv, v + std::size_t(r) * g.cin_pad, g.cin_pad, u + co, g.cout_pad,
                               g.cin, m + std::size_t(r) * g.cout_pad + co, g.cout_pad);
      }
    }
  }
};

// A^T m A for one channel vector of one tile (m at m + pos * pstride), plus bias and the
// epilogue of mode M, stored to the output rows (yrows[r] + column; erows likewise for the
// skip or residual, null without one). Edge tiles (kEdge) store only their first `rows` x
// `cols` pixels and `n` channels.
template <class S, class T, EpiMode M, bool kEdge, class Tile>
inline void output_tile(const float* m, std::size_t pstride, typename S::V bias,
                        T* const yrows[], const T* const erows[], int x0, int cout, int c,
                        int n, int rows, int cols, const EpilogueParams& p) {
  using V = typename S::V;
  constexpr int A = Tile::kAlpha, O = Tile::kM;
  V t[A][O];
#pragma GCC unroll 8
  for (int r = 0; r < A; ++r) {
    V mr[A];
#pragma GCC unroll 8
    for (int k = 0; k < A; ++k) mr[k] = S::load(m + std::size_t(r * A + k) * pstride);
    Tile::template output<S>(mr, t[r]);
  }
#pragma GCC unroll 6
  for (int k = 0; k < O; ++k) {
    if (kEdge && k >= cols) break;
    V col[A], out[O];
#pragma GCC unroll 8
    for (int r = 0; r < A; ++r) col[r] = t[r][k];
    Tile::template output<S>(col, out);
#pragma GCC unroll 6
    for (int r = 0; r < O; ++r) {
      if (kEdge && r >= rows) break;
      const std::size_t at = std::size_t(x0 + k) * cout + c;
      finish_store<M, S, T>(out[r], bias, erows[r] ? erows[r] + at : nullptr, yrows[r] + at,
                            kEdge ? n : S::kW, c, p);
    }
  }
}

// Step 3: y (and the epilogue) for tiles t0 .. t0+nt-1 from M.
template <class S, class T, EpiMode M, class Tile>
void transform_outputs(const Geometry<S, Tile>& g, const float* mbuf, const float* bias, const T* extra,
                       long t0, int nt, T* y, const EpilogueParams& p) {
  constexpr int O = Tile::kM;
  const std::size_t pstride = std::size_t(g.tb) * g.cout_pad;
  for (int i = 0; i < nt; ++i) {
    int b, y0, x0;
    g.locate(t0 + i, b, y0, x0);
    const int rows = min_int(O, g.oh - y0), cols = min_int(O, g.ow - x0);
    T* yrows[O] = {};
    const T* erows[O] = {};
    for (int r = 0; r < rows; ++r) {
      const std::size_t row = (std::size_t(b) * g.oh + y0 + r) * g.ow * g.cout;
      yrows[r] = y + row;
      if (extra != nullptr) erows[r] = extra + row;
    }
    const float* m = mbuf + std::size_t(i) * g.cout_pad;
    for (int c = 0; c < g.cout; c += S::kW) {
      const int n = min_int(S::kW, g.cout - c);
      const auto bv = n == S::kW ? S::load(bias + c) : S::loadn(bias + c, n);
      if (rows == O && cols == O && n == S::kW)
        output_tile<S, T, M, false, Tile>(m + c, pstride, bv, yrows, erows, x0, g.cout, c, n, O, O, p);
      else
        output_tile<S, T, M, true, Tile>(m + c, pstride, bv, yrows, erows, x0, g.cout, c, n, rows, cols, p);
    }
  }
}

// Tiles per block: V and M of a block together fill half of this core's L2, leaving the
// other half to the transformed weights streaming through (one 64x64 layer's are 590 KB);
// rounded to the GEMM's row blocking R, and small enough that every thread gets a block on
// small images. V's rows take v_row_bytes, M's cout_pad floats.
template <class S>
int tiles_per_block(long v_row_bytes, int cout_pad, long tiles, int nthreads, int R, int positions = 36) {
  const long budget = long(l2_cache_bytes() / 2);
  const long per_tile = long(positions) * (v_row_bytes + cout_pad * long(sizeof(float)));
  long tb = budget / per_tile / R * R;
  const long fair = (tiles + nthreads - 1) / nthreads;
  if (tb > (fair + R - 1) / R * R) tb = (fair + R - 1) / R * R;
  return int(tb < R ? R : tb);
}

// y for a 3x3 kernel with padding 0 or 1 on each axis (dispatch.cpp checks), with the tile
// `Tile` and the GEMM engine `Gemm` (a.packed in its layout). Padding 0 along the rows lets a
// caller run a strip of an image's rows from the strip and its neighbours' rows (redkern/strips.py).
template <class S, class T, class Tile = F4, class Gemm = FmaGemm<S>>
void conv_winograd(const ConvArgs& a) {
  using VT = typename Gemm::VT;
  using Geo = Geometry<S, Tile>;
  constexpr int R = Gemm::kRows, P = Geo::kPositions;
  Geo g(a.n, a.h, a.w, a.cin, a.cout, a.ph, a.pw, Gemm::cin_stride(a.cin), padded_cout(a.cout));
  const long tiles = long(a.n) * g.tiles_y * g.tiles_x;
  g.tb = tiles_per_block<S>(long(g.cin_pad) * long(sizeof(VT)), g.cout_pad, tiles, a.nthreads, R, P);
  const long blocks = (tiles + g.tb - 1) / g.tb;
  const T* x = static_cast<const T*>(a.x);
  const T* x_mask = static_cast<const T*>(a.x_mask);
  const T* extra = static_cast<const T*>(a.extra);
  T* y = static_cast<T*>(a.y);
  const EpiMode mode = epilogue_mode(a.epilogue);
  const EpilogueParams& p = a.epilogue;
  bool out_of_memory = false;

#pragma omp parallel num_threads(a.nthreads)
  {
    // V in scratch floats (VT is float or 16-bit bf16_t).
    VT* vbuf = reinterpret_cast<VT*>(
        thread_scratch((P * std::size_t(g.tb) * g.cin_pad * sizeof(VT) + 3) / sizeof(float), 0));
    float* mbuf = thread_scratch(P * std::size_t(g.tb) * g.cout_pad, 1);
    if (vbuf == nullptr || mbuf == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    }
#pragma omp for schedule(dynamic)  // a preempted thread must not hold the others up
    for (long blk = 0; blk < blocks; ++blk) {
      if (vbuf == nullptr || mbuf == nullptr) continue;
      const long t0 = blk * g.tb;
      const int nt = int(tiles - t0 < g.tb ? tiles - t0 : g.tb);
      const int rows = div_up(nt, R) * R;
      if (x_mask != nullptr)
        transform_inputs<S, T, true, VT, Tile>(g, x, t0, nt, rows, vbuf, x_mask);
      else
        transform_inputs<S, T, false, VT, Tile>(g, x, t0, nt, rows, vbuf);
      Gemm::multiply(g, vbuf, a.packed, rows, mbuf);
      switch (mode) {
        case EpiMode::kRelu:
          transform_outputs<S, T, EpiMode::kRelu, Tile>(g, mbuf, a.bias, extra, t0, nt, y, p);
          break;
        case EpiMode::kReluAddRelu:
          transform_outputs<S, T, EpiMode::kReluAddRelu, Tile>(g, mbuf, a.bias, extra, t0, nt, y, p);
          break;
        case EpiMode::kAddResidual:
          transform_outputs<S, T, EpiMode::kAddResidual, Tile>(g, mbuf, a.bias, extra, t0, nt, y, p);
          break;
        default:
          transform_outputs<S, T, EpiMode::kGeneral, Tile>(g, mbuf, a.bias, extra, t0, nt, y, p);
          break;
      }
    }
  }
  if (out_of_memory) throw std::bad_alloc();
}

}  // namespace redkern::cpu::winograd
