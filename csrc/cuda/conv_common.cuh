// What the 3x3 and 1x1 kernels share: their parameters, the fused epilogue of one output
// element, and the staging of a chunk of packed weights. Everything here is plain CUDA; the
// same source is compiled by g++ against csrc/cuda_emu for the host emulation tests
// (REDKERN_CUDA_EMULATION).
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/epilogue.h"
#include "cuda/conv.h"
#include "cuda/device_compat.cuh"

// The emulation compiles the kernels a second time, with planted bugs, in another namespace.
#ifndef REDKERN_KERNEL_VARIANT
#define REDKERN_KERNEL_VARIANT standard
#endif

namespace redkern::cuda {
inline namespace REDKERN_KERNEL_VARIANT {

// What a kernel gets by value; pointers are to T (the launch's dtype), the slopes fp32.
struct ConvParams {
  const void* x;
  const void* w;
  const void* bias;
  const void* extra;
  void* y;
  std::int64_t pixels;  // n * h * width
  int n, h, width, cin, cout, cin_pad, cout_pad;
  int tiles_x;  // 3x3: spatial tiles per row of tiles; blockIdx.x = tile_y * tiles_x + tile_x
  int vec_x;    // input pixels may be read as 16-byte vectors (cin and x aligned to them)
  EpilogueParams ep;
};

// The parameters of a launch of `plan` (the grid is the dispatcher's business).
inline ConvParams conv_params(const ConvArgs& a, const Plan& plan) {
  const int vec = 16 / dtype_size(a.dtype);
  ConvParams p{};
  p.x = a.x;
  p.w = a.w;
  p.bias = a.bias;
  p.extra = a.extra;
  p.y = a.y;
  p.pixels = std::int64_t(a.n) * a.h * a.width;
  p.n = a.n;
  p.h = a.h;
  p.width = a.width;
  p.cin = a.cin;
  p.cout = a.cout;
  p.cin_pad = plan.cin_pad;
  p.cout_pad = plan.cout_pad;
  p.tiles_x = (a.width + kTileW - 1) / kTileW;
  p.vec_x = a.cin % vec == 0 && reinterpret_cast<std::uintptr_t>(a.x) % 16 == 0;
  p.ep = a.epilogue;
  return p;
}

// The epilogue codes of a call, as the kernels see them. FixedEpilogue makes them
// compile-time constants for the layers RED-Net and most restoration CNNs are made of, so
// that their per-element code has no branches on the codes; every other combination runs
// GeneralEpilogue, the same arithmetic (apply_epilogue) on the codes read at run time.
template <Act ACT, Residual RES, Act ACT2>
struct FixedEpilogue {
  static constexpr bool kGeneral = false;
  __device__ __forceinline__ static EpilogueParams params(const EpilogueParams& e) {
    EpilogueParams q = e;
    q.act = ACT;
    q.residual = RES;
    q.act2 = ACT2;
    return q;
  }
};
struct GeneralEpilogue {
  static constexpr bool kGeneral = true;
  __device__ __forceinline__ static EpilogueParams params(const EpilogueParams& e) { return e; }
};

// y[pixel, c] = epilogue(acc, bias[c], extra[pixel, c]): computed in fp32, rounded once.
template <typename T, class Epi>
__device__ __forceinline__ void store_output(const ConvParams& p, std::size_t pixel, int c, float acc) {
  const EpilogueParams e = Epi::params(p.ep);
  const std::size_t i = pixel * p.cout + c;
  const float bias = to_float(static_cast<const T*>(p.bias)[c]);
  const float extra =
      e.residual != Residual::kNONE ? to_float(static_cast<const T*>(p.extra)[i]) : 0.f;
  // The planted bug reads every channel's slope from channel 0 (a per-channel PReLU weight
  // taken as one scalar).
  const int slope_channel = REDKERN_PLANTED(kSharedSlope) ? 0 : c;
  static_cast<T*>(p.y)[i] = from_float<T>(apply_epilogue(acc, bias, extra, e, slope_channel));
}

template <typename T, int BN, int M, int LDS, class Epi, class PixelOf>
__device__ __forceinline__ void store_staged_as(const ConvParams& p, const float* stage, int n0,
                                                PixelOf pixel_of) {
  const int nvalid = p.cout - n0 < BN ? p.cout - n0 : BN;
  auto one = [&](int e) {
    const int m = e / BN, c = e % BN;
    std::size_t pixel;
    if (c < nvalid && pixel_of(m, pixel)) store_output<T, Epi>(p, pixel, n0 + c, stage[m * LDS + c]);
  };
  if constexpr (Epi::kGeneral) {
    // Unrolled, the general code (tanhf, slopes, both residual joins) costs registers.
#pragma unroll 1
    for (int e = threadIdx.x; e < M * BN; e += kThreads) one(e);
  } else {
    for (int e = threadIdx.x; e < M * BN; e += kThreads) one(e);
  }
}

// The epilogue of a block whose fp32 sums are staged in shared memory, stage[m * LDS + c]
// for its M pixels m and BN channels c (from output channel n0 on): consecutive threads
// take consecutive channels of a pixel, so extra is read and y written in coalesced runs.
// pixel_of(m, pixel) sets the output pixel (NHWC index) of m and says whether it exists.
template <typename T, int BN, int M, int LDS, class PixelOf>
__device__ __forceinline__ void store_staged(const ConvParams& p, const float* stage, int n0,
                                             PixelOf pixel_of) {
  const EpilogueParams& e = p.ep;
  if (e.residual == Residual::kNONE && e.act == Act::kRELU)  // relu(conv + b)
    return store_staged_as<T, BN, M, LDS, FixedEpilogue<Act::kRELU, Residual::kNONE, Act::kIDENTITY>>(
        p, stage, n0, pixel_of);
  if (e.residual == Residual::kAFTER_ACT && e.act == Act::kRELU && e.act2 == Act::kRELU)
    return store_staged_as<T, BN, M, LDS, FixedEpilogue<Act::kRELU, Residual::kAFTER_ACT, Act::kRELU>>(
        p, stage, n0, pixel_of);  // relu(relu(conv + b) + beta * skip)
  if (e.residual == Residual::kBEFORE_ACT && e.act == Act::kIDENTITY)
    return store_staged_as<T, BN, M, LDS,
                           FixedEpilogue<Act::kIDENTITY, Residual::kBEFORE_ACT, Act::kIDENTITY>>(
        p, stage, n0, pixel_of);  // alpha * conv + b + beta * residual
  store_staged_as<T, BN, M, LDS, GeneralEpilogue>(p, stage, n0, pixel_of);
}

// Stage the packed weights of input channels [c0, c0+CK), output channels [n0, n0+BN), into
// tile[tap*CK + k][BNP], as 16-byte vectors (the packing pads both channel counts).
template <typename T, int TAPS, int BN, int CK, int BNP>
__device__ __forceinline__ void load_weight_tile(const ConvParams& p, int c0, int n0, T* tile) {
  constexpr int V = 16 / sizeof(T);
  constexpr int kVecs = BN / V;
  static_assert(BN % V == 0 && BNP % V == 0, "weight rows must be whole 16-byte vectors");
  const T* w = static_cast<const T*>(p.w);
  for (int i = threadIdx.x; i < TAPS * CK * kVecs; i += kThreads) {
    const int row = i / kVecs, c = (i % kVecs) * V;
    const int tap = row / CK, k = row % CK;
    *reinterpret_cast<uint4*>(tile + row * BNP + c) = *reinterpret_cast<const uint4*>(
        w + (std::size_t(tap) * p.cin_pad + c0 + k) * p.cout_pad + n0 + c);
  }
}

}  // namespace REDKERN_KERNEL_VARIANT
}  // namespace redkern::cuda
