// Argument handling shared by the pybind11 modules of the real kernels (cuda/module.cpp) and
// of their host emulation (cuda_emu/module.cpp): tensors cross as raw addresses plus the
// element counts of their buffers, and everything is validated before a launch.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

#include "cuda/conv3x3.h"

namespace redkern::cuda {

inline ConvArgs checked_args(std::uintptr_t x, std::int64_t x_numel, std::uintptr_t weight,
                             std::int64_t weight_numel, std::uintptr_t bias,
                             std::int64_t bias_numel, std::uintptr_t extra,
                             std::int64_t extra_numel, std::uintptr_t y, std::int64_t y_numel,
                             int n, int h, int width, int cin, int cout, int dtype, int epilogue) {
  ConvArgs a;
  a.x = reinterpret_cast<const void*>(x);
  a.w = reinterpret_cast<const void*>(weight);
  a.bias = reinterpret_cast<const void*>(bias);
  a.extra = reinterpret_cast<const void*>(extra);
  a.y = reinterpret_cast<void*>(y);
  a.n = n;
  a.h = h;
  a.width = width;
  a.cin = cin;
  a.cout = cout;
  a.dtype = DType(dtype);
  a.epilogue = Epilogue(epilogue);
  validate(a, {x_numel, weight_numel, bias_numel, extra_numel, y_numel});
  return a;
}

// (9, cin_pad, cout_pad): the packed weight the kernels for (dtype, cin, cout) read.
inline pybind11::tuple packed_weight_shape(int dtype, int cin, int cout) {
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  if (cin < 1 || cout < 1) throw std::invalid_argument("cin and cout must be >= 1");
  const Plan p = plan_conv3x3(DType(dtype), cin, cout);
  return pybind11::make_tuple(9, p.cin_pad, p.cout_pad);
}

inline void def_common(pybind11::module_& m) {
  namespace py = pybind11;
  m.attr("DTYPE_CODES") = py::dict(py::arg("float32") = int(DType::kFloat32),
                                   py::arg("float16") = int(DType::kFloat16),
                                   py::arg("bfloat16") = int(DType::kBFloat16));
  m.attr("TILE") = py::make_tuple(kTileH, kTileW);
  m.attr("THREADS_PER_BLOCK") = kThreads;
  m.def("packed_weight_shape", &packed_weight_shape, py::arg("dtype"), py::arg("cin"),
        py::arg("cout"), "(9, cin_pad, cout_pad) of the packed weight for these sizes");
}

#define REDKERN_CONV3X3_PYARGS                                                              \
  py::arg("x"), py::arg("x_numel"), py::arg("weight"), py::arg("weight_numel"),             \
      py::arg("bias"), py::arg("bias_numel"), py::arg("extra"), py::arg("extra_numel"),     \
      py::arg("y"), py::arg("y_numel"), py::arg("n"), py::arg("h"), py::arg("width"),       \
      py::arg("cin"), py::arg("cout"), py::arg("dtype"), py::arg("epilogue")

}  // namespace redkern::cuda
