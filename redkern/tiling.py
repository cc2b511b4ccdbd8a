"""Exact tiled inference: any network over an image of any size, one tile at a time.

An output pixel depends on the input within the model's receptive field radius (one pixel
per 3x3 layer for RED; ``receptive_field``). So each tile's *window* is fed to the model with
a *halo* of at least that radius around the *core* it keeps; the core is cropped out (never
blended) and the cores tile the image exactly. At the true image border the window is clamped
to the image, not padded, so the model sees the same zero padding as on the whole image, and a
window there needs the halo on its inner side only. Along each axis the plan takes the fewest
windows of at most ``tile`` pixels whose cores cover it, all of one size, the smallest that
does (the whole image, along an axis no longer than the tile; ``_untrimmed_spans``): 4096 px
with ``tile=2048`` and a halo of 30 is three windows of 1406, not three of 2048: 4096^2 costs
1.06x the pixels of the image, not 2.25x. Without a ``tile`` the window is sized from the memory the model's device has
available (``default_tile``) and the run says what it chose. The result equals whole-image
inference to float rounding.

Upsamplers (EDSR, SRResNet, ESPCN, FSRCNN...) tile the same way: tiles are planned on the
input grid, and a network of scale ``s`` (output pixels per input pixel along each axis, read
off its layer plan) turns a window into ``s`` times as many rows and columns, of which the
``s * core`` block is kept and written at ``s`` times the core's place (``Tile.out_core``).
The radius is counted in input pixels. A network of unpadded convolutions (SRCNN 9-1-5) drops
``trim`` pixels at every border: its output pixel ``o`` lies over input pixel ``o + trim``, so
cores are kept only where the whole image has output, and written ``trim`` pixels up and left
(``Tile.out_core``). Networks whose output is otherwise not ``s`` times the input (a transposed
convolution without the right ``output_padding``, an uneven trim) are refused with the reason.

Three entry points, from the top down:

- ``restore_file(model, "in.tif", "out.tif")``: files of any size, read and written tile by
  tile (see ``redkern.imageio``), output published atomically;
- ``tiled(model, image)``: an ``[N, C, H, W]`` tensor in memory;
- ``run_tiled(model, source, sink)``: the engine, for any source and sink of tiles.

The engine reads the next tiles and writes finished ones in background threads while the
model computes, batches ``batch`` tiles per model call, and on CUDA moves them through
pinned host memory on a copy stream of their own.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

log = logging.getLogger("redkern")

__all__ = ["Tile", "TiledRun", "InexactTilingWarning", "ReceptiveField", "receptive_field", "plan_tiles", "output_size",
           "resolve_halo", "tiled", "run_tiled", "restore_file", "prepare_restore", "RestoreJob", "tile_overhead",
           "smallest_window", "default_tile"]


class InexactTilingWarning(UserWarning):
    """A halo smaller than the receptive field: tiled results differ from whole-image ones."""


@dataclasses.dataclass(frozen=True)
class Tile:
    """One model call's worth of image, in input image coordinates ``(rows, cols)``.

    ``window``: the region fed to the model; ``core``: the part of its output that is kept.
    ``crop``: the core in window coordinates. ``scale``: the model's output pixels per input
    pixel; ``trim``: input pixels the model drops at every border (``output_size``);
    ``out_core`` and ``out_crop`` are the core in output image and output window coordinates
    (``core`` and ``crop`` themselves at scale 1 without trim).
    """

    window: tuple[slice, slice]
    core: tuple[slice, slice]
    scale: int = 1
    trim: int = 0

    @property
    def crop(self) -> tuple[slice, slice]:
        return tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(self.core, self.window))

    @property
    def out_core(self) -> tuple[slice, slice]:
        s, t = self.scale, self.trim
        return tuple(slice(s * (c.start - t), s * (c.stop - t)) for c in self.core)

    @property
    def out_crop(self) -> tuple[slice, slice]:
        s, t = self.scale, self.trim
        return tuple(slice(s * (c.start - t), s * (c.stop - t)) for c in self.crop)

    @property
    def core_pixels(self) -> int:
        rows, cols = self.core
        return (rows.stop - rows.start) * (cols.stop - cols.start)


def output_size(height: int, width: int, scale: int = 1, trim: int = 0) -> tuple[int, int]:
    """The output of a network of ``scale`` that drops ``trim`` pixels at every border, for a
    ``height x width`` input; a ``ValueError`` where nothing would be left."""
    if min(height, width) <= 2 * trim:
        raise ValueError(f"a {height}x{width} image leaves no output: the network drops {trim} pixels "
                         f"at every border (unpadded convolutions), so each side needs more than {2 * trim}")
    return scale * (height - 2 * trim), scale * (width - 2 * trim)


def _axis_spans(length: int, tile: int, halo: int, trim: int = 0) -> list[tuple[int, int, int, int]]:
    """``(window_start, window_stop, core_start, core_stop)`` along one axis (``_untrimmed_spans``),
    the cores leaving out the ``trim`` pixels at either border, where the whole image has no
    output."""
    spans = _untrimmed_spans(length, tile, halo)
    return [(w0, w1, max(c0, trim), min(c1, length - trim)) for w0, w1, c0, c1 in spans]


def _untrimmed_spans(length: int, tile: int, halo: int) -> list[tuple[int, int, int, int]]:
    """The fewest windows of at most ``tile`` pixels that cover ``length`` with ``halo`` pixels
    of context at every interior core edge, all of one size ``window``, the smallest that does.

    ``n`` windows of ``window`` pixels have cores of ``window - halo`` at the two borders (none
    is needed outside the image) and ``window - 2 * halo`` inside, so they cover
    ``n * window - 2 * (n - 1) * halo`` pixels: ``n`` is the least for which ``window = tile``
    covers ``length``, ``window`` the least that covers it with ``n``. The ``spare`` pixels
    over ``length`` (fewer than ``n``) come off cores spread evenly, one each. An interior
    window starts ``halo`` before its core, clamped to end at the border.
    """
    if length <= tile:
        return [(0, length, 0, length)]
    if tile <= 2 * halo:
        raise ValueError(f"a tile of {tile} pixels leaves no core inside a halo of {halo} on each side of a "
                         f"{length}-pixel axis: use tile > 2 * halo = {2 * halo} (at least {2 * halo + 1}; "
                         f"larger tiles waste less on halos), or a tile of {length} (the whole axis)")
    n = -(-(length - 2 * halo) // (tile - 2 * halo))
    window = -(-(length + 2 * (n - 1) * halo) // n)
    spare = n * window - 2 * (n - 1) * halo - length
    spans, start = [], 0
    for i in range(n):
        core = window - (halo if i in (0, n - 1) else 2 * halo) - ((i + 1) * spare // n - i * spare // n)
        w0 = 0 if i == 0 else min(start - halo, length - window)
        spans.append((w0, w0 + window, start, start + core))
        start += core
    return spans


def _check_tile(tile):
    """``tile`` as given, if it is an int >= 1 or a pair of them; else a TypeError/ValueError."""
    pair = (tile, tile) if not isinstance(tile, (tuple, list)) else tuple(tile)
    if len(pair) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) for t in pair):
        raise TypeError(f"tile must be an int or a pair (rows, cols) of ints, got {tile!r}")
    if min(pair) < 1:
        raise ValueError(f"tile must be >= 1, got {tile!r}")
    return tile


def plan_tiles(height: int, width: int, tile, halo: int, scale: int = 1, trim: int = 0) -> list[Tile]:
    """The tiles covering a ``height x width`` input image, row by row.

    ``tile``: the largest window fed to the model, an int or ``(rows, cols)``; along each axis
    the plan takes the fewest windows that fit it, all of the one smallest size that covers
    the axis (``_untrimmed_spans``; the whole axis where it is no longer than the tile), so
    every tile has the same window shape. ``halo``: context kept around every interior core
    edge, in input pixels.
    ``scale``: the model's output pixels per input pixel (``Tile.out_core``); the plan over
    the input grid is the same for every scale. ``trim``: pixels the model drops at every
    border (``output_size``); at most ``halo``.
    """
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if min(height, width) < 1 or min(th, tw) < 1 or halo < 0:
        raise ValueError(f"need height, width, tile >= 1 and halo >= 0, got image {height}x{width}, "
                         f"tile {tile}, halo {halo}")
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    if not 0 <= trim <= halo:
        raise ValueError(f"trim must be between 0 and the halo {halo}, got {trim!r}")
    output_size(height, width, scale, trim)
    return [Tile((slice(wy0, wy1), slice(wx0, wx1)), (slice(cy0, cy1), slice(cx0, cx1)), scale, trim)
            for wy0, wy1, cy0, cy1 in _axis_spans(height, th, halo, trim)
            for wx0, wx1, cx0, cx1 in _axis_spans(width, tw, halo, trim)]


def _tile_text(tile) -> str:
    rows, cols = (tile, tile) if isinstance(tile, int) else tile
    return str(rows) if rows == cols else f"{rows}x{cols}"


def tile_overhead(tiles: list[Tile], height: int, width: int) -> float:
    """Pixels the model computes over pixels kept: 1.0 for one window, more as halos repeat.
    The same at every scale: an upsampler's window and core grow alike (``height``/``width``:
    the input's)."""
    computed = sum((t.window[0].stop - t.window[0].start) * (t.window[1].stop - t.window[1].start) for t in tiles)
    return computed / (height * width)


