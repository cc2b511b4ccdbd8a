// Helpers shared by the kernel templates of every ISA.
//
// Linkage rule for everything included by the per-ISA translation units: a function is
// either a template on the ISA's vector type S (so each ISA gets its own instantiation) or
// `static` (one copy per translation unit). A plain inline function would be merged across
// units by the linker, which could keep the AVX-512 unit's copy and run it on a CPU without
// AVX-512. For the same reason the kernels use no std:: templates, and they do not call the
// (plain inline) scalar redkern::apply_epilogue: the vector epilogue below is its
// counterpart, and tanh goes through libm's tanhf, which is compiled once, outside.
#pragma once

#include <math.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/conv.h"

namespace redkern::cpu {

using bf16_t = std::uint16_t;  // raw bfloat16 bits

static inline int div_up(int a, int b) { return (a + b - 1) / b; }
static inline int min_int(int a, int b) { return a < b ? a : b; }

template <class A, class B>
struct same_type {
  static constexpr bool value = false;
};
template <class A>
struct same_type<A, A> {
  static constexpr bool value = true;
};

static inline float bf16_to_f32(bf16_t h) {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; NaN stays a (quiet) NaN.
static inline bf16_t f32_to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t(u >> 16);
}

// A per-thread buffer of at least `floats` floats, 64-byte aligned, kept between calls (the
// OpenMP pool's threads live on) so a layer does not page-fault fresh scratch every call.
// `slot` tells apart the buffers one thread needs at once (0 or 1). Returns null when memory
// runs out (it is called inside parallel regions, which exceptions must not leave).
// Defined in scratch.cpp.
float* thread_scratch(std::size_t floats, int slot);

// This core's L2 cache size in bytes (the OS's answer; 512 KiB where it gives none).
// Defined in scratch.cpp.
std::size_t l2_cache_bytes();

// --- the fused epilogue in vector code ----------------------------------------------------

// The epilogues RED-Net runs, as fixed code paths (the hot paths), and the general one.
// Each fixed path computes exactly what the general one does for its parameters (alpha and
// beta 1 multiply exactly), so the choice never changes a result.
enum class EpiMode : int {
  kGeneral = 0,
  kRelu = 1,         // act RELU, residual NONE, alpha 1:   relu(acc + b)
  kReluAddRelu = 2,  // RELU, AFTER_ACT, RELU, alpha/beta 1: relu(relu(acc + b) + extra)
  kAddResidual = 3,  // IDENTITY, BEFORE_ACT, alpha/beta 1:  acc + b + extra
};

static inline EpiMode epilogue_mode(const EpilogueParams& p) {
  const bool unit = p.alpha == 1.0f && (p.residual == Residual::kNONE || p.beta == 1.0f);
  if (!unit) return EpiMode::kGeneral;
  if (p.act == Act::kRELU && p.residual == Residual::kNONE) return EpiMode::kRelu;
  if (p.act == Act::kRELU && p.residual == Residual::kAFTER_ACT && p.act2 == Act::kRELU)
    return EpiMode::kReluAddRelu;
  if (p.act == Act::kIDENTITY && p.residual == Residual::kBEFORE_ACT) return EpiMode::kAddResidual;
  return EpiMode::kGeneral;
}

// tanh lane by lane through libm (accurate to fp32 rounding; not a hot path).
template <class S>
__attribute__((noinline)) typename S::V tanh_lanes(typename S::V v) {
  alignas(64) float t[S::kW];
  S::store(t, v);
  for (int i = 0; i < S::kW; ++i) t[i] = tanhf(t[i]);
  return S::load(t);
}

// `act` on the `n` (1..S::kW) channels starting at `c` (slope read for those channels).
template <class S>
inline typename S::V activate(typename S::V v, Act act, const float* slope, int c, int n) {
  switch (act) {
    case Act::kRELU: return S::relu(v);
    case Act::kLEAKY_RELU:
    case Act::kPRELU: return S::prelu(v, n == S::kW ? S::load(slope + c) : S::loadn(slope + c, n));
    case Act::kTANH: return tanh_lanes<S>(v);
    default: return v;
  }
}

// The accumulated sum `acc` of `n` (1..S::kW) channels starting at channel `c` of one output
// pixel, through the epilogue of mode M (reading `extra` at the same place as `y`), stored
// to y. `bias` holds those channels' bias.
template <EpiMode M, class S, class T>
__attribute__((always_inline)) inline void finish_store(typename S::V acc, typename S::V bias,
                                                        const T* extra, T* y, int n, int c,
                                                        const EpilogueParams& p) {
  using V = typename S::V;
  V v;
  if constexpr (M == EpiMode::kRelu) {
    v = S::relu(S::add(acc, bias));
  } else if constexpr (M == EpiMode::kReluAddRelu) {
    const V e = n == S::kW ? S::load(extra) : S::loadn(extra, n);
    v = S::relu(S::add(S::relu(S::add(acc, bias)), e));
  } else if constexpr (M == EpiMode::kAddResidual) {
    const V e = n == S::kW ? S::load(extra) : S::loadn(extra, n);
    v = S::add(S::add(acc, bias), e);
  } else {
    v = S::fma(S::set1(p.alpha), acc, bias);
    V e = S::zero();
    if (p.residual != Residual::kNONE)
      e = S::mul(S::set1(p.beta), n == S::kW ? S::load(extra) : S::loadn(extra, n));
    if (p.residual == Residual::kBEFORE_ACT) v = S::add(v, e);
    v = activate<S>(v, p.act, p.slope, c, n);
    if (p.residual == Residual::kAFTER_ACT) v = activate<S>(S::add(v, e), p.act2, p.slope2, c, n);
  }
  if (n == S::kW)
    S::store(y, v);
  else
    S::storen(y, v, n);
}

// The general epilogue over a block of accumulators spilled to `acc` (px pixels, `ld` floats
// apart; channels c0 .. c0 + nch - 1 of each), stored to y (pixel stride `ystride`, extra
// alike). Out of line: the fixed modes keep their accumulators in registers, this one does
// not need to.
template <class S, class T>
__attribute__((noinline)) void store_general(const float* acc, int ld, int px, int c0, int nch,
                                             const float* bias, const T* extra, T* y,
                                             int ystride, const EpilogueParams& p) {
  for (int q = 0; q < px; ++q)
    for (int c = 0; c < nch; c += S::kW) {
      const int n = min_int(S::kW, nch - c), ch = c0 + c;
      const auto b = n == S::kW ? S::load(bias + ch) : S::loadn(bias + ch, n);
      const std::size_t at = std::size_t(q) * ystride + ch;
      finish_store<EpiMode::kGeneral, S, T>(S::load(acc + std::size_t(q) * ld + c), b,
                                            extra ? extra + at : nullptr, y + at, n, ch, p);
    }
}

// Copy `n` channels of activations into fp32 (bf16 widens exactly), vector by vector.
template <class S, class T>
inline void widen_copy(const T* src, float* dst, int n) {
  int i = 0;
  for (; i + S::kW <= n; i += S::kW) S::store(dst + i, S::load(src + i));
  if (i < n) S::storen(dst + i, S::loadn(src + i, n - i), n - i);
}

}  // namespace redkern::cpu
