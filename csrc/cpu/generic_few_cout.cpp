// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
// This unit: the few-cout algorithm.
#include "cpu/conv_few_cout.h"
#include "cpu/dispatch.h"
#include "cpu/simd_portable.h"

namespace redkern::cpu::generic {

void few_cout_f32(const ConvArgs& a) { few_cout::conv_few_cout<Portable, float>(a); }
void few_cout_bf16(const ConvArgs& a) { few_cout::conv_few_cout<Portable, bf16_t>(a); }

}  // namespace redkern::cpu::generic
