// pybind11 bindings of the CPU kernels (redkern._C). Tensors cross as raw addresses plus the
// element counts of their buffers; sizes are checked here before any memory is touched, and
// every check raises ValueError (std::invalid_argument) with what was wrong.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/conv3x3.h"

namespace py = pybind11;
using namespace redkern::cpu;

namespace {

template <typename T>
T* as_ptr(std::uintptr_t addr, const char* name) {
  if (addr == 0) throw std::invalid_argument(std::string("null pointer for ") + name);
  return reinterpret_cast<T*>(addr);
}

void check_numel(std::int64_t got, std::int64_t want, const char* name) {
  if (got != want)
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(got) +
                                " elements, the kernel needs " + std::to_string(want));
}

void check_dims(int n, int h, int w, int cin, int cout) {
  if (n < 1 || h < 1 || w < 1 || cin < 1 || cout < 1)
    throw std::invalid_argument("conv3x3: n, h, w, cin and cout must all be >= 1, got n=" +
                                std::to_string(n) + " h=" + std::to_string(h) + " w=" +
                                std::to_string(w) + " cin=" + std::to_string(cin) +
                                " cout=" + std::to_string(cout));
  // The kernels index one image row (and a few rows of scratch) with int.
  const std::int64_t widest = std::int64_t(w + 2) * (cin > cout ? cin : cout) * 4;
  if (widest > INT_MAX)
    throw std::invalid_argument("conv3x3: image rows too wide for the CPU kernels (w=" +
                                std::to_string(w) + ", channels " + std::to_string(cin) + "/" +
                                std::to_string(cout) + ")");
}

// Byte ranges [a, a + an) and [b, b + bn) share memory.
bool overlaps(std::uintptr_t a, std::int64_t an, std::uintptr_t b, std::int64_t bn) {
  return a < b + std::uintptr_t(bn) && b < a + std::uintptr_t(an);
}

