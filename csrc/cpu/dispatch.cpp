#include "cpu/dispatch.h"

namespace redkern::cpu {

const char* selected_isa() { return "generic"; }

void conv3x3_f32(const float* x, const float* packed, const float* bias, const float* extra,
                 float* y, int n, int h, int w, int cin, int cout, Epilogue epi, int nthreads) {
  conv3x3_f32_generic(x, packed, bias, extra, y, n, h, w, cin, cout, epi, nthreads);
}

}  // namespace redkern::cpu
