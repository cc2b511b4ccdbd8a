// The kernels of csrc/cuda (3x3 and 1x1), compiled for the host emulation.
#pragma once

#include <cstddef>
#include <string>

#include "cuda/conv.h"
#include "cuda/device_compat.cuh"
#include "cuda_emu/cuda_emu.h"

namespace redkern::cuda_emu {

// Runs the kernel dispatch_conv2d picks, on the emulated device (host pointers).
void conv2d(const cuda::ConvArgs& a, emu::Schedule schedule);

// The kernel dispatch_conv2d picks for these sizes and its dynamic shared memory in bytes.
struct KernelChoice {
  std::string name;
  std::size_t smem_bytes;
};
KernelChoice kernel_for(cuda::DType dtype, int kernel, int cin, int cout);

// The same, built with REDKERN_PLANTED_BUGS so that `bug` is switched on (tests only).
void conv2d_planted(const cuda::ConvArgs& a, cuda::PlantedBug bug, emu::Schedule schedule);

}  // namespace redkern::cuda_emu
