// The kernels exactly as nvcc builds them, compiled by g++ against the emulation layer.
#include "cuda_emu/conv_emu.h"

#include "cuda/conv_dispatch.cuh"

namespace redkern::cuda_emu {

void conv2d(const cuda::ConvArgs& a, emu::Schedule schedule) {
  cuda::dispatch_conv2d(a, [&](const char* name, auto kernel, dim3 grid, dim3 block,
                               std::size_t smem, const cuda::ConvParams& p) {
    emu::launch(name, kernel, grid, block, smem, schedule, p);
  });
}

KernelChoice kernel_for(cuda::DType dtype, int kernel, int cin, int cout) {
  cuda::ConvArgs a;  // dispatch only reads sizes (and x's alignment) to choose
  a.dtype = dtype;
  a.kernel = kernel;
  a.padding = kernel / 2;
  a.cin = cin;
  a.cout = cout;
  a.n = a.h = a.width = 1;
  KernelChoice choice{"", 0};
  cuda::dispatch_conv2d(a, [&](const char* name, auto, dim3, dim3, std::size_t smem,
                               const cuda::ConvParams&) { choice = {name, smem}; });
  return choice;
}

}  // namespace redkern::cuda_emu