def smallest_window(height: int, width: int, halo: int, max_overhead: float) -> int:
    """The smallest square window whose tiles of a ``height x width`` image cost at most
    ``max_overhead`` times whole-image inference: input pixels (``halo`` too), whatever the
    model's scale, since the overhead is a ratio the scale cancels from."""
    def fits(t):
        return t >= max(height, width) or tile_overhead(plan_tiles(height, width, t, halo), height, width) <= max_overhead

    # Start where (t / (t - 2 halo))^2 = max_overhead, then walk to the edge of what fits.
    tile = max(2 * halo + 1, int(2 * halo * max_overhead ** 0.5 / (max_overhead ** 0.5 - 1)))
    while not fits(tile):
        tile += 1
    while tile > 2 * halo + 1 and fits(tile - 1):
        tile -= 1
    return tile


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """What tiling needs to know about a model: ``radius``, the input pixels an output pixel
    depends on in any direction (``None``: unknown, a halo must be given); ``scale``, its
    output pixels per input pixel along each axis; ``source``: where these were read (the
    model's ``receptive_field_radius``, its layer plan) and, where planning failed, why;
    ``trim``: input pixels it drops at every border (``Geometry.trim``; the radius is counted
    from the input pixel each output pixel lies over); ``values_per_pixel``: the most
    feature-map values a window holds at once per input pixel (``Plan.peak_bytes``; 576 for
    RED30-64: nine maps of 64), ``None`` where no plan was read."""

    radius: int | None
    scale: int
    source: str
    trim: int = 0
    values_per_pixel: float | None = None


