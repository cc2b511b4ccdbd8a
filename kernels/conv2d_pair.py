"""Two consecutive stride-1 3x3 convolutions (padding 1) as one Triton kernel.

    mid = epilogue1(conv3x3(x, w1))        # [N, Cmid, H, W], never written to memory
    out = epilogue2(conv3x3(mid, w2))      # [N, Cout, H, W]

Each program owns a ``(GRID_H - 2) x (GRID_W - 2)`` tile of output pixels of one image. It
computes the first layer on the ``GRID_H x GRID_W`` grid around that tile (the tile and its
1-pixel ring, the second layer's halo, which the neighbouring programs compute too), with
the single-layer kernel's implicit GEMM and epilogue (``conv2d.conv_sum``, ``conv2d.epilogue``:
one definition of each). The mid tile, ``GRID_H*GRID_W`` pixels x all mid channels, stays on
chip: rounded to the activations' dtype as a stored map would be, zero outside the image (the
second layer's padding), then per tap of the second layer the grid's rows shifted by that tap
(``tl.gather``) are one ``tl.dot`` operand. Only ``out`` is stored: one launch and one pass
over memory for two layers.

Transposed layers run as the equivalent convolution, as in ``conv2d`` (``pack_weight`` of
``backends.common.conv_weight``); a stride-1 3x3 ``ConvTranspose2d`` with padding 1 is a 3x3
convolution with padding 1. Both layers take every epilogue of ``redkern.epilogue``
(bias, activations, the skip or residual join, alpha, beta); each layer's ``extra`` is read at
its own output's pixels. Precision as ``conv2d``: fp32 accumulation, exact fp32 products unless
``allow_tf32``. On a GPU the grid shape is autotuned over ``configs.PAIR_GPU_TILES``; under
``TRITON_INTERPRET=1`` it is ``configs.PAIR_INTERPRETER_TILE`` (or the ``tile`` given).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..backends.common import is_channels_last
from ..epilogue import Epilogue
from .configs import PAIR_GPU_TILES, PAIR_INTERPRETER_TILE, PAIR_MAX_CHANNELS, PAIR_MAX_TILE_ELEMENTS, PairTile, Tile
from .conv2d import DOT_MIN, INTERPRETED, check_epilogue_args, conv_sum, epilogue, fit_tile, overlaps

__all__ = ["PairLayer", "conv3x3_pair_nhwc", "fit_pair_tile", "PAIR_MAX_CHANNELS"]


class PairLayer(NamedTuple):
    """One layer of the pair: ``conv2d.conv2d_nhwc``'s arguments of that name (3x3, padding 1)."""

    w_packed: torch.Tensor
    bias: torch.Tensor
    extra: torch.Tensor | None
    epilogue: Epilogue
    slopes: torch.Tensor | None = None
    slopes2: torch.Tensor | None = None


