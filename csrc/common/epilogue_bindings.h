// The epilogue codes as a native module was compiled with them (redkern/epilogue.def), exported
// as ACT_CODES and RESIDUAL_CODES so the tests can check every build agrees with Python.
#pragma once

#include <pybind11/pybind11.h>

namespace redkern {

inline void export_epilogue_codes(pybind11::module_& m) {
  pybind11::dict acts, residuals;
#define REDKERN_ACT(name, code) acts[#name] = code;
#define REDKERN_RESIDUAL(name, code) residuals[#name] = code;
#include "redkern/epilogue.def"
#undef REDKERN_ACT
#undef REDKERN_RESIDUAL
  m.attr("ACT_CODES") = acts;
  m.attr("RESIDUAL_CODES") = residuals;
}

}  // namespace redkern
