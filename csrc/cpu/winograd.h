// Winograd F(4x4, 3x3) convolution, a template on the ISA's vector type S and the activation
// storage type T (float or bf16_t). Instantiated once per ISA translation unit.
//
// Each 4x4 output tile needs a 6x6 input tile d; with U = G g G^T (packed once per weight,
// see pack.cpp) the tile is Y = A^T [sum over cin of U (.) (B^T d B)] A: 36 products per 16
// outputs per channel pair instead of 144. Work goes in blocks of `tb` tiles, per thread:
//   1. input transform: V[36][tb][cin_pad] = B^T d B, vectorised across channels (NHWC);
//   2. for each of the 36 positions, a small GEMM M[pos] = V[pos] (tb x cin) * U[pos]
//      (cin x cout_pad), register-blocked like the direct kernel (rows = tiles);
//   3. output transform A^T M A, then bias and the epilogue, stored straight to y.
// V and M stay in L2 for the whole block; only x, extra and y touch main memory.
// Tiles past the image edge read zeros and store only their in-image pixels.
#pragma once

#include <omp.h>

#include <new>

#include "cpu/kernel_util.h"

namespace redkern::cpu::winograd {

// B^T applied to 6 values (one row or column of an input tile).
template <class S>
inline void input_1d(const typename S::V d[6], typename S::V out[6]) {
  const auto four = S::set1(4.0f), two = S::set1(2.0f), minus_four = S::set1(-4.0f),
             minus_five = S::set1(-5.0f);
  out[0] = S::fma(four, d[0], S::fma(minus_five, d[2], d[4]));
  out[1] = S::fma(minus_four, S::add(d[1], d[2]), S::add(d[3], d[4]));
  out[2] = S::fma(four, S::sub(d[1], d[2]), S::sub(d[4], d[3]));
  out[3] = S::fma(two, S::sub(d[3], d[1]), S::sub(d[4], d[2]));
  out[4] = S::fma(two, S::sub(d[1], d[3]), S::sub(d[4], d[2]));
  out[5] = S::fma(four, d[1], S::fma(minus_five, d[3], d[5]));
}

// A^T applied to 6 values (one row or column of a transformed output tile).
template <class S>
inline void output_1d(const typename S::V m[6], typename S::V out[4]) {
  const auto s12 = S::add(m[1], m[2]), d12 = S::sub(m[1], m[2]);
  const auto s34 = S::add(m[3], m[4]), d34 = S::sub(m[3], m[4]);
  out[0] = S::add(S::add(m[0], s12), s34);
  out[1] = S::fma(S::set1(2.0f), d34, d12);
  out[2] = S::fma(S::set1(4.0f), s34, s12);
  out[3] = S::add(S::fma(S::set1(8.0f), d34, d12), m[5]);
}

template <class S>  // a template only so each ISA gets its own copy (kernel_util.h)
struct Geometry {
  int n, h, w, cin, cout;
  int tiles_y, tiles_x;
  int cin_pad, cout_pad;  // row strides of V and M (and U's column count)
  int tb;                 // tiles per block: a multiple of S::kGemmRows

  // Image, top row and left column (in output pixels) of tile t.
  void locate(long t, int& b, int& y0, int& x0) const {
    const long per_image = long(tiles_y) * tiles_x;
    b = int(t / per_image);
    const int r = int(t % per_image);
    y0 = r / tiles_x * 4;
    x0 = r % tiles_x * 4;
  }
};

// Step 1: V[pos][i][c] for tiles t0 .. t0+nt-1; rows nt .. rows-1 of V are zeroed.
template <class S, class T>
void transform_inputs(const Geometry<S>& g, const T* x, long t0, int nt, int rows, float* vbuf) {
  using V = typename S::V;
  for (int i = 0; i < nt; ++i) {
    int b, y0, x0;
    g.locate(t0 + i, b, y0, x0);
    --y0, --x0;  // the input tile starts one pixel up and left (padding 1)
    for (int c = 0; c < g.cin; c += S::kW) {
      const int n = min_int(S::kW, g.cin - c);
      V e[6][6];
      for (int r = 0; r < 6; ++r) {
        const int iy = y0 + r;
        V d[6];
        for (int k = 0; k < 6; ++k) {
          const int ix = x0 + k;
          if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) {
            d[k] = S::zero();
          } else {
            const T* p = x + ((std::size_t(b) * g.h + iy) * g.w + ix) * g.cin + c;
            d[k] = n == S::kW ? S::load(p) : S::loadn(p, n);
          }
        }
        input_1d<S>(d, e[r]);
      }
      for (int k = 0; k < 6; ++k) {
        V col[6], out[6];
        for (int r = 0; r < 6; ++r) col[r] = e[r][k];
        input_1d<S>(col, out);
        for (int r = 0; r < 6; ++r)
          S::store(vbuf + (std::size_t(r * 6 + k) * g.tb + i) * g.cin_pad + c, out[r]);
      }
    }
  }
  for (int pos = 0; pos < 36; ++pos)
    for (int i = nt; i < rows; ++i)
      for (int c = 0; c < g.cin_pad; ++c) vbuf[(std::size_t(pos) * g.tb + i) * g.cin_pad + c] = 0.0f;
}

