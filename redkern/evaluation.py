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

Deblurring (``--level`` is the blur sigma, the noise sigma ``noise``, 1 by default) is compared
with scikit-image's Richardson-Lucy deconvolution given the true kernel, its iteration count
the best mean PSNR of ``RL_ITERATIONS`` on the very images scored (a choice made in the peer's
favour, and reported), with scikit-image's unsupervised Wiener filter (true kernel, noise and
image priors estimated by its Gibbs sampler, seeded), and with the blurred input itself. Both
run on the input reflected by ``DEBLUR_PAD`` kernel radii at every border and cropped back:
their convolutions assume zeros (Richardson-Lucy) or a periodic image (Wiener) outside it,
which costs them 2-5 dB on 512x512 photos at blur sigma 2 if left alone. Inpainting (``--level``
is the text coverage in percent) is compared with scikit-image's biharmonic inpainting given
the true text mask, an oracle the blind network does not get. The gain line compares the
network with the best classical candidate on the mean (the degraded input included).
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

__all__ = ["evaluate", "EvalResult", "metrics", "psnr", "run_model", "bm3d_denoise", "richardson_lucy_deblur",
           "wiener_deblur", "biharmonic_inpaint", "best_richardson_lucy", "markdown_table", "add_arguments", "main"]

BASELINE_NAME = {"denoise": "BM3D", "sr": "bicubic", "jpeg": "JPEG", "deblur": "Richardson-Lucy",
                 "inpaint": "biharmonic"}
INPUT_NAME = {"denoise": "noisy", "sr": "bicubic", "jpeg": "JPEG", "deblur": "blurred", "inpaint": "text"}
LEVEL_LABEL = {"denoise": "sigma {:g}", "sr": "x{:g}", "jpeg": "quality {:g}", "deblur": "blur sigma {:g}",
               "inpaint": "text {:g}%"}
# the classical methods run beside the model (not the degraded input itself); --no-baseline skips them
PEERS = {"denoise": ("BM3D",), "sr": (), "jpeg": (), "deblur": ("Richardson-Lucy", "Wiener"),
         "inpaint": ("biharmonic",)}
RL_ITERATIONS = (5, 10, 20, 50, 100, 200, 400)  # Richardson-Lucy's counts tried; the best is kept
DEBLUR_PAD = 3  # kernel radii of reflection around the classical deblurrers' input


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


def _reflected(image: np.ndarray, pad: int) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``[H, W]`` reflected by ``pad`` px at every border, and the slices that crop it back."""
    h, w = image.shape
    return np.pad(image, pad, mode="reflect"), (slice(pad, pad + h), slice(pad, pad + w))


def _per_channel(x: torch.Tensor, restore) -> torch.Tensor:
    """``restore([H, W] float64) -> [H, W]`` on each channel of ``[1, C, H, W]``, back as float32."""
    planes = [np.asarray(restore(x[0, c].double().numpy()), dtype=np.float32) for c in range(x.shape[1])]
    return torch.from_numpy(np.stack(planes))[None]


def richardson_lucy_deblur(blurred: torch.Tensor, sigma: float, iterations: int) -> torch.Tensor:
    """scikit-image's Richardson-Lucy of ``[1, C, H, W]`` (each channel) with the true kernel
    ``degradations.gaussian_psf(sigma)``, on the input reflected by ``DEBLUR_PAD`` radii."""
    from skimage.restoration import richardson_lucy

    from .degradations import gaussian_psf, gaussian_radius

    psf, pad = gaussian_psf(sigma), DEBLUR_PAD * gaussian_radius(sigma)

    def restore(z):
        padded, crop = _reflected(z, pad)
        return richardson_lucy(padded, psf, num_iter=int(iterations))[crop]

    return _per_channel(blurred, restore)


def wiener_deblur(blurred: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """scikit-image's unsupervised Wiener filter (``unsupervised_wiener``: noise and image
    priors estimated by a Gibbs sampler drawn from ``default_rng(seed)``) of ``[1, C, H, W]``,
    each channel, with the true kernel, on the input reflected by ``DEBLUR_PAD`` radii."""
    from skimage.restoration import unsupervised_wiener

    from .degradations import gaussian_psf, gaussian_radius

    psf, pad = gaussian_psf(sigma), DEBLUR_PAD * gaussian_radius(sigma)
    rng = np.random.default_rng(seed)

    def restore(z):
        padded, crop = _reflected(z, pad)
        return unsupervised_wiener(padded, psf, rng=rng)[0][crop]

    return _per_channel(blurred, restore)


def biharmonic_inpaint(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scikit-image's biharmonic inpainting of ``[1, C, H, W]`` where ``mask`` (``[1, 1, H, W]``,
    True = unknown) says: the oracle given the true text mask."""
    from skimage.restoration import inpaint_biharmonic

    known = mask[0, 0].cpu().numpy().astype(bool)
    return _per_channel(image, lambda z: inpaint_biharmonic(z, known, split_into_regions=True))