# Image sizes and the epilogues' scalars are run-time values: never compiled per image size.
@triton.jit(do_not_specialize=["alpha1", "beta1", "alpha2", "beta2", "H", "W"])
def _conv3x3_pair_kernel(
    x_ptr, w1_ptr, bias1_ptr, extra1_ptr, slope1_ptr, slope1b_ptr,
    w2_ptr, bias2_ptr, extra2_ptr, slope2_ptr, slope2b_ptr, out_ptr,
    alpha1, beta1, alpha2, beta2,
    H, W,
    CIN: tl.constexpr, CMID: tl.constexpr, COUT: tl.constexpr,
    ACT1: tl.constexpr, RESIDUAL1: tl.constexpr, ACT1B: tl.constexpr,
    ACT2: tl.constexpr, RESIDUAL2: tl.constexpr, ACT2B: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, WIDE_INDEX: tl.constexpr,
    GRID_H: tl.constexpr, GRID_W: tl.constexpr, BLOCK_K: tl.constexpr, TAPS_PER_STEP: tl.constexpr,
    CMID_P: tl.constexpr, COUT_P: tl.constexpr,
):
    G: tl.constexpr = GRID_H * GRID_W
    pid = tl.program_id(0)
    # Tiles per image from W and H here, not from the launcher: the autotuner runs every grid
    # shape with the same arguments.
    tiles_w = (W + GRID_W - 3) // (GRID_W - 2)
    tiles = ((H + GRID_H - 3) // (GRID_H - 2)) * tiles_w
    img = pid // tiles
    t = pid % tiles
    g = tl.arange(0, G)  # grid position; row gr, column gc
    gr = g // GRID_W
    gc = g % GRID_W
    ph = (t // tiles_w) * (GRID_H - 2) - 1 + gr  # its image pixel (the ring may lie outside)
    pw = (t % tiles_w) * (GRID_W - 2) - 1 + gc
    if WIDE_INDEX:  # element offsets (pixel * channels) may pass 2**31
        ph = ph.to(tl.int64)
    inside = (ph >= 0) & (ph < H) & (pw >= 0) & (pw < W)
    pix = (img * H + ph) * W + pw

    # First layer on the whole grid: mid[g, c].
    offs_c = tl.arange(0, CMID_P)
    c_ok = offs_c < CMID
    acc1 = conv_sum(x_ptr, w1_ptr, pix - W - 1, ph - 1, pw - 1, inside, H, W, offs_c, c_ok, CIN, CMID, 3, 3,
                    INPUT_PRECISION, G, CMID_P, BLOCK_K, TAPS_PER_STEP)
    mid_mask = inside[:, None] & c_ok[None, :]
    mid = epilogue(acc1, alpha1, beta1, bias1_ptr, extra1_ptr, slope1_ptr, slope1b_ptr, offs_c, c_ok,
                   pix[:, None] * CMID + offs_c[None, :], mid_mask, ACT1, RESIDUAL1, ACT1B)
    # Zero outside the image (the second layer's padding) and past CMID (where a NaN in x would
    # otherwise meet the masked weights' zeros); rounded as the stored map would be.
    mid = tl.where(mid_mask, mid, 0.0).to(x_ptr.dtype.element_ty)

    # Second layer on the grid's interior: tap (kh, kw) of output g reads mid at g + the tap's
    # offset. The ring's rows read clamped positions; they are not stored.
    offs_n = tl.arange(0, COUT_P)
    n_ok = offs_n < COUT
    acc2 = tl.zeros((G, COUT_P), dtype=tl.float32)
    for tap in tl.static_range(9):
        src = tl.minimum(tl.maximum(g + ((tap // 3 - 1) * GRID_W + (tap % 3 - 1)), 0), G - 1)
        a = tl.gather(mid, tl.broadcast_to(src[:, None], (G, CMID_P)), 0)
        b = tl.load(w2_ptr + (tap * CMID + offs_c)[:, None] * COUT + offs_n[None, :],
                    mask=c_ok[:, None] & n_ok[None, :], other=0.0)
        acc2 = tl.dot(a, b, acc2, input_precision=INPUT_PRECISION)
    own = inside & (gr >= 1) & (gr <= GRID_H - 2) & (gc >= 1) & (gc <= GRID_W - 2)
    out_offs = pix[:, None] * COUT + offs_n[None, :]
    out_mask = own[:, None] & n_ok[None, :]
    v = epilogue(acc2, alpha2, beta2, bias2_ptr, extra2_ptr, slope2_ptr, slope2b_ptr, offs_n, n_ok, out_offs,
                 out_mask, ACT2, RESIDUAL2, ACT2B)
    tl.store(out_ptr + out_offs, v.to(out_ptr.dtype.element_ty), mask=out_mask)


def _padded(c: int) -> int:
    return max(DOT_MIN, triton.next_power_of_2(c))


def fit_pair_tile(tile: PairTile, cin: int, cmid: int) -> tuple[PairTile, int]:
    """``tile`` fitted to a pair whose first layer is ``cin -> cmid``, and that layer's taps per
    reduction step (``conv2d.fit_tile``'s rule for a ``GRID_H*GRID_W``-pixel block)."""
    fitted, taps_per_step = fit_tile(Tile(tile.grid_h * tile.grid_w, _padded(cmid), tile.block_k,
                                          tile.num_warps, tile.num_stages), cin, cmid, 9)
    return tile._replace(block_k=fitted.block_k), taps_per_step


def _meta(t: PairTile, taps_per_step: int) -> dict:
    return dict(GRID_H=t.grid_h, GRID_W=t.grid_w, BLOCK_K=t.block_k, TAPS_PER_STEP=taps_per_step)


def _config(t: PairTile, taps_per_step: int) -> triton.Config:
    return triton.Config(_meta(t, taps_per_step), num_warps=t.num_warps, num_stages=t.num_stages)


def _prune(configs, named_args, **kwargs):
    """The grid shapes whose mid (and output) tile fits ``PAIR_MAX_TILE_ELEMENTS``, fitted to
    the pair's channels (the smallest grid when none fits). Rebuilt from ``PAIR_GPU_TILES``."""
    args = {**named_args, **kwargs}
    cin, cmid, width = args["CIN"], args["CMID"], max(args["CMID_P"], args["COUT_P"])
    fitted = {}
    for t in PAIR_GPU_TILES:
        if t.grid_h * t.grid_w * width <= PAIR_MAX_TILE_ELEMENTS:
            t, taps_per_step = fit_pair_tile(t, cin, cmid)
            fitted[t] = _config(t, taps_per_step)
    if not fitted:
        t, taps_per_step = fit_pair_tile(min(PAIR_GPU_TILES, key=lambda t: t.grid_h * t.grid_w), cin, cmid)
        fitted[t] = _config(t, taps_per_step)
    return list(fitted.values())


_conv3x3_pair_tuned = triton.autotune(
    configs=[_config(t, 1) for t in PAIR_GPU_TILES],  # placeholders: _prune refits them to each pair
    key=["CIN", "CMID", "COUT", "ACT1", "RESIDUAL1", "ACT1B", "ACT2", "RESIDUAL2", "ACT2B"],
    prune_configs_by={"early_config_prune": _prune},
)(_conv3x3_pair_kernel)


def conv3x3_pair_nhwc(x: torch.Tensor, first: PairLayer, second: PairLayer, *, out: torch.Tensor | None = None,
                      tile: PairTile | None = None, allow_tf32: bool = False) -> torch.Tensor:
    """Run two fused stride-1 3x3 convolutions with padding 1 on NHWC tensors, in one launch.

    Args:
        x: ``[N, Cin, H, W]`` stored dense NHWC; float16, bfloat16 or float32.
        first: the ``Cin -> Cmid`` layer: ``w_packed`` ``[9*Cin, Cmid]`` (``conv2d.pack_weight``),
            ``bias`` ``[Cmid]``, ``extra`` ``[N, Cmid, H, W]`` NHWC when its epilogue needs one,
            slopes as ``conv2d.conv2d_nhwc`` takes them.
        second: the ``Cmid -> Cout`` layer, likewise (``w_packed`` ``[9*Cmid, Cout]``,
            ``extra`` ``[N, Cout, H, W]``).
        out: optional ``[N, Cout, H, W]`` NHWC destination of x's dtype, overlapping neither x
            nor an extra. Allocated when omitted.
        tile: the grid shape (interpreter, or a GPU run that skips autotuning).
        allow_tf32: for float32, let ``tl.dot`` round the products' inputs to TF32.

    Cmid and Cout are at most ``PAIR_MAX_CHANNELS``. Returns ``out``, dense NHWC. Raises
    ``ValueError`` (``TypeError`` for an epilogue's type) naming the argument and the layer.
    """
    if x.dim() != 4 or not is_channels_last(x):
        raise ValueError(f"x must be a dense NHWC [N, Cin, H, W] tensor (stride(1) == 1), "
                         f"got shape {tuple(x.shape)} strides {x.stride()}")
    n, cin, h, w = x.shape
    if n < 1 or cin < 1 or h < 1 or w < 1:
        raise ValueError(f"x {tuple(x.shape)} is empty")
    shapes, slopes, rows = [], [], cin
    for which, layer in (("first", first), ("second", second)):
        name = f"the {which} layer's "
        if not isinstance(layer.epilogue, Epilogue):
            raise TypeError(f"{name}epilogue must be a redkern.epilogue.Epilogue, got "
                            f"{type(layer.epilogue).__name__} {layer.epilogue!r}")
        wp = layer.w_packed
        if wp.dim() != 2 or wp.shape[0] != 9 * rows or not wp.is_contiguous():
            raise ValueError(f"{name}w_packed must be a contiguous [9*Cin, Cout] = [{9 * rows}, Cout] tensor "
                             f"(see conv2d.pack_weight), got {tuple(wp.shape)}")
        if wp.dtype != x.dtype or wp.device != x.device:
            raise ValueError(f"{name}w_packed is {wp.dtype} on {wp.device}; x is {x.dtype} on {x.device}")
        rows = wp.shape[1]
        if not 1 <= rows <= PAIR_MAX_CHANNELS:
            raise ValueError(f"{name}{rows} output channels: the pair kernel takes 1..{PAIR_MAX_CHANNELS}")
        shape = (n, rows, h, w)
        slopes.append(check_epilogue_args(x, shape, layer.bias, layer.extra, layer.epilogue, layer.slopes,
                                          layer.slopes2, layer=name))
        shapes.append(shape)
    cmid, cout = shapes[0][1], shapes[1][1]
    if out is not None:
        if tuple(out.shape) != shapes[1] or not is_channels_last(out):
            raise ValueError(f"out must be a dense NHWC [N, Cout, H, W] = {list(shapes[1])} tensor, "
                             f"got shape {tuple(out.shape)} strides {out.stride()}")
        if out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"out is {out.dtype} on {out.device}; x is {x.dtype} on {x.device}")
        if any(overlaps(out, t) for t in (x, first.extra, second.extra) if t is not None):
            raise ValueError("out must not overlap x or an extra")
    else:
        out = torch.empty((n, h, w, cout), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)

    span = (3 * (w + 1) + 3) * max(cin, cmid)  # masked window positions address this far past x
    wide = max(x.numel(), n * h * w * cmid) + span >= 2**31 or out.numel() >= 2**31
    args = (x, first.w_packed, first.bias, first.extra, *slopes[0],
            second.w_packed, second.bias, second.extra, *slopes[1], out,
            first.epilogue.alpha, first.epilogue.beta, second.epilogue.alpha, second.epilogue.beta, h, w)
    e1, e2 = first.epilogue, second.epilogue
    meta = dict(CIN=cin, CMID=cmid, COUT=cout,
                ACT1=int(e1.act), RESIDUAL1=int(e1.residual), ACT1B=int(e1.act2),
                ACT2=int(e2.act), RESIDUAL2=int(e2.residual), ACT2B=int(e2.act2),
                INPUT_PRECISION="tf32" if allow_tf32 and x.dtype == torch.float32 else "ieee",
                WIDE_INDEX=wide, CMID_P=_padded(cmid), COUT_P=_padded(cout))

    def grid(meta):
        return (n * triton.cdiv(h, meta["GRID_H"] - 2) * triton.cdiv(w, meta["GRID_W"] - 2),)

    if INTERPRETED or tile is not None:
        t, taps_per_step = fit_pair_tile(tile or PAIR_INTERPRETER_TILE, cin, cmid)
        launch = lambda: _conv3x3_pair_kernel[grid](  # noqa: E731
            *args, **meta, **_meta(t, taps_per_step), num_warps=t.num_warps, num_stages=t.num_stages)
    else:
        launch = lambda: _conv3x3_pair_tuned[grid](*args, **meta)  # noqa: E731
    if INTERPRETED or x.device.index == torch.cuda.current_device():
        launch()
    else:
        with torch.cuda.device(x.device):  # Triton launches on the current device
            launch()
    return out
