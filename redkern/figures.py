"""Pictures where people would rather look than read.

- ``comparison(panels, path)``: one crop of an image, side by side (degraded | classical peer |
  redkern | clean), labelled, as an 8-bit PNG (Pillow only);
- ``psnr_plot(results, path)``: PSNR against level for each method (``redkern eval --figures``);
- ``training_curves(history, path)``: the loss and the validation PSNR of a run
  (``redkern train`` writes it beside the checkpoint).

The plots need matplotlib, an optional extra (``pip install 'redkern[figures]'``);
``plotting_available()`` says whether it is installed. Every file is written atomically
(``redkern.imageio``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["comparison", "psnr_plot", "training_curves", "plotting_available", "MISSING_MATPLOTLIB"]

MISSING_MATPLOTLIB = "matplotlib is not installed (pip install 'redkern[figures]')"
GAP = 6       # white pixels between panels
LABEL = 18    # rows above each panel for its name


def plotting_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    if not plotting_available():
        raise ImportError(MISSING_MATPLOTLIB)
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def busiest_crop(image: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``size x size`` window (on a grid of half-steps) with the most detail (variance of
    the Laplacian) in ``image`` ``[H, W(, C)]``: where restorations differ most visibly."""
    g = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    h, w = g.shape
    size = min(size, h, w)
    lap = np.zeros_like(g)
    lap[1:-1, 1:-1] = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    best, where = -1.0, (0, 0)
    step = max(1, size // 2)
    for y in sorted({*range(0, h - size + 1, step), h - size}):
        for x in sorted({*range(0, w - size + 1, step), w - size}):
            v = float(lap[y:y + size, x:x + size].var())
            if v > best:
                best, where = v, (y, x)
    y, x = where
    return slice(y, y + size), slice(x, x + size)


def comparison(panels: dict[str, np.ndarray], path, *, crop: int = 128, scores: dict[str, str] | None = None,
               overwrite: bool = True) -> Path:
    """Write one crop of every image in ``panels`` (name -> 8-bit ``[H, W]`` or ``[H, W, C]``,
    all of one size; the last is the reference the crop is chosen on) side by side with its
    name and ``scores[name]`` above it."""
    from PIL import Image, ImageDraw

    from .imageio import write_image

    names = list(panels)
    arrays = [np.atleast_3d(np.asarray(panels[n], dtype=np.uint8)) for n in names]
    channels = max(a.shape[2] for a in arrays)
    arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 and channels == 3 else a for a in arrays]
    rows, cols = busiest_crop(arrays[-1], crop)
    tiles = [a[rows, cols] for a in arrays]
    th, tw = tiles[0].shape[:2]
    sheet = np.full((LABEL + th, len(tiles) * tw + (len(tiles) - 1) * GAP, channels), 255, np.uint8)
    for i, t in enumerate(tiles):
        sheet[LABEL:, i * (tw + GAP):i * (tw + GAP) + tw] = t
    canvas = Image.fromarray(sheet[..., 0] if channels == 1 else sheet)
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names):
        text = name + (f" {scores[name]}" if scores and name in scores else "")
        draw.text((i * (tw + GAP) + 2, 3), text, fill=0 if channels == 1 else (0, 0, 0))
    path = Path(path)
    write_image(path, np.asarray(canvas), overwrite=overwrite)
    return path


def _save(fig, path: Path) -> Path:
    """Render to PNG in memory, then write it atomically."""
    import io

    from PIL import Image

    from .imageio import write_image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    buf.seek(0)
    with Image.open(buf) as im:
        write_image(path, np.asarray(im.convert("RGB")), overwrite=True)
    return path


def psnr_plot(results, path, *, level_name: str = "level") -> Path:
    """Mean PSNR against level, one line per method, from ``evaluation.EvalResult`` s of one
    task at several levels."""
    plt = _pyplot()
    results = sorted(results, key=lambda r: r.level)
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in results[0].columns:
        ax.plot([r.level for r in results], [r.mean(column)[0] for r in results], marker="o", label=column)
    ax.set_xlabel(level_name)
    ax.set_ylabel("mean PSNR (dB)")
    ax.set_title(f"{results[0].task}: {len(results[0].rows)} images")
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def training_curves(history: list[dict], path) -> Path:
    """The training loss (log scale) and the validation PSNR against step, from a checkpoint's
    ``history``."""
    plt = _pyplot()
    vals = [h for h in history if "val_psnr" in h]
    if not vals:
        raise ValueError("the run has no validation points yet: nothing to plot")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
    top.plot([h["step"] for h in vals], [h["loss"] for h in vals], marker=".")
    top.set_yscale("log")
    top.set_ylabel("training loss (MSE)")
    bottom.plot([h["step"] for h in vals], [h["val_psnr"] for h in vals], marker=".", label="restored")
    bottom.plot([h["step"] for h in vals], [h["input_psnr"] for h in vals], linestyle="--", label="degraded input")
    bottom.set_ylabel("validation PSNR (dB)")
    bottom.set_xlabel("step")
    bottom.legend()
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
