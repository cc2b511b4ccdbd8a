// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
// This unit: the Winograd F(6x6,3x3) algorithm.
#include "cpu/winograd.h"
#include "cpu/dispatch.h"
#include "cpu/simd_portable.h"

namespace redkern::cpu::generic {

void winograd6_f32(const ConvArgs& a) { winograd::conv_winograd<Portable, float, winograd::F6>(a); }
void winograd6_bf16(const ConvArgs& a) { winograd::conv_winograd<Portable, bf16_t, winograd::F6>(a); }

}  // namespace redkern::cpu::generic
