// pybind11 bindings of the CPU kernels (redkern._C). Tensors cross as raw addresses plus the
// element counts of their buffers; sizes are checked here before any memory is touched, and
// every check raises ValueError (std::invalid_argument) with what was wrong.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/epilogue_bindings.h"
#include "cpu/conv.h"

namespace py = pybind11;
using namespace redkern::cpu;
using redkern::Act;
using redkern::Residual;

namespace {

std::string str(std::int64_t v) { return std::to_string(v); }

template <typename T>
T* as_ptr(std::uintptr_t addr, const char* name) {
  if (addr == 0) throw std::invalid_argument(std::string("null pointer for ") + name);
  return reinterpret_cast<T*>(addr);
}

// The layer's sizes, as the messages name them.
struct Layer {
  int n, h, w, cin, cout, kh, kw;
  std::string input() const {
    return "input [N=" + str(n) + ", Cin=" + str(cin) + ", H=" + str(h) + ", W=" + str(w) + "]";
  }
  std::string weight() const {
    return "weight [Cout=" + str(cout) + ", Cin=" + str(cin) + ", " + str(kh) + "x" + str(kw) +
           "] (as a convolution)";
  }
};

void check_numel(const char* where, std::int64_t got, std::int64_t want, const char* name,
                 const std::string& because) {
  if (got != want)
    throw std::invalid_argument(std::string(where) + ": " + name + " has " + str(got) +
                                " elements, the kernel needs " + str(want) + " (" + because + ")");
}

// The weight's own sizes; `what` names the call.
void check_weight(const char* where, int cin, int cout, int kh, int kw) {
  if (cin < 1 || cout < 1 || kh < 1 || kw < 1)
    throw std::invalid_argument(std::string(where) +
                                ": the weight needs at least one input channel, one output "
                                "channel and a 1x1 window, got Cout=" + str(cout) + ", Cin=" +
                                str(cin) + ", window " + str(kh) + "x" + str(kw));
  // The kernels index one window of channels (and the packed weights' rows) with int.
  const std::int64_t window = std::int64_t(kh) * kw * (std::int64_t(cin > cout ? cin : cout) + 16);
  if (window > INT_MAX / 16)
    throw std::invalid_argument(std::string(where) + ": a " + str(kh) + "x" + str(kw) +
                                " window of " + str(cin) + " -> " + str(cout) +
                                " channels is too large for the CPU kernels");
}

// The input's sizes, the weight's and the padding of one call (conv2d, conv2d_weight_grad).
void check_layer(const char* where, const Layer& L, int ph, int pw) {
  if (L.n < 1 || L.h < 1 || L.w < 1 || L.cin < 1)
    throw std::invalid_argument(std::string(where) + ": the input needs N, Cin, H, W >= 1, got " +
                                L.input() + " for the " + L.weight());
  check_weight(where, L.cin, L.cout, L.kh, L.kw);
  if (ph < 0 || ph >= L.kh || pw < 0 || pw >= L.kw)
    throw std::invalid_argument(std::string(where) + ": padding (" + str(ph) + ", " + str(pw) +
                                ") must be 0..k-1 on each axis for the " + L.weight());
}

const char* act_name(int code) {
#define REDKERN_ACT(name, c) if (code == c) return #name;
#define REDKERN_RESIDUAL(name, c)
#include "redkern/epilogue.def"
#undef REDKERN_ACT
#undef REDKERN_RESIDUAL
  return "unknown";
}

bool sloped(int act) { return act == int(Act::kLEAKY_RELU) || act == int(Act::kPRELU); }

// Byte ranges [a, a + an) and [b, b + bn) share memory.
bool overlaps(std::uintptr_t a, std::int64_t an, std::uintptr_t b, std::int64_t bn) {
  return an > 0 && bn > 0 && a < b + std::uintptr_t(bn) && b < a + std::uintptr_t(an);
}

Isa isa_or_selected(const std::string& isa) {
  return isa.empty() ? selected_isa() : parse_isa(isa.c_str());
}

// A slope array for `act` (which: "slope" or "slope2"): present with `cout` floats exactly
// when the activation reads one. Returns the pointer (null when none).
const float* slope_array(const char* which, const char* act_field, int act, std::uintptr_t ptr,
                         std::int64_t numel, int cout) {
  if (sloped(act)) {
    if (ptr == 0)
      throw std::invalid_argument(std::string("conv2d: ") + act_field + " " + act_name(act) +
                                  " reads a per-channel slope array; " + which + " is missing");
    check_numel("conv2d", numel, cout, which, std::string("one fp32 slope per output channel, Cout=") + str(cout));
    return reinterpret_cast<const float*>(ptr);
  }
  if (ptr != 0 || numel != 0)
    throw std::invalid_argument(std::string("conv2d: ") + which + " given, but " + act_field +
                                " " + act_name(act) + " reads no slope");
  return nullptr;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "redkern CPU kernels (fused stride-1 KxK convolutions on NHWC activations)";
  m.attr("cuda_status") = REDKERN_CUDA_STATUS;
  redkern::export_epilogue_codes(m);
  m.attr("few_cout_max") = kFewCoutMax;

  py::enum_<DType>(m, "DType")
      .value("float32", DType::kFloat32)
      .value("bfloat16", DType::kBFloat16);
  py::enum_<Algorithm>(m, "Algorithm")
      .value("direct", Algorithm::kDirect)
      .value("winograd4x4", Algorithm::kWinograd4x4)
      .value("direct_bf16dot", Algorithm::kDirectBf16Dot)
      .value("direct_few_cout", Algorithm::kDirectFewCout)
      .value("winograd4x4_bf16dot", Algorithm::kWinograd4x4Bf16Dot)
      .value("winograd4x4_amx", Algorithm::kWinograd4x4Amx)
      .value("winograd6x6", Algorithm::kWinograd6x6);

  m.def("selected_isa", [] { return std::string(isa_name(selected_isa())); },
        "Instruction set of the kernels used by default: the best this CPU has, or the one "
        "REDKERN_CPU_ISA forces (ValueError if it names one this CPU lacks)");
  m.def("supported_isas", [] {
        std::vector<std::string> names;
        for (int i = int(Isa::kGeneric); i <= int(Isa::kAvx512); ++i)
          if (isa_supported(Isa(i))) names.push_back(isa_name(Isa(i)));
        return names;
      },
      "Every instruction set whose kernels can run on this CPU, lowest first");
  m.def("bf16_dot_supported", &bf16_dot_supported,
        "This CPU has AVX512_BF16, so Algorithm.direct_bf16dot and winograd4x4_bf16dot run (with "
        "the avx512 kernels)");
  m.def("bf16_dot_speedup", &measured_bf16_dot_speedup,
        "vdpbf16ps multiply-adds per second over fp32 FMAs on one thread of this CPU, measured on "
        "the first call (about 5 ms); 0 without AVX512_BF16");
  m.def("amx_supported", &amx_supported,
        "This CPU has AMX-BF16 and the OS grants this process the tile state, so "
        "Algorithm.winograd4x4_amx runs (with the avx512 kernels)");

  m.def(
      "packed_weight_size",
      [](int cin, int cout, int kh, int kw, Algorithm algorithm) {
        check_weight("packed_weight_size", cin, cout, kh, kw);
        return packed_weight_size(cin, cout, kh, kw, algorithm);
      },
      py::arg("cin"), py::arg("cout"), py::arg("kh"), py::arg("kw"), py::arg("algorithm"),
      "32-bit words in the packed weight of a cin -> cout, kh x kw layer for this algorithm");

  m.def(
      "pack_weight",
      [](std::uintptr_t w, std::int64_t w_numel, int cin, int cout, int kh, int kw,
         bool transposed, Algorithm algorithm, std::uintptr_t packed, std::int64_t packed_numel) {
        check_weight("pack_weight", cin, cout, kh, kw);
        const std::string shape =
            transposed ? "ConvTranspose2d [Cin=" + str(cin) + ", Cout=" + str(cout) + ", " +
                             str(kh) + ", " + str(kw) + "]"
                       : "Conv2d [Cout=" + str(cout) + ", Cin=" + str(cin) + ", " + str(kh) +
                             ", " + str(kw) + "]";
        check_numel("pack_weight", w_numel, std::int64_t(kh) * kw * cin * cout, "weight", shape);
        check_numel("pack_weight", packed_numel,
                    std::int64_t(packed_weight_size(cin, cout, kh, kw, algorithm)),
                    "packed weight", "packed_weight_size for " + shape);
        py::gil_scoped_release nogil;
        pack_weight(as_ptr<const float>(w, "weight"), cin, cout, kh, kw, transposed, algorithm,
                    as_ptr<float>(packed, "packed weight"));
      },
      py::arg("w"), py::arg("w_numel"), py::arg("cin"), py::arg("cout"), py::arg("kh"),
      py::arg("kw"), py::arg("transposed"), py::arg("algorithm"), py::arg("packed"),
      py::arg("packed_numel"),
      "Re-lay out an fp32 Conv2d ([cout,cin,kh,kw]) or ConvTranspose2d ([cin,cout,kh,kw]) "
      "weight; a transposed one is packed as its equivalent convolution");

  m.def(
      "conv2d",
      [](std::uintptr_t x, std::int64_t x_numel, std::uintptr_t packed, std::int64_t packed_numel,
         std::uintptr_t bias, std::int64_t bias_numel, std::uintptr_t extra,
         std::int64_t extra_numel, std::uintptr_t y, std::int64_t y_numel, std::uintptr_t slope,
         std::int64_t slope_numel, std::uintptr_t slope2, std::int64_t slope2_numel, int n, int h,
         int w, int cin, int cout, int kh, int kw, int ph, int pw, int act, int act2,
         int residual, float alpha, float beta, DType dtype, Algorithm algorithm, int nthreads,
         const std::string& isa, std::uintptr_t x_mask, std::int64_t x_mask_numel) {
        const char* where = "conv2d";
        const Layer L{n, h, w, cin, cout, kh, kw};
        check_layer(where, L, ph, pw);
        const std::int64_t oh64 = std::int64_t(h) + 2 * ph - kh + 1, ow64 = std::int64_t(w) + 2 * pw - kw + 1;
        if (oh64 > INT_MAX || ow64 > INT_MAX)
          throw std::invalid_argument(std::string(where) + ": the output is too large for the CPU kernels (" +
                                      L.input() + ")");
        const int oh = int(oh64), ow = int(ow64);
        if (oh < 1 || ow < 1)
          throw std::invalid_argument(std::string(where) + ": a " + str(kh) + "x" + str(kw) +
                                      " window with padding (" + str(ph) + ", " + str(pw) +
                                      ") leaves no output of the " + L.input());
        // The kernels index one padded row (and a few rows of scratch) with int.
        const std::int64_t widest =
            std::int64_t(w + 2 * pw) * (padded_cout(cin) > padded_cout(cout) ? padded_cout(cin) : padded_cout(cout)) * 4;
        if (widest > INT_MAX)
          throw std::invalid_argument(std::string(where) + ": image rows too wide for the CPU kernels (" +
                                      L.input() + ", Cout=" + str(cout) + ")");
        const std::int64_t in_pixels = std::int64_t(n) * h * w, out_pixels = std::int64_t(n) * oh * ow;
        const std::string out_shape = "output [N=" + str(n) + ", Cout=" + str(cout) + ", OH=" +
                                      str(oh) + ", OW=" + str(ow) + "]";
        check_numel(where, x_numel, in_pixels * cin, "input", L.input());
        check_numel(where, y_numel, out_pixels * cout, "output", out_shape);
        check_numel(where, bias_numel, cout, "bias", "one fp32 bias per output channel, Cout=" + str(cout));
        check_numel(where, packed_numel, std::int64_t(packed_weight_size(cin, cout, kh, kw, algorithm)),
                    "packed weight", "packed_weight_size for the " + L.weight());

        if (!redkern::act_is_valid(act))
          throw std::invalid_argument(std::string(where) + ": unknown activation code act=" + str(act));
        if (!redkern::act_is_valid(act2))
          throw std::invalid_argument(std::string(where) + ": unknown activation code act2=" + str(act2));
        if (!redkern::residual_is_valid(residual))
          throw std::invalid_argument(std::string(where) + ": unknown residual code " + str(residual));
        const bool after = residual == int(Residual::kAFTER_ACT);
        if (act2 != int(Act::kIDENTITY) && !after)
          throw std::invalid_argument(std::string(where) + ": act2 " + act_name(act2) +
                                      " applies after the residual join, so it needs residual "
                                      "AFTER_ACT");
        if (!std::isfinite(alpha) || !std::isfinite(beta))
          throw std::invalid_argument(std::string(where) + ": alpha and beta must be finite, got " +
                                      std::to_string(alpha) + " and " + std::to_string(beta));
        redkern::EpilogueParams epi;
        epi.act = Act(act);
        epi.act2 = Act(act2);
        epi.residual = Residual(residual);
        epi.alpha = alpha;
        epi.beta = beta;
        epi.slope = slope_array("slope", "act", act, slope, slope_numel, cout);
        epi.slope2 = slope_array("slope2", "act2", act2, slope2, slope2_numel, cout);

        const void* extra_p = nullptr;
        if (residual != int(Residual::kNONE)) {
          if (extra == 0)
            throw std::invalid_argument(std::string(where) + ": the residual join needs extra (the " +
                                        out_shape + "'s skip/residual); none given");
          check_numel(where, extra_numel, out_pixels * cout, "extra (skip/residual)", out_shape);
          extra_p = reinterpret_cast<const void*>(extra);
        } else if (extra != 0 || extra_numel != 0) {
          throw std::invalid_argument(std::string(where) +
                                      ": extra given, but residual NONE reads none");
        }

        const std::int64_t elem = dtype == DType::kBFloat16 ? 2 : 4;
        const std::int64_t y_bytes = y_numel * elem;
        struct Input {
          const char* name;
          std::uintptr_t ptr;
          std::int64_t bytes;
        } inputs[] = {{"input", x, x_numel * elem},
                      {"extra (skip/residual)", extra, extra_p ? extra_numel * elem : 0},
                      {"packed weight", packed, packed_numel * 4},
                      {"bias", bias, bias_numel * 4},
                      {"slope", slope, epi.slope ? slope_numel * 4 : 0},
                      {"slope2", slope2, epi.slope2 ? slope2_numel * 4 : 0}};
        for (const Input& in : inputs)
          if (overlaps(y, y_bytes, in.ptr, in.bytes))
            throw std::invalid_argument(std::string(where) + ": the output must not overlap the " +
                                        in.name);

        const Isa chosen = isa_or_selected(isa);
        ConvArgs args{as_ptr<const void>(x, "input"),
                      as_ptr<const float>(packed, "packed weight"),
                      as_ptr<const float>(bias, "bias"),
                      extra_p,
                      as_ptr<void>(y, "output"),
                      n, h, w, oh, ow, cin, cout, kh, kw, ph, pw,
                      epi,
                      nthreads < 1 ? 1 : nthreads};
        if (x_mask != 0 || x_mask_numel != 0) {
          check_numel(where, x_mask_numel, x_numel, "input mask", "laid out as the " + L.input());
          if (overlaps(y, y_bytes, x_mask, x_mask_numel * elem))
            throw std::invalid_argument(std::string(where) + ": the output must not overlap the input mask");
          args.x_mask = as_ptr<const void>(x_mask, "input mask");
        }
        py::gil_scoped_release nogil;
        conv2d(args, dtype, algorithm, chosen);
      },
      py::arg("x"), py::arg("x_numel"), py::arg("packed"), py::arg("packed_numel"),
      py::arg("bias"), py::arg("bias_numel"), py::arg("extra"), py::arg("extra_numel"),
      py::arg("y"), py::arg("y_numel"), py::arg("slope"), py::arg("slope_numel"),
      py::arg("slope2"), py::arg("slope2_numel"), py::arg("n"), py::arg("h"), py::arg("w"),
      py::arg("cin"), py::arg("cout"), py::arg("kh"), py::arg("kw"), py::arg("ph"),
      py::arg("pw"), py::arg("act"), py::arg("act2"), py::arg("residual"), py::arg("alpha"),
      py::arg("beta"), py::arg("dtype"), py::arg("algorithm"), py::arg("nthreads"),
      py::arg("isa") = "", py::arg("x_mask") = 0, py::arg("x_mask_numel") = 0,
      "y = epilogue(conv(x, packed), bias, extra) on NHWC buffers of `dtype` (bias and slopes "
      "fp32): a stride-1 convolution with padding (ph, pw), 0 <= p < k, output "
      "[n, h + 2ph - kh + 1, w + 2pw - kw + 1, cout]; act/act2/residual are the codes of "
      "redkern/epilogue.def. isa '' means selected_isa(). x_mask (laid out as x; Winograd "
      "only): x is read as x_mask <= 0 ? 0 : x");

  m.def(
      "conv2d_weight_grad",
      [](std::uintptr_t x, std::int64_t x_numel, std::uintptr_t g, std::int64_t g_numel,
         std::uintptr_t dw, std::int64_t dw_numel, std::uintptr_t db, std::int64_t db_numel, int n,
         int h, int w, int cin, int cout, int kh, int kw, int ph, int pw, DType dtype,
         Algorithm algorithm, int nthreads, const std::string& isa, std::uintptr_t g_mask,
         std::int64_t g_mask_numel) {
        const char* where = "conv2d_weight_grad";
        const Layer L{n, h, w, cin, cout, kh, kw};
        check_layer(where, L, ph, pw);
        const std::int64_t oh = std::int64_t(h) + 2 * ph - kh + 1, ow = std::int64_t(w) + 2 * pw - kw + 1;
        if (oh < 1 || ow < 1 || oh > INT_MAX || ow > INT_MAX)
          throw std::invalid_argument(std::string(where) + ": a " + str(kh) + "x" + str(kw) +
                                      " window with padding (" + str(ph) + ", " + str(pw) +
                                      ") leaves no output of the " + L.input());
        const std::string grad_shape = "gradient [N=" + str(n) + ", Cout=" + str(cout) + ", OH=" +
                                       str(oh) + ", OW=" + str(ow) + "]";
        check_numel(where, x_numel, std::int64_t(n) * h * w * cin, "input", L.input());
        check_numel(where, g_numel, std::int64_t(n) * oh * ow * cout, "gradient", grad_shape);
        check_numel(where, dw_numel, std::int64_t(cout) * cin * kh * kw, "weight gradient",
                    "fp32 [Cout, Cin, kh, kw] of the " + L.weight());
        if (db != 0 || db_numel != 0)
          check_numel(where, db_numel, cout, "bias gradient", "one fp32 value per output channel");
        const std::int64_t elem = dtype == DType::kBFloat16 ? 2 : 4;
        if (overlaps(dw, dw_numel * 4, x, x_numel * elem) || overlaps(dw, dw_numel * 4, g, g_numel * elem) ||
            overlaps(db, db_numel * 4, x, x_numel * elem) || overlaps(db, db_numel * 4, g, g_numel * elem) ||
            overlaps(db, db_numel * 4, dw, dw_numel * 4))
          throw std::invalid_argument(std::string(where) + ": the gradients must not overlap the inputs "
                                      "or each other");
        const Isa chosen = isa_or_selected(isa);
        WgradArgs args{as_ptr<const void>(x, "input"), as_ptr<const void>(g, "gradient"),
                       n, h, w, int(oh), int(ow), cin, cout, kh, kw, ph, pw, nthreads < 1 ? 1 : nthreads};
        if (g_mask != 0 || g_mask_numel != 0) {
          check_numel(where, g_mask_numel, g_numel, "gradient mask", "laid out as the " + grad_shape);
          args.g_mask = as_ptr<const void>(g_mask, "gradient mask");
        }
        float* db_p = db != 0 ? reinterpret_cast<float*>(db) : nullptr;
        py::gil_scoped_release nogil;
        conv2d_weight_grad(args, as_ptr<float>(dw, "weight gradient"), db_p, dtype, algorithm, chosen);
      },
      py::arg("x"), py::arg("x_numel"), py::arg("g"), py::arg("g_numel"), py::arg("dw"),
      py::arg("dw_numel"), py::arg("db"), py::arg("db_numel"), py::arg("n"), py::arg("h"),
      py::arg("w"), py::arg("cin"), py::arg("cout"), py::arg("kh"), py::arg("kw"), py::arg("ph"),
      py::arg("pw"), py::arg("dtype"), py::arg("algorithm"), py::arg("nthreads"),
      py::arg("isa") = "", py::arg("g_mask") = 0, py::arg("g_mask_numel") = 0,
      "dw [cout, cin, kh, kw] and db [cout] (fp32; db 0 = not wanted) of a stride-1 convolution "
      "with padding (ph, pw), from its NHWC input x [n, h, w, cin] and the NHWC gradient g at "
      "its output [n, oh, ow, cout], both of `dtype`; algorithm direct or winograd4x4 (3x3, "
      "padding 1); deterministic for a given nthreads. g_mask (laid out as g; Winograd only): g is "
      "read as g_mask <= 0 ? 0 : g");

  m.def(
      "measure_fma_peak_gflops",
      [](int nthreads, const std::string& isa) {
        const Isa chosen = isa_or_selected(isa);
        py::gil_scoped_release nogil;
        return measure_fma_peak_gflops(nthreads, chosen);
      },
      py::arg("nthreads"), py::arg("isa") = "",
      "fp32 FMA throughput of this CPU's widest vectors (independent FMA chains), GFLOP/s");
}
