// The AVX-512 kernels (compiled with -mavx512f/bw/vl/dq; they run only after dispatch.cpp
// has checked the CPU for them).
// This unit: the Winograd F(4x4,3x3) algorithm.
#include "cpu/winograd.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx512/simd_avx512.h"

namespace redkern::cpu::avx512 {

void winograd4_f32(const ConvArgs& a) { winograd::conv_winograd<Avx512, float>(a); }
void winograd4_bf16(const ConvArgs& a) { winograd::conv_winograd<Avx512, bf16_t>(a); }

}  // namespace redkern::cpu::avx512
