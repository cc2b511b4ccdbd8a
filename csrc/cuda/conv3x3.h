// redkern CUDA C++ kernels: fused 3x3 convolution (stride 1, padding 1) on NHWC activations.
//
// Host-side interface, free of torch and of the CUDA headers, shared by the real module
// (redkern._cuda, built by nvcc) and the host emulation (redkern._cuda_emu, built by g++ from
// the same kernel source). Callers (redkern/backends/cuda.py) own the buffers; the bindings
// validate every size here before a kernel is launched.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

struct CUstream_st;  // cudaStream_t is CUstream_st*

namespace redkern::cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Same codes as redkern.backends.common.Epilogue.
enum class Epilogue : int {
  kRelu = 0,         // y = relu(conv(x) + b)
  kReluAddRelu = 1,  // y = relu(relu(conv(x) + b) + extra)   (decoder layer with a skip)
  kAddResidual = 2,  // y = conv(x) + b + extra                 (last layer + global residual)
};

// The tiling every kernel shares: a block of kThreads threads computes kTileH x kTileW output
// pixels of one image for `bn` output channels, stepping through the input channels `ck` at a
// time. The weight is packed as [9][cin_pad][cout_pad] (tap = ky*3+kx, cout contiguous), zero
// beyond cin and cout, so the kernels read whole chunks without bounds checks.
constexpr int kTileH = 8;
constexpr int kTileW = 16;
constexpr int kThreads = 128;

struct Plan {
  int bn;        // output channels per block
  int ck;        // input channels per shared-memory chunk
  int cin_pad;   // cin rounded up to ck
  int cout_pad;  // cout rounded up to bn
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

// fp32 runs on CUDA cores (any bn >= 8, ck 4 or 16); fp16/bf16 on tensor cores, whose
// 16x16x16 tiles need bn and ck to be multiples of 16.
inline Plan plan_conv3x3(DType t, int cin, int cout) {
  Plan p{};
  if (t == DType::kFloat32) {
    p.bn = cout <= 8 ? 8 : cout <= 16 ? 16 : cout <= 32 ? 32 : 64;
    p.ck = cin <= 4 ? 4 : 16;
  } else {
    p.bn = cout <= 16 ? 16 : cout <= 32 ? 32 : 64;
    p.ck = cin <= 16 ? 16 : 32;
  }
  p.cin_pad = round_up(cin, p.ck);
  p.cout_pad = round_up(cout, p.bn);
  return p;
}

// One fused convolution: y = epilogue(conv3x3(x, w) + bias, extra), all of dtype `dtype`.
// x: [n][h][w][cin], extra and y: [n][h][w][cout] (NHWC, dense), w: packed (see Plan),
// bias: [cout]. extra is ignored (may be null) for kRelu.
struct ConvArgs {
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;
  const void* extra = nullptr;
  void* y = nullptr;
  int n = 0, h = 0, width = 0, cin = 0, cout = 0;
  DType dtype = DType::kFloat32;
  Epilogue epilogue = Epilogue::kRelu;
};

// The element counts the caller's buffers have, checked against what the kernel will touch.
struct BufferSizes {
  std::int64_t x, w, bias, extra, y;
};

// Throws std::invalid_argument naming what is wrong; nothing is launched before this passes.
inline void validate(const ConvArgs& a, const BufferSizes& s) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("conv3x3 (cuda): " + m); };
  if (a.n < 1 || a.h < 1 || a.width < 1 || a.cin < 1 || a.cout < 1)
    fail("n, h, w, cin and cout must all be >= 1, got n=" + std::to_string(a.n) +
         " h=" + std::to_string(a.h) + " w=" + std::to_string(a.width) +
         " cin=" + std::to_string(a.cin) + " cout=" + std::to_string(a.cout));
  if (int(a.dtype) < 0 || int(a.dtype) > 2) fail("unknown dtype code " + std::to_string(int(a.dtype)));
  if (int(a.epilogue) < 0 || int(a.epilogue) > 2)
    fail("unknown epilogue code " + std::to_string(int(a.epilogue)));
  const Plan p = plan_conv3x3(a.dtype, a.cin, a.cout);
  const std::int64_t pixels = std::int64_t(a.n) * a.h * a.width;
  auto numel = [&](std::int64_t got, std::int64_t want, const char* what) {
    if (got != want)
      fail(std::string(what) + " has " + std::to_string(got) + " elements, the kernel needs " +
           std::to_string(want));
  };
  numel(s.x, pixels * a.cin, "input");
  numel(s.y, pixels * a.cout, "output");
  numel(s.bias, a.cout, "bias");
  numel(s.w, std::int64_t(9) * p.cin_pad * p.cout_pad, "packed weight");
  const bool needs_extra = a.epilogue != Epilogue::kRelu;
  if (needs_extra) numel(s.extra, pixels * a.cout, "skip/residual");
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
  if (a.x == a.y || (needs_extra && a.extra == a.y))
    fail("the output must not alias the input or the skip/residual");
  // Grid limits: x counts spatial tiles, y output-channel blocks, z images.
  const std::int64_t tiles = std::int64_t((a.h + kTileH - 1) / kTileH) *
                             ((a.width + kTileW - 1) / kTileW);
  if (tiles > 2147483647LL) fail("image too large: " + std::to_string(tiles) + " tiles");
  if (a.n > 65535) fail("batch too large for one launch: n=" + std::to_string(a.n) + " > 65535");
  if (p.cout_pad / p.bn > 65535) fail("too many output channels: " + std::to_string(a.cout));
}

// --- the real module only (conv3x3.cu, built by nvcc) ------------------------------------
// Each throws std::runtime_error naming the CUDA call (and kernel) that failed.

// Launch on `stream` of `device` (made current first).
void conv3x3(const ConvArgs& a, int device, CUstream_st* stream);

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
