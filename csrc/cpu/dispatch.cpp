// Run-time choice of the CPU kernels by the processor's features (and REDKERN_CPU_ISA).
#include "cpu/dispatch.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(REDKERN_X86)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace redkern::cpu {

namespace {

constexpr const char* kIsaNames[] = {"generic", "avx2", "avx512"};

Isa best_supported_isa() {
  for (int i = int(Isa::kAvx512); i > int(Isa::kGeneric); --i)
    if (isa_supported(Isa(i))) return Isa(i);
  return Isa::kGeneric;
}

#define REDKERN_ISA_TABLE(isa)                                                            \
  IsaKernels{isa::direct_f32,       isa::direct_bf16,       isa::winograd4_f32,          \
             isa::winograd4_bf16,   isa::winograd6_f32,     isa::winograd6_bf16,         \
             isa::few_cout_f32,     isa::few_cout_bf16,                                  \
             isa::fma_peak,         isa::wgrad_direct_f32,  isa::wgrad_direct_bf16,      \
             isa::wgrad_winograd4_f32, isa::wgrad_winograd4_bf16}

}  // namespace

const IsaKernels& kernels_for(Isa isa) {
  if (!isa_supported(isa))
    throw std::invalid_argument(std::string("this CPU does not support the ") + isa_name(isa) +
                                " kernels");
  static const IsaKernels generic_table = REDKERN_ISA_TABLE(generic);
#if defined(REDKERN_X86)
  static const IsaKernels avx2_table = REDKERN_ISA_TABLE(avx2);
  static const IsaKernels avx512_table = REDKERN_ISA_TABLE(avx512);
  switch (isa) {
    case Isa::kAvx2: return avx2_table;
    case Isa::kAvx512: return avx512_table;
    default: break;
  }
#endif
  return generic_table;
}

namespace {

std::string window(const ConvArgs& a) {
  return std::to_string(a.kh) + "x" + std::to_string(a.kw) + " kernel with padding (" +
         std::to_string(a.ph) + ", " + std::to_string(a.pw) + ")";
}

void check_winograd_window(const ConvArgs& a) {
  if (a.kh != 3 || a.kw != 3 || a.ph < 0 || a.ph > 1 || a.pw < 0 || a.pw > 1)
    throw std::invalid_argument(
        "the Winograd algorithms take 3x3 kernels with padding 0 or 1 on each axis (as a "
        "convolution; a transposed one's padding 1 is 1 too, 2 is 0), not a " + window(a));
}

// AMX-TILE and AMX-BF16 in CPUID leaf 7, and the tile data state granted to this process.
bool request_amx() {
#if defined(REDKERN_X86) && defined(__linux__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = edx & (1u << 22), amx_tile = edx & (1u << 24);
  if (!amx_bf16 || !amx_tile) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
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

bool amx_supported() {
  // AVX512_BF16 too: every AMX CPU has it, and the AMX unit is compiled for it.
  static const bool granted = bf16_dot_supported() && request_amx();
  return granted;
}

double measured_bf16_dot_speedup() {
#if defined(REDKERN_X86)
  static const double speedup = bf16_dot_supported() ? bf16_dot_speedup() : 0.0;
  return speedup;
#else
  return 0.0;
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

namespace {

#if defined(REDKERN_X86)
#define REDKERN_X86_ONLY(kernel) kernel
#else
#define REDKERN_X86_ONLY(kernel) nullptr
#endif

// `kernel`, an algorithm that takes bf16 activations on the avx512 kernels of a CPU with
// `feature` (`has`), or the reason it cannot run.
ConvFn bf16_hardware_kernel(bool bf16, Isa isa, bool has, ConvFn kernel, const char* what,
                            const char* feature) {
  if (!bf16) throw std::invalid_argument(std::string("the ") + what + " algorithm takes bf16 activations only");
  if (isa == Isa::kAvx512 && has && kernel != nullptr) return kernel;
  throw std::invalid_argument(std::string("the ") + what + " algorithm needs the avx512 kernels on a CPU with " +
                              feature + ", not " + isa_name(isa) + (has ? "" : " on this CPU"));
}

}  // namespace

void conv2d(const ConvArgs& args, DType dtype, Algorithm algorithm, Isa isa) {
  const IsaKernels& k = kernels_for(isa);
  const bool bf16 = dtype == DType::kBFloat16;
  ConvFn fn = nullptr;
  switch (algorithm) {
    case Algorithm::kDirect: fn = bf16 ? k.direct_bf16 : k.direct_f32; break;
    case Algorithm::kWinograd4x4:
      check_winograd_window(args);
      fn = bf16 ? k.winograd4_bf16 : k.winograd4_f32;
      break;
    case Algorithm::kWinograd6x6:
      check_winograd_window(args);
      fn = bf16 ? k.winograd6_bf16 : k.winograd6_f32;
      break;
    case Algorithm::kWinograd4x4Bf16Dot:
      check_winograd_window(args);
      fn = bf16_hardware_kernel(bf16, isa, bf16_dot_supported(), REDKERN_X86_ONLY(conv_winograd4_bf16dot),
                                "bf16-dot Winograd", "AVX512_BF16");
      break;
    case Algorithm::kWinograd4x4Amx:
      check_winograd_window(args);
      fn = bf16_hardware_kernel(bf16, isa, amx_supported(), REDKERN_X86_ONLY(conv_winograd4_amx),
                                "AMX Winograd", "AMX-BF16");
      break;
    case Algorithm::kDirectFewCout:
      if (args.cout > kFewCoutMax)
        throw std::invalid_argument("the few-cout algorithm takes at most " +
                                    std::to_string(kFewCoutMax) + " output channels, got " +
                                    std::to_string(args.cout));
      fn = bf16 ? k.few_cout_bf16 : k.few_cout_f32;
      break;
    case Algorithm::kDirectBf16Dot:
      fn = bf16_hardware_kernel(bf16, isa, bf16_dot_supported(), REDKERN_X86_ONLY(conv_direct_bf16dot),
                                "bf16-dot", "AVX512_BF16");
      break;
  }
  if (fn == nullptr) throw std::invalid_argument("unknown convolution algorithm");
  const bool winograd = algorithm == Algorithm::kWinograd4x4 || algorithm == Algorithm::kWinograd6x6 ||
                        algorithm == Algorithm::kWinograd4x4Bf16Dot ||
                        algorithm == Algorithm::kWinograd4x4Amx;
  if (args.x_mask != nullptr && !winograd)
    throw std::invalid_argument("an input mask (the ReLU-derivative prologue) runs with the Winograd "
                                "algorithms only");
  fn(args);
}

double measure_fma_peak_gflops(int nthreads, Isa isa) {
  return kernels_for(isa).fma_peak_gflops(nthreads < 1 ? 1 : nthreads);
}

}  // namespace redkern::cpu
