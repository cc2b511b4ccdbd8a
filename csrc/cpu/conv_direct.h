// Register-blocked direct KxK convolution, a template on the ISA's vector type S and the
// activation storage type T (float or bf16_t). Instantiated once per ISA translation unit.
//
// Work unit: one output row of one image; threads take runs of consecutive rows. The kh
// input rows an output row needs are kept in fp32 with pw zero pixels on either side (a
// ring of kh rows, so each input row is widened once per run), so the micro-kernel runs
// without bounds checks; rows above and below the image are skipped taps. Where no copy is
// needed (fp32 rows, pw == 0) the rows are read from x in place. A 1x1 kernel is a GEMM
// over all pixels: its rows are runs of consecutive pixels of the whole batch (for_each_run).
//
// Micro-kernel: PX consecutive output pixels x NV vectors of output channels live in
// registers for the whole kh x kw x cin reduction. Per tap and input channel it loads NV
// packed weight vectors, broadcasts one input value per pixel and issues PX * NV FMAs.
// Weights are packed [cout/16][tap][cin][16], so each vector's weights are one sequential
// stream (with [tap][cin][cout] the reads stride by cout_pad and stall on L1 misses). The
// 3x3 window is a compile-time loop (RED-Net's layers); other sizes run the same code with
// run-time bounds. The epilogue runs on the registers before the only store, so nothing
// intermediate goes to memory.
#pragma once

#include <new>

#include "cpu/kernel_util.h"

namespace redkern::cpu::direct {

// Activations into a row buffer: widened to fp32, or bf16 kept as is.
template <class S, class T>
void copy_channels(const T* src, float* dst, int n) {
  widen_copy<S>(src, dst, n);
}
template <class S>
void copy_channels(const bf16_t* src, bf16_t* dst, int n) {
  std::memcpy(dst, src, std::size_t(n) * sizeof(bf16_t));
}

// `pixels` pixels of `cin` channels into a buffer of `stride` >= cin values per pixel
// (channels cin .. stride-1 zero).
template <class S, class T, class B>
void copy_pixels(const T* src, B* dst, int pixels, int cin, int stride) {
  if (stride == cin) {
    copy_channels<S>(src, dst, pixels * cin);
    return;
  }
  for (int p = 0; p < pixels; ++p) {
    B* px = dst + std::size_t(p) * stride;
    copy_channels<S>(src + std::size_t(p) * cin, px, cin);
    std::memset(px + cin, 0, std::size_t(stride - cin) * sizeof(B));
  }
}

// The kh input rows (of one image) the current output row needs, indexed by row modulo kh,
// each with pw zero pixels on either side and `stride` >= cin channels per pixel.
template <class S, class T, class B>
struct RowRing {
  B* buf;  // kh slots of (w + 2 pw) pixels x stride values
  long* tag;  // global row (image * h + iy) held by each slot
  const T* x;
  int h, w, cin, stride, pw, kh;
  bool in_place;  // pw == 0, stride == cin and B == T: rows are x's own

  std::size_t slot_values() const { return std::size_t(w + 2 * pw) * stride; }

