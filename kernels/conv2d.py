"""Fused 3x3 convolution (stride 1, padding 1) as one implicit-GEMM Triton kernel.

    out[m, co] = epilogue(sum_{tap, ci} x[pixel(m) + offset(tap), ci] * w[tap*Cin + ci, co] + b[co])

with ``m`` running over all N*H*W output pixels. Activations are NHWC, so one pixel's
channels are contiguous and a tile of pixels x channels is a plain 2-D load; taps that fall
outside the image are masked to zero, which is the zero padding. Transposed convolutions run
through the same kernel with the flipped, channel-swapped weight (prepared by the caller).

Epilogues (the ``epilogue`` codes, equal to ``redkern.backends.common.Epilogue``):
    0: relu(conv + b)
    1: relu(relu(conv + b) + extra)     decoder layer with a skip
    2: conv + b + extra                 last layer with the global residual

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

from .configs import GPU_TILES, INTERPRETER_TILE, SHARED_MEMORY_FRACTION, Tile

__all__ = ["conv3x3_nhwc", "pack_weight", "INTERPRETED", "DOT_MIN"]

DOT_MIN = 16  # tl.dot needs every block dimension >= 16
RELU, RELU_ADD_RELU, ADD_RESIDUAL = 0, 1, 2


@triton.jit(do_not_specialize=["M", "H", "W"])  # image sizes vary; don't compile per size
def _conv3x3_nhwc_kernel(
    x_ptr, w_ptr, bias_ptr, extra_ptr, out_ptr,
    M, H, W,
    CIN: tl.constexpr, COUT: tl.constexpr, EPILOGUE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, WIDE_INDEX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixel, flattened over N*H*W
    if WIDE_INDEX:  # element offsets (pixel * channels) may pass 2**31
        offs_m = offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel
    offs_k = tl.arange(0, BLOCK_K)                    # input channel within a step
    m_ok = offs_m < M
    n_ok = offs_n < COUT
    hw = offs_m % (H * W)
    oh = hw // W
    ow = hw % W

    K_STEPS: tl.constexpr = (CIN + BLOCK_K - 1) // BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, channel block) so Triton can software-pipeline all 9*K_STEPS loads.
    for step in range(9 * K_STEPS):
        tap = step // K_STEPS
        ci = (step % K_STEPS) * BLOCK_K + offs_k
        dh = tap // 3 - 1
        dw = tap % 3 - 1
        ih = oh + dh
        iw = ow + dw
        inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # else: zero padding
        # Same image, shifted pixel: the input pixel index is m + dh*W + dw.
        a_ptrs = x_ptr + (offs_m + dh * W + dw)[:, None] * CIN + ci[None, :]
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

    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_offs = offs_m[:, None] * COUT + offs_n[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    if EPILOGUE != 2:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    if EPILOGUE != 0:
        acc += tl.load(extra_ptr + out_offs, mask=out_mask, other=0.0).to(tl.float32)
    if EPILOGUE == 1:
        acc = tl.maximum(acc, 0.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


INTERPRETED = isinstance(_conv3x3_nhwc_kernel, InterpretedFunction)


def fit_tile(tile: Tile, cin: int, cout: int) -> Tile:
    """``tile`` with block_k/block_n no wider than the channel counts need (>= DOT_MIN)."""
    return tile._replace(block_k=min(tile.block_k, max(DOT_MIN, triton.next_power_of_2(cin))),
                         block_n=min(tile.block_n, max(DOT_MIN, triton.next_power_of_2(cout))))


def _tile_kwargs(t: Tile) -> dict:
    return dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k)


def _shared_memory_bytes(t: Tile, element_size: int) -> int:
    """Operand tiles held by the software pipeline (A and B, one of each per stage)."""
    return t.num_stages * (t.block_m * t.block_k + t.block_k * t.block_n) * element_size


def _prune(configs, named_args, **kwargs):
    """Fit the autotuning configs to this layer's channels and the device's shared memory.

    Rebuilt from ``GPU_TILES`` (the same list as ``configs``), whose tiles carry the data."""
    args = {**named_args, **kwargs}  # the autotuner names positional args; constexprs come as kwargs
    cin, cout, x = args["CIN"], args["COUT"], args["x_ptr"]
    optin = getattr(torch.cuda.get_device_properties(x.device), "shared_memory_per_block_optin", 0)
    limit = SHARED_MEMORY_FRACTION * optin if optin else float("inf")  # unknown: Triton rejects misfits
    fitted = {}
    for t in GPU_TILES:
        t = fit_tile(t, cin, cout)
        if _shared_memory_bytes(t, x.element_size()) <= limit:
            fitted[t] = triton.Config(_tile_kwargs(t), num_warps=t.num_warps, num_stages=t.num_stages)
    if not fitted:  # keep the smallest rather than fail: Triton reports what does not fit
        t = fit_tile(min(GPU_TILES, key=lambda t: _shared_memory_bytes(t, 1)), cin, cout)
        fitted[t] = triton.Config(_tile_kwargs(t), num_warps=t.num_warps, num_stages=t.num_stages)
    return list(fitted.values())


_conv3x3_nhwc_tuned = triton.autotune(
    configs=[triton.Config(_tile_kwargs(t), num_warps=t.num_warps, num_stages=t.num_stages) for t in GPU_TILES],
    key=["M", "CIN", "COUT", "EPILOGUE"],  # the autotuner adds the tensors' dtypes itself
    prune_configs_by={"early_config_prune": _prune},
)(_conv3x3_nhwc_kernel)


def pack_weight(weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Conv2d-layout ``[Cout, Cin, 3, 3]`` -> the kernel's K-major ``[9*Cin, Cout]``.

    Row ``(kh*3 + kw)*Cin + ci`` holds ``weight[:, ci, kh, kw]``: one tap's channels are
    consecutive rows, matching the kernel's reduction order. Contiguous, same device,
    ``dtype`` (default: the weight's).
    """
    cout, cin = weight.shape[:2]
    w = weight.detach().to(dtype or weight.dtype)
    return w.permute(2, 3, 1, 0).reshape(9 * cin, cout).contiguous()


