// Weight and bias gradients of one stride-1 convolution, a template on the ISA's vector type
// S and the activation storage type T (float or bf16_t). Instantiated once per ISA unit.
//
//   dW[co][ci][a][b] = sum over n, oy, ox of g[n][oy][ox][co] * x[n][oy + a - ph][ox + b - pw][ci]
//   db[co]           = sum over n, oy, ox of g[n][oy][ox][co]
// with x zero outside the image and g the gradient at the convolution's output (the
// epilogue's derivative already applied). Both NHWC.
//
// Each thread sums a fixed share of the work (OpenMP static schedule) into its own partial,
// `partials + thread * stride` (zeroed by the caller); wgrad.cpp adds the partials in thread
// order and lays them out, so a result depends only on the thread count. Sums go in two
// levels (a register block over a chunk of pixels, then the partial), which keeps fp32
// rounding error far below the 1e-4 the gradients are held to.
//
// Two algorithms:
// - direct: for each tap, a rank-K update over the pixels: the larger of the two channel
//   counts is vectorised (operand A), the other broadcast (operand B). Partial layout
//   [taps][cb][ca_pad], then db [cout_pad].
// - Winograd F(4x4, 3x3) (3x3, padding 1): the adjoint of winograd.h's forward. With
//   V = B^T d B (the forward's input transform) and Gt = A dY A^T (a 4x4 gradient tile taken
//   to 6x6), dU[pos][co][ci] = sum over tiles Gt[pos][co] * V[pos][ci] is the gradient of
//   U = G g G^T, and dW = G^T dU G (wgrad.cpp, in fp64): 36 products per 16 pixels and channel
//   pair instead of 144. Partial layout [36][cout][cin_pad], then db [cout_pad].
#pragma once

#include <omp.h>

#include "cpu/winograd.h"

namespace redkern::cpu::wgrad {

static inline float scalar(float v) { return v; }
static inline float scalar(bf16_t v) { return bf16_to_f32(v); }

// One run of pixels a register block sums over: `len` pixels from a (vectorised operand) and
// b (broadcast operand), each at its own pixel stride.
template <class T>
struct Segment {
  const T* a;
  const T* b;
  int len;
};

// c[r][v] += s[r][v]: a register block's sums into the partial (the second level of the sums).
template <class S, int R, int NV>
__attribute__((always_inline)) inline void add_block(const typename S::V (&s)[R][NV], float* c, int ldc) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* p = c + std::size_t(r) * ldc + v * S::kW;
      S::store(p, S::add(S::load(p), s[r][v]));
    }
}

// acc[r][v] += sum over the segments' pixels of B[r] * A[v] for R broadcast channels and NV
// vectors of the vectorised one; the last vector holds `tail` lanes when kTail.
template <class S, class T, int R, int NV, bool kTail>
void outer_block(const Segment<T>* segs, int nseg, int a_off, int b_off, int a_stride,
                 int b_stride, int tail, float* acc, int ld) {
  using V = typename S::V;
  V s[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) s[r][v] = S::zero();
  for (int q = 0; q < nseg; ++q) {
    const T* ap = segs[q].a + a_off;
    const T* bp = segs[q].b + b_off;
    for (int i = 0; i < segs[q].len; ++i, ap += a_stride, bp += b_stride) {
      V av[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        av[v] = kTail && v == NV - 1 ? S::loadn(ap + v * S::kW, tail) : S::load(ap + v * S::kW);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V bb = S::set1(scalar(bp[r]));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) s[r][v] = S::fma(bb, av[v], s[r][v]);
      }
    }
  }
  add_block<S, R, NV>(s, acc, ld);
}