  // Padded row iy of image b (pixel p of the buffer is input column p - pw), or null if iy
  // is outside the image (that tap row contributes nothing).
  const B* get(int b, int iy) {
    if (iy < 0 || iy >= h) return nullptr;
    const long row = long(b) * h + iy;
    const T* src = x + std::size_t(row) * w * cin;
    if constexpr (same_type<T, B>::value) {  // an exact copy would be x's own row
      if (in_place) return src;
    }
    const int slot = iy % kh;
    B* dst = buf + std::size_t(slot) * slot_values();
    if (tag[slot] != row) {
      const std::size_t pad = std::size_t(pw) * stride;
      std::memset(dst, 0, pad * sizeof(B));
      std::memset(dst + pad + std::size_t(w) * stride, 0, pad * sizeof(B));
      copy_pixels<S>(src, dst + pad, w, cin, stride);
      tag[slot] = row;
    }
    return dst;
  }
};

// One output row's (or run's) work for the micro-kernels. B is the row buffers' type (fp32
// here, bf16 pairs for the vdpbf16ps kernel), `stride` their values per pixel.
template <class T, class B = float>
struct RowJob {
  const B* const* rows;  // kh input rows; pixel ox + kx of row ky is tap (ky, kx) of output
                         // pixel ox (null rows: outside the image)
  const float* packed;
  const float* bias;
  const T* extra_row;  // this output row of the skip/residual, or null
  T* y_row;
  int w;  // output pixels
  int stride, cout, cout_pad, kh, kw;
  EpiMode mode;
  const EpilogueParams* epi;
};

// The epilogue of mode M on PX pixels x NV vectors of accumulators, stored.
template <EpiMode M, class S, class T, int PX, int NV, class Job>
__attribute__((always_inline)) inline void store_fixed(const typename S::V (&acc)[PX][NV],
                                                       const Job& j, int ox, int co) {
  using V = typename S::V;
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int c = co + v * S::kW, n = min_int(j.cout - c, S::kW);
    if (n <= 0) continue;  // padding channels: computed on zero weights, never stored
    const V b = n == S::kW ? S::load(j.bias + c) : S::loadn(j.bias + c, n);
#pragma GCC unroll 8
    for (int p = 0; p < PX; ++p) {
      const std::size_t at = std::size_t(ox + p) * j.cout + c;
      finish_store<M, S, T>(acc[p][v], b, j.extra_row ? j.extra_row + at : nullptr,
                            j.y_row + at, n, c, *j.epi);
    }
  }
}

// The block's epilogue and store: RED-Net's epilogues on the registers, any other through
// the general (out-of-line) path.
template <class S, class T, int PX, int NV, class Job>
__attribute__((always_inline)) inline void store_block(const typename S::V (&acc)[PX][NV],
                                                       const Job& j, int ox, int co) {
  switch (j.mode) {
    case EpiMode::kRelu: return store_fixed<EpiMode::kRelu, S, T>(acc, j, ox, co);
    case EpiMode::kReluAddRelu: return store_fixed<EpiMode::kReluAddRelu, S, T>(acc, j, ox, co);
    case EpiMode::kAddResidual: return store_fixed<EpiMode::kAddResidual, S, T>(acc, j, ox, co);
    default: break;
  }
  const int nch = min_int(j.cout - co, NV * S::kW);
  if (nch <= 0) return;
  float spill[PX * NV * S::kW];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) S::store(spill + (p * NV + v) * S::kW, acc[p][v]);
  const std::size_t at = std::size_t(ox) * j.cout;
  store_general<S, T>(spill, NV * S::kW, PX, co, nch, j.bias,
                      j.extra_row ? j.extra_row + at : nullptr, j.y_row + at, j.cout, *j.epi);
}

// PX output pixels starting at ox x NV vectors of output channels starting at co. KH, KW:
// the window at compile time, or 0 for the job's (run-time) kh, kw.
template <class S, class T, int KH, int KW, int PX, int NV>
void direct_block(const RowJob<T>& j, int ox, int co) {
  // Every loop over PX or NV is unrolled, so `acc` is indexed by constants only and lives in
  // registers (a variable index anywhere would put the whole array on the stack).
  using V = typename S::V;
  V acc[PX][NV];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[p][v] = S::zero();

  const int kh = KH > 0 ? KH : j.kh, kw = KW > 0 ? KW : j.kw;
  const int cin = j.stride;  // fp32 rows hold exactly cin channels per pixel
  const std::size_t tap_floats = std::size_t(cin) * 16;
  const float* wv[NV];  // vector v's weights for tap 0, input channel 0
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int c = co + v * S::kW;
    wv[v] = j.packed + std::size_t(c / 16) * (kh * kw) * tap_floats + c % 16;
  }
  for (int ky = 0; ky < kh; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < kw; ++kx) {
      const float* xp = j.rows[ky] + std::size_t(ox + kx) * cin;
      const std::size_t tap = std::size_t(ky * kw + kx) * tap_floats;
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
  store_block<S, T, PX, NV>(acc, j, ox, co);
}

