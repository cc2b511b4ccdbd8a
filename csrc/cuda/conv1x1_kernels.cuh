// The fused 1x1 convolution kernels: a GEMM per block, Y[pixels, cout] = X[pixels, cin] W.
//
// A 1x1 convolution with padding 0 reads exactly the output's own pixel, so on NHWC data the
// whole batch is one [n*h*w, cin] matrix: a block takes kPixels1x1 consecutive pixels (they
// may span image rows and images) and bn output channels, and stages per chunk of ck input
// channels
//   - the pixels' channels, [kPixels1x1][ck] (zeros past the last pixel and beyond cin), and
//   - the packed weights of the chunk, [ck][bn].
// The epilogue is the 3x3 kernels' (store_staged, conv_common.cuh). Plain CUDA, compiled by g++ against
// csrc/cuda_emu for the host emulation tests as well.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>

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

// --- fp16 / bf16 on tensor cores ---------------------------------------------------------
// 4 warps; warp w owns pixels [32w, 32w+32) (two 16-pixel M fragments) and all BN/16 channel
// fragments: 2 x BN/16 accumulators of 16x16 fp32.
template <typename T, int BN, int CK>
struct Wmma1x1Tiles {
  static constexpr int CKP = CK + 16;  // keeps every pixel's channels 32-byte aligned for wmma
  static constexpr int BNP = BN + 8;   // weight row stride (16-byte multiple)
  static constexpr int LDS = BN + 4;   // fp32 staging row stride for the epilogue
  static constexpr std::size_t kInputBytes = std::size_t(kPixels1x1) * CKP * sizeof(T);
  static constexpr std::size_t kWeightBytes = std::size_t(CK) * BNP * sizeof(T);
  static constexpr std::size_t kStageBytes = std::size_t(kPixels1x1) * LDS * sizeof(float);
  static constexpr std::size_t kSmemBytes =
      kInputBytes + kWeightBytes > kStageBytes ? kInputBytes + kWeightBytes : kStageBytes;
  static_assert(kInputBytes % 32 == 0, "the weight tile must start 32-byte aligned");
};

template <typename T, int BN, int CK>
__global__ void __launch_bounds__(kThreads, kMinBlocks1x1) conv1x1_wmma(const ConvParams p) {
  namespace wmma = nvcuda::wmma;
  using Tiles = Wmma1x1Tiles<T, BN, CK>;
  constexpr int CKP = Tiles::CKP, BNP = Tiles::BNP, LDS = Tiles::LDS;
  constexpr int NF = BN / 16;
  constexpr int kFragsPerWarp = kPixels1x1 / 16 / (kThreads / 32);
  static_assert(kFragsPerWarp == 2 && BN % 16 == 0 && CK % 16 == 0,
                "two 16-pixel wmma M fragments per warp");

  unsigned char* smem = dynamic_shared_memory();
  T* in_tile = reinterpret_cast<T*>(smem);
  T* w_tile = reinterpret_cast<T*>(smem + Tiles::kInputBytes);
  float* stage = reinterpret_cast<float*>(smem);  // reuses the tiles after the K loop

  const std::size_t m0 = std::size_t(blockIdx.x) * kPixels1x1;
  const int n0 = blockIdx.y * BN;
  const int mw = (threadIdx.x / 32) * (16 * kFragsPerWarp);  // the warp's first pixel

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragsPerWarp][NF];
#pragma unroll
  for (int i = 0; i < kFragsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int c0 = 0; c0 < p.cin_pad; c0 += CK) {
    load_pixel_tile<T, CK, CKP>(p, m0, c0, in_tile);
    load_weight_tile<T, 1, BN, CK, BNP>(p, c0, n0, w_tile);
    if (!REDKERN_PLANTED(kSkipLoadBarrier)) __syncthreads();  // tiles complete before any read
#pragma unroll
    for (int k = 0; k < CK; k += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[NF];
#pragma unroll
      for (int j = 0; j < NF; ++j) wmma::load_matrix_sync(b[j], w_tile + k * BNP + j * 16, BNP);
#pragma unroll
      for (int i = 0; i < kFragsPerWarp; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, in_tile + (mw + i * 16) * CKP + k, CKP);
#pragma unroll
        for (int j = 0; j < NF; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
      }
    }
    if (!REDKERN_PLANTED(kSkipReuseBarrier)) __syncthreads();  // all reads done before reuse
  }

  // Epilogue: accumulators -> shared staging -> the fused epilogue -> global (coalesced
  // over channels; fragments' element layout is unspecified, so they go through memory).
