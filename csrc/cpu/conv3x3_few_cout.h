// Direct 3x3 convolution for layers with few output channels (RED-Net's last layer, 64 -> 1
// or 3), a template on the ISA's vector type S and the activation type T.
//
// Vectorising over output channels would waste most of each vector there, so this kernel
// vectorises over input channels instead: PX pixels x CO (<= 3) output channels of
// accumulators, each a vector of partial sums over input channels, reduced horizontally
// once at the end. Input rows are buffered as in conv3x3_direct.h, with the channels padded
// to a multiple of 16 by zeros, matching the weight layout [cout][tap 9][cin_pad] (pack.cpp).
#pragma once

#include "cpu/conv3x3_direct.h"

namespace redkern::cpu::few_cout {

constexpr int kMaxCout = 3;  // 3 x 4 accumulators + 3 weights + 1 input: 16 registers

template <class S, class T, int PX, int CO>
void few_cout_block(const direct::RowJob<T>& j, int ox) {
  using V = typename S::V;
  V acc[PX][CO];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 4
    for (int c = 0; c < CO; ++c) acc[p][c] = S::zero();

  const int stride = j.stride;
  for (int ky = 0; ky < 3; ++ky) {
    if (j.rows[ky] == nullptr) continue;
    for (int kx = 0; kx < 3; ++kx) {
      const float* xp = j.rows[ky] + std::size_t(ox + kx) * stride;
      const float* wp = j.packed + std::size_t(ky * 3 + kx) * stride;
      for (int ci = 0; ci < stride; ci += S::kW) {
        V wv[CO];
#pragma GCC unroll 4
        for (int c = 0; c < CO; ++c) wv[c] = S::load(wp + std::size_t(c) * 9 * stride + ci);
#pragma GCC unroll 8
        for (int p = 0; p < PX; ++p) {
          const V xv = S::load(xp + std::size_t(p) * stride + ci);
#pragma GCC unroll 4
          for (int c = 0; c < CO; ++c) acc[p][c] = S::fma(xv, wv[c], acc[p][c]);
        }
      }
    }
  }

  const V bias = S::loadn(j.bias, CO);
  float sums[S::kW] = {};
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p) {
#pragma GCC unroll 4
    for (int c = 0; c < CO; ++c) sums[c] = S::hsum(acc[p][c]);
    const std::size_t at = std::size_t(ox + p) * CO;
    finish_store<S, T>(S::load(sums), bias, j.extra_row ? j.extra_row + at : nullptr,
                       j.y_row + at, CO, j.epi);
  }
}

// Calls few_cout_block with compile-time PX = px (1..PX).
template <class S, class T, int CO, int PX>
void block(const direct::RowJob<T>& j, int px, int ox) {
  if constexpr (PX > 1) {
    if (px < PX) return block<S, T, CO, PX - 1>(j, px, ox);
  }
  few_cout_block<S, T, PX, CO>(j, ox);
}

template <class S, class T, int CO>
void run(const Conv3x3Args& a) {
  // Enough independent accumulators to cover the FMA latency: 8 for one output channel.
  constexpr int PX = CO == 1 ? 8 : 4;
  direct::for_each_row<S, T, float>(a, padded_cout(a.cin), [](const direct::RowJob<T>& j) {
    for (int ox = 0; ox < j.w; ox += PX) block<S, T, CO, PX>(j, min_int(PX, j.w - ox), ox);
  });
}

// y for cout <= kMaxCout (dispatch.cpp checks).
template <class S, class T>
void conv3x3_few_cout(const Conv3x3Args& a) {
  if (a.cout == 1)
    run<S, T, 1>(a);
  else if (a.cout == 2)
    run<S, T, 2>(a);
  else
    run<S, T, 3>(a);
}

}  // namespace redkern::cpu::few_cout
