#!/usr/bin/env python3
"""Build the grayscale dataset the shipped weights were trained on, from offline sources only.

Sources (all installable without a network beyond apt and PyPI):

- ``skimage.data`` (lossless): camera, astronaut, coffee, chelsea, brick, grass, gravel, moon,
  immunohistochemistry, the left view of the motorcycle stereo pair;
- ``pywt.data`` (lossless): aero, ascent (its ``camera`` is skimage's, so it is skipped);
- Debian's ``plasma-workspace-wallpapers``: the ten real photographs (BytheWater, ColdRipple,
  ColorfulCups, DarkestHour, EveningGlow, FallenLeaf, Grey, OneStandsOut, Path, summer_1am),
  each the largest JPEG there, halved with a 2x2 box filter to hide the JPEG compression.

Colour images become the Y channel of YCbCr (ITU-R BT.601 as MATLAB's ``rgb2ycbcr``, the
paper's luminance, and what ``redkern restore`` feeds a 1-channel model); grayscale ones are
kept as they are. Output: 8-bit PNGs in ``OUT/train`` and ``OUT/val``.

The validation split is fixed (``VALIDATION`` below) and none of it is ever trained on:
skimage's camera and astronaut whole, and 512x512 centre crops of the Path and ColorfulCups
wallpapers (the rest of those two photographs is not used at all).

    python scripts/prepare_data.py --install      # apt-get + pip first, then build
    python scripts/prepare_data.py OUT_DIR         # build only (default: .data/redkern-gray)

The larger catalog of photographs for the next models (Debian's lomiri and mate wallpapers
too, 37.5 Mpixel) is ``redkern.photos`` (``python -m redkern.photos``); its validation split
keeps these four images as they are here.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from redkern.photos import centre_crop, luminance  # one definition, shared with the photo catalog

WALLPAPER_DIR = Path("/usr/share/wallpapers")
WALLPAPERS = ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
              "Grey", "OneStandsOut", "Path", "summer_1am")
SKIMAGE = ("camera", "astronaut", "coffee", "chelsea", "brick", "grass", "gravel", "moon",
           "immunohistochemistry", "stereo_motorcycle")
PYWT = ("aero", "ascent")
# name -> crop (None: the whole image). Fixed: changing it invalidates every reported number.
VALIDATION = {"camera": None, "astronaut": None, "Path": 512, "ColorfulCups": 512}
DEFAULT_OUT = Path(".data/redkern-gray")


def install() -> None:
    """apt-get the wallpapers and pip-install scikit-image and PyWavelets (needs root + network)."""
    subprocess.run(["apt-get", "update"], check=True)
    subprocess.run(["apt-get", "install", "-y", "plasma-workspace-wallpapers"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "scikit-image", "PyWavelets"], check=True)


def largest_jpeg(name: str) -> Path:
    images = sorted((WALLPAPER_DIR / name / "contents" / "images").glob("*.jpg"),
                    key=lambda p: np.prod([int(v) for v in p.stem.split("x")]))
    if not images:
        raise SystemExit(f"no JPEG for wallpaper {name} under {WALLPAPER_DIR}; "
                         "install it: apt-get install -y plasma-workspace-wallpapers (or run with --install)")
    return images[-1]


def sources():
    """Yield ``(name, uint8 [H, W] grayscale)`` for every source image."""
    import pywt.data
    import skimage.data

    for name in SKIMAGE:
        img = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            name, img = "motorcycle_left", img[0]
        yield name, luminance(img)
    for name in PYWT:
        yield f"pywt_{name}", luminance(getattr(pywt.data, name)())
    for name in WALLPAPERS:
        with Image.open(largest_jpeg(name)) as im:
            rgb = np.asarray(im.convert("RGB").reduce(2))  # 2x2 box average: hides JPEG blocks
        yield name, luminance(rgb)


def build(out: Path) -> dict[str, list[str]]:
    split = {"train": [], "val": []}
    for sub in split:
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("*.png"):
            old.unlink()
    for name, img in sources():
        part = "val" if name in VALIDATION else "train"
        if part == "val" and VALIDATION[name]:
            img = centre_crop(img, VALIDATION[name])
        path = out / part / f"{name}.png"
        Image.fromarray(img).save(path, optimize=True)
        digest = hashlib.sha256(img.tobytes()).hexdigest()[:12]
        print(f"{part:5s} {path.name:28s} {img.shape[1]:5d}x{img.shape[0]:<5d} sha256(pixels)={digest}")
        split[part].append(path.name)
    return split


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--install", action="store_true", help="apt-get/pip install the sources first")
    args = parser.parse_args(argv)
    if args.install:
        install()
    split = build(args.out)
    print(f"{len(split['train'])} training and {len(split['val'])} validation images in {args.out}")


if __name__ == "__main__":
    main()
