// The real CUDA launches of the 1x1 kernels (conv1x1_kernels.cuh).
#include "cuda/conv1x1_kernels.cuh"
#include "cuda/launch.cuh"

namespace redkern::cuda {

void conv1x1(const ConvArgs& a, CUstream_st* stream) { dispatch_conv1x1(a, Launcher{stream}); }

}  // namespace redkern::cuda
