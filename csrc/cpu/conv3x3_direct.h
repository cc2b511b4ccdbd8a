// Register-blocked direct 3x3 convolution, a template on the ISA's vector type S and the
// activation storage type T (float or bf16_t). Instantiated once per ISA translation unit.
//
// Work unit: one output row of one image; each thread takes a contiguous range of rows.
// The three input rows an output row needs are kept in fp32 with one zero pixel on either
// side (a ring of three, so each input row is widened once per thread), so the micro-kernel
// runs without bounds checks; rows above and below the image are skipped taps.
//
// Micro-kernel: PX consecutive output pixels x NV vectors of output channels live in
// registers for the whole 9 x cin reduction. Per tap and input channel it loads NV packed
// weight vectors (layout [tap][cin][cout_pad], cout contiguous), broadcasts one input value
// per pixel and issues PX * NV FMAs. The epilogue (bias, ReLU, skip, residual) runs on the
// registers before the only store, so nothing intermediate goes to memory.
#pragma once

#include <omp.h>

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
  int stride, cout, cout_pad;
  Epilogue epi;
};

// PX output pixels starting at ox x NV vectors of output channels starting at co.
template <class S, class T, int PX, int NV>
void direct_block(const RowJob<T>& j, int ox, int co) {
  using V = typename S::V;
  V acc[PX][NV];
  for (int p = 0; p < PX; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = S::zero();

  const int cin = j.stride;  // fp32 rows hold exactly cin channels per pixel
  for (int ky = 0; ky < 3; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < 3; ++kx) {
      const float* xp = j.rows[ky] + std::size_t(ox + kx) * cin;
      const float* wp = j.packed + std::size_t(ky * 3 + kx) * cin * j.cout_pad + co;
      for (int ci = 0; ci < cin; ++ci, ++xp, wp += j.cout_pad) {
        V wv[NV];
        for (int v = 0; v < NV; ++v) wv[v] = S::load(wp + v * S::kW);
        for (int p = 0; p < PX; ++p) {
          const V xb = S::bcast(xp + p * cin);
          for (int v = 0; v < NV; ++v) acc[p][v] = S::fma(xb, wv[v], acc[p][v]);
        }
      }
    }
  }

  for (int v = 0; v < NV; ++v) {
    const int c = co + v * S::kW, n = min_int(j.cout - c, S::kW);
    if (n <= 0) break;  // padding channels: computed on zero weights, never stored
    const V b = n == S::kW ? S::load(j.bias + c) : S::loadn(j.bias + c, n);
    for (int p = 0; p < PX; ++p) {
      const std::size_t at = std::size_t(ox + p) * j.cout + c;
      finish_store<S, T>(acc[p][v], b, j.extra_row ? j.extra_row + at : nullptr, j.y_row + at,
                         n, j.epi);
    }
  }
}

// Calls direct_block with compile-time PX = px (1..S::kDirectPixels), NV = nv (1..NV).
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

// Runs `block(job, nv, px, ox, co)` over the whole output: output rows split into one
// contiguous range per thread, each row in chunks of pixels, each chunk swept by blocks of
// S::kDirectVecs vectors of output channels and S::kDirectPixels pixels.
template <class S, class T, class B, class Block>
void for_each_block(const Conv3x3Args& a, int stride, Block block) {
  constexpr int PX = S::kDirectPixels, NV = S::kDirectVecs;
  // Pixels per sweep over the output channels: the input they read (3 rows x (chunk + 2)
  // pixels) stays in L1/L2 while every channel block passes over it.
  constexpr int kChunk = PX * 8;
  const int cout_pad = padded_cout(a.cout);
  const long rows = long(a.n) * a.h;
  const std::size_t ring_floats = div_up(3 * (a.w + 2) * stride * int(sizeof(B)), sizeof(float));
  const T* x = static_cast<const T*>(a.x);
  const T* extra = static_cast<const T*>(a.extra);
  T* y = static_cast<T*>(a.y);
  bool out_of_memory = false;

#pragma omp parallel num_threads(a.nthreads)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const long r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
    B* buf = r0 < r1 ? reinterpret_cast<B*>(thread_scratch(ring_floats, 0)) : nullptr;
    if (r0 < r1 && buf == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    } else if (r0 < r1) {
      RowRing<S, T, B> ring{buf, x, a.h, a.w, a.cin, stride};
      RowJob<T, B> j{{}, a.packed, a.bias, nullptr, nullptr, stride, a.cout, cout_pad, a.epilogue};
      for (long r = r0; r < r1; ++r) {
        const int b = int(r / a.h), oy = int(r % a.h);
        for (int ky = 0; ky < 3; ++ky) j.rows[ky] = ring.get(b, oy + ky - 1);
        j.y_row = y + std::size_t(r) * a.w * a.cout;
        j.extra_row = extra ? extra + std::size_t(r) * a.w * a.cout : nullptr;
        for (int ox0 = 0; ox0 < a.w; ox0 += kChunk) {
          const int ox1 = min_int(a.w, ox0 + kChunk);
          for (int co = 0; co < cout_pad; co += NV * S::kW) {
            const int nv = min_int(NV, (cout_pad - co) / S::kW);
            for (int ox = ox0; ox < ox1; ox += PX) block(j, nv, min_int(PX, ox1 - ox), ox, co);
          }
        }
      }
    }
  }
  if (out_of_memory) throw std::bad_alloc();
}

template <class S, class T>
void conv3x3_direct(const Conv3x3Args& a) {
  for_each_block<S, T, float>(a, a.cin, block<S, T, S::kDirectVecs>);
}

}  // namespace redkern::cpu::direct
