// A small CUDA C++ emulation layer: enough of the language and of nvcuda::wmma to compile
// redkern's .cu kernels with g++ and run them on the host, so the very source that nvcc
// builds is tested on machines without a GPU.
//
// Execution model (see cuda_emu.cpp):
// - A launch runs its blocks one after another. The threads of a block run concurrently,
//   one host thread each, and __syncthreads() is a real barrier; a second schedule,
//   Schedule::kSerialized, runs the threads of a block one at a time from barrier to barrier,
//   in an order that reverses at every barrier, so a missing barrier deterministically lets a
//   thread read what no one has written yet, or what another thread already overwrote.
// - Dynamic shared memory (the only kind the kernels use) is one arena per block, filled
//   with 0xFF bytes (a NaN in float, half and bfloat16) before the block starts and followed
//   by a guard zone that is checked after it ends.
// - Faults the hardware would report or hang on are errors of the launch: a __syncthreads()
//   that not every thread of the block reaches, a warp-collective wmma call that the lanes of
//   a warp make with different arguments or not all make, a misaligned wmma pointer, writes
//   past the dynamic shared memory.
// - nvcuda::wmma fragments hold the whole 16x16 tile in every thread (CUDA leaves the element
//   layout unspecified, so correct kernels cannot tell); store_matrix_sync writes each
//   element from one lane only, as the hardware does, so results stored by other lanes are
//   only visible after a barrier.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifndef REDKERN_CUDA_EMULATION
#define REDKERN_CUDA_EMULATION 1
#endif

// --- language keywords -----------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// Static __shared__ variables would be shared by every emulated block without poisoning;
// the kernels use dynamic shared memory only (see dynamic_shared_memory()).
#define __shared__ static_assert(false, "cuda_emu: use dynamic shared memory");

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
constexpr int warpSize = 32;

// Set by the runtime in each emulated thread before it runs the kernel body.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace emu {

// An error the GPU would raise (or hang on); the launch fails with its message.
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule : int { kConcurrent = 0, kSerialized = 1 };

// The largest dynamic shared memory a block may ask for (sm_90's opt-in limit).
constexpr std::size_t kMaxDynamicSmem = 227 * 1024;

// Runs body() as every thread of every block of the grid; throws std::runtime_error naming
// the kernel if the configuration is invalid or any thread faults.
void run_grid(const char* name, dim3 grid, dim3 block, std::size_t smem_bytes,
              Schedule schedule, const std::function<void()>& body);

template <class... Params, class... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
            std::size_t smem_bytes, Schedule schedule, const Args&... args) {
  run_grid(name, grid, block, smem_bytes, schedule, [&] { kernel(args...); });
}

// The calling thread's block-wide barrier, dynamic shared memory and lane number.
void sync_block();
unsigned char* dynamic_shared_memory();
unsigned lane_id();

// Warp-collective calls: every lane of a warp must make the same sequence of them with the
// same arguments (what the lanes pass is compared; a lane that differs is a fault).
void warp_collective(const char* op, const void* ptr, unsigned ldm, float value);

}  // namespace emu

inline void __syncthreads() { emu::sync_block(); }

// --- half and bfloat16: storage types with bit-exact round-to-nearest-even conversions ---
struct __half {
  unsigned short __x;
};
struct __nv_bfloat16 {
  unsigned short __x;
};