def receptive_field(model) -> ReceptiveField:
    """The receptive field radius (input pixels) and scale of ``model``, read off its layer
    plan (``Plan.geometry``): a fused model's own plan, or ``redkern.plan(model)`` for a plain
    module. A model with a ``receptive_field_radius`` attribute (RED-Net, or a wrapper that
    states it) is taken at its word, at scale 1, and not traced: tracing runs a forward's
    Python, which a wrapper may count or log. Raises ``ValueError`` naming the model when its
    plan shows tiles cannot reproduce whole-image inference (an output that is not exactly
    ``scale`` times the input, a fractional or per-axis scale); a model that does not trace is
    assumed to keep the input's size, which each tile's output then confirms."""
    from .layer_plan import Plan, PlanError, plan

    name = type(model).__name__
    declared = getattr(model, "receptive_field_radius", None)
    own = getattr(model, "plan", None) if hasattr(model, "_redkern_reference_class") else None
    if declared is not None and not isinstance(own, Plan):
        return ReceptiveField(int(declared), 1, f"{name}.receptive_field_radius")
    if isinstance(own, Plan):
        found, source = own, f"the layer plan of {name}"
    else:
        try:
            found, source = plan(model), f"redkern.plan({name})"
        except PlanError as e:
            return ReceptiveField(None, 1, f"{name} has no receptive_field_radius and its layer plan failed: {e}")
    g = found.geometry()
    if g.problem is not None:
        raise ValueError(f"{name} cannot be tiled exactly: {g.problem}")
    radius = int(declared) if declared is not None else g.radius
    if g.unknown is not None and (radius is None or g.scale is None):
        source += f": {g.unknown} is not modelled" + ("" if g.scale is not None else
                                                      "; its scale is taken as 1, and checked on every tile")
    return ReceptiveField(radius, 1 if g.scale is None else int(g.scale[0]), source, g.trim,
                          _peak_values_per_pixel(found))


def _peak_values_per_pixel(found) -> float | None:
    """``Plan.peak_bytes`` of one byte per value, per input pixel of a large window; ``None``
    where the plan has no shapes to count."""
    side = 512
    try:
        values, _ = found.peak_bytes((1, 0, side, side), 1)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return values / side**2 or None


def resolve_halo(model, halo: int | None, allow_inexact: bool = False) -> int:
    """The halo to use, in input pixels: the model's receptive field radius by default
    (``receptive_field``); a smaller one only with ``allow_inexact`` (and an
    ``InexactTilingWarning``)."""
    return _resolve(model, halo, allow_inexact)[0]


def _resolve(model, halo: int | None, allow_inexact: bool) -> tuple[int, ReceptiveField]:
    """``(halo, field)``: ``resolve_halo``'s answer and the model's ``receptive_field`` (its
    scale, trim and working set), planned once."""
    field = receptive_field(model)
    radius = field.radius
    if halo is None:
        if radius is None:
            raise ValueError(f"{type(model).__name__}: no receptive field radius is known ({field.source}); "
                             "pass halo= (pixels each output depends on in every direction)")
        return int(radius), field
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    if radius is not None and halo < radius:
        message = (f"halo {halo} is smaller than the model's receptive field radius {radius}: "
                   "tiles will differ from whole-image inference near their edges")
        if not allow_inexact:
            raise ValueError(message + "; pass allow_inexact=True (--allow-inexact) to accept that")
        warnings.warn(message, InexactTilingWarning, stacklevel=_outside_redkern())
    if halo < field.trim:
        raise ValueError(f"halo {halo} is smaller than the {field.trim} pixels the model drops at every border: "
                         "a tile's core would have no output")
    return int(halo), field


def _outside_redkern() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("redkern."):
        frame, level = frame.f_back, level + 1
    return level


# --- the window when none is given --------------------------------------------------------

