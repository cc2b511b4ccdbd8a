// The fused 1x1 convolution kernels: a GEMM per block, Y[pixels, cout] = X[pixels, cin] W.
//
// A 1x1 convolution with padding 0 reads exactly the output's own pixel, so on NHWC data the
// whole batch is one [n*h*w, cin] matrix: a block takes kPixels1x1 consecutive pixels (they
// may span image rows and images) and bn output channels, and stages per chunk of ck input
// channels
//   - the pixels' channels, [kPixels1x1][ck] (zeros past the last pixel and beyond cin), and
//   - the packed weights of the chunk, [ck][bn].
// The main loop and epilogue are the 3x3 kernels' (conv_blocks.cuh). Plain CUDA, compiled by g++ against
// csrc/cuda_emu for the host emulation tests as well.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

#include "cuda/conv_blocks.cuh"
#include "cuda/conv_common.cuh"

namespace redkern::cuda {
inline namespace REDKERN_KERNEL_VARIANT {

// Blocks per SM the 1x1 kernels are compiled for (__launch_bounds__): without a minimum,
// ptxas picks register budgets (64, 72, 96) that make some instances spill a few bytes
// (.ci/check_ptxas.py); 3 caps them at 170 registers, which every instance fits in, and
// keeps 12 warps per SM for kernels that read about as much as they compute.
constexpr int kMinBlocks1x1 = 3;

// Output pixel m of the block whose first pixel is m0, if the batch has it.
struct BlockPixel {
  std::size_t pixels, m0;
  __device__ __forceinline__ bool operator()(int m, std::size_t& pixel) const {
    pixel = m0 + m;
    return pixel < pixels;
  }
};

// Stage channels [c0, c0+CK) of pixels [m0, m0 + kPixels1x1) into tile[m][CKP].
template <typename T, int CK, int CKP>
__device__ __forceinline__ void load_pixel_tile(const ConvParams& p, std::size_t m0, int c0, T* tile) {
  const std::size_t shift = REDKERN_PLANTED(kHaloShift) ? 1 : 0;
  const std::size_t pixels = std::size_t(p.pixels);
  const T* x = static_cast<const T*>(p.x);
  if (p.vec_x) {
    constexpr int V = 16 / sizeof(T);  // elements per 16-byte vector
    constexpr int kVecs = CK / V;
#pragma unroll 1
    for (int i = threadIdx.x; i < kPixels1x1 * kVecs; i += kThreads) {
      const int m = i / kVecs, c = (i % kVecs) * V;
      const std::size_t pixel = m0 + m + shift;
      uint4 v{0u, 0u, 0u, 0u};
      if (pixel < pixels && c0 + c < p.cin)
        v = *reinterpret_cast<const uint4*>(x + pixel * p.cin + c0 + c);
      else if (pixel < pixels && REDKERN_PLANTED(kNoChannelZeroFill))
        continue;
      *reinterpret_cast<uint4*>(tile + m * CKP + c) = v;
    }
  } else {
    const T zero = from_float<T>(0.f);
#pragma unroll 1
    for (int i = threadIdx.x; i < kPixels1x1 * CK; i += kThreads) {
      const int m = i / CK, c = i % CK;
      const std::size_t pixel = m0 + m + shift;
      T v = zero;
      if (pixel < pixels && c0 + c < p.cin)
        v = x[pixel * p.cin + c0 + c];
      else if (pixel < pixels && REDKERN_PLANTED(kNoChannelZeroFill))
        continue;
      tile[m * CKP + c] = v;
    }
  }
}

// The block geometry of conv_blocks.cuh: block x takes pixels [m0, m0 + kPixels1x1) of the
// whole batch; the staged window is those pixels.
struct Geometry1x1 {
  static constexpr int kTaps = 1;
  static constexpr int kPixels = kPixels1x1;
  static constexpr int kWindowPixels = kPixels1x1;

  std::size_t pixels, m0;

  __device__ __forceinline__ explicit Geometry1x1(const ConvParams& p)
      : pixels(std::size_t(p.pixels)), m0(std::size_t(blockIdx.x) * kPixels1x1) {}

  __device__ __forceinline__ static int window_pixel(int m, int) { return m; }
  template <typename T, int CK, int CKP>
  __device__ __forceinline__ void load(const ConvParams& p, int c0, T* tile) const {
    load_pixel_tile<T, CK, CKP>(p, m0, c0, tile);
  }
  __device__ __forceinline__ BlockPixel pixel_of() const { return BlockPixel{pixels, m0}; }
};

// fp16 / bf16 on tensor cores: warp w owns pixels [32w, 32w+32).
template <typename T, int BN, int CK>
__global__ void __launch_bounds__(kThreads, kMinBlocks1x1) conv1x1_wmma(const ConvParams p) {
  wmma_block<Geometry1x1, T, BN, CK>(p, Geometry1x1(p), blockIdx.y * BN);
}

// fp32 on CUDA cores.
template <int BN, int CK>
__global__ void __launch_bounds__(kThreads, kMinBlocks1x1) conv1x1_f32(const ConvParams p) {
  f32_block<Geometry1x1, BN, CK>(p, Geometry1x1(p), blockIdx.y * BN);
}

// --- choosing and launching a kernel -------------------------------------------------------

// Calls launch(name, kernel, grid, block, smem_bytes, params) once, for the kernel that
// plan_conv(dtype, 1, ...) picks: the one place that maps a 1x1 Plan to a template instance.
template <class Launch>
void dispatch_conv1x1(const ConvArgs& a, Launch&& launch) {
  const Plan plan = plan_conv(a.dtype, 1, a.cin, a.cout);
  const ConvParams p = conv_params(a, plan);
  const std::int64_t blocks = (p.pixels + kPixels1x1 - 1) / kPixels1x1;
  const dim3 grid(unsigned(blocks), unsigned(plan.cout_pad / plan.bn), 1);
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
    return go(&conv1x1_wmma<T, BN, CK>, "conv1x1_wmma", BN, CK, WmmaTiles<Geometry1x1, T, BN, CK>::kSmemBytes);
    REDKERN_WMMA_CASE(16, 16) REDKERN_WMMA_CASE(16, 32) REDKERN_WMMA_CASE(16, 64)
    REDKERN_WMMA_CASE(32, 16) REDKERN_WMMA_CASE(32, 32) REDKERN_WMMA_CASE(32, 64)
    REDKERN_WMMA_CASE(64, 16) REDKERN_WMMA_CASE(64, 32) REDKERN_WMMA_CASE(64, 64)
#undef REDKERN_WMMA_CASE
    throw std::logic_error("conv1x1: no wmma kernel for the plan");
  };
  switch (a.dtype) {
    case DType::kFloat32:
#define REDKERN_F32_CASE(BN, CK)                                                         \
  if (plan.bn == BN && plan.ck == CK)                                                    \
    return go(&conv1x1_f32<BN, CK>, "conv1x1", BN, CK, F32Tiles<Geometry1x1, BN, CK>::kSmemBytes);
      REDKERN_F32_CASE(8, 4) REDKERN_F32_CASE(8, 16) REDKERN_F32_CASE(8, 32)
      REDKERN_F32_CASE(16, 4) REDKERN_F32_CASE(16, 16) REDKERN_F32_CASE(16, 32)
      REDKERN_F32_CASE(32, 4) REDKERN_F32_CASE(32, 16) REDKERN_F32_CASE(32, 32)
      REDKERN_F32_CASE(64, 4) REDKERN_F32_CASE(64, 16) REDKERN_F32_CASE(64, 32)
#undef REDKERN_F32_CASE
      throw std::logic_error("conv1x1: no fp32 kernel for the plan");
    case DType::kFloat16: return tensor_cores(__half{});
    case DType::kBFloat16: return tensor_cores(__nv_bfloat16{});
  }
  throw std::invalid_argument("conv1x1: unknown dtype");
}

}  // namespace REDKERN_KERNEL_VARIANT
}  // namespace redkern::cuda
