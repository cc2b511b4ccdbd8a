// pybind11 bindings of the CPU kernels (redkern._C). Tensors cross as raw addresses plus the
// element counts of their buffers; sizes are checked here before any memory is touched.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

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
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "redkern CPU kernels (fused 3x3 convolutions on NHWC activations)";
  m.attr("cuda_status") = REDKERN_CUDA_STATUS;

  py::enum_<Epilogue>(m, "Epilogue")
      .value("relu", Epilogue::kRelu)
      .value("relu_add_relu", Epilogue::kReluAddRelu)
      .value("add_residual", Epilogue::kAddResidual);

  m.def("selected_isa", &selected_isa, "Instruction set of the kernel chosen for this CPU");
  m.def("packed_weight_size", &packed_weight_size, py::arg("cin"), py::arg("cout"));

  m.def(
      "pack_weight",
      [](std::uintptr_t w, std::int64_t w_numel, int cin, int cout, bool transposed,
         std::uintptr_t packed, std::int64_t packed_numel) {
        check_dims(1, 1, 1, cin, cout);
        check_numel(w_numel, std::int64_t(9) * cin * cout, "weight");
        check_numel(packed_numel, std::int64_t(packed_weight_size(cin, cout)), "packed weight");
        py::gil_scoped_release nogil;
        pack_weight(as_ptr<const float>(w, "weight"), cin, cout, transposed,
                    as_ptr<float>(packed, "packed weight"));
      },
      py::arg("w"), py::arg("w_numel"), py::arg("cin"), py::arg("cout"), py::arg("transposed"),
      py::arg("packed"), py::arg("packed_numel"));

  m.def(
      "conv3x3_f32",
      [](std::uintptr_t x, std::int64_t x_numel, std::uintptr_t packed, std::int64_t packed_numel,
         std::uintptr_t bias, std::int64_t bias_numel, std::uintptr_t extra,
         std::int64_t extra_numel, std::uintptr_t y, std::int64_t y_numel, int n, int h, int w,
         int cin, int cout, Epilogue epi, int nthreads) {
        check_dims(n, h, w, cin, cout);
        const std::int64_t pixels = std::int64_t(n) * h * w;
        check_numel(x_numel, pixels * cin, "input");
        check_numel(y_numel, pixels * cout, "output");
        check_numel(bias_numel, cout, "bias");
        check_numel(packed_numel, std::int64_t(packed_weight_size(cin, cout)), "packed weight");
        const float* extra_p = nullptr;
        if (epi != Epilogue::kRelu) {
          check_numel(extra_numel, pixels * cout, "skip/residual");
          extra_p = as_ptr<const float>(extra, "skip/residual");
        }
        if (x == y) throw std::invalid_argument("conv3x3: output must not alias the input");
        if (nthreads < 1) nthreads = 1;
        py::gil_scoped_release nogil;
        conv3x3_f32(as_ptr<const float>(x, "input"), as_ptr<const float>(packed, "packed weight"),
                    as_ptr<const float>(bias, "bias"), extra_p, as_ptr<float>(y, "output"), n, h,
                    w, cin, cout, epi, nthreads);
      },
      py::arg("x"), py::arg("x_numel"), py::arg("packed"), py::arg("packed_numel"),
      py::arg("bias"), py::arg("bias_numel"), py::arg("extra"), py::arg("extra_numel"),
      py::arg("y"), py::arg("y_numel"), py::arg("n"), py::arg("h"), py::arg("w"),
      py::arg("cin"), py::arg("cout"), py::arg("epilogue"), py::arg("nthreads"));
}