// outer_block with compile-time R = r (1..R) and NV = nv (1..NV).
template <class S, class T, int R, int NV, bool kTail>
void outer_block_rv(int r, int nv, const Segment<T>* segs, int nseg, int a_off, int b_off,
                    int a_stride, int b_stride, int tail, float* acc, int ld) {
  if constexpr (R > 1) {
    if (r < R)
      return outer_block_rv<S, T, R - 1, NV, kTail>(r, nv, segs, nseg, a_off, b_off, a_stride,
                                                    b_stride, tail, acc, ld);
  }
  if constexpr (NV > 1) {
    if (nv < NV)
      return outer_block_rv<S, T, R, NV - 1, kTail>(r, nv, segs, nseg, a_off, b_off, a_stride,
                                                    b_stride, tail, acc, ld);
  }
  outer_block<S, T, R, NV, kTail>(segs, nseg, a_off, b_off, a_stride, b_stride, tail, acc, ld);
}

// db[c] += g over `len` pixels (cout channels, stride cout); db holds whole vectors.
template <class S, class T>
inline void add_bias_grad(const T* g, int len, int cout, float* db) {
  for (int c = 0; c < cout; c += S::kW) {
    const int n = min_int(S::kW, cout - c);
    auto sum = S::load(db + c);
    for (int i = 0; i < len; ++i) {
      const T* p = g + std::size_t(i) * cout + c;
      sum = S::add(sum, n == S::kW ? S::load(p) : S::loadn(p, n));
    }
    S::store(db + c, sum);
  }
}

// The direct algorithm's choice of operands (wgrad.cpp lays the partial out by it).
static inline bool direct_vectorises_g(int cin, int cout) { return cout >= cin; }

// Output rows per chunk: the x and g rows a chunk reads stay in half of L2 across its taps.
template <class T>
int direct_chunk_rows(const WgradArgs& a) {
  const long row_bytes = (long(a.w) * a.cin + long(a.ow) * a.cout) * long(sizeof(T));
  long rows = long(l2_cache_bytes() / 2) / (row_bytes + 1);
  const long total = long(a.n) * a.oh;
  const long fair = (total + a.nthreads - 1) / a.nthreads;
  if (rows > fair) rows = fair;
  if (rows > 256) rows = 256;
  return int(rows < 1 ? 1 : rows);
}

template <class S, class T>
void weight_grad_direct(const WgradArgs& a, float* partials, std::size_t stride) {
  constexpr int R = S::kGemmRows, NV = S::kGemmVecs;
  const bool vec_g = direct_vectorises_g(a.cin, a.cout);
  const int ca = vec_g ? a.cout : a.cin, cb = vec_g ? a.cin : a.cout;
  const int ca_pad = padded_cout(ca), taps = a.kh * a.kw;
  const int nvec = div_up(ca, S::kW), tail = ca - (nvec - 1) * S::kW;
  const T* x = static_cast<const T*>(a.x);
  const T* g = static_cast<const T*>(a.g);
  const long total_rows = long(a.n) * a.oh;
  const int chunk = direct_chunk_rows<T>(a);
  const long chunks = (total_rows + chunk - 1) / chunk;

#pragma omp parallel num_threads(a.nthreads)
  {
    float* part = partials + std::size_t(omp_get_thread_num()) * stride;
    float* db = part + std::size_t(taps) * cb * ca_pad;
    Segment<T> segs[256];
#pragma omp for schedule(static)
    for (long c = 0; c < chunks; ++c) {
      const long r0 = c * chunk, r1 = r0 + chunk < total_rows ? r0 + chunk : total_rows;
      for (long rr = r0; rr < r1; ++rr)
        add_bias_grad<S, T>(g + std::size_t(rr) * a.ow * a.cout, a.ow, a.cout, db);
      for (int ky = 0; ky < a.kh; ++ky)
        for (int kx = 0; kx < a.kw; ++kx) {
          const int lo = a.pw - kx > 0 ? a.pw - kx : 0;
          const int hi = a.w + a.pw - kx < a.ow ? a.w + a.pw - kx : a.ow;
          if (hi <= lo) continue;
          int nseg = 0;
          for (long rr = r0; rr < r1; ++rr) {
            const int b = int(rr / a.oh), oy = int(rr % a.oh), iy = oy + ky - a.ph;
            if (iy < 0 || iy >= a.h) continue;
            const T* gp = g + (std::size_t(rr) * a.ow + lo) * a.cout;
            const T* xp = x + ((std::size_t(b) * a.h + iy) * a.w + lo + kx - a.pw) * a.cin;
            segs[nseg++] = vec_g ? Segment<T>{gp, xp, hi - lo} : Segment<T>{xp, gp, hi - lo};
          }
          if (nseg == 0) continue;
          float* acc = part + std::size_t(ky * a.kw + kx) * cb * ca_pad;
          const int as = vec_g ? a.cout : a.cin, bs = vec_g ? a.cin : a.cout;
          for (int j = 0; j < cb; j += R)
            for (int v0 = 0; v0 < nvec; v0 += NV) {
              const int nv = min_int(NV, nvec - v0), r = min_int(R, cb - j);
              float* out = acc + std::size_t(j) * ca_pad + v0 * S::kW;
              if (v0 + nv == nvec && tail < S::kW)
                outer_block_rv<S, T, R, NV, true>(r, nv, segs, nseg, v0 * S::kW, j, as, bs, tail, out, ca_pad);
              else
                outer_block_rv<S, T, R, NV, false>(r, nv, segs, nseg, v0 * S::kW, j, as, bs, tail, out, ca_pad);
            }
        }
    }
  }
}

