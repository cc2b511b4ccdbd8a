// The real CUDA launches of the kernels in conv3x3_kernels.cuh, and device queries.
// Every CUDA call's status is checked; a failure names the call and the kernel.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/conv3x3.h"
#include "cuda/conv3x3_kernels.cuh"

namespace redkern::cuda {

namespace {

void check(cudaError_t err, const std::string& call) {
  if (err == cudaSuccess) return;
  (void)cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  throw std::runtime_error(call + ": " + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")");
}

// The default dynamic shared memory limit; above it a kernel must opt in.
constexpr std::size_t kDefaultSmemLimit = 48 * 1024;

}  // namespace

void conv3x3(const ConvArgs& a, int device, CUstream_st* stream) {
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  dispatch_conv3x3(a, [&](const char* name, auto kernel, dim3 grid, dim3 block, std::size_t smem,
                          const ConvParams& p) {
    const void* fn = reinterpret_cast<const void*>(kernel);
    if (smem > kDefaultSmemLimit)
      check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)),
            std::string("cudaFuncSetAttribute(") + name + ", MaxDynamicSharedMemorySize=" +
                std::to_string(smem) + ")");
    void* args[] = {const_cast<ConvParams*>(&p)};
    check(cudaLaunchKernel(fn, grid, block, args, smem, stream),
          std::string("cudaLaunchKernel(") + name + ")");
  });
}

DeviceCount device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return {0, std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err) + " (" +
                   cudaGetErrorName(err) + ")"};
  }
  if (n == 0) return {0, "cudaGetDeviceCount: 0 devices"};
  return {n, ""};
}

DeviceProperties device_properties(int device) {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device),
        "cudaGetDeviceProperties(" + std::to_string(device) + ")");
  return {prop.name, prop.major, prop.minor};
}

}  // namespace redkern::cuda
