"""The CUDA C++ backend (redkern._cuda) on a real GPU: the checks of test_cuda_emulation.py run
natively (3x3 and 1x1, every epilogue of redkern.testing.EPILOGUES, conv and transposed,
fp32/fp16/bf16), the native kernels agree with their host emulation, launches follow
PyTorch's current stream, CUDA errors name the failing call, refused layers say why, and a
fused RED30 on backend "cuda" matches the reference model. Skipped (with the reason) where
there is no CUDA device.
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
from redkern import testing as T
from redkern.backends import cuda as cuda_backend
from redkern.backends.common import BackendUnavailable

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
DTYPES, KERNELS, EPILOGUE_NAMES, EDGES = cases.DTYPES, cases.KERNELS, cases.EPILOGUE_NAMES, cases.EDGES
make_case, pick = cases.make_case, cases.pick
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    """Reference convolutions on the GPU in true fp32 (cuDNN may use TF32 by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


GUARD = 256


def run_native(case: T.LayerCase) -> torch.Tensor:
    """``cuda_backend.conv2d`` (PyTorch's current stream) on the GPU copy of ``case``, into a
    NaN-poisoned, guarded buffer; the NHWC output, on the GPU."""
    dev = case.to(device=DEV)
    n, cout, oh, ow = case.out_shape
    numel = n * cout * oh * ow
    buf = torch.full((numel + 2 * GUARD,), float("nan"), dtype=case.x.dtype, device=DEV)
    out = buf[GUARD:GUARD + numel].view(n, oh, ow, cout).permute(0, 3, 1, 2)
    y = cuda_backend.conv2d(*dev.tensors, **dev.options, out=out)
    torch.cuda.synchronize()
    assert y.data_ptr() == out.data_ptr()
    assert buf[:GUARD].isnan().all() and buf[-GUARD:].isnan().all(), "wrote outside the output"
    return y


def check(case: T.LayerCase) -> torch.Tensor:
    got = run_native(case)
    T.assert_close(got, T.reference(case), T.TOLERANCE[case.x.dtype])
    return got


def test_backend_available():
    st = redkern.backends()["cuda"]
    assert st["available"] and st["devices"] == ["cuda"] and "cuda:0" in st["detail"], st


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_every_epilogue(epilogue, kernel, dtype):
    for transposed in (False, True):
        for n, cin, cout, h, w in [(2, 5, 7, 5, 9), (2, 64, 64, 19, 23), (1, 3, 72, 33, 17)]:
            check(make_case(n, cin, cout, h, w, kernel=kernel, transposed=transposed,
                            epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64), (128, 128), (256, 64)])
def test_matches_reference(cin, cout, kernel, dtype):
    for epilogue in ("relu", "relu_add_relu", "add_residual", "prelu_then_leaky"):
        check(make_case(2, cin, cout, 17, 9, kernel=kernel, transposed=epilogue != "relu",
                        epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (7, 5), (9, 17), (67, 131)])
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64), (128, 128)])
def test_odd_sizes(h, w, cin, cout, kernel, dtype):
    check(make_case(2, cin, cout, h, w, kernel=kernel, transposed=(h + cin) % 2 == 1,
                    epilogue=pick(EPILOGUE_NAMES, h, w, cin, cout, kernel, dtype), dtype=dtype))


BIG_EDGES = {3: [(1, 64, 64, 1, 1000), (1, 64, 64, 1000, 1)],
             1: [(1, 64, 64, 1, 1000), (1, 64, 64, 1000, 1), (5, 64, 32, 101, 99)]}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel,n,cin,cout,h,w",
                         [(k, *shape) for k in KERNELS for shape in EDGES[k] + BIG_EDGES[k]])
def test_channel_and_tile_edges(kernel, n, cin, cout, h, w, dtype):
    for epilogue in ("relu", "relu_add_relu", "tanh_then_prelu"):
        check(make_case(n, cin, cout, h, w, kernel=kernel, transposed=epilogue == "relu_add_relu",
                        epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_nan_propagates(epilogue, kernel):
    """As in the emulation: compiled with -O3, the kernels still keep NaN through every
    activation and residual join."""
    case = make_case(1, 8, 8, 6, 7, kernel=kernel, epilogue=epilogue)
    case.x[0, 3, 2, 4] = float("nan")
    if case.extra is not None:
        case.extra[0, 5, 4, 1] = float("nan")
    cases._assert_nan_matches(run_native(case).cpu(), T.reference(case), T.TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cin,cout", [(3, 64), (64, 64), (64, 3)])
def test_native_matches_emulation(cin, cout, kernel, dtype):
    """The host emulation computes what the GPU computes (same source, same order)."""
    for epilogue in ("relu_add_relu", "prelu_then_leaky"):
        case = make_case(2, cin, cout, 9, 17, kernel=kernel, transposed=True, epilogue=epilogue,
                         dtype=dtype)
        emulated = cases.run_emulated(case)
        native = run_native(case).cpu()
        # fp32 may differ by FMA contraction and tanhf's last bits; 16-bit outputs by at most
        # one rounding step.
        T.assert_close(native, emulated, 1e-6 if dtype == torch.float32 else T.TOLERANCE[dtype])


def test_launches_on_the_current_stream():
    """The input is produced on a side stream behind a long sleep: a kernel launched on any
    other stream would read it before it exists."""
    case = make_case(1, 64, 64, 64, 64, epilogue="relu")
    want = T.reference(case)
    dev = case.to(device=DEV)
    cuda_backend.conv2d(*dev.tensors, **dev.options)  # packs the weight before the race below
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)
        x_side = dev.x * 1.0
        y = cuda_backend.conv2d(x_side, dev.weight, dev.bias, None, **dev.options)
    side.synchronize()
    T.assert_close(y, want, T.TOLERANCE[torch.float32])


def test_cuda_errors_name_the_call():
    case = make_case(1, 4, 4, 3, 3).to(device=DEV)
    with pytest.raises(RuntimeError, match=r"cudaSetDevice\(97\): invalid device ordinal"):
        cuda_backend.launch_conv2d(_cuda, *case.tensors, **case.options, device=97, stream=0)


@pytest.mark.parametrize("kernel,padding,transposed", cases.REFUSED)
def test_refused_layers_say_why(kernel, padding, transposed):
    case = make_case(1, 4, 6, 9, 9, kernel=kernel, padding=padding, transposed=transposed).to(device=DEV)
    with pytest.raises(BackendUnavailable, match="runs 3x3 convolutions with padding 1 and 1x1"):
        cuda_backend.conv2d(*case.tensors, **case.options)


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
