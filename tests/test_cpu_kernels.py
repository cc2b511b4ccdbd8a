"""The CPU kernels (csrc/cpu, redkern._C) against the reference ops, for every ISA this CPU
runs, every algorithm, epilogue, dtype and awkward shape.

Error measure: ``max |y - ref| / max(max |ref|, 1)`` against the reference ops run in fp64
on the same (for bf16: the same bf16-rounded) inputs. Inputs and weights are scaled so
outputs are O(1); the floor of 1 keeps outputs of one or two values whose terms happen to
cancel from turning fp32 rounding into a large relative error.
Outputs are written into NaN-filled buffers, so an element a kernel skips fails the test.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import sys

import pytest
import torch

from redkern import _C, ops
from redkern.backends import cpu
from redkern.backends.common import Epilogue

A = _C.Algorithm
ISAS = _C.supported_isas()
TOL = {torch.float32: 1e-5, torch.bfloat16: 4e-3}  # bf16: one rounding of the output (2^-9)

# (transposed, epilogue): the combinations RED-Net's three ops use.
OPS = {
    "conv_relu": (False, Epilogue.RELU),
    "deconv_relu": (True, Epilogue.RELU),
    "deconv_relu_skip": (True, Epilogue.RELU_ADD_RELU),
    "deconv_residual": (True, Epilogue.ADD_RESIDUAL),
}
CHANNELS = [(1, 64), (64, 64), (64, 1), (3, 64), (64, 3), (5, 7), (128, 128)]
SHAPES = [(1, 1, 1), (1, 1, 3), (1, 3, 1), (1, 5, 7), (1, 37, 53), (2, 9, 6)]  # (n, h, w)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def algorithms(cin: int, cout: int, dtype: torch.dtype, isa: str) -> list:
    """Every algorithm that can run this layer here (Winograd runs any channel counts)."""
    algos = [A.direct, A.winograd4x4]
    if cout <= cpu.FEW_COUT_MAX:
        algos.append(A.direct_few_cout)
    if dtype == torch.bfloat16 and isa == "avx512" and _C.bf16_dot_supported():
        algos.append(A.direct_bf16dot)
    return algos


def make_layer(n, cin, cout, h, w, transposed, epilogue, dtype):
    """Random input, weight, bias and skip/residual with O(1) outputs."""
    x = torch.randn(n, cin, h, w)
    shape = (cin, cout, 3, 3) if transposed else (cout, cin, 3, 3)
    weight = torch.randn(shape) / (3 * cin ** 0.5)
    bias = torch.randn(cout)
    extra = torch.randn(n, cout, h, w) if epilogue != Epilogue.RELU else None
    cast = lambda t: None if t is None else t.to(dtype)
    return cast(x), cast(weight), cast(bias), cast(extra)


def reference(x, weight, bias, extra, transposed, epilogue):
    """The reference op for this layer, in fp64."""
    d = lambda t: None if t is None else t.double()
    if not transposed:
        assert epilogue == Epilogue.RELU
        return ops.reference_conv_relu(d(x), d(weight), d(bias))
    if epilogue == Epilogue.ADD_RESIDUAL:
        return ops.reference_deconv_residual(d(x), d(weight), d(bias), d(extra))
    return ops.reference_deconv_relu(d(x), d(weight), d(bias), d(extra))


def poisoned_output(n, cout, h, w, dtype):
    """An NHWC (channels_last) output buffer full of NaN."""
    return torch.full((n, h, w, cout), float("nan"), dtype=dtype).permute(0, 3, 1, 2)


def run(x, weight, bias, extra, transposed, epilogue, algorithm, isa):
    n, _, h, w = x.shape
    cout = weight.shape[1] if transposed else weight.shape[0]
    out = poisoned_output(n, cout, h, w, x.dtype)
    y = cpu.conv3x3(x, weight, bias, extra, transposed=transposed, epilogue=epilogue,
                    algorithm=algorithm, isa=isa, out=out)
    assert y.data_ptr() == out.data_ptr()
    return y


def rel_error(y, ref) -> float:
    assert not torch.isnan(y).any(), "the kernel left output elements unwritten (NaN poison)"
    return ((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels", CHANNELS, ids=lambda c: f"{c[0]}to{c[1]}")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("isa", ISAS)
def test_layer_matches_reference(isa, op, channels, shape, dtype):
    (cin, cout), (n, h, w), (transposed, epilogue) = channels, shape, OPS[op]
    x, weight, bias, extra = make_layer(n, cin, cout, h, w, transposed, epilogue, dtype)
    ref = reference(x, weight, bias, extra, transposed, epilogue)
    for algo in algorithms(cin, cout, dtype, isa):
        err = rel_error(run(x, weight, bias, extra, transposed, epilogue, algo, isa), ref)
        assert err <= TOL[dtype], f"{algo} on {isa}: relative error {err:.2e}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,w", [(4, 4), (8, 12), (5, 5), (6, 7), (9, 2), (2, 9), (13, 17)])
def test_winograd_tile_tails(isa, h, w):
    """4x4 output tiles: full tiles only, and 1, 2 or 3 rows/columns past the last full tile;
    batch 3 so blocks of tiles straddle images; 64 -> 64 as in RED-Net."""
    x, weight, bias, extra = make_layer(3, 64, 64, h, w, True, Epilogue.RELU_ADD_RELU, torch.float32)
    ref = reference(x, weight, bias, extra, True, Epilogue.RELU_ADD_RELU)
    y = run(x, weight, bias, extra, True, Epilogue.RELU_ADD_RELU, A.winograd4x4, isa)
    assert rel_error(y, ref) <= TOL[torch.float32]


@pytest.mark.parametrize("isa", ISAS)
def test_winograd_many_blocks(isa):
    """An image with more tiles than one block holds, so every thread runs several blocks,
    the last one partial."""
    x, weight, bias, extra = make_layer(1, 64, 64, 75, 93, False, Epilogue.RELU, torch.float32)
    ref = reference(x, weight, bias, extra, False, Epilogue.RELU)
    y = run(x, weight, bias, extra, False, Epilogue.RELU, A.winograd4x4, isa)
    assert rel_error(y, ref) <= TOL[torch.float32]


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("channels", [(64, 64), (64, 3), (3, 64)], ids=lambda c: f"{c[0]}to{c[1]}")
@pytest.mark.parametrize("isa", ISAS)
def test_thread_count_does_not_change_result(isa, channels, dtype, threads):
    (cin, cout) = channels
    x, weight, bias, extra = make_layer(2, cin, cout, 23, 19, True, Epilogue.ADD_RESIDUAL, dtype)
    for algo in algorithms(cin, cout, dtype, isa):
        results = []
        for n in (1, 2, 3):
            threads(n)
            results.append(run(x, weight, bias, extra, True, Epilogue.ADD_RESIDUAL, algo, isa))
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2]), algo


def test_default_algorithm_per_layer():
    assert cpu.choose_algorithm(64, 64, torch.float32) == A.winograd4x4
    assert cpu.choose_algorithm(128, 128, torch.bfloat16) == A.winograd4x4
    assert cpu.choose_algorithm(64, 1, torch.float32) == A.direct_few_cout
    assert cpu.choose_algorithm(64, 3, torch.float32) == A.direct_few_cout
    assert cpu.choose_algorithm(1, 64, torch.float32) == A.direct
    assert cpu.choose_algorithm(3, 64, torch.float32, "avx2") == A.direct


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_model_through_torch_ops(dtype):
    """RED10 end to end through torch.ops.redkern.* (every default algorithm) in fp32 and bf16."""
    import redkern

    ref = redkern.RED10().eval()
    fused = redkern.RED10(fused=True).eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 21, 30)
    with torch.no_grad():
        want = ref.double()(x.double())
        got = fused.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    # bf16: every layer rounds its output, and RED10 chains ten of them.
    assert rel_error(got, want) <= {torch.float32: 1e-5, torch.bfloat16: 1.5e-2}[dtype]


# --- the bindings reject bad arguments with ValueError, before touching memory ---------------

def _binding_args(cout=4, algorithm=A.direct, **overrides):
    """Valid arguments of _C.conv3x3 for an 8 -> cout layer, then ``overrides``."""
    n, h, w, cin = 1, 5, 6, 8
    x = torch.randn(n, h, w, cin)
    packed = torch.empty(_C.packed_weight_size(cin, cout, algorithm))
    bias, extra, y = torch.randn(cout), torch.randn(n, h, w, cout), torch.empty(n, h, w, cout)
    args = dict(x=x.data_ptr(), x_numel=x.numel(), packed=packed.data_ptr(), packed_numel=packed.numel(),
                bias=bias.data_ptr(), bias_numel=bias.numel(), extra=extra.data_ptr(),
                extra_numel=extra.numel(), y=y.data_ptr(), y_numel=y.numel(), n=n, h=h, w=w,
                cin=cin, cout=cout, epilogue=_C.Epilogue.add_residual, dtype=_C.DType.float32,
                algorithm=algorithm, nthreads=1)
    args.update(overrides)
    return args, (x, packed, bias, extra, y)  # keep the buffers alive


def test_bindings_accept_the_right_arguments():
    args, keep = _binding_args()
    _C.conv3x3(**args)


@pytest.mark.parametrize("field", ["x_numel", "packed_numel", "bias_numel", "extra_numel", "y_numel"])
@pytest.mark.parametrize("delta", [-1, 1])
def test_bindings_reject_wrong_numel(field, delta):
    args, keep = _binding_args()
    args[field] += delta
    with pytest.raises(ValueError, match="elements, the kernel needs"):
        _C.conv3x3(**args)


@pytest.mark.parametrize("bad,match", [
    (dict(h=0), "must all be >= 1"),
    (dict(cout=-3), "must all be >= 1"),
    (dict(x=0), "null pointer"),
    (dict(algorithm=A.winograd4x4), "packed weight has"),
    (dict(isa="sse9"), "unknown CPU ISA"),
    (dict(algorithm=A.direct_bf16dot), "packed weight has"),
    (dict(nthreads=0), None),  # clamped to one thread, not an error
])
def test_bindings_reject_bad_arguments(bad, match):
    args, keep = _binding_args()
    args.update(bad)  # the buffers stay as made for the valid arguments
    if match is None:
        _C.conv3x3(**args)
        return
    with pytest.raises(ValueError, match=match):
        _C.conv3x3(**args)


def test_bindings_reject_output_overlapping_input():
    args, (x, *_rest) = _binding_args()
    args.update(y=x.data_ptr() + 4 * 7)
    with pytest.raises(ValueError, match="overlap"):
        _C.conv3x3(**args)


def test_bindings_reject_algorithm_that_cannot_run():
    args, keep = _binding_args(cout=8, algorithm=A.direct_few_cout)
    with pytest.raises(ValueError, match="at most 3 output channels"):
        _C.conv3x3(**args)
    args, keep = _binding_args(algorithm=A.direct_bf16dot)
    with pytest.raises(ValueError, match="bf16 activations only"):
        _C.conv3x3(**args)
    args, keep = _binding_args(algorithm=A.direct_bf16dot, dtype=_C.DType.bfloat16, isa="generic")
    with pytest.raises(ValueError, match="needs the avx512 kernels"):
        _C.conv3x3(**args)


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_bindings_reject_isa_this_cpu_lacks(isa):
    if isa in ISAS:
        pytest.skip(f"this CPU runs {isa}")
    args, keep = _binding_args(isa=isa)
    with pytest.raises(ValueError, match="does not support"):
        _C.conv3x3(**args)


def test_pack_weight_rejects_wrong_numel():
    w, packed = torch.randn(4, 8, 3, 3), torch.empty(_C.packed_weight_size(8, 4, A.direct))
    with pytest.raises(ValueError, match="weight has"):
        _C.pack_weight(w.data_ptr(), w.numel() - 1, 8, 4, False, A.direct, packed.data_ptr(), packed.numel())
    with pytest.raises(ValueError, match="packed weight has"):
        _C.pack_weight(w.data_ptr(), w.numel(), 8, 4, False, A.winograd4x4, packed.data_ptr(), packed.numel())


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
