"""The Triton weight-gradient kernel (kernels/conv2d_wgrad.py) against aten's, in float64.

As tests/test_triton_interpreter.py: the root conftest.py sets TRITON_INTERPRET=1 (before
triton is imported) on machines with no GPU, so the real kernel runs through numpy on CPU
tensors; with a GPU the same checks run natively. ``test_kernel_compiles_for_gpus`` compiles
the kernel to sm_80/sm_90 machine code, which the interpreter alone would not prove.

The reference is ``aten.convolution_backward``'s weight and bias gradients computed in float64
on the CPU from the very same (rounded) inputs. Every buffer the backend allocates is
NaN-filled (conftest's ``poisoned_empty``), so an element no program writes fails the check;
NaN never passes ``testing.assert_close``. The interpreter is slow: images are small (odd
sizes, batch 2), yet several chunks of pixels each, so the partial sums are exercised.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from redkern import testing as T
from redkern.backends.common import BackendUnavailable
from redkern.epilogue import output_size

tb, DEVICE = T.triton_or_skip()  # skips the module without a Triton backend

from redkern.kernels import conv2d_wgrad as wk  # noqa: E402

INTERPRETED = tb._kernels.INTERPRETED
FP32, FP16 = torch.float32, torch.float16
# Relative to max |reference|. The gradients come back in float32 for every input dtype, and
# fp16/bf16 products are exact in fp32: only the fp32 sums round, so one tolerance serves all.
REL = 1e-4


def reference(x, grad, weight_shape, transposed, padding):
    """``(grad_weight, grad_bias)`` from ``aten.convolution_backward`` in float64 on the CPU."""
    cout = weight_shape[1 if transposed else 0]
    weight = torch.zeros(weight_shape, dtype=torch.float64)  # only its shape matters for these two
    _, gw, gb = torch.ops.aten.convolution_backward(
        grad.detach().double().cpu(), x.detach().double().cpu(), weight, [cout], [1, 1], list(padding), [1, 1],
        transposed, [0, 0], 1, [False, True, True])
    return gw, gb


def layer(n=2, cin=3, cout=5, h=7, w=11, *, kernel=(3, 3), padding=(1, 1), transposed=False, dtype=FP32):
    """Random ``(x, grad, options)`` of one layer, x in NCHW, grad in NHWC (the kernel takes
    any layout; these are the two a backward sees)."""
    kh, kw = kernel
    weight_shape = (cin, cout, kh, kw) if transposed else (cout, cin, kh, kw)
    oh, ow = output_size(h, kh, padding[0], transposed), output_size(w, kw, padding[1], transposed)
    x = torch.randn(n, cin, h, w).to(dtype=dtype, device=DEVICE)
    grad = torch.randn(n, cout, oh, ow).to(dtype=dtype, device=DEVICE).contiguous(memory_format=torch.channels_last)
    return x, grad, dict(weight_shape=weight_shape, transposed=transposed, padding=padding)


def check(x, grad, options):
    """The backend against the reference: shapes, dtypes, layout, values (NaN fails)."""
    gw, gb = tb.conv2d_weight_grad(x, grad, **options)
    want_w, want_b = reference(x, grad, **options)
    assert gw.dtype == gb.dtype == torch.float32 and gw.device == gb.device == x.device
    assert tuple(gw.shape) == tuple(options["weight_shape"]) and gw.is_contiguous()
    assert tuple(gb.shape) == (want_b.shape[0],)
    T.assert_close(gw, want_w, REL)
    T.assert_close(gb, want_b, REL)
    return gw, gb


def _paddings(kh, kw):
    """Every padding value on each axis (0..k-1), paired so both axes differ."""
    return sorted({(i % kh, (2 * i + 1) % kw) for i in range(max(kh, kw))})


# Every window with every padding on each axis; channels cycle through 1..20 (cin=1 and cout=1,
# off the 16-column blocks, several taps packed per block or one tap's channels per block).
CHANNELS = [(1, 1), (1, 7), (5, 1), (3, 20), (17, 4), (20, 17), (9, 13), (16, 16), (2, 19), (13, 2)]
SWEEP = [(kernel, padding, transposed)
         for transposed in (False, True)
         for kernel in ((1, 1), (3, 3), (5, 5), (3, 5))
         for padding in _paddings(*kernel)]


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("kernel,padding,transposed", SWEEP,
                         ids=[f"{'deconv' if t else 'conv'}{k[0]}x{k[1]}p{p[0]}{p[1]}" for k, p, t in SWEEP])
def test_every_window_and_padding(kernel, padding, transposed):
    i = SWEEP.index((kernel, padding, transposed))
    cin, cout = CHANNELS[i % len(CHANNELS)]
    h, w = (7, 11) if i % 2 else (5, 9)
    check(*layer(2, cin, cout, h, w, kernel=kernel, padding=padding, transposed=transposed))


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("cin,cout,kernel,padding,transposed", [
    (64, 20, (3, 3), (1, 1), False),  # one tap's 64 channels per column block, no channel mask
    (70, 9, (3, 5), (0, 2), True),    # two channel blocks per tap, the second overhanging Cin
    (33, 70, (1, 1), (0, 0), False),  # output channels over two row blocks
], ids=["64ch", "70ch_deconv", "70cout_1x1"])
def test_wide_layers(cin, cout, kernel, padding, transposed):
    check(*layer(2, cin, cout, 5, 7, kernel=kernel, padding=padding, transposed=transposed))


@pytest.mark.usefixtures("poisoned_empty")
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "deconv"])
def test_fp16_accumulates_in_fp32(transposed):
    """float16 activations, float32 gradients summed in fp32: as exact as float32's."""
    check(*layer(2, 6, 11, 7, 11, kernel=(3, 5), padding=(1, 1), transposed=transposed, dtype=FP16))


