// Register-blocked direct 3x3 convolution, a template on the ISA's vector type S and the
// activation storage type T (float or bf16_t). Instantiated once per ISA translation unit.
//
// Work unit: one output row of one image; threads take runs of consecutive rows. The three
// input rows an output row needs are kept in fp32 with one zero pixel on either side (a ring
// of three, so each input row is widened once per run), so the micro-kernel runs without
// bounds checks; rows above and below the image are skipped taps.
//
// Micro-kernel: PX consecutive output pixels x NV vectors of output channels live in
// registers for the whole 9 x cin reduction. Per tap and input channel it loads NV packed
// weight vectors, broadcasts one input value per pixel and issues PX * NV FMAs. Weights are
// packed [cout/16][tap][cin][16], so each vector's weights are one sequential stream (with
// [tap][cin][cout] the reads stride by cout_pad and stall on L1 misses). The epilogue
// (bias, ReLU, skip, residual) runs on the registers before the only store, so nothing
// intermediate goes to memory.
#pragma once

#include <new>

#include "cpu/kernel_util.h"

namespace redkern::cpu::direct {

// Activations of one input row into the row buffer: widened to fp32, or bf16 kept as is.
template <class S, class T>
void copy_channels(const T* src, float* dst, int n) {
  widen_copy<S>(src, dst, n);
}
template <class S>
void copy_channels(const bf16_t* src, bf16_t* dst, int n) {
  std::memcpy(dst, src, std::size_t(n) * sizeof(bf16_t));
}

// Three input rows of one image, indexed by row modulo 3, each with a zero pixel on either
// side and `stride` >= cin channels per pixel (channels cin .. stride-1 are zero).
template <class S, class T, class B = float>
struct RowRing {
  B* buf;  // 3 rows of (w + 2) pixels x stride values
  const T* x;
  int h, w, cin, stride;
  long tag[3] = {-1, -1, -1};  // global row (image * h + iy) held by each slot

  // Padded row iy of image b (pixel p of the buffer is input column p - 1), or null if iy is
  // outside the image (that tap contributes nothing).
  const B* get(int b, int iy) {
    if (iy < 0 || iy >= h) return nullptr;
    const long row = long(b) * h + iy;
    B* dst = buf + std::size_t(iy % 3) * (w + 2) * stride;
    if (tag[iy % 3] != row) {
      const T* src = x + std::size_t(row) * w * cin;
      std::memset(dst, 0, stride * sizeof(B));
      std::memset(dst + std::size_t(w + 1) * stride, 0, stride * sizeof(B));
      if (stride == cin) {
        copy_channels<S>(src, dst + stride, w * cin);
      } else {
        for (int p = 0; p < w; ++p) {
          B* px = dst + std::size_t(p + 1) * stride;
          copy_channels<S>(src + std::size_t(p) * cin, px, cin);
          std::memset(px + cin, 0, (stride - cin) * sizeof(B));
        }
      }
      tag[iy % 3] = row;
    }
    return dst;
  }
};

// One output row's work for the micro-kernels. B is the row buffers' type (fp32 here, bf16
// pairs for the vdpbf16ps kernel), `stride` their values per pixel.
template <class T, class B = float>
struct RowJob {
  const B* rows[3];  // padded input rows oy-1, oy, oy+1 (null outside the image)
  const float* packed;
  const float* bias;
  const T* extra_row;  // this output row of the skip/residual, or null
  T* y_row;
  int w, stride, cout, cout_pad;
  Epilogue epi;
};

// PX output pixels starting at ox x NV vectors of output channels starting at co.
template <class S, class T, int PX, int NV>
void direct_block(const RowJob<T>& j, int ox, int co) {
  // Every loop over PX or NV is unrolled, so `acc` is indexed by constants only and lives in
  // registers (a variable index anywhere would put the whole array on the stack).
  using V = typename S::V;
  V acc[PX][NV];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = S::zero();

  const int cin = j.stride;  // fp32 rows hold exactly cin channels per pixel
  const std::size_t tap_floats = std::size_t(cin) * 16;
  const float* wv[NV];  // vector v's weights for tap 0, input channel 0
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int c = co + v * S::kW;
    wv[v] = j.packed + (c / 16) * 9 * tap_floats + c % 16;
  }
  for (int ky = 0; ky < 3; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < 3; ++kx) {
      const float* xp = j.rows[ky] + std::size_t(ox + kx) * cin;
      const std::size_t tap = (ky * 3 + kx) * tap_floats;
      for (int ci = 0; ci < cin; ++ci, ++xp) {
        V w[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) w[v] = S::load(wv[v] + tap + std::size_t(ci) * 16);
#pragma GCC unroll 8
        for (int p = 0; p < PX; ++p) {
          const V xb = S::bcast(xp + p * cin);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[p][v] = S::fma(xb, w[v], acc[p][v]);
        }
      }
    }
  }

