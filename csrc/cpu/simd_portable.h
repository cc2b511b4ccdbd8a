// The portable "vector": kW floats in plain C++ loops, which compilers vectorise for the
// baseline ISA (SSE2 on x86-64, NEON on AArch64). Same interface as the AVX ones.
#pragma once

#include "cpu/kernel_util.h"

namespace redkern::cpu {

struct Portable {
  static constexpr int kW = 4;
  struct V {
    float f[kW];
  };
  // Register blocking (see conv3x3_direct.h and winograd.h): baseline x86-64 has 16 xmm.
  static constexpr int kDirectPixels = 4, kDirectVecs = 2;
  static constexpr int kGemmRows = 4, kGemmVecs = 2;

  static V zero() { return set1(0.0f); }
  static V set1(float a) {
    V r;
    for (int i = 0; i < kW; ++i) r.f[i] = a;
    return r;
  }
  static V bcast(const float* p) { return set1(*p); }
  static V load(const float* p) {
    V r;
    for (int i = 0; i < kW; ++i) r.f[i] = p[i];
    return r;
  }
  static V loadn(const float* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r.f[i] = p[i];
    return r;
  }
  static void store(float* p, V a) {
    for (int i = 0; i < kW; ++i) p[i] = a.f[i];
  }
  static void storen(float* p, V a, int n) {
    for (int i = 0; i < n; ++i) p[i] = a.f[i];
  }
  static V load(const bf16_t* p) { return loadn(p, kW); }
  static V loadn(const bf16_t* p, int n) {
    V r = zero();
    for (int i = 0; i < n; ++i) r.f[i] = bf16_to_f32(p[i]);
    return r;
  }
  static void store(bf16_t* p, V a) { storen(p, a, kW); }
  static void storen(bf16_t* p, V a, int n) {
    for (int i = 0; i < n; ++i) p[i] = f32_to_bf16(a.f[i]);
  }
  static V fma(V a, V b, V c) {  // a * b + c
    for (int i = 0; i < kW; ++i) c.f[i] += a.f[i] * b.f[i];
    return c;
  }
  static V add(V a, V b) {
    for (int i = 0; i < kW; ++i) a.f[i] += b.f[i];
    return a;
  }
  static V sub(V a, V b) {
    for (int i = 0; i < kW; ++i) a.f[i] -= b.f[i];
    return a;
  }
  static V mul(V a, V b) {
    for (int i = 0; i < kW; ++i) a.f[i] *= b.f[i];
    return a;
  }
  static V relu(V a) {  // NaN stays NaN, as torch.relu
    for (int i = 0; i < kW; ++i) a.f[i] = a.f[i] <= 0.0f ? 0.0f : a.f[i];
    return a;
  }
};

}  // namespace redkern::cpu
