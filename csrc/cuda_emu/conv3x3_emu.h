// The kernels of csrc/cuda/conv3x3_kernels.cuh, compiled for the host emulation.
#pragma once

#include <cstddef>
#include <string>

#include "cuda/conv3x3.h"
#include "cuda/device_compat.cuh"
#include "cuda_emu/cuda_emu.h"

namespace redkern::cuda_emu {

// Runs the kernel dispatch_conv3x3 picks, on the emulated device (host pointers).
void conv3x3(const cuda::ConvArgs& a, emu::Schedule schedule);

// The kernel dispatch_conv3x3 picks for these sizes and its dynamic shared memory in bytes.
struct KernelChoice {
  std::string name;
  std::size_t smem_bytes;
};
KernelChoice kernel_for(cuda::DType dtype, int cin, int cout);

// The same, built with REDKERN_PLANTED_BUGS so that `bug` is switched on (tests only).
void conv3x3_planted(const cuda::ConvArgs& a, cuda::PlantedBug bug, emu::Schedule schedule);

}  // namespace redkern::cuda_emu
