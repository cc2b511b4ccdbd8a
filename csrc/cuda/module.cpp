// pybind11 bindings of the CUDA C++ kernels (redkern._cuda). Launches go to the stream the
// caller passes (PyTorch's current stream, as an integer); sizes are checked before.
#include <pybind11/pybind11.h>

#include "cuda/bindings.h"

namespace py = pybind11;
using namespace redkern::cuda;

#ifndef REDKERN_CUDA_ARCHS
#error "CMake defines REDKERN_CUDA_ARCHS (e.g. \"80,90\")"
#endif

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "redkern CUDA C++ kernels (fused 3x3 and 1x1 convolutions on NHWC activations)";
  m.attr("built_archs") = REDKERN_CUDA_ARCHS;
  def_common(m);

  m.def("device_count", [] {
    const DeviceCount c = device_count();
    return py::make_tuple(c.count, c.error);
  }, "(count, why there are none): CUDA devices this module's runtime sees");
  m.def("device_properties", [](int device) {
    const DeviceProperties p = device_properties(device);
    return py::make_tuple(p.name, p.major, p.minor);
  }, py::arg("device"), "(name, major, minor) of a CUDA device");

  m.def(
      "conv2d",
      [](REDKERN_CONV2D_PARAMS, std::uintptr_t stream, int device) {
        const ConvArgs a = REDKERN_CONV2D_CHECKED_ARGS();
        if (device < 0) throw std::invalid_argument("device must be >= 0");
        py::gil_scoped_release nogil;
        conv2d(a, device, reinterpret_cast<CUstream_st*>(stream));
      },
      REDKERN_CONV2D_PYARGS, py::arg("stream"), py::arg("device"),
      "Fused 3x3 (padding 1) or 1x1 (padding 0) conv on device pointers, launched on "
      "`stream` (a cudaStream_t as int).");
}
