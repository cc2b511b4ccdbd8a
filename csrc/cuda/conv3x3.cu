// The real CUDA launches of the 3x3 kernels (conv3x3_kernels.cuh).
#include "cuda/conv3x3_kernels.cuh"
#include "cuda/launch.cuh"

namespace redkern::cuda {

void conv3x3(const ConvArgs& a, CUstream_st* stream) { dispatch_conv3x3(a, Launcher{stream}); }

}  // namespace redkern::cuda
