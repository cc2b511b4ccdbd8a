"""Real photographs that Debian and PyPI packages install, as one catalog with a fixed
validation split: training data for every task, found on this machine at run time.

    python -m redkern.photos .data/redkern-photos            # grayscale/Y PNGs in train/ and val/
    python -m redkern.photos .data/redkern-photos-rgb --channels 3
    python -m redkern.photos --list                          # what is installed, what is missing

    from redkern import photos
    train = photos.load("train", channels=1)                 # [(name, uint8 [H, W, 1])]

Nothing is downloaded: each source names the package that holds it (``apt-get install -y
PACKAGE`` or ``pip install PACKAGE``), and a missing one raises ``MissingSource`` naming it
(``missing="skip"`` leaves it out instead, and says so). ``REDKERN_PHOTO_ROOTS`` (paths joined
by ``:``) adds prefixes under which the Debian files are looked for, e.g. a folder a package
was unpacked into with ``apt-get download PKG && dpkg -x PKG.deb DIR``.

Only photographs: the wallpapers that are illustrations (most of plasma's, all of ukui's and
sway's, gnome's, lomiri's Fossa/Painting-Colors/Infinite-Sea/umang) and the scientific images
(microscopy, retina, astronomy) are left out; ``redkern/data/SOURCES.md`` lists what was
looked at and why. JPEG files are shrunk by an integer box filter (``Source.reduce``: at least 2,
and about 1600 px on the longer side) to hide their compression. Colour images become the Y of
YCbCr (BT.601, as ``redkern restore`` feeds a 1-channel model) for ``channels=1``; grayscale
sources are left out of ``channels=3``.

The validation split (``VALIDATION``) is fixed; the photographs in it are never trained on,
not even the parts outside their crops. It holds the four images the shipped models were
validated on (``scripts/prepare_data.py``) and four more, in colour.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Source", "SOURCES", "VALIDATION", "MissingSource", "load", "source", "luminance", "centre_crop",
           "box_reduce", "build", "main"]

PLASMA = "/usr/share/wallpapers/{}/contents/images/*.jpg"
LOMIRI = "/usr/share/backgrounds/{}.jpg"
MATE = "/usr/share/backgrounds/mate/nature/{}.jpg"


@dataclass(frozen=True)
class Source:
    """One photograph: ``where`` is a path glob (the largest match is taken) for a Debian
    ``package``, or ``module:function`` for a PyPI one (``item``: which image of what it
    returns); ``reduce`` the box-filter factor (0: chosen from the size, see ``box_reduce``;
    1: kept as it is)."""

    name: str
    package: str      # "deb:NAME" or "pip:NAME"
    where: str
    licence: str
    author: str
    colour: bool = True
    reduce: int = 0
    item: int | None = None

    @property
    def install(self) -> str:
        kind, name = self.package.split(":")
        return f"apt-get install -y {name}" if kind == "deb" else f"pip install {name}"


def _plasma(name, author):
    return Source(name, "deb:plasma-workspace-wallpapers", PLASMA.format(name), "LGPL-3.0", author, reduce=2)


def _lomiri(stem, licence, package="deb:lomiri-wallpapers-16.04"):
    name, _, author = stem.partition("_by_")
    return Source(name, package, LOMIRI.format(stem), licence, author.replace("_", " "))


def _mate(name, author):
    return Source(name, "deb:mate-backgrounds", MATE.format(name), "GPL-2+", author)


SOURCES: tuple[Source, ...] = (
    # scikit-image's bundled files (lossless unless said)
    *(Source(n, "pip:scikit-image", f"skimage.data:{n}", lic, who, colour, 1) for n, lic, who, colour in (
        ("camera", "CC0", "Lav Varshney", False), ("astronaut", "public domain", "NASA", True),
        ("coffee", "CC0", "Rachel Michetti", True), ("chelsea", "CC0", "Stefan van der Walt", True),
        ("brick", "CC0", "CC0Textures", False), ("grass", "CC0", "CC0Textures", False),
        ("gravel", "CC0", "CC0Textures", False), ("moon", "no known restrictions", "unknown", False),
        ("coins", "no known restrictions", "Brooklyn Museum", False))),
    Source("motorcycle_left", "pip:scikit-image", "skimage.data:stereo_motorcycle", "no known restrictions",
           "Middlebury stereo dataset", True, 1, item=0),
    Source("rocket", "pip:scikit-image", "skimage.data:rocket", "public domain", "SpaceX", True, 2),
    Source("pywt_aero", "pip:PyWavelets", "pywt.data:aero", "no known restrictions", "unknown", False, 1),
    Source("pywt_ascent", "pip:PyWavelets", "pywt.data:ascent", "no known restrictions", "unknown", False, 1),
    # Debian: plasma-workspace-wallpapers (the ten photographs of its 30 wallpapers)
    *(_plasma(n, who) for n, who in (
        ("BytheWater", "Maciej Wiklo"), ("ColdRipple", "Risto Saukonpää"), ("ColorfulCups", "Dmitri Popov"),
        ("DarkestHour", "Risto Saukonpää"), ("EveningGlow", "Ian Hex"), ("FallenLeaf", "Martin Klapetek"),
        ("OneStandsOut", "Risto Saukonpää"), ("Path", "Risto Saukonpää"), ("summer_1am", "Risto Saukonpää"))),
    Source("Grey", "deb:plasma-workspace-wallpapers", PLASMA.format("Grey"), "LGPL-3.0", "Sigi Sagi", False, 2),
    # Debian: lomiri-wallpapers-16.04 / -20.04 (Ubuntu Touch's community wallpapers)
    *(_lomiri(stem, lic) for stem, lic in (
        ("Bridge_by_Sander_Klootwijk", "CC-BY-SA-4.0"), ("Dragonfly_by_Bolly", "CC-BY-SA-4.0"),
        ("Picture_0B_by_freespace", "CC-BY-4.0"), ("Picture_1A_by_freespace", "CC-BY-4.0"),
        ("Wine_by_Jakkub_Mede", "CC-BY-4.0"), ("aitzgorri_by_Aitzol_Berasategi", "CC-BY-4.0"),
        ("free_by_Peter_Nerlich", "CC-BY-SA-4.0"), ("friends_by_Aitzol_Berasategi", "CC-BY-4.0"),
        ("greentock_by_Peter_Nerlich", "CC-BY-SA-4.0"), ("life_by_Aitzol_Berasategi", "CC-BY-4.0"),
        ("picosdeeuropa_by_Aitzol_Berasategi", "CC-BY-4.0"), ("seeding_by_Clements_Engelhardt", "CC0-1.0"),
        ("sunset_by_Aitzol_Berasategi", "CC-BY-4.0"))),
    _lomiri("Kleiber_by_Lukas_Baubkus", "CC-BY-SA-3.0", "deb:lomiri-wallpapers-20.04"),
    # Debian: mate-backgrounds (its "nature" set; the others are illustrations)
    *(_mate(n, who) for n, who in (
        ("Aqua", "Charles Barbin"), ("Blinds", "Lennart Poettering"), ("Dune", "Marco Cogoni"),
        ("FreshFlower", "Jens Ansorg"), ("Garden", "Charles Barbin"), ("GreenMeadow", "Timothy Schellhase"),
        ("LadyBird", "Charles Barbin"), ("RainDrops", "blackcombwhistler07"), ("Storm", "Sergey Nazarov"),
        ("TwoWings", "Charles Barbin"), ("Wood", "Jean-François Fortin Tam"), ("YellowFlower", "Charles Barbin"))),
)

# name -> centre crop (None: whole). Fixed: changing it invalidates every reported number.
VALIDATION = {"camera": None, "astronaut": None, "Path": 512, "ColorfulCups": 512,
              "Picture_1A": 512, "LadyBird": 512, "life": 512, "Dune": 512}
TARGET_SIDE = 1600  # box_reduce's aim for the longer side of a JPEG photograph


class MissingSource(FileNotFoundError):
    """A source's package is not installed here; the message says how to install it."""


