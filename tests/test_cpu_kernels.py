"""The CPU kernels (csrc/cpu, redkern._C) against ``redkern.testing.reference``, for every
ISA this CPU runs and every algorithm that can run a layer: every epilogue, window and
padding, transposed or not, odd channel counts and image sizes, fp32 and bf16.

Layers come from ``redkern.testing.layer_case`` (outputs O(1)); errors are
``max |y - ref| / max |ref|`` against the float64 reference on the same (for bf16: the same
bf16-rounded) inputs, within ``testing.TOLERANCE``. Inputs are fresh random numbers every run
(conftest.py seeds each test and prints the seed of a failure). Outputs are written into NaN-filled
buffers (``testing.poisoned_nhwc``), so an element a kernel skips fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch

import redkern
from redkern import _C
from redkern import testing as T
from redkern.backends import cpu
from redkern.backends.common import BackendUnavailable
from redkern.epilogue import Act, Epilogue, Residual

A = _C.Algorithm
ISAS = _C.supported_isas()
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# The shared (kernel, padding) table plus non-square windows with unequal paddings.
KERNELS = T.KERNELS + [((3, 5), (1, 2)), ((1, 3), (0, 1)), ((5, 3), (4, 0)), ((3, 3), (0, 1)), ((3, 3), (1, 0)),
                       ((3, 3), (2, 1))]  # the last three: Winograd with padding 0 on one axis (row strips)
EPILOGUE_NAMES = list(T.EPILOGUES)


def _window(case) -> tuple[int, int]:
    return tuple(case.weight.shape[2:])


def run(case, algorithm, isa) -> torch.Tensor:
    """The layer through the backend with a forced algorithm and ISA, into a poisoned buffer."""
    out = T.poisoned_nhwc(case.out_shape, case.x.dtype)
    y = cpu.conv2d(*case.tensors, **case.options, out=out, algorithm=algorithm, isa=isa)
    assert y.data_ptr() == out.data_ptr()
    return y


def algorithms(case, isa) -> list:
    cin, cout = case.x.shape[1], case.cout
    return cpu.runnable_algorithms(cin, cout, _window(case), case.padding, case.transposed,
                                   case.x.dtype, isa)


def tolerance(case, algorithm) -> float:
    """``testing.TOLERANCE``, or the bf16-GEMM Winograd's for the case's input channels (its
    transformed operands are rounded)."""
    return T.cpu_tolerance(case.x.dtype, algorithm, case.x.shape[1])


def check_case(case, isas=ISAS, what="") -> int:
    """Every algorithm on every ISA in ``isas`` against the reference; returns the number
    of runs (so a test can assert it ran what it meant to)."""
    want, scale = T.reference(case), T.magnitude(case)  # one output of a 1x1 image may cancel to ~0
    runs = 0
    for isa in isas:
        for algo in algorithms(case, isa):
            got = run(case, algo, isa)
            try:
                T.assert_close(got, want, tolerance(case, algo), scale)
            except AssertionError as e:
                raise AssertionError(f"{algo.name} on {isa}, {what} {_describe(case)}: {e}") from None
            runs += 1
    return runs


def _describe(case) -> str:
    n, cin, h, w = case.x.shape
    kind = "transposed " if case.transposed else ""
    return (f"{kind}{cin}->{case.cout} {'x'.join(map(str, _window(case)))} padding {case.padding} "
            f"on {n}x{h}x{w} {str(case.x.dtype).removeprefix('torch.')}, {case.epilogue.formula()}")


# --- every epilogue, through every algorithm ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
@pytest.mark.parametrize("isa", ISAS)
def test_every_epilogue(isa, epilogue, dtype):
    """Each epilogue on layers that take every algorithm: 3x3 (direct, Winograd, bf16-dot),
    cout 3 (few-cout), 5x5 (run-time window) and 1x1 (the GEMM over all pixels)."""
    layers = [
        dict(n=2, cin=17, cout=24, h=7, w=9, kernel=3, transposed=False),
        dict(n=1, cin=20, cout=3, h=6, w=5, kernel=3, transposed=True),
        dict(n=1, cin=5, cout=19, h=7, w=6, kernel=5, transposed=False),
        dict(n=2, cin=9, cout=33, h=7, w=15, kernel=1, transposed=True),
    ]
    runs = 0
    for layer in layers:
        case = T.layer_case(**layer, epilogue=epilogue, dtype=dtype)
        runs += check_case(case, isas=[isa])
    assert runs >= 4 * 1 + 2 + 1  # direct everywhere, Winograd twice, few-cout once


# --- every window and padding, channel counts 1..128 -------------------------------------------

CHANNELS = [(1, 5), (3, 17), (17, 3), (64, 1), (5, 128), (128, 64), (2, 2)]


def _image_for(kh: int, kw: int) -> tuple[int, int, int]:
    """(n, h, w): odd sizes, batch 2 for small windows, small images for big ones."""
    if max(kh, kw) <= 3:
        return 2, 9, 7
    if max(kh, kw) <= 5:
        return 1, 9, 11
    return 1, 11, 13


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "transposed"])
@pytest.mark.parametrize("kernel,padding", KERNELS, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_window_and_padding(kernel, padding, transposed, dtype):
    """Every (kernel, padding) of testing.KERNELS and non-square ones, every ISA and algorithm,
    channel counts from 1 to 128 (odd ones too); the epilogue rotates through the table."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    n, h, w = _image_for(kh, kw)
    for i, (cin, cout) in enumerate(CHANNELS):
        epilogue = EPILOGUE_NAMES[(i + KERNELS.index((kernel, padding)) * 5 + transposed) % len(EPILOGUE_NAMES)]
        case = T.layer_case(n, cin, cout, h, w, kernel=kernel, padding=padding, transposed=transposed,
                            epilogue=epilogue, dtype=dtype)
        check_case(case)


