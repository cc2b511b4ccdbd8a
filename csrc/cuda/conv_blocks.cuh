// The main loop of one block, written once for the 3x3 and the 1x1 kernels: stage a chunk of
// the input window and of the packed weights in shared memory, accumulate the block's
// pixels x channels (on tensor cores or in fp32 registers), then stage the sums and run the
// fused epilogue (store_staged).
//
// What differs between the two convolutions is the block's geometry G:
//   G::kTaps          taps of the kernel (9 or 1), the packed weights' rows per input channel
//   G::kPixels        output pixels per block (the GEMM's M)
//   G::kWindowPixels  input pixels staged per chunk (the tile and its halo, or the pixels)
//   G::window_pixel(m, tap)   the staged pixel that output pixel m reads at tap
//   g.load<T, CK, CKP>(p, c0, tile)   stage channels [c0, c0+CK) of the window
//   g.pixel_of()      m -> the output pixel (NHWC index) and whether it exists
// and, for the tensor-core kernels, that the 16 pixels of a fragment starting at a multiple of
// 16 read 16 consecutive staged pixels at every tap (a 16-pixel tile row, or 16 pixels).
#pragma once

#include <cstddef>

#include "cuda/conv_common.cuh"

namespace redkern::cuda {
inline namespace REDKERN_KERNEL_VARIANT {

// --- fp16 / bf16 on tensor cores ---------------------------------------------------------
// 4 warps; warp w owns pixels [32w, 32w+32) (two 16-pixel M fragments) and all BN/16 channel
// fragments: 2 x BN/16 accumulators of 16x16 fp32.
template <class G, typename T, int BN, int CK>
struct WmmaTiles {
  static constexpr int CKP = CK + 16;  // keeps every pixel's channels 32-byte aligned for wmma
  static constexpr int BNP = BN + 8;   // weight row stride (16-byte multiple)
  static constexpr int LDS = BN + 4;   // fp32 staging row stride for the epilogue
  static constexpr std::size_t kInputBytes = std::size_t(G::kWindowPixels) * CKP * sizeof(T);
  static constexpr std::size_t kWeightBytes = std::size_t(G::kTaps) * CK * BNP * sizeof(T);
  static constexpr std::size_t kStageBytes = std::size_t(G::kPixels) * LDS * sizeof(float);
  static constexpr std::size_t kSmemBytes =
      kInputBytes + kWeightBytes > kStageBytes ? kInputBytes + kWeightBytes : kStageBytes;
  static_assert(kInputBytes % 32 == 0, "the weight tile must start 32-byte aligned");
};

template <class G, typename T, int BN, int CK>
__device__ __forceinline__ void wmma_block(const ConvParams& p, const G& g, int n0) {
  namespace wmma = nvcuda::wmma;
  using Tiles = WmmaTiles<G, T, BN, CK>;
  constexpr int CKP = Tiles::CKP, BNP = Tiles::BNP, LDS = Tiles::LDS;
  constexpr int NF = BN / 16;
  constexpr int kFragsPerWarp = G::kPixels / 16 / (kThreads / 32);
  static_assert(kFragsPerWarp == 2 && BN % 16 == 0 && CK % 16 == 0,
                "two 16-pixel wmma M fragments per warp");

  unsigned char* smem = dynamic_shared_memory();
  T* in_tile = reinterpret_cast<T*>(smem);
  T* w_tile = reinterpret_cast<T*>(smem + Tiles::kInputBytes);
  float* stage = reinterpret_cast<float*>(smem);  // reuses the tiles after the K loop
  const int mw = (threadIdx.x / 32) * (16 * kFragsPerWarp);  // the warp's first pixel

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragsPerWarp][NF];
#pragma unroll
  for (int i = 0; i < kFragsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  for (int c0 = 0; c0 < p.cin_pad; c0 += CK) {
    g.template load<T, CK, CKP>(p, c0, in_tile);
    load_weight_tile<T, G::kTaps, BN, CK, BNP>(p, c0, n0, w_tile);
    if (!REDKERN_PLANTED(kSkipLoadBarrier)) __syncthreads();  // tiles complete before any read
    for (int tap = 0; tap < G::kTaps; ++tap) {
#pragma unroll
      for (int k = 0; k < CK; k += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b[NF];
#pragma unroll
        for (int j = 0; j < NF; ++j)
          wmma::load_matrix_sync(b[j], w_tile + (tap * CK + k) * BNP + j * 16, BNP);
#pragma unroll
        for (int i = 0; i < kFragsPerWarp; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::load_matrix_sync(a, in_tile + G::window_pixel(mw + i * 16, tap) * CKP + k, CKP);
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
  for (int i = 0; i < kFragsPerWarp; ++i)
#pragma unroll
    for (int j = 0; j < NF; ++j)
      wmma::store_matrix_sync(stage + (mw + i * 16) * LDS + j * 16, acc[i][j], LDS,
                              wmma::mem_row_major);
  __syncthreads();
  store_staged<T, BN, G::kPixels, LDS>(p, stage, n0, g.pixel_of());
}

// --- fp32 on CUDA cores -------------------------------------------------------------------
// Each thread accumulates TM pixels x TN channels in registers: the block's pixels are
// shared among PG pixel groups (pixel m = group + i*PG), its BN channels among NG groups.
template <class G, int BN, int CK>
struct F32Tiles {
  static constexpr int TN = BN < 8 ? BN : 8;
  static constexpr int NG = BN / TN;
  static constexpr int PG = kThreads / NG;
  static constexpr int TM = G::kPixels / PG;
  static constexpr int CKP = CK + 4;  // spreads pixels over banks, keeps 16-byte alignment
  static constexpr int BNP = BN;
  static constexpr int LDS = BN + 4;  // fp32 staging row stride for the epilogue
  static constexpr std::size_t kInputBytes = std::size_t(G::kWindowPixels) * CKP * sizeof(float);
  static constexpr std::size_t kTileBytes =
      kInputBytes + std::size_t(G::kTaps) * CK * BNP * sizeof(float);
  static constexpr std::size_t kStageBytes = std::size_t(G::kPixels) * LDS * sizeof(float);
  static constexpr std::size_t kSmemBytes = kTileBytes > kStageBytes ? kTileBytes : kStageBytes;
  static_assert(kThreads % NG == 0 && G::kPixels % PG == 0, "uneven thread tiling");
  static_assert(TN % 4 == 0, "the sums are staged as float4");
};

template <class G, int BN, int CK>
__device__ __forceinline__ void f32_block(const ConvParams& p, const G& g, int n0) {
  using Tiles = F32Tiles<G, BN, CK>;
  constexpr int TN = Tiles::TN, NG = Tiles::NG, PG = Tiles::PG, TM = Tiles::TM;
  constexpr int CKP = Tiles::CKP, BNP = Tiles::BNP, LDS = Tiles::LDS;

  unsigned char* smem = dynamic_shared_memory();
  float* in_tile = reinterpret_cast<float*>(smem);
  float* w_tile = reinterpret_cast<float*>(smem + Tiles::kInputBytes);
  const int group = threadIdx.x / NG, cg = (threadIdx.x % NG) * TN;

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

  for (int c0 = 0; c0 < p.cin_pad; c0 += CK) {
    g.template load<float, CK, CKP>(p, c0, in_tile);
    load_weight_tile<float, G::kTaps, BN, CK, BNP>(p, c0, n0, w_tile);
    if (!REDKERN_PLANTED(kSkipLoadBarrier)) __syncthreads();
    for (int tap = 0; tap < G::kTaps; ++tap) {
#pragma unroll 4
      for (int k = 0; k < CK; ++k) {
        float b[TN];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = w_tile[(tap * CK + k) * BNP + cg + j];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          const float a = in_tile[G::window_pixel(group + i * PG, tap) * CKP + k];
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
  store_staged<float, BN, G::kPixels, LDS>(p, stage, n0, g.pixel_of());
}

}  // namespace REDKERN_KERNEL_VARIANT
}  // namespace redkern::cuda