DEFAULT_MEMORY_FRACTION = 0.5  # of the memory available on the model's device, for the windows in flight
DEFAULT_TILE_RANGE = (256, 8192)  # a chosen square window's side, at least and at most
FALLBACK_TILE = 1024  # where the memory available is not known


def default_tile(model, height: int, width: int, *, halo: int | None = None, batch: int = 1, images: int = 1,
                 prefetch: int = 2) -> tuple[tuple[int, int], str]:
    """The window ``tiled``, ``run_tiled`` and ``restore_file`` use without a ``tile``:
    ``((rows, cols), why)``, ``why`` a sentence such as ``"tile 1984 px chosen from 18.3 GiB
    available on cpu (...)"``.

    The largest that keeps ``batch`` windows of ``images`` images within
    ``DEFAULT_MEMORY_FRACTION`` of the memory available on the model's device
    (``executor.available_memory``: MemAvailable on a CPU, free memory on CUDA), at the bytes
    per window pixel its largest live feature maps need (``ReceptiveField.values_per_pixel``
    at the model's dtype, and the tiles read ahead and written behind): bigger windows, smaller
    halo share. Square, ``DEFAULT_TILE_RANGE`` and at least 4 halos wide, unless one axis of
    the image fits in it: then the other gets the rest of the budget. A ``height x width``
    image whose maps fit gets one window: whole-image inference. A fused model that runs in
    row strips on the CPU (``redkern.strips``: its maps hold a few rows of the window's width)
    gets windows as wide as the image and as tall as the memory allows.
    """
    field = receptive_field(model)
    halo = (field.radius or 0) if halo is None else halo
    return _default_tile(model, field, halo, height, width, batch * images, prefetch)


def _default_tile(model, field: ReceptiveField, halo: int, height: int, width: int, windows: int,
                  prefetch: int) -> tuple[tuple[int, int], str]:
    device, dtype = _model_device_dtype(model)
    available = _memory_available(device)
    if available is None:
        return (FALLBACK_TILE, FALLBACK_TILE), f"tile {FALLBACK_TILE} px: the memory available on {device} is not known"
    itemsize = torch.empty((), dtype=dtype or torch.float32).element_size()
    channels = _input_channels(model) or 1
    io = channels * (1 + field.scale**2) * (2 * prefetch + 2)  # tiles read ahead, outputs written behind
    strip_plan = _strip_plan(model, device)
    if strip_plan is not None:
        chosen = _strip_window(strip_plan, halo, height, width, windows, available, channels, io, itemsize)
        if chosen is not None:
            return chosen
    values = _values_per_pixel(model, field, channels)
    per_pixel = (values + io) * itemsize * windows
    pixels = int(DEFAULT_MEMORY_FRACTION * available / per_pixel)
    low, high = max(DEFAULT_TILE_RANGE[0], 4 * halo), max(DEFAULT_TILE_RANGE)
    budget = max(low * low, min(pixels, high * high))
    side = max(low, min(high, math.isqrt(budget)))
    rows = cols = side
    if height <= side < width:
        cols = max(side, budget // height)
    elif width <= side < height:
        rows = max(side, budget // width)
    bound = (f", at least {low} px" if pixels < low * low else f", at most {high} px" if pixels > high * high
             else "")
    why = (f"tile {_tile_text((rows, cols))} px chosen from {available / 2**30:.1f} GiB "
           f"available on {device} ({DEFAULT_MEMORY_FRACTION:.0%} of it for {windows} window(s) at "
           f"{per_pixel / windows / 1024:.2f} KiB per pixel{bound})")
    return (rows, cols), why


def _strip_plan(model, device: torch.device):
    """The plan of a fused model that runs in row strips on the CPU (``redkern.strips``), else
    ``None``."""
    from . import strips

    plan = getattr(model, "plan", None)
    if device.type != "cpu" or plan is None or strips.strip_problem(plan) is not None:
        return None
    return plan if strips.strips_mode() != "off" else None


def _strip_window(plan, halo: int, height: int, width: int, windows: int, available: int, channels: int,
                  io: float, itemsize: int):
    """For a model that runs in row strips, whose maps hold a few rows of the window's width
    whatever its height: windows the image's full width (no halo at the sides), as many rows
    as the memory allows, the whole image where it fits. ``None`` where even a window of
    ``4 * halo`` rows at full width does not fit (the square windows then)."""
    from .strips import strip_peak_bytes

    budget = DEFAULT_MEMORY_FRACTION * available / windows
    fixed = strip_peak_bytes(plan, (1, channels, height, width), itemsize)
    per_row = width * (io + plan.steps[-1].out_channels) * itemsize
    rows = int((budget - fixed) // per_row)
    if rows < min(height, max(DEFAULT_TILE_RANGE[0], 4 * halo)):
        return None
    rows = min(rows, height)
    why = (f"tile {_tile_text((rows, width))} px chosen from {available / 2**30:.1f} GiB available on cpu "
           f"({DEFAULT_MEMORY_FRACTION:.0%} of it for {windows} window(s): the model runs in row strips, "
           f"{fixed / 2**30:.1f} GiB of feature-map rows at this width, so windows span the width)")
    return (rows, width), why


def _memory_available(device: torch.device) -> int | None:
    """``executor.available_memory``, or on a CPU without /proc/meminfo the free pages the C
    library reports; ``None`` where neither is known."""
    from .executor import available_memory

    available = available_memory(device)
    if available is None and device.type == "cpu":
        with contextlib.suppress(AttributeError, ValueError, OSError):
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available


def _values_per_pixel(model, field: ReceptiveField, channels: int) -> float:
    """Feature-map values one window holds at once per input pixel: the plan's peak where
    ``receptive_field`` read one; for our own networks taken at their word about the radius
    (RED-Net), their plan (they trace without side effects); else every convolution's output
    alive at once, an upper bound that does not trace a wrapper's forward."""
    if field.values_per_pixel is not None:
        return field.values_per_pixel
    if type(model).__module__.startswith("redkern."):
        from .layer_plan import PlanError, plan

        with contextlib.suppress(PlanError):
            values = _peak_values_per_pixel(plan(model))
            if values is not None:
                return values
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)] \
        if isinstance(model, torch.nn.Module) else []
    return float(sum(convs) * field.scale**2 or 4 * channels)


@dataclasses.dataclass(frozen=True)
class TiledRun:
    """What a tiled run did: input image size, tiles, and how fast (megapixels of input);
    ``scale``: output pixels per input pixel; ``trim``: input pixels dropped at every border;
    ``tile_choice``: how the window was sized when no ``tile`` was given (``default_tile``),
    else ``None``. ``tile_shape`` is the windows' shape, at most the tile asked for."""

    height: int
    width: int
    images: int
    tiles: int
    tile_shape: tuple[int, int]
    halo: int
    batch: int
    device: str
    seconds: float
    scale: int = 1
    trim: int = 0
    tile_choice: str | None = None

    @property
    def output_size(self) -> tuple[int, int]:
        return output_size(self.height, self.width, self.scale, self.trim)

    @property
    def megapixels(self) -> float:
        return self.height * self.width * self.images / 1e6

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("inf")


# --- moving tiles to the model and back ---------------------------------------------------

def _model_device_dtype(model) -> tuple[torch.device, torch.dtype | None]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), None  # no weights: leave tiles where and as they are