// --- Winograd F(4x4, 3x3) ----------------------------------------------------------------

// A applied to 4 values (one row or column of a gradient tile): out[j] = sum_s A^T[s][j] d[s]
// with winograd.h's A^T, so that the sums below are the adjoint of its output transform.
template <class S>
inline void grad_1d(const typename S::V d[4], typename S::V out[6]) {
  const auto d02 = S::add(d[0], d[2]), d13 = S::add(d[1], d[3]);
  out[0] = d[0];
  out[1] = S::add(d02, d13);
  out[2] = S::sub(d02, d13);
  out[3] = S::fma(S::set1(0.5f), d[1], S::fma(S::set1(0.25f), d[2], S::fma(S::set1(0.125f), d[3], d[0])));
  out[4] = S::fma(S::set1(-2.0f), d[1], S::fma(S::set1(4.0f), d[2], S::fma(S::set1(-8.0f), d[3], d[0])));
  out[5] = d[3];
}

// Gt[36][i][c] = A dY A^T for tiles t0 .. t0+nt-1 (dY zero outside the image; read as
// mask <= 0 ? 0 : g where a mask is given); db += the tiles' gradients.
template <class S, class T>
void transform_grads(const winograd::Geometry<S>& geo, const T* g, const T* mask, long t0, int nt,
                     float* gbuf, float* db) {
  using V = typename S::V;
  const std::size_t pstride = std::size_t(geo.tb) * geo.cout_pad;
  for (int i = 0; i < nt; ++i) {
    int b, y0, x0;
    geo.locate(t0 + i, b, y0, x0);
    const int rows = min_int(4, geo.oh - y0), cols = min_int(4, geo.ow - x0);
    float* out = gbuf + std::size_t(i) * geo.cout_pad;
    for (int c = 0; c < geo.cout; c += S::kW) {
      const int n = min_int(S::kW, geo.cout - c);
      V e[4][6], sum = S::zero();
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        V d[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          if (r >= rows || k >= cols) {
            d[k] = S::zero();
          } else {
            const std::size_t at = ((std::size_t(b) * geo.oh + y0 + r) * geo.ow + x0 + k) * geo.cout + c;
            d[k] = n == S::kW ? S::load(g + at) : S::loadn(g + at, n);
            if (mask != nullptr)
              d[k] = S::where_positive(n == S::kW ? S::load(mask + at) : S::loadn(mask + at, n), d[k]);
            sum = S::add(sum, d[k]);
          }
        }
        grad_1d<S>(d, e[r]);
      }
#pragma GCC unroll 6
      for (int k = 0; k < 6; ++k) {
        V col[4], o[6];
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) col[r] = e[r][k];
        grad_1d<S>(col, o);
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) S::store(out + std::size_t(r * 6 + k) * pstride + c, o[r]);
      }
      S::store(db + c, S::add(S::load(db + c), sum));
    }
  }
}

