"""The Triton kernel compiled and autotuned on a CUDA GPU, against the reference.

Skipped without a CUDA device (CI proves the same kernel code under the interpreter in
test_triton_interpreter.py, which also runs natively here). Adds what only a GPU can check:
bfloat16, autotuned block shapes, bigger and 128-feature layers, every window at GPU sizes,
that image sizes and scales never recompile, TF32 opt-in, streams, 64-bit indexing (slow),
and whole RED30 forwards in every dtype.

Layers come from ``redkern.testing``; references are computed in float64 on the CPU from the
very same (rounded) inputs, so cuDNN's TF32 default cannot blur the fp32 comparison. Outputs
are NaN-poisoned before each call.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import redkern
from redkern import benchmarking as B
from redkern import ops
from redkern import testing as T
from redkern.epilogue import Act, Epilogue

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
EPILOGUE_NAMES = list(T.EPILOGUES)
KERNELS = T.KERNELS + [((3, 5), (1, 2)), ((1, 3), (0, 1)), ((5, 3), (0, 2))]
# (N, Cin, H, W, Cout): the interpreter's shapes, then GPU-sized ones (many programs, partial
# last block, a 1-pixel-high image, the released models' 128 features).
SHAPES = [(1, 64, 5, 7, 64), (2, 64, 17, 9, 64), (1, 1, 8, 8, 64), (1, 64, 8, 8, 3),
          (2, 64, 67, 45, 64), (1, 128, 33, 31, 128), (3, 64, 1, 301, 64), (2, 3, 40, 24, 3)]


def case(n, cin, cout, h, w, dtype, *, kernel=3, padding=None, transposed=False, epilogue="relu"):
    return T.layer_case(n, cin, cout, h, w, kernel=kernel, padding=padding, transposed=transposed,
                        epilogue=epilogue, dtype=dtype, device=CUDA)


def run(c: T.LayerCase, tol=None) -> float:
    """``c`` into a NaN-poisoned output; returns the relative error after checking it."""
    out = T.poisoned_nhwc(c.out_shape, c.x.dtype, CUDA)
    y = tb.conv2d(*c.tensors, **c.options, out=out)
    torch.cuda.synchronize()
    assert y is out
    want = T.reference(c)
    T.assert_close(y, want, tol or TOL[c.x.dtype])
    return T.max_rel_error(y, want)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "{}x{}x{}x{}->{}".format(*s))
def test_layer_matches_reference(shape, dtype):
    i = SHAPES.index(shape)
    n, cin, h, w, cout = shape
    run(case(n, cin, cout, h, w, dtype, transposed=i % 2 == 1, epilogue=EPILOGUE_NAMES[i % len(EPILOGUE_NAMES)]))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "deconv"])
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_every_epilogue(epilogue, transposed, dtype):
    run(case(2, 64, 64, 31, 19, dtype, transposed=transposed, epilogue=epilogue))


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("kernel,padding", KERNELS, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_every_kernel(kernel, padding, dtype):
    """Each window at GPU sizes, conv and deconv, a full and a packed-taps channel count."""
    for transposed, (cin, cout) in ((False, (64, 64)), (True, (3, 64)), (False, (1, 32))):
        run(case(2, cin, cout, 37, 29, dtype, kernel=kernel, padding=padding, transposed=transposed,
                 epilogue="prelu_then_leaky" if transposed else "relu"))


def _compiled_variants() -> int | None:
    caches = getattr(tb._kernels._conv2d_nhwc_kernel, "device_caches", None)
    return None if caches is None else sum(len(c[0]) for c in caches.values())


def test_image_sizes_and_scales_do_not_recompile():
    """New image sizes (and alpha/beta) reuse the compiled kernels; the autotuner re-tunes
    once per power of two of the pixel count, not per size."""
    tuned = tb._kernels._conv2d_nhwc_tuned
    base = case(2, 64, 48, 40, 40, torch.float16, kernel=5, epilogue="scaled_residual")  # 3200 px -> 4096
    run(base)
    compiled, tunings = _compiled_variants(), len(tuned.cache)
    run(case(2, 64, 48, 37, 41, torch.float16, kernel=5, epilogue="scaled_residual"))  # 3034 px -> 4096
    run(dataclasses.replace(base, epilogue=Epilogue(alpha=-0.3, residual=base.epilogue.residual, beta=2.5)))
    assert len(tuned.cache) == tunings, "the same pixel bucket was tuned again"
    run(case(2, 64, 48, 20, 30, torch.float16, kernel=5, epilogue="scaled_residual"))  # 1200 px -> 2048
    assert len(tuned.cache) == tunings + 1
    if compiled is None:
        pytest.skip("this Triton keeps no device_caches to count compiled kernels in")
    assert _compiled_variants() == compiled, "an image size or a scale compiled a new kernel"


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_tanh_to_fp32_rounding(dtype):
    """tanh within 4 fp32 ulps of float64's (the GPU's exp and division may be approximate;
    the interpreter test holds numpy's to 2), or within the output dtype's rounding."""
    mag = torch.logspace(-8, 1.3, 1500)
    v = torch.cat([torch.linspace(-20, 20, 1601), mag, -mag, torch.tensor([0.0, 0.625, -0.625, 40, -40, 1e4])])
    x = v.to(dtype).view(1, 1, 1, -1).to(CUDA)
    y = tb.conv2d(x, torch.ones(1, 1, 1, 1, device=CUDA, dtype=dtype), None, transposed=False,
                  padding=(0, 0), epilogue=Epilogue(act=Act.TANH)).view(-1).cpu().double()
    want = torch.tanh(x.view(-1).cpu().double())
    bound = 4 * 2**-23 if dtype == torch.float32 else torch.finfo(dtype).eps  # the final rounding: eps / 2
    assert ((y - want).abs() <= bound * want.abs()).all(), ((y - want).abs() / want.abs()).max()


def test_tf32_only_when_asked(monkeypatch):
    monkeypatch.setenv("REDKERN_TF32", "0")
    run(case(2, 64, 64, 40, 40, torch.float32), tol=1e-5)
    monkeypatch.setenv("REDKERN_TF32", "1")  # TF32 keeps 10 mantissa bits of each input
    run(case(2, 64, 64, 40, 40, torch.float32), tol=5e-3)


def test_autotuner_chose_a_config():
    run(case(1, 64, 64, 64, 64, torch.float16))
    tuned = tb._kernels._conv2d_nhwc_tuned
    assert tuned.cache, "the autotuner recorded no choice"
    best = tuned.best_config.kwargs
    assert best["BLOCK_N"] <= 64 and best["BLOCK_K"] <= 64 and best["TAPS_PER_STEP"] == 1
    run(case(1, 1, 64, 64, 64, torch.float16, kernel=9))  # one input channel: taps packed per step
    assert tuned.best_config.kwargs["TAPS_PER_STEP"] > 1


def test_runs_on_the_current_stream():
    c = case(2, 64, 64, 50, 30, torch.float16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = tb.conv2d(*c.tensors, **c.options)
        z = ops.conv_relu(c.x, c.weight, c.bias, "triton")
    side.synchronize()
    for got in (y, z):
        T.assert_close(got, T.reference(c), TOL[torch.float16])


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
    T.assert_close(y, r, tol)
    record_property("rel_err", T.max_rel_error(y, r))
    if dtype == torch.float32:  # x dominates the output; check the predicted residual alone too
        T.assert_close(y - x, r - x.cpu().double(), 1e-5)


@pytest.mark.slow
def test_wide_index_past_2_31_elements():
    """An activation of more than 2**31 elements switches the kernel to 64-bit offsets."""
    n, c, h, w = 1, 64, 5800, 5800
    assert n * c * h * w >= 2**31
    small = case(1, c, c, 8, 8, torch.float16)
    x = torch.randn(n, h, w, c, device=CUDA, dtype=torch.float16).permute(0, 3, 1, 2)
    y = tb.conv2d(x, small.weight, small.bias, transposed=False, padding=(1, 1), epilogue=small.epilogue,
                  out=T.poisoned_nhwc((n, c, h, w), torch.float16, CUDA))
    torch.cuda.synchronize()
    assert torch.isfinite(y).all()
    for rows in (slice(0, 9), slice(h - 9, h)):  # the first and the last rows (past 2**31)
        crop = T.reference(dataclasses.replace(small, x=x[:, :, rows]))
        keep = slice(0, 8) if rows.start == 0 else slice(1, 9)  # drop the row missing its neighbour
        T.assert_close(y[:, :, rows][:, :, keep], crop[:, :, keep], TOL[torch.float16])