class _Transfers:
    """Tiles to the model's device and dtype, and results back to where the tiles came from.

    Host tiles for a CUDA model travel through pinned memory, uploads and downloads each on a
    stream of their own, so the next batch's upload and the last one's download overlap the
    model's kernels; ``to_source`` then returns an event the consumer waits on before reading.
    """

    def __init__(self, device: torch.device, dtype: torch.dtype | None):
        self.device, self.dtype = device, dtype
        cuda = device.type == "cuda"
        self.upload = torch.cuda.Stream(device) if cuda else None
        self.download = torch.cuda.Stream(device) if cuda else None

    def pin(self, x: torch.Tensor) -> torch.Tensor:
        return x.pin_memory() if self.upload is not None and x.device.type == "cpu" else x

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        if self.upload is None or x.device.type != "cpu":
            return x.to(self.device, self.dtype or x.dtype)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.upload):
            on_device = x.to(self.device, non_blocking=True)  # x is pinned: a true async copy
        compute.wait_stream(self.upload)
        on_device.record_stream(compute)  # allocated on the upload stream, used on compute
        return on_device.to(self.dtype or x.dtype)

    def to_source(self, y: torch.Tensor, like: torch.Tensor):
        """``(y on like's device and dtype, an event to wait on before reading it, or None)``."""
        if self.download is None:
            return y.to(like.device, like.dtype), None
        if like.device.type != "cpu":  # stays on a GPU: the writer thread waits for it
            y = y.to(like.device, like.dtype)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(y.device))
            return y, done
        y = y.to(like.dtype)
        self.download.wait_stream(torch.cuda.current_stream(self.device))  # y is computed
        with torch.cuda.stream(self.download):
            host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
            host.copy_(y, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.download)
        y.record_stream(self.download)  # allocated on compute, read on the download stream
        return host, done


# --- the engine ---------------------------------------------------------------------------

def _on_host(*tensors) -> bool:
    """True when numpy can do the work: CPU tensors of a dtype it has."""
    return all(t.device.type == "cpu" and t.dtype != torch.bfloat16 for t in tensors)


# The worker threads copy through numpy where they can: a torch op there would start an
# OpenMP team of its own, whose spinning threads compete with the model's on a small machine.

def _read_batch(source, group, transfers):
    items = [source.read(tile) for tile in group]
    xs = [x for x, _ in items]
    if len(xs) == 1:
        x = xs[0]
    elif _on_host(*xs):
        x = torch.from_numpy(np.concatenate([t.numpy() for t in xs]))
    else:
        x = torch.cat(xs)
    return transfers.pin(x), [context for _, context in items]