# --- RED-Net's layers on awkward image sizes ---------------------------------------------------

# (cin, cout, transposed, epilogue): the layers RED-Net's three ops make, and wider ones.
RED_LAYERS = [(1, 64, False, "relu"), (64, 64, False, "relu"), (64, 64, True, "relu_add_relu"),
              (64, 1, True, "add_residual"), (3, 64, False, "relu"), (64, 3, True, "add_residual"),
              (5, 7, True, "relu"), (128, 128, True, "relu_add_relu")]
SHAPES = [(1, 1, 1), (1, 1, 3), (1, 3, 1), (1, 5, 7), (1, 37, 53), (2, 9, 6)]  # (n, h, w)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_red_net_layers(shape, dtype):
    n, h, w = shape
    for cin, cout, transposed, epilogue in RED_LAYERS:
        if (cin, cout) == (128, 128) and h * w > 100:
            continue  # the wide layer on the small images only (test time)
        case = T.layer_case(n, cin, cout, h, w, kernel=3, transposed=transposed, epilogue=epilogue,
                            dtype=dtype)
        check_case(case)


WINOGRAD_FP32 = [A.winograd4x4, A.winograd6x6]


@pytest.mark.parametrize("algo", WINOGRAD_FP32, ids=lambda a: a.name)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,w", [(4, 4), (8, 12), (5, 5), (6, 7), (9, 2), (2, 9), (13, 17),
                                 (12, 18), (11, 10), (7, 1), (1, 16), (23, 22)])
def test_winograd_tile_tails(isa, h, w, algo):
    """4x4 and 6x6 output tiles: full tiles only, and every count of rows/columns past the last
    full tile (1-3 for F4, 1-5 for F6); batch 3 so blocks of tiles straddle images; 64 -> 64 as
    in RED-Net."""
    case = T.layer_case(3, 64, 64, h, w, kernel=3, transposed=True, epilogue="relu_add_relu")
    y = run(case, algo, isa)
    T.assert_close(y, T.reference(case), T.cpu_tolerance(torch.float32, algo))


@pytest.mark.parametrize("algo", WINOGRAD_FP32, ids=lambda a: a.name)
@pytest.mark.parametrize("epilogue", ["relu", "prelu_then_leaky"])
@pytest.mark.parametrize("isa", ISAS)
def test_winograd_many_blocks(isa, epilogue, algo):
    """An image with more tiles than one block holds, so every thread runs several blocks,
    the last one partial; the fixed and the general epilogue."""
    case = T.layer_case(1, 64, 64, 75, 93, kernel=3, epilogue=epilogue)
    y = run(case, algo, isa)
    T.assert_close(y, T.reference(case), T.cpu_tolerance(torch.float32, algo))


def test_winograd6_is_more_accurate_than_its_tolerance_needs():
    """F(6x6,3x3)'s error on a RED-Net layer sits between F(4x4)'s and its own tolerance: a check
    that WINOGRAD6_TOLERANCE is not so loose that a broken transform would pass, and that the
    tile really is F6 (its error is measurably larger than F4's on the same layer)."""
    errs = {}
    for algo in WINOGRAD_FP32:
        worst = 0.0
        for seed in range(3):
            case = T.layer_case(1, 64, 64, 48, 48, kernel=3, epilogue="identity",
                                generator=torch.Generator().manual_seed(seed))
            worst = max(worst, T.max_rel_error(run(case, algo, ISAS[-1]), T.reference(case)))
        errs[algo.name] = worst
    assert errs["winograd4x4"] < errs["winograd6x6"] < T.WINOGRAD6_TOLERANCE / 2, errs