Isa isa_or_selected(const std::string& isa) {
  return isa.empty() ? selected_isa() : parse_isa(isa.c_str());
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "redkern CPU kernels (fused 3x3 convolutions on NHWC activations)";
  m.attr("cuda_status") = REDKERN_CUDA_STATUS;

  py::enum_<Epilogue>(m, "Epilogue")
      .value("relu", Epilogue::kRelu)
      .value("relu_add_relu", Epilogue::kReluAddRelu)
      .value("add_residual", Epilogue::kAddResidual);
  py::enum_<DType>(m, "DType")
      .value("float32", DType::kFloat32)
      .value("bfloat16", DType::kBFloat16);
  py::enum_<Algorithm>(m, "Algorithm")
      .value("direct", Algorithm::kDirect)
      .value("winograd4x4", Algorithm::kWinograd4x4)
      .value("direct_bf16dot", Algorithm::kDirectBf16Dot)
      .value("direct_few_cout", Algorithm::kDirectFewCout);

  m.def("selected_isa", [] { return std::string(isa_name(selected_isa())); },
        "Instruction set of the kernels used by default: the best this CPU has, or the one "
        "REDKERN_CPU_ISA forces (ValueError if it names one this CPU lacks)");
  m.def("supported_isas", [] {
        std::vector<std::string> names;
        for (int i = int(Isa::kGeneric); i <= int(Isa::kAvx512); ++i)
          if (isa_supported(Isa(i))) names.push_back(isa_name(Isa(i)));
        return names;
      },
      "Every instruction set whose kernels can run on this CPU, lowest first");
  m.def("bf16_dot_supported", &bf16_dot_supported,
        "This CPU has AVX512_BF16, so Algorithm.direct_bf16dot runs (with the avx512 kernels)");

  m.def("packed_weight_size", &packed_weight_size, py::arg("cin"), py::arg("cout"),
        py::arg("algorithm"), "32-bit words in the packed weight for this algorithm");

  m.def(
      "pack_weight",
      [](std::uintptr_t w, std::int64_t w_numel, int cin, int cout, bool transposed,
         Algorithm algorithm, std::uintptr_t packed, std::int64_t packed_numel) {
        check_dims(1, 1, 1, cin, cout);
        check_numel(w_numel, std::int64_t(9) * cin * cout, "weight");
        check_numel(packed_numel, std::int64_t(packed_weight_size(cin, cout, algorithm)),
                    "packed weight");
        py::gil_scoped_release nogil;
        pack_weight(as_ptr<const float>(w, "weight"), cin, cout, transposed, algorithm,
                    as_ptr<float>(packed, "packed weight"));
      },
      py::arg("w"), py::arg("w_numel"), py::arg("cin"), py::arg("cout"), py::arg("transposed"),
      py::arg("algorithm"), py::arg("packed"), py::arg("packed_numel"),
      "Re-lay out an fp32 Conv2d ([cout,cin,3,3]) or ConvTranspose2d ([cin,cout,3,3]) weight");

  m.def(
      "conv3x3",
      [](std::uintptr_t x, std::int64_t x_numel, std::uintptr_t packed, std::int64_t packed_numel,
         std::uintptr_t bias, std::int64_t bias_numel, std::uintptr_t extra,
         std::int64_t extra_numel, std::uintptr_t y, std::int64_t y_numel, int n, int h, int w,
         int cin, int cout, Epilogue epi, DType dtype, Algorithm algorithm, int nthreads,
         const std::string& isa) {
        check_dims(n, h, w, cin, cout);
        const std::int64_t pixels = std::int64_t(n) * h * w;
        const std::int64_t elem = dtype == DType::kBFloat16 ? 2 : 4;
        check_numel(x_numel, pixels * cin, "input");
        check_numel(y_numel, pixels * cout, "output");
        check_numel(bias_numel, cout, "bias");
        check_numel(packed_numel, std::int64_t(packed_weight_size(cin, cout, algorithm)),
                    "packed weight");
        const void* extra_p = nullptr;
        if (epi != Epilogue::kRelu) {
          check_numel(extra_numel, pixels * cout, "skip/residual");
          extra_p = as_ptr<const void>(extra, "skip/residual");
        }
        if (overlaps(x, x_numel * elem, y, y_numel * elem))
          throw std::invalid_argument("conv3x3: output must not overlap the input");
        const Isa chosen = isa_or_selected(isa);
        Conv3x3Args args{as_ptr<const void>(x, "input"),
                         as_ptr<const float>(packed, "packed weight"),
                         as_ptr<const float>(bias, "bias"),
                         extra_p,
                         as_ptr<void>(y, "output"),
                         n, h, w, cin, cout, epi, nthreads < 1 ? 1 : nthreads};
        py::gil_scoped_release nogil;
        conv3x3(args, dtype, algorithm, chosen);
      },
      py::arg("x"), py::arg("x_numel"), py::arg("packed"), py::arg("packed_numel"),
      py::arg("bias"), py::arg("bias_numel"), py::arg("extra"), py::arg("extra_numel"),
      py::arg("y"), py::arg("y_numel"), py::arg("n"), py::arg("h"), py::arg("w"),
      py::arg("cin"), py::arg("cout"), py::arg("epilogue"), py::arg("dtype"),
      py::arg("algorithm"), py::arg("nthreads"), py::arg("isa") = "",
      "y = epilogue(conv3x3(x) + bias, extra) on NHWC buffers of `dtype` (bias fp32); "
      "isa '' means selected_isa()");

  m.def(
      "measure_fma_peak_gflops",
      [](int nthreads, const std::string& isa) {
        const Isa chosen = isa_or_selected(isa);
        py::gil_scoped_release nogil;
        return measure_fma_peak_gflops(nthreads, chosen);
      },
      py::arg("nthreads"), py::arg("isa") = "",
      "fp32 FMA throughput of this CPU's widest vectors (independent FMA chains), GFLOP/s");
}
