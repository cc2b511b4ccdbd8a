"""The Triton kernels compiled and autotuned on a CUDA GPU, against the reference PyTorch ops.

Skipped without a CUDA device (CI proves the same kernel code under the interpreter in
test_triton_interpreter.py, which also runs natively here). Adds what only a GPU can check:
bfloat16, autotuned block shapes, bigger and 128-feature layers, TF32 opt-in, streams,
64-bit indexing (slow), and whole RED30 forwards in every dtype.

References are computed in float64 on the CPU from the very same (rounded) inputs, so cuDNN's
TF32 default cannot blur the fp32 comparison. Outputs are NaN-poisoned before each call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import redkern
from redkern import benchmarking as B
from redkern import ops
from redkern.backends.common import Epilogue

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the native Triton tests need a GPU (the same kernels run on CPU "
                "under the interpreter in tests/test_triton_interpreter.py)", allow_module_level=True)
_STATUS = redkern.backends()["triton"]
if not _STATUS["available"] or "cuda" not in _STATUS["devices"]:
    pytest.skip(f"the Triton backend cannot compile for this GPU: {_STATUS['detail']}", allow_module_level=True)

from redkern.backends import triton_backend as tb  # noqa: E402

CUDA = torch.device("cuda")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# One rounding of the fp32 accumulator to the output dtype dominates: half an ulp relative.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 8e-3}
# (N, Cin, H, W, Cout): the interpreter's shapes, then GPU-sized ones (many programs, partial
# last block, a 1-pixel-high image, the released models' 128 features).
SHAPES = [(1, 64, 5, 7, 64), (2, 64, 17, 9, 64), (1, 1, 8, 8, 64), (1, 64, 8, 8, 3),
          (2, 64, 67, 45, 64), (1, 128, 33, 31, 128), (3, 64, 1, 301, 64), (2, 3, 40, 24, 3)]


def assert_close(y: torch.Tensor, ref: torch.Tensor, rel: float) -> float:
    """max |y - ref| <= rel * max |ref| and every element finite; returns the relative error."""
    assert y.shape == ref.shape
    bad = (~torch.isfinite(y)).sum().item()
    assert bad == 0, f"{bad} non-finite output elements (unwritten or overflowed)"
    err = (y.double().cpu() - ref.double().cpu()).abs().max().item() / ref.abs().max().item()
    assert err <= rel, f"max abs error / max|ref| = {err:.3e} > {rel:.0e}"
    return err


def make_layer(n, cin, h, w, cout, dtype, transposed, epilogue):
    x = torch.randn(n, cin, h, w, device=CUDA).to(dtype)
    weight = (torch.randn((cin, cout, 3, 3) if transposed else (cout, cin, 3, 3), device=CUDA)
              / (9 * cin) ** 0.5).to(dtype)
    bias = (torch.randn(cout, device=CUDA) * 0.5).to(dtype)
    extra = None if epilogue == Epilogue.RELU else torch.randn(n, cout, h, w, device=CUDA).to(dtype)
    return x, weight, bias, extra


def reference(x, weight, bias, extra, transposed, epilogue):
    x, weight, bias = (t.detach().cpu().double() for t in (x, weight, bias))
    extra = None if extra is None else extra.detach().cpu().double()
    if transposed:
        if epilogue == Epilogue.ADD_RESIDUAL:
            return ops.reference_deconv_residual(x, weight, bias, extra)
        return ops.reference_deconv_relu(x, weight, bias, extra)
    r = F.conv2d(x, weight, bias, padding=1)
    if epilogue == Epilogue.ADD_RESIDUAL:
        return r + extra
    r = torch.relu(r)
    return r if extra is None else torch.relu(r + extra)


def poisoned(n, cout, h, w, dtype):
    return torch.full((n, cout, h, w), float("nan"), dtype=dtype, device=CUDA).contiguous(
        memory_format=torch.channels_last)


def run_layer(shape, dtype, transposed, epilogue, tol=None):
    n, cin, h, w, cout = shape
    x, weight, bias, extra = make_layer(n, cin, h, w, cout, dtype, transposed, epilogue)
    out = poisoned(n, cout, h, w, dtype)
    y = tb.conv3x3(x, weight, bias, extra, transposed=transposed, epilogue=epilogue, out=out)
    torch.cuda.synchronize()
    assert y is out
    return assert_close(y, reference(x, weight, bias, extra, transposed, epilogue), tol or TOL[dtype])


@pytest.mark.parametrize("epilogue", list(Epilogue), ids=lambda e: e.name)
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}x{}x{}x{}->{}".format(*s))
def test_layer_matches_reference(shape, dtype, epilogue):
    # As the model uses them: conv for RELU, deconv (flipped, swapped weight) for the others.
    run_layer(shape, dtype, epilogue != Epilogue.RELU, epilogue)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_deconv_relu_and_conv_residual(dtype):
    """The pairings the model does not use, so both weight paths meet every epilogue."""
    run_layer((2, 64, 31, 19, 64), dtype, True, Epilogue.RELU)
    run_layer((2, 64, 31, 19, 64), dtype, False, Epilogue.ADD_RESIDUAL)


def test_tf32_only_when_asked(monkeypatch):
    monkeypatch.setenv("REDKERN_TF32", "0")
    run_layer((2, 64, 40, 40, 64), torch.float32, False, Epilogue.RELU, tol=1e-5)
    monkeypatch.setenv("REDKERN_TF32", "1")  # TF32 keeps 10 mantissa bits of each input
    run_layer((2, 64, 40, 40, 64), torch.float32, False, Epilogue.RELU, tol=5e-3)


def test_autotuner_chose_a_config():
    run_layer((1, 64, 64, 64, 64), torch.float16, False, Epilogue.RELU)
    tuned = tb._kernels._conv3x3_nhwc_tuned
    assert tuned.cache, "the autotuner recorded no choice"
    assert tuned.best_config.kwargs["BLOCK_N"] <= 64 and tuned.best_config.kwargs["BLOCK_K"] <= 64


def test_runs_on_the_current_stream():
    x, weight, bias, _ = make_layer(2, 64, 50, 30, 64, torch.float16, False, Epilogue.RELU)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = ops.conv_relu(x, weight, bias, "triton")
    side.synchronize()
    assert_close(y, reference(x, weight, bias, None, False, Epilogue.RELU), TOL[torch.float16])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels,features", [(1, 64), (3, 128)], ids=["gray64", "rgb128"])
def test_red30_fused_matches_reference(channels, features, dtype, tol, record_property):
    torch.manual_seed(0)  # fixed weights: the low-precision tolerance is about 30 stacked roundings
    ref = B.kaiming_init_(redkern.RED30(channels, features)).double()  # activations keep their scale
    fused = redkern.RED30(channels, features, fused=True, backend="triton")
    fused.load_state_dict(ref.state_dict())
    fused = fused.to(CUDA, dtype)
    x = torch.rand(2, channels, 45, 67, device=CUDA).to(dtype)
    with torch.no_grad():
        y = fused(x)
        ref.load_state_dict(fused.state_dict())  # the reference sees the same rounded weights
        r = ref(x.cpu().double())
    record_property("rel_err", assert_close(y, r, tol))
    if dtype == torch.float32:  # x dominates the output; check the predicted residual alone too
        assert_close(y - x, r - x.cpu().double(), 1e-5)


@pytest.mark.slow
def test_wide_index_past_2_31_elements():
    """An activation of more than 2**31 elements switches the kernel to 64-bit offsets."""
    n, c, h, w = 1, 64, 5800, 5800
    assert n * c * h * w >= 2**31
    x, weight, bias, _ = make_layer(1, c, 8, 8, c, torch.float16, False, Epilogue.RELU)
    x = torch.randn(n, h, w, c, device=CUDA, dtype=torch.float16).permute(0, 3, 1, 2)
    y = tb.conv3x3(x, weight, bias, None, transposed=False, epilogue=Epilogue.RELU,
                   out=poisoned(n, c, h, w, torch.float16))
    torch.cuda.synchronize()
    assert torch.isfinite(y).all()
    for rows in (slice(0, 9), slice(h - 9, h)):  # the first and the last rows (past 2**31)
        crop = reference(x[:, :, rows], weight, bias, None, False, Epilogue.RELU)
        keep = slice(0, 8) if rows.start == 0 else slice(1, 9)  # drop the row missing its neighbour
        assert_close(y[:, :, rows][:, :, keep], crop[:, :, keep], TOL[torch.float16])
