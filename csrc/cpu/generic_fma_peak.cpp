// The portable kernels: the fallback on CPUs without AVX2 (and on non-x86 hosts), built
// from the same templates as the SIMD ones with the plain-C++ vector of simd_portable.h.
// This unit: the FMA throughput probe.
#include "cpu/dispatch.h"
#include "cpu/fma_peak.h"
#include "cpu/simd_portable.h"

namespace redkern::cpu::generic {

double fma_peak(int nthreads) { return fma_peak_gflops<Portable>(nthreads); }

}  // namespace redkern::cpu::generic
