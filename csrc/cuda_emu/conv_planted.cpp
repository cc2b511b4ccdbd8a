// The kernels compiled a second time with their planted-bug hooks live (REDKERN_PLANTED),
// in their own namespace, so the tests can prove that each planted bug changes the result.
#define REDKERN_PLANTED_BUGS 1
#define REDKERN_KERNEL_VARIANT planted

#include <mutex>

#include "cuda_emu/conv_emu.h"

#include "cuda/conv_dispatch.cuh"

namespace redkern::cuda {

namespace {
PlantedBug active_bug = PlantedBug::kNone;
std::mutex planted_mutex;
}  // namespace

PlantedBug planted_bug() { return active_bug; }

}  // namespace redkern::cuda

namespace redkern::cuda_emu {

void conv2d_planted(const cuda::ConvArgs& a, cuda::PlantedBug bug, emu::Schedule schedule) {
  std::lock_guard<std::mutex> lock(cuda::planted_mutex);
  cuda::active_bug = bug;
  try {
    cuda::dispatch_conv2d(a, [&](const char* name, auto kernel, dim3 grid, dim3 block,
                                 std::size_t smem, const cuda::ConvParams& p) {
      emu::launch(name, kernel, grid, block, smem, schedule, p);
    });
  } catch (...) {
    cuda::active_bug = cuda::PlantedBug::kNone;
    throw;
  }
  cuda::active_bug = cuda::PlantedBug::kNone;
}

}  // namespace redkern::cuda_emu
