// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
// This unit: the direct algorithm.
#include "cpu/conv_direct.h"
#include "cpu/dispatch.h"
#include "cpu/simd_portable.h"

namespace redkern::cpu::generic {

void direct_f32(const ConvArgs& a) { direct::conv_direct<Portable, float>(a); }
void direct_bf16(const ConvArgs& a) { direct::conv_direct<Portable, bf16_t>(a); }

}  // namespace redkern::cpu::generic