// C[R][NV vectors] = A[R][k] * B[k][NV vectors], all row-major with the given strides.
template <class S, int R, int NV>
void gemm_block(const float* a, int lda, const float* b, int ldb, int k, float* c, int ldc) {
  using V = typename S::V;
  V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = S::zero();
  for (int kk = 0; kk < k; ++kk, ++a, b += ldb) {
    V wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = S::load(b + v * S::kW);
    for (int r = 0; r < R; ++r) {
      const V xb = S::bcast(a + r * lda);
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(xb, wv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
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

// Step 2: M[pos] = V[pos] * U[pos] for the first `rows` tiles of the block.
template <class S>
void multiply(const Geometry<S>& g, const float* vbuf, const float* packed, int rows, float* mbuf) {
  constexpr int R = S::kGemmRows, NV = S::kGemmVecs;
  for (int pos = 0; pos < 36; ++pos) {
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

// Step 3: y (and the epilogue) for tiles t0 .. t0+nt-1 from M.
template <class S, class T>
void transform_outputs(const Geometry<S>& g, const float* mbuf, const float* bias, const T* extra,
                       Epilogue epi, long t0, int nt, T* y) {
  using V = typename S::V;
  for (int i = 0; i < nt; ++i) {
    int b, y0, x0;
    g.locate(t0 + i, b, y0, x0);
    const int rows = min_int(4, g.h - y0), cols = min_int(4, g.w - x0);
    for (int c = 0; c < g.cout; c += S::kW) {
      const int n = min_int(S::kW, g.cout - c);
      V t[6][4];
      for (int r = 0; r < 6; ++r) {
        V m[6];
        for (int k = 0; k < 6; ++k)
          m[k] = S::load(mbuf + (std::size_t(r * 6 + k) * g.tb + i) * g.cout_pad + c);
        output_1d<S>(m, t[r]);
      }
      const V bv = n == S::kW ? S::load(bias + c) : S::loadn(bias + c, n);
      for (int k = 0; k < cols; ++k) {
        V col[6], out[4];
        for (int r = 0; r < 6; ++r) col[r] = t[r][k];
        output_1d<S>(col, out);
        for (int r = 0; r < rows; ++r) {
          const std::size_t at = ((std::size_t(b) * g.h + y0 + r) * g.w + x0 + k) * g.cout + c;
          finish_store<S, T>(out[r], bv, extra ? extra + at : nullptr, y + at, n, epi);
        }
      }
    }
  }
}

// Tiles per block: V and M of a block together within about half of a 1 MiB L2 (or most of
// a 512 KiB one), rounded to the GEMM's row blocking, and small enough that every thread
// gets a block on small images.
template <class S>
int tiles_per_block(int cin_pad, int cout_pad, long tiles, int nthreads) {
  constexpr int R = S::kGemmRows;
  constexpr long kBudgetBytes = 320 * 1024;
  const long per_tile = 36L * (cin_pad + cout_pad) * long(sizeof(float));
  long tb = kBudgetBytes / per_tile / R * R;
  const long fair = (tiles + nthreads - 1) / nthreads;
  if (tb > (fair + R - 1) / R * R) tb = (fair + R - 1) / R * R;
  return int(tb < R ? R : tb);
}

template <class S, class T>
void conv3x3_winograd4(const Conv3x3Args& a) {
  constexpr int R = S::kGemmRows;
  Geometry<S> g{a.n, a.h, a.w, a.cin, a.cout, div_up(a.h, 4), div_up(a.w, 4),
             padded_cout(a.cin), padded_cout(a.cout), 0};
  const long tiles = long(a.n) * g.tiles_y * g.tiles_x;
  g.tb = tiles_per_block<S>(g.cin_pad, g.cout_pad, tiles, a.nthreads);
  const long blocks = (tiles + g.tb - 1) / g.tb;
  const T* x = static_cast<const T*>(a.x);
  const T* extra = static_cast<const T*>(a.extra);
  T* y = static_cast<T*>(a.y);
  bool out_of_memory = false;

#pragma omp parallel num_threads(a.nthreads)
  {
    float* vbuf = thread_scratch(36 * std::size_t(g.tb) * g.cin_pad, 0);
    float* mbuf = thread_scratch(36 * std::size_t(g.tb) * g.cout_pad, 1);
    if (vbuf == nullptr || mbuf == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    }
#pragma omp for schedule(static)
    for (long blk = 0; blk < blocks; ++blk) {
      if (vbuf == nullptr || mbuf == nullptr) continue;
      const long t0 = blk * g.tb;
      const int nt = int(tiles - t0 < g.tb ? tiles - t0 : g.tb);
      const int rows = div_up(nt, R) * R;
      transform_inputs<S, T>(g, x, t0, nt, rows, vbuf);
      multiply<S>(g, vbuf, a.packed, rows, mbuf);
      transform_outputs<S, T>(g, mbuf, a.bias, extra, a.epilogue, t0, nt, y);
    }
  }
  if (out_of_memory) throw std::bad_alloc();
}

}  // namespace redkern::cpu::winograd
