"""The custom ops against the reference, on every backend that runs here.

``torch.ops.redkern.conv2d_fused`` for every epilogue of ``redkern.testing.EPILOGUES`` and
kernel sizes 1/3/5/9; the three RED-Net ops (thin wrappers with their own schemas) as before.
``opcheck`` checks schema, fake tensors, autograd registration and ``torch.compile`` behaviour.
"""

import pytest
import torch

import redkern
from redkern import ops
from redkern import testing as T
from redkern.backends import _load as load_backend
from redkern.backends import cpu
from redkern.backends.common import BackendUnavailable

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # conftest.py: torch.empty is NaN-filled
BACKENDS = T.backends_here()
SLOW = {"triton", "cuda_emu"}
WRAPPERS = {
    "conv_relu": (torch.ops.redkern.conv_relu, ops.reference_conv_relu, False, None),
    "deconv_relu": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, None),
    "deconv_relu_skip": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, "skip"),
    "deconv_residual": (torch.ops.redkern.deconv_residual, ops.reference_deconv_residual, True, "residual"),
}
CHANNELS = [(1, 64), (64, 64), (64, 1), (3, 64), (64, 3), (128, 128), (5, 7)]
SIZES = [(1, 37, 53), (2, 20, 31), (1, 3, 3), (1, 1, 1), (3, 1, 7)]


def general_args(case: T.LayerCase, backend: str = "auto") -> tuple:
    """``conv2d_fused``'s positional arguments for a ``testing.LayerCase``."""
    return (case.x, case.weight, case.bias, case.extra, case.act_weight, case.act2_weight, case.transposed,
            list(case.padding), *case.epilogue.encode(), backend)


def runs(backend: str, case: T.LayerCase) -> bool:
    c = case
    try:
        load_backend(backend).algorithm(c.x.shape[1], c.cout, tuple(c.weight.shape[2:]), c.padding, c.transposed,
                                        c.x.dtype)
    except BackendUnavailable:
        return False
    return True


# --- the general op -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,padding", T.KERNELS)
@pytest.mark.parametrize("epilogue", list(T.EPILOGUES))
def test_conv2d_fused_matches_reference(epilogue, kernel, padding, backend):
    small = backend in SLOW
    for transposed in (False, True):
        case = T.layer_case(2, 5 if small else 17, 3 if small else 24, 11, 13, kernel=kernel, padding=padding,
                            transposed=transposed, epilogue=epilogue)
        if not runs(backend, case):
            with pytest.raises(BackendUnavailable):
                torch.ops.redkern.conv2d_fused(*general_args(case, backend))
            continue
        got = torch.ops.redkern.conv2d_fused(*general_args(case, backend))
        T.assert_close(got, T.reference(case), 1e-5, T.magnitude(case))
        assert got.is_contiguous() and got.dtype == case.x.dtype


@pytest.mark.parametrize("epilogue", list(T.EPILOGUES))
def test_opcheck_conv2d_fused_every_epilogue(epilogue):
    for kernel, transposed in ((3, False), (1, True), (5, True)):
        case = T.layer_case(2, 4, 5, 6, 7, kernel=kernel, transposed=transposed, epilogue=epilogue)
        args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in general_args(case)]
        torch.library.opcheck(torch.ops.redkern.conv2d_fused, tuple(args))
        cl = [a.detach().contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
              and i != 1 else a for i, a in enumerate(args)]
        torch.library.opcheck(torch.ops.redkern.conv2d_fused, tuple(cl))


@pytest.mark.parametrize("epilogue", list(T.EPILOGUES))
@pytest.mark.parametrize("kernel,padding", [(3, 1), (1, 0), (5, 2), (3, 0)])
def test_conv2d_fused_gradients_match_reference(epilogue, kernel, padding):
    for transposed in (False, True):
        case = T.layer_case(2, 5, 6, 7, 9, kernel=kernel, padding=padding, transposed=transposed, epilogue=epilogue)
        names = ("x", "weight", "bias", "extra", "act_weight", "act2_weight")
        c64 = case.to(dtype=torch.float64)
        tensors = {n: getattr(c64, n).requires_grad_() for n in names if getattr(c64, n) is not None}
        want = T.reference(c64)
        probe = torch.linspace(-1, 1, want.numel(), dtype=torch.float64).view(want.shape)
        ref_grads = torch.autograd.grad((want * probe).sum(), list(tensors.values()))
        leaves = {n: t.detach().float().requires_grad_() for n, t in tensors.items()}
        c32 = T.LayerCase(**{**vars(case), **leaves})
        out = torch.ops.redkern.conv2d_fused(*general_args(c32))
        grads = torch.autograd.grad((out * probe.float()).sum(), list(leaves.values()))
        for name, g, r in zip(leaves, grads, ref_grads):
            assert T.max_rel_error(g, r) <= 1e-4, name