def test_fp32_winograd_tile_choice(monkeypatch):
    """F(4x4,3x3) by default; REDKERN_CPU_WINOGRAD=f6 takes F(6x6,3x3) for every fp32-GEMM
    Winograd layer (fp32 models, bf16 ones without a bf16 GEMM engine); other values raise."""
    f32, bf16 = torch.float32, torch.bfloat16
    monkeypatch.delenv(cpu.WINOGRAD_TILE_ENV, raising=False)
    assert cpu.choose_algorithm(64, 64, 3, 1, True, f32) == A.winograd4x4
    monkeypatch.setenv(cpu.WINOGRAD_TILE_ENV, "f6")
    assert cpu.choose_algorithm(64, 64, 3, 1, True, f32) == A.winograd6x6
    assert cpu.algorithm(64, 64, 3, 1, False, f32) == "winograd F(6x6,3x3)"
    assert cpu.choose_algorithm(64, 64, 3, 1, False, bf16, ISAS[0]) == A.winograd6x6
    assert cpu.choose_algorithm(64, 64, 3, 0, False, f32) == A.winograd6x6  # padding 0 (row strips)
    assert cpu.choose_algorithm(64, 64, 3, 2, False, f32) == A.direct  # no Winograd window
    monkeypatch.setenv(cpu.WINOGRAD_TILE_ENV, "f4")
    assert cpu.choose_algorithm(64, 64, 3, 1, True, f32) == A.winograd4x4
    monkeypatch.setenv(cpu.WINOGRAD_TILE_ENV, "f8")
    with pytest.raises(ValueError, match="REDKERN_CPU_WINOGRAD='f8': choose one of f4, f6"):
        cpu.choose_algorithm(64, 64, 3, 1, True, f32)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("isa", ISAS)
def test_gemm_1x1_runs(isa, dtype):
    """1x1 layers run in runs of consecutive pixels across rows and images: pixel counts
    below, at and past a run (48, 64 or 96 pixels by ISA), batches whose images split runs."""
    for n, h, w in [(1, 1, 1), (1, 8, 12), (1, 97, 1), (3, 7, 9), (2, 13, 15), (1, 8, 6)]:
        for cin, cout in [(17, 40), (64, 64), (3, 2)]:
            case = T.layer_case(n, cin, cout, h, w, kernel=1, padding=0, epilogue="relu_before_act",
                                dtype=dtype)
            check_case(case, isas=[isa])


# --- NaN goes where it should, and only there --------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("isa", ISAS)
def test_nan_input_stays_nan(isa, dtype):
    """A NaN in the input is NaN in every output that depends on it, through every epilogue
    kind (relu, prelu, tanh, the residual joins). The direct algorithms leave the others
    finite and correct; Winograd spreads a NaN over its 6x6 input tiles, so there it may
    reach more outputs."""
    layers = [dict(cin=20, cout=24, kernel=3, epilogue="relu"),
              dict(cin=5, cout=7, kernel=5, epilogue="prelu_then_leaky"),
              dict(cin=17, cout=20, kernel=1, padding=0, epilogue="tanh"),
              dict(cin=16, cout=2, kernel=3, epilogue="relu_add_relu"),
              dict(cin=6, cout=18, kernel=(3, 5), padding=(0, 2), epilogue="negated_residual")]
    for layer in layers:
        for transposed in (False, True):
            case = T.layer_case(2, h=9, w=10, transposed=transposed, dtype=dtype, **layer)
            case.x[1, case.x.shape[1] - 1, 4, 6] = float("nan")
            want = T.reference(case)
            nan = torch.isnan(want)
            assert 0 < nan.sum() < nan.numel()
            for algo in algorithms(case, isa):
                got = run(case, algo, isa)
                where = f"{algo.name} on {isa}, {_describe(case)}"
                assert torch.isnan(got)[nan].all(), f"{where}: a NaN input was lost"
                if algo in cpu.winograd_algorithms():
                    keep = ~torch.isnan(got)
                else:
                    assert torch.equal(torch.isnan(got), nan), f"{where}: NaN where the reference has none"
                    keep = ~nan
                err = ((got.double() - want)[keep].abs().max() / want[~nan].abs().max()).item()
                assert err <= tolerance(case, algo), f"{where}: max relative error {err:.2e}"


# --- results do not depend on threads ---------------------------------------------------------

@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layer", [(64, 64, 3), (64, 3, 3), (3, 64, 3), (7, 20, 5), (24, 40, 1)],
                         ids=lambda l: f"{l[0]}to{l[1]}_{l[2]}x{l[2]}")
@pytest.mark.parametrize("isa", ISAS)
def test_thread_count_does_not_change_result(isa, layer, dtype, threads):
    cin, cout, k = layer
    case = T.layer_case(2, cin, cout, 23, 19, kernel=k, transposed=True, epilogue="add_residual",
                        dtype=dtype)
    for algo in algorithms(case, isa):
        results = []
        for n in (1, 2, 3):
            threads(n)
            results.append(run(case, algo, isa))
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2]), algo


