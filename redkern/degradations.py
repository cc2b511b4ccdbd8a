"""The three restoration tasks as degradations of clean images, applied on the fly.

Images are float tensors ``[N, C, H, W]`` in [0, 1] (``C`` = 1 for grayscale / Y, 3 for RGB);
randomness comes from a ``numpy.random.Generator``, so a seed gives the same degraded data on
any device. Levels are on the paper's scales:

=========  ==========================  ============================================================
task       level                       degradation
=========  ==========================  ============================================================
denoise    sigma on [0, 255]           ``x + sigma / 255 * n``, ``n ~ N(0, 1)`` i.i.d.; not clipped
                                       (the usual protocol, as for BM3D's published numbers)
sr         integer scale (2, 3, 4)     bicubic down by ``scale``, bicubic back up to the same size,
                                       rounded to 8 bits (the paper's SR input)
jpeg       Pillow quality (1..95)      8-bit JPEG encode + decode with Pillow (standard IJG tables)
=========  ==========================  ============================================================

Bicubic is Keys' kernel with a = -0.5 and, when shrinking, widened by the scale (antialiased),
as MATLAB's ``imresize`` and Pillow: ``torch.nn.functional.interpolate(mode="bicubic",
antialias=True)``. ``sr`` needs ``H`` and ``W`` divisible by the scale: ``modcrop`` first.

``Degradation("denoise", "0-50")`` describes a training distribution (one level per sample,
drawn uniformly: continuous for sigma, integers for scale and quality); ``apply`` degrades a
batch with given per-sample levels, and ``parse_levels`` reads the ``"25"``, ``"0-50"``,
``"2,3,4"`` spellings the command line uses.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TASKS", "dihedral", "dihedral_inverse", "add_gaussian_noise", "bicubic_resize", "bicubic_degrade", "modcrop",
           "jpeg_roundtrip", "jpeg_bytes", "quantize", "Degradation", "parse_levels"]

TASKS = ("denoise", "sr", "jpeg")
_LEVEL_NAME = {"denoise": "sigma", "sr": "scale", "jpeg": "quality"}
DEFAULT_LEVELS = {"denoise": "0-50", "sr": "2,3,4", "jpeg": "10-40"}  # the shipped models' ranges


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid: ``round(clip(x, 0, 1) * 255) / 255``."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def add_gaussian_noise(x: torch.Tensor, sigma, rng: np.random.Generator) -> torch.Tensor:
    """``x + sigma / 255 * N(0, 1)``; ``sigma`` a number or one per sample ``[N]`` (0..255 scale).

    The noise is drawn in float32 by ``rng`` on the CPU and moved to ``x``'s device, so a seed
    gives the same noisy images everywhere. No clipping.
    """
    noise = torch.from_numpy(rng.standard_normal(tuple(x.shape), dtype=np.float32)).to(x.device)
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1) / 255
    return x + (s * noise).to(x.dtype)


def modcrop(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop ``[..., H, W]`` at the bottom/right to multiples of ``scale`` (as the paper's test code)."""
    h, w = x.shape[-2] - x.shape[-2] % scale, x.shape[-1] - x.shape[-1] % scale
    return x[..., :h, :w]


def bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of ``[N, C, H, W]`` to ``size`` (a = -0.5, antialiased when shrinking)."""
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)


def bicubic_degrade(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The SR input: ``x`` bicubic-shrunk by ``scale``, bicubic-enlarged back, 8-bit rounded.

    ``x``: ``[N, C, H, W]`` with ``H`` and ``W`` divisible by ``scale`` (see ``modcrop``).
    """
    scale = int(scale)
    h, w = x.shape[-2:]
    if scale < 1 or h % scale or w % scale:
        raise ValueError(f"bicubic_degrade: the image size {h}x{w} must be divisible by the scale "
                         f"{scale}; crop it with modcrop(x, {scale}) first")
    small = bicubic_resize(x.float(), (h // scale, w // scale))
    return quantize(bicubic_resize(quantize(small), (h, w))).to(x.dtype)


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    """Encode uint8 pixels ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` as a Pillow JPEG of ``quality``."""
    from PIL import Image

    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_roundtrip(x: torch.Tensor, quality) -> torch.Tensor:
    """Each image of ``[N, C, H, W]`` (C = 1 or 3) through an 8-bit JPEG of ``quality`` and back.

    ``quality``: a number or one per sample. Colour uses Pillow's defaults (YCbCr, 4:2:0).
    """
    from PIL import Image

    if x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg_roundtrip: JPEG holds 1 or 3 channels, got {x.shape[1]}")
    qualities = np.broadcast_to(np.asarray(quality), (x.shape[0],))
    pixels = (torch.round(x.detach().float().clamp(0, 1) * 255).to(torch.uint8)
              .permute(0, 2, 3, 1).cpu().numpy())
    out = np.empty(pixels.shape, np.uint8)
    for i, q in enumerate(qualities):
        with Image.open(io.BytesIO(jpeg_bytes(pixels[i], int(q)))) as im:
            out[i] = np.asarray(im).reshape(out.shape[1:])
    y = torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255
    return y.contiguous().to(device=x.device, dtype=x.dtype)


def parse_levels(task: str, spec) -> tuple[float, float] | tuple[int, ...]:
    """``"25"`` -> (25, 25); ``"0-50"`` -> (0, 50) for denoise; ``"2,3,4"``/``"2-4"`` -> (2, 3, 4)
    for sr; ``"10-40"`` -> (10, ..., 40) for jpeg. Numbers pass through."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    text = str(spec).replace(" ", "")
    try:
        if task == "denoise":
            lo, _, hi = text.partition("-")
            lo, hi = float(lo), float(hi or lo)
            if not 0 <= lo <= hi:
                raise ValueError
            return (lo, hi)
        values = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            values += range(int(lo), int(hi or lo) + 1)
        levels = tuple(sorted(set(values)))
        bad = [v for v in levels if (v < 1 if task == "sr" else not 1 <= v <= 100)]
        if not levels or bad:
            raise ValueError
        return levels
    except ValueError:
        example = {"denoise": "'25' or '0-50'", "sr": "'2' or '2,3,4'", "jpeg": "'10' or '10-40'"}[task]
        raise ValueError(f"bad {_LEVEL_NAME[task]} {spec!r} for task {task}: write it as {example}") from None


@dataclass(frozen=True)
class Degradation:
    """A task and its training levels (``parse_levels`` spelling or tuple)."""

    task: str
    levels: tuple

    def __init__(self, task: str, levels=None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if levels is None:
            levels = DEFAULT_LEVELS[task]
        if not isinstance(levels, str):  # numbers or tuples: back to the spelling parse_levels reads
            vals = tuple(np.atleast_1d(levels).tolist())
            levels = (f"{min(vals)}-{max(vals)}" if task == "denoise"
                      else ",".join(str(int(v)) for v in vals))
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "levels", parse_levels(task, levels))

    @property
    def level_name(self) -> str:
        return _LEVEL_NAME[self.task]

    def describe(self) -> str:
        if self.task == "denoise":
            lo, hi = self.levels
            return f"sigma {lo:g}" if lo == hi else f"sigma uniform in [{lo:g}, {hi:g}]"
        vals = self.levels
        contiguous = len(vals) > 2 and vals == tuple(range(vals[0], vals[-1] + 1))
        text = f"{vals[0]}-{vals[-1]}" if contiguous else ",".join(map(str, vals))
        return f"{self.level_name} {text}"

    @property
    def margin(self) -> int:
        """Extra pixels to crop around a training patch before degrading it, so the patch's
        degradation sees image content (not the crop's edge) around it: the bicubic support
        of the largest scale, or one JPEG block's worth of grid phase."""
        if self.task == "sr":
            return 2 * max(self.levels)
        if self.task == "jpeg":
            return 8
        return 0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` levels, uniform over the range (sigma) or the set (scale, quality)."""
        if self.task == "denoise":
            lo, hi = self.levels
            return rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo)
        return rng.choice(np.asarray(self.levels), n)

    def apply(self, x: torch.Tensor, levels, rng: np.random.Generator) -> torch.Tensor:
        """Degrade ``[N, C, H, W]`` with one level per sample (a number applies to all)."""
        levels = np.broadcast_to(np.asarray(levels), (x.shape[0],))
        if self.task == "denoise":
            return add_gaussian_noise(x, levels.astype(np.float32), rng)
        if self.task == "jpeg":
            return jpeg_roundtrip(x, levels)
        out = torch.empty_like(x)
        for s in np.unique(levels):
            idx = torch.from_numpy(np.flatnonzero(levels == s))
            out[idx] = bicubic_degrade(x[idx], int(s))
        return out


# --- the square's symmetries: augmentation in training, the x8 self-ensemble in evaluation ------

def dihedral(x, k: int):
    """The ``k``-th of the square's 8 symmetries (``k`` in 0..7) on the last two axes."""
    axes = (-2, -1)
    if isinstance(x, np.ndarray):
        x = np.rot90(x, k % 4, axes=axes)
        return x[..., ::-1] if k >= 4 else x
    x = torch.rot90(x, k % 4, dims=axes)
    return x.flip(-1) if k >= 4 else x


def dihedral_inverse(x, k: int):
    """Undo ``dihedral(x, k)``."""
    if k >= 4:
        x = x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)
    return np.rot90(x, -(k % 4), axes=(-2, -1)) if isinstance(x, np.ndarray) else torch.rot90(x, -(k % 4), dims=(-2, -1))