def _write_batch(sink, group, y, done, contexts):
    if done is not None:
        done.synchronize()
    n = y.shape[0] // len(group)
    for k, (tile, context) in enumerate(zip(group, contexts)):
        rows, cols = tile.out_crop
        sink.write(tile, y[k * n:(k + 1) * n, :, rows, cols], context)
    if y.is_cuda:  # this thread's copies out of y finish before y's memory can be reused
        torch.cuda.current_stream(y.device).synchronize()


class _Progress:
    """A tqdm bar of tiles with megapixels/s and ETA; silent when quiet or stderr is no TTY."""

    def __init__(self, tiles: int, quiet: bool, desc: str):
        from .progress import progress_bar

        self.bar = progress_bar(total=tiles, unit="tile", desc=desc, disable=quiet)
        self.start, self.pixels = time.perf_counter(), 0

    def done(self, group, images: int):
        self.pixels += sum(t.core_pixels for t in group) * images
        rate = self.pixels / 1e6 / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{rate:.2f} MP/s", refresh=False)
        self.bar.update(len(group))

    def close(self):
        self.bar.close()


def run_tiled(model, source, sink, *, tile=None, halo: int | None = None, batch: int = 1,
              allow_inexact: bool = False, quiet: bool = False, prefetch: int = 2,
              desc: str = "redkern") -> TiledRun:
    """Run ``model`` over ``source`` tile by tile, handing each kept core to ``sink``.

    ``source`` has ``height``, ``width`` and ``read(tile) -> (x, context)`` with ``x`` a float
    tensor ``[N, C, h, w]`` of ``tile.window`` (any device); ``sink`` has
    ``write(tile, y, context)``, called with ``y`` the model's output on ``tile.core`` (the
    output region ``tile.out_core`` for an upsampler), on ``x``'s device and dtype, and the
    context ``read`` returned. Reads run ``prefetch``
    batches ahead in one thread and writes trail in another, in tile order; tiles move to the
    model's device and dtype. ``tile``: the largest window (int or ``(rows, cols)``; the
    plan's windows are as small as covering the image with the fewest of them allows,
    ``plan_tiles``), by default sized from the memory available (``default_tile``, for
    ``source.images`` images a read where the source says, else one; logged and kept in
    ``TiledRun.tile_choice``); ``halo``: see ``resolve_halo``; ``batch``: tiles per model call.
    The model's scale is read off its plan (``receptive_field``); every output is checked to be
    that many times its tile.
    Any error or interrupt stops the run after the read and write in flight, then goes on.
    """
    if batch < 1 or prefetch < 1:
        raise ValueError(f"batch and prefetch must be >= 1, got {batch} and {prefetch}")
    halo, field = _resolve(model, halo, allow_inexact)
    choice = None
    if tile is None:
        tile, choice = _default_tile(model, field, halo, source.height, source.width,
                                     batch * getattr(source, "images", 1), prefetch)
        log.info("%s", choice)
    tiles = plan_tiles(source.height, source.width, _check_tile(tile), halo, field.scale, field.trim)
    return _run(model, source, sink, tiles, halo, batch, quiet, prefetch, desc, choice)


def _run(model, source, sink, tiles: list[Tile], halo: int, batch: int, quiet: bool, prefetch: int,
         desc: str, tile_choice: str | None = None) -> TiledRun:
    """The engine of ``run_tiled``, on tiles already planned."""
    groups = [tiles[i:i + batch] for i in range(0, len(tiles), batch)]
    scale, trim = tiles[0].scale, tiles[0].trim
    device, dtype = _model_device_dtype(model)
    transfers = _Transfers(device, dtype)
    progress = _Progress(len(tiles), quiet, desc)
    readers = ThreadPoolExecutor(1, thread_name_prefix="redkern-read")
    writers = ThreadPoolExecutor(1, thread_name_prefix="redkern-write")
    reads, writes = collections.deque(), collections.deque()
    images = 0
    try:
        for g in groups[:prefetch]:
            reads.append(readers.submit(_read_batch, source, g, transfers))
        for i, group in enumerate(groups):
            x, contexts = reads.popleft().result()
            if i + prefetch < len(groups):
                reads.append(readers.submit(_read_batch, source, groups[i + prefetch], transfers))
            images = x.shape[0] // len(group)
            with torch.no_grad():
                y = model(transfers.to_model(x))
            want = output_size(x.shape[2], x.shape[3], scale, trim)
            if y.dim() != 4 or y.shape[0] != x.shape[0] or tuple(y.shape[2:]) != want:
                raise ValueError(f"{type(model).__name__} turned a tile batch of shape {tuple(x.shape)} into "
                                 f"{tuple(y.shape)}; tiling needs outputs of {want[0]}x{want[1]} pixels "
                                 + ("(the input's size)" if (scale, trim) == (1, 0) else
                                    f"({scale} times the input's size" + (f", less {trim} at every border)"
                                                                          if trim else ")")))
            y, done = transfers.to_source(y, x)
            writes.append((group, writers.submit(_write_batch, sink, group, y, done, contexts)))
            while len(writes) > prefetch:
                g, w = writes.popleft()
                w.result()
                progress.done(g, images)
        while writes:
            g, w = writes.popleft()
            w.result()
            progress.done(g, images)
    finally:  # on error: drop what is queued, let the read and write in flight finish
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
        progress.close()
    th, tw = tiles[0].window[0].stop - tiles[0].window[0].start, tiles[0].window[1].stop - tiles[0].window[1].start
    return TiledRun(source.height, source.width, images, len(tiles), (th, tw), halo, batch,
                    str(device), time.perf_counter() - progress.start, scale, trim, tile_choice)


