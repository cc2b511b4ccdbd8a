// The fused epilogue, shared by the CPU and CUDA C++ kernels (torch-free, host and device).
//
// The codes come from redkern/epilogue.def, the one definition Python reads too:
//   v = alpha * conv + bias
//   Residual::kNone:       y = act(v)
//   Residual::kBeforeAct:  y = act(v + beta * extra)
//   Residual::kAfterAct:   y = act2(act(v) + beta * extra)
// LEAKY_RELU and PRELU read a per-output-channel slope array of `cout` floats.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define REDKERN_HD __host__ __device__ __forceinline__
#else
#define REDKERN_HD inline
#endif

namespace redkern {

enum class Act : int {
#define REDKERN_ACT(name, code) k##name = code,
#define REDKERN_RESIDUAL(name, code)
#include "redkern/epilogue.def"
#undef REDKERN_ACT
#undef REDKERN_RESIDUAL
};

enum class Residual : int {
#define REDKERN_ACT(name, code)
#define REDKERN_RESIDUAL(name, code) k##name = code,
#include "redkern/epilogue.def"
#undef REDKERN_ACT
#undef REDKERN_RESIDUAL
};

// Every code the .def file defines, for range checks at the bindings.
constexpr bool act_is_valid(int code) {
#define REDKERN_ACT(name, c) if (code == c) return true;
#define REDKERN_RESIDUAL(name, c)
#include "redkern/epilogue.def"
#undef REDKERN_ACT
#undef REDKERN_RESIDUAL
  return false;
}
constexpr bool residual_is_valid(int code) {
#define REDKERN_ACT(name, c)
#define REDKERN_RESIDUAL(name, c) if (code == c) return true;
#include "redkern/epilogue.def"
#undef REDKERN_ACT
#undef REDKERN_RESIDUAL
  return false;
}

// One layer's epilogue. Pointers are device pointers on CUDA, host pointers on the CPU.
struct EpilogueParams {
  Act act = Act::kIDENTITY;
  Residual residual = Residual::kNONE;
  Act act2 = Act::kIDENTITY;
  float alpha = 1.0f;
  float beta = 1.0f;
  const float* slope = nullptr;   // [cout] for act LEAKY_RELU / PRELU, else null
  const float* slope2 = nullptr;  // [cout] for act2 LEAKY_RELU / PRELU, else null
};

// Scalar forms, the definition the vector code of each kernel must agree with. NaN stays
// NaN through every activation, as in PyTorch.
REDKERN_HD float apply_act(float v, Act act, const float* slope, int channel) {
  switch (act) {
    case Act::kRELU: return v > 0.0f || v != v ? v : 0.0f;
    case Act::kLEAKY_RELU:
    case Act::kPRELU: return v > 0.0f || v != v ? v : slope[channel] * v;
    case Act::kTANH: return tanhf(v);
    default: return v;
  }
}

// `acc` is the raw convolution sum of output channel `channel`; `extra` is ignored for
// Residual::kNone.
REDKERN_HD float apply_epilogue(float acc, float bias, float extra, const EpilogueParams& p,
                                int channel) {
  float v = p.alpha * acc + bias;
  if (p.residual == Residual::kBEFORE_ACT) v += p.beta * extra;
  v = apply_act(v, p.act, p.slope, channel);
  if (p.residual == Residual::kAFTER_ACT) v = apply_act(v + p.beta * extra, p.act2, p.slope2, channel);
  return v;
}

}  // namespace redkern
