"""The Triton kernel against the reference, on CPU under Triton's interpreter.

The root conftest.py sets TRITON_INTERPRET=1 (before triton is imported) on machines with no
GPU, so CI runs the real kernel code through numpy. On a GPU machine without the interpreter
the same checks run natively on CUDA tensors; tests/test_gpu_triton.py adds the GPU-only ones
(bfloat16, autotuning, bigger shapes). ``test_kernel_compiles_for_gpus`` compiles the kernel
to sm_80/sm_90 machine code here too, which the interpreter alone would not prove.

Layers come from ``redkern.testing`` (the cases and float64 reference every backend shares).
Every kernel call writes into a NaN-filled output, so an element it fails to write fails the
check; NaN never passes ``testing.assert_close``. The interpreter is slow: images are small.
"""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import redkern
from redkern import ops
from redkern import testing as T
from redkern.backends.common import BackendUnavailable
from redkern.epilogue import Act, Epilogue

tb, DEVICE = T.triton_or_skip()  # skips the module without a Triton backend


INTERPRETED = tb._kernels.INTERPRETED
FP32, FP16 = torch.float32, torch.float16
DTYPES = {"fp32": FP32, "fp16": FP16}
EPILOGUE_NAMES = list(T.EPILOGUES)
# testing.KERNELS and non-square windows, with and without padding on each axis.
KERNELS = T.KERNELS + [((3, 5), (1, 2)), ((1, 3), (0, 1)), ((5, 3), (0, 2))]


def case(n=2, cin=5, cout=7, h=5, w=7, *, kernel=3, padding=None, transposed=False,
         epilogue="relu", dtype=FP32) -> T.LayerCase:
    return T.layer_case(n, cin, cout, h, w, kernel=kernel, padding=padding, transposed=transposed,
                        epilogue=epilogue, dtype=dtype, device=DEVICE)


def run(c: T.LayerCase, **overrides) -> torch.Tensor:
    """``c`` through the backend into a NaN-poisoned NHWC output, checked against the reference."""
    dtype = c.x.dtype
    out = T.poisoned_nhwc(c.out_shape, dtype, DEVICE)
    y = tb.conv2d(*c.tensors, **{**c.options, **overrides}, out=out)
    assert y is out and y.stride(1) == 1
    T.assert_close(y, T.reference(c), T.TOLERANCE[dtype])
    return y


def test_status_tells_the_mode():
    st_ = redkern.backends()["triton"]
    assert st_["available"] and st_["devices"] == [DEVICE.type]
    assert ("interpreter mode on CPU" if INTERPRETED else "on CUDA device") in st_["detail"]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "deconv"])
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_every_epilogue(epilogue, transposed, dtype):
    """Every act/residual combination; a conv whose Cin overhangs a channel block (70) and a
    deconv whose few input channels share reduction steps (3 -> 64)."""
    cin, cout = (3, 64) if transposed else (70, 19)
    run(case(2, cin, cout, 5, 7, transposed=transposed, epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "deconv"])
