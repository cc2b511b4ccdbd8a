// Run-time choice of the CPU kernels by the processor's features (and REDKERN_CPU_ISA).
#include "cpu/dispatch.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace redkern::cpu {

namespace {

constexpr const char* kIsaNames[] = {"generic", "avx2", "avx512"};

Isa best_supported_isa() {
  for (int i = int(Isa::kAvx512); i > int(Isa::kGeneric); --i)
    if (isa_supported(Isa(i))) return Isa(i);
  return Isa::kGeneric;
}

const IsaKernels& kernels_for(Isa isa) {
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("this CPU does not support the ") + isa_name(isa) +
                                " kernels");
  switch (isa) {
#if defined(REDKERN_X86)
    case Isa::kAvx2: return avx2_kernels();
    case Isa::kAvx512: return avx512_kernels();
#endif
    default: return generic_kernels();
  }
}

}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kGeneric: return true;
#if defined(REDKERN_X86)
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      return isa_supported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
#endif
    default: return false;
  }
}

bool bf16_dot_supported() {
#if defined(REDKERN_X86)
  return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  const int i = int(isa);
  return i >= 0 && i <= int(Isa::kAvx512) ? kIsaNames[i] : "unknown";
}

Isa parse_isa(const char* name) {
  for (int i = 0; i <= int(Isa::kAvx512); ++i)
    if (std::strcmp(name, kIsaNames[i]) == 0) return Isa(i);
  throw std::invalid_argument(std::string("unknown CPU ISA '") + name +
                              "'; choose generic, avx2 or avx512");
}

Isa selected_isa() {
  // Read once: the choice must not change under a running model.
  static const Isa best = best_supported_isa();
  static const char* forced = std::getenv("REDKERN_CPU_ISA");
  if (forced == nullptr || *forced == '\0') return best;
  const Isa isa = parse_isa(forced);
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("REDKERN_CPU_ISA=") + forced +
                                " but this CPU supports at most " + isa_name(best));
  return isa;
}

void conv3x3(const Conv3x3Args& args, DType dtype, Algorithm algorithm, Isa isa) {
  const IsaKernels& k = kernels_for(isa);
  const bool bf16 = dtype == DType::kBFloat16;
  ConvFn fn = nullptr;
  switch (algorithm) {
    case Algorithm::kDirect: fn = bf16 ? k.direct_bf16 : k.direct_f32; break;
    case Algorithm::kWinograd4x4: fn = bf16 ? k.winograd4_bf16 : k.winograd4_f32; break;
    case Algorithm::kDirectFewCout:
      if (args.cout > 3)
        throw std::invalid_argument("the few-cout algorithm takes at most 3 output channels, got " +
                                    std::to_string(args.cout));
      fn = bf16 ? k.few_cout_bf16 : k.few_cout_f32;
      break;
    case Algorithm::kDirectBf16Dot:
      if (!bf16) throw std::invalid_argument("the bf16-dot algorithm takes bf16 activations only");
#if defined(REDKERN_X86)
      if (isa == Isa::kAvx512 && bf16_dot_supported()) fn = conv3x3_direct_bf16dot;
#endif
      if (fn == nullptr)
        throw std::invalid_argument(std::string("the bf16-dot algorithm needs the avx512 kernels "
                                                "on a CPU with AVX512_BF16, not ") +
                                    isa_name(isa) + (bf16_dot_supported() ? "" : " on this CPU"));
      break;
  }
  if (fn == nullptr) throw std::invalid_argument("unknown convolution algorithm");
  fn(args);
}

double measure_fma_peak_gflops(int nthreads, Isa isa) {
  return kernels_for(isa).fma_peak_gflops(nthreads < 1 ? 1 : nthreads);
}

}  // namespace redkern::cpu
