// The AVX-512 kernels (compiled with -mavx512f/bw/vl/dq; they run only after dispatch.cpp
// has checked the CPU for them).
// This unit: the FMA throughput probe.
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/isa_avx512/simd_avx512.h"

namespace redkern::cpu::avx512 {

double fma_peak(int nthreads) { return fma_peak_gflops<Avx512>(nthreads); }

}  // namespace redkern::cpu::avx512
