// pybind11 bindings of the host emulation (redkern._cuda_emu): the CUDA C++ kernels run on
// the CPU, on host pointers, with the same argument checks as redkern._cuda.
#include <pybind11/pybind11.h>

#include <string>

#include "cuda/bindings.h"
#include "cuda_emu/conv_emu.h"
#include "cuda_emu/selftest.h"

namespace py = pybind11;
using namespace redkern;

namespace {

emu::Schedule parse_schedule(const std::string& s) {
  if (s == "concurrent") return emu::Schedule::kConcurrent;
  if (s == "serialized") return emu::Schedule::kSerialized;
  throw std::invalid_argument("schedule must be 'concurrent' or 'serialized', got '" + s + "'");
}

const std::pair<const char*, cuda::PlantedBug> kBugs[] = {
    {"none", cuda::PlantedBug::kNone},
    {"skip_load_barrier", cuda::PlantedBug::kSkipLoadBarrier},
    {"skip_reuse_barrier", cuda::PlantedBug::kSkipReuseBarrier},
    {"halo_shift", cuda::PlantedBug::kHaloShift},
    {"no_channel_zero_fill", cuda::PlantedBug::kNoChannelZeroFill},
    {"shared_slope", cuda::PlantedBug::kSharedSlope},
};

cuda::PlantedBug parse_bug(const std::string& s) {
  for (const auto& [name, bug] : kBugs)
    if (s == name) return bug;
  throw std::invalid_argument("unknown planted bug '" + s + "'");
}

template <class T>
T* ptr(std::uintptr_t p) {
  if (p == 0) throw std::invalid_argument("null pointer");
  return reinterpret_cast<T*>(p);
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, m) {
  m.doc() =
      "redkern's CUDA C++ kernels compiled for the host against a CUDA emulation layer "
      "(csrc/cuda_emu): for testing the kernel source without a GPU; slow.";
  cuda::def_common(m);
  py::list bugs;
  for (const auto& entry : kBugs)
    if (entry.second != cuda::PlantedBug::kNone) bugs.append(entry.first);
  m.attr("PLANTED_BUGS") = py::tuple(bugs);

  m.def(
      "conv2d",
      [](REDKERN_CONV2D_PARAMS, std::uintptr_t stream, int device, const std::string& schedule,
         const std::string& planted_bug) {
        const cuda::ConvArgs a = REDKERN_CONV2D_CHECKED_ARGS();
        if (stream != 0 || device != 0)
          throw std::invalid_argument("the emulated device has one default stream: stream=0, device=0");
        const emu::Schedule s = parse_schedule(schedule);
        const cuda::PlantedBug bug = parse_bug(planted_bug);
        py::gil_scoped_release nogil;
        if (bug == cuda::PlantedBug::kNone)
          cuda_emu::conv2d(a, s);
        else
          cuda_emu::conv2d_planted(a, bug, s);
      },
      REDKERN_CONV2D_PYARGS, py::arg("stream") = 0, py::arg("device") = 0, py::kw_only(),
      py::arg("schedule") = "concurrent", py::arg("planted_bug") = "none",
      "Fused 3x3 (padding 1) or 1x1 (padding 0) conv on host pointers, run by the emulator. "
      "schedule: 'concurrent' (one host thread per CUDA thread) or 'serialized' (one thread at "
      "a time between barriers); planted_bug: one of PLANTED_BUGS, for tests that must catch it.");

  m.def("kernel_for", [](int dtype, int kernel, int cin, int cout) {
    if (dtype < 0 || dtype > 2) throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
    if (kernel != 1 && kernel != 3)
      throw std::invalid_argument("kernel must be 1 or 3, got " + std::to_string(kernel));
    if (cin < 1 || cout < 1) throw std::invalid_argument("cin and cout must be >= 1");
    const cuda_emu::KernelChoice k = cuda_emu::kernel_for(cuda::DType(dtype), kernel, cin, cout);
    return py::make_tuple(k.name, k.smem_bytes);
  }, py::arg("dtype"), py::arg("kernel"), py::arg("cin"), py::arg("cout"),
     "(kernel name, dynamic shared memory bytes) that a launch for these sizes uses");
  // Bit-exact conversions, to check them against torch.
  m.def("float_to_half_bits", [](std::uintptr_t src, std::uintptr_t dst, std::int64_t count) {
    const float* s = ptr<const float>(src);
    auto* d = ptr<unsigned short>(dst);
    for (std::int64_t i = 0; i < count; ++i) d[i] = emu::float_to_half_bits(s[i]);
  }, py::arg("src"), py::arg("dst"), py::arg("count"));
  m.def("half_bits_to_float", [](std::uintptr_t src, std::uintptr_t dst, std::int64_t count) {
    const auto* s = ptr<const unsigned short>(src);
    float* d = ptr<float>(dst);
    for (std::int64_t i = 0; i < count; ++i) d[i] = emu::half_bits_to_float(s[i]);
  }, py::arg("src"), py::arg("dst"), py::arg("count"));
  m.def("float_to_bf16_bits", [](std::uintptr_t src, std::uintptr_t dst, std::int64_t count) {
    const float* s = ptr<const float>(src);
    auto* d = ptr<unsigned short>(dst);
    for (std::int64_t i = 0; i < count; ++i) d[i] = emu::float_to_bf16_bits(s[i]);
  }, py::arg("src"), py::arg("dst"), py::arg("count"));
  m.def("bf16_bits_to_float", [](std::uintptr_t src, std::uintptr_t dst, std::int64_t count) {
    const auto* s = ptr<const unsigned short>(src);
    float* d = ptr<float>(dst);
    for (std::int64_t i = 0; i < count; ++i) d[i] = emu::bf16_bits_to_float(s[i]);
  }, py::arg("src"), py::arg("dst"), py::arg("count"));

  // Self-tests of the emulator.
  m.def("selftest_exchange", [](std::uintptr_t out, int blocks, int threads, bool use_barrier,
                                const std::string& schedule) {
    const emu::Schedule s = parse_schedule(schedule);
    py::gil_scoped_release nogil;
    cuda_emu::selftest_exchange(ptr<int>(out), blocks, threads, use_barrier, s);
  }, py::arg("out"), py::arg("blocks"), py::arg("threads"), py::arg("use_barrier"),
     py::arg("schedule"));
  m.def("selftest_read_unwritten", [](std::uintptr_t out, int threads, const std::string& schedule) {
    const emu::Schedule s = parse_schedule(schedule);
    py::gil_scoped_release nogil;
    cuda_emu::selftest_read_unwritten(ptr<float>(out), threads, s);
  }, py::arg("out"), py::arg("threads"), py::arg("schedule"));
  m.def("selftest_wmma_gemm", [](int dtype, std::uintptr_t a, std::uintptr_t b, std::uintptr_t c,
                                 std::uintptr_t d, bool a_col_major, bool b_col_major,
                                 const std::string& schedule) {
    const emu::Schedule s = parse_schedule(schedule);
    py::gil_scoped_release nogil;
    cuda_emu::selftest_wmma_gemm(dtype, ptr<const void>(a), ptr<const void>(b),
                                 ptr<const float>(c), ptr<float>(d), a_col_major, b_col_major, s);
  }, py::arg("dtype"), py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"),
     py::arg("a_col_major"), py::arg("b_col_major"), py::arg("schedule"));
  m.def("selftest_fault", [](const std::string& kind, const std::string& schedule) {
    const emu::Schedule s = parse_schedule(schedule);
    py::gil_scoped_release nogil;
    cuda_emu::selftest_fault(kind, s);
  }, py::arg("kind"), py::arg("schedule"));
}
