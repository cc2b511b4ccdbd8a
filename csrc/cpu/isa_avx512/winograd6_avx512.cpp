// The AVX-512 kernels (compiled with -mavx512f/bw/vl/dq; they run only after dispatch.cpp
// has checked the CPU for them).
// This unit: the Winograd F(6x6,3x3) algorithm.
#include "cpu/winograd.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"

namespace redkern::cpu::avx512 {

void winograd6_f32(const ConvArgs& a) { winograd::conv_winograd<Avx512, float, winograd::F6>(a); }
void winograd6_bf16(const ConvArgs& a) { winograd::conv_winograd<Avx512, bf16_t, winograd::F6>(a); }

}  // namespace redkern::cpu::avx512
