"""The Triton kernels against the reference PyTorch ops, on CPU under Triton's interpreter.

The root conftest.py sets TRITON_INTERPRET=1 (before triton is imported) on machines with no
GPU, so CI runs the real kernel code through numpy. On a GPU machine without the interpreter
the same checks run natively on CUDA tensors; tests/test_gpu_triton.py adds the GPU-only ones
(bfloat16, autotuning, bigger shapes).

Every kernel call writes into a NaN-filled output, so an element it fails to write fails the
check; NaN never passes (``assert_close`` below).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import redkern
from redkern import ops
from redkern.backends.common import BackendUnavailable, Epilogue

_STATUS = redkern.backends()["triton"]
if not _STATUS["available"]:
    pytest.skip(f"Triton backend unavailable (needs TRITON_INTERPRET=1 set before triton is imported, "
                f"or a CUDA device): {_STATUS['detail']}", allow_module_level=True)

from redkern.backends import triton_backend as tb  # noqa: E402  (after the skip: imports triton)

INTERPRETED = tb._kernels.INTERPRETED
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (N, Cin, H, W, Cout): odd sizes, batch > 1, channel counts below and off the block sizes.
SHAPES = [(1, 64, 5, 7, 64), (2, 64, 17, 9, 64), (1, 1, 8, 8, 64), (1, 64, 8, 8, 3), (2, 3, 6, 5, 3)]


def assert_close(y: torch.Tensor, ref: torch.Tensor, rel: float) -> None:
    """max |y - ref| <= rel * max |ref|, and every element finite (NaN never passes)."""
    assert y.shape == ref.shape
    bad = (~torch.isfinite(y)).sum().item()
    assert bad == 0, f"{bad} non-finite output elements (unwritten or overflowed)"
    err = (y.double().cpu() - ref.double().cpu()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel:.0e} * max|ref| = {rel * scale:.3e}"


def make_layer(n, cin, h, w, cout, dtype, transposed, epilogue, device=DEVICE):
    """Random inputs of one fused layer, values O(1) after the conv."""
    x = torch.randn(n, cin, h, w)
    wshape = (cin, cout, 3, 3) if transposed else (cout, cin, 3, 3)
    weight = torch.randn(wshape) / (9 * cin) ** 0.5
    bias = torch.randn(cout) * 0.5
    extra = None if epilogue == Epilogue.RELU else torch.randn(n, cout, h, w)
    cast = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(weight), cast(bias), cast(extra)


def reference(x, weight, bias, extra, transposed, epilogue):
    """The reference ops in float64 on CPU, from the very same (rounded) inputs."""
    x, weight, bias = (t.detach().cpu().double() for t in (x, weight, bias))
    extra = None if extra is None else extra.detach().cpu().double()
    if not transposed:  # the conv ops only come with RELU; the other epilogues by hand
        r = torch.nn.functional.conv2d(x, weight, bias, padding=1)
        if epilogue == Epilogue.ADD_RESIDUAL:
            return r + extra
        r = torch.relu(r)
        return r if extra is None else torch.relu(r + extra)
    if epilogue == Epilogue.ADD_RESIDUAL:
        return ops.reference_deconv_residual(x, weight, bias, extra)
    return ops.reference_deconv_relu(x, weight, bias, extra)


def poisoned(n, cout, h, w, dtype, device=DEVICE):
    return torch.full((n, cout, h, w), float("nan"), dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)


def run_layer(shape, dtype, transposed, epilogue):
    n, cin, h, w, cout = shape
    x, weight, bias, extra = make_layer(n, cin, h, w, cout, dtype, transposed, epilogue)
    out = poisoned(n, cout, h, w, dtype)
    y = tb.conv3x3(x, weight, bias, extra, transposed=transposed, epilogue=epilogue, out=out)
    assert y is out and y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, reference(x, weight, bias, extra, transposed, epilogue), TOL[dtype])


def test_status_tells_the_mode():
    st_ = redkern.backends()["triton"]
    assert st_["available"] and st_["devices"] == [DEVICE.type]
    assert ("interpreter mode on CPU" if INTERPRETED else "on CUDA device") in st_["detail"]


@pytest.mark.parametrize("epilogue", list(Epilogue), ids=lambda e: e.name)
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "deconv"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}x{}x{}x{}->{}".format(*s))
def test_layer_matches_reference(shape, dtype, transposed, epilogue):
    run_layer(shape, dtype, transposed, epilogue)


@pytest.mark.skipif(INTERPRETED, reason="bfloat16: Triton's interpreter cannot do bf16 arithmetic (numpy has no "
                                        "bfloat16); bf16 is tested on a GPU only (here and in test_gpu_triton.py)")
@pytest.mark.parametrize("epilogue", list(Epilogue), ids=lambda e: e.name)
def test_bf16_layer_matches_reference(epilogue):
    run_layer((2, 64, 17, 9, 64), torch.bfloat16, True, epilogue)


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 2), cin=st.sampled_from([1, 2, 5, 17, 70]), cout=st.sampled_from([1, 4, 19, 64, 80]),
       h=st.integers(1, 9), w=st.integers(1, 9), transposed=st.booleans(), epilogue=st.sampled_from(list(Epilogue)))
def test_layer_any_shape(n, cin, cout, h, w, transposed, epilogue):
    """Channel counts that overhang a block (17, 70, 80), 1-pixel images, every epilogue."""
    run_layer((n, cin, h, w, cout), torch.float32, transposed, epilogue)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_custom_ops_route_to_triton(channels_last):
    """torch.ops.redkern.* with backend='triton': same values, output in the input's layout."""
    n, c, h, w = 2, 64, 7, 6
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, wc, bc, _ = make_layer(n, c, h, w, c, torch.float32, False, Epilogue.RELU)
    _, wd, bd, skip = make_layer(n, c, h, w, c, torch.float32, True, Epilogue.RELU_ADD_RELU)
    x, skip = x.contiguous(memory_format=fmt), skip.contiguous(memory_format=fmt)
    cases = [
        (ops.conv_relu(x, wc, bc, "triton"), reference(x, wc, bc, None, False, Epilogue.RELU)),
        (ops.deconv_relu(x, wd, bd, skip, "triton"), reference(x, wd, bd, skip, True, Epilogue.RELU_ADD_RELU)),
        (ops.deconv_residual(x, wd, bd, skip, "triton"), reference(x, wd, bd, skip, True, Epilogue.ADD_RESIDUAL)),
    ]
    for y, ref in cases:
        assert y.is_contiguous(memory_format=fmt)
        assert_close(y, ref, TOL[torch.float32])