def best_richardson_lucy(pairs, sigma: float, counts=RL_ITERATIONS):
    """Richardson-Lucy at each of ``counts`` iterations on every ``(name, blurred, clean, ...)``
    pair; returns ``(best count, {count: mean PSNR}, [(output, seconds)] at the best count)``.
    The best is the count with the highest mean PSNR (8-bit outputs, as scored)."""
    best, means, kept = None, {}, None
    for count in counts:
        runs = []
        for _, blurred, clean, *_ in pairs:
            t0 = time.perf_counter()
            out = richardson_lucy_deblur(blurred, sigma, count)
            runs.append((out, time.perf_counter() - t0))
        means[count] = float(np.mean([metrics(to_uint8(c), to_uint8(o))[0] for (o, _), (_, _, c, *_) in zip(runs, pairs)]))
        if best is None or means[count] > means[best]:
            best, kept = count, runs
    return best, means, kept


@dataclass
class EvalResult:
    """Scores per image: ``rows[name][column] = (psnr, ssim)``; columns in ``columns``' order."""

    task: str
    level: float
    columns: list[str]
    rows: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    noise: float | tuple | None = None  # deblur: the noise sigma (or the range drawn per image)
    notes: list[str] = field(default_factory=list)  # how the peers ran (Richardson-Lucy's count...)
    seconds: dict[str, float] = field(default_factory=dict)
    # with keep_images: images[name][column] = the 8-bit result (and "clean"), for figures
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def mean(self, column: str) -> tuple[float, float]:
        vals = [r[column] for r in self.rows.values()]
        return float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))

    def markdown(self) -> str:
        return markdown_table(self)


