// conv2d_weight_grad: runs the ISA's weight-gradient kernel (wgrad.h) into per-thread
// partials, adds them in thread order and lays the sum out as a Conv2d weight. Compiled
// without ISA flags (it may use the standard library).
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "cpu/dispatch.h"
#include "cpu/wgrad.h"

namespace redkern::cpu {

void conv2d_weight_grad(const WgradArgs& a, float* dw, float* db, DType dtype, Algorithm algorithm,
                        Isa isa) {
  const IsaKernels& k = kernels_for(isa);
  const bool bf16 = dtype == DType::kBFloat16;
  const int taps = a.kh * a.kw, cin_pad = padded_cout(a.cin), cout_pad = padded_cout(a.cout);
  const bool vec_g = wgrad::direct_vectorises_g(a.cin, a.cout);
  const int ca_pad = padded_cout(vec_g ? a.cout : a.cin), cb = vec_g ? a.cin : a.cout;
  WgradFn fn = nullptr;
  std::size_t main_floats = 0;
  switch (algorithm) {
    case Algorithm::kDirect:
      fn = bf16 ? k.wgrad_direct_bf16 : k.wgrad_direct_f32;
      main_floats = std::size_t(taps) * cb * ca_pad;
      break;
    case Algorithm::kWinograd4x4:
      if (a.kh != 3 || a.kw != 3 || a.ph != 1 || a.pw != 1)
        throw std::invalid_argument(
            "conv2d_weight_grad: the Winograd F(4x4,3x3) algorithm takes 3x3 kernels with padding "
            "(1, 1), not a " + std::to_string(a.kh) + "x" + std::to_string(a.kw) + " kernel with padding (" +
            std::to_string(a.ph) + ", " + std::to_string(a.pw) + ")");
      fn = bf16 ? k.wgrad_winograd4_bf16 : k.wgrad_winograd4_f32;
      main_floats = std::size_t(36) * a.cout * cin_pad;
      break;
    default:
      throw std::invalid_argument("conv2d_weight_grad: the weight gradient runs the direct or the "
                                  "Winograd F(4x4,3x3) algorithm only");
  }
  if (a.g_mask != nullptr && algorithm != Algorithm::kWinograd4x4)
    throw std::invalid_argument("conv2d_weight_grad: a gradient mask (the ReLU-derivative prologue) runs "
                                "with the Winograd F(4x4,3x3) algorithm only");
  const std::size_t stride = (main_floats + cout_pad + 15) / 16 * 16;
  const int nthreads = a.nthreads < 1 ? 1 : a.nthreads;
  std::unique_ptr<float[]> partials(new float[stride * nthreads]);
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int t = 0; t < nthreads; ++t) std::fill_n(partials.get() + std::size_t(t) * stride, stride, 0.0f);
  WgradArgs args = a;
  args.nthreads = nthreads;
  fn(args, partials.get(), stride);

  // Partials added in thread order, in fp64: the result depends on the thread count only.
  auto total = [&](std::size_t i) {
    double v = 0;
    for (int t = 0; t < nthreads; ++t) v += partials[std::size_t(t) * stride + i];
    return v;
  };
  if (db != nullptr)
    for (int co = 0; co < a.cout; ++co) db[co] = float(total(main_floats + co));
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int co = 0; co < a.cout; ++co)
    for (int ci = 0; ci < a.cin; ++ci) {
      float* out = dw + (std::size_t(co) * a.cin + ci) * taps;
      if (algorithm == Algorithm::kDirect) {
        for (int t = 0; t < taps; ++t)
          out[t] = float(total(vec_g ? (std::size_t(t) * a.cin + ci) * ca_pad + co
                                     : (std::size_t(t) * a.cout + co) * ca_pad + ci));
        continue;
      }
      // dW = G^T dU G (the adjoint of U = G g G^T), as (G^T dU) G.
      double gu[3][6] = {};
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) {
          const double d = total((std::size_t(i * 6 + j) * a.cout + co) * cin_pad + ci);
          for (int r = 0; r < 3; ++r) gu[r][j] += winograd::kG[i][r] * d;
        }
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) {
          double v = 0;
          for (int j = 0; j < 6; ++j) v += gu[r][j] * winograd::kG[j][c];
          out[r * 3 + c] = float(v);
        }
    }
}

}  // namespace redkern::cpu
