// The AVX-512 kernels (compiled with -mavx512f/bw/vl/dq; they run only after dispatch.cpp
// has checked the CPU for them).
// This unit: the few-cout algorithm.
#include "cpu/conv_few_cout.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"

namespace redkern::cpu::avx512 {

void few_cout_f32(const ConvArgs& a) { few_cout::conv_few_cout<Avx512, float>(a); }
void few_cout_bf16(const ConvArgs& a) { few_cout::conv_few_cout<Avx512, bf16_t>(a); }

}  // namespace redkern::cpu::avx512
