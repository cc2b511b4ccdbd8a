// The kernels one ISA provides; dispatch.cpp picks a table by the CPU's features.
//
// Each ISA's table lives in its own translation unit (csrc/cpu/isa_*/), compiled with that
// ISA's -m flags, so none of its code can run on a CPU that lacks it.
#pragma once

#include "cpu/conv3x3.h"

namespace redkern::cpu {

using ConvFn = void (*)(const Conv3x3Args&);

struct IsaKernels {
  ConvFn direct_f32;
  ConvFn direct_bf16;
  ConvFn winograd4_f32;
  ConvFn winograd4_bf16;
  ConvFn few_cout_f32;
  ConvFn few_cout_bf16;
  double (*fma_peak_gflops)(int nthreads);
};

const IsaKernels& generic_kernels();
#if defined(REDKERN_X86)
const IsaKernels& avx2_kernels();
const IsaKernels& avx512_kernels();
void conv3x3_direct_bf16dot(const Conv3x3Args& a);  // isa_avx512/conv3x3_bf16dot.cpp
#endif

}  // namespace redkern::cpu