@pytest.mark.skipif(INTERPRETED, reason="bfloat16: Triton's interpreter cannot do bf16 arithmetic (numpy has no "
                                        "bfloat16); bf16 runs on a GPU only")
def test_bf16_on_gpu():
    check(*layer(2, 16, 16, 9, 13, kernel=(3, 3), padding=(1, 1), transposed=True, dtype=torch.bfloat16))


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_any_layout(layout):
    """x and grad NCHW, NHWC or strided views (1-channel ones too): the same values."""
    for cin, cout in ((1, 6), (6, 1)):
        x, grad, opts = layer(2, cin, cout, 5, 9, kernel=(3, 3), padding=(1, 0), transposed=True)
        if layout == "nchw":
            grad = grad.contiguous()
        elif layout == "nhwc":
            x = T.poisoned_nhwc(x.shape, FP32, DEVICE).copy_(x)
            grad = T.poisoned_nhwc(grad.shape, FP32, DEVICE).copy_(grad)
        else:
            x = torch.cat([x, x], dim=3)[..., ::2]
            grad = grad.transpose(2, 3).contiguous().transpose(2, 3)
        check(x, grad, opts)


def test_bitwise_deterministic():
    """Many chunks of pixels, each summed into its own partial and added in a fixed order:
    two calls give the same bits."""
    x, grad, opts = layer(2, 9, 13, 17, 19, kernel=(3, 3), padding=(1, 1))
    chunks, _ = wk.chunking(2 * 17 * 19, 9, 13, 9, DEVICE)
    if INTERPRETED:
        assert chunks > 2, "the case should split the pixels"
    first = check(x, grad, opts)
    second = tb.conv2d_weight_grad(x, grad, **opts)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("m", [1, 127, 128, 129, 1000, 2**20 + 3])
def test_chunking_covers_every_pixel_once(m):
    chunks, chunk_len = wk.chunking(m, 16, 16, 9, DEVICE)
    assert chunk_len % 128 == 0 and 1 <= chunks
    assert (chunks - 1) * chunk_len < m <= chunks * chunk_len  # no empty chunk, none missing


