// The real module's launches (nvcc only): every CUDA call's status is checked, and a failure
// names the call and the kernel.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include "cuda/conv_common.cuh"

namespace redkern::cuda {

inline void check(cudaError_t err, const std::string& call) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw std::runtime_error(call + ": " + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")");
}

// The default dynamic shared memory limit; above it a kernel must opt in.
constexpr std::size_t kDefaultSmemLimit = 48 * 1024;

// The `launch` callback of the dispatchers: cudaLaunchKernel on `stream`.
struct Launcher {
  CUstream_st* stream;

  template <class Kernel>
  void operator()(const char* name, Kernel kernel, dim3 grid, dim3 block, std::size_t smem,
                  const ConvParams& p) const {
    const void* fn = reinterpret_cast<const void*>(kernel);
    if (smem > kDefaultSmemLimit)
      check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
            std::string("cudaFuncSetAttribute(") + name + ", MaxDynamicSharedMemorySize=" +
                std::to_string(smem) + ")");
    void* args[] = {const_cast<ConvParams*>(&p)};
    check(cudaLaunchKernel(fn, grid, block, args, smem, stream),
          std::string("cudaLaunchKernel(") + name + ")");
  }
};

}  // namespace redkern::cuda
