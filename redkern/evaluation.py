"""Honest evaluation: a model on a folder of clean images, next to the classical baseline.

    redkern eval --task denoise --level 25 --data .data/redkern-gray/val --ensemble

For each clean image the degraded input is made once, reproducibly (``datasets.validation_pairs``:
``numpy.random.default_rng([seed, index])``; SR crops the image to a multiple of the scale),
and every candidate is scored against the clean image with scikit-image's
``peak_signal_noise_ratio`` (data range 255) and ``structural_similarity`` (Wang et al.'s
settings: Gaussian window, sigma 1.5, population covariance). Every candidate is first
rounded to 8 bits, as a saved image would be; no border is cropped.

Baselines: BM3D for denoising (the ``bm3d`` package, told the true sigma, run on the same
unclipped noisy input the model gets), the bicubic input for super-resolution, the decoded
JPEG for deblocking. ``ensemble=True`` adds the paper's geometric self-ensemble: the mean of
the model's outputs over the 8 flips/rotations of the input.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .degradations import TASKS

__all__ = ["evaluate", "EvalResult", "metrics", "psnr", "run_model", "bm3d_denoise", "markdown_table",
           "add_arguments", "main"]

BASELINE_NAME = {"denoise": "BM3D", "sr": "bicubic", "jpeg": "JPEG"}
INPUT_NAME = {"denoise": "noisy", "sr": "bicubic", "jpeg": "JPEG"}
LEVEL_LABEL = {"denoise": "sigma {:g}", "sr": "x{:g}", "jpeg": "quality {:g}"}


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[1, C, H, W]`` or ``[C, H, W]`` float in [0, 1] -> uint8 ``[H, W]`` (C = 1) or ``[H, W, C]``."""
    x = x.detach().float().cpu().reshape(x.shape[-3:])
    u8 = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return u8[..., 0] if u8.shape[2] == 1 else u8


def metrics(clean: np.ndarray, result: np.ndarray) -> tuple[float, float]:
    """``(PSNR dB, SSIM)`` of uint8 ``result`` against uint8 ``clean``, with scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = peak_signal_noise_ratio(clean, result, data_range=255)
    ssim = structural_similarity(clean, result, data_range=255, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, channel_axis=-1 if clean.ndim == 3 else None)
    return float(psnr), float(ssim)


@torch.no_grad()
def psnr(out: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR in dB on [0, 255] of ``out`` rounded to 8 bits against ``clean``."""
    from .degradations import quantize

    mse = F.mse_loss(quantize(out.float()) * 255, clean.float() * 255).item()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def run_model(model, x: torch.Tensor, *, ensemble: bool = False, transforms=None) -> torch.Tensor:
    """``model(x)`` on the model's device and dtype, back as float32 on the CPU; with
    ``ensemble``, the mean over the 8 flips/rotations (each undone before averaging).
    ``transforms``: which of the 8 (``degradations.dihedral``) to sum instead, without dividing."""
    from .degradations import dihedral, dihedral_inverse

    p = next(model.parameters())
    xd = x.to(device=p.device, dtype=p.dtype)
    if transforms is None and not ensemble:
        return model(xd.contiguous(memory_format=torch.channels_last)).float().cpu()
    total = torch.zeros(x.shape, dtype=torch.float32)
    for k in (range(8) if transforms is None else transforms):
        y = model(dihedral(xd, k).contiguous(memory_format=torch.channels_last))
        total += dihedral_inverse(y, k).float().cpu()
    return total / 8 if transforms is None else total


