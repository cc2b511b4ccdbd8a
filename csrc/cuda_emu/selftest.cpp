// Kernels that check the emulator itself: its barrier is real, its shared memory is per block
// and poisoned, its wmma is a correct 16x16x16 product, and what the hardware would fault on
// (or hang on) fails the launch. Run by tests/test_cuda_emulation.py.
#include "cuda_emu/selftest.h"

#include <stdexcept>
#include <string>

#include "cuda/device_compat.cuh"

namespace redkern::cuda_emu {

namespace {

using redkern::cuda::dynamic_shared_memory;

// Thread t stores t+1 in shared memory and reads its neighbour's value after the barrier.
__global__ void exchange(int* out, int use_barrier) {
  int* s = reinterpret_cast<int*>(dynamic_shared_memory());
  const unsigned t = threadIdx.x, n = blockDim.x;
  s[t] = int(blockIdx.x * 1000 + t + 1);
  if (use_barrier) __syncthreads();
  out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// Reads shared memory that no thread wrote: the poison must show.
__global__ void read_unwritten(float* out) {
  out[threadIdx.x] = reinterpret_cast<float*>(dynamic_shared_memory())[threadIdx.x];
}

__global__ void divergent_barrier() {
  if (threadIdx.x < blockDim.x / 2) __syncthreads();
}

__global__ void smem_overrun(int bytes) {
  if (threadIdx.x == 0) dynamic_shared_memory()[bytes] = 1;
}

template <class T>
__global__ void wmma_gemm(const T* a, const T* b, const float* c, float* d, int a_col, int b_col) {
  namespace wmma = nvcuda::wmma;
  T* sa = reinterpret_cast<T*>(dynamic_shared_memory());
  T* sb = sa + 256;
  float* sc = reinterpret_cast<float*>(sb + 256);
  for (int i = threadIdx.x; i < 256; i += blockDim.x) {
    sa[i] = a[i];
    sb[i] = b[i];
    sc[i] = c[i];
  }
  __syncthreads();
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(acc, sc, 16, wmma::mem_row_major);
  if (a_col) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;
    wmma::load_matrix_sync(fa, sa, 16);
    if (b_col) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, sb, 16);
      wmma::mma_sync(acc, fa, fb, acc);
    } else {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, sb, 16);
      wmma::mma_sync(acc, fa, fb, acc);
    }
  } else {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, sa, 16);
    if (b_col) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, sb, 16);
      wmma::mma_sync(acc, fa, fb, acc);
    } else {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> fb;
      wmma::load_matrix_sync(fb, sb, 16);
      wmma::mma_sync(acc, fa, fb, acc);
    }
  }
  __syncthreads();  // every lane has read sc before it is overwritten
  wmma::store_matrix_sync(sc, acc, 16, wmma::mem_row_major);
  __syncthreads();  // each lane stored only its share of the tile
  for (int i = threadIdx.x; i < 256; i += blockDim.x) d[i] = sc[i];
}

// Lanes that disagree on a warp-collective call, or do not all make it.
__global__ void wmma_misuse(int kind) {
  namespace wmma = nvcuda::wmma;
  __half* s = reinterpret_cast<__half*>(dynamic_shared_memory());
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  if (kind == 0) {  // lane-dependent pointer
    wmma::load_matrix_sync(fa, s + (threadIdx.x % 2) * 256, 16);
  } else if (kind == 1) {  // half a warp
    if (threadIdx.x % 32 < 16) wmma::load_matrix_sync(fa, s, 16);
  } else {  // misaligned pointer
    wmma::load_matrix_sync(fa, s + 8, 16);
  }
}

}  // namespace

void selftest_exchange(int* out, int blocks, int threads, bool use_barrier, emu::Schedule s) {
  emu::launch("exchange", &exchange, dim3(blocks), dim3(threads), sizeof(int) * threads, s, out,
              int(use_barrier));
}

void selftest_read_unwritten(float* out, int threads, emu::Schedule s) {
  emu::launch("read_unwritten", &read_unwritten, dim3(1), dim3(threads), sizeof(float) * threads,
              s, out);
}

void selftest_wmma_gemm(int dtype, const void* a, const void* b, const float* c, float* d,
                        bool a_col_major, bool b_col_major, emu::Schedule s) {
  const std::size_t smem = 2 * 256 * 2 + 256 * 4;
  if (dtype == 1)
    emu::launch("wmma_gemm_f16", &wmma_gemm<__half>, dim3(1), dim3(32), smem, s,
                static_cast<const __half*>(a), static_cast<const __half*>(b), c, d,
                int(a_col_major), int(b_col_major));
  else if (dtype == 2)
    emu::launch("wmma_gemm_bf16", &wmma_gemm<__nv_bfloat16>, dim3(1), dim3(32), smem, s,
                static_cast<const __nv_bfloat16*>(a), static_cast<const __nv_bfloat16*>(b), c, d,
                int(a_col_major), int(b_col_major));
  else
    throw std::invalid_argument("wmma takes float16 (1) or bfloat16 (2), got dtype " +
                                std::to_string(dtype));
}

void selftest_fault(const std::string& kind, emu::Schedule s) {
  if (kind == "divergent_barrier")
    emu::launch("divergent_barrier", &divergent_barrier, dim3(2), dim3(64), 0, s);
  else if (kind == "smem_overrun")
    emu::launch("smem_overrun", &smem_overrun, dim3(1), dim3(32), 256, s, 256);
  else if (kind == "wmma_lane_pointer")
    emu::launch("wmma_misuse", &wmma_misuse, dim3(1), dim3(64), 2048, s, 0);
  else if (kind == "wmma_half_warp")
    emu::launch("wmma_misuse", &wmma_misuse, dim3(1), dim3(64), 2048, s, 1);
  else if (kind == "wmma_misaligned")
    emu::launch("wmma_misuse", &wmma_misuse, dim3(1), dim3(64), 2048, s, 2);
  else if (kind == "bad_config")
    emu::launch("divergent_barrier", &divergent_barrier, dim3(1), dim3(2048), 0, s);
  else
    throw std::invalid_argument("unknown self-test fault " + kind);
}

}  // namespace redkern::cuda_emu
