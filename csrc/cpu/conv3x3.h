// redkern CPU kernels: fused 3x3 convolution (stride 1, padding 1) on NHWC activations.
//
// Torch-free on purpose: raw pointers and sizes, so the same code builds against any torch
// and is bound with pybind11 alone. Callers (redkern/backends/cpu.py) own the buffers and
// guarantee NHWC-contiguous layout; the bindings re-check sizes before touching memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace redkern::cpu {

// What the kernel does after the convolution, in the same pass over the output tile.
enum class Epilogue : int {
  kRelu = 0,         // y = relu(conv(x) + b)
  kReluAddRelu = 1,  // y = relu(relu(conv(x) + b) + extra)   (decoder layer with a skip)
  kAddResidual = 2,  // y = conv(x) + b + extra                 (last layer + global residual)
};

// Storage type of activations (x, extra, y). Weights and bias are always fp32 (except the
// bf16-pair layout below); accumulation is always fp32.
enum class DType : int {
  kFloat32 = 0,
  kBFloat16 = 1,  // raw bf16 bits (uint16); rounded to nearest-even on store
};

// How the convolution is computed; each algorithm has its own packed-weight layout.
enum class Algorithm : int {
  kDirect = 0,  // register-blocked direct conv; weights [cout_pad/16][tap 9][cin][16] fp32
  kWinograd4x4 = 1,  // Winograd F(4x4,3x3); weights G g G^T as [36][cin][cout_pad] fp32
  kDirectBf16Dot = 2,  // direct conv with vdpbf16ps (avx512 kernels on CPUs with
                       // AVX512_BF16; bf16 activations only); weights as bf16 pairs
                       // [9][cin_pairs][cout_pad][2]
  kDirectFewCout = 3,  // direct conv vectorised over input channels, for cout <= 3;
                       // weights [cout][9][cin_pad] fp32 (cin padded to 16)
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

// Number of 32-bit words in the packed weight for (cin, cout, algorithm).
std::size_t packed_weight_size(int cin, int cout, Algorithm algorithm);

// Re-lay a weight out for the kernel (done once per model, not per call).
// transposed == false: Conv2d weight [cout][cin][3][3].
// transposed == true:  ConvTranspose2d weight [cin][cout][3][3]; packed as the equivalent
//                      convolution (channels swapped, window flipped).
void pack_weight(const float* w, int cin, int cout, bool transposed, Algorithm algorithm,
                 float* packed);

// One fused convolution call. All activation tensors are NHWC-contiguous in `dtype`.
struct Conv3x3Args {
  const void* x;        // [n, h, w, cin]
  const float* packed;  // pack_weight() output for the algorithm being run
  const float* bias;    // [cout], fp32
  const void* extra;    // [n, h, w, cout] skip or residual; null for kRelu
  void* y;              // [n, h, w, cout]; must not alias x
  int n, h, w, cin, cout;
  Epilogue epilogue;
  int nthreads;
};

// y = epilogue(conv3x3(x, packed) + bias, extra) with the kernels of `isa`.
// Throws std::invalid_argument if this CPU lacks `isa` or `algorithm` does not run there.
void conv3x3(const Conv3x3Args& args, DType dtype, Algorithm algorithm, Isa isa);

// The best ISA this CPU supports, lowered by REDKERN_CPU_ISA=generic|avx2|avx512 (read
// once). Throws std::invalid_argument if the variable names an unknown ISA or one this CPU
// lacks: a forced ISA is never silently replaced.
Isa selected_isa();
bool isa_supported(Isa isa);
// The CPU has AVX512_BF16 (vdpbf16ps), which Algorithm::kDirectBf16Dot needs (with the
// avx512 kernels).
bool bf16_dot_supported();
const char* isa_name(Isa isa);
Isa parse_isa(const char* name);  // throws std::invalid_argument for unknown names

// fp32 FMA throughput of `isa`'s widest vectors on `nthreads` threads, in GFLOP/s (2 FLOP per
// lane per FMA): a loop of independent FMAs, best of a few repeats, about 0.3 s in all.
double measure_fma_peak_gflops(int nthreads, Isa isa);

}  // namespace redkern::cpu
