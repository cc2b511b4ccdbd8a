"""Fused stride-1 KxK convolution as one implicit-GEMM Triton kernel.

    out[m, co] = epilogue(sum_{tap, ci} x[pixel(m) + offset(tap), ci] * w[tap*Cin + ci, co], co)

with ``m`` running over all N*OH*OW output pixels and ``tap = (kh, kw)`` over the KH x KW
window; output pixel ``(oh, ow)`` reads input pixel ``(oh + kh - PH, ow + kw - PW)``.
Activations are NHWC, so one pixel's channels are contiguous and a tile of pixels x channels
is a plain 2-D load; window positions outside the image are masked to zero, which is the zero
padding. Transposed convolutions run through the same kernel as the equivalent convolution
(window flipped, channels swapped, padding ``k - 1 - p``; prepared by the caller).

The reduction runs over (tap, channel block) steps, ``BLOCK_K`` reduction rows each:

- ``TAPS_PER_STEP == 1`` (Cin fills a block): one tap per step, Cin in blocks of ``BLOCK_K``.
- ``TAPS_PER_STEP > 1`` (few input channels, e.g. an image's 1 or 3): each step packs
  ``TAPS_PER_STEP`` taps of ``BLOCK_K // TAPS_PER_STEP`` channel slots each, so a 9x9 window
  over one channel takes 2 steps of 64 rows rather than 81 steps that are 1/16 useful.

The epilogue is ``redkern.epilogue``'s (codes from ``redkern.epilogue.Act``/``Residual``)::

    v = alpha * conv + bias
    RESIDUAL NONE:        y = act(v)
    RESIDUAL BEFORE_ACT:  y = act(v + beta * extra)
    RESIDUAL AFTER_ACT:   y = act2(act(v) + beta * extra)

NaN stays NaN through every activation. Kernel geometry (KH, KW, PH, PW), channel counts and
the epilogue codes are compile-time constants; image sizes, alpha and beta are run-time
arguments, so a new image size or scale never recompiles.

Precision: fp16/bf16 products accumulate in fp32; fp32 inputs use exact fp32 products
(``input_precision="ieee"``) unless the caller passes ``allow_tf32=True``. On a GPU the
block shapes are autotuned over ``configs.GPU_TILES``; under ``TRITON_INTERPRET=1`` the kernel
runs on CPU tensors with the single ``configs.INTERPRETER_TILE``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from ..backends.common import is_channels_last
from ..epilogue import Act, Epilogue, Residual, output_size
from .configs import GPU_TILES, INTERPRETER_TILE, SHARED_MEMORY_FRACTION, Tile

__all__ = ["conv2d_nhwc", "pack_weight", "fit_tile", "INTERPRETED", "DOT_MIN"]

DOT_MIN = 16  # tl.dot needs every block dimension >= 16

# The epilogue codes as the kernel's compile-time constants (values from epilogue.def).
_IDENTITY = tl.constexpr(int(Act.IDENTITY))
_RELU = tl.constexpr(int(Act.RELU))
_LEAKY_RELU = tl.constexpr(int(Act.LEAKY_RELU))
_PRELU = tl.constexpr(int(Act.PRELU))
_TANH = tl.constexpr(int(Act.TANH))
_NONE = tl.constexpr(int(Residual.NONE))
_BEFORE_ACT = tl.constexpr(int(Residual.BEFORE_ACT))
_AFTER_ACT = tl.constexpr(int(Residual.AFTER_ACT))
_SLOPED = (Act.LEAKY_RELU, Act.PRELU)


@triton.jit
def _tanh(v):
    """tanh in fp32 to within about an ulp, from functions every Triton has (Cephes tanhf):
    an odd polynomial for |v| < 0.625, else (1 - t) / (1 + t) with t = exp(-2|v|) <= 0.29
    (no overflow, no cancellation). NaN stays NaN."""
    a = tl.abs(v)
    c = tl.minimum(a, 0.625)  # the polynomial is used below 0.625 only: no overflow beyond
    z = c * c
    p = ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
          + 1.33314422036e-1) * z - 3.33332819422e-1) * z * v + v
    t = tl.exp(-2.0 * tl.minimum(a, 20.0, propagate_nan=tl.PropagateNan.ALL))  # tanh(20) is 1 in fp32
    r = (1.0 - t) / (1.0 + t)
    r = tl.where(v < 0.0, -r, r)
    return tl.where(a < 0.625, p, r)


@triton.jit
def _activation(v, ACT: tl.constexpr, slope_ptr, offs_n, n_ok):
    """``ACT`` on the fp32 tile ``v`` [BLOCK_M, BLOCK_N]; LEAKY_RELU/PRELU read slope[channel]."""
    if ACT == _RELU:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    elif ACT == _LEAKY_RELU:
        s = tl.load(slope_ptr + offs_n, mask=n_ok, other=0.0)
        v = tl.where(v > 0.0, v, v * s[None, :])  # NaN: NaN * s
    elif ACT == _PRELU:
        s = tl.load(slope_ptr + offs_n, mask=n_ok, other=0.0)
        v = tl.where(v > 0.0, v, v * s[None, :])
    elif ACT == _TANH:
        v = _tanh(v)
    return v


@triton.jit
def conv_sum(x_ptr, w_ptr, base, ih0, iw0, m_ok, H, W, offs_n, n_ok,
             CIN: tl.constexpr, COUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
             INPUT_PRECISION: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAPS_PER_STEP: tl.constexpr):
    """The fp32 sum ``[BLOCK_M, BLOCK_N]`` of one stride-1 convolution for ``BLOCK_M`` output
    pixels (rows; ``m_ok`` those that exist) and the output channels ``offs_n`` (``n_ok``).

    Row ``m``'s window tap (0, 0) lies over input row ``ih0[m]``, column ``iw0[m]`` (may be
    outside the image: masked to zero, the padding), pixel ``base[m]`` of x's N*H*W pixels.
    ``w_ptr``: ``pack_weight``'s ``[KH*KW*CIN, COUT]``. The reduction runs as the module
    docstring says (``TAPS_PER_STEP``)."""
    offs_k = tl.arange(0, BLOCK_K)  # reduction row within a step
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if TAPS_PER_STEP == 1:
        K_STEPS: tl.constexpr = (CIN + BLOCK_K - 1) // BLOCK_K
        # One flat loop over (tap, channel block) so Triton can software-pipeline every load.
        for step in range(KH * KW * K_STEPS):
            tap = step // K_STEPS
            kh = tap // KW
            kw = tap % KW
            ci = (step % K_STEPS) * BLOCK_K + offs_k
            ih = ih0 + kh
            iw = iw0 + kw
            inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # else: zero padding
            a_ptrs = x_ptr + (base + (kh * W + kw))[:, None] * CIN + ci[None, :]
            b_ptrs = w_ptr + (tap * CIN + ci)[:, None] * COUT + offs_n[None, :]
            if CIN % BLOCK_K == 0:  # channel masks only where a block overhangs Cin (keeps loads vectorised)
                a = tl.load(a_ptrs, mask=inside[:, None], other=0.0)
                if COUT % BLOCK_N == 0:
                    b = tl.load(b_ptrs)
                else:
                    b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
            else:
                ci_ok = ci < CIN
                a = tl.load(a_ptrs, mask=inside[:, None] & ci_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=ci_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        # Few input channels: row k of a step is channel k % SLOT of tap step*TAPS_PER_STEP + k // SLOT.
        SLOT: tl.constexpr = BLOCK_K // TAPS_PER_STEP
        ci = offs_k % SLOT
        ci_ok = ci < CIN
        for step in range((KH * KW + TAPS_PER_STEP - 1) // TAPS_PER_STEP):
            tap = step * TAPS_PER_STEP + offs_k // SLOT
            k_ok = ci_ok & (tap < KH * KW)
            kh = tap // KW
            kw = tap % KW
            ih = ih0[:, None] + kh[None, :]
            iw = iw0[:, None] + kw[None, :]
            inside = (m_ok[:, None] & k_ok[None, :]) & ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            a_ptrs = x_ptr + (base[:, None] + (kh * W + kw)[None, :]) * CIN + ci[None, :]
            b_ptrs = w_ptr + (tap * CIN + ci)[:, None] * COUT + offs_n[None, :]
            a = tl.load(a_ptrs, mask=inside, other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def epilogue(acc, alpha, beta, bias_ptr, extra_ptr, slope_ptr, slope2_ptr, offs_n, n_ok, out_offs, out_mask,
             ACT: tl.constexpr, RESIDUAL: tl.constexpr, ACT2: tl.constexpr):
    """``redkern.epilogue``'s epilogue on the fp32 sum ``acc`` (see the module docstring);
    ``extra`` is read at ``out_offs`` where ``out_mask``."""
    bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    v = acc * alpha + bias[None, :]
    if RESIDUAL == _BEFORE_ACT:
        v += beta * tl.load(extra_ptr + out_offs, mask=out_mask, other=0.0).to(tl.float32)
    v = _activation(v, ACT, slope_ptr, offs_n, n_ok)
    if RESIDUAL == _AFTER_ACT:
        v += beta * tl.load(extra_ptr + out_offs, mask=out_mask, other=0.0).to(tl.float32)
        v = _activation(v, ACT2, slope2_ptr, offs_n, n_ok)
    return v


# Image sizes vary (and M_BUCKET, the autotuner's key for them, is not read): never compile
# per size, nor per size's divisibility.
@triton.jit(do_not_specialize=["alpha", "beta", "M", "H", "W", "OH", "OW", "M_BUCKET"])
def _conv2d_nhwc_kernel(
    x_ptr, w_ptr, bias_ptr, extra_ptr, slope_ptr, slope2_ptr, out_ptr,
    alpha, beta,
    M, H, W, OH, OW, M_BUCKET,
    CIN: tl.constexpr, COUT: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    ACT: tl.constexpr, RESIDUAL: tl.constexpr, ACT2: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, WIDE_INDEX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAPS_PER_STEP: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixel, flattened over N*OH*OW
    if WIDE_INDEX:  # element offsets (pixel * channels) may pass 2**31
        offs_m = offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel
    m_ok = offs_m < M
    n_ok = offs_n < COUT
    img = offs_m // (OH * OW)
    ohw = offs_m % (OH * OW)
    ih0 = ohw // OW - PH  # input row and column under the window's tap (0, 0); may be outside
    iw0 = ohw % OW - PW
    base = (img * H + ih0) * W + iw0  # that pixel's index in x (pixels of N*H*W)
    acc = conv_sum(x_ptr, w_ptr, base, ih0, iw0, m_ok, H, W, offs_n, n_ok, CIN, COUT, KH, KW,
                   INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K, TAPS_PER_STEP)
    out_offs = offs_m[:, None] * COUT + offs_n[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    v = epilogue(acc, alpha, beta, bias_ptr, extra_ptr, slope_ptr, slope2_ptr, offs_n, n_ok, out_offs, out_mask,
                 ACT, RESIDUAL, ACT2)
    tl.store(out_ptr + out_offs, v.to(out_ptr.dtype.element_ty), mask=out_mask)


INTERPRETED = isinstance(_conv2d_nhwc_kernel, InterpretedFunction)


def fit_tile(tile: Tile, cin: int, cout: int, taps: int = 9) -> tuple[Tile, int]:
    """``tile`` fitted to a layer, and its taps per reduction step.

    ``block_n`` shrinks to Cout. When Cin fills ``block_k`` the step is one tap's channel
    block (taps per step 1); otherwise each tap gets a slot of ``next_power_of_2(Cin)`` rows and
    a step packs ``block_k // slot`` taps, ``block_k`` shrunk to what the window's ``taps``
    need. Every block stays >= ``DOT_MIN``.
    """
    slot = min(tile.block_k, triton.next_power_of_2(cin))
    block_k = max(DOT_MIN, min(tile.block_k, slot * triton.next_power_of_2(taps)))
    block_n = min(tile.block_n, max(DOT_MIN, triton.next_power_of_2(cout)))
    return tile._replace(block_k=block_k, block_n=block_n), block_k // slot


def _meta(t: Tile, taps_per_step: int) -> dict:
    return dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, TAPS_PER_STEP=taps_per_step)


def _config(t: Tile, taps_per_step: int) -> triton.Config:
    return triton.Config(_meta(t, taps_per_step), num_warps=t.num_warps, num_stages=t.num_stages)


def _shared_memory_bytes(t: Tile, element_size: int) -> int:
    """Operand tiles held by the software pipeline (A and B, one of each per stage)."""
    return t.num_stages * (t.block_m * t.block_k + t.block_k * t.block_n) * element_size


def _prune(configs, named_args, **kwargs):
    """Fit the autotuning configs to this layer's channels and window and the device's shared
    memory. Rebuilt from ``GPU_TILES`` (the same list as ``configs``), whose tiles carry the data."""
    args = {**named_args, **kwargs}  # the autotuner names positional args; constexprs come as kwargs
    cin, cout, taps, x = args["CIN"], args["COUT"], args["KH"] * args["KW"], args["x_ptr"]
    optin = getattr(torch.cuda.get_device_properties(x.device), "shared_memory_per_block_optin", 0)
    limit = SHARED_MEMORY_FRACTION * optin if optin else float("inf")  # unknown: Triton rejects misfits
    fitted = {}
    for t in GPU_TILES:
        t, taps_per_step = fit_tile(t, cin, cout, taps)
        if _shared_memory_bytes(t, x.element_size()) <= limit:
            fitted[t] = _config(t, taps_per_step)
    if not fitted:  # keep the smallest rather than fail: Triton reports what does not fit
        t, taps_per_step = fit_tile(min(GPU_TILES, key=lambda t: _shared_memory_bytes(t, 1)), cin, cout, taps)
        fitted[t] = _config(t, taps_per_step)
    return list(fitted.values())


_conv2d_nhwc_tuned = triton.autotune(
    configs=[_config(t, 1) for t in GPU_TILES],  # placeholders: _prune refits them to each layer
    # What changes the best tile: the pixel count (as a power of two, so new image sizes do not
    # each re-tune), channels, window, epilogue; the autotuner adds the tensors' dtypes itself.
    key=["M_BUCKET", "CIN", "COUT", "KH", "KW", "ACT", "RESIDUAL", "ACT2"],
    prune_configs_by={"early_config_prune": _prune},
)(_conv2d_nhwc_kernel)


def pack_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Conv2d-layout ``[Cout, Cin, KH, KW]`` -> the kernel's K-major ``[KH*KW*Cin, Cout]``.

    Row ``(kh*KW + kw)*Cin + ci`` holds ``weight[:, ci, kh, kw]``: one tap's channels are
    consecutive rows, matching the kernel's reduction order. Contiguous, same device,
    ``dtype`` (default: the weight's).
    """
    if weight.dim() != 4:
        raise ValueError(f"a conv weight is [Cout, Cin, KH, KW], got shape {tuple(weight.shape)}")
    cout, cin, kh, kw = weight.shape
    w = weight.detach().to(dtype or weight.dtype)
    return w.permute(2, 3, 1, 0).reshape(kh * kw * cin, cout).contiguous()


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return a, b