@pytest.mark.parametrize("where", ["x", "grad"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "deconv"])
def test_nan_propagates(where, transposed):
    """A NaN inside the image makes NaN exactly where the reference has NaN (every weight that
    reads it; the bias too for a gradient NaN); everything else still matches."""
    x, grad, opts = layer(2, 4, 5, 7, 9, kernel=(3, 3), padding=(1, 1), transposed=transposed)
    if where == "x":
        x[1, 2, 3, 4] = float("nan")
    else:
        grad[0, 3, 3, 4] = float("nan")
    got = tb.conv2d_weight_grad(x, grad, **opts)
    for g, want in zip(got, reference(x, grad, **opts)):
        nan = want.isnan()
        assert torch.equal(g.isnan().cpu(), nan), "NaN where the reference has none, or a NaN lost"
        T.assert_close(torch.where(nan, 0, g.double().cpu()), torch.where(nan, 0, want), REL)
    assert got[0].isnan().any() and not got[0].isnan().all()


def test_rejects_bad_arguments():
    x, grad, opts = layer(1, 4, 6, 5, 7, kernel=(3, 3), padding=(1, 0))  # output 5x5

    def call(x=x, grad=grad, **kw):
        return tb.conv2d_weight_grad(x, grad, **{**opts, **kw})

    call()
    with pytest.raises(ValueError, match=r"x must be \[N, Cin, H, W\]"):
        call(x=x[0])
    with pytest.raises(ValueError, match="grad is torch.float16"):
        call(grad=grad.half())
    with pytest.raises(ValueError, match="weight_shape must be the Conv2d"):
        call(weight_shape=(6, 4, 3))
    with pytest.raises(ValueError, match="weight_shape must be the ConvTranspose2d"):
        call(weight_shape=(4, 0, 3, 3), transposed=True)
    with pytest.raises(ValueError, match="x has 4 channels but the Conv2d"):
        call(weight_shape=(6, 5, 3, 3))
    with pytest.raises(ValueError, match="x has 4 channels but the ConvTranspose2d"):
        call(transposed=True)  # (6, 4, 3, 3) read as [Cin, Cout, ..]: Cin 6
    with pytest.raises(ValueError, match=r"grad must be the layer's output shape .* \[1, 7, 5, 5\]"):
        call(weight_shape=(7, 4, 3, 3))  # grad has 6 channels
    with pytest.raises(ValueError, match=r"\[1, 6, 5, 7\]"):
        call(padding=(1, 1))  # grad's 5x5 is not this padding's 5x7
    for padding in ((3, 0), (0, -1)):
        with pytest.raises(ValueError, match="padding .* out of range for a 3x3 kernel"):
            call(padding=padding)
    with pytest.raises(ValueError, match="leaves no output"):
        tb.conv2d_weight_grad(torch.randn(1, 4, 2, 7, device=DEVICE), grad, weight_shape=(6, 4, 3, 3),
                              transposed=False, padding=(0, 0))
    with pytest.raises(TypeError, match="float64"):
        call(x=x.double(), grad=grad.double())
    if INTERPRETED:
        with pytest.raises(TypeError, match="bfloat16"):
            call(x=x.bfloat16(), grad=grad.bfloat16())
        with pytest.raises(BackendUnavailable):
            tb.conv2d_weight_grad(x.to("meta"), grad.to("meta"), **opts)


def test_launcher_rejects_non_nhwc():
    x, grad, _ = layer(1, 4, 6, 5, 7, kernel=(3, 3), padding=(1, 1))
    with pytest.raises(ValueError, match="x must be a dense NHWC"):
        wk.conv2d_weight_grad_nhwc(x.contiguous(), grad, kernel=3, padding=1)  # 4-channel NCHW x
    with pytest.raises(ValueError, match=r"grad must be \[N, Cout, OH, OW\] = \[1, Cout, 3, 5\]"):
        wk.conv2d_weight_grad_nhwc(tb.to_nhwc(x), grad, kernel=3, padding=0)


