"""The three custom ops on the CPU backend against the reference PyTorch ops."""

import pytest
import torch

import redkern
from redkern import ops

OPS = {
    "conv_relu": (torch.ops.redkern.conv_relu, ops.reference_conv_relu, False, None),
    "deconv_relu": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, None),
    "deconv_relu_skip": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, "skip"),
    "deconv_residual": (torch.ops.redkern.deconv_residual, ops.reference_deconv_residual, True, "residual"),
}
CHANNELS = [(1, 64), (64, 64), (64, 1), (3, 64), (64, 3), (128, 128), (5, 7)]
SIZES = [(1, 37, 53), (2, 20, 31), (1, 3, 3), (1, 1, 1), (3, 1, 7)]


@pytest.fixture(autouse=True)
def poisoned_empty():
    """torch.empty returns NaN-filled memory, so an element a kernel forgets to write fails."""
    old = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0])
    torch.utils.deterministic.fill_uninitialized_memory = old[1]


def make_args(name, n, cin, cout, h, w, dtype=torch.float32):
    _, _, transposed, extra = OPS[name]
    x = torch.randn(n, cin, h, w, dtype=dtype)
    wshape = (cin, cout, 3, 3) if transposed else (cout, cin, 3, 3)
    weight = torch.randn(wshape, dtype=dtype) * (2.0 / (9 * cin)) ** 0.5
    bias = torch.randn(cout, dtype=dtype) * 0.1
    args = [x, weight, bias]
    if extra:
        args.append(torch.randn(n, cout, h, w, dtype=dtype))
    return args


def rel_err(got, want):
    assert torch.isfinite(got).all(), "non-finite output (an unwritten element?)"
    scale = want.abs().max().clamp_min(1e-12)
    return ((got.double() - want.double()).abs().max() / scale).item()


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("cin,cout", CHANNELS)
@pytest.mark.parametrize("n,h,w", SIZES)
def test_op_matches_reference(name, cin, cout, n, h, w):
    op, ref, _, _ = OPS[name]
    args = make_args(name, n, cin, cout, h, w)
    got = op(*args)
    want = ref(*args)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_op_accepts_any_layout_and_keeps_the_memory_format(name, layout):
    op, ref, _, _ = OPS[name]
    args = make_args(name, 2, 16, 24, 13, 11)
    if layout == "channels_last":
        args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 and i != 1 else a
                for i, a in enumerate(args)]
    elif layout == "sliced":
        big = torch.randn(2, 16, 26, 11)
        args[0] = big[:, :, ::2]
    else:
        args[0] = torch.randn(2, 16, 11, 13).transpose(2, 3)
    got = op(*args)
    assert rel_err(got, ref(*args)) <= 1e-5
    if layout == "channels_last":
        assert got.stride(1) == 1 and got.is_contiguous(memory_format=torch.channels_last)
    else:
        assert got.is_contiguous()


@pytest.mark.parametrize("name", list(OPS))
def test_opcheck(name):
    op, _, _, _ = OPS[name]
    for n, cin, cout, h, w in [(1, 3, 8, 5, 7), (2, 8, 3, 4, 6)]:
        args = make_args(name, n, cin, cout, h, w)
        args = [a.requires_grad_() for a in args]
        torch.library.opcheck(op, tuple(args))
        args_cl = [a.detach().contiguous(memory_format=torch.channels_last) if a.dim() == 4 and i != 1
                   else a.detach() for i, a in enumerate(args)]
        torch.library.opcheck(op, tuple(args_cl))


@pytest.mark.parametrize("name", list(OPS))
def test_backward_matches_reference(name):
    op, ref, _, _ = OPS[name]
    args = [a.double().requires_grad_() for a in make_args(name, 2, 5, 6, 7, 9)]
    ref_grads = torch.autograd.grad((ref(*args) * torch.linspace(-1, 1, 6 * 7 * 9 * 2, dtype=torch.float64)
                                     .view(2, 6, 7, 9)).sum(), args)
    args32 = [a.detach().float().requires_grad_() for a in args]
    out = op(*args32)
    grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum(), args32)
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) <= 1e-4


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


def test_nonfinite_values_propagate_as_in_pytorch():
    """Policy: NaN/inf are not scanned for; they propagate to the outputs they reach."""
    x = torch.randn(1, 4, 6, 6)
    x[0, 0, 2, 2] = float("nan")
    w = torch.randn(8, 4, 3, 3)
    b = torch.randn(8)
    got = torch.ops.redkern.conv_relu(x, w, b)
    want = ops.reference_conv_relu(x, w, b)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = ~torch.isnan(want)
    assert torch.allclose(got[finite], want[finite], rtol=1e-5, atol=1e-5)
