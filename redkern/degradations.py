"""The five restoration tasks as degradations of clean images, applied on the fly.

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
deblur     blur sigma (pixels)         Gaussian blur of that sigma, a kernel of ``2 ceil(3 sigma) + 1``
                                       taps per axis (``6 sigma + 1`` for integer sigma), reflected at
                                       the border; then Gaussian noise of ``noise`` sigma on [0, 255]
                                       (drawn per image from the noise range); rounded to 8 bits
inpaint    text coverage (% of pixels) random strings of Pillow's default font (random sizes, grey
                                       levels, positions; antialiased) drawn until at least that share
                                       of the pixels is touched; rounded to 8 bits. Blind: the text
                                       mask is returned beside the image (``text_overlay``), for the
                                       oracle peer only
=========  ==========================  ============================================================

Bicubic is Keys' kernel with a = -0.5 and, when shrinking, widened by the scale (antialiased),
as MATLAB's ``imresize`` and Pillow: ``torch.nn.functional.interpolate(mode="bicubic",
antialias=True)``. ``sr`` needs ``H`` and ``W`` divisible by the scale: ``modcrop`` first.

``Degradation("deblur", "1-3", noise="0-2")`` is the deblurring training distribution (blur
sigma and noise sigma each uniform); the noise range belongs to deblur only.

``Degradation("denoise", "0-50")`` describes a training distribution (one level per sample,
drawn uniformly: continuous for sigma, integers for scale and quality); ``apply`` degrades a
batch with given per-sample levels, and ``parse_levels`` reads the ``"25"``, ``"0-50"``,
``"2,3,4"`` spellings the command line uses.
"""

from __future__ import annotations

import functools
import io
import math
import string
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TASKS", "dihedral", "dihedral_inverse", "add_gaussian_noise", "bicubic_resize", "bicubic_degrade", "modcrop",
           "jpeg_roundtrip", "jpeg_bytes", "quantize", "gaussian_radius", "gaussian_taps", "gaussian_psf", "gaussian_blur",
           "blur_degrade", "text_overlay", "Degradation", "parse_levels"]

TASKS = ("denoise", "sr", "jpeg", "deblur", "inpaint")
_LEVEL_NAME = {"denoise": "sigma", "sr": "scale", "jpeg": "quality", "deblur": "blur sigma",
               "inpaint": "text coverage"}
# the training ranges: the shipped models' for denoise/sr/jpeg, the paper's tasks for deblur/inpaint
DEFAULT_LEVELS = {"denoise": "0-50", "sr": "2,3,4", "jpeg": "10-40", "deblur": "1-3", "inpaint": "5-20"}
CONTINUOUS = ("denoise", "deblur", "inpaint")  # levels drawn uniformly from a range
LEVEL_MAX = {"denoise": None, "deblur": 10.0, "inpaint": 90.0}  # beyond this a level means nothing
DEBLUR_NOISE = "0-2"   # deblur's noise sigma (0..255 scale) in training: uniform in this range
DEBLUR_VAL_NOISE = 1.0  # ... and in validation and `redkern eval` unless told otherwise


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


# --- deblur: Gaussian blur plus a little noise ---------------------------------------------

def gaussian_radius(sigma: float) -> int:
    """Half the blur kernel's width: ``ceil(3 sigma)``, so ``6 sigma + 1`` taps for integer sigma."""
    return int(math.ceil(3 * float(sigma) - 1e-9))


def gaussian_taps(sigma: float) -> np.ndarray:
    """The 1-D Gaussian of ``sigma`` pixels on ``2 gaussian_radius(sigma) + 1`` taps, summing to 1 (float64)."""
    r = gaussian_radius(sigma)
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / float(sigma)) ** 2)
    return g / g.sum()


def gaussian_psf(sigma: float) -> np.ndarray:
    """The 2-D blur kernel (point-spread function) ``outer(taps, taps)``, float64, summing to 1."""
    g = gaussian_taps(sigma)
    return np.outer(g, g)


