// The fused 3x3 convolution kernels, as implicit GEMMs over a shared-memory input window.
//
// GEMM view of one block: M = kTileH x kTileW output pixels, N = bn output channels,
// K = 9 taps x cin. For each chunk of ck input channels the block stages in shared memory
//   - the input window with its one-pixel halo, [(kTileH+2)*(kTileW+2)][ck] (zeros outside
//     the image and beyond cin), and
//   - the packed weights of the chunk, [9*ck][bn].
// Because a tile row is 16 pixels wide, the A operand of tap (ky, kx) for output row r is the
// window itself read from pixel (r+ky, kx) on, with the channel stride as leading dimension:
// no im2col copy. Everything the kernels touch is plain CUDA; the same source is compiled by
// g++ against csrc/cuda_emu for the host emulation tests (REDKERN_CUDA_EMULATION).
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

#include "cuda/conv_blocks.cuh"
#include "cuda/conv_common.cuh"

namespace redkern::cuda {
inline namespace REDKERN_KERNEL_VARIANT {

constexpr int kHaloW = kTileW + 2;
constexpr int kHaloPixels = (kTileH + 2) * kHaloW;

// Output pixel m (row-major in the tile) of tile (y0, x0) of image img, if inside the image.
struct TilePixel {
  const ConvParams& p;
  int img, y0, x0;
  __device__ __forceinline__ bool operator()(int m, std::size_t& pixel) const {
    const int gy = y0 + m / kTileW, gx = x0 + m % kTileW;
    pixel = (std::size_t(img) * p.h + gy) * p.width + gx;
    return gy < p.h && gx < p.width;
  }
};

// Stage channels [c0, c0+CK) of the input window around output tile (y0, x0) of one image
// into tile[pixel][CKP]: zeros outside the image and beyond cin.
template <typename T, int CK, int CKP>
__device__ __forceinline__ void load_input_tile(const ConvParams& p, const T* x, int y0, int x0,
                                                int c0, T* tile) {
  const int shift = REDKERN_PLANTED(kHaloShift) ? 1 : 0;
  if (p.vec_x) {
    constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
    constexpr int kVecs = CK / V;
#pragma unroll 1  // unrolled, the bounds arithmetic makes ptxas spill on sm_80
    for (int i = threadIdx.x; i < kHaloPixels * kVecs; i += kThreads) {
      const int pix = i / kVecs, c = (i % kVecs) * V;
      const int gy = y0 - 1 + pix / kHaloW, gx = x0 - 1 + pix % kHaloW + shift;
      const bool inside = gy >= 0 && gy < p.h && gx >= 0 && gx < p.width;
      uint4 v{0u, 0u, 0u, 0u};
      if (inside && c0 + c < p.cin)
        v = *reinterpret_cast<const uint4*>(x + (std::size_t(gy) * p.width + gx) * p.cin + c0 + c);
      else if (inside && REDKERN_PLANTED(kNoChannelZeroFill))
        continue;
      *reinterpret_cast<uint4*>(tile + pix * CKP + c) = v;
    }
  } else {
    const T zero = from_float<T>(0.f);
#pragma unroll 1
    for (int i = threadIdx.x; i < kHaloPixels * CK; i += kThreads) {
      const int pix = i / CK, c = i % CK;
      const int gy = y0 - 1 + pix / kHaloW, gx = x0 - 1 + pix % kHaloW + shift;
      const bool inside = gy >= 0 && gy < p.h && gx >= 0 && gx < p.width;
      T v = zero;
      if (inside && c0 + c < p.cin)
        v = x[(std::size_t(gy) * p.width + gx) * p.cin + c0 + c];
      else if (inside && REDKERN_PLANTED(kNoChannelZeroFill))
        continue;
      tile[pix * CKP + c] = v;
    }
  }
}

// The block geometry of conv_blocks.cuh: block x is tile (tile_y, tile_x) of image z; output
// pixel m is row m / kTileW, column m % kTileW of the tile; the staged window has the halo.
struct Geometry3x3 {
  static constexpr int kTaps = 9;
  static constexpr int kPixels = kTileH * kTileW;
  static constexpr int kWindowPixels = kHaloPixels;
  static_assert(kTileW == 16, "a wmma M fragment of 16 pixels is one tile row");

  const ConvParams& p;
  int img, y0, x0;

  __device__ __forceinline__ explicit Geometry3x3(const ConvParams& params)
      : p(params), img(blockIdx.z), y0(int(blockIdx.x) / params.tiles_x * kTileH),
        x0(int(blockIdx.x) % params.tiles_x * kTileW) {}

  __device__ __forceinline__ static int window_pixel(int m, int tap) {
    return (m / kTileW + tap / 3) * kHaloW + m % kTileW + tap % 3;
  }
  template <typename T, int CK, int CKP>
  __device__ __forceinline__ void load(const ConvParams& params, int c0, T* tile) const {
    const T* x = static_cast<const T*>(params.x) + std::size_t(img) * params.h * params.width * params.cin;
    load_input_tile<T, CK, CKP>(params, x, y0, x0, c0, tile);
  }
  __device__ __forceinline__ TilePixel pixel_of() const { return TilePixel{p, img, y0, x0}; }
};

// fp16 / bf16 on tensor cores: warp w owns output rows 2w and 2w+1 of the tile.
template <typename T, int BN, int CK>
__global__ void __launch_bounds__(kThreads) conv3x3_wmma(const ConvParams p) {
  wmma_block<Geometry3x3, T, BN, CK>(p, Geometry3x3(p), blockIdx.y * BN);
}

// fp32 on CUDA cores.
template <int BN, int CK>
__global__ void __launch_bounds__(kThreads) conv3x3_f32(const ConvParams p) {
  f32_block<Geometry3x3, BN, CK>(p, Geometry3x3(p), blockIdx.y * BN);
}

// --- choosing and launching a kernel -------------------------------------------------------

// Calls launch(name, kernel, grid, block, smem_bytes, params) once, for the kernel that
// plan_conv(dtype, 3, ...) picks: the one place that maps a Plan to a template instance. `launch` is
// cudaLaunchKernel for the real module and the emulator's launch for the host build.
template <class Launch>
void dispatch_conv3x3(const ConvArgs& a, Launch&& launch) {
  const Plan plan = plan_conv(a.dtype, 3, a.cin, a.cout);
  const ConvParams p = conv_params(a, plan);
  const int tiles_y = (a.h + kTileH - 1) / kTileH;
  const dim3 grid(unsigned(p.tiles_x) * unsigned(tiles_y), unsigned(plan.cout_pad / plan.bn),
                  unsigned(a.n));
  const dim3 block(kThreads);

  auto go = [&](auto kernel, const char* family, int bn, int ck, std::size_t smem) {
    const std::string name = std::string(family) + "_" + dtype_name(a.dtype) + "<bn=" +
                             std::to_string(bn) + ",ck=" + std::to_string(ck) + ">";
    launch(name.c_str(), kernel, grid, block, smem, p);
  };
  auto tensor_cores = [&](auto tag) {
    using T = decltype(tag);
#define REDKERN_WMMA_CASE(BN, CK)                                                        \
  if (plan.bn == BN && plan.ck == CK)                                                    \
    return go(&conv3x3_wmma<T, BN, CK>, "conv3x3_wmma", BN, CK, WmmaTiles<Geometry3x3, T, BN, CK>::kSmemBytes);
    REDKERN_WMMA_CASE(16, 16) REDKERN_WMMA_CASE(16, 32)
    REDKERN_WMMA_CASE(32, 16) REDKERN_WMMA_CASE(32, 32)
    REDKERN_WMMA_CASE(64, 16) REDKERN_WMMA_CASE(64, 32)
#undef REDKERN_WMMA_CASE
    throw std::logic_error("conv3x3: no wmma kernel for the plan");
  };
  switch (a.dtype) {
    case DType::kFloat32:
#define REDKERN_F32_CASE(BN, CK)                                                         \
  if (plan.bn == BN && plan.ck == CK)                                                    \
    return go(&conv3x3_f32<BN, CK>, "conv3x3", BN, CK, F32Tiles<Geometry3x3, BN, CK>::kSmemBytes);
      REDKERN_F32_CASE(8, 4) REDKERN_F32_CASE(8, 16)
      REDKERN_F32_CASE(16, 4) REDKERN_F32_CASE(16, 16)
      REDKERN_F32_CASE(32, 4) REDKERN_F32_CASE(32, 16)
      REDKERN_F32_CASE(64, 4) REDKERN_F32_CASE(64, 16)
#undef REDKERN_F32_CASE
      throw std::logic_error("conv3x3: no fp32 kernel for the plan");
    case DType::kFloat16: return tensor_cores(__half{});
    case DType::kBFloat16: return tensor_cores(__nv_bfloat16{});
  }
  throw std::invalid_argument("conv3x3: unknown dtype");
}

}  // namespace REDKERN_KERNEL_VARIANT
}  // namespace redkern::cuda
