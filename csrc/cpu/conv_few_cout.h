// Direct KxK convolution for layers with few output channels (RED-Net's last layer, 64 -> 1
// or 3), a template on the ISA's vector type S and the activation type T.
//
// Vectorising over output channels would waste most of each vector there, so this kernel
// vectorises over input channels instead: PX pixels x CO (<= 3) output channels of
// accumulators, each a vector of partial sums over input channels, reduced horizontally
// once at the end. Input rows are buffered as in conv_direct.h, with the channels padded
// to a multiple of 16 by zeros, matching the weight layout [cout][tap][cin_pad] (pack.cpp).
#pragma once

#include "cpu/conv_direct.h"

namespace redkern::cpu::few_cout {

constexpr int kMaxCout = kFewCoutMax;  // 3 x 4 accumulators + 3 weights + 1 input: 16 registers

// KH, KW: the window at compile time, or 0 for the job's kh, kw.
template <class S, class T, int KH, int KW, int PX, int CO>
void few_cout_block(const direct::RowJob<T>& j, int ox) {
  using V = typename S::V;
  V acc[PX][CO];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int c = 0; c < CO; ++c) acc[p][c] = S::zero();

  const int kh = KH > 0 ? KH : j.kh, kw = KW > 0 ? KW : j.kw;
  const int stride = j.stride;
  const std::size_t per_cout = std::size_t(kh * kw) * stride;
  for (int ky = 0; ky < kh; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < kw; ++kx) {
      const float* xp = j.rows[ky] + std::size_t(ox + kx) * stride;
      const float* wp = j.packed + std::size_t(ky * kw + kx) * stride;
      for (int ci = 0; ci < stride; ci += S::kW) {
        V wv[CO];
#pragma GCC unroll 4
        for (int c = 0; c < CO; ++c) wv[c] = S::load(wp + std::size_t(c) * per_cout + ci);
#pragma GCC unroll 8
        for (int p = 0; p < PX; ++p) {
          const V xv = S::load(xp + std::size_t(p) * stride + ci);
#pragma GCC unroll 4
          for (int c = 0; c < CO; ++c) acc[p][c] = S::fma(xv, wv[c], acc[p][c]);
        }
      }
    }
  }

  // Each pixel's CO sums side by side in one vector, through the epilogue, stored.
  const V bias = S::loadn(j.bias, CO);
  const EpilogueParams& e = *j.epi;
  float sums[S::kW] = {};
  switch (j.mode) {
#define REDKERN_FEW_COUT_STORE(M)                                                          \
  _Pragma("GCC unroll 8") for (int p = 0; p < PX; ++p) {                                   \
    _Pragma("GCC unroll 4") for (int c = 0; c < CO; ++c) sums[c] = S::hsum(acc[p][c]);     \
    const std::size_t at = std::size_t(ox + p) * CO;                                       \
    finish_store<M, S, T>(S::load(sums), bias, j.extra_row ? j.extra_row + at : nullptr,   \
                          j.y_row + at, CO, 0, e);                                         \
  }
    case EpiMode::kRelu: REDKERN_FEW_COUT_STORE(EpiMode::kRelu) break;
    case EpiMode::kReluAddRelu: REDKERN_FEW_COUT_STORE(EpiMode::kReluAddRelu) break;
    case EpiMode::kAddResidual: REDKERN_FEW_COUT_STORE(EpiMode::kAddResidual) break;
    default: REDKERN_FEW_COUT_STORE(EpiMode::kGeneral) break;
#undef REDKERN_FEW_COUT_STORE
  }
}

// Calls few_cout_block with compile-time PX = px (1..PX).
template <class S, class T, int KH, int KW, int CO, int PX>
void block(const direct::RowJob<T>& j, int px, int ox) {
  if constexpr (PX > 1) {
    if (px < PX) return block<S, T, KH, KW, CO, PX - 1>(j, px, ox);
  }
  few_cout_block<S, T, KH, KW, PX, CO>(j, ox);
}

template <class S, class T, int KH, int KW, int CO>
void run(const ConvArgs& a) {
  // Enough independent accumulators to cover the FMA latency: 8 for one output channel.
  constexpr int PX = CO == 1 ? 8 : 4;
  direct::for_each_row<S, T, float>(a, padded_cout(a.cin), [](const direct::RowJob<T>& j) {
    for (int ox = 0; ox < j.w; ox += PX) block<S, T, KH, KW, CO, PX>(j, min_int(PX, j.w - ox), ox);
  });
}

template <class S, class T, int KH, int KW>
void run_cout(const ConvArgs& a) {
  if (a.cout == 1)
    run<S, T, KH, KW, 1>(a);
  else if (a.cout == 2)
    run<S, T, KH, KW, 2>(a);
  else
    run<S, T, KH, KW, 3>(a);
}

// y for cout <= kMaxCout (dispatch.cpp checks); 3x3 with the window at compile time.
template <class S, class T>
void conv_few_cout(const ConvArgs& a) {
  if (a.kh == 3 && a.kw == 3)
    run_cout<S, T, 3, 3>(a);
  else
    run_cout<S, T, 0, 0>(a);
}

}  // namespace redkern::cpu::few_cout
