// The AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c; they run only after
// dispatch.cpp has checked the CPU for them).
// This unit: the few-cout algorithm.
#include "cpu/conv_few_cout.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx2/simd_avx2.h"

namespace redkern::cpu::avx2 {

void few_cout_f32(const ConvArgs& a) { few_cout::conv_few_cout<Avx2, float>(a); }
void few_cout_bf16(const ConvArgs& a) { few_cout::conv_few_cout<Avx2, bf16_t>(a); }

}  // namespace redkern::cpu::avx2
