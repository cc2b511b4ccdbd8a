// The AVX-512 kernels (this file is compiled with -mavx512f/bw/vl/dq; it runs only after
// dispatch.cpp has checked the CPU for them).
#include "cpu/conv3x3_direct.h"
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/isa_avx512/simd_avx512.h"
#include "cpu/winograd.h"

namespace redkern::cpu {

void conv3x3_direct_bf16dot(const Conv3x3Args& a);  // conv3x3_bf16dot.cpp

const IsaKernels& avx512_kernels() {
  static const IsaKernels k{
      direct::conv3x3_direct<Avx512, float>,
      direct::conv3x3_direct<Avx512, bf16_t>,
      winograd::conv3x3_winograd4<Avx512, float>,
      winograd::conv3x3_winograd4<Avx512, bf16_t>,
      nullptr,
      fma_peak_gflops<Avx512>,
  };
  return k;
}

// The same kernels plus the bf16 dot-product one (for CPUs with avx512_bf16).
const IsaKernels& avx512_bf16_kernels() {
  static const IsaKernels k = [] {
    IsaKernels t = avx512_kernels();
    t.direct_bf16dot = conv3x3_direct_bf16dot;
    return t;
  }();
  return k;
}

}  // namespace redkern::cpu