# --- tensors in memory --------------------------------------------------------------------

class _TensorTiles:
    """Source and sink over an ``[N, C, H, W]`` tensor; the output (``scale`` times the
    rows and columns) is made on first write."""

    def __init__(self, image: torch.Tensor):
        self.image, self.out = image, None
        self.images, self.height, self.width = image.shape[0], *image.shape[2:]

    def read(self, tile):
        return self.image[:, :, tile.window[0], tile.window[1]], None

    def write(self, tile, y, context):
        if self.out is None:
            self.out = torch.empty((self.image.shape[0], y.shape[1],
                                    *output_size(self.height, self.width, tile.scale, tile.trim)),
                                   dtype=self.image.dtype, device=self.image.device)
        rows, cols = tile.out_core
        if _on_host(self.out, y):
            self.out.numpy()[:, :, rows, cols] = y.numpy()
        else:
            self.out[:, :, rows, cols] = y


def tiled(model, image: torch.Tensor, *, tile=None, halo: int | None = None, batch: int = 1,
          allow_inexact: bool = False, quiet: bool = False) -> torch.Tensor:
    """``model(image)`` computed tile by tile; equal to it to float rounding, for upsamplers
    too (an ``[N, C', s H, s W]`` result for a network of scale ``s``).

    ``image``: floating ``[N, C, H, W]`` (or ``[C, H, W]``), any size and device; tiles move
    to the model's device and dtype and results come back to ``image``'s. ``tile``: the
    largest window fed to the model (int or ``(rows, cols)``, clamped to the image; windows
    are just as large as the fewest that cover the image need), by default the largest the
    memory available allows (``default_tile``, logged at INFO); ``halo``: context
    around each kept core in input pixels, the model's receptive field radius by default
    (``receptive_field``: its ``receptive_field_radius``, else its layer plan; smaller only
    with ``allow_inexact=True``, with a warning); ``batch``: tiles per model call; ``quiet``: no
    progress bar (there is none anyway when stderr is not a terminal).
    """
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4) or not image.is_floating_point():
        raise TypeError("tiled: expected a floating tensor [N, C, H, W] or [C, H, W], got "
                        + (f"{image.dtype} of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor)
                           else type(image).__name__))
    if image.dim() == 3:
        return tiled(model, image[None], tile=tile, halo=halo, batch=batch,
                     allow_inexact=allow_inexact, quiet=quiet)[0]
    if image.numel() == 0:
        raise ValueError(f"tiled: empty image of shape {tuple(image.shape)}")
    if tile is not None:
        _check_tile(tile)
    tiles = _TensorTiles(image)
    run_tiled(model, tiles, tiles, tile=tile, halo=halo, batch=batch, allow_inexact=allow_inexact,
              quiet=quiet)
    return tiles.out


# --- files --------------------------------------------------------------------------------

class _FileTiles:
    """Source and sink over image files: pixels -> model channels (``ChannelPlan``) -> pixels.
    At scale ``s`` the chroma and alpha that pass by the model are repeated ``s x s`` (nearest
    neighbour: tile by tile exactly what the whole image gets)."""

    def __init__(self, reader, writer, plan):
        self.reader, self.writer, self.plan = reader, writer, plan
        self.height, self.width = reader.height, reader.width

    def read(self, tile):
        pixels = self.reader.read(*tile.window)
        return torch.from_numpy(self.plan.model_input(pixels))[None], pixels

    def write(self, tile, y, pixels):
        rows, cols = tile.crop
        kept = pixels[rows, cols]
        if tile.scale > 1 and (self.plan.luma or self.plan.alpha):
            kept = kept.repeat(tile.scale, axis=0).repeat(tile.scale, axis=1)
        self.writer.write(*tile.out_core, self.plan.image_output(y[0].numpy(), kept))