def luminance(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]`` or ``[H, W, 3]`` -> uint8 ``[H, W]``: grayscale kept, RGB -> Y (BT.601)."""
    if pixels.ndim == 2:
        return pixels
    from .imageio import rgb_to_ycbcr

    y = rgb_to_ycbcr(pixels[..., :3].astype(np.float64) / 255)[..., 0]
    return np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` centre of ``[H, W, ...]``."""
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def box_reduce(pixels: np.ndarray, factor: int = 0) -> np.ndarray:
    """``[H, W(, C)]`` uint8 averaged over ``factor`` x ``factor`` boxes (Pillow's ``reduce``);
    ``factor=0`` picks ``max(2, round(longer side / TARGET_SIDE))``."""
    from PIL import Image

    if factor == 0:
        factor = max(2, round(max(pixels.shape[:2]) / TARGET_SIDE))
    if factor == 1:
        return pixels
    return np.asarray(Image.fromarray(pixels).reduce(factor))


def _roots() -> list[str]:
    extra = [r for r in os.environ.get("REDKERN_PHOTO_ROOTS", "").split(":") if r]
    return [*extra, "/"]


def _find(pattern: str) -> Path | None:
    """The largest file (by pixels in its ``WxH`` name, else by bytes) matching ``pattern``
    under any root."""
    for root in _roots():
        found = glob.glob(os.path.join(root, pattern.lstrip("/")))
        if found:
            def size(p):
                stem = Path(p).stem
                w, _, h = stem.partition("x")
                return int(w) * int(h) if w.isdigit() and h.isdigit() else os.path.getsize(p)
            return Path(max(found, key=size))
    return None


