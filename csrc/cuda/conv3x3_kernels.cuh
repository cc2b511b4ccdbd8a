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

// --- fp16 / bf16 on tensor cores ---------------------------------------------------------
// 4 warps; warp w owns output rows 2w and 2w+1 (16 pixels each) and all BN/16 channel
// fragments: 2 x BN/16 accumulators of 16x16 fp32.
template <typename T, int BN, int CK>
struct WmmaTiles {
  static constexpr int CKP = CK + 16;  // keeps every pixel's channels 32-byte aligned for wmma
  static constexpr int BNP = BN + 8;   // weight row stride (16-byte multiple)
  static constexpr int LDS = BN + 4;   // fp32 staging row stride for the epilogue
  static constexpr std::size_t kInputBytes = std::size_t(kHaloPixels) * CKP * sizeof(T);
  static constexpr std::size_t kWeightBytes = std::size_t(9) * CK * BNP * sizeof(T);
  static constexpr std::size_t kStageBytes = std::size_t(kTileH) * kTileW * LDS * sizeof(float);
  static constexpr std::size_t kSmemBytes =
      kInputBytes + kWeightBytes > kStageBytes ? kInputBytes + kWeightBytes : kStageBytes;
  static_assert(kInputBytes % 32 == 0, "the weight tile must start 32-byte aligned");
};

template <typename T, int BN, int CK>
__global__ void __launch_bounds__(kThreads) conv3x3_wmma(const ConvParams p) {
  namespace wmma = nvcuda::wmma;
  using Tiles = WmmaTiles<T, BN, CK>;
  constexpr int CKP = Tiles::CKP, BNP = Tiles::BNP, LDS = Tiles::LDS;
  constexpr int NF = BN / 16;
  constexpr int kRowsPerWarp = kTileH / (kThreads / 32);
  static_assert(kTileW == 16 && kRowsPerWarp == 2 && BN % 16 == 0 && CK % 16 == 0,
                "one 16-pixel tile row per wmma M fragment, two rows per warp");

  unsigned char* smem = dynamic_shared_memory();
  T* in_tile = reinterpret_cast<T*>(smem);
  T* w_tile = reinterpret_cast<T*>(smem + Tiles::kInputBytes);
  float* stage = reinterpret_cast<float*>(smem);  // reuses the tiles after the K loop

  const int tile_y = blockIdx.x / p.tiles_x, tile_x = blockIdx.x % p.tiles_x;
  const int y0 = tile_y * kTileH, x0 = tile_x * kTileW, n0 = blockIdx.y * BN;
  const int img = blockIdx.z;
  const int row0 = (threadIdx.x / 32) * kRowsPerWarp;
  const T* x = static_cast<const T*>(p.x) + std::size_t(img) * p.h * p.width * p.cin;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kRowsPerWarp][NF];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int c0 = 0; c0 < p.cin_pad; c0 += CK) {
    load_input_tile<T, CK, CKP>(p, x, y0, x0, c0, in_tile);
    load_weight_tile<T, 9, BN, CK, BNP>(p, c0, n0, w_tile);
    if (!REDKERN_PLANTED(kSkipLoadBarrier)) __syncthreads();  // tiles complete before any read
    for (int tap = 0; tap < 9; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
#pragma unroll
      for (int k = 0; k < CK; k += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[NF];
#pragma unroll
        for (int j = 0; j < NF; ++j)
          wmma::load_matrix_sync(b[j], w_tile + (tap * CK + k) * BNP + j * 16, BNP);
#pragma unroll
        for (int i = 0; i < kRowsPerWarp; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::load_matrix_sync(a, in_tile + ((row0 + i + ky) * kHaloW + kx) * CKP + k, CKP);
#pragma unroll
          for (int j = 0; j < NF; ++j) wmma::mma_sync(acc[i][j], a, b[j], acc[i][j]);
        }
      }
    }
    if (!REDKERN_PLANTED(kSkipReuseBarrier)) __syncthreads();  // all reads done before reuse
  }

  // Epilogue: accumulators -> shared staging -> the fused epilogue -> global (coalesced
  // over channels; fragments' element layout is unspecified, so they go through memory).
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
      wmma::store_matrix_sync(stage + (row0 + i) * kTileW * LDS + j * 16, acc[i][j], LDS,
                              wmma::mem_row_major);
  __syncthreads();
  store_staged<T, BN, kTileH * kTileW, LDS>(p, stage, n0, TilePixel{p, img, y0, x0});
}

