// redkern CPU kernels: fused 3x3 convolution (stride 1, padding 1) on NHWC activations.
//
// Torch-free on purpose: raw pointers and sizes, so the same code builds against any torch
// and is bound with pybind11 alone. Callers (redkern/backends/cpu.py) own the buffers and
// guarantee NHWC-contiguous layout; every entry point re-checks sizes before touching memory.
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

// Number of floats in the kernel's packed weight for (cin, cout).
std::size_t packed_weight_size(int cin, int cout);

// Re-lay a weight out for the kernel (done once per model, not per call).
// transposed == false: Conv2d weight [cout][cin][3][3].
// transposed == true:  ConvTranspose2d weight [cin][cout][3][3]; packed as the equivalent
//                      convolution (channels swapped, window flipped).
void pack_weight(const float* w, int cin, int cout, bool transposed, float* packed);

// y[n,h,w,cout] = epilogue(conv3x3(x[n,h,w,cin], packed) + bias[cout], extra[n,h,w,cout]).
// extra may be null for kRelu. x, extra and y are NHWC-contiguous; y must not alias x.
void conv3x3_f32(const float* x, const float* packed, const float* bias, const float* extra,
                 float* y, int n, int h, int w, int cin, int cout, Epilogue epi, int nthreads);

// Which instruction set the dispatcher picked on this CPU ("avx512", "avx2" or "generic").
const char* selected_isa();

}  // namespace redkern::cpu
