// The AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c; they run only after
// dispatch.cpp has checked the CPU for them).
// This unit: the FMA throughput probe.
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/isa_avx2/simd_avx2.h"

namespace redkern::cpu::avx2 {

double fma_peak(int nthreads) { return fma_peak_gflops<Avx2>(nthreads); }

}  // namespace redkern::cpu::avx2