#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int c = co + v * S::kW, n = min_int(j.cout - c, S::kW);
    if (n <= 0) continue;  // padding channels: computed on zero weights, never stored
    const V b = n == S::kW ? S::load(j.bias + c) : S::loadn(j.bias + c, n);
#pragma GCC unroll 8
    for (int p = 0; p < PX; ++p) {
      const std::size_t at = std::size_t(ox + p) * j.cout + c;
      finish_store<S, T>(acc[p][v], b, j.extra_row ? j.extra_row + at : nullptr, j.y_row + at,
                         n, j.epi);
    }
  }
}

// Calls direct_block with compile-time PX = px (1..PX) and NV = nv (1..NV).
template <class S, class T, int NV, int PX>
void block_px(const RowJob<T>& j, int px, int ox, int co) {
  if constexpr (PX > 1) {
    if (px < PX) return block_px<S, T, NV, PX - 1>(j, px, ox, co);
  }
  direct_block<S, T, PX, NV>(j, ox, co);
}

template <class S, class T, int NV>
void block(const RowJob<T>& j, int nv, int px, int ox, int co) {
  if constexpr (NV > 1) {
    if (nv < NV) return block<S, T, NV - 1>(j, nv, px, ox, co);
  }
  block_px<S, T, NV, S::kDirectPixels>(j, px, ox, co);
}

// One output row, pixels outer and channel blocks inner: a pixel block's output is written
// in one contiguous run and its input is reused from L1 by every channel block. (Splitting
// the nine taps into per-kernel-row passes, so that a pass's weights stay in L1, measured
// about 3% slower here.)
template <class S, class T>
void direct_row(const RowJob<T>& j) {
  constexpr int PX = S::kDirectPixels, NV = S::kDirectVecs;
  for (int ox = 0; ox < j.w; ox += PX)
    for (int co = 0; co < j.cout_pad; co += NV * S::kW)
      block<S, T, NV>(j, min_int(NV, (j.cout_pad - co) / S::kW), min_int(PX, j.w - ox), ox, co);
}

// Runs `row(job)` for every output row: rows handed to threads a few at a time
// (dynamically, so a thread the OS preempts does not hold the others up at the end), each
// with its three padded input rows from the thread's ring. `stride` is the row buffers'
// values per pixel (>= cin; the extra channels are zero).
template <class S, class T, class B, class Row>
void for_each_row(const Conv3x3Args& a, int stride, Row row) {
  constexpr int kRowsPerGrab = 4;
  const long rows = long(a.n) * a.h;
  const std::size_t ring_bytes = 3 * std::size_t(a.w + 2) * stride * sizeof(B);
  const std::size_t ring_floats = (ring_bytes + sizeof(float) - 1) / sizeof(float);
  const T* x = static_cast<const T*>(a.x);
  const T* extra = static_cast<const T*>(a.extra);
  T* y = static_cast<T*>(a.y);
  bool out_of_memory = false;

#pragma omp parallel num_threads(a.nthreads)
  {
    B* buf = reinterpret_cast<B*>(thread_scratch(ring_floats, 0));
    if (buf == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    }
    RowRing<S, T, B> ring{buf, x, a.h, a.w, a.cin, stride};
    RowJob<T, B> j{{}, a.packed, a.bias, nullptr, nullptr, a.w, stride, a.cout,
                   padded_cout(a.cout), a.epilogue};
    // Consecutive rows share two input rows in the ring: hand them out in runs.
#pragma omp for schedule(dynamic, kRowsPerGrab)
    for (long r = 0; r < rows; ++r) {
      if (buf == nullptr) continue;
      const int b = int(r / a.h), oy = int(r % a.h);
      for (int ky = 0; ky < 3; ++ky) j.rows[ky] = ring.get(b, oy + ky - 1);
      j.y_row = y + std::size_t(r) * a.w * a.cout;
      j.extra_row = extra ? extra + std::size_t(r) * a.w * a.cout : nullptr;
      row(j);
    }
  }
  if (out_of_memory) throw std::bad_alloc();
}

template <class S, class T>
void conv3x3_direct(const Conv3x3Args& a) {
  for_each_row<S, T, float>(a, a.cin, direct_row<S, T>);
}

}  // namespace redkern::cpu::direct
