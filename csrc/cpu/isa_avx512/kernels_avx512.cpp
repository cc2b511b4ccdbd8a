// The AVX-512 kernels (this file is compiled with -mavx512f/bw/vl/dq; it runs only after
// dispatch.cpp has checked the CPU for them).
#include "cpu/conv3x3_direct.h"
#include "cpu/conv3x3_few_cout.h"
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/isa_avx512/simd_avx512.h"
#include "cpu/winograd.h"

namespace redkern::cpu {

const IsaKernels& avx512_kernels() {
  static const IsaKernels k{
      direct::conv3x3_direct<Avx512, float>,
      direct::conv3x3_direct<Avx512, bf16_t>,
      winograd::conv3x3_winograd4<Avx512, float>,
      winograd::conv3x3_winograd4<Avx512, bf16_t>,
      few_cout::conv3x3_few_cout<Avx512, float>,
      few_cout::conv3x3_few_cout<Avx512, bf16_t>,
      fma_peak_gflops<Avx512>,
  };
  return k;
}

}  // namespace redkern::cpu
