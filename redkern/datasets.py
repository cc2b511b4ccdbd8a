"""Folders of images for training and evaluation: the files, their pixels in the model's
channels, and the fixed degraded/clean pairs that validation and ``redkern eval`` score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .degradations import Degradation

__all__ = ["IMAGE_SUFFIXES", "image_files", "load_images", "split_folders", "to_tensor", "validation_pairs"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


def _model_pixels(pixels: np.ndarray, channels: int, alpha: bool) -> np.ndarray:
    """File pixels ``[H, W, C]`` -> ``[H, W, channels]`` in the model's terms (uint8 kept 8-bit)."""
    from .imageio import ChannelPlan, to_float

    colour = pixels.shape[2] - int(alpha)
    plan = ChannelPlan(pixels.shape[2], alpha, channels, np.float32)
    if not plan.luma and pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels[..., :colour])
    values = plan.model_input(pixels).transpose(1, 2, 0)
    if pixels.dtype == np.uint8:  # Y of 8-bit RGB: back on the 8-bit grid, like the file would be
        return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(to_float(values))


def image_files(folder) -> list[Path]:
    """The image files in ``folder``, sorted; ``imageio.ImageNotFound`` if there are none."""
    from .imageio import ImageNotFound

    folder = Path(folder)
    if not folder.is_dir():
        raise ImageNotFound(f"{folder}: no such image folder", path=folder, reading=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageNotFound(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it", path=folder, reading=True)
    return files


def load_images(folder, channels: int = 1) -> list[tuple[str, np.ndarray]]:
    """``[(name, pixels [H, W, channels])]`` for every image in ``folder``, sorted by name.

    Pixels stay uint8 for 8-bit files (float32 in [0, 1] otherwise)."""
    from .imageio import open_image

    out = []
    for path in image_files(folder):
        with open_image(path) as reader:
            pixels = reader.read(slice(0, reader.height), slice(0, reader.width))
            alpha = reader.alpha
        pixels = pixels if pixels.ndim == 3 else pixels[..., None]
        out.append((path.stem, _model_pixels(pixels, channels, alpha)))
    return out


def split_folders(data, val_data=None) -> tuple[Path, Path | None]:
    """``data/train`` and ``data/val`` when ``data`` has them, else ``data`` and ``val_data``."""
    data = Path(data)
    if (data / "train").is_dir():
        val = Path(val_data) if val_data else (data / "val" if (data / "val").is_dir() else None)
        return data / "train", val
    return data, Path(val_data) if val_data else None


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """``[H, W, C]`` uint8 or float pixels -> float32 ``[C, H, W]`` in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
    return t.float() / 255 if t.dtype == torch.uint8 else t.float()


def validation_pairs(images, task: str, level, seed: int = 0, *, noise=None, masks: bool = False):
    """``[(name, degraded [1, C, H, W], clean [1, C, H, W])]``: each image degraded once at
    ``level`` with ``default_rng([seed, index])`` (the pairs ``redkern eval`` uses too).

    ``noise``: deblur's noise sigma (a number, or a ``"lo-hi"`` range drawn per image; default
    ``degradations.DEBLUR_VAL_NOISE``). ``masks=True`` adds a fourth item, inpaint's text mask
    (bool ``[1, 1, H, W]``; None for the other tasks), for the peers that are given it."""
    from .degradations import DEBLUR_VAL_NOISE, modcrop

    if task == "deblur" and noise is None:
        noise = DEBLUR_VAL_NOISE
    degradation = Degradation(task, [level], noise=noise)
    pairs = []
    for i, (name, pixels) in enumerate(images):
        clean = to_tensor(pixels)[None]
        if task == "sr":
            clean = modcrop(clean, int(level))
        degraded, mask = degradation.degrade(clean, level, np.random.default_rng([seed, i]))
        pairs.append((name, degraded, clean, mask) if masks else (name, degraded, clean))
    return pairs