@pytest.mark.parametrize("make", [redkern.RED10, redkern.RED30], ids=["RED10", "RED30"])
def test_fused_model_matches_reference(make):
    ref = make().to(DEVICE)
    fused = make(fused=True, backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.rand(1, 1, 9, 11, device=DEVICE)
    with torch.no_grad():
        y, r = fused(x), ref.double()(x.double())
    assert_close(y, r, 1e-5)
    # The output is x + a residual; check the residual alone too, so x cannot hide an error.
    assert_close(y - x, r - x.double(), 1e-5)


def test_weight_prepared_once_per_version(monkeypatch):
    calls = []
    pack = tb._kernels.pack_weight
    monkeypatch.setattr(tb._kernels, "pack_weight", lambda w, *a: calls.append(1) or pack(w, *a))
    x, weight, bias, _ = make_layer(1, 3, 5, 4, 8, torch.float32, True, Epilogue.RELU)
    for _ in range(3):
        tb.conv3x3(x, weight, bias, None, transposed=True, epilogue=Epilogue.RELU)
    assert len(calls) == 1
    with torch.no_grad():
        weight.mul_(-2.0)  # an optimizer step, in place: the cache must notice
    y = tb.conv3x3(x, weight, bias, None, transposed=True, epilogue=Epilogue.RELU, out=poisoned(1, 8, 5, 4, x.dtype))
    assert len(calls) == 2
    assert_close(y, reference(x, weight, bias, None, True, Epilogue.RELU), 1e-5)


def test_rejects_what_it_cannot_do():
    x, weight, bias, extra = make_layer(1, 4, 5, 5, 4, torch.float32, False, Epilogue.ADD_RESIDUAL)
    with pytest.raises(TypeError, match="float64"):
        tb.conv3x3(x.double(), weight.double(), bias.double(), None, transposed=False, epilogue=Epilogue.RELU)
    xh = x.contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="overlap"):
        tb.conv3x3(xh, weight, bias, extra, transposed=False, epilogue=Epilogue.ADD_RESIDUAL, out=xh)
    with pytest.raises(ValueError, match="NHWC"):
        tb.conv3x3(x, weight, bias, None, transposed=False, epilogue=Epilogue.RELU,
                   out=torch.empty(1, 4, 5, 5, device=DEVICE))
    if INTERPRETED:
        with pytest.raises(TypeError, match="bfloat16"):
            tb.conv3x3(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), None, transposed=False,
                       epilogue=Epilogue.RELU)
        with pytest.raises(BackendUnavailable):
            tb.check_can_run(torch.device("cuda"))


def test_tf32_is_opt_in(monkeypatch):
    monkeypatch.setenv("REDKERN_TF32", "1")
    assert tb.tf32_allowed()
    monkeypatch.setenv("REDKERN_TF32", "0")
    assert not tb.tf32_allowed()
    monkeypatch.delenv("REDKERN_TF32")
    assert not tb.tf32_allowed()  # torch's default: fp32 matmuls exact
