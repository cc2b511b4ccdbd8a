// redkern CUDA C++ kernels: fused stride-1 convolutions on NHWC activations, 3x3 with
// padding 1 and 1x1 with padding 0 (both keep the image size), each followed by the one
// general epilogue of common/epilogue.h.
//
// Host-side interface, free of torch and of the CUDA headers, shared by the real module
// (redkern._cuda, built by nvcc) and the host emulation (redkern._cuda_emu, built by g++ from
// the same kernel source). Callers (redkern/backends/cuda.py) own the buffers; the bindings
// validate every size here before a kernel is launched.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/epilogue.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace redkern::cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Every kernel runs blocks of kThreads threads that compute 128 output pixels for `bn`
// output channels, stepping through the input channels `ck` at a time:
// - 3x3: a kTileH x kTileW tile of one image (its input window has a one-pixel halo);
// - 1x1: kPixels1x1 consecutive pixels of the batch in NHWC order (no halo, so the image
//   rows and images of the batch need not be told apart).
// The weight is packed as [taps][cin_pad][cout_pad] (taps = kernel*kernel, tap = ky*k+kx,
// cout contiguous), zero beyond cin and cout, so the kernels read whole chunks without
// bounds checks.
constexpr int kTileH = 8;
constexpr int kTileW = 16;
constexpr int kThreads = 128;
constexpr int kPixels1x1 = 128;

// The kernel sizes this backend runs, each with its one padding (the equivalent
// convolution's, for a transposed layer).
inline bool kernel_supported(int kernel, int padding) {
  return (kernel == 3 && padding == 1) || (kernel == 1 && padding == 0);
}

struct Plan {
  int kernel;    // 3 or 1
  int bn;        // output channels per block
  int ck;        // input channels per shared-memory chunk
  int cin_pad;   // cin rounded up to ck
  int cout_pad;  // cout rounded up to bn
  int taps() const { return kernel * kernel; }
};

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "f32";
    case DType::kFloat16: return "f16";
    case DType::kBFloat16: return "bf16";
  }
  return "unknown";
}

inline int dtype_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// fp32 runs on CUDA cores (any bn >= 8, ck a multiple of 4); fp16/bf16 on tensor cores,
// whose 16x16x16 tiles need bn and ck to be multiples of 16. A 1x1 chunk has 9x fewer
// multiply-adds per staged element than a 3x3 one, so 1x1 stages more input channels at a
// time (fewer barriers per output).
inline Plan plan_conv(DType t, int kernel, int cin, int cout) {
  Plan p{};
  p.kernel = kernel;
  if (t == DType::kFloat32) {
    p.bn = cout <= 8 ? 8 : cout <= 16 ? 16 : cout <= 32 ? 32 : 64;
    if (kernel == 3)
      p.ck = cin <= 4 ? 4 : 16;
    else
      p.ck = cin <= 4 ? 4 : cin <= 16 ? 16 : 32;
  } else {
    p.bn = cout <= 16 ? 16 : cout <= 32 ? 32 : 64;
    if (kernel == 3)
      p.ck = cin <= 16 ? 16 : 32;
    else
      p.ck = cin <= 16 ? 16 : cin <= 32 ? 32 : 64;
  }
  p.cin_pad = round_up(cin, p.ck);
  p.cout_pad = round_up(cout, p.bn);
  return p;
}

// One fused convolution, all tensors of dtype `dtype` except the fp32 slopes:
//   y = epilogue(conv_k(x, w), bias, extra)            (common/epilogue.h)
// x: [n][h][w][cin], extra and y: [n][h][w][cout] (NHWC, dense), w: packed (see Plan),
// bias: [cout]. extra is read only when epilogue.residual is not kNONE; epilogue.slope
// (slope2) only when act (act2) is LEAKY_RELU or PRELU: device arrays of cout floats.
struct ConvArgs {
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;
  const void* extra = nullptr;
  void* y = nullptr;
  int n = 0, h = 0, width = 0, cin = 0, cout = 0;
  int kernel = 3, padding = 1;
  DType dtype = DType::kFloat32;
  EpilogueParams epilogue;
};

// The element counts the caller's buffers have, checked against what the kernel will touch.
struct BufferSizes {
  std::int64_t x, w, bias, extra, slope, slope2, y;
};

inline bool act_has_slope(Act a) { return a == Act::kLEAKY_RELU || a == Act::kPRELU; }