def bm3d_denoise(noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """BM3D (the ``bm3d`` package, default profile) of ``[1, C, H, W]`` with the true sigma (0..255)."""
    try:
        import bm3d
    except ImportError as e:
        raise ImportError("the BM3D baseline needs the bm3d package: pip install bm3d "
                          "(or pass --no-baseline)") from e
    z = noisy[0].permute(1, 2, 0).double().numpy()
    if z.shape[2] == 3:
        out = bm3d.bm3d_rgb(z, sigma / 255)
    else:
        out = bm3d.bm3d(z[..., 0], sigma / 255)
    out = np.asarray(out, dtype=np.float32).reshape(z.shape)
    return torch.from_numpy(out).permute(2, 0, 1)[None]


@dataclass
class EvalResult:
    """Scores per image: ``rows[name][column] = (psnr, ssim)``; columns in ``columns``' order."""

    task: str
    level: float
    columns: list[str]
    rows: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # with keep_images: images[name][column] = the 8-bit result (and "clean"), for figures
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def mean(self, column: str) -> tuple[float, float]:
        vals = [r[column] for r in self.rows.values()]
        return float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))

    def markdown(self) -> str:
        return markdown_table(self)


def evaluate(model, images, task: str, level, *, ensemble: bool = False, baseline: bool = True,
             seed: int = 0, name: str = "RED", progress: bool = False, keep_images: bool = False) -> EvalResult:
    """Score ``model`` on ``images`` (``[(name, pixels [H, W, C])]``, as ``datasets.load_images``)
    degraded by ``task`` at ``level``; see the module docstring for the protocol.
    ``keep_images``: also keep every 8-bit result in ``EvalResult.images`` (for figures)."""
    from .datasets import validation_pairs

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    columns = [INPUT_NAME[task]]
    if task == "denoise" and baseline:
        columns.append(BASELINE_NAME[task])
    columns.append(name)
    if ensemble:
        columns.append(f"{name} x8")
    result = EvalResult(task, float(level), columns)
    timing = {c: 0.0 for c in columns}
    for img_name, degraded, clean in validation_pairs(images, task, level, seed):
        ref = to_uint8(clean)
        kept = {INPUT_NAME[task]: to_uint8(degraded)}
        row = {INPUT_NAME[task]: metrics(ref, kept[INPUT_NAME[task]])}
        candidates = []
        if task == "denoise" and baseline:
            candidates.append((BASELINE_NAME[task], lambda: bm3d_denoise(degraded, float(level))))
        candidates.append((name, lambda: run_model(model, degraded)))
        if ensemble:  # the identity pass is the plain output: 7 more passes
            candidates.append((f"{name} x8", lambda: (plain + run_model(model, degraded, transforms=range(1, 8))) / 8))
        for column, make in candidates:
            t0 = time.perf_counter()
            out = make()
            timing[column] += time.perf_counter() - t0
            kept[column] = to_uint8(out)
            row[column] = metrics(ref, kept[column])
            if column == name:
                plain = out
        result.rows[img_name] = row
        if keep_images:
            result.images[img_name] = {**kept, "clean": ref}
        if progress:
            print(f"  {img_name}: " + ", ".join(f"{c} {p:.2f} dB" for c, (p, _) in row.items()), file=sys.stderr)
    result.seconds = {c: round(t, 2) for c, t in timing.items() if t}
    return result