def conv2d_nhwc(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor,
                extra: torch.Tensor | None = None, *, kernel, padding, epilogue: Epilogue,
                slopes: torch.Tensor | None = None, slopes2: torch.Tensor | None = None,
                out: torch.Tensor | None = None, allow_tf32: bool = False) -> torch.Tensor:
    """Run the fused stride-1 convolution on NHWC tensors.

    Args:
        x: ``[N, Cin, H, W]`` stored dense NHWC (``stride(1) == 1``); float16, bfloat16 or
            float32.
        w_packed: ``[KH*KW*Cin, Cout]`` from ``pack_weight`` (of the Conv2d-layout weight),
            x's dtype and device.
        bias: ``[Cout]`` contiguous, float32 or x's dtype (read as fp32).
        extra: ``[N, Cout, OH, OW]`` NHWC in x's dtype, when ``epilogue.needs_extra``.
        kernel: ``(KH, KW)`` (or one int), each >= 1.
        padding: ``(PH, PW)`` (or one int), ``0 <= P <= K - 1``.
        epilogue: a ``redkern.epilogue.Epilogue``.
        slopes, slopes2: contiguous float32 ``[Cout]`` on x's device, read when ``act`` /
            ``act2`` is LEAKY_RELU or PRELU (``redkern.epilogue.kernel_slopes``).
        out: optional ``[N, Cout, OH, OW]`` NHWC destination of x's dtype; must not overlap
            x or extra (the autotuner re-runs the kernel). Allocated when omitted.
        allow_tf32: for float32, let ``tl.dot`` round the products' inputs to TF32.

    ``OH, OW = redkern.epilogue.output_size(H, KH, PH, False), ...``. Returns ``out``:
    ``[N, Cout, OH, OW]`` dense NHWC, x's dtype. Raises ``ValueError`` (``TypeError`` for
    the epilogue's type) naming the argument that does not fit.
    """
    if not isinstance(epilogue, Epilogue):
        raise TypeError(f"epilogue must be a redkern.epilogue.Epilogue, got {type(epilogue).__name__} {epilogue!r}")
    kh, kw = _pair(kernel, "kernel")
    ph, pw = _pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel sizes must be >= 1, got {(kh, kw)}")
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        raise ValueError(f"padding {(ph, pw)} out of range for a {kh}x{kw} kernel: each must be in 0..k-1")
    if x.dim() != 4 or not is_channels_last(x):
        raise ValueError(f"x must be a dense NHWC [N, Cin, H, W] tensor (stride(1) == 1), "
                         f"got shape {tuple(x.shape)} strides {x.stride()}")
    n, cin, h, w = x.shape
    if w_packed.dim() != 2 or w_packed.shape[0] != kh * kw * cin or not w_packed.is_contiguous():
        raise ValueError(f"w_packed must be a contiguous [KH*KW*Cin, Cout] = [{kh * kw * cin}, Cout] "
                         f"tensor (see pack_weight), got {tuple(w_packed.shape)}")
    cout = w_packed.shape[1]
    oh, ow = output_size(h, kh, ph, False), output_size(w, kw, pw, False)
    if n < 1 or cin < 1 or cout < 1 or oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} kernel with padding {(ph, pw)} over x {tuple(x.shape)} and "
                         f"{cout} output channels leaves an empty output [{n}, {cout}, {oh}, {ow}]")
    shape = (n, cout, oh, ow)
    if out is not None and (tuple(out.shape) != shape or not is_channels_last(out)):
        raise ValueError(f"out must be a dense NHWC [N, Cout, OH, OW] = {list(shape)} tensor, "
                         f"got shape {tuple(out.shape)} strides {out.stride()}")
    for name, t in (("w_packed", w_packed), ("out", out)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name} is {t.dtype} on {t.device}; x is {x.dtype} on {x.device}")
    slope_args = check_epilogue_args(x, shape, bias, extra, epilogue, slopes, slopes2)
    if out is None:
        out = torch.empty((n, oh, ow, cout), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
    elif any(overlaps(out, t) for t in (x, extra) if t is not None):
        raise ValueError("out must not overlap x or extra")

    m = n * oh * ow
    if m >= 2**31:
        raise ValueError(f"{m} output pixels: the kernel indexes pixels with 32-bit integers")
    # Masked window positions may address up to a window's span past either end of x.
    span = (kh * (w + 1) + kw) * cin
    args = (x, w_packed, bias, extra, *slope_args, out, float(epilogue.alpha), float(epilogue.beta),
            m, h, w, oh, ow, triton.next_power_of_2(m))
    meta = dict(CIN=cin, COUT=cout, KH=kh, KW=kw, PH=ph, PW=pw,
                ACT=int(epilogue.act), RESIDUAL=int(epilogue.residual), ACT2=int(epilogue.act2),
                INPUT_PRECISION="tf32" if allow_tf32 and x.dtype == torch.float32 else "ieee",
                WIDE_INDEX=max(x.numel() + span, out.numel()) >= 2**31)
    if INTERPRETED:
        tile, taps_per_step = fit_tile(INTERPRETER_TILE, cin, cout, kh * kw)
        grid = (triton.cdiv(m, tile.block_m), triton.cdiv(cout, tile.block_n))
        _conv2d_nhwc_kernel[grid](*args, **meta, **_meta(tile, taps_per_step))
    else:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]))

        if x.device.index == torch.cuda.current_device():
            _conv2d_nhwc_tuned[grid](*args, **meta)
        else:
            with torch.cuda.device(x.device):  # Triton launches on the current device
                _conv2d_nhwc_tuned[grid](*args, **meta)
    return out