def _is_nhwc(t: torch.Tensor) -> bool:
    """Dense NHWC memory. Strides of size-1 dims are ignored (they address nothing), so a
    1-channel NCHW tensor qualifies: its bytes are already in NHWC order."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)


def conv3x3_nhwc(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor,
                 extra: torch.Tensor | None = None, epilogue: int = RELU, *,
                 out: torch.Tensor | None = None, allow_tf32: bool = False) -> torch.Tensor:
    """Run the fused conv on NHWC tensors.

    Args:
        x: ``[N, Cin, H, W]`` stored NHWC (channels_last-contiguous); float16,
            bfloat16 or float32.
        w_packed: ``[9*Cin, Cout]`` from ``pack_weight``, x's dtype and device.
        bias: ``[Cout]``, x's dtype (read as fp32).
        extra: ``[N, Cout, H, W]`` NHWC, the skip (epilogue 1) or residual (epilogue 2).
        epilogue: 0, 1 or 2 (see the module docstring).
        out: optional ``[N, Cout, H, W]`` NHWC destination of x's dtype; must not overlap
            x or extra (the autotuner re-runs the kernel). Allocated when omitted.
        allow_tf32: for float32, let ``tl.dot`` round the products' inputs to TF32.

    Returns ``out``: ``[N, Cout, H, W]`` channels_last, x's dtype.
    """
    n, cin, h, w = x.shape
    cout = w_packed.shape[1]
    epilogue = int(epilogue)
    if epilogue not in (RELU, RELU_ADD_RELU, ADD_RESIDUAL):
        raise ValueError(f"epilogue must be 0, 1 or 2, got {epilogue}")
    if not _is_nhwc(x):
        raise ValueError(f"x must be dense NHWC (channels_last), got shape {tuple(x.shape)} strides {x.stride()}")
    if tuple(w_packed.shape) != (9 * cin, cout) or not w_packed.is_contiguous():
        raise ValueError(f"w_packed must be a contiguous [9*Cin, Cout] = [{9 * cin}, Cout] tensor "
                         f"(see pack_weight), got {tuple(w_packed.shape)}")
    if bias.shape != (cout,) or not bias.is_contiguous():
        raise ValueError(f"bias must be a contiguous ({cout},) tensor, got {tuple(bias.shape)}")
    if (extra is None) != (epilogue == RELU):
        raise ValueError(f"epilogue {epilogue} {'takes no' if epilogue == RELU else 'needs an'} extra tensor")
    shape = (n, cout, h, w)
    for name, t in (("extra", extra), ("out", out)):
        if t is not None and (tuple(t.shape) != shape or not _is_nhwc(t)):
            raise ValueError(f"{name} must be an NHWC [N, Cout, H, W] = {list(shape)} tensor, "
                             f"got shape {tuple(t.shape)} strides {t.stride()}")
    for name, t in (("w_packed", w_packed), ("bias", bias), ("extra", extra), ("out", out)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name} is {t.dtype} on {t.device}; x is {x.dtype} on {x.device}")
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    elif any(_overlaps(out, t) for t in (x, extra) if t is not None):
        raise ValueError("out must not overlap x or extra")

    m = n * h * w
    if m >= 2**31:
        raise ValueError(f"{m} output pixels: the kernel indexes pixels with 32-bit integers")
    args = (x, w_packed, bias, extra, out, m, h, w)
    meta = dict(CIN=cin, COUT=cout, EPILOGUE=epilogue,
                INPUT_PRECISION="tf32" if allow_tf32 and x.dtype == torch.float32 else "ieee",
                WIDE_INDEX=max(x.numel(), out.numel()) >= 2**31)
    if INTERPRETED:
        tile = fit_tile(INTERPRETER_TILE, cin, cout)
        grid = (triton.cdiv(m, tile.block_m), triton.cdiv(cout, tile.block_n))
        _conv3x3_nhwc_kernel[grid](*args, **meta, **_tile_kwargs(tile))
    else:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cout, meta["BLOCK_N"]))

        if x.device.index == torch.cuda.current_device():
            _conv3x3_nhwc_tuned[grid](*args, **meta)
        else:
            with torch.cuda.device(x.device):  # Triton launches on the current device
                _conv3x3_nhwc_tuned[grid](*args, **meta)
    return out


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1 = a0 + a.numel() * a.element_size()
    b1 = b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1