// c[r][v] += sum over k of a[k][r] * b[k][v]: R rows of Gt (contiguous channels at each tile)
// by NV vectors of V, over the k tiles of a block.
template <class S, int R, int NV>
void tile_outer(const float* a, int lda, const float* b, int ldb, int k, float* c, int ldc) {
  using V = typename S::V;
  V s[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) s[r][v] = S::zero();
  for (int kk = 0; kk < k; ++kk, a += lda, b += ldb) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * S::kW);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const V ab = S::bcast(a + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) s[r][v] = S::fma(ab, bv[v], s[r][v]);
    }
  }
  add_block<S, R, NV>(s, c, ldc);
}

template <class S, int R, int NV>
void tile_outer_rv(int r, int nv, const float* a, int lda, const float* b, int ldb, int k, float* c,
                   int ldc) {
  if constexpr (R > 1) {
    if (r < R) return tile_outer_rv<S, R - 1, NV>(r, nv, a, lda, b, ldb, k, c, ldc);
  }
  if constexpr (NV > 1) {
    if (nv < NV) return tile_outer_rv<S, R, NV - 1>(r, nv, a, lda, b, ldb, k, c, ldc);
  }
  tile_outer<S, R, NV>(a, lda, b, ldb, k, c, ldc);
}

template <class S, class T>
void weight_grad_winograd4(const WgradArgs& a, float* partials, std::size_t stride) {
  constexpr int R = S::kGemmRows, NV = S::kGemmVecs;
  winograd::Geometry<S> geo(a.n, a.h, a.w, a.cin, a.cout, 1, 1, padded_cout(a.cin), padded_cout(a.cout));
  const long tiles = long(a.n) * geo.tiles_y * geo.tiles_x;
  geo.tb = winograd::tiles_per_block<S>(geo.cin_pad * long(sizeof(float)), geo.cout_pad, tiles,
                                         a.nthreads, S::kGemmRows);
  const long blocks = (tiles + geo.tb - 1) / geo.tb;
  const T* x = static_cast<const T*>(a.x);
  const T* g = static_cast<const T*>(a.g);
  const int cvecs = geo.cin_pad / S::kW;
  bool out_of_memory = false;

#pragma omp parallel num_threads(a.nthreads)
  {
    float* part = partials + std::size_t(omp_get_thread_num()) * stride;
    float* db = part + std::size_t(36) * a.cout * geo.cin_pad;
    float* vbuf = thread_scratch(36 * std::size_t(geo.tb) * geo.cin_pad, 0);
    float* gbuf = thread_scratch(36 * std::size_t(geo.tb) * geo.cout_pad, 1);
    if (vbuf == nullptr || gbuf == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    }
#pragma omp for schedule(static)
    for (long blk = 0; blk < blocks; ++blk) {
      if (vbuf == nullptr || gbuf == nullptr) continue;
      const long t0 = blk * geo.tb;
      const int nt = int(tiles - t0 < geo.tb ? tiles - t0 : geo.tb);
      winograd::transform_inputs<S, T, false, float>(geo, x, t0, nt, nt, vbuf);
      transform_grads<S, T>(geo, g, static_cast<const T*>(a.g_mask), t0, nt, gbuf, db);
      for (int pos = 0; pos < 36; ++pos) {
        const float* gp = gbuf + std::size_t(pos) * geo.tb * geo.cout_pad;
        const float* vp = vbuf + std::size_t(pos) * geo.tb * geo.cin_pad;
        float* dp = part + std::size_t(pos) * a.cout * geo.cin_pad;
        for (int co = 0; co < a.cout; co += R)
          for (int v0 = 0; v0 < cvecs; v0 += NV)
            tile_outer_rv<S, R, NV>(min_int(R, a.cout - co), min_int(NV, cvecs - v0), gp + co,
                                    geo.cout_pad, vp + v0 * S::kW, geo.cin_pad, nt,
                                    dp + std::size_t(co) * geo.cin_pad + v0 * S::kW, geo.cin_pad);
      }
    }
  }
  if (out_of_memory) throw std::bad_alloc();
}

}  // namespace redkern::cpu::wgrad
