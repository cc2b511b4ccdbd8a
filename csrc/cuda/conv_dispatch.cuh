// Every kernel of this backend behind one call: dispatch_conv2d picks the 3x3 or the 1x1
// family by the layer's kernel size, then the instance by its plan. The host emulation
// calls this; the real module keeps each family in its own translation unit (conv3x3.cu,
// conv1x1.cu) and does the same choice in runtime.cu.
#pragma once

#include <stdexcept>
#include <string>

#include "cuda/conv1x1_kernels.cuh"
#include "cuda/conv3x3_kernels.cuh"

namespace redkern::cuda {
inline namespace REDKERN_KERNEL_VARIANT {

template <class Launch>
void dispatch_conv2d(const ConvArgs& a, Launch&& launch) {
  if (a.kernel == 3) return dispatch_conv3x3(a, launch);
  if (a.kernel == 1) return dispatch_conv1x1(a, launch);
  throw std::invalid_argument("conv2d (cuda): no kernels for " + std::to_string(a.kernel) + "x" +
                              std::to_string(a.kernel));
}

}  // namespace REDKERN_KERNEL_VARIANT
}  // namespace redkern::cuda
