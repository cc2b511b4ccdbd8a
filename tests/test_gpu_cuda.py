"""The CUDA C++ backend (redkern._cuda) on a real GPU: the checks of test_cuda_emulation.py run
natively, the native kernels agree with their host emulation, launches follow PyTorch's
current stream, CUDA errors name the failing call, and a fused RED30 on backend "cuda"
matches the reference model. Skipped (with the reason) where there is no CUDA device.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip(f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__})",
                allow_module_level=True)

import redkern
from redkern import ops
from redkern.backends import cuda as cuda_backend

pytestmark = pytest.mark.gpu

try:
    from redkern import _cuda
except ImportError as e:  # a GPU machine that runs these tests must have built the module
    raise ImportError(f"redkern._cuda is not importable on a CUDA machine: "
                      f"{redkern.backends()['cuda']['detail']}") from e


def _load_emulation_tests():
    """test_cuda_emulation.py's cases and helpers: one definition of what is checked."""
    path = Path(__file__).with_name("test_cuda_emulation.py")
    spec = importlib.util.spec_from_file_location("_redkern_cuda_emulation_cases", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


cases = _load_emulation_tests()
DTYPES, OPS, TOL = cases.DTYPES, cases.OPS, cases.TOL
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Reference convolutions in true fp32 (cuDNN may use TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


GUARD = 256


def run_native(op, x, weight, bias, extra):
    """The native kernel's NHWC output in a NaN-poisoned, guarded buffer on the GPU."""
    n, _, h, w = x.shape
    cout = bias.shape[0]
    numel = n * cout * h * w
    buf = torch.full((numel + 2 * GUARD,), float("nan"), dtype=x.dtype, device=DEV)
    out = buf[GUARD:GUARD + numel].view(n, h, w, cout).permute(0, 3, 1, 2)
    y = cuda_backend.launch_conv3x3(
        _cuda, x, weight, bias, extra, transposed=op != "conv_relu",
        epilogue=cases.epilogue_of(op), out=out, device=DEV.index or 0,
        stream=torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert buf[:GUARD].isnan().all() and buf[-GUARD:].isnan().all(), "wrote outside the output"
    return y


def check(op, n, cin, cout, h, w, dtype):
    x, weight, bias, extra = cases.make_case(op, n, cin, cout, h, w, dtype)
    ref = cases.reference(op, x, weight, bias, extra)  # fp32 on the CPU
    to = (lambda t: t.to(DEV) if t is not None else None)
    y = run_native(op, to(x), to(weight), to(bias), to(extra))
    assert not y.isnan().any(), f"{int(y.isnan().sum())} output elements unwritten (NaN)"
    torch.testing.assert_close(y.float().cpu(), ref, **TOL[dtype])


def test_backend_available():
    st = redkern.backends()["cuda"]
    assert st["available"] and st["devices"] == ["cuda"] and "cuda:0" in st["detail"], st


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64)])
def test_matches_reference(op, cin, cout, dtype):
    check(op, 2, cin, cout, 17, 9, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (7, 5), (9, 17), (67, 131)])
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64), (128, 128)])
def test_odd_sizes(h, w, cin, cout, dtype):
    for op in OPS:
        check(op, 2, cin, cout, h, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,cin,cout,h,w", [
    (1, 128, 64, 9, 16), (1, 64, 128, 8, 17), (2, 5, 7, 6, 11), (1, 8, 24, 10, 3),
    (1, 20, 33, 4, 33), (3, 16, 16, 33, 40), (1, 64, 64, 1, 1000), (1, 64, 64, 1000, 1),
])
def test_channel_and_tile_edges(n, cin, cout, h, w, dtype):
    for op in ("conv_relu", "deconv_relu_skip"):
        check(op, n, cin, cout, h, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cin,cout", [(3, 64), (64, 64), (64, 3)])
def test_native_matches_emulation(cin, cout, dtype):
    """The host emulation computes what the GPU computes (same source, same order)."""
    op = "deconv_relu_skip"
    x, weight, bias, extra = cases.make_case(op, 2, cin, cout, 9, 17, dtype)
    emulated = cases.run_emulated(op, x, weight, bias, extra)
    native = run_native(op, x.to(DEV), weight.to(DEV), bias.to(DEV), extra.to(DEV)).cpu()
    # fp32 may differ by FMA contraction; 16-bit outputs by at most one rounding step.
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else TOL[dtype]
    torch.testing.assert_close(native, emulated, **tol)


def test_launches_on_the_current_stream():
    """The input is produced on a side stream behind a long sleep: a kernel launched on any
    other stream would read it before it exists."""
    x, weight, bias, _ = cases.make_case("conv_relu", 1, 64, 64, 64, 64, torch.float32)
    weight, bias, src = weight.to(DEV), bias.to(DEV), x.to(DEV)
    ref = ops.reference_conv_relu(src, weight, bias)
    ops.conv_relu(src, weight, bias, "cuda")  # packs the weight before the race below
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        x_side = src * 1.0
        y = ops.conv_relu(x_side, weight, bias, "cuda")
    side.synchronize()
    torch.testing.assert_close(y, ref, **TOL[torch.float32])


def test_cuda_errors_name_the_call():
    x, weight, bias, _ = cases.make_case("conv_relu", 1, 4, 4, 3, 3, torch.float32)
    x, weight, bias = x.to(DEV), weight.to(DEV), bias.to(DEV)
    with pytest.raises(RuntimeError, match=r"cudaSetDevice\(97\): invalid device ordinal"):
        cuda_backend.launch_conv3x3(_cuda, x, weight, bias, None, transposed=False,
                                    epilogue=cases.epilogue_of("conv_relu"), device=97, stream=0)


def test_ops_and_autograd_on_cuda():
    x, weight, bias, skip = cases.make_case("deconv_relu_skip", 2, 16, 8, 7, 9, torch.float32)
    x, weight, bias, skip = (t.to(DEV).requires_grad_() for t in (x, weight, bias, skip))
    y = ops.deconv_relu(x, weight, bias, skip, "cuda")
    ref = ops.reference_deconv_relu(x, weight, bias, skip)
    torch.testing.assert_close(y, ref, **TOL[torch.float32])
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, weight, bias, skip), g)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias, skip), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_red30_matches_reference(dtype, channels):
    ref_model = redkern.RED30(channels=channels).to(DEV).eval()
    fused = redkern.RED30(channels=channels, fused=True, backend="cuda").to(DEV).eval()
    fused.load_state_dict(ref_model.state_dict())
    x = torch.rand(2, channels, 45, 37, device=DEV)
    with torch.no_grad():
        if dtype == torch.float32:
            want, got = ref_model(x), fused(x)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            # The fp32 reference on the rounded weights and input; the fused net rounds every
            # layer's output to 16 bits.
            fused.to(dtype)
            ref_model.load_state_dict({k: v.to(dtype).float() for k, v in fused.state_dict().items()})
            xq = x.to(dtype)
            want, got = ref_model(xq.float()), fused(xq).float()
            tol = 2e-2 if dtype == torch.float16 else 8e-2
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert not got.isnan().any()