def _input_channels(model) -> int | None:
    """The channels the model's first convolution takes (zoo networks keep no ``channels``)."""
    first = next((m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None) \
        if isinstance(model, torch.nn.Module) else None
    return None if first is None else first.in_channels


@dataclasses.dataclass
class RestoreJob:
    """One image file to restore with every check already made (``prepare_restore``):
    ``run()`` writes the target, tile by tile, and publishes it when complete."""

    model: object
    reader: object
    target: object
    channels: object  # imageio.ChannelPlan
    tiles: list
    halo: int
    batch: int
    overwrite: bool
    quiet: bool
    tile_choice: str | None = None  # how the window was sized when none was given (default_tile)

    @property
    def scale(self) -> int:
        """Output pixels per input pixel: the target is ``scale`` times the source's size."""
        return self.tiles[0].scale

    @property
    def output_size(self) -> tuple[int, int]:
        """The target's rows and columns (``output_size``)."""
        return output_size(self.reader.height, self.reader.width, self.scale, self.tiles[0].trim)

    @property
    def tile_shape(self) -> tuple[int, int]:
        w = self.tiles[0].window
        return (w[0].stop - w[0].start, w[1].stop - w[1].start)

    def run(self) -> TiledRun:
        from . import imageio

        reader = self.reader
        log.info("%s: %dx%d, %d channel(s), %s; restoring %s", reader.path, reader.height, reader.width,
                 reader.channels, reader.dtype, self.channels.describe())
        with imageio.create_image(self.target, *self.output_size, reader.channels,
                                  self.channels.out_dtype, alpha=reader.alpha, overwrite=self.overwrite,
                                  bigtiff=reader.bigtiff or None, source=reader.path, checked=True) as writer:
            tiles = _FileTiles(reader, writer, self.channels)
            return _run(self.model, tiles, tiles, self.tiles, self.halo, self.batch, self.quiet, 2, "redkern",
                        self.tile_choice)


def prepare_restore(model, reader, target, *, tile=None, halo: int | None = None, batch: int = 1,
                    allow_inexact: bool = False, overwrite: bool = False, out_dtype=None, quiet: bool = False,
                    max_overhead: float | None = None, path_checked: str | None = None) -> RestoreJob:
    """Every check ``restore_file`` makes before it computes anything, made once: the target
    (format, pixel type, existing file, the input itself), the channels, the halo and the tiles
    (``max_overhead``: refuse windows whose halos cost more than that many times whole-image
    inference). ``reader``: an open ``imageio.ImageReader``; ``path_checked``: the answer of an
    earlier ``imageio.check_output_path(target, ...)``. Raises ``ValueError`` or an
    ``imageio.ImageError``."""
    from . import imageio

    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    model_channels = getattr(model, "channels", None) or _input_channels(model) or reader.channels - int(reader.alpha)
    out_dtype = reader.dtype if out_dtype is None else out_dtype
    channels = imageio.ChannelPlan(reader.channels, reader.alpha, model_channels, out_dtype)
    halo, field = _resolve(model, halo, allow_inexact)
    scale, trim = field.scale, field.trim
    imageio.check_output(target, *output_size(reader.height, reader.width, scale, trim), reader.channels,
                         channels.out_dtype, alpha=reader.alpha, overwrite=overwrite, source=reader.path,
                         path_checked=path_checked)
    choice = None
    if tile is None:
        tile, choice = _default_tile(model, field, halo, reader.height, reader.width, batch, 2)
        log.info("%s", choice)
    tiles = plan_tiles(reader.height, reader.width, _check_tile(tile), halo, scale, trim)
    if max_overhead is not None:
        overhead = tile_overhead(tiles, reader.height, reader.width)
        if overhead > max_overhead:
            raise ValueError(f"a window of {_tile_text(tile)} px with a halo of {halo} px computes {overhead:.1f}x "
                             f"the pixels it keeps on this {reader.height}x{reader.width} image (at most "
                             f"{max_overhead:g}x allowed); the smallest sensible window is "
                             f"{smallest_window(reader.height, reader.width, halo, max_overhead)} px")
    return RestoreJob(model, reader, target, channels, tiles, halo, batch, overwrite, quiet, choice)


def restore_file(model, source, target, *, tile=None, halo: int | None = None, batch: int = 1,
                 allow_inexact: bool = False, overwrite: bool = False, out_dtype=None,
                 quiet: bool = False) -> TiledRun:
    """Run ``model`` over the image file ``source``, writing ``target``, tile by tile.

    ``source``: a path, or an ``imageio.ImageReader`` (left open). Memory stays within a few
    tiles for ``.npy``, TIFF and ``.zarr`` (PNG and JPEG are decoded and encoded whole).
    ``target`` appears only when complete; on an error or interrupt it is left as it was and
    no temporary remains. ``out_dtype``: the target's pixel type, the source's by default.
    Colour images with a 1-channel model have their luminance restored and chroma kept;
    alpha passes through (``imageio.ChannelPlan``). An upsampler of scale ``s`` writes a
    target of ``s`` times the rows and columns (chroma and alpha repeated ``s x s``). Other arguments as for ``tiled``.
    Raises ``imageio.ImageError`` subclasses for unreadable or unwritable files.
    """
    from . import imageio

    opened = (contextlib.nullcontext(source) if isinstance(source, imageio.ImageReader)
              else imageio.open_image(source))
    with opened as reader:
        return prepare_restore(model, reader, target, tile=tile, halo=halo, batch=batch,
                               allow_inexact=allow_inexact, overwrite=overwrite, out_dtype=out_dtype,
                               quiet=quiet).run()