def gaussian_blur(x: torch.Tensor, sigma) -> torch.Tensor:
    """``[N, C, H, W]`` blurred by ``gaussian_psf(sigma)`` (one sigma, or one per sample), the
    image reflected at its border (``numpy``'s ``reflect``, no edge repeat); same size out."""
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (x.shape[0],))
    out = torch.empty_like(x)
    n, c, h, w = x.shape
    for s in np.unique(sigmas):
        idx = torch.from_numpy(np.flatnonzero(sigmas == s))
        g = torch.from_numpy(gaussian_taps(s)).to(device=x.device, dtype=torch.float32)
        r = (g.numel() - 1) // 2
        if r >= min(h, w):
            raise ValueError(f"gaussian_blur: an image of {h}x{w} is too small for blur sigma {s:g} "
                             f"(kernel radius {r}; reflection needs more pixels than that)")
        y = F.pad(x[idx].float().reshape(-1, 1, h, w), (r, r, r, r), mode="reflect")
        y = F.conv2d(F.conv2d(y, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
        out[idx] = y.reshape(len(idx), c, h, w).to(x.dtype)
    return out


def blur_degrade(x: torch.Tensor, blur, noise, rng: np.random.Generator) -> torch.Tensor:
    """The deblurring input: ``gaussian_blur(x, blur)`` plus ``noise / 255 * N(0, 1)``
    (``add_gaussian_noise``; ``blur`` and ``noise`` numbers or one per sample), rounded to 8 bits."""
    return quantize(add_gaussian_noise(gaussian_blur(x, blur), noise, rng))


def _uniform(rng: np.random.Generator, bounds, n: int) -> np.ndarray:
    lo, hi = bounds
    return rng.uniform(lo, hi, n) if hi > lo else np.full(n, float(lo))


# --- inpaint: text drawn over the photo ------------------------------------------------------

TEXT_SIZES = (10, 30)  # font sizes (pixels), uniform integers
TEXT_LENGTHS = (3, 16)  # characters per string, uniform integers
TEXT_CHARACTERS = string.ascii_letters + string.digits + "     .,;:!?'-"
MAX_STRINGS = 2000


def text_overlay(x: torch.Tensor, coverage, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image with text, mask)`` for ``[N, C, H, W]``: on each image, random strings of Pillow's
    default font (``ImageFont.load_default(size)``, antialiased) in random grey levels (0..255,
    the same in every channel), sizes ``TEXT_SIZES`` and positions (they may run off the edge)
    are drawn one over the other until at least ``coverage`` percent of the pixels are touched
    (a number or one per sample). The result is rounded to 8 bits; the mask (bool
    ``[N, 1, H, W]``) is True wherever text has any weight. Deterministic given ``rng`` (and
    Pillow's FreeType build)."""
    from PIL import Image, ImageDraw

    n, c, h, w = x.shape
    targets = np.broadcast_to(np.asarray(coverage, dtype=np.float64), (n,)) / 100
    pixels = x.detach().float().cpu().numpy().copy()
    masks = np.zeros((n, 1, h, w), bool)
    for i, target in enumerate(targets):
        touched = np.zeros((h, w), bool)
        for _ in range(MAX_STRINGS):
            if touched.mean() >= target:
                break
            size = int(rng.integers(TEXT_SIZES[0], TEXT_SIZES[1] + 1))
            length = int(rng.integers(TEXT_LENGTHS[0], TEXT_LENGTHS[1] + 1))
            text = "".join(rng.choice(list(TEXT_CHARACTERS), length))
            grey = int(rng.integers(0, 256)) / 255
            top, left = int(rng.integers(-size // 2, h)), int(rng.integers(-size, w))
            layer = Image.new("L", (w, h), 0)
            ImageDraw.Draw(layer).text((left, top), text, fill=255, font=_font(size))
            alpha = np.asarray(layer, dtype=np.float32) / 255
            pixels[i] = alpha * grey + (1 - alpha) * pixels[i]
            touched |= alpha > 0
        masks[i, 0] = touched
    y = quantize(torch.from_numpy(pixels)).to(device=x.device, dtype=x.dtype)
    return y, torch.from_numpy(masks).to(x.device)


@functools.lru_cache(maxsize=64)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def parse_levels(task: str, spec) -> tuple[float, float] | tuple[int, ...]:
    """``"25"`` -> (25, 25); ``"0-50"`` -> (0, 50) for denoise (and deblur's blur sigma, inpaint's
    text coverage: ranges too); ``"2,3,4"``/``"2-4"`` -> (2, 3, 4) for sr; ``"10-40"`` ->
    (10, ..., 40) for jpeg. Numbers pass through."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    text = str(spec).replace(" ", "")
    try:
        if task in CONTINUOUS:
            lo, _, hi = text.partition("-")
            lo, hi = float(lo), float(hi or lo)
            top = LEVEL_MAX[task]
            if not 0 <= lo <= hi or (top is not None and hi > top) or (task == "deblur" and lo <= 0):
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
        example = {"denoise": "'25' or '0-50'", "sr": "'2' or '2,3,4'", "jpeg": "'10' or '10-40'",
                   "deblur": "'2' or '1-3' (sigma > 0, at most 10)",
                   "inpaint": "'10' or '5-20' (percent of the pixels, at most 90)"}[task]
        raise ValueError(f"bad {_LEVEL_NAME[task]} {spec!r} for task {task}: write it as {example}") from None


def _range_spelling(levels) -> str:
    """Numbers or a tuple -> the ``"lo-hi"`` spelling ``parse_levels`` reads for a range."""
    vals = tuple(np.atleast_1d(levels).tolist())
    return f"{min(vals)}-{max(vals)}"


@dataclass(frozen=True)
class Degradation:
    """A task and its training levels (``parse_levels`` spelling or tuple); for deblur also the
    noise sigma range (``"0-2"`` by default, same spellings as denoise's sigma)."""

    task: str
    levels: tuple
    noise: tuple | None = None

    def __init__(self, task: str, levels=None, noise=None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
        if levels is None:
            levels = DEFAULT_LEVELS[task]
        if not isinstance(levels, str):  # numbers or tuples: back to the spelling parse_levels reads
            levels = (_range_spelling(levels) if task in CONTINUOUS
                      else ",".join(str(int(v)) for v in np.atleast_1d(levels).tolist()))
        if task == "deblur":
            spec = DEBLUR_NOISE if noise is None else noise if isinstance(noise, str) else _range_spelling(noise)
            noise = parse_levels("denoise", spec)
        elif noise is not None:
            raise ValueError(f"a noise level belongs to the deblur task, not to {task}")
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "levels", parse_levels(task, levels))
        object.__setattr__(self, "noise", noise)

    @property
    def level_name(self) -> str:
        return _LEVEL_NAME[self.task]

    def describe(self) -> str:
        if self.task in CONTINUOUS:
            lo, hi = self.levels
            unit = "%" if self.task == "inpaint" else ""
            text = (f"{self.level_name} {lo:g}{unit}" if lo == hi
                    else f"{self.level_name} uniform in [{lo:g}{unit}, {hi:g}{unit}]")
            if self.noise is not None:
                nlo, nhi = self.noise
                text += f", noise sigma {nlo:g}" if nlo == nhi else f", noise sigma uniform in [{nlo:g}, {nhi:g}]"
            return text
        vals = self.levels
        contiguous = len(vals) > 2 and vals == tuple(range(vals[0], vals[-1] + 1))
        text = f"{vals[0]}-{vals[-1]}" if contiguous else ",".join(map(str, vals))
        return f"{self.level_name} {text}"

    @property
    def margin(self) -> int:
        """Extra pixels to crop around a training patch before degrading it, so the patch's
        degradation sees image content (not the crop's edge) around it: the bicubic support
        of the largest scale, one JPEG block's worth of grid phase, or the blur kernel's radius
        at the largest blur sigma."""
        if self.task == "sr":
            return 2 * max(self.levels)
        if self.task == "jpeg":
            return 8
        if self.task == "deblur":
            return gaussian_radius(self.levels[1])
        return 0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` levels, uniform over the range (sigma, blur sigma, coverage) or the set (scale, quality)."""
        if self.task in CONTINUOUS:
            return _uniform(rng, self.levels, n)
        return rng.choice(np.asarray(self.levels), n)

    def apply(self, x: torch.Tensor, levels, rng: np.random.Generator) -> torch.Tensor:
        """Degrade ``[N, C, H, W]`` with one level per sample (a number applies to all)."""
        return self.degrade(x, levels, rng)[0]

    def degrade(self, x: torch.Tensor, levels, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(degraded, mask)``: ``apply``'s result and, for inpaint, the text mask (bool
        ``[N, 1, H, W]``, True where text touched a pixel; what the oracle peer is given), else None."""
        levels = np.broadcast_to(np.asarray(levels), (x.shape[0],))
        if self.task == "inpaint":
            return text_overlay(x, levels, rng)
        return self._degrade(x, levels, rng), None

    def _degrade(self, x: torch.Tensor, levels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.task == "denoise":
            return add_gaussian_noise(x, levels.astype(np.float32), rng)
        if self.task == "jpeg":
            return jpeg_roundtrip(x, levels)
        if self.task == "deblur":
            return blur_degrade(x, levels, _uniform(rng, self.noise, x.shape[0]), rng)
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
