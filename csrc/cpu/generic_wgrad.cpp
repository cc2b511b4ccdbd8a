// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
// This unit: the weight gradients (direct and Winograd).
#include "cpu/wgrad.h"
#include "cpu/dispatch.h"
#include "cpu/simd_portable.h"

namespace redkern::cpu::generic {

void wgrad_direct_f32(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_direct<Portable, float>(a, p, s); }
void wgrad_direct_bf16(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_direct<Portable, bf16_t>(a, p, s); }
void wgrad_winograd4_f32(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_winograd4<Portable, float>(a, p, s); }
void wgrad_winograd4_bf16(const WgradArgs& a, float* p, std::size_t s) { wgrad::weight_grad_winograd4<Portable, bf16_t>(a, p, s); }

}  // namespace redkern::cpu::generic