def check_epilogue_args(x: torch.Tensor, shape, bias: torch.Tensor, extra: torch.Tensor | None,
                        epilogue: Epilogue, slopes: torch.Tensor | None, slopes2: torch.Tensor | None,
                        layer: str = "") -> list:
    """Check what one layer's epilogue reads (``conv2d_nhwc``'s ``bias``, ``extra``, ``slopes``,
    ``slopes2``) for an output of ``shape`` ``[N, Cout, OH, OW]`` from ``x``; returns the slope
    arguments the kernel takes (``None`` where not read). ``layer`` prefixes the messages (which
    layer of a multi-layer kernel). Raises ``ValueError`` naming the argument."""
    cout = shape[1]
    if tuple(bias.shape) != (cout,) or not bias.is_contiguous() or bias.dtype not in (torch.float32, x.dtype):
        raise ValueError(f"{layer}bias must be a contiguous ({cout},) tensor of float32 or x's dtype, "
                         f"got {tuple(bias.shape)} {bias.dtype}")
    if bias.device != x.device:
        raise ValueError(f"{layer}bias is on {bias.device}; x is on {x.device}")
    if (extra is None) == epilogue.needs_extra:
        raise ValueError(f"{layer}the epilogue {epilogue.formula()} "
                         f"{'needs an' if epilogue.needs_extra else 'takes no'} extra tensor")
    if extra is not None:
        if tuple(extra.shape) != tuple(shape) or not is_channels_last(extra):
            raise ValueError(f"{layer}extra must be a dense NHWC [N, Cout, OH, OW] = {list(shape)} tensor, "
                             f"got shape {tuple(extra.shape)} strides {extra.stride()}")
        if extra.dtype != x.dtype or extra.device != x.device:
            raise ValueError(f"{layer}extra is {extra.dtype} on {extra.device}; x is {x.dtype} on {x.device}")
    slope_args = []
    for name, act, s in (("slopes", epilogue.act, slopes), ("slopes2", epilogue.act2, slopes2)):
        if act not in _SLOPED:
            slope_args.append(None)  # not read
            continue
        if s is None:
            raise ValueError(f"{layer}{name}: the epilogue's {Act(act).name} needs a float32 [{cout}] slope array "
                             "(redkern.epilogue.kernel_slopes)")
        if (tuple(s.shape) != (cout,) or s.dtype != torch.float32 or not s.is_contiguous()
                or s.device != x.device):
            raise ValueError(f"{layer}{name} must be a contiguous float32 ({cout},) tensor on {x.device}, "
                             f"got {tuple(s.shape)} {s.dtype} on {s.device}")
        slope_args.append(s)
    return slope_args


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1 = a0 + a.numel() * a.element_size()
    b1 = b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1
