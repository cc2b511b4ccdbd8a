// Helpers shared by the kernel templates of every ISA.
//
// Linkage rule for everything included by the per-ISA translation units: a function is
// either a template on the ISA's vector type S (so each ISA gets its own instantiation) or
// `static` (one copy per translation unit). A plain inline function would be merged across
// units by the linker, which could keep the AVX-512 unit's copy and run it on a CPU without
// AVX-512. For the same reason the kernels use no std:: templates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/conv3x3.h"

namespace redkern::cpu {

using bf16_t = std::uint16_t;  // raw bfloat16 bits

static inline int div_up(int a, int b) { return (a + b - 1) / b; }
static inline int min_int(int a, int b) { return a < b ? a : b; }

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

// Add bias to `n` (1..S::kW) accumulated channels of one output pixel, apply the epilogue
// (reading `extra` at the same place as `y`) and store.
template <class S, class T>
inline void finish_store(typename S::V acc, typename S::V bias, const T* extra, T* y, int n,
                         Epilogue epi) {
  using V = typename S::V;
  V v = S::add(acc, bias);
  if (epi == Epilogue::kRelu) {
    v = S::relu(v);
  } else {
    const V e = n == S::kW ? S::load(extra) : S::loadn(extra, n);
    v = epi == Epilogue::kReluAddRelu ? S::relu(S::add(S::relu(v), e)) : S::add(v, e);
  }
  if (n == S::kW)
    S::store(y, v);
  else
    S::storen(y, v, n);
}

// Copy `n` channels of activations into fp32 (bf16 widens exactly), vector by vector.
template <class S, class T>
inline void widen_copy(const T* src, float* dst, int n) {
  int i = 0;
  for (; i + S::kW <= n; i += S::kW) S::store(dst + i, S::load(src + i));
  if (i < n) S::storen(dst + i, S::loadn(src + i, n - i), n - i);
}

}  // namespace redkern::cpu