// --- fp32 on CUDA cores -------------------------------------------------------------------
// Each thread accumulates TM pixels x TN channels in registers: the block's 128 pixels are
// shared among PG pixel groups (pixel m = group + i*PG), its BN channels among NG groups.
template <int BN, int CK>
struct F32Tiles {
  static constexpr int TN = BN < 8 ? BN : 8;
  static constexpr int NG = BN / TN;
  static constexpr int PG = kThreads / NG;
  static constexpr int TM = kTileH * kTileW / PG;
  static constexpr int CKP = CK + 4;  // spreads pixels over banks, keeps 16-byte alignment
  static constexpr int BNP = BN;
  static constexpr int LDS = BN + 4;  // fp32 staging row stride for the epilogue
  static constexpr std::size_t kInputBytes = std::size_t(kHaloPixels) * CKP * sizeof(float);
  static constexpr std::size_t kTileBytes = kInputBytes + std::size_t(9) * CK * BNP * sizeof(float);
  static constexpr std::size_t kStageBytes = std::size_t(kTileH) * kTileW * LDS * sizeof(float);
  static constexpr std::size_t kSmemBytes = kTileBytes > kStageBytes ? kTileBytes : kStageBytes;
  static_assert(kThreads % NG == 0 && (kTileH * kTileW) % PG == 0, "uneven thread tiling");
  static_assert(TN % 4 == 0, "the sums are staged as float4");
};

template <int BN, int CK>
__global__ void __launch_bounds__(kThreads) conv3x3_f32(const ConvParams p) {
  using Tiles = F32Tiles<BN, CK>;
  constexpr int TN = Tiles::TN, NG = Tiles::NG, PG = Tiles::PG, TM = Tiles::TM;
  constexpr int CKP = Tiles::CKP, BNP = Tiles::BNP, LDS = Tiles::LDS;

  unsigned char* smem = dynamic_shared_memory();
  float* in_tile = reinterpret_cast<float*>(smem);
  float* w_tile = reinterpret_cast<float*>(smem + Tiles::kInputBytes);

  const int tile_y = blockIdx.x / p.tiles_x, tile_x = blockIdx.x % p.tiles_x;
  const int y0 = tile_y * kTileH, x0 = tile_x * kTileW, n0 = blockIdx.y * BN;
  const int img = blockIdx.z;
  const int group = threadIdx.x / NG, cg = (threadIdx.x % NG) * TN;
  const float* x = static_cast<const float*>(p.x) + std::size_t(img) * p.h * p.width * p.cin;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  for (int c0 = 0; c0 < p.cin_pad; c0 += CK) {
    load_input_tile<float, CK, CKP>(p, x, y0, x0, c0, in_tile);
    load_weight_tile<float, 9, BN, CK, BNP>(p, c0, n0, w_tile);
    if (!REDKERN_PLANTED(kSkipLoadBarrier)) __syncthreads();
    for (int tap = 0; tap < 9; ++tap) {
      const int ky = tap / 3, kx = tap % 3;
#pragma unroll 4
      for (int k = 0; k < CK; ++k) {
        float b[TN];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = w_tile[(tap * CK + k) * BNP + cg + j];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          const int m = group + i * PG;
          const float a = in_tile[((m / kTileW + ky) * kHaloW + m % kTileW + kx) * CKP + k];
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] += a * b[j];
        }
      }
    }
    if (!REDKERN_PLANTED(kSkipReuseBarrier)) __syncthreads();
  }

  // Epilogue: registers -> shared staging (the tiles are free: the barrier above) -> the
  // fused epilogue -> global, as in the wmma kernels.
  float* stage = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; j += 4)
      *reinterpret_cast<float4*>(stage + (group + i * PG) * LDS + cg + j) =
          float4{acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]};
  __syncthreads();
  store_staged<float, BN, kTileH * kTileW, LDS>(p, stage, n0, TilePixel{p, img, y0, x0});
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
    return go(&conv3x3_wmma<T, BN, CK>, "conv3x3_wmma", BN, CK, WmmaTiles<T, BN, CK>::kSmemBytes);
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
    return go(&conv3x3_f32<BN, CK>, "conv3x3", BN, CK, F32Tiles<BN, CK>::kSmemBytes);
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
