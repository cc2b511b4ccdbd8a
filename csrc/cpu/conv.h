// redkern CPU kernels: fused stride-1 KxK convolutions on NHWC activations.
//
// Torch-free on purpose: raw pointers and sizes, so the same code builds against any torch
// and is bound with pybind11 alone. Callers (redkern/backends/cpu.py) own the buffers and
// guarantee NHWC-contiguous layout; the bindings (module.cpp) re-check every size before
// touching memory.
//
// Every call is a plain convolution: a transposed convolution is run as the equivalent one
// (pack_weight swaps the channels and flips the window; the caller passes padding k-1-p).
// Every algorithm applies the one general epilogue (common/epilogue.h) before its only store:
//   v = alpha * conv + bias; y = act(v) | act(v + beta*extra) | act2(act(v) + beta*extra)
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/epilogue.h"

namespace redkern::cpu {

// Storage type of activations (x, extra, y). Weights, bias and slopes are always fp32
// (except the bf16-pair layout below); accumulation is always fp32.
enum class DType : int {
  kFloat32 = 0,
  kBFloat16 = 1,  // raw bf16 bits (uint16); rounded to nearest-even on store
};

// How the convolution is computed; each algorithm has its own packed-weight layout
// (taps = kh * kw, in row-major window order).
enum class Algorithm : int {
  kDirect = 0,  // register-blocked direct conv (1x1: a GEMM over all pixels);
                // weights [cout_pad/16][tap][cin][16] fp32
  kWinograd4x4 = 1,  // Winograd F(4x4,3x3), 3x3 kernels with padding 1 only;
                     // weights G g G^T as [36][cin][cout_pad] fp32
  kDirectBf16Dot = 2,  // direct conv with vdpbf16ps (avx512 kernels on CPUs with
                       // AVX512_BF16; bf16 activations only); weights as bf16 pairs
                       // [tap][cin_pairs][cout_pad][2]
  kDirectFewCout = 3,  // direct conv vectorised over input channels, for cout <= 3;
                       // weights [cout][tap][cin_pad] fp32 (cin padded to 16)
  kWinograd4x4Bf16Dot = 4,  // Winograd F(4x4,3x3) with a vdpbf16ps GEMM (bf16 activations,
                            // avx512 kernels, AVX512_BF16); weights G g G^T as bf16 pairs
                            // [36][cin_pairs][cout_pad][2], cin_pairs = round_up(cin, 32) / 2
  kWinograd4x4Amx = 5,  // the same with an AMX tile GEMM (CPUs with AMX-BF16); same weights
  kWinograd6x6 = 6,     // Winograd F(6x6,3x3) with an fp32 GEMM, 3x3 kernels with padding 1
                        // only; weights G g G^T as [64][cin][cout_pad] fp32
};

// Instruction-set levels, each a superset of the one before.
enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The packed layouts pad the vectorised channel dimension (cout; cin for kDirectFewCout) to
// this multiple, so no layout depends on the ISA's vector width (16 floats = one AVX-512
// vector, two AVX2 vectors).
constexpr int kCoutAlign = 16;
static inline int padded_cout(int cout) {
  return (cout + kCoutAlign - 1) / kCoutAlign * kCoutAlign;
}

// The few-cout algorithm's limit on output channels (conv_few_cout.h).
constexpr int kFewCoutMax = 3;

// Number of 32-bit words in the packed weight for (cin, cout, kh, kw, algorithm). Throws
// std::invalid_argument for Winograd with a kernel other than 3x3.
std::size_t packed_weight_size(int cin, int cout, int kh, int kw, Algorithm algorithm);

// Re-lay a weight out for the kernel (done once per model, not per call).
// transposed == false: Conv2d weight [cout][cin][kh][kw].
// transposed == true:  ConvTranspose2d weight [cin][cout][kh][kw]; packed as the equivalent
//                      convolution (channels swapped, window flipped).
void pack_weight(const float* w, int cin, int cout, int kh, int kw, bool transposed,
                 Algorithm algorithm, float* packed);

// One fused convolution call. All activation tensors are NHWC-contiguous in the call's dtype.
// oh = h + 2 ph - kh + 1, ow = w + 2 pw - kw + 1; 0 <= ph < kh, 0 <= pw < kw.
struct ConvArgs {
  const void* x;        // [n, h, w, cin]
  const float* packed;  // pack_weight() output for the algorithm being run
  const float* bias;    // [cout], fp32
  const void* extra;    // [n, oh, ow, cout] for epilogue.residual != kNONE, else null
  void* y;              // [n, oh, ow, cout]; must not overlap any input
  int n, h, w, oh, ow, cin, cout, kh, kw, ph, pw;
  EpilogueParams epilogue;  // slope/slope2: [cout] fp32 where act/act2 need them
  int nthreads;
  // Null, or [n, h, w, cin]: x is read as x_mask <= 0 ? 0 : x, ReLU's derivative applied in the
  // prologue (the backward's input gradient, x_mask the ReLU's output). Winograd only.
  const void* x_mask = nullptr;
};

// y = epilogue(conv(x, packed), bias, extra) with the kernels of `isa`.
// Throws std::invalid_argument if this CPU lacks `isa` or `algorithm` cannot run the call.
void conv2d(const ConvArgs& args, DType dtype, Algorithm algorithm, Isa isa);

// One weight-gradient call (wgrad.h): the gradients of conv2d's weight and bias for the
// gradient g at its output (the epilogue's derivative already applied). x and g are
// NHWC-contiguous in the call's dtype; sizes as in ConvArgs.
struct WgradArgs {
  const void* x;  // [n, h, w, cin]
  const void* g;  // [n, oh, ow, cout]
  int n, h, w, oh, ow, cin, cout, kh, kw, ph, pw;
  int nthreads;
  // Null, or [n, oh, ow, cout]: g is read as g_mask <= 0 ? 0 : g (as ConvArgs::x_mask).
  // Winograd only.
  const void* g_mask = nullptr;
};

// dw [cout][cin][kh][kw] (the Conv2d layout of the convolution run) and db [cout] (null: not
// wanted), fp32, overwritten. Algorithm kDirect (any window) or kWinograd4x4 (3x3, padding 1).
// Deterministic for a given thread count. Throws std::invalid_argument as conv2d does.
void conv2d_weight_grad(const WgradArgs& args, float* dw, float* db, DType dtype,
                        Algorithm algorithm, Isa isa);

// The best ISA this CPU supports, lowered by REDKERN_CPU_ISA=generic|avx2|avx512 (read
// once). Throws std::invalid_argument if the variable names an unknown ISA or one this CPU
// lacks: a forced ISA is never silently replaced.
Isa selected_isa();
bool isa_supported(Isa isa);
// The CPU has AVX512_BF16 (vdpbf16ps), which Algorithm::kDirectBf16Dot and
// kWinograd4x4Bf16Dot need (with the avx512 kernels).
bool bf16_dot_supported();
// The CPU has AMX-TILE and AMX-BF16 and the kernel lets this process use them (Linux asks a
// process to request the tile state once; the first call does), which
// Algorithm::kWinograd4x4Amx needs (with the avx512 kernels).
bool amx_supported();
// vdpbf16ps multiply-adds per second over fp32 FMAs on one thread, measured once (about 5 ms);
// 0 on CPUs without AVX512_BF16.
double measured_bf16_dot_speedup();
const char* isa_name(Isa isa);
Isa parse_isa(const char* name);  // throws std::invalid_argument for unknown names

// fp32 FMA throughput of `isa`'s widest vectors on `nthreads` threads, in GFLOP/s (2 FLOP per
// lane per FMA): a loop of independent FMAs, best of a few repeats, about 0.3 s in all.
double measure_fma_peak_gflops(int nthreads, Isa isa);

}  // namespace redkern::cpu
