// The kernels one ISA provides; dispatch.cpp picks a table by the CPU's features.
//
// Each ISA's kernels live in their own translation units (csrc/cpu/isa_*/, and the generic
// ones in csrc/cpu/generic_*.cpp), compiled with that ISA's -m flags, so none of its code can
// run on a CPU that lacks it. Each algorithm is its own unit, so they compile in parallel.
#pragma once

#include <cstddef>

#include "cpu/conv.h"

namespace redkern::cpu {

using ConvFn = void (*)(const ConvArgs&);
// A weight-gradient kernel: sums into per-thread partials (wgrad.h), `stride` floats apart.
using WgradFn = void (*)(const WgradArgs&, float* partials, std::size_t stride);

struct IsaKernels {
  ConvFn direct_f32;
  ConvFn direct_bf16;
  ConvFn winograd4_f32;
  ConvFn winograd4_bf16;
  ConvFn winograd6_f32;
  ConvFn winograd6_bf16;
  ConvFn few_cout_f32;
  ConvFn few_cout_bf16;
  double (*fma_peak_gflops)(int nthreads);
  WgradFn wgrad_direct_f32;
  WgradFn wgrad_direct_bf16;
  WgradFn wgrad_winograd4_f32;
  WgradFn wgrad_winograd4_bf16;
};

// The kernel table of `isa`; throws std::invalid_argument if this CPU lacks it.
const IsaKernels& kernels_for(Isa isa);

// The entry points of one ISA's units, in namespace redkern::cpu::<isa>.
#define REDKERN_ISA_ENTRY_POINTS(isa)              \
  namespace isa {                                  \
  void direct_f32(const ConvArgs& a);              \
  void direct_bf16(const ConvArgs& a);             \
  void winograd4_f32(const ConvArgs& a);           \
  void winograd4_bf16(const ConvArgs& a);          \
  void winograd6_f32(const ConvArgs& a);           \
  void winograd6_bf16(const ConvArgs& a);          \
  void few_cout_f32(const ConvArgs& a);            \
  void few_cout_bf16(const ConvArgs& a);           \
  double fma_peak(int nthreads);                   \
  void wgrad_direct_f32(const WgradArgs& a, float* partials, std::size_t stride);     \
  void wgrad_direct_bf16(const WgradArgs& a, float* partials, std::size_t stride);    \
  void wgrad_winograd4_f32(const WgradArgs& a, float* partials, std::size_t stride);  \
  void wgrad_winograd4_bf16(const WgradArgs& a, float* partials, std::size_t stride); \
  }

REDKERN_ISA_ENTRY_POINTS(generic)
#if defined(REDKERN_X86)
REDKERN_ISA_ENTRY_POINTS(avx2)
REDKERN_ISA_ENTRY_POINTS(avx512)
void conv_direct_bf16dot(const ConvArgs& a);     // isa_avx512/conv_bf16dot.cpp
void conv_winograd4_bf16dot(const ConvArgs& a);  // isa_avx512/winograd_bf16.cpp
void conv_winograd4_amx(const ConvArgs& a);      // isa_avx512/winograd_bf16.cpp
// Multiply-adds per second of vdpbf16ps over fp32 FMAs on one thread of this CPU, measured
// (about 5 ms): 2 where it runs at the FMA's instruction rate (as on AMD Zen 4), 1 or less
// where it runs at half that (as on Intel cores). isa_avx512/winograd_bf16.cpp; AVX512_BF16 only.
double bf16_dot_speedup();
#endif

}  // namespace redkern::cpu
