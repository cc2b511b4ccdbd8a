// The real module's entry point and device queries; the kernels live in conv3x3.cu and
// conv1x1.cu (one translation unit per family, so they compile in parallel).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "cuda/conv.h"
#include "cuda/launch.cuh"

namespace redkern::cuda {

void conv2d(const ConvArgs& a, int device, CUstream_st* stream) {
  check(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  if (a.kernel == 3) return conv3x3(a, stream);
  if (a.kernel == 1) return conv1x1(a, stream);
  throw std::invalid_argument("conv2d (cuda): no kernels for " + std::to_string(a.kernel) + "x" +
                              std::to_string(a.kernel));
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