# --- algorithm choice and the plan report's labels ----------------------------------------------

def test_default_algorithm_per_layer():
    f32, bf16 = torch.float32, torch.bfloat16
    choose = cpu.choose_algorithm
    assert choose(64, 64, 3, 1, False, f32) == A.winograd4x4
    assert choose(128, 128, 3, 1, True, bf16, "avx2") == A.winograd4x4
    best = ISAS[-1]
    want_gemm = (A.winograd4x4_amx if best == "avx512" and _C.amx_supported() else
                 A.winograd4x4_bf16dot if best == "avx512" and _C.bf16_dot_supported() else A.winograd4x4)
    assert choose(128, 128, 3, 1, True, bf16, best) == want_gemm
    assert choose(128, 128, 3, 1, True, f32, best) == A.winograd4x4
    assert choose(16, 16, (3, 3), (1, 1), True, f32) == A.winograd4x4
    assert choose(15, 64, 3, 1, False, f32) == A.direct
    assert choose(64, 64, 3, 0, False, f32) == A.winograd4x4  # padding 0 too (row strips)
    assert choose(64, 64, 3, 2, True, f32) == A.winograd4x4   # transposed padding 2 = conv padding 0
    assert choose(64, 64, 3, 2, False, f32) == A.direct       # padding 2: no Winograd
    assert choose(64, 64, 5, 2, False, f32) == A.direct
    assert choose(64, 1, 3, 1, True, f32) == A.direct_few_cout
    assert choose(64, 3, 9, 4, False, f32) == A.direct_few_cout
    assert choose(64, 4, 1, 0, False, f32) == A.direct
    assert choose(1, 64, 3, 1, False, f32) == A.direct
    assert choose(3, 64, 3, 1, False, bf16, "avx2") == A.direct
    want_dot = A.direct_bf16dot if "avx512" in ISAS and _C.bf16_dot_supported() else A.direct
    assert choose(3, 64, 5, 2, False, bf16, ISAS[-1]) == want_dot


def test_algorithm_labels():
    f32, bf16 = torch.float32, torch.bfloat16
    assert cpu.algorithm(64, 64, 3, 1, False, f32) == "winograd F(4x4,3x3)"
    assert cpu.algorithm(64, 64, 3, 1, True, f32) == "winograd F(4x4,3x3)"
    assert cpu.algorithm(1, 64, 3, 1, False, f32) == "direct 3x3"
    assert cpu.algorithm(1, 64, 9, 4, False, f32) == "direct 9x9"
    assert cpu.algorithm(8, 64, (3, 5), (1, 2), False, f32) == "direct 3x5"
    assert cpu.algorithm(64, 32, 1, 0, False, f32) == "1x1 GEMM"
    assert cpu.algorithm(32, 1, 5, 2, False, f32) == "direct few-cout 5x5"
    assert cpu.algorithm(64, 3, 3, 1, True, f32) == "direct few-cout 3x3"
    if "avx512" in ISAS and _C.bf16_dot_supported() and _C.selected_isa() == "avx512":
        assert cpu.algorithm(1, 64, 3, 1, False, bf16) == "direct 3x3 bf16-dot"
        assert cpu.algorithm(64, 32, 1, 0, False, bf16) == "1x1 GEMM bf16-dot"
    assert cpu.algorithm(1, 64, 3, 1, False, bf16, isa="avx2") == "direct 3x3"
    assert cpu.algorithm(64, 64, 3, 1, False, bf16, isa="avx2") == "winograd F(4x4,3x3)"
    assert cpu.label(A.winograd4x4_bf16dot, 3) == "winograd F(4x4,3x3) bf16-dot"
    assert cpu.label(A.winograd4x4_amx, 3) == "winograd F(4x4,3x3) bf16 AMX"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_algorithm_reports_unsupported_dtype(dtype):
    with pytest.raises(BackendUnavailable, match="CPU kernels take"):
        cpu.algorithm(64, 64, 3, 1, False, dtype)
    case = T.layer_case(1, 4, 4, 5, 5, dtype=dtype)
    with pytest.raises(BackendUnavailable, match="CPU kernels take"):
        cpu.conv2d(*case.tensors, **case.options)


def test_algorithm_rejects_windows_and_paddings_outside_the_kernels():
    with pytest.raises(BackendUnavailable, match="padding 0..k-1"):
        cpu.algorithm(4, 4, 3, 3, False, torch.float32)
    with pytest.raises(BackendUnavailable, match="padding 0..k-1"):
        cpu.algorithm(4, 4, (1, 3), (1, 0), True, torch.float32)
    with pytest.raises(ValueError, match="at least 1x1"):
        cpu.algorithm(4, 4, 0, 0, False, torch.float32)
    with pytest.raises(ValueError, match=">= 0"):
        cpu.algorithm(4, 4, 3, -1, False, torch.float32)


