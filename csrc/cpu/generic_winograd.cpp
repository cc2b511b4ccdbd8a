// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
// This unit: the Winograd F(4x4,3x3) algorithm.
#include "cpu/winograd.h"
#include "cpu/dispatch.h"
#include "cpu/simd_portable.h"

namespace redkern::cpu::generic {

void winograd4_f32(const ConvArgs& a) { winograd::conv_winograd<Portable, float>(a); }
void winograd4_bf16(const ConvArgs& a) { winograd::conv_winograd<Portable, bf16_t>(a); }

}  // namespace redkern::cpu::generic
