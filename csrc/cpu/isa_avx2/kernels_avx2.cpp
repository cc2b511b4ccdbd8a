// The AVX2 + FMA kernels (this file is compiled with -mavx2 -mfma -mf16c; it runs only
// after dispatch.cpp has checked the CPU for them).
#include "cpu/conv3x3_direct.h"
#include "cpu/conv3x3_few_cout.h"
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/isa_avx2/simd_avx2.h"
#include "cpu/winograd.h"

namespace redkern::cpu {

const IsaKernels& avx2_kernels() {
  static const IsaKernels k{
      direct::conv3x3_direct<Avx2, float>,
      direct::conv3x3_direct<Avx2, bf16_t>,
      winograd::conv3x3_winograd4<Avx2, float>,
      winograd::conv3x3_winograd4<Avx2, bf16_t>,
      few_cout::conv3x3_few_cout<Avx2, float>,
      few_cout::conv3x3_few_cout<Avx2, bf16_t>,
      fma_peak_gflops<Avx2>,
  };
  return k;
}

}  // namespace redkern::cpu