# --- whole models through the backend --------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_red10_through_the_backend(dtype):
    """RED10 (3x3, padding 1) end to end through cpu.conv2d's default algorithms against the
    reference model: Winograd, direct 1 -> 64 (bf16-dot in bf16 where the CPU has it), few-cout
    64 -> 1 with the global residual."""
    ref = redkern.RED10().eval()
    x = torch.rand(2, 1, 21, 30)
    with torch.no_grad():
        want = ref.double()(x.double())
        ref.float()
        h = x.to(dtype)
        relu = Epilogue(act=Act.RELU)
        for i in range(1, ref.n + 1):
            conv = ref.encoder(i)
            h = cpu.conv2d(h, conv.weight.to(dtype), conv.bias, transposed=False, padding=1, epilogue=relu)
        for j in range(1, ref.n):
            deconv = ref.decoder(j)
            h = cpu.conv2d(h, deconv.weight.to(dtype), deconv.bias, transposed=True, padding=1, epilogue=relu)
        last = ref.decoder(ref.n)
        got = cpu.conv2d(h, last.weight.to(dtype), last.bias, x.to(dtype), transposed=True, padding=1,
                         epilogue=Epilogue(residual=Residual.BEFORE_ACT))
    assert got.dtype == dtype
    # bf16: every layer rounds its output, and RED10 chains ten of them.
    T.assert_close(got, want, {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}[dtype])


