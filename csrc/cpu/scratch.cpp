// Per-thread scratch buffers and cache sizes for the kernels (see kernel_util.h). Compiled
// without ISA flags.
#include <cstdlib>
#if defined(__unix__)
#include <unistd.h>
#endif

#include "cpu/kernel_util.h"

namespace redkern::cpu {

namespace {

struct ScratchBuffer {
  float* data = nullptr;
  std::size_t floats = 0;
  ~ScratchBuffer() { std::free(data); }
};

}  // namespace

float* thread_scratch(std::size_t floats, int slot) {
  thread_local ScratchBuffer buffers[2];
  ScratchBuffer& b = buffers[slot];
  if (b.floats < floats) {
    std::free(b.data);
    b.data = nullptr;
    b.floats = 0;
    // aligned_alloc wants a size that is a multiple of the alignment.
    const std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    b.data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (b.data != nullptr) b.floats = floats;
  }
  return b.data;
}

std::size_t l2_cache_bytes() {
  static const std::size_t bytes = [] {
    long b = 0;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    b = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return b > 0 ? std::size_t(b) : std::size_t(512) * 1024;
  }();
  return bytes;
}

}  // namespace redkern::cpu