namespace emu {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline unsigned short float_to_half_bits(float f) {
  const std::uint32_t u = float_bits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;                   // NaN: CUDA's canonical NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;           // >= 65520 rounds to infinity
  if (a >= 0x38800000u) {                                // normal half (>= 2^-14)
    std::uint32_t h = (a - 0x38000000u) >> 13;           // rebias exponent 127 -> 15
    const std::uint32_t rest = a & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<unsigned short>(sign | h);
  }
  if (a <= 0x33000000u) return static_cast<unsigned short>(sign);  // <= 2^-25 rounds to 0
  // Subnormal half: value = m * 2^-24 with m = mantissa >> (126 - exponent).
  const std::uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
  const std::uint32_t s = 126u - e;                      // 14 .. 24
  std::uint32_t h = m >> s;
  const std::uint32_t rest = m & ((1u << s) - 1u), halfway = 1u << (s - 1u);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;  // may carry into the normals
  return static_cast<unsigned short>(sign | h);
}

inline float half_bits_to_float(unsigned short h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline unsigned short float_to_bf16_bits(float f) {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN: CUDA's canonical NaN
  return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float bf16_bits_to_float(unsigned short b) { return bits_float(std::uint32_t(b) << 16); }

}  // namespace emu

inline __half __float2half_rn(float f) { return __half{emu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) { return emu::half_bits_to_float(h.__x); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{emu::float_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bf16_bits_to_float(b.__x); }

// --- nvcuda::wmma, m16n16k16 with half or bfloat16 inputs and a float accumulator --------
namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
  static_assert(M == 16 && N == 16 && K == 16, "cuda_emu: only m16n16k16 is emulated");
  static_assert(std::is_same_v<Use, accumulator> ? std::is_same_v<T, float>
                                                 : (std::is_same_v<T, __half> ||
                                                    std::is_same_v<T, __nv_bfloat16>),
                "cuda_emu: inputs are half or bfloat16, the accumulator float");

 public:
  using element_type = T;
  // Every thread holds the whole tile, row-major: x[row * 16 + col].
  static constexpr int num_elements = 256;
  T x[num_elements];
};

namespace detail {

inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void check_pointer(const char* op, const void* p, unsigned ldm, std::size_t elem) {
  if (reinterpret_cast<std::uintptr_t>(p) % 32 != 0)
    throw emu::Fault(std::string(op) + ": pointer is not 256-bit aligned");
  if ((ldm * elem) % 16 != 0)
    throw emu::Fault(std::string(op) + ": ldm=" + std::to_string(ldm) +
                     " is not a multiple of 16 bytes");
}

}  // namespace detail

template <class T, class Layout>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_pointer("load_matrix_sync(matrix_a)", p, ldm, sizeof(T));
  emu::warp_collective("load_matrix_sync(matrix_a)", p, ldm, 0.f);
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = row ? p[i * ldm + k] : p[k * ldm + i];
}

template <class T, class Layout>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  detail::check_pointer("load_matrix_sync(matrix_b)", p, ldm, sizeof(T));
  emu::warp_collective("load_matrix_sync(matrix_b)", p, ldm, 0.f);
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = row ? p[k * ldm + j] : p[j * ldm + k];
}

inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  detail::check_pointer("load_matrix_sync(accumulator)", p, ldm, sizeof(float));
  emu::warp_collective("load_matrix_sync(accumulator)", p, ldm, float(layout));
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      f.x[i * 16 + j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
}

// Each element is written by one lane (element e by lane e % 32), as on the hardware.
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  detail::check_pointer("store_matrix_sync", p, ldm, sizeof(float));
  emu::warp_collective("store_matrix_sync", p, ldm, float(layout));
  for (unsigned e = emu::lane_id(); e < 256; e += warpSize) {
    const unsigned i = e / 16, j = e % 16;
    p[layout == mem_row_major ? i * ldm + j : j * ldm + i] = f.x[e];
  }
}

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T v) {
  float fv = 0.f;
  if constexpr (std::is_same_v<T, float>) fv = v;
  emu::warp_collective("fill_fragment", nullptr, 0, fv);
  for (auto& e : f.x) e = v;
}

// d = a * b + c, products and sums in float (d may be c).
template <class T, class LA, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  emu::warp_collective("mma_sync", nullptr, 0, 0.f);
  float af[256], bf[256], out[256];
  for (int e = 0; e < 256; ++e) {
    af[e] = detail::to_float(a.x[e]);
    bf[e] = detail::to_float(b.x[e]);
  }
  for (int i = 0; i < 16; ++i) {
    float row[16];
    for (int j = 0; j < 16; ++j) row[j] = c.x[i * 16 + j];
    for (int k = 0; k < 16; ++k) {
      const float aik = af[i * 16 + k];
      for (int j = 0; j < 16; ++j) row[j] += aik * bf[k * 16 + j];
    }
    for (int j = 0; j < 16; ++j) out[i * 16 + j] = row[j];
  }
  std::memcpy(d.x, out, sizeof out);
}

}  // namespace nvcuda::wmma
