// Run-time choice of the CPU kernel by the processor's features.
#pragma once

#include "cpu/conv3x3.h"

namespace redkern::cpu {

using Conv3x3F32Fn = void (*)(const float*, const float*, const float*, const float*, float*,
                              int, int, int, int, int, Epilogue, int);

void conv3x3_f32_generic(const float* x, const float* packed, const float* bias,
                         const float* extra, float* y, int n, int h, int w, int cin, int cout,
                         Epilogue epi, int nthreads);

}  // namespace redkern::cpu