@pytest.mark.parametrize("kernel,padding", KERNELS, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_every_kernel(kernel, padding, transposed, dtype):
    """Every window and padding ("same" and "valid", square and not), channels on and off the
    block sizes, an epilogue that changes with the case."""
    i = KERNELS.index((kernel, padding)) + 2 * transposed
    cin, cout = [(1, 64), (17, 3), (64, 33), (5, 1)][i % 4]
    big = max(kernel if isinstance(kernel, tuple) else (kernel,)) == 9
    if big:
        cin = min(cin, 17)  # the interpreter's cost grows with 81 taps x channel blocks
    h, w = (9, 9) if big else (5, 7)
    epilogue = EPILOGUE_NAMES[(3 * i + (dtype == FP16)) % len(EPILOGUE_NAMES)]
    run(case(2, cin, cout, h, w, kernel=kernel, padding=padding, transposed=transposed,
             epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("cin,cout", [(1, 1), (1, 64), (64, 1), (3, 3), (2, 70), (70, 5), (64, 64), (33, 17)],
                         ids=lambda v: str(v))
def test_channel_counts(cin, cout):
    run(case(2, cin, cout, 5, 7, kernel=3, epilogue="relu_add_relu", transposed=cin % 2 == 0))


@pytest.mark.parametrize("cin,cout,kernel,padding,epilogue", [
    (1, 64, 9, 4, "relu"), (64, 32, 1, 0, "relu"), (32, 1, 5, 2, "identity"),  # SRCNN 9-1-5
    (1, 64, 9, 0, "relu"),                                                     # its "valid" form
    (64, 16, 9, 4, "prelu"),   # 81 taps of a full channel block each
], ids=["srcnn1", "srcnn2", "srcnn3", "srcnn1_valid", "9x9x64"])
def test_srcnn_layers(cin, cout, kernel, padding, epilogue):
    run(case(2, cin, cout, 11, 10, kernel=kernel, padding=padding, epilogue=epilogue))


@pytest.mark.skipif(INTERPRETED, reason="bfloat16: Triton's interpreter cannot do bf16 arithmetic (numpy has no "
                                        "bfloat16); bf16 is tested on a GPU only (here and in test_gpu_triton.py)")
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_bf16_layer_matches_reference(epilogue):
    run(case(2, 64, 64, 17, 9, kernel=3, transposed=True, epilogue=epilogue, dtype=torch.bfloat16))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), cin=st.sampled_from([1, 2, 5, 17, 70]), cout=st.sampled_from([1, 4, 19, 64, 80]),
       kh=st.sampled_from([1, 2, 3, 4, 5]), kw=st.sampled_from([1, 2, 3, 5]),
       ph=st.integers(0, 4), pw=st.integers(0, 4), h=st.integers(1, 9), w=st.integers(1, 9),
       transposed=st.booleans(), epilogue=st.sampled_from(EPILOGUE_NAMES), fp16=st.booleans())
def test_layer_any_shape(n, cin, cout, kh, kw, ph, pw, h, w, transposed, epilogue, fp16):
    """Any window (even sizes too), padding and image down to 1 pixel, every epilogue."""
    ph, pw = ph % kh, pw % kw
    oh = h + kh - 1 - 2 * ph if transposed else h + 2 * ph - kh + 1
    ow = w + kw - 1 - 2 * pw if transposed else w + 2 * pw - kw + 1
    assume(oh >= 1 and ow >= 1)
    run(case(n, cin, cout, h, w, kernel=(kh, kw), padding=(ph, pw), transposed=transposed,
             epilogue=epilogue, dtype=FP16 if fp16 else FP32))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("epilogue", ["identity", "relu", "leaky_relu", "prelu", "tanh", "relu_add_relu",
                                      "tanh_then_prelu", "add_residual"])
def test_nan_propagates(epilogue, dtype):
    """A NaN pixel in x (and one in extra) makes NaN exactly where the reference has NaN
    (every activation keeps NaN, as torch's do); everything else still matches."""
    c = case(1, 3, 5, 6, 7, kernel=3, padding=(1, 0), epilogue=epilogue, dtype=dtype)
    c.x[0, 1, 2, 3] = float("nan")
    if c.extra is not None:
        c.extra[0, 4, 0, 0] = float("nan")
    out = T.poisoned_nhwc(c.out_shape, dtype, DEVICE)
    y = tb.conv2d(*c.tensors, **c.options, out=out).cpu()
    want = T.reference(c)
    nan = want.isnan()
    assert nan.any()
    assert torch.equal(y.isnan(), nan), "NaN where the reference has none, or a NaN lost"
    T.assert_close(torch.where(nan, 0, y.double()), torch.where(nan, 0, want), T.TOLERANCE[dtype])


def test_tanh_to_fp32_rounding():
    """tanh over [-20, 20], tiny and huge values, each within 2 ulps of float64's tanh."""
    mag = torch.logspace(-8, 1.3, 1500)
    v = torch.cat([torch.linspace(-20, 20, 1601), mag, -mag, torch.tensor([0.0, 0.625, -0.625, 40, -40, 1e4, 3e38])])
    x = v.view(1, 1, 1, -1).to(DEVICE)
    y = tb.conv2d(x, torch.ones(1, 1, 1, 1, device=DEVICE), torch.zeros(1, device=DEVICE), transposed=False,
                  padding=(0, 0), epilogue=Epilogue(act=Act.TANH)).view(-1).cpu().double()
    want = torch.tanh(v.double())
    assert ((y - want).abs() <= 2 * 2**-23 * want.abs()).all(), ((y - want).abs() / want.abs()).max()


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_layouts_and_allocated_output(layout):
    """x and extra in any layout (NCHW, NHWC, a strided view), 1-channel layers; without
    ``out`` the result is a fresh dense NHWC tensor."""
    for cin, cout in ((1, 6), (6, 1)):
        c = case(2, cin, cout, 6, 5, kernel=3, transposed=True, epilogue="tanh_then_prelu")
        if layout == "nhwc":
            c.x, c.extra = T.poisoned_nhwc(c.x.shape, FP32, DEVICE).copy_(c.x), \
                T.poisoned_nhwc(c.extra.shape, FP32, DEVICE).copy_(c.extra)
        elif layout == "strided":
            c.x = torch.cat([c.x, c.x], dim=3)[..., ::2]
            c.extra = c.extra.transpose(2, 3).contiguous().transpose(2, 3)
        y = tb.conv2d(*c.tensors, **c.options)
        assert y.stride(1) == 1 and tb.to_nhwc(y) is y
        T.assert_close(y, T.reference(c), T.TOLERANCE[FP32])


def test_out_is_checked():
    c = case(1, 4, 6, 5, 5, kernel=3, padding=(0, 1), epilogue="add_residual")  # out 3x5
    run(c)
    opts = c.options
    bad = {
        "shape": T.poisoned_nhwc((1, 6, 5, 5), FP32, DEVICE),
        "layout": torch.empty(c.out_shape, device=DEVICE),
        "dtype": T.poisoned_nhwc(c.out_shape, FP16, DEVICE),
    }
    for why, out in bad.items():
        with pytest.raises(ValueError, match="NHWC" if why != "dtype" else "float16"):
            tb.conv2d(*c.tensors, **opts, out=out)
    extra = tb.to_nhwc(c.extra)
    with pytest.raises(ValueError, match="overlap"):
        tb.conv2d(c.x, c.weight, c.bias, extra, **opts, out=extra)
    x = tb.to_nhwc(torch.randn(1, 6, 3, 5, device=DEVICE))
    with pytest.raises(ValueError, match="overlap"):  # a layer whose out would alias its input
        tb.conv2d(x, torch.randn(6, 6, 1, 1, device=DEVICE), None, transposed=False, padding=(0, 0),
                  epilogue=Epilogue(), out=x)


def test_rejects_bad_arguments():
    c = case(1, 4, 6, 5, 5, kernel=3, epilogue="prelu_then_leaky")
    opts = c.options

    def call(**kw):
        args = dict(zip(("x", "weight", "bias", "extra"), c.tensors))
        args.update({k: v for k, v in kw.items() if k in args})
        tb.conv2d(*args.values(), **{**opts, **{k: v for k, v in kw.items() if k not in args}})

    call()
    for padding in ((3, 1), (1, -1)):
        with pytest.raises(ValueError, match="padding .* out of range for a 3x3 kernel"):
            call(padding=padding)
    with pytest.raises(ValueError, match="x has 5 channels"):
        call(x=torch.randn(1, 5, 5, 5, device=DEVICE))
    with pytest.raises(ValueError, match="weight is torch.float16"):
        call(weight=c.weight.half())
    with pytest.raises(ValueError, match="needs an extra"):
        call(extra=None)
    with pytest.raises(ValueError, match="takes no extra"):
        call(epilogue=Epilogue(act=Act.PRELU))
    with pytest.raises(ValueError, match="slopes2: the epilogue's LEAKY_RELU needs"):
        call(slopes2=None)
    with pytest.raises(ValueError, match=r"slopes must be a contiguous float32 \(6,\)"):
        call(slopes=torch.ones(5, device=DEVICE))
    with pytest.raises(ValueError, match=r"slopes must be a contiguous float32"):
        call(slopes=torch.ones(6, device=DEVICE, dtype=torch.float64))
    with pytest.raises(ValueError, match="extra must be a dense NHWC"):
        call(extra=torch.randn(1, 6, 4, 5, device=DEVICE))
    with pytest.raises(ValueError, match=r"bias must be a contiguous \(6,\)"):
        call(bias=torch.zeros(7, device=DEVICE))
    with pytest.raises(TypeError, match="redkern.epilogue.Epilogue"):
        call(epilogue=0)  # a bare code, as the old 3x3 kernels took
    with pytest.raises(ValueError, match="empty output"):  # a 5x5 window over a 3x4 image, unpadded
        tb.conv2d(torch.randn(1, 4, 3, 4, device=DEVICE), torch.randn(2, 4, 5, 5, device=DEVICE), None,
                  transposed=False, padding=(0, 0), epilogue=Epilogue())
    with pytest.raises(TypeError, match="float64"):
        c64 = c.to(dtype=torch.float64)
        tb.conv2d(*c64.tensors, **c64.options)
    if INTERPRETED:
        with pytest.raises(TypeError, match="bfloat16"):
            cb = c.to(dtype=torch.bfloat16)
            tb.conv2d(*cb.tensors, **cb.options)
        with pytest.raises(BackendUnavailable):
            tb.check_can_run(torch.device("cuda"))


def test_algorithm_labels_and_limits():
    assert tb.algorithm(64, 64, 3, 1, False, FP32) == "implicit GEMM 3x3"
    assert tb.algorithm(1, 64, (9, 9), (4, 4), False, FP16) == "implicit GEMM 9x9"
    assert tb.algorithm(64, 3, (1, 3), (0, 2), True, FP32) == "implicit GEMM 1x3 transposed"
    with pytest.raises(BackendUnavailable, match="padding"):
        tb.algorithm(8, 8, 3, 3, False, FP32)
    with pytest.raises(BackendUnavailable, match="float64"):
        tb.algorithm(8, 8, 3, 1, False, torch.float64)
    if INTERPRETED:
        with pytest.raises(BackendUnavailable, match="bfloat16"):
            tb.algorithm(8, 8, 3, 1, False, torch.bfloat16)


def test_weight_prepared_once_per_version(monkeypatch):
    calls = []
    pack = tb._kernels.pack_weight
    monkeypatch.setattr(tb._kernels, "pack_weight", lambda w, *a: calls.append(1) or pack(w, *a))
    c = case(1, 3, 8, 5, 4, kernel=(3, 5), transposed=True, epilogue="relu")
    for _ in range(3):
        tb.conv2d(*c.tensors, **c.options)
    assert len(calls) == 1
    with torch.no_grad():
        c.weight.mul_(-2.0)  # an optimizer step, in place: the cache must notice
    run(c)
    assert len(calls) == 2


def test_tf32_is_opt_in(monkeypatch):
    monkeypatch.setenv("REDKERN_TF32", "1")
    assert tb.tf32_allowed()
    monkeypatch.setenv("REDKERN_TF32", "0")
    assert not tb.tf32_allowed()
    monkeypatch.delenv("REDKERN_TF32")
    assert not tb.tf32_allowed()  # torch's default: fp32 matmuls exact


# --- through the public ops and the fused model ----------------------------------------------

@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_custom_ops_route_to_triton(channels_last):
    """torch.ops.redkern.* with backend='triton': same values, output in the input's layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = case(2, 64, 64, 7, 6, kernel=3, epilogue="relu")
    deconv = case(2, 64, 64, 7, 6, kernel=3, transposed=True, epilogue="relu_add_relu")
    x, skip = conv.x.contiguous(memory_format=fmt), deconv.extra.contiguous(memory_format=fmt)
    deconv = dataclasses.replace(deconv, x=x, extra=skip)
    residual = dataclasses.replace(deconv, epilogue=T.EPILOGUES["add_residual"])
    for y, c in ((ops.conv_relu(x, conv.weight, conv.bias, "triton"), conv),
                 (ops.deconv_relu(x, deconv.weight, deconv.bias, skip, "triton"), deconv),
                 (ops.deconv_residual(x, deconv.weight, deconv.bias, skip, "triton"), residual)):
        assert y.is_contiguous(memory_format=fmt)
        T.assert_close(y, T.reference(c), T.TOLERANCE[FP32])


@pytest.mark.parametrize("make", [redkern.RED10, redkern.RED30], ids=["RED10", "RED30"])
def test_fused_model_matches_reference(make):
    ref = make().to(DEVICE)
    fused = make(fused=True, backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.rand(1, 1, 9, 11, device=DEVICE)
    with torch.no_grad():
        y, r = fused(x), ref.double()(x.double())
    T.assert_close(y, r, 1e-5)
    # The output is x + a residual; check the residual alone too, so x cannot hide an error.
    T.assert_close(y - x, r - x.double(), 1e-5)


# --- machine code, without a GPU ----------------------------------------------------------------

_COMPILE = textwrap.dedent("""
    import itertools, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from redkern.kernels import conv2d as k
    from redkern.epilogue import Act, Residual

    fn = k._conv2d_nhwc_kernel
    assert not k.INTERPRETED
    SLOPED = (Act.LEAKY_RELU, Act.PRELU)

    def compile_for(cc, dtype, cin, cout, kernel, padding, act, residual, act2, tile, wide=False):
        tile, taps_per_step = k.fit_tile(tile, cin, cout, kernel[0] * kernel[1])
        p, none = "*" + dtype, "constexpr"
        sig = dict(x_ptr=p, w_ptr=p, bias_ptr="*fp32", extra_ptr=p if residual else none,
                   slope_ptr="*fp32" if act in SLOPED else none, slope2_ptr="*fp32" if act2 in SLOPED else none,
                   out_ptr=p, alpha="fp32", beta="fp32", M="i32", H="i32", W="i32", OH="i32", OW="i32",
                   M_BUCKET="i32")
        const = {n: None for n, t in sig.items() if t == none}
        const.update(CIN=cin, COUT=cout, KH=kernel[0], KW=kernel[1], PH=padding[0], PW=padding[1],
                     ACT=int(act), RESIDUAL=int(residual), ACT2=int(act2), INPUT_PRECISION="ieee",
                     WIDE_INDEX=wide, **k._meta(tile, taps_per_step))
        sig.update({n: "constexpr" for n in const})
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(n),): v for n, v in const.items()})
        binary = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                options=dict(num_warps=tile.num_warps, num_stages=tile.num_stages))
        assert binary.asm["cubin"], "no machine code"

    T = k.GPU_TILES
    A, R = Act, Residual
    compile_for(90, "fp16", 64, 64, (3, 3), (1, 1), A.RELU, R.AFTER_ACT, A.RELU, T[0])       # RED, channel blocks
    compile_for(90, "fp16", 1, 64, (9, 9), (4, 4), A.PRELU, R.NONE, A.IDENTITY, T[0])        # packed taps
    compile_for(90, "fp32", 3, 64, (5, 3), (0, 2), A.TANH, R.AFTER_ACT, A.LEAKY_RELU, T[2])  # fp32, non-square
    compile_for(90, "bf16", 70, 3, (1, 1), (0, 0), A.LEAKY_RELU, R.BEFORE_ACT, A.IDENTITY, T[4], wide=True)
    compile_for(80, "fp16", 17, 33, (3, 3), (0, 1), A.TANH, R.AFTER_ACT, A.PRELU, T[3])      # sm_80
    print("compiled")
""")


def test_kernel_compiles_for_gpus(compile_offline):
    """Triton compiles the kernel to sm_90/sm_80 cubins on any machine: code the interpreter
    accepts but the compiler would not (a type, a constexpr misuse) fails here, without a GPU."""
    compile_offline(_COMPILE)