def test_srcnn_through_the_backend():
    """SRCNN 9-1-5 without padding (the paper's "valid" form), with PReLU between layers."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 9), torch.nn.PReLU(64), torch.nn.Conv2d(64, 32, 1),
                              torch.nn.PReLU(64 // 2), torch.nn.Conv2d(32, 1, 5))
    x = torch.rand(2, 1, 33, 27)
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0.05, 0.4)
        want = net.double()(x.double())
        net.float()
        prelu = Epilogue(act=Act.PRELU)
        h = x
        for conv, act in [(net[0], net[1]), (net[2], net[3])]:
            slopes = act.weight.float().contiguous()
            h = cpu.conv2d(h, conv.weight, conv.bias, transposed=False, padding=0, epilogue=prelu,
                           slopes=slopes)
        got = cpu.conv2d(h, net[4].weight, net[4].bias, transposed=False, padding=0, epilogue=Epilogue())
    T.assert_close(got, want, 1e-5)


# --- the Python entry point rejects bad arguments ----------------------------------------------

def test_conv2d_rejects_bad_arguments():
    case = T.layer_case(1, 4, 6, 5, 7, kernel=3, epilogue="prelu")
    x, weight, bias, _ = case.tensors
    opts = case.options
    with pytest.raises(ValueError, match=r"weight must be \[Cout, Cin, kh, kw\].*Cin=4"):
        cpu.conv2d(x, weight[:, :3], bias, **opts)
    with pytest.raises(ValueError, match="PRELU needs slopes"):
        cpu.conv2d(x, weight, bias, **{**opts, "slopes": None})
    with pytest.raises(ValueError, match="6 .the output channels. values"):
        cpu.conv2d(x, weight, bias, **{**opts, "slopes": torch.ones(5)})
    with pytest.raises(ValueError, match="slopes2 given"):
        cpu.conv2d(x, weight, bias, **{**opts, "slopes2": torch.ones(6)})
    with pytest.raises(ValueError, match="extra given"):
        cpu.conv2d(x, weight, bias, torch.zeros(1, 6, 5, 7), **opts)
    with pytest.raises(ValueError, match="out must be"):
        cpu.conv2d(x, weight, bias, **opts, out=torch.empty(1, 6, 5, 7))  # NCHW, not NHWC
    with pytest.raises(ValueError, match="leaves no output"):
        cpu.conv2d(x[:, :, :2], weight, bias, **{**opts, "padding": (0, 0)})
    res = Epilogue(residual=Residual.BEFORE_ACT)
    with pytest.raises(ValueError, match=r"needs extra \[N, Cout, OH, OW\] = \(1, 6, 5, 7\)"):
        cpu.conv2d(x, weight, bias, transposed=False, padding=1, epilogue=res)
    with pytest.raises(ValueError, match="extra must be"):
        cpu.conv2d(x, weight, bias, torch.zeros(1, 6, 5, 6), transposed=False, padding=1, epilogue=res)
    for algo in (A.winograd4x4, A.winograd6x6):
        with pytest.raises(ValueError, match="Winograd algorithms take 3x3 kernels with padding"):
            cpu.conv2d(x, weight, bias, **{**opts, "padding": (2, 1)}, algorithm=algo)


def test_conv2d_without_bias_adds_zeros():
    case = T.layer_case(1, 4, 6, 5, 7, kernel=(1, 3), padding=(0, 1), epilogue="identity")
    case.bias.zero_()
    y = cpu.conv2d(case.x, case.weight, None, **case.options)
    T.assert_close(y, T.reference(case), 1e-5)
    assert y.stride(1) == 1


# --- the bindings reject bad arguments with ValueError, before touching memory ---------------

def _binding_args(cout=4, algorithm=A.direct, kh=3, kw=3, **overrides):
    """Valid arguments of _C.conv2d for an 8 -> cout, kh x kw padding-1 layer with the
    epilogue prelu(conv + b + extra), then ``overrides``."""
    n, h, w, cin, ph, pw = 1, 5, 6, 8, min(1, kh - 1), min(1, kw - 1)
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    x = torch.randn(n, h, w, cin)
    packed = torch.empty(_C.packed_weight_size(cin, cout, kh, kw, algorithm))
    bias, extra, y = torch.randn(cout), torch.randn(n, oh, ow, cout), torch.empty(n, oh, ow, cout)
    slope = torch.full((cout,), 0.1)
    args = dict(x=x.data_ptr(), x_numel=x.numel(), packed=packed.data_ptr(), packed_numel=packed.numel(),
                bias=bias.data_ptr(), bias_numel=bias.numel(), extra=extra.data_ptr(),
                extra_numel=extra.numel(), y=y.data_ptr(), y_numel=y.numel(),
                slope=slope.data_ptr(), slope_numel=slope.numel(), slope2=0, slope2_numel=0,
                n=n, h=h, w=w, cin=cin, cout=cout, kh=kh, kw=kw, ph=ph, pw=pw,
                act=int(Act.PRELU), act2=int(Act.IDENTITY), residual=int(Residual.BEFORE_ACT),
                alpha=1.0, beta=1.0, dtype=_C.DType.float32, algorithm=algorithm, nthreads=1)
    args.update(overrides)
    return args, (x, packed, bias, extra, y, slope)  # keep the buffers alive


def test_bindings_accept_the_right_arguments():
    args, keep = _binding_args()
    _C.conv2d(**args)
    args, keep = _binding_args(kh=1, kw=5, cout=17)
    _C.conv2d(**args)


@pytest.mark.parametrize("field", ["x_numel", "packed_numel", "bias_numel", "extra_numel", "y_numel",
                                   "slope_numel"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_bindings_reject_wrong_numel(field, delta):
    args, keep = _binding_args()
    args[field] += delta
    with pytest.raises(ValueError, match="elements, the kernel needs"):
        _C.conv2d(**args)


@pytest.mark.parametrize("bad,match", [
    (dict(h=0), r"the input needs N, Cin, H, W >= 1, got input \[N=1, Cin=8, H=0, W=6\]"),
    (dict(cin=0), r"input \[N=1, Cin=0, H=5, W=6\]"),
    (dict(cout=-3), "the weight needs at least one input channel, one output channel"),
    (dict(kh=0), "window 0x3"),
    (dict(ph=3), r"padding \(3, 1\) must be 0..k-1"),
    (dict(pw=-1), r"padding \(1, -1\) must be 0..k-1"),
    (dict(h=2, ph=0), r"leaves no output of the input \[N=1, Cin=8, H=2, W=6\]"),
    (dict(x=0), "null pointer"),
    (dict(algorithm=A.winograd4x4), "packed weight has"),
    (dict(isa="sse9"), "unknown CPU ISA"),
    (dict(algorithm=A.direct_bf16dot), "packed weight has"),
    (dict(act=99), "unknown activation code act=99"),
    (dict(act2=-1), "unknown activation code act2=-1"),
    (dict(residual=3), "unknown residual code 3"),
    (dict(act2=int(Act.RELU)), "act2 RELU applies after the residual join"),
    (dict(slope=0, slope_numel=0), "act PRELU reads a per-channel slope array; slope is missing"),
    (dict(act=int(Act.RELU)), "slope given, but act RELU reads no slope"),
    (dict(residual=int(Residual.AFTER_ACT), act2=int(Act.LEAKY_RELU)), "act2 LEAKY_RELU .* slope2 is missing"),
    (dict(extra=0, extra_numel=0), "the residual join needs extra"),
    (dict(residual=int(Residual.NONE)), "extra given, but residual NONE reads none"),
    (dict(alpha=float("nan")), "alpha and beta must be finite"),
    (dict(beta=float("inf")), "alpha and beta must be finite"),
    (dict(nthreads=0), None),  # clamped to one thread, not an error
])
def test_bindings_reject_bad_arguments(bad, match):
    args, keep = _binding_args()
    args.update(bad)  # the buffers stay as made for the valid arguments
    if match is None:
        _C.conv2d(**args)
        return
    with pytest.raises(ValueError, match=match):
        _C.conv2d(**args)


@pytest.mark.parametrize("which", ["x", "extra", "bias", "slope", "packed"])
def test_bindings_reject_output_overlapping_an_input(which):
    args, keep = _binding_args()
    x, packed, bias, extra, y, slope = keep
    target = {"x": x, "extra": extra, "bias": bias, "slope": slope, "packed": packed}[which]
    args.update(y=target.data_ptr() + 4 * (target.numel() - 1))  # the last element overlaps
    with pytest.raises(ValueError, match="must not overlap"):
        _C.conv2d(**args)


def test_bindings_reject_algorithm_that_cannot_run():
    args, keep = _binding_args(cout=8, algorithm=A.direct_few_cout)
    with pytest.raises(ValueError, match="at most 3 output channels"):
        _C.conv2d(**args)
    args, keep = _binding_args(algorithm=A.direct_bf16dot)
    with pytest.raises(ValueError, match="bf16 activations only"):
        _C.conv2d(**args)
    args, keep = _binding_args(algorithm=A.direct_bf16dot, dtype=_C.DType.bfloat16, isa="generic")
    with pytest.raises(ValueError, match="needs the avx512 kernels"):
        _C.conv2d(**args)
    args, keep = _binding_args(algorithm=A.winograd4x4, ph=2, pw=2, h=3, w=3, x_numel=8 * 9,
                               y_numel=4 * 25, extra_numel=4 * 25)
    with pytest.raises(ValueError, match=r"Winograd .* padding 0 or 1 on each axis .* not a 3x3 kernel with padding \(2, 2\)"):
        _C.conv2d(**args)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_bindings_reject_isa_this_cpu_lacks(isa):
    if isa in ISAS:
        pytest.skip(f"this CPU runs {isa}")
    args, keep = _binding_args(isa=isa)
    with pytest.raises(ValueError, match="does not support"):
        _C.conv2d(**args)


def test_pack_weight_rejects_bad_arguments():
    w, packed = torch.randn(4, 8, 3, 5), torch.empty(_C.packed_weight_size(8, 4, 3, 5, A.direct))
    with pytest.raises(ValueError, match=r"weight has 479 elements, the kernel needs 480 \(Conv2d \[Cout=4, Cin=8, 3, 5\]\)"):
        _C.pack_weight(w.data_ptr(), w.numel() - 1, 8, 4, 3, 5, False, A.direct, packed.data_ptr(), packed.numel())
    with pytest.raises(ValueError, match=r"ConvTranspose2d \[Cin=8, Cout=4, 3, 5\]"):
        _C.pack_weight(w.data_ptr(), w.numel() + 1, 8, 4, 3, 5, True, A.direct, packed.data_ptr(), packed.numel())
    with pytest.raises(ValueError, match="packed weight has"):
        _C.pack_weight(w.data_ptr(), w.numel(), 8, 4, 3, 5, False, A.direct_few_cout, packed.data_ptr(), packed.numel())
    with pytest.raises(ValueError, match="Winograd F.4x4,3x3. algorithm takes 3x3 kernels only, not 3x5"):
        _C.pack_weight(w.data_ptr(), w.numel(), 8, 4, 3, 5, False, A.winograd4x4, packed.data_ptr(), packed.numel())
    with pytest.raises(ValueError, match="Winograd F.6x6,3x3. algorithm takes 3x3 kernels only, not 3x5"):
        _C.packed_weight_size(8, 4, 3, 5, A.winograd6x6)
    # A weight without channels is named as such (not as an image of n=1 h=1 w=1).
    with pytest.raises(ValueError, match=r"the weight needs at least one input channel.*got Cout=4, Cin=0") as e:
        _C.pack_weight(w.data_ptr(), 0, 0, 4, 3, 5, False, A.direct, packed.data_ptr(), packed.numel())
    assert "n=1" not in str(e.value)
    with pytest.raises(ValueError, match="window 3x0"):
        _C.packed_weight_size(8, 4, 3, 0, A.direct)


def test_transposed_weights_pack_as_the_equivalent_convolution():
    """pack_weight(transposed) of a ConvTranspose2d weight equals pack_weight of the flipped,
    channel-swapped Conv2d weight, for every layout."""
    wt = torch.randn(5, 3, 2, 4)  # [cin, cout, kh, kw]
    wc = wt.transpose(0, 1).flip(2, 3).contiguous()
    for algo in (A.direct, A.direct_few_cout, A.direct_bf16dot):
        size = _C.packed_weight_size(5, 3, 2, 4, algo)
        a, b = torch.empty(size), torch.empty(size)
        _C.pack_weight(wt.data_ptr(), wt.numel(), 5, 3, 2, 4, True, algo, a.data_ptr(), size)
        _C.pack_weight(wc.data_ptr(), wc.numel(), 5, 3, 2, 4, False, algo, b.data_ptr(), size)
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), algo


# --- ISA selection ---------------------------------------------------------------------------

def _selected_in_subprocess(value: str) -> subprocess.CompletedProcess:
    code = ("from redkern import _C, backends\n"
            "print(backends()['cpu']['available'], backends()['cpu']['detail'])\n"
            "print(_C.selected_isa())")
    env = dict(os.environ, REDKERN_CPU_ISA=value)
    # cwd outside the checkout, so the source tree cannot shadow the installed package
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())


def test_selected_isa_is_the_best_supported():
    assert ISAS[0] == "generic"
    if "REDKERN_CPU_ISA" not in os.environ:
        assert _C.selected_isa() == ISAS[-1]


@pytest.mark.parametrize("isa", ISAS)
def test_env_var_forces_a_supported_isa(isa):
    proc = _selected_in_subprocess(isa)
    assert proc.returncode == 0, proc.stderr
    status, selected = proc.stdout.splitlines()
    assert status.startswith("True") and f"{isa} selected" in status
    assert selected == isa


@pytest.mark.parametrize("value,message", [("avx512", "but this CPU supports at most"),
                                           ("neon", "unknown CPU ISA 'neon'")])
def test_env_var_naming_an_unavailable_isa_is_an_error(value, message):
    if value in ISAS:
        pytest.skip(f"this CPU runs {value}")
    proc = _selected_in_subprocess(value)
    assert proc.returncode != 0 and "ValueError" in proc.stderr and message in proc.stderr
    status = proc.stdout.splitlines()[0]  # the backend reports itself unavailable, and why
    assert status.startswith("False") and message in status


def test_fma_peak_is_measured():
    for isa in ISAS:
        assert _C.measure_fma_peak_gflops(1, isa) > 0.1


# --- the bf16 Winograd GEMM engines ---------------------------------------------------------------

def test_bf16_winograd_gemm_choice_and_forcing(monkeypatch):
    """The default engine follows the CPU (AMX, else vdpbf16ps where it outruns the FMAs, else
    the fp32 GEMM); REDKERN_CPU_BF16_GEMM lowers it, and an engine this CPU lacks is an error,
    never a silent substitute."""
    bf16 = torch.bfloat16
    monkeypatch.delenv(cpu.BF16_GEMM_ENV, raising=False)
    best = ISAS[-1]
    amx = best == "avx512" and _C.amx_supported()
    dot = best == "avx512" and _C.bf16_dot_supported()
    fast_dot = dot and _C.bf16_dot_speedup() >= cpu.BF16_DOT_MIN_SPEEDUP
    want = A.winograd4x4_amx if amx else A.winograd4x4_bf16dot if fast_dot else A.winograd4x4
    assert cpu.choose_algorithm(64, 64, 3, 1, False, bf16, best) == want
    if dot:
        assert 0.2 < _C.bf16_dot_speedup() < 4, "the probe measured nonsense"
    else:
        assert _C.bf16_dot_speedup() == 0
    for engine, runnable, algo in (("fp32", True, A.winograd4x4), ("dot", dot, A.winograd4x4_bf16dot),
                                   ("amx", amx, A.winograd4x4_amx)):
        monkeypatch.setenv(cpu.BF16_GEMM_ENV, engine)
        if runnable:
            assert cpu.choose_algorithm(64, 64, 3, 1, False, bf16, best) == algo
            assert cpu.choose_algorithm(64, 64, 3, 1, False, torch.float32, best) == A.winograd4x4
        else:
            with pytest.raises(ValueError, match=f"{cpu.BF16_GEMM_ENV}={engine} but the .* kernels on this CPU run only"):
                cpu.choose_algorithm(64, 64, 3, 1, False, bf16, best)
    if "avx2" in ISAS:
        monkeypatch.setenv(cpu.BF16_GEMM_ENV, "amx")
        with pytest.raises(ValueError, match="avx2 kernels on this CPU run only fp32"):
            cpu.choose_algorithm(64, 64, 3, 1, False, bf16, "avx2")
    monkeypatch.setenv(cpu.BF16_GEMM_ENV, "tiles")
    with pytest.raises(ValueError, match="choose one of amx, dot, fp32"):
        cpu.choose_algorithm(64, 64, 3, 1, False, bf16, best)


def test_bf16_gemm_winograd_refuses_what_it_cannot_run():
    case = T.layer_case(1, 32, 32, 8, 8, kernel=3, padding=1)  # fp32 activations
    for algo in (A.winograd4x4_bf16dot, A.winograd4x4_amx):
        with pytest.raises(ValueError, match="takes bf16 activations only|needs the avx512 kernels"):
            cpu.conv2d(*case.tensors, **case.options, algorithm=algo)
        bf16_case = T.layer_case(1, 32, 32, 8, 8, kernel=3, padding=1, dtype=torch.bfloat16)
        if "avx2" in ISAS:
            with pytest.raises(ValueError, match="needs the avx512 kernels on a CPU with"):
                cpu.conv2d(*bf16_case.tensors, **bf16_case.options, algorithm=algo, isa="avx2")
