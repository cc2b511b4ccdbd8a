// Argument handling shared by the pybind11 modules of the real kernels (cuda/module.cpp) and
// of their host emulation (cuda_emu/module.cpp): tensors cross as raw addresses plus the
// element counts of their buffers, and everything is validated before a launch.
#pragma once

#include "common/epilogue_bindings.h"
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "common/epilogue.h"
#include "cuda/conv.h"

namespace redkern::cuda {

// The arguments of module.conv2d(...) (REDKERN_CONV2D_PYARGS), checked (validate()).
inline ConvArgs checked_args(std::uintptr_t x, std::int64_t x_numel, std::uintptr_t weight,
                             std::int64_t weight_numel, std::uintptr_t bias,
                             std::int64_t bias_numel, std::uintptr_t extra,
                             std::int64_t extra_numel, std::uintptr_t slope,
                             std::int64_t slope_numel, std::uintptr_t slope2,
                             std::int64_t slope2_numel, std::uintptr_t y, std::int64_t y_numel,
                             int n, int h, int width, int cin, int cout, int kernel, int padding,
                             int dtype, int act, int residual, int act2, double alpha,
                             double beta) {
  // Codes are checked before they become enums (validate() checks them again).
  if (!act_is_valid(act)) throw std::invalid_argument("conv2d (cuda): unknown activation code " + std::to_string(act));
  if (!act_is_valid(act2)) throw std::invalid_argument("conv2d (cuda): unknown activation code " + std::to_string(act2));
  if (!residual_is_valid(residual))
    throw std::invalid_argument("conv2d (cuda): unknown residual code " + std::to_string(residual));
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
  a.kernel = kernel;
  a.padding = padding;
  a.dtype = DType(dtype);
  a.epilogue.act = Act(act);
  a.epilogue.residual = Residual(residual);
  a.epilogue.act2 = Act(act2);
  a.epilogue.alpha = float(alpha);
  a.epilogue.beta = float(beta);
  a.epilogue.slope = reinterpret_cast<const float*>(slope);
  a.epilogue.slope2 = reinterpret_cast<const float*>(slope2);
  validate(a, {x_numel, weight_numel, bias_numel, extra_numel, slope_numel, slope2_numel, y_numel});
  return a;
}

// (taps, cin_pad, cout_pad): the packed weight the kernels for (dtype, kernel, cin, cout) read.
inline pybind11::tuple packed_weight_shape(int dtype, int kernel, int cin, int cout) {
  if (dtype < 0 || dtype > 2) throw std::invalid_argument("unknown dtype code " + std::to_string(dtype));
  if (kernel != 1 && kernel != 3)
    throw std::invalid_argument("kernel must be 1 or 3, got " + std::to_string(kernel));
  if (cin < 1 || cout < 1) throw std::invalid_argument("cin and cout must be >= 1");
  const Plan p = plan_conv(DType(dtype), kernel, cin, cout);
  return pybind11::make_tuple(p.taps(), p.cin_pad, p.cout_pad);
}

inline void def_common(pybind11::module_& m) {
  namespace py = pybind11;
  m.attr("DTYPE_CODES") = py::dict(py::arg("float32") = int(DType::kFloat32),
                                   py::arg("float16") = int(DType::kFloat16),
                                   py::arg("bfloat16") = int(DType::kBFloat16));
  redkern::export_epilogue_codes(m);
  // (kernel, padding) of the convolutions the kernels run.
  m.attr("KERNELS") = py::make_tuple(py::make_tuple(3, 1), py::make_tuple(1, 0));
  m.attr("TILE") = py::make_tuple(kTileH, kTileW);
  m.attr("PIXELS_1X1") = kPixels1x1;
  m.attr("THREADS_PER_BLOCK") = kThreads;
  m.def("packed_weight_shape", &packed_weight_shape, py::arg("dtype"), py::arg("kernel"),
        py::arg("cin"), py::arg("cout"),
        "(kernel*kernel, cin_pad, cout_pad) of the packed weight for these sizes");
}

#define REDKERN_CONV2D_PYARGS                                                               \
  py::arg("x"), py::arg("x_numel"), py::arg("weight"), py::arg("weight_numel"),             \
      py::arg("bias"), py::arg("bias_numel"), py::arg("extra"), py::arg("extra_numel"),     \
      py::arg("slope"), py::arg("slope_numel"), py::arg("slope2"), py::arg("slope2_numel"), \
      py::arg("y"), py::arg("y_numel"), py::arg("n"), py::arg("h"), py::arg("width"),       \
      py::arg("cin"), py::arg("cout"), py::arg("kernel"), py::arg("padding"),               \
      py::arg("dtype"), py::arg("act"), py::arg("residual"), py::arg("act2"),               \
      py::arg("alpha"), py::arg("beta")

// The C++ parameter list matching REDKERN_CONV2D_PYARGS, and the call that checks it.
#define REDKERN_CONV2D_PARAMS                                                                \
  std::uintptr_t x, std::int64_t x_numel, std::uintptr_t weight, std::int64_t weight_numel,  \
      std::uintptr_t bias, std::int64_t bias_numel, std::uintptr_t extra,                    \
      std::int64_t extra_numel, std::uintptr_t slope, std::int64_t slope_numel,              \
      std::uintptr_t slope2, std::int64_t slope2_numel, std::uintptr_t y, std::int64_t y_numel, \
      int n, int h, int width, int cin, int cout, int kernel, int padding, int dtype, int act, \
      int residual, int act2, double alpha, double beta
#define REDKERN_CONV2D_CHECKED_ARGS()                                                        \
  ::redkern::cuda::checked_args(x, x_numel, weight, weight_numel, bias, bias_numel, extra,   \
                                extra_numel, slope, slope_numel, slope2, slope2_numel, y,    \
                                y_numel, n, h, width, cin, cout, kernel, padding, dtype, act, \
                                residual, act2, alpha, beta)

}  // namespace redkern::cuda