// Throws std::invalid_argument naming what is wrong; nothing is launched before this passes.
inline void validate(const ConvArgs& a, const BufferSizes& s) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("conv2d (cuda): " + m); };
  if (!kernel_supported(a.kernel, a.padding))
    fail("runs 3x3 convolutions with padding 1 and 1x1 with padding 0, got " +
         std::to_string(a.kernel) + "x" + std::to_string(a.kernel) + " with padding " +
         std::to_string(a.padding));
  if (a.n < 1 || a.h < 1 || a.width < 1 || a.cin < 1 || a.cout < 1)
    fail("n, h, w, cin and cout must all be >= 1, got n=" + std::to_string(a.n) +
         " h=" + std::to_string(a.h) + " w=" + std::to_string(a.width) +
         " cin=" + std::to_string(a.cin) + " cout=" + std::to_string(a.cout));
  if (int(a.dtype) < 0 || int(a.dtype) > 2) fail("unknown dtype code " + std::to_string(int(a.dtype)));
  const EpilogueParams& e = a.epilogue;
  if (!act_is_valid(int(e.act))) fail("unknown activation code " + std::to_string(int(e.act)));
  if (!act_is_valid(int(e.act2))) fail("unknown activation code " + std::to_string(int(e.act2)));
  if (!residual_is_valid(int(e.residual)))
    fail("unknown residual code " + std::to_string(int(e.residual)));
  if (e.act2 != Act::kIDENTITY && e.residual != Residual::kAFTER_ACT)
    fail("act2 applies after the residual join: it needs residual AFTER_ACT");
  if (!std::isfinite(e.alpha) || !std::isfinite(e.beta)) fail("alpha and beta must be finite");

  const Plan p = plan_conv(a.dtype, a.kernel, a.cin, a.cout);
  const std::int64_t pixels = std::int64_t(a.n) * a.h * a.width;
  auto numel = [&](std::int64_t got, std::int64_t want, const char* what) {
    if (got != want)
      fail(std::string(what) + " has " + std::to_string(got) + " elements, the kernel needs " +
           std::to_string(want));
  };
  const bool needs_extra = e.residual != Residual::kNONE;
  const bool needs_slope = act_has_slope(e.act);
  const bool needs_slope2 = e.residual == Residual::kAFTER_ACT && act_has_slope(e.act2);
  numel(s.x, pixels * a.cin, "input");
  numel(s.y, pixels * a.cout, "output");
  numel(s.bias, a.cout, "bias");
  numel(s.w, std::int64_t(p.taps()) * p.cin_pad * p.cout_pad, "packed weight");
  if (needs_extra) numel(s.extra, pixels * a.cout, "skip/residual");
  if (needs_slope) numel(s.slope, a.cout, "slope");
  if (needs_slope2) numel(s.slope2, a.cout, "slope2");

  const std::uintptr_t esize = std::uintptr_t(dtype_size(a.dtype));
  auto ptr = [&](const void* q, const char* what, std::uintptr_t align) {
    if (q == nullptr) fail(std::string("null pointer for ") + what);
    if (reinterpret_cast<std::uintptr_t>(q) % align != 0)
      fail(std::string(what) + " is not " + std::to_string(align) + "-byte aligned");
  };
  ptr(a.x, "input", esize);
  ptr(a.w, "packed weight", 16);  // read as 16-byte vectors
  ptr(a.bias, "bias", esize);
  ptr(a.y, "output", esize);
  if (needs_extra) ptr(a.extra, "skip/residual", esize);
  if (needs_slope) ptr(e.slope, "slope", 4);
  if (needs_slope2) ptr(e.slope2, "slope2", 4);

  // The output is written while the other buffers are still being read by other blocks:
  // it must not overlap any of them.
  const std::uintptr_t y0 = reinterpret_cast<std::uintptr_t>(a.y);
  const std::uintptr_t y1 = y0 + std::uintptr_t(s.y) * esize;
  auto disjoint = [&](const void* q, std::int64_t count, std::uintptr_t size, const char* what) {
    const std::uintptr_t q0 = reinterpret_cast<std::uintptr_t>(q);
    const std::uintptr_t q1 = q0 + std::uintptr_t(count) * size;
    if (q0 < y1 && y0 < q1) fail(std::string("the output must not overlap the ") + what);
  };
  disjoint(a.x, s.x, esize, "input");
  disjoint(a.w, s.w, esize, "packed weight");
  disjoint(a.bias, s.bias, esize, "bias");
  if (needs_extra) disjoint(a.extra, s.extra, esize, "skip/residual");
  if (needs_slope) disjoint(e.slope, s.slope, 4, "slope");
  if (needs_slope2) disjoint(e.slope2, s.slope2, 4, "slope2");

  // Grid limits: x counts pixel blocks, y output-channel blocks, z images (3x3 only).
  const std::int64_t blocks =
      a.kernel == 3 ? std::int64_t((a.h + kTileH - 1) / kTileH) * ((a.width + kTileW - 1) / kTileW)
                    : (pixels + kPixels1x1 - 1) / kPixels1x1;
  if (blocks > 2147483647LL) fail("image too large: " + std::to_string(blocks) + " pixel blocks");
  if (a.kernel == 3 && a.n > 65535)
    fail("batch too large for one launch: n=" + std::to_string(a.n) + " > 65535");
  if (p.cout_pad / p.bn > 65535) fail("too many output channels: " + std::to_string(a.cout));
}

// --- the real module only (built by nvcc) -------------------------------------------------
// Each throws std::runtime_error naming the CUDA call (and kernel) that failed.

// Launch on `stream` of `device` (made current first): conv2d picks by a.kernel.
void conv2d(const ConvArgs& a, int device, CUstream_st* stream);
void conv3x3(const ConvArgs& a, CUstream_st* stream);  // conv3x3.cu
void conv1x1(const ConvArgs& a, CUstream_st* stream);  // conv1x1.cu

// How many CUDA devices the runtime sees; when none, `error` says why (no driver, no device).
struct DeviceCount {
  int count;
  std::string error;
};
DeviceCount device_count();

struct DeviceProperties {
  std::string name;
  int major, minor;  // compute capability
};
DeviceProperties device_properties(int device);

}  // namespace redkern::cuda