#pragma unroll
  for (int i = 0; i < kFragsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
      wmma::store_matrix_sync(stage + (mw + i * 16) * LDS + j * 16, acc[i][j], LDS,
                              wmma::mem_row_major);
  __syncthreads();
  store_staged<T, BN, kPixels1x1, LDS>(p, stage, n0, BlockPixel{std::size_t(p.pixels), m0});
}

// --- fp32 on CUDA cores -------------------------------------------------------------------
// Each thread accumulates TM pixels x TN channels in registers: the block's 128 pixels are
// shared among PG pixel groups (pixel m = group + i*PG), its BN channels among NG groups.
template <int BN, int CK>
struct F32x1Tiles {
  static constexpr int TN = BN < 8 ? BN : 8;
  static constexpr int NG = BN / TN;
  static constexpr int PG = kThreads / NG;
  static constexpr int TM = kPixels1x1 / PG;
  static constexpr int CKP = CK + 4;  // spreads pixels over banks, keeps 16-byte alignment
  static constexpr int BNP = BN;
  static constexpr int LDS = BN + 4;  // fp32 staging row stride for the epilogue
  static constexpr std::size_t kInputBytes = std::size_t(kPixels1x1) * CKP * sizeof(float);
  static constexpr std::size_t kTileBytes = kInputBytes + std::size_t(CK) * BNP * sizeof(float);
  static constexpr std::size_t kStageBytes = std::size_t(kPixels1x1) * LDS * sizeof(float);
  static constexpr std::size_t kSmemBytes = kTileBytes > kStageBytes ? kTileBytes : kStageBytes;
  static_assert(kThreads % NG == 0 && kPixels1x1 % PG == 0, "uneven thread tiling");
  static_assert(TN % 4 == 0, "the sums are staged as float4");
};

template <int BN, int CK>
__global__ void __launch_bounds__(kThreads, kMinBlocks1x1) conv1x1_f32(const ConvParams p) {
  using Tiles = F32x1Tiles<BN, CK>;
  constexpr int TN = Tiles::TN, NG = Tiles::NG, PG = Tiles::PG, TM = Tiles::TM;
  constexpr int CKP = Tiles::CKP, BNP = Tiles::BNP, LDS = Tiles::LDS;

  unsigned char* smem = dynamic_shared_memory();
  float* in_tile = reinterpret_cast<float*>(smem);
  float* w_tile = reinterpret_cast<float*>(smem + Tiles::kInputBytes);

  const std::size_t m0 = std::size_t(blockIdx.x) * kPixels1x1;
  const int n0 = blockIdx.y * BN;
  const int group = threadIdx.x / NG, cg = (threadIdx.x % NG) * TN;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  for (int c0 = 0; c0 < p.cin_pad; c0 += CK) {
    load_pixel_tile<float, CK, CKP>(p, m0, c0, in_tile);
    load_weight_tile<float, 1, BN, CK, BNP>(p, c0, n0, w_tile);
    if (!REDKERN_PLANTED(kSkipLoadBarrier)) __syncthreads();
#pragma unroll 4
    for (int k = 0; k < CK; ++k) {
      float b[TN];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = w_tile[k * BNP + cg + j];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const float a = in_tile[(group + i * PG) * CKP + k];
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a * b[j];
      }
    }
    if (!REDKERN_PLANTED(kSkipReuseBarrier)) __syncthreads();
  }

  // Epilogue: registers -> shared staging (the tiles are free: the barrier above) -> the
  // fused epilogue -> global.
  float* stage = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; j += 4)
      *reinterpret_cast<float4*>(stage + (group + i * PG) * LDS + cg + j) =
          float4{acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]};
  __syncthreads();
  store_staged<float, BN, kPixels1x1, LDS>(p, stage, n0, BlockPixel{std::size_t(p.pixels), m0});
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
    return go(&conv1x1_wmma<T, BN, CK>, "conv1x1_wmma", BN, CK, Wmma1x1Tiles<T, BN, CK>::kSmemBytes);
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
    return go(&conv1x1_f32<BN, CK>, "conv1x1", BN, CK, F32x1Tiles<BN, CK>::kSmemBytes);
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