def source(src: Source) -> np.ndarray:
    """The photograph's uint8 pixels, ``[H, W]`` or ``[H, W, 3]``, as the catalog prepares it
    (box-reduced); ``MissingSource`` if its package is not installed."""
    from PIL import Image

    if src.package.startswith("deb:"):
        path = _find(src.where)
        if path is None:
            raise MissingSource(f"{src.name}: {src.where} not found; it comes with the Debian package "
                                f"{src.package[4:]}: {src.install} (or unpack it and name the folder in "
                                "REDKERN_PHOTO_ROOTS)")
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB" if src.colour else "L"))
    else:
        import importlib

        module, _, function = src.where.partition(":")
        try:
            pixels = getattr(importlib.import_module(module), function)()
        except ImportError:
            raise MissingSource(f"{src.name}: needs the Python package {src.package[4:]}: {src.install}") from None
        pixels = np.asarray(pixels if src.item is None else pixels[src.item])
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[..., :3]
    return box_reduce(np.ascontiguousarray(pixels.astype(np.uint8)), src.reduce)


def load(split: str = "train", channels: int = 1, *, missing: str = "error",
         names=None) -> list[tuple[str, np.ndarray]]:
    """``[(name, uint8 [H, W, channels])]`` of ``split`` ("train" or "val"), in catalog order.

    ``channels=1`` gives Y (grayscale sources as they are); ``channels=3`` RGB, colour sources
    only. ``missing``: "error" (``MissingSource``) or "skip" (a note on stderr). ``names``:
    only these sources."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    out = []
    for src in SOURCES:
        if (names is not None and src.name not in names) or ((src.name in VALIDATION) != (split == "val")):
            continue
        if channels == 3 and not src.colour:
            continue
        try:
            pixels = source(src)
        except MissingSource as e:
            if missing != "skip":
                raise
            print(f"redkern.photos: skipped {e}", file=sys.stderr)
            continue
        pixels = luminance(pixels)[..., None] if channels == 1 else pixels
        if split == "val" and VALIDATION[src.name]:
            pixels = centre_crop(pixels, VALIDATION[src.name])
        out.append((src.name, np.ascontiguousarray(pixels)))
    return out


def build(out, channels: int = 1, *, missing: str = "error") -> dict[str, list[tuple[str, int, int, str]]]:
    """Write every photograph as an 8-bit PNG into ``out/train`` and ``out/val`` (old PNGs there
    are removed first); returns ``{split: [(file, width, height, sha256 of the pixels[:12])]}``."""
    from PIL import Image

    out = Path(out)
    table = {}
    for split in ("train", "val"):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        table[split] = []
        for name, pixels in load(split, channels, missing=missing):
            image = pixels[..., 0] if channels == 1 else pixels
            Image.fromarray(image).save(folder / f"{name}.png", optimize=True)
            digest = hashlib.sha256(image.tobytes()).hexdigest()[:12]
            table[split].append((f"{name}.png", image.shape[1], image.shape[0], digest))
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m redkern.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="folder to write train/ and val/ into")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1: Y/grayscale (default), 3: RGB")
    parser.add_argument("--skip-missing", action="store_true", help="leave out the sources not installed")
    parser.add_argument("--list", action="store_true", help="list the catalog and what is installed here")
    args = parser.parse_args(argv)
    if args.list or args.out is None:
        for src in SOURCES:
            try:
                px = source(src)
                state = f"{px.shape[1]}x{px.shape[0]}"
            except MissingSource:
                state = f"missing: {src.install}"
            split = "val" if src.name in VALIDATION else "train"
            print(f"{split:5s} {src.name:16s} {src.package:34s} {src.licence:22s} {state}")
        return 0
    table = build(args.out, args.channels, missing="skip" if args.skip_missing else "error")
    for split, rows in table.items():
        for file, w, h, digest in rows:
            print(f"{split:5s} {file:24s} {w:5d}x{h:<5d} sha256(pixels)={digest}")
        mp = sum(w * h for _, w, h, _ in rows) / 1e6
        print(f"{split}: {len(rows)} images, {mp:.1f} Mpixel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