# --- machine code, without a GPU ----------------------------------------------------------------

_COMPILE = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from redkern.kernels import conv2d_wgrad as k

    fn = k._conv2d_wgrad_kernel
    assert not k.INTERPRETED

    def compile_for(cc, dtype, cin, cout, kernel, padding, tile, wide=False, precision="ieee"):
        tile, taps_per_block = k.fit_tile(tile, cin, cout, kernel[0] * kernel[1])
        p = "*" + dtype
        sig = dict(x_ptr=p, g_ptr=p, dw_ptr="*fp32", db_ptr="*fp32", M="i32", H="i32", W="i32", OH="i32",
                   OW="i32", CHUNK="i32", M_BUCKET="i32")
        const = dict(CIN=cin, COUT=cout, KH=kernel[0], KW=kernel[1], PH=padding[0], PW=padding[1],
                     INPUT_PRECISION=precision, WIDE_INDEX=wide, **k._meta(tile, taps_per_block))
        sig.update({n: "constexpr" for n in const})
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(n),): v for n, v in const.items()})
        binary = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                options=dict(num_warps=tile.num_warps, num_stages=tile.num_stages))
        assert binary.asm["cubin"], "no machine code"

    T = k.WGRAD_GPU_TILES
    compile_for(90, "fp16", 64, 64, (3, 3), (1, 1), T[0])                  # RED: one tap per block
    compile_for(90, "fp16", 1, 64, (9, 9), (4, 4), T[1])                   # packed taps
    compile_for(90, "fp32", 70, 3, (3, 5), (0, 2), T[3], precision="tf32")  # overhanging channels
    compile_for(90, "bf16", 3, 64, (1, 1), (0, 0), T[4], wide=True)
    compile_for(80, "fp16", 17, 33, (3, 3), (0, 1), T[2])                  # sm_80
    compile_for(80, "fp32", 64, 64, (3, 3), (1, 1), T[5])
    print("compiled")
""")


def test_kernel_compiles_for_gpus(compile_offline):
    """Triton compiles the kernel to sm_90/sm_80 cubins on any machine: code the interpreter
    accepts but the compiler would not (a type, a constexpr misuse) fails here, without a GPU."""
    compile_offline(_COMPILE)


@pytest.mark.parametrize("epilogue", ["relu", "relu_add_relu", "add_residual", "prelu_then_leaky"])
def test_op_backward_on_triton_matches_reference(epilogue):
    """The ops' whole backward on this backend: input gradient by the forward kernel, weight and
    bias by the kernel above, against float64 autograd of the reference."""
    from redkern import ops

    case = T.layer_case(2, 5, 6, 7, 9, kernel=3, transposed=True, epilogue=epilogue).to(device=DEVICE)
    names = ("x", "weight", "bias", "extra", "act_weight", "act2_weight")
    c64 = case.to(dtype=torch.float64, device="cpu")
    ref_leaves = {n: getattr(c64, n).requires_grad_() for n in names if getattr(c64, n) is not None}
    want = T.reference(T.LayerCase(**{**vars(c64), **ref_leaves}))
    probe = torch.linspace(-1, 1, want.numel(), dtype=torch.float64).view(want.shape)
    ref_grads = torch.autograd.grad((want * probe).sum(), list(ref_leaves.values()))
    leaves = {n: getattr(case, n).detach().requires_grad_() for n in ref_leaves}
    c = T.LayerCase(**{**vars(case), **leaves})
    out = ops.fused_conv(c.x, c.weight, c.bias, c.extra, c.act_weight, c.act2_weight, c.transposed, c.padding,
                         c.epilogue, "triton")
    grads = torch.autograd.grad((out * probe.to(out)).sum(), list(leaves.values()))
    for name, g, r in zip(leaves, grads, ref_grads):
        assert T.max_rel_error(g.cpu(), r) <= 1e-4, name
