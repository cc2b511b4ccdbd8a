// The AVX-512 kernels (compiled with -mavx512f/bw/vl/dq; they run only after dispatch.cpp
// has checked the CPU for them).
// This unit: the weight gradients (direct and Winograd).
#include "cpu/wgrad.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"

namespace redkern::cpu::avx512 {

void wgrad_direct_f32(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_direct<Avx512, float>(a, p, s); }
void wgrad_direct_bf16(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_direct<Avx512, bf16_t>(a, p, s); }
void wgrad_winograd4_f32(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_winograd4<Avx512, float>(a, p, s); }
void wgrad_winograd4_bf16(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_winograd4<Avx512, bf16_t>(a, p, s); }

}  // namespace redkern::cpu::avx512
