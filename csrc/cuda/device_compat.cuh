// The few things the kernels need that differ between nvcc and the host emulation
// (csrc/cuda_emu): the headers, dynamic shared memory, and the planted-bug hook.
#pragma once

#if defined(REDKERN_CUDA_EMULATION)
#include "cuda_emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#endif

namespace redkern::cuda {

// The block's dynamic shared memory (the launch's third <<<>>> argument).
#if defined(REDKERN_CUDA_EMULATION)
__device__ __forceinline__ unsigned char* dynamic_shared_memory() { return emu::dynamic_shared_memory(); }
#else
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
}
#endif

// Bugs the emulation tests plant on purpose, to prove they catch them. Only the emulation's
// planted build (csrc/cuda_emu/conv3x3_planted.cpp) defines REDKERN_PLANTED_BUGS; everywhere
// else REDKERN_PLANTED(bug) is the constant false and the hooks compile away.
enum class PlantedBug : int {
  kNone = 0,
  kSkipLoadBarrier = 1,    // read the shared tiles before every thread stored its part
  kSkipReuseBarrier = 2,   // overwrite the shared tiles while other warps still read them
  kHaloShift = 3,          // load the input one pixel to the right (1x1: the next pixel)
  kNoChannelZeroFill = 4,  // leave the padding channels of the input tile unwritten
  kSharedSlope = 5,        // read every channel's LEAKY_RELU/PRELU slope from channel 0
};

#if defined(REDKERN_PLANTED_BUGS)
PlantedBug planted_bug();  // set per launch by the emulation
#define REDKERN_PLANTED(bug) (::redkern::cuda::planted_bug() == ::redkern::cuda::PlantedBug::bug)
#else
#define REDKERN_PLANTED(bug) false
#endif

// Element conversions, so one kernel template serves float, half and bfloat16.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

}  // namespace redkern::cuda
