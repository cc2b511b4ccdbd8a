// Weight re-layout for each algorithm (done once per model by the Python backend's cache).
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/kernel_util.h"
#include "cpu/winograd.h"

namespace redkern::cpu {

namespace {

// Conv2d-layout tap w[co][ci][ky][kx] of a (possibly transposed) weight. A stride-1
// transposed conv is the conv with channels swapped and the window flipped.
float conv_tap(const float* w, int cin, int cout, int kh, int kw, bool transposed, int co,
               int ci, int ky, int kx) {
  return transposed
             ? w[((std::size_t(ci) * cout + co) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)]
             : w[((std::size_t(co) * cin + ci) * kh + ky) * kw + kx];
}

// U = (G g) G^T in double for one (co, ci) pair, G being the tile's (A x 3); tap(t) reads the
// window in row-major order.
template <int A, class Tap>
void winograd_weight(const double (&G)[A][3], const Tap& tap, double u[A * A]) {
  double gg[A][3] = {};
  for (int i = 0; i < A; ++i)
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) gg[i][b] += G[i][a] * double(tap(a * 3 + b));
  for (int i = 0; i < A; ++i)
    for (int k = 0; k < A; ++k)
      u[i * A + k] = gg[i][0] * G[k][0] + gg[i][1] * G[k][1] + gg[i][2] * G[k][2];
}

// Pairs of input channels in the bf16 Winograd layouts: cin rounded up to 32 (AMX's K step).
std::size_t winograd_bf16_pairs(int cin) { return std::size_t(div_up(cin, 32)) * 16; }

}  // namespace

std::size_t packed_weight_size(int cin, int cout, int kh, int kw, Algorithm algorithm) {
  const std::size_t cp = padded_cout(cout), taps = std::size_t(kh) * kw;
  switch (algorithm) {
    case Algorithm::kDirect: return taps * cin * cp;
    case Algorithm::kWinograd4x4:
    case Algorithm::kWinograd4x4Bf16Dot:
    case Algorithm::kWinograd4x4Amx:
      if (kh != 3 || kw != 3)
        throw std::invalid_argument("the Winograd F(4x4,3x3) algorithm takes 3x3 kernels only, not " +
                                    std::to_string(kh) + "x" + std::to_string(kw));
      // fp32 U: [36][cin][cout_pad] floats; bf16 U: [36][cin_pairs][cout_pad] pairs
      return 36 * cp * (algorithm == Algorithm::kWinograd4x4 ? std::size_t(cin) : winograd_bf16_pairs(cin));
    case Algorithm::kWinograd6x6:
      if (kh != 3 || kw != 3)
        throw std::invalid_argument("the Winograd F(6x6,3x3) algorithm takes 3x3 kernels only, not " +
                                    std::to_string(kh) + "x" + std::to_string(kw));
      return 64 * cp * std::size_t(cin);  // U: [64][cin][cout_pad] floats
    case Algorithm::kDirectBf16Dot: return taps * div_up(cin, 2) * cp;
    case Algorithm::kDirectFewCout: return taps * cout * padded_cout(cin);
  }
  throw std::invalid_argument("unknown convolution algorithm");
}

void pack_weight(const float* w, int cin, int cout, int kh, int kw, bool transposed,
                 Algorithm algorithm, float* packed) {
  const std::size_t cp = padded_cout(cout), taps = std::size_t(kh) * kw;
  std::memset(packed, 0, packed_weight_size(cin, cout, kh, kw, algorithm) * sizeof(float));
  // Weights change every training step, so packing is on the step's path: in parallel.
#pragma omp parallel for schedule(static)
  for (int co = 0; co < cout; ++co)
    for (int ci = 0; ci < cin; ++ci) {
      auto tap = [&](std::size_t t) {
        return conv_tap(w, cin, cout, kh, kw, transposed, co, ci, int(t / kw), int(t % kw));
      };
      switch (algorithm) {
        case Algorithm::kDirect:  // [cout_pad/16][tap][cin][16]: each 16 channels read in order
          for (std::size_t t = 0; t < taps; ++t)
            packed[((std::size_t(co / 16) * taps + t) * cin + ci) * 16 + co % 16] = tap(t);
          break;
        case Algorithm::kWinograd4x4: {  // U = (G g) G^T in double, as [36][cin][cout_pad]
          double u[36];
          winograd_weight(winograd::kG, tap, u);
          for (int pos = 0; pos < 36; ++pos)
            packed[(std::size_t(pos) * cin + ci) * cp + co] = float(u[pos]);
          break;
        }
        case Algorithm::kWinograd6x6: {  // the same with F(6x6,3x3)'s G, as [64][cin][cout_pad]
          double u[64];
          winograd_weight(winograd::kG6, tap, u);
          for (int pos = 0; pos < 64; ++pos)
            packed[(std::size_t(pos) * cin + ci) * cp + co] = float(u[pos]);
          break;
        }
        case Algorithm::kWinograd4x4Bf16Dot:
        case Algorithm::kWinograd4x4Amx: {  // U as bf16 pairs [36][cin_pairs][cout_pad][2]
          double u[36];
          winograd_weight(winograd::kG, tap, u);
          auto* halves = reinterpret_cast<bf16_t*>(packed);
          for (int pos = 0; pos < 36; ++pos) {
            const std::size_t word = (std::size_t(pos) * winograd_bf16_pairs(cin) + ci / 2) * cp + co;
            halves[2 * word + (ci & 1)] = f32_to_bf16(float(u[pos]));
          }
          break;
        }
        case Algorithm::kDirectFewCout:  // [cout][tap][cin_pad]
          for (std::size_t t = 0; t < taps; ++t)
            packed[(std::size_t(co) * taps + t) * padded_cout(cin) + ci] = tap(t);
          break;
        case Algorithm::kDirectBf16Dot: {  // bf16 pairs (ci even, ci odd) per 32-bit word
          auto* halves = reinterpret_cast<bf16_t*>(packed);
          for (std::size_t t = 0; t < taps; ++t) {
            const std::size_t word = (t * div_up(cin, 2) + ci / 2) * cp + co;
            halves[2 * word + (ci & 1)] = f32_to_bf16(tap(t));
          }
          break;
        }
      }
    }
}

}  // namespace redkern::cpu
