// The AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c; they run only after
// dispatch.cpp has checked the CPU for them).
// This unit: the weight gradients (direct and Winograd).
#include "cpu/wgrad.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx2/simd_avx2.h"

namespace redkern::cpu::avx2 {

void wgrad_direct_f32(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_direct<Avx2, float>(a, p, s); }
void wgrad_direct_bf16(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_direct<Avx2, bf16_t>(a, p, s); }
void wgrad_winograd4_f32(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_winograd4<Avx2, float>(a, p, s); }
void wgrad_winograd4_bf16(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_winograd4<Avx2, bf16_t>(a, p, s); }

}  // namespace redkern::cpu::avx2
