// Portable fused 3x3 convolution: the reference for the SIMD kernels and the fallback on
// CPUs without AVX2. Packed weight layout: [tap = ky*3+kx][cin][cout], cout contiguous, so
// the inner loop is a contiguous multiply-add the compiler vectorises.
#include <algorithm>
#include <vector>

#include "cpu/conv3x3.h"
#include "cpu/dispatch.h"

namespace redkern::cpu {

std::size_t packed_weight_size(int cin, int cout) { return std::size_t(9) * cin * cout; }

void pack_weight(const float* w, int cin, int cout, bool transposed, float* packed) {
  for (int ky = 0; ky < 3; ++ky)
    for (int kx = 0; kx < 3; ++kx)
      for (int ci = 0; ci < cin; ++ci)
        for (int co = 0; co < cout; ++co) {
          // A stride-1 transposed conv is a conv with swapped channels and flipped window.
          float v = transposed ? w[((std::size_t(ci) * cout + co) * 3 + (2 - ky)) * 3 + (2 - kx)]
                               : w[((std::size_t(co) * cin + ci) * 3 + ky) * 3 + kx];
          packed[(std::size_t(ky * 3 + kx) * cin + ci) * cout + co] = v;
        }
}

void conv3x3_f32_generic(const float* x, const float* packed, const float* bias,
                         const float* extra, float* y, int n, int h, int w, int cin, int cout,
                         Epilogue epi, int nthreads) {
  const long rows = long(n) * h;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> acc(std::size_t(w) * cout);
#pragma omp for schedule(static)
    for (long r = 0; r < rows; ++r) {
      const int b = int(r / h), oy = int(r % h);
      for (int ox = 0; ox < w; ++ox) std::copy(bias, bias + cout, acc.data() + std::size_t(ox) * cout);
      for (int ky = 0; ky < 3; ++ky) {
        const int iy = oy + ky - 1;
        if (iy < 0 || iy >= h) continue;
        const float* xrow = x + (std::size_t(b) * h + iy) * w * cin;
        for (int kx = 0; kx < 3; ++kx) {
          const float* wt = packed + std::size_t(ky * 3 + kx) * cin * cout;
          for (int ox = 0; ox < w; ++ox) {
            const int ix = ox + kx - 1;
            if (ix < 0 || ix >= w) continue;
            const float* xp = xrow + std::size_t(ix) * cin;
            float* a = acc.data() + std::size_t(ox) * cout;
            for (int ci = 0; ci < cin; ++ci) {
              const float xv = xp[ci];
              const float* wr = wt + std::size_t(ci) * cout;
              for (int co = 0; co < cout; ++co) a[co] += xv * wr[co];
            }
          }
        }
      }
      const std::size_t base = std::size_t(r) * w * cout;
      for (std::size_t i = 0; i < std::size_t(w) * cout; ++i) {
        float v = acc[i];
        if (epi == Epilogue::kRelu) {
          v = std::max(v, 0.0f);
        } else if (epi == Epilogue::kReluAddRelu) {
          v = std::max(std::max(v, 0.0f) + extra[base + i], 0.0f);
        } else {
          v += extra[base + i];
        }
        y[base + i] = v;
      }
    }
  }
}

}  // namespace redkern::cpu
