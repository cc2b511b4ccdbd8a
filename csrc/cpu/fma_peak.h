// fp32 FMA throughput microbenchmark, a template on the ISA's vector type S.
//
// Each thread runs kChains independent FMA dependency chains: enough to cover the FMA
// latency (4-5 cycles) times the FMA units (2) of current x86 cores, so throughput, not
// latency, bounds the loop. The multiplier is just below 1 so values stay normal.
#pragma once

#include <omp.h>

#include "cpu/kernel_util.h"

namespace redkern::cpu {

template <class S>
double fma_peak_gflops(int nthreads) {
  using V = typename S::V;
  constexpr int kChains = 12;
  constexpr long kIters = 1L << 22;  // x 12 FMAs: ~40 ms per repeat on a 3 GHz core
  constexpr int kRepeats = 5;
  double best = 0.0;
  volatile float sink = 0.0f;  // keeps the chains alive
  for (int rep = 0; rep < kRepeats; ++rep) {
    double seconds = 0.0;
    int threads = 1;
#pragma omp parallel num_threads(nthreads)
    {
      volatile float seed = 0.999999f;
      const V m = S::set1(seed), c = S::set1(1e-7f);
      V acc[kChains];
      for (int i = 0; i < kChains; ++i) acc[i] = S::set1(float(i));
#pragma omp barrier
      const double t0 = omp_get_wtime();
      for (long it = 0; it < kIters; ++it)
#pragma GCC unroll 12  // the chains in registers, not timing loads and stores
        for (int i = 0; i < kChains; ++i) acc[i] = S::fma(acc[i], m, c);
#pragma omp barrier
      const double t1 = omp_get_wtime();
#pragma omp master
      {
        seconds = t1 - t0;
        threads = omp_get_num_threads();
      }
      float out[S::kW];
      for (int i = 1; i < kChains; ++i) acc[0] = S::add(acc[0], acc[i]);
      S::store(out, acc[0]);
#pragma omp critical
      sink = sink + out[0];
    }
    const double flops = 2.0 * S::kW * kChains * double(kIters) * threads;
    if (seconds > 0 && flops / seconds / 1e9 > best) best = flops / seconds / 1e9;
  }
  (void)sink;
  return best;
}

}  // namespace redkern::cpu
