// Where a Winograd F(4x4,3x3) fp32 layer spends its time on this CPU: the kernel's block loop
// (csrc/cpu/winograd.h, conv_winograd) with the time-stamp counter read around each of its three
// phases, for one 64 -> 64 RELU layer of H x H pixels (AVX-512 kernels). It first checks that
// its copy of the loop writes exactly what conv_winograd writes.
//
//   g++ -O3 -std=c++17 -fopenmp -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c
//     -Icsrc -I. bench/cpu/winograd_phases.cpp csrc/cpu/scratch.cpp csrc/cpu/pack.cpp
//       -o /tmp/winograd_phases
//   /tmp/winograd_phases [H=256] [threads=2] [calls=40] [L2 share of a block=0.5]
//
// Cycles are TSC cycles (constant rate), summed over the threads, per call, the first 3 calls
// left out. tests/test_bench_scripts.py builds and runs it at a small size.
#include <omp.h>
#include <x86intrin.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/isa_avx512/simd_avx512.h"
#include "cpu/winograd.h"

namespace redkern::cpu {  // pack.cpp
std::size_t packed_weight_size(int cin, int cout, int kh, int kw, Algorithm algorithm);
void pack_weight(const float* w, int cin, int cout, int kh, int kw, bool transposed,
                 Algorithm algorithm, float* packed);
}  // namespace redkern::cpu

using namespace redkern;
using namespace redkern::cpu;
using namespace redkern::cpu::winograd;
using S = Avx512;

int main(int argc, char** argv) {
  const int H = argc > 1 ? atoi(argv[1]) : 256, C = 64;
  const int nthreads = argc > 2 ? atoi(argv[2]) : 2, calls = argc > 3 ? atoi(argv[3]) : 40;
  const double share = argc > 4 ? atof(argv[4]) : 0.5;
  if (H < 1 || nthreads < 1 || calls < 4 || !(share > 0 && share <= 1)) {
    fprintf(stderr, "usage: %s [H >= 1] [threads >= 1] [calls >= 4] [L2 share in (0, 1]]\n", argv[0]);
    return 2;
  }
  std::vector<float> x(size_t(H) * H * C), y(x.size()), want(x.size()), w(C * C * 9), bias(C);
  srand(1);
  for (auto& v : x) v = rand() / float(RAND_MAX) - 0.5f;
  for (auto& v : w) v = (rand() / float(RAND_MAX) - 0.5f) * 0.1f;
  for (auto& v : bias) v = rand() / float(RAND_MAX) - 0.5f;
  std::vector<float> packed(packed_weight_size(C, C, 3, 3, Algorithm::kWinograd4x4));
  pack_weight(w.data(), C, C, 3, 3, false, Algorithm::kWinograd4x4, packed.data());
  EpilogueParams p{};
  p.act = Act::kRELU, p.alpha = 1, p.beta = 1;

  ConvArgs a{};
  a.x = x.data(), a.packed = packed.data(), a.bias = bias.data(), a.y = want.data();
  a.n = 1, a.h = a.w = a.oh = a.ow = H, a.cin = a.cout = C, a.kh = a.kw = 3, a.ph = a.pw = 1;
  a.epilogue = p, a.nthreads = nthreads;
  conv_winograd<S, float>(a);

  using Geo = Geometry<S, F4>;
  constexpr int R = S::kGemmRows, P = Geo::kPositions;
  Geo g(1, H, H, C, C, 1, 1, padded_cout(C), padded_cout(C));
  const long tiles = long(g.tiles_y) * g.tiles_x;
  const long per_tile = long(P) * (g.cin_pad + g.cout_pad) * long(sizeof(float));
  g.tb = int(long(l2_cache_bytes() * share) / per_tile / R * R);
  if (g.tb < R) g.tb = R;
  const long blocks = (tiles + g.tb - 1) / g.tb;

  double in = 0, gemm = 0, out = 0, seconds = 0;
  for (int call = 0; call < calls; ++call) {
    unsigned long long ci = 0, cg = 0, co = 0;
    const double start = omp_get_wtime();
#pragma omp parallel num_threads(nthreads) reduction(+ : ci, cg, co)
    {
      float* vbuf = thread_scratch(P * size_t(g.tb) * g.cin_pad, 0);
      float* mbuf = thread_scratch(P * size_t(g.tb) * g.cout_pad, 1);
#pragma omp for schedule(dynamic)
      for (long blk = 0; blk < blocks; ++blk) {
        const long t0 = blk * g.tb;
        const int nt = int(tiles - t0 < g.tb ? tiles - t0 : g.tb), rows = div_up(nt, R) * R;
        const unsigned long long c0 = __rdtsc();
        transform_inputs<S, float, false, float, F4>(g, x.data(), t0, nt, rows, vbuf);
        const unsigned long long c1 = __rdtsc();
        FmaGemm<S>::multiply(g, vbuf, packed.data(), rows, mbuf);
        const unsigned long long c2 = __rdtsc();
        transform_outputs<S, float, EpiMode::kRelu, F4>(g, mbuf, bias.data(), nullptr, t0, nt, y.data(), p);
        ci += c1 - c0, cg += c2 - c1, co += __rdtsc() - c2;
      }
    }
    if (call >= 3) in += ci, gemm += cg, out += co, seconds += omp_get_wtime() - start;
  }
  for (size_t i = 0; i < y.size(); ++i)
    if (!(y[i] == want[i])) {  // the same code in the same order: equal bits (NaN fails too)
      fprintf(stderr, "the timed loop differs from conv_winograd at %zu: %g != %g\n", i, y[i], want[i]);
      return 1;
    }
  const int n = calls - 3;
  const double total = in + gemm + out;
  printf("H=%d threads=%d tiles/block=%d: %.3f ms a call; TSC Mcycles a call (all threads): input "
         "transform %.3f (%.0f%%), GEMM %.3f (%.0f%%), output transform %.3f (%.0f%%); "
         "%.0f cycles per 16-channel tile input, %.0f output\n",
         H, nthreads, g.tb, seconds / n * 1e3, in / n / 1e6, 100 * in / total, gemm / n / 1e6,
         100 * gemm / total, out / n / 1e6, 100 * out / total, in / n / (tiles * (C / 16)),
         out / n / (tiles * (C / 16)));
  return 0;
}