def markdown_table(result: EvalResult) -> str:
    """PSNR (dB) / SSIM per image and their mean, one column per candidate, plus the gain of
    the model (and the ensemble) over the baseline."""
    cols = result.columns
    head = f"{result.task}, {LEVEL_LABEL[result.task].format(result.level)}: PSNR (dB) / SSIM"
    lines = [f"| {head} | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for img, row in result.rows.items():
        lines.append(f"| {img} | " + " | ".join(f"{row[c][0]:.2f} / {row[c][1]:.4f}" for c in cols) + " |")
    means = [result.mean(c) for c in cols]
    lines.append("| **mean** | " + " | ".join(f"**{p:.2f}** / {s:.4f}" for p, s in means) + " |")
    base = BASELINE_NAME[result.task] if BASELINE_NAME[result.task] in cols else None
    if base is None and result.task != "denoise":
        base = cols[0]
    if base is not None:
        gains = [f"{c} - {base}: {result.mean(c)[0] - result.mean(base)[0]:+.2f} dB"
                 for c in cols[cols.index(base) + 1:]]
        lines.append("")
        lines.append("Mean PSNR gain: " + "; ".join(gains) + ".")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``redkern eval`` options."""
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--level", required=True, help="sigma (0..255), scale or JPEG quality; "
                        "several separated by commas, e.g. 15,25,50")
    parser.add_argument("--data", required=True, help="folder of clean images")
    parser.add_argument("--weights", help="a training checkpoint or exported weights file "
                        "(default: the shipped weights for --task)")
    parser.add_argument("--ensemble", action="store_true", help="also the 8x geometric self-ensemble")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip BM3D")
    parser.add_argument("--model", choices=["reference", "fused"], default="reference",
                        help="run the reference (PyTorch) or the fused model (default: reference)")
    parser.add_argument("--backend", default="auto", help="fused backend (with --model fused)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the degradations (default 0)")
    parser.add_argument("--progress", action="store_true", help="print each image's scores as it goes")
    parser.add_argument("--figures", metavar="DIR", help="also write, per image and level, a side-by-side crop "
                        "(degraded | classical peer | RED | clean) and a plot of PSNR against level (needs "
                        "matplotlib: pip install 'redkern[figures]')")
    return parser


def main(args=None) -> int:
    """Run ``redkern eval`` from parsed ``args`` (or ``sys.argv``); prints markdown tables."""
    from . import pretrained
    from .datasets import load_images

    if args is None or isinstance(args, list):
        args = add_arguments(argparse.ArgumentParser(prog="redkern eval", description=__doc__.split("\n\n")[0])
                             ).parse_args(args)
    from .validation import UsageError
    from .weights import WeightsError

    levels = []
    for text in str(args.level).split(","):
        problem = pretrained.level_problem(args.task, text.strip())
        if problem:
            raise UsageError(f"--level {text.strip()}: {problem}")
        levels.append(float(text))
    try:
        model = pretrained.load(args.weights or args.task, fused=args.model == "fused", backend=args.backend,
                                device=args.device)
    except (WeightsError, ValueError, RuntimeError) as e:
        raise UsageError(f"--weights {e}" if args.weights else str(e)) from None
    if model.task != args.task:
        print(f"redkern eval: warning: the weights were trained for {model.task}, not {args.task}", file=sys.stderr)
    if not args.model == "fused":
        model = model.to(memory_format=torch.channels_last)  # faster convolutions on the CPU
    figures = _figure_folder(args.figures) if args.figures else None
    images = load_images(args.data, model.channels)
    name = f"RED{model.depth}"
    results = []
    for level in levels:
        note = pretrained.level_note(model, level)
        if note:
            print(f"redkern eval: note: {note}", file=sys.stderr)
        result = evaluate(model, images, args.task, level, ensemble=args.ensemble, baseline=args.baseline,
                          seed=args.seed, name=name, progress=args.progress, keep_images=figures is not None)
        results.append(result)
        print(result.markdown())
        print(f"\n{len(images)} images from {args.data}; seconds: "
              + ", ".join(f"{k} {v:g}" for k, v in result.seconds.items()) + "\n")
        if figures is not None:
            _write_crops(result, figures)
    if figures is not None:
        from . import figures as fig
        from .degradations import Degradation

        path = fig.psnr_plot(results, figures / f"{args.task}_psnr.png",
                             level_name=Degradation(args.task, [levels[0]]).level_name)
        print(f"figures: {len(images) * len(levels)} crops and {path} in {figures}")
    return 0


def _figure_folder(path) -> Path:
    """The folder for ``--figures``, made if missing; refused before any work if matplotlib is not here."""
    from . import figures
    from .validation import UsageError

    if not figures.plotting_available():
        raise UsageError(f"--figures: {figures.MISSING_MATPLOTLIB}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--figures {folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_crops(result: EvalResult, folder) -> None:
    from . import figures

    level = LEVEL_LABEL[result.task].format(result.level).replace(" ", "")
    for img, kept in result.images.items():
        scores = {c: f"{result.rows[img][c][0]:.2f} dB" for c in result.columns}
        figures.comparison({c: kept[c] for c in [*result.columns, "clean"]}, folder / f"{img}_{result.task}_{level}.png",
                           scores=scores)


if __name__ == "__main__":
    sys.exit(main())
