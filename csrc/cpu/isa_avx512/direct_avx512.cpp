// The AVX-512 kernels (compiled with -mavx512f/bw/vl/dq; they run only after dispatch.cpp
// has checked the CPU for them).
// This unit: the direct algorithm.
#include "cpu/conv_direct.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"

namespace redkern::cpu::avx512 {

void direct_f32(const ConvArgs& a) { direct::conv_direct<Avx512, float>(a); }
void direct_bf16(const ConvArgs& a) { direct::conv_direct<Avx512, bf16_t>(a); }

}  // namespace redkern::cpu::avx512
