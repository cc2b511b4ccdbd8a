"""Weight and bias gradients of a stride-1 convolution as one Triton GEMM kernel.

For the convolution ``out[n, oh, ow, co] = sum_{kh, kw, ci} x[n, oh + kh - PH, ow + kw - PW, ci]
* w[co, ci, kh, kw]`` (x zero outside the image) and ``g``, the gradient at its output::

    dW[co, ci, kh, kw] = sum_p g[p, co] * x[pixel(p) + (kh - PH, kw - PW), ci]
    db[co]             = sum_p g[p, co]

with ``p`` over all P = N*OH*OW output pixels: the GEMM ``dW[Cout, KH*KW*Cin] = G^T @ X``,
M = Cout, N = (tap, Cin) columns, K = pixels. Both operands are NHWC, so a tile of pixels x
channels is a plain 2-D load; window positions outside the image are masked to zero (the zero
padding, never materialised). Columns are laid out as the forward's reduction rows
(``conv2d.pack_weight``): column ``(kh*KW + kw)*Cin + ci``.

- ``TAPS_PER_BLOCK == 1`` (Cin fills a block): a program's columns are one tap's channel block.
- ``TAPS_PER_BLOCK > 1`` (few input channels, e.g. an image's 1 or 3): a block packs
  ``TAPS_PER_BLOCK`` taps of ``BLOCK_N // TAPS_PER_BLOCK`` channel slots each.

Deterministic: the pixels are split into a fixed number of chunks (a function of the shapes and
the device, ``configs.WGRAD_*``); program ``(co block, column block, chunk)`` sums its chunk in
order into its own fp32 partial, and the partials are added in chunk order afterwards. No
atomics: two calls give bitwise equal results (on a GPU, for the tile the autotuner picked,
which it keeps for the process). The bias gradient is reduced in the same pass, from the
gradient tiles the column-block-0 programs load anyway.

Precision: products accumulate in fp32 (``tl.dot``); fp32 inputs use exact fp32 products
(``input_precision="ieee"``) unless the caller passes ``allow_tf32=True``, as the forward.
On a GPU the tile is autotuned over ``configs.WGRAD_GPU_TILES``; under ``TRITON_INTERPRET=1``
the kernel runs on CPU tensors with ``configs.WGRAD_INTERPRETER_TILE``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backends.common import is_channels_last
from ..epilogue import output_size
from .configs import (SHARED_MEMORY_FRACTION, WGRAD_CHUNK_ALIGN, WGRAD_GPU_TILES, WGRAD_INTERPRETER_TILE,
                      WGRAD_MAX_CHUNKS, WGRAD_MIN_CHUNK_PIXELS, WGRAD_PROGRAMS_PER_SM, Tile)
from .conv2d import DOT_MIN, INTERPRETED, _pair, _shared_memory_bytes

__all__ = ["chunking", "conv2d_weight_grad_nhwc", "fit_tile"]


# Image sizes and the chunk length vary (M_BUCKET, the autotuner's key for the size, is not
# read): never compile per size.
@triton.jit(do_not_specialize=["M", "H", "W", "OH", "OW", "CHUNK", "M_BUCKET"])
def _conv2d_wgrad_kernel(
    x_ptr, g_ptr, dw_ptr, db_ptr,
    M, H, W, OH, OW, CHUNK, M_BUCKET,
    CIN: tl.constexpr, COUT: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, WIDE_INDEX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, TAPS_PER_BLOCK: tl.constexpr,
):
    """Program (co block, column block, chunk) writes ``dw[chunk, co, col]`` for its tile
    (``dw``: fp32 ``[chunks, COUT, KH*KW*CIN]``) and, in column block 0, ``db[chunk, co]``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_co = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel: the GEMM's rows
    co_ok = offs_co < COUT
    if TAPS_PER_BLOCK == 1:
        C_BLOCKS: tl.constexpr = (CIN + BLOCK_N - 1) // BLOCK_N
        tap = pid_n // C_BLOCKS  # one tap for the whole block: scalars
        ci = (pid_n % C_BLOCKS) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = ci < CIN
    else:
        # Column j of the block is channel j % SLOT of tap pid_n*TAPS_PER_BLOCK + j // SLOT.
        SLOT: tl.constexpr = BLOCK_N // TAPS_PER_BLOCK
        j = tl.arange(0, BLOCK_N)
        tap = pid_n * TAPS_PER_BLOCK + j // SLOT
        ci = j % SLOT
        col_ok = (ci < CIN) & (tap < KH * KW)
    kh = tap // KW
    kw = tap % KW

    start = pid_k * CHUNK
    end = tl.minimum(start + CHUNK, M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    g_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)  # the bias gradient
    for k0 in range(start, end, BLOCK_K):
        offs_p = k0 + tl.arange(0, BLOCK_K)  # output pixel, flattened over N*OH*OW
        if WIDE_INDEX:  # element offsets (pixel * channels) may pass 2**31
            offs_p = offs_p.to(tl.int64)
        p_ok = offs_p < end
        img = offs_p // (OH * OW)
        ohw = offs_p % (OH * OW)
        ih0 = ohw // OW - PH  # input row and column under tap (0, 0); may be outside
        iw0 = ohw % OW - PW
        base = (img * H + ih0) * W + iw0  # that pixel's index in x (pixels of N*H*W)

        # G^T tile [co, pixel]: the gradient is NHWC, so co is the contiguous axis.
        a = tl.load(g_ptr + offs_p[None, :] * COUT + offs_co[:, None], mask=co_ok[:, None] & p_ok[None, :],
                    other=0.0)
        if TAPS_PER_BLOCK == 1:
            ih = ih0 + kh
            iw = iw0 + kw
            inside = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # else: zero padding
            b_ptrs = x_ptr + (base + (kh * W + kw))[:, None] * CIN + ci[None, :]
            if CIN % BLOCK_N == 0:  # channel masks only where a block overhangs Cin
                b = tl.load(b_ptrs, mask=inside[:, None], other=0.0)
            else:
                b = tl.load(b_ptrs, mask=inside[:, None] & col_ok[None, :], other=0.0)
        else:
            ih = ih0[:, None] + kh[None, :]
            iw = iw0[:, None] + kw[None, :]
            inside = (p_ok[:, None] & col_ok[None, :]) & ((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            b_ptrs = x_ptr + (base[:, None] + (kh * W + kw)[None, :]) * CIN + ci[None, :]
            b = tl.load(b_ptrs, mask=inside, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        g_sum += tl.sum(a.to(tl.float32), axis=1)

    TAPS_CIN: tl.constexpr = KH * KW * CIN
    chunk = pid_k.to(tl.int64) if WIDE_INDEX else pid_k
    dw_ptrs = dw_ptr + chunk * (COUT * TAPS_CIN) + offs_co[:, None] * TAPS_CIN + (tap * CIN + ci)[None, :]
    tl.store(dw_ptrs, acc, mask=co_ok[:, None] & col_ok[None, :])
    if pid_n == 0:
        tl.store(db_ptr + chunk * COUT + offs_co, g_sum, mask=co_ok)


def fit_tile(tile: Tile, cin: int, cout: int, taps: int) -> tuple[Tile, int]:
    """``tile`` fitted to a layer, and its taps per column block.

    ``block_m`` shrinks to Cout. When Cin fills ``block_n`` a column block is one tap's channel
    block (taps per block 1); otherwise each tap gets a slot of ``next_power_of_2(Cin)`` columns
    and a block packs ``block_n // slot`` taps, ``block_n`` shrunk to what the window's ``taps``
    need. Every block stays >= ``DOT_MIN``.
    """
    slot = min(tile.block_n, triton.next_power_of_2(cin))
    block_n = max(DOT_MIN, min(tile.block_n, slot * triton.next_power_of_2(taps)))
    block_m = min(tile.block_m, max(DOT_MIN, triton.next_power_of_2(cout)))
    return tile._replace(block_m=block_m, block_n=block_n), block_n // slot


def _column_blocks(cin: int, taps: int, block_n: int, taps_per_block: int) -> int:
    if taps_per_block == 1:
        return taps * triton.cdiv(cin, block_n)
    return triton.cdiv(taps, taps_per_block)


def chunking(m: int, cin: int, cout: int, taps: int, device: torch.device) -> tuple[int, int]:
    """``(chunks, chunk_len)``: how the ``m`` output pixels are split, ``chunk_len`` pixels
    (a multiple of ``WGRAD_CHUNK_ALIGN``) per chunk, every chunk non-empty.

    A function of the shapes and the device only (never of the autotuner's tile), so the
    partial buffer and the order of its sum are fixed. On a GPU: enough chunks for
    ``WGRAD_PROGRAMS_PER_SM`` programs per SM with the first GPU tile, each chunk at least
    ``WGRAD_MIN_CHUNK_PIXELS`` long; under the interpreter, one per ``WGRAD_CHUNK_ALIGN`` pixels.
    """
    align = WGRAD_CHUNK_ALIGN
    if INTERPRETED:
        want = triton.cdiv(m, align)
    else:
        t, tpb = fit_tile(WGRAD_GPU_TILES[0], cin, cout, taps)
        tiles = triton.cdiv(cout, t.block_m) * _column_blocks(cin, taps, t.block_n, tpb)
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = min(triton.cdiv(WGRAD_PROGRAMS_PER_SM * sms, tiles), triton.cdiv(m, WGRAD_MIN_CHUNK_PIXELS))
    want = max(1, min(want, WGRAD_MAX_CHUNKS))
    chunk_len = triton.cdiv(triton.cdiv(m, want), align) * align
    return triton.cdiv(m, chunk_len), chunk_len


def _meta(t: Tile, taps_per_block: int) -> dict:
    return dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, TAPS_PER_BLOCK=taps_per_block)


def _config(t: Tile, taps_per_block: int) -> triton.Config:
    return triton.Config(_meta(t, taps_per_block), num_warps=t.num_warps, num_stages=t.num_stages)


def _prune(configs, named_args, **kwargs):
    """Fit the autotuning configs to this layer's channels and window and the device's shared
    memory. Rebuilt from ``WGRAD_GPU_TILES`` (the same list as ``configs``)."""
    args = {**named_args, **kwargs}
    cin, cout, taps, x = args["CIN"], args["COUT"], args["KH"] * args["KW"], args["x_ptr"]
    optin = getattr(torch.cuda.get_device_properties(x.device), "shared_memory_per_block_optin", 0)
    limit = SHARED_MEMORY_FRACTION * optin if optin else float("inf")
    fitted = {}
    for t in WGRAD_GPU_TILES:
        t, tpb = fit_tile(t, cin, cout, taps)
        if _shared_memory_bytes(t, x.element_size()) <= limit:
            fitted[t] = _config(t, tpb)
    if not fitted:  # keep the smallest rather than fail: Triton reports what does not fit
        t, tpb = fit_tile(min(WGRAD_GPU_TILES, key=lambda t: _shared_memory_bytes(t, 1)), cin, cout, taps)
        fitted[t] = _config(t, tpb)
    return list(fitted.values())


_conv2d_wgrad_tuned = triton.autotune(
    configs=[_config(t, 1) for t in WGRAD_GPU_TILES],  # placeholders: _prune refits them to each layer
    # The chunk count follows from these (and the device); the autotuner adds the dtypes.
    key=["M_BUCKET", "CIN", "COUT", "KH", "KW"],
    prune_configs_by={"early_config_prune": _prune},
)(_conv2d_wgrad_kernel)


def conv2d_weight_grad_nhwc(x: torch.Tensor, grad: torch.Tensor, *, kernel, padding,
                            allow_tf32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias gradients of the stride-1 convolution ``conv2d_nhwc`` runs.

    Args:
        x: the layer's input ``[N, Cin, H, W]`` stored dense NHWC (``stride(1) == 1``);
            float16, bfloat16 or float32.
        grad: the gradient at the convolution's output (before any epilogue: its derivative
            already applied) ``[N, Cout, OH, OW]``, dense NHWC, x's dtype and device.
        kernel: ``(KH, KW)`` (or one int), each >= 1.
        padding: ``(PH, PW)`` (or one int), ``0 <= P <= K - 1``: the convolution's, so a
            transposed layer's equivalent padding ``K - 1 - p``.
        allow_tf32: for float32, let ``tl.dot`` round the products' inputs to TF32.

    Returns float32 ``(dW, db)``: ``dW`` ``[Cout, Cin, KH, KW]`` in the Conv2d layout (stored
    ``[Cout, KH, KW, Cin]``, a permuted view), ``db`` ``[Cout]``. Raises ``ValueError`` naming
    the argument that does not fit.
    """
    kh, kw = _pair(kernel, "kernel")
    ph, pw = _pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel sizes must be >= 1, got {(kh, kw)}")
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        raise ValueError(f"padding {(ph, pw)} out of range for a {kh}x{kw} kernel: each must be in 0..k-1")
    for name, t in (("x", x), ("grad", grad)):
        if t.dim() != 4 or not is_channels_last(t):
            raise ValueError(f"{name} must be a dense NHWC 4-D tensor (stride(1) == 1), "
                             f"got shape {tuple(t.shape)} strides {t.stride()}")
    if grad.dtype != x.dtype or grad.device != x.device:
        raise ValueError(f"grad is {grad.dtype} on {grad.device}; x is {x.dtype} on {x.device}")
    n, cin, h, w = x.shape
    cout = grad.shape[1]
    oh, ow = output_size(h, kh, ph, False), output_size(w, kw, pw, False)
    if n < 1 or cin < 1 or cout < 1 or oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} kernel with padding {(ph, pw)} over x {tuple(x.shape)} and "
                         f"{cout} output channels has an empty output [{n}, {cout}, {oh}, {ow}]")
    if tuple(grad.shape) != (n, cout, oh, ow):
        raise ValueError(f"grad must be [N, Cout, OH, OW] = [{n}, Cout, {oh}, {ow}] for x {tuple(x.shape)}, "
                         f"a {kh}x{kw} kernel and padding {(ph, pw)}; got {tuple(grad.shape)}")
    m = n * oh * ow
    if m >= 2**31:
        raise ValueError(f"{m} output pixels: the kernel indexes pixels with 32-bit integers")

    taps = kh * kw
    chunks, chunk_len = chunking(m, cin, cout, taps, x.device)
    # Every element is written by exactly one program: empty (not zeroed) is safe.
    dw = torch.empty((chunks, cout, taps * cin), dtype=torch.float32, device=x.device)
    db = torch.empty((chunks, cout), dtype=torch.float32, device=x.device)
    span = (kh * (w + 1) + kw) * cin  # masked window positions may address this far past x
    args = (x, grad, dw, db, m, h, w, oh, ow, chunk_len, triton.next_power_of_2(m))
    meta = dict(CIN=cin, COUT=cout, KH=kh, KW=kw, PH=ph, PW=pw,
                INPUT_PRECISION="tf32" if allow_tf32 and x.dtype == torch.float32 else "ieee",
                WIDE_INDEX=max(x.numel() + span, grad.numel(), dw.numel()) >= 2**31)

    def grid(meta):
        return (triton.cdiv(cout, meta["BLOCK_M"]),
                _column_blocks(cin, taps, meta["BLOCK_N"], meta["TAPS_PER_BLOCK"]), chunks)

    if INTERPRETED:
        tile, tpb = fit_tile(WGRAD_INTERPRETER_TILE, cin, cout, taps)
        tile_meta = _meta(tile, tpb)
        _conv2d_wgrad_kernel[grid(tile_meta)](*args, **meta, **tile_meta)
    elif x.device.index == torch.cuda.current_device():
        _conv2d_wgrad_tuned[grid](*args, **meta)
    else:
        with torch.cuda.device(x.device):  # Triton launches on the current device
            _conv2d_wgrad_tuned[grid](*args, **meta)
    # The partials in chunk order, the same order every call.
    dw, db = (dw[0], db[0]) if chunks == 1 else (dw.sum(0), db.sum(0))
    return dw.view(cout, kh, kw, cin).permute(0, 3, 1, 2), db