// Calls direct_block with compile-time PX = px (1..PX) and NV = nv (1..NV).
template <class S, class T, int KH, int KW, int NV, int PX>
void block_px(const RowJob<T>& j, int px, int ox, int co) {
  if constexpr (PX > 1) {
    if (px < PX) return block_px<S, T, KH, KW, NV, PX - 1>(j, px, ox, co);
  }
  direct_block<S, T, KH, KW, PX, NV>(j, ox, co);
}

template <class S, class T, int KH, int KW, int NV>
void block(const RowJob<T>& j, int nv, int px, int ox, int co) {
  if constexpr (NV > 1) {
    if (nv < NV) return block<S, T, KH, KW, NV - 1>(j, nv, px, ox, co);
  }
  block_px<S, T, KH, KW, NV, S::kDirectPixels>(j, px, ox, co);
}

// One output row, pixels outer and channel blocks inner: a pixel block's output is written
// in one contiguous run and its input is reused from L1 by every channel block. (Splitting
// the nine taps into per-kernel-row passes, so that a pass's weights stay in L1, measured
// about 3% slower here.)
template <class S, class T, int KH, int KW>
void direct_row(const RowJob<T>& j) {
  constexpr int PX = S::kDirectPixels, NV = S::kDirectVecs;
  for (int ox = 0; ox < j.w; ox += PX)
    for (int co = 0; co < j.cout_pad; co += NV * S::kW)
      block<S, T, KH, KW, NV>(j, min_int(NV, (j.cout_pad - co) / S::kW), min_int(PX, j.w - ox),
                              ox, co);
}

// Scratch of one thread: the row pointers, the ring's tags and the row buffers (64-byte
// aligned), carved from one thread_scratch block. Null when memory ran out. (A template on
// S only for the linkage rule of kernel_util.h.)
template <class S, class B>
struct RowScratch {
  const B** rows = nullptr;
  long* tag = nullptr;
  B* buf = nullptr;

  static std::size_t head_bytes(int slots) {
    return (std::size_t(slots) * (sizeof(void*) + sizeof(long)) + 63) / 64 * 64;
  }
  RowScratch(int slots, std::size_t buf_values) {
    const std::size_t bytes = head_bytes(slots) + buf_values * sizeof(B);
    char* base = reinterpret_cast<char*>(thread_scratch((bytes + sizeof(float) - 1) / sizeof(float), 0));
    if (base == nullptr) return;
    rows = reinterpret_cast<const B**>(base);
    tag = reinterpret_cast<long*>(base + std::size_t(slots) * sizeof(void*));
    buf = reinterpret_cast<B*>(base + head_bytes(slots));
    for (int i = 0; i < slots; ++i) tag[i] = -1;
  }
};

// Pixels per run of the 1x1 GEMM: a multiple of the pixel blocking, its input (at most
// 96 x 128 fp32 channels = 48 KiB) about L1-sized.
template <class S>
constexpr int gemm_run_pixels() {
  return S::kDirectPixels * 16;
}