def test_conv2d_fused_under_torch_compile_fullgraph():
    case = T.layer_case(1, 6, 7, 9, 8, kernel=5, epilogue="prelu_then_leaky")
    fn = torch.compile(lambda *a: torch.ops.redkern.conv2d_fused(*a), fullgraph=True, backend="aot_eager")
    T.assert_close(fn(*general_args(case)), T.reference(case), 1e-5)


# --- the three RED-Net ops --------------------------------------------------------------------------

def wrapper_case(name, n, cin, cout, h, w, dtype=torch.float32) -> T.LayerCase:
    _, _, transposed, extra = WRAPPERS[name]
    epilogue = {None: "relu", "skip": "relu_add_relu", "residual": "add_residual"}[extra]
    return T.layer_case(n, cin, cout, h, w, transposed=transposed, epilogue=epilogue, dtype=dtype)


def make_args(name, n, cin, cout, h, w, dtype=torch.float32):
    c = wrapper_case(name, n, cin, cout, h, w, dtype)
    return [c.x, c.weight, c.bias] + ([c.extra] if WRAPPERS[name][3] else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("cin,cout", CHANNELS)
@pytest.mark.parametrize("n,h,w", SIZES)
def test_op_matches_reference(name, cin, cout, n, h, w, backend):
    if backend in SLOW and (cin * cout > 64 * 64 or h * w > 400):
        cin, cout, h, w = min(cin, 17), min(cout, 17), min(h, 9), min(w, 11)
    op, ref, _, _ = WRAPPERS[name]
    case = wrapper_case(name, n, cin, cout, h, w)
    args = [case.x, case.weight, case.bias] + ([case.extra] if case.extra is not None else [])
    got = op(*args, backend=backend)
    want = ref(*[a.double() for a in args])
    assert got.shape == want.shape and got.dtype == args[0].dtype
    # against the terms' magnitude: a 1x1 image's few outputs can cancel (or ReLU) to nearly zero
    T.assert_close(got, want, 1e-5, T.magnitude(case))


@pytest.mark.parametrize("name", list(WRAPPERS))
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_op_accepts_any_layout_and_keeps_the_memory_format(name, layout):
    op, ref, _, _ = WRAPPERS[name]
    args = make_args(name, 2, 16, 24, 13, 11)
    if layout == "channels_last":
        args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 and i != 1 else a
                for i, a in enumerate(args)]
    elif layout == "sliced":
        args[0] = torch.randn(2, 16, 26, 11)[:, :, ::2]
    else:
        args[0] = torch.randn(2, 16, 11, 13).transpose(2, 3)
    got = op(*args)
    T.assert_close(got, ref(*[a.double() for a in args]), 1e-5)
    if layout == "channels_last":
        assert got.stride(1) == 1 and got.is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous()


def test_bfloat16_close_to_float32():
    args = make_args("deconv_relu_skip", 1, 64, 64, 19, 23)
    got = torch.ops.redkern.deconv_relu(*[a.bfloat16() for a in args])
    # the CPU kernel the op runs: on CPUs with AMX or fast vdpbf16ps, a GEMM on bf16-rounded operands
    algorithm = cpu.choose_algorithm(64, 64, 3, 1, True, torch.bfloat16) if cpu.status()["available"] else None
    T.assert_close(got, ops.reference_deconv_relu(*[a.bfloat16().double() for a in args]),
                   T.cpu_tolerance(torch.bfloat16, algorithm, 64))


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_opcheck(name):
    op, _, _, _ = WRAPPERS[name]
    for n, cin, cout, h, w in [(1, 3, 8, 5, 7), (2, 8, 3, 4, 6)]:
        args = [a.requires_grad_() for a in make_args(name, n, cin, cout, h, w)]
        torch.library.opcheck(op, tuple(args))
        args_cl = [a.detach().contiguous(memory_format=torch.channels_last) if a.dim() == 4 and i != 1
                   else a.detach() for i, a in enumerate(args)]
        torch.library.opcheck(op, tuple(args_cl))