def evaluate(model, images, task: str, level, *, ensemble: bool = False, baseline: bool = True,
             seed: int = 0, name: str = "RED", progress: bool = False, keep_images: bool = False,
             noise=None, rl_iterations: int | None = None) -> EvalResult:
    """Score ``model`` on ``images`` (``[(name, pixels [H, W, C])]``, as ``datasets.load_images``)
    degraded by ``task`` at ``level``; see the module docstring for the protocol.
    ``model=None`` scores the degraded input and the classical peers only.
    ``keep_images``: also keep every 8-bit result in ``EvalResult.images`` (for figures).
    ``noise``: deblur's noise sigma (default ``degradations.DEBLUR_VAL_NOISE``); ``rl_iterations``:
    Richardson-Lucy's count, fixed instead of the best of ``RL_ITERATIONS``."""
    from .datasets import validation_pairs
    from .degradations import DEBLUR_VAL_NOISE, gaussian_radius

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if task == "deblur" and noise is None:
        noise = DEBLUR_VAL_NOISE
    level = float(level)
    pairs = validation_pairs(images, task, level, seed, noise=noise, masks=True)
    peers = PEERS[task] if baseline else ()
    columns = [INPUT_NAME[task], *peers]
    if model is not None:
        columns.append(name)
        if ensemble:
            columns.append(f"{name} x8")
    result = EvalResult(task, level, columns, noise=noise)
    timing = {c: 0.0 for c in columns}
    precomputed = {}  # column -> [(output, seconds)] per image
    if "Richardson-Lucy" in peers:
        if rl_iterations is None:
            count, means, precomputed["Richardson-Lucy"] = best_richardson_lucy(pairs, level)
            edge = " (the largest tried: more might do better)" if count == max(means) else ""
            result.notes.append(f"Richardson-Lucy: {count} iterations{edge}, the best mean PSNR of "
                                + ", ".join(f"{k}: {v:.2f}" for k, v in means.items()) + " dB on these images")
        else:
            result.notes.append(f"Richardson-Lucy: {rl_iterations} iterations (fixed)")
    if task == "deblur" and peers:
        result.notes.append(f"both deblurrers given the true kernel ({2 * gaussian_radius(level) + 1} taps, sigma "
                            f"{level:g}) and the input reflected by {DEBLUR_PAD} kernel radii at every border")
    if task == "inpaint" and peers:
        result.notes.append("biharmonic is given the true text mask (an oracle); the network sees only the image")
    for i, (img_name, degraded, clean, mask) in enumerate(pairs):
        ref = to_uint8(clean)
        kept = {INPUT_NAME[task]: to_uint8(degraded)}
        row = {INPUT_NAME[task]: metrics(ref, kept[INPUT_NAME[task]])}
        candidates = []
        if "BM3D" in peers:
            candidates.append(("BM3D", lambda: bm3d_denoise(degraded, level)))
        if "Richardson-Lucy" in peers:
            candidates.append(("Richardson-Lucy", lambda: richardson_lucy_deblur(degraded, level, rl_iterations)))
        if "Wiener" in peers:
            candidates.append(("Wiener", lambda: wiener_deblur(degraded, level, seed=seed + i)))
        if "biharmonic" in peers:
            candidates.append(("biharmonic", lambda: biharmonic_inpaint(degraded, mask)))
        if model is not None:
            candidates.append((name, lambda: run_model(model, degraded)))
            if ensemble:  # the identity pass is the plain output: 7 more passes
                candidates.append((f"{name} x8", lambda: (plain + run_model(model, degraded, transforms=range(1, 8))) / 8))
        for column, make in candidates:
            if column in precomputed:
                out, seconds = precomputed[column][i]
            else:
                t0 = time.perf_counter()
                out = make()
                seconds = time.perf_counter() - t0
            timing[column] += seconds
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
    the model (and the ensemble) over the baseline: BM3D for denoising, else the best
    classical candidate on the mean (the degraded input or a peer)."""
    cols = result.columns
    label = LEVEL_LABEL[result.task].format(result.level)
    if result.noise is not None:
        noise = result.noise if isinstance(result.noise, str) else f"{float(result.noise):g}"
        label += f", noise sigma {noise}"
    head = f"{result.task}, {label}: PSNR (dB) / SSIM"
    lines = [f"| {head} | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for img, row in result.rows.items():
        lines.append(f"| {img} | " + " | ".join(f"{row[c][0]:.2f} / {row[c][1]:.4f}" for c in cols) + " |")
    means = [result.mean(c) for c in cols]
    lines.append("| **mean** | " + " | ".join(f"**{p:.2f}** / {s:.4f}" for p, s in means) + " |")
    classical = [c for c in cols if c == INPUT_NAME[result.task] or c in PEERS[result.task]]
    if result.task == "denoise":
        classical = [c for c in classical if c == "BM3D"]
    models = [c for c in cols if c not in classical and c != INPUT_NAME[result.task]]
    if classical and models:
        base = max(classical, key=lambda c: result.mean(c)[0])
        gains = [f"{c} - {base}: {result.mean(c)[0] - result.mean(base)[0]:+.2f} dB" for c in models]
        best = f" (the best of {', '.join(classical)} on the mean)" if len(classical) > 1 else ""
        lines.append("")
        lines.append("Mean PSNR gain" + best + ": " + "; ".join(gains) + ".")
    if result.notes:
        lines.append("")
        lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``redkern eval`` options."""
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--level", required=True, help="sigma (0..255), scale or JPEG quality; for deblur "
                        "the blur sigma in pixels (--level 2 is what restore calls --blur 2), for inpaint the text "
                        "coverage in percent; several separated by commas, e.g. 15,25,50")
    parser.add_argument("--noise", help="deblur only: the noise sigma (0..255) added after the blur, a number "
                        "or a range drawn per image such as 0-2 (default: 1)")
    parser.add_argument("--rl-iterations", type=int, metavar="N", help="deblur: run Richardson-Lucy for N "
                        "iterations instead of choosing the best of " + ",".join(map(str, RL_ITERATIONS)))
    parser.add_argument("--data", required=True, help="folder of clean images")
    parser.add_argument("--weights", help="a training checkpoint or exported weights file "
                        "(default: the shipped weights for --task)")
    parser.add_argument("--ensemble", action="store_true", help="also the 8x geometric self-ensemble")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the classical "
                        "peers (BM3D, Richardson-Lucy and Wiener, biharmonic)")
    parser.add_argument("--no-model", dest="use_model", action="store_false", help="score only the degraded "
                        "input and the classical peers (no weights needed)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=1, help="with --no-model: score "
                        "grayscale/Y (1, default) or RGB (3) images; otherwise the model's channels")
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
    noise = getattr(args, "noise", None)
    if noise is not None:
        from .degradations import parse_levels

        if args.task != "deblur":
            raise UsageError(f"--noise is the noise added after deblur's blur, and means nothing with --task {args.task}")
        try:
            lo, hi = parse_levels("denoise", noise)
        except ValueError:
            raise UsageError(f"--noise {noise}: write a sigma (0..255) such as 1, or a range such as 0-2") from None
        noise = lo if lo == hi else f"{lo:g}-{hi:g}"
    rl_iterations = getattr(args, "rl_iterations", None)
    if rl_iterations is not None and (args.task != "deblur" or rl_iterations < 1):
        raise UsageError("--rl-iterations: a count >= 1, for --task deblur only")
    model = None
    if getattr(args, "use_model", True):
        try:
            model = pretrained.load(args.weights or args.task, fused=args.model == "fused", backend=args.backend,
                                    device=args.device)
        except (WeightsError, ValueError, RuntimeError) as e:
            raise UsageError(f"--weights {e}" if args.weights else str(e)) from None
        if model.task != args.task:
            print(f"redkern eval: warning: the weights were trained for {model.task}, not {args.task}", file=sys.stderr)
        if not args.model == "fused":
            model = model.to(memory_format=torch.channels_last)  # faster convolutions on the CPU
    elif args.weights:
        raise UsageError("--no-model scores the classical peers only; drop --weights or --no-model")
    figures = _figure_folder(args.figures) if args.figures else None
    images = load_images(args.data, model.channels if model is not None else getattr(args, "channels", 1))
    name = f"RED{model.depth}" if model is not None else "RED"
    results = []
    for level in levels:
        note = pretrained.level_note(model, level) if model is not None else None
        if note:
            print(f"redkern eval: note: {note}", file=sys.stderr)
        result = evaluate(model, images, args.task, level, ensemble=args.ensemble, baseline=args.baseline,
                          seed=args.seed, name=name, progress=args.progress, keep_images=figures is not None,
                          noise=noise, rl_iterations=rl_iterations)
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

    level = LEVEL_LABEL[result.task].format(result.level).replace(" ", "").replace("%", "pct")
    for img, kept in result.images.items():
        scores = {c: f"{result.rows[img][c][0]:.2f} dB" for c in result.columns}
        figures.comparison({c: kept[c] for c in [*result.columns, "clean"]}, folder / f"{img}_{result.task}_{level}.png",
                           scores=scores)


if __name__ == "__main__":
    sys.exit(main())
