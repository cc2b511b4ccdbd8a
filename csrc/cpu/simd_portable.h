// The portable vector: kW floats as a GCC/Clang vector type, which the compiler maps onto the
// baseline ISA's registers (SSE2 on x86-64, NEON on AArch64). Same interface as the AVX ones.
#pragma once

#include "cpu/kernel_util.h"

namespace redkern::cpu {

struct Portable {
  static constexpr int kW = 4;
  typedef float V __attribute__((vector_size(16)));
  // Register blocking (see conv_direct.h and winograd.h): baseline x86-64 has 16 xmm.
  static constexpr int kDirectPixels = 4, kDirectVecs = 2;
  static constexpr int kGemmRows = 4, kGemmVecs = 2;

  static V zero() { return V{}; }
  static V set1(float a) { return V{a, a, a, a}; }
  static V bcast(const float* p) { return set1(*p); }
  static V load(const float* p) {
    V r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  static V loadn(const float* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r[i] = p[i];
    return r;
  }
  static void store(float* p, V a) { std::memcpy(p, &a, sizeof a); }
  static void storen(float* p, V a, int n) {
    for (int i = 0; i < n; ++i) p[i] = a[i];
  }
  static V load(const bf16_t* p) { return loadn(p, kW); }
  static V loadn(const bf16_t* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r[i] = bf16_to_f32(p[i]);
    return r;
  }
  static void store(bf16_t* p, V a) { storen(p, a, kW); }
  static void storen(bf16_t* p, V a, int n) {
    for (int i = 0; i < n; ++i) p[i] = f32_to_bf16(a[i]);
  }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static float hsum(V a) { return (a[0] + a[1]) + (a[2] + a[3]); }
  static V where_positive(V m, V a) {  // m <= 0 ? 0 : a; NaN in m keeps a, as PyTorch's
    return m <= zero() ? zero() : a;
  }
  static V relu(V a) {  // NaN stays NaN, as torch.relu
    return a <= zero() ? zero() : a;
  }
  static V prelu(V a, V slope) {  // a <= 0 ? slope * a : a; NaN stays NaN
    return a <= zero() ? a * slope : a;
  }
};

}  // namespace redkern::cpu
