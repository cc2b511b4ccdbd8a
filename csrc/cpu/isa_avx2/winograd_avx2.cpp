// The AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c; they run only after
// dispatch.cpp has checked the CPU for them).
// This unit: the Winograd F(4x4,3x3) algorithm.
#include "cpu/winograd.h"
#include "cpu/dispatch.h"
#include "cpu/isa_avx2/simd_avx2.h"

namespace redkern::cpu::avx2 {

void winograd4_f32(const ConvArgs& a) { winograd::conv_winograd<Avx2, float>(a); }
void winograd4_bf16(const ConvArgs& a) { winograd::conv_winograd<Avx2, bf16_t>(a); }

}  // namespace redkern::cpu::avx2