@pytest.mark.parametrize("name", list(WRAPPERS))
def test_backward_matches_reference(name):
    op, ref, _, _ = WRAPPERS[name]
    args = [a.double().requires_grad_() for a in make_args(name, 2, 5, 6, 7, 9)]
    probe = torch.linspace(-1, 1, 6 * 7 * 9 * 2, dtype=torch.float64).view(2, 6, 7, 9)
    ref_grads = torch.autograd.grad((ref(*args) * probe).sum(), args)
    args32 = [a.detach().float().requires_grad_() for a in args]
    grads = torch.autograd.grad((op(*args32) * probe.float()).sum(), args32)
    for g, r in zip(grads, ref_grads):
        assert T.max_rel_error(g, r) <= 1e-4


# --- bad arguments, NaN ---------------------------------------------------------------------------

def test_ops_reject_bad_arguments_with_clear_errors():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(8, 4, 3, 3)
    b = torch.randn(8)
    with pytest.raises(ValueError, match="weight must be"):
        torch.ops.redkern.conv_relu(x, torch.randn(8, 3, 3, 3), b)
    with pytest.raises(ValueError, match="bias"):
        torch.ops.redkern.conv_relu(x, w, torch.randn(7))
    with pytest.raises(ValueError, match="skip/residual"):
        torch.ops.redkern.deconv_residual(torch.randn(1, 8, 5, 5), w, torch.randn(4), torch.randn(1, 4, 5, 6))
    with pytest.raises(ValueError, match="unknown backend"):
        torch.ops.redkern.conv_relu(x, w, b, "opencl")
    with pytest.raises(TypeError, match="CPU kernels take"):
        torch.ops.redkern.conv_relu(x.double(), w.double(), b.double())
    with pytest.raises(redkern.BackendUnavailable, match="cuda|CUDA|triton|Triton"):
        torch.ops.redkern.conv_relu(x, w, b, "cuda")
    with pytest.raises(ValueError, match="3x3 kernel"):
        torch.ops.redkern.conv_relu(x, torch.randn(8, 4, 5, 5), b)


def test_conv2d_fused_names_what_is_wrong():
    case = T.layer_case(1, 4, 6, 5, 5, epilogue="prelu_then_leaky")
    args = list(general_args(case))
    bad = {
        "empty dimension": (1, torch.randn(0, 4, 3, 3)),
        r"padding \[3, 3\] for a 3x3 kernel": (7, [3, 3]),
        "leaves no output": (1, torch.randn(6, 4, 9, 9)),
        "needs extra": (3, None),
        "PRELU needs act_weight": (4, None),
        "act_weight must be a PReLU weight of 1 or 6": (4, torch.rand(4)),
        r"extra must have shape \(1, 6, 5, 5\)": (3, torch.randn(1, 6, 5, 4)),
    }
    for message, (i, value) in bad.items():
        with pytest.raises(ValueError, match=message):
            torch.ops.redkern.conv2d_fused(*args[:i], value, *args[i + 1:])
    with pytest.raises(ValueError, match="Epilogue.act must be one of"):
        torch.ops.redkern.conv2d_fused(*args[:8], 99, *args[9:])
    zero = T.layer_case(1, 4, 6, 5, 5).weight[:0]
    with pytest.raises(ValueError, match=r"the weight \(0, 4, 3, 3\).*empty dimension"):
        torch.ops.redkern.conv2d_fused(case.x, zero, None, None, None, None, False, [1, 1], *redkern.Epilogue().encode(),
                                       "auto")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_values_reach_at_least_where_they_reach_in_pytorch(backend):
    """The ops do not scan for NaN/inf (fused models do, see test_fused_model): they propagate,
    everywhere PyTorch's would, and (Winograd tiles mix 6x6 inputs) possibly further."""
    case = T.layer_case(1, 16 if backend == "cpu" else 4, 16 if backend == "cpu" else 4, 12, 12, epilogue="relu")
    case.x[0, 0, 5, 6] = float("nan")
    got = torch.ops.redkern.conv2d_fused(*general_args(case, backend))
    want = T.reference(case)
    assert torch.isnan(got[torch.isnan(want)]).all()
    finite = ~torch.isnan(got)
    assert torch.allclose(got[finite].double(), want[finite], rtol=1e-5, atol=1e-5)