// Runs `row(job)` for every output row: rows handed to threads a few at a time
// (dynamically, so a thread the OS preempts does not hold the others up at the end), each
// with its kh padded input rows from the thread's ring. `stride` is the row buffers'
// values per pixel (>= cin; the extra channels are zero). A 1x1 kernel (no padding: a GEMM)
// goes instead in runs of consecutive pixels across rows and images.
template <class S, class T, class B, class Row>
void for_each_row(const ConvArgs& a, int stride, Row row) {
  const T* x = static_cast<const T*>(a.x);
  const T* extra = static_cast<const T*>(a.extra);
  T* y = static_cast<T*>(a.y);
  const EpiMode mode = epilogue_mode(a.epilogue);
  // Rows read from x itself when the buffer would be an exact copy.
  const bool in_place = same_type<T, B>::value && a.pw == 0 && stride == a.cin;
  bool out_of_memory = false;

  if (a.kh == 1 && a.kw == 1) {  // then ph == pw == 0, oh == h, ow == w
    constexpr int kRun = gemm_run_pixels<S>();
    const long pixels = long(a.n) * a.h * a.w;
    const long runs = (pixels + kRun - 1) / kRun;
#pragma omp parallel num_threads(a.nthreads)
    {
      RowScratch<S, B> s(1, in_place ? 0 : std::size_t(kRun) * stride);
      if (s.rows == nullptr) {
#pragma omp atomic write
        out_of_memory = true;
      }
      RowJob<T, B> j{s.rows, a.packed, a.bias, nullptr, nullptr, 0, stride, a.cout,
                     padded_cout(a.cout), 1, 1, mode, &a.epilogue};
#pragma omp for schedule(dynamic, 4)
      for (long r = 0; r < runs; ++r) {
        if (s.rows == nullptr) continue;
        const long p0 = r * kRun;
        const int np = int(pixels - p0 < kRun ? pixels - p0 : kRun);
        const T* src = x + std::size_t(p0) * a.cin;
        if constexpr (same_type<T, B>::value) {
          if (in_place) s.rows[0] = src;
        }
        if (!in_place) {
          copy_pixels<S>(src, s.buf, np, a.cin, stride);
          s.rows[0] = s.buf;
        }
        j.w = np;
        j.y_row = y + std::size_t(p0) * a.cout;
        j.extra_row = extra ? extra + std::size_t(p0) * a.cout : nullptr;
        row(j);
      }
    }
    if (out_of_memory) throw std::bad_alloc();
    return;
  }

  constexpr int kRowsPerGrab = 4;
  const long rows = long(a.n) * a.oh;
  const std::size_t slot_values = std::size_t(a.w + 2 * a.pw) * stride;
#pragma omp parallel num_threads(a.nthreads)
  {
    RowScratch<S, B> s(a.kh, in_place ? 0 : std::size_t(a.kh) * slot_values);
    if (s.rows == nullptr) {
#pragma omp atomic write
      out_of_memory = true;
    }
    RowRing<S, T, B> ring{s.buf, s.tag, x, a.h, a.w, a.cin, stride, a.pw, a.kh, in_place};
    RowJob<T, B> j{s.rows, a.packed, a.bias, nullptr, nullptr, a.ow, stride, a.cout,
                   padded_cout(a.cout), a.kh, a.kw, mode, &a.epilogue};
    // Consecutive rows share kh - 1 input rows in the ring: hand them out in runs.
#pragma omp for schedule(dynamic, kRowsPerGrab)
    for (long r = 0; r < rows; ++r) {
      if (s.rows == nullptr) continue;
      const int b = int(r / a.oh), oy = int(r % a.oh);
      for (int ky = 0; ky < a.kh; ++ky) s.rows[ky] = ring.get(b, oy - a.ph + ky);
      j.y_row = y + std::size_t(r) * a.ow * a.cout;
      j.extra_row = extra ? extra + std::size_t(r) * a.ow * a.cout : nullptr;
      row(j);
    }
  }
  if (out_of_memory) throw std::bad_alloc();
}

// y for any window; 3x3 with the window at compile time.
template <class S, class T>
void conv_direct(const ConvArgs& a) {
  if (a.kh == 3 && a.kw == 3)
    for_each_row<S, T, float>(a, a.cin, direct_row<S, T, 3, 3>);
  else
    for_each_row<S, T, float>(a, a.cin, direct_row<S, T, 0, 0>);
}

}  // namespace redkern::cpu::direct
