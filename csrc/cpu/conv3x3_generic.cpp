// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
#include "cpu/conv3x3_direct.h"
#include "cpu/conv3x3_few_cout.h"
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/simd_portable.h"
#include "cpu/winograd.h"

namespace redkern::cpu {

const IsaKernels& generic_kernels() {
  static const IsaKernels k{
      direct::conv3x3_direct<Portable, float>,
      direct::conv3x3_direct<Portable, bf16_t>,
      winograd::conv3x3_winograd4<Portable, float>,
      winograd::conv3x3_winograd4<Portable, bf16_t>,
      few_cout::conv3x3_few_cout<Portable, float>,
      few_cout::conv3x3_few_cout<Portable, bf16_t>,
      fma_peak_gflops<Portable>,
  };
  return k;
}

}  // namespace redkern::cpu
