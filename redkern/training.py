"""Train a RED-Net on any folder of clean images, degraded on the fly (``redkern train``).

    from redkern.training import TrainConfig, train
    train(TrainConfig(task="denoise", levels="0-50", data="my_images/", out="denoise.pt"))

    redkern train --task sr --levels 2,3,4 --data my_images/ --out sr.pt --steps 20000 --device cuda

What it does, as the paper did (``shared/RED-NET.md``) unless said otherwise:

- **Data**: every image under ``data`` (``.png .jpg .tif .npy``...; a folder with ``train/`` and
  ``val/`` inside uses them as the split), converted to the model's channels (RGB -> the Y of
  YCbCr for a 1-channel model, as ``redkern restore`` does), cut into random ``patch`` x
  ``patch`` crops (50 by default) with a random flip/rotation (the 8 symmetries of the
  square), degraded by ``redkern.degradations`` with one level per patch drawn from
  ``levels`` (e.g. sigma uniform in [0, 50] for one blind denoiser; blur sigma in [1, 3] with
  noise sigma in ``noise``, [0, 2], for deblurring; text over 5-20 % of the pixels for inpainting).
- **Loss and optimizer**: MSE, Adam (PyTorch's fused implementation). Learning rate: the paper's constant 1e-4 is meant for
  hundreds of thousands of steps; for budgets of ~10^4 steps we default to a peak of 5e-4 with
  a linear warm-up and a cosine decay to zero (``--schedule constant --lr 1e-4`` is the
  paper's). Steps whose loss is not finite roll back to the last snapshot at half the rate.
- **Determinism**: batch ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, whatever the
  device or the number of loader workers, and the weights start from ``torch.manual_seed(seed)``;
  a resumed run sees exactly the batches the uninterrupted one would. On the CPU a run repeats
  bit for bit; on CUDA cuDNN's algorithm choice and atomics make it repeat to float rounding
  only (``--deterministic`` asks PyTorch for deterministic algorithms).
- **Model**: ``--model auto`` trains the fused model on the CPU, where our kernels run the
  forward and the backward (``bench/compare_training.py`` measures it against PyTorch), and
  the reference model on CUDA (cuDNN; our GPU backward has not been measured there yet). Same
  parameters, same checkpoint; the first log line says which model trains. ``--amp bf16`` runs
  the convolutions under bfloat16 autocast (bf16 activations, fp32 weights, accumulation and
  loss), the fused model's kernels included; on CUDA activations are kept channels_last.
- **Fine-tuning**: ``init`` starts a new run from other weights of the same architecture (a
  shipped model's task name, ``"denoise"``, or any weights/checkpoint file) instead of the random
  start; the first step, the schedule and the data stream are a new run's. A resumed run ignores
  it: its checkpoint holds the weights.
- **Checkpoints**: ``out`` holds the model, the optimizer, the step, the config and the
  validation history; it is rewritten atomically every ``ckpt_every`` steps or
  ``ckpt_seconds`` and at the end. Running again with the same ``out`` resumes.
- **Validation**: PSNR (dB, [0, 255], output rounded to 8 bits) on the validation images at
  ``val_level`` every ``val_every`` steps, next to the degraded input's PSNR.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import load_images, split_folders, to_tensor, validation_pairs
from .degradations import DEBLUR_NOISE, DEFAULT_LEVELS, TASKS, Degradation, dihedral
from .evaluation import psnr
from .progress import progress_bar
from .weights import CHECKPOINT_FORMAT, load_checkpoint, save_atomic

__all__ = ["TrainConfig", "train", "PatchStream", "build_model", "lr_at", "add_arguments", "main"]

HEADLINE_LEVEL = {"denoise": 25, "sr": 2, "jpeg": 10, "deblur": 2, "inpaint": 10}  # what validation reports by default


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint."""

    task: str = "denoise"
    levels: str | None = None         # None: DEFAULT_LEVELS[task] (0-50, 2,3,4, 10-40, 1-3, 5-20)
    noise: str | None = None          # deblur only: training noise sigma (None: degradations.DEBLUR_NOISE)
    data: str = ""                    # folder of clean images (or one with train/ and val/)
    val_data: str | None = None       # validation folder (default: data/val if it exists)
    out: str = "redkern-run.pt"       # checkpoint file; an existing one is resumed
    init: str | None = None           # start from these weights (a shipped task's name or a file), not at random
    depth: int = 30
    features: int = 64
    channels: int = 1
    patch: int = 50
    batch: int = 64
    steps: int = 20000
    lr: float = 5e-4
    schedule: str = "cosine"          # "cosine" (warm-up, then cosine to 0) or "constant"
    warmup: int = 300
    seed: int = 0
    device: str = "auto"
    model: str = "auto"               # "auto", "reference" or "fused"
    amp: str = "none"                 # "none" or "bf16"
    workers: int = 0                  # data loader processes (0: in the training process)
    val_every: int = 1000
    val_level: float | None = None    # default HEADLINE_LEVEL[task]
    ckpt_every: int = 1000
    ckpt_seconds: float = 300.0
    time_budget: float | None = None  # seconds: set `steps` from the measured speed, stop by then
    stop_at: int | None = None        # stop (and save) at this step; running again resumes
    deterministic: bool = False
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        c = dataclasses.replace(self)
        if c.task not in TASKS:
            raise ValueError(f"unknown task {c.task!r}; choose one of {TASKS}")
        if c.levels is None:
            c.levels = DEFAULT_LEVELS[c.task]
        if c.task == "deblur" and c.noise is None:
            c.noise = DEBLUR_NOISE
        if c.task != "deblur" and c.noise is not None:
            raise ValueError(f"noise is the noise added after deblur's blur; it means nothing for task {c.task}")
        if c.val_level is None:
            c.val_level = HEADLINE_LEVEL[c.task]
        for name in ("depth", "features", "channels", "patch", "batch", "steps"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        if c.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {c.schedule!r}")
        if c.amp not in ("none", "bf16"):
            raise ValueError(f"amp must be 'none' or 'bf16', got {c.amp!r}")
        if c.model not in ("auto", "reference", "fused"):
            raise ValueError(f"model must be 'auto', 'reference' or 'fused', got {c.model!r}")
        Degradation(c.task, c.levels, noise=c.noise)  # validates the levels
        return c


# --- data ---------------------------------------------------------------------------------

class PatchStream(torch.utils.data.IterableDataset):
    """An endless stream of ``(degraded, clean)`` batches ``[batch, C, patch, patch]`` float32.

    Batch ``i`` depends only on ``(seed, i)``: loader workers split the indices round-robin
    and PyTorch returns them in order, so the stream is the same for any number of workers,
    and ``start`` resumes it exactly. Each patch is cut with a margin (``Degradation.margin``),
    flipped/rotated, degraded, and its centre kept (at a random offset for JPEG, so the 8x8
    block grid falls anywhere in the patch).
    """

    def __init__(self, images: list[np.ndarray], degradation: Degradation, patch: int, batch: int,
                 seed: int, start: int = 0):
        super().__init__()
        self.degradation, self.patch, self.batch, self.seed, self.start = degradation, patch, batch, seed, start
        m = degradation.margin
        crop = patch + 2 * m
        if degradation.task == "sr":  # the crop must divide by every scale
            lcm = math.lcm(*degradation.levels)
            crop = -(-crop // lcm) * lcm
        self.crop = crop
        self.images = [im for im in images if im.shape[0] >= crop and im.shape[1] >= crop]
        if not self.images:
            raise ValueError(f"no training image is at least {crop}x{crop} pixels "
                             f"(patch {patch} plus the degradation's margin)")
        places = np.array([(im.shape[0] - crop + 1) * (im.shape[1] - crop + 1) for im in self.images], float)
        self.weights = places / places.sum()

    def make_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        q, p = self.crop, self.patch
        picks = rng.choice(len(self.images), self.batch, p=self.weights)
        crops = []
        for i in picks:
            im = self.images[i]
            top, left = rng.integers(0, im.shape[0] - q + 1), rng.integers(0, im.shape[1] - q + 1)
            chw = im[top:top + q, left:left + q].transpose(2, 0, 1)
            crops.append(to_tensor(np.ascontiguousarray(dihedral(chw, int(rng.integers(8)))).transpose(1, 2, 0)))
        clean = torch.stack(crops)
        levels = self.degradation.sample(rng, self.batch)
        degraded = self.degradation.apply(clean, levels, rng)
        if q == p:
            return degraded, clean
        if self.degradation.task == "jpeg":
            offsets = rng.integers(0, q - p + 1, size=(self.batch, 2))
        else:
            offsets = np.full((self.batch, 2), (q - p) // 2)
        d = torch.stack([degraded[b, :, t:t + p, s:s + p] for b, (t, s) in enumerate(offsets)])
        c = torch.stack([clean[b, :, t:t + p, s:s + p] for b, (t, s) in enumerate(offsets)])
        return d, c

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        first, stride = (self.start, 1) if info is None else (self.start + info.id, info.num_workers)
        if info is not None:
            torch.set_num_threads(1)
        index = first
        while True:
            yield self.make_batch(index)
            index += stride


# --- model, schedule, checkpoints ---------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_kind(cfg: TrainConfig, device: torch.device) -> str:
    """``reference`` or ``fused``: ``auto`` takes cuDNN on CUDA, our C++ forward on the CPU."""
    if cfg.model != "auto":
        return cfg.model
    if device.type == "cpu":
        from .backends import status
        return "fused" if status()["cpu"]["available"] else "reference"
    return "reference"


def build_model(depth: int, channels: int, features: int, kind: str = "reference") -> torch.nn.Module:
    from .fused import FusedREDNet
    from .models import REDNet

    cls = FusedREDNet if kind == "fused" else REDNet
    model = cls(depth, channels, features)
    last = model.decoder(model.n)
    with torch.no_grad():  # the untrained net is the identity (output = net(x) + x = x)
        last.weight.zero_()
        last.bias.zero_()
    return model


def load_init(model: torch.nn.Module, cfg: TrainConfig) -> dict:
    """Load ``cfg.init``'s weights into ``model`` (a fresh run's); the history entry saying so.

    The weights must be a RED-Net of the run's depth, features and channels: fine-tuning changes
    what a model undoes, never its shape."""
    from .pretrained import _read
    from .weights import WeightsError

    try:
        data = _read(cfg.init)
    except WeightsError:
        raise
    except (ValueError, FileNotFoundError) as e:  # not a shipped task, a missing install
        raise WeightsError(f"--init {cfg.init}: {e}") from None
    have = (data["depth"], data["features"], data["channels"])
    want = (cfg.depth, cfg.features, cfg.channels)
    if have != want:
        raise WeightsError(f"--init {cfg.init}: a RED{have[0]}-{have[1]} with {have[2]} channel(s), but this run "
                           f"trains a RED{want[0]}-{want[1]} with {want[2]} channel(s); pass --depth, --features "
                           "and --channels to match it")
    model.load_state_dict({k: v.float() for k, v in data["state_dict"].items()})
    return {"step": 0, "event": "init", "from": str(cfg.init), "task": data.get("task"),
            "levels": data.get("levels")}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for (0-based) ``step``: linear warm-up, then constant or cosine to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- validation ---------------------------------------------------------------------------

@torch.no_grad()
def validate(model, pairs, device, amp: bool) -> tuple[float, float]:
    """Mean PSNR of the model's outputs and of the degraded inputs."""
    was_training = model.training
    model.eval()
    got, base = [], []
    for _, degraded, clean in pairs:
        x = degraded.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            y = model(x)
        got.append(psnr(y.float().cpu(), clean))
        base.append(psnr(degraded, clean))
    model.train(was_training)
    return float(np.mean(got)), float(np.mean(base))


# --- the loop -----------------------------------------------------------------------------

def _log(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) as ``cfg`` says; return the final checkpoint dict (also saved to ``cfg.out``)."""

    cfg = cfg.resolved()
    out = Path(cfg.out)
    device = pick_device(cfg.device)
    resumed = out.exists()
    if resumed:
        ckpt = load_checkpoint(out)
        saved = TrainConfig(**ckpt["config"])
        if (saved.task, saved.depth, saved.features, saved.channels) != (cfg.task, cfg.depth, cfg.features, cfg.channels):
            raise ValueError(f"{out} holds a {saved.task} RED{saved.depth}-{saved.features} "
                             f"({saved.channels} channel(s)) run; pass another --out to start a new one")
        # the schedule and the data stream must stay those of the run being resumed
        cfg = dataclasses.replace(cfg, steps=saved.steps, seed=saved.seed, lr=saved.lr, warmup=saved.warmup,
                                  schedule=saved.schedule, levels=saved.levels, noise=saved.noise,
                                  patch=saved.patch, batch=saved.batch)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(cfg.seed)
    kind = model_kind(cfg, device)
    model = build_model(cfg.depth, cfg.channels, cfg.features, kind).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)  # one kernel per step, CPU and CUDA
    step, history, elapsed = 0, [], 0.0
    if resumed:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step, history, elapsed = ckpt["step"], list(ckpt["history"]), float(ckpt["elapsed_s"])
        cfg = dataclasses.replace(cfg, init=saved.init)  # what the run started from stays on record
        _log(f"resuming {out} at step {step}/{cfg.steps}")
    elif cfg.init is not None:
        history.append(load_init(model, cfg))
        _log(f"starting from {cfg.init} ({history[-1]['task'] or 'a bare state_dict'})")

    train_dir, val_dir = split_folders(cfg.data, cfg.val_data)
    degradation = Degradation(cfg.task, cfg.levels, noise=cfg.noise)
    images = [px for _, px in load_images(train_dir, cfg.channels)]
    pairs = validation_pairs(load_images(val_dir, cfg.channels), cfg.task, cfg.val_level, cfg.seed) if val_dir else []
    stream = PatchStream(images, degradation, cfg.patch, cfg.batch, cfg.seed, start=step)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.workers,
                                         pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if cfg.workers else None,
                                         persistent_workers=False)
    amp = cfg.amp == "bf16"
    desc = (f"{cfg.task} ({degradation.describe()}) RED{cfg.depth}-{cfg.features}, {kind} model on "
            f"{device}{', bf16' if amp else ''}")
    _log(f"training {desc}: {len(images)} training images, {len(pairs)} validation images, "
         f"{cfg.patch}x{cfg.patch} patches x {cfg.batch}")

    def state(final=False):
        return {"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(cfg), "model": model.state_dict(),
                "optimizer": opt.state_dict(), "step": step, "history": history,
                "elapsed_s": elapsed + (time.perf_counter() - t0), "device": _device_name(device),
                "model_kind": kind, "finished": final, "torch": str(torch.__version__)}

    t0 = time.perf_counter()
    last_save = t0
    snapshot = None
    lr_scale = 1.0
    loss_sum = torch.zeros((), device=device)
    loss_n = 0
    recent_loss = float("nan")
    val_psnr = None
    # --time-budget: fit `steps` to the measured speed, first over steps 200-500 (after cuDNN's
    # autotuning), then again every 1000 steps until halfway, so the cosine ends on time.
    calibrate = {"next": step + 200, "prev": None} if cfg.time_budget and not resumed else None
    deadline = t0 + cfg.time_budget if cfg.time_budget else None
    bar = progress_bar(total=cfg.steps, initial=step, desc=cfg.task, disable=not cfg.progress,
                       terminal_only=False, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    model.train()
    batches = iter(loader)
    while step < cfg.steps and (cfg.stop_at is None or step < cfg.stop_at):
        degraded, clean = next(batches)
        degraded = degraded.to(device, non_blocking=True)
        clean = clean.to(device, non_blocking=True)
        if channels_last:
            degraded = degraded.contiguous(memory_format=torch.channels_last)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * lr_scale
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(degraded)
        loss = F.mse_loss(pred.float(), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
        loss_n += 1
        step += 1

        if calibrate and step == calibrate["next"]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if calibrate["prev"] is not None:
                rate = (step - calibrate["prev"][0]) / (now - calibrate["prev"][1])
                planned = step + int(0.95 * rate * (deadline - now))
                if step < 0.5 * planned:
                    cfg.steps = max(planned, step + 1)
                    bar.total = cfg.steps
                    history.append({"step": step, "event": "calibrated", "steps_per_s": round(rate, 2),
                                    "steps": cfg.steps})
                    _log(f"step {step}: {rate:.1f} steps/s, so {cfg.steps} steps fit the "
                         f"{cfg.time_budget:.0f} s budget")
                else:
                    calibrate = None
            if calibrate is not None:
                calibrate["prev"] = (step, now)
                calibrate["next"] = step + (300 if calibrate["next"] == 200 else 1000)

        if loss_n == 50 or step == cfg.steps or step % cfg.val_every == 0:
            mean = (loss_sum / loss_n).item()
            loss_sum.zero_()
            loss_n = 0
            if not math.isfinite(mean):
                if snapshot is None:
                    raise FloatingPointError(f"the loss became {mean} at step {step} before any snapshot; "
                                             "lower --lr")
                lr_scale *= 0.5
                model.load_state_dict(snapshot["model"])
                opt.load_state_dict(snapshot["optimizer"])
                _log(f"step {step}: loss {mean}; rolled back to step {snapshot['step']}, "
                     f"learning rate x{lr_scale:g}")
                history.append({"step": step, "event": "rollback", "to": snapshot["step"], "lr_scale": lr_scale})
                step = snapshot["step"]
                bar.n = step
                stream.start = step  # replay the same batches from there
                batches = iter(loader)
                continue
            recent_loss = mean
            bar.set_postfix_str(f"loss {mean:.2e} lr {lr_at(step - 1, cfg) * lr_scale:.1e}"
                                + (f" val {val_psnr:.2f} dB" if val_psnr is not None else ""), refresh=False)
        bar.update(1)

        now = time.perf_counter()
        final = (step >= cfg.steps or (deadline is not None and now > deadline)
                 or (cfg.stop_at is not None and step >= cfg.stop_at))
        if pairs and (step % cfg.val_every == 0 or final):
            val_psnr, base_psnr = validate(model, pairs, device, amp)
            history.append({"step": step, "loss": recent_loss, "val_psnr": val_psnr, "input_psnr": base_psnr,
                            "seconds": round(elapsed + now - t0, 1)})
            _log(f"step {step}: loss {recent_loss:.3e}, validation PSNR {val_psnr:.2f} dB at "
                 f"{degradation.level_name} {cfg.val_level:g} (input {base_psnr:.2f} dB)")
            snapshot = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step})
        if final or step % cfg.ckpt_every == 0 or now - last_save > cfg.ckpt_seconds:
            if final and step < cfg.steps:
                _log(f"stopping at step {step} of {cfg.steps} ({'--stop-at' if cfg.stop_at else 'time budget'}); "
                     "run again with the same --out to resume")
            save_atomic(state(step >= cfg.steps), out)
            last_save = time.perf_counter()
        if final:
            break
    bar.close()
    result = state(step >= cfg.steps)
    save_atomic(result, out)
    _log(f"saved {out} (step {step}, {result['elapsed_s']:.0f} s)")
    _draw_curves(history, out)
    return result


def curves_path(out: Path) -> Path:
    """Where ``train`` draws a run's loss and validation PSNR: beside its checkpoint."""
    return out.with_name(out.stem + ".curves.png")


def _draw_curves(history: list[dict], out: Path) -> None:
    from . import figures

    if not any("val_psnr" in h for h in history):
        return
    if not figures.plotting_available():
        _log(f"no training curves drawn: {figures.MISSING_MATPLOTLIB}")
        return
    _log(f"drew {figures.training_curves(history, curves_path(out))}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from .benchmarking import cpu_model_name

    threads = torch.get_num_threads()
    return f"CPU ({cpu_model_name()}, {threads} thread{'' if threads == 1 else 's'})"


# --- command line -------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``redkern train`` options (``parser`` is a subparser or a fresh parser)."""
    d = TrainConfig()
    parser.add_argument("--task", required=True, choices=TASKS, help="what to learn to undo")
    parser.add_argument("--levels", help="training levels: sigma '25' or '0-50' (default 0-50), "
                        "scales '2,3,4' (default), JPEG qualities '10-40' (default), deblur's blur sigma "
                        "'1-3' (default), inpaint's text coverage in percent '5-20' (default)")
    parser.add_argument("--noise", help="deblur only: the noise sigma (0..255) added after the blur, "
                        "'0-2' (default) or one value")
    parser.add_argument("--data", required=True, help="folder of clean images, or one holding train/ and val/")
    parser.add_argument("--val-data", help="validation images (default: DATA/val when it exists)")
    parser.add_argument("--out", required=True, help="checkpoint file; an existing one is resumed")
    parser.add_argument("--init", help="start from these weights instead of at random: a shipped task "
                        f"({', '.join(TASKS)}) or a weights/checkpoint file of the same architecture")
    parser.add_argument("--depth", type=int, default=d.depth, help=f"layers, even (default {d.depth})")
    parser.add_argument("--features", type=int, default=d.features, help=f"feature maps (default {d.features})")
    parser.add_argument("--channels", type=int, default=d.channels, help="1 (grayscale / Y) or 3 (RGB)")
    parser.add_argument("--patch", type=int, default=d.patch, help=f"patch size (default {d.patch})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"patches per step (default {d.batch})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    parser.add_argument("--schedule", choices=["cosine", "constant"], default=d.schedule)
    parser.add_argument("--warmup", type=int, default=d.warmup, help=f"warm-up steps (default {d.warmup})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--model", choices=["auto", "reference", "fused"], default=d.model,
                        help="auto: reference (cuDNN) on CUDA, fused on the CPU")
    parser.add_argument("--amp", choices=["none", "bf16"], default=d.amp, help="bfloat16 autocast")
    parser.add_argument("--workers", type=int, default=d.workers, help="data loader processes")
    parser.add_argument("--val-every", type=int, default=d.val_every)
    parser.add_argument("--val-level", type=float, help="level validated (default: sigma 25, x2, quality 10, "
                        "blur sigma 2 with noise 1, text 10%%)")
    parser.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    parser.add_argument("--ckpt-seconds", type=float, default=d.ckpt_seconds)
    parser.add_argument("--time-budget", type=float, help="seconds: measure the speed, fit --steps to it")
    parser.add_argument("--stop-at", type=int, help="stop at this step (saved); run again to resume")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def config_from_args(args) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def main(args=None) -> int:
    """Run ``redkern train`` from parsed ``args`` (or ``sys.argv``); returns the exit code."""
    if args is None or isinstance(args, list):
        args = add_arguments(argparse.ArgumentParser(prog="redkern train", description=__doc__.split("\n\n")[0])
                             ).parse_args(args)
    from .validation import UsageError

    try:
        cfg = config_from_args(args).resolved()
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from None
    from .weights import WeightsError

    try:
        result = train(cfg)
    except WeightsError as e:  # --init names weights that cannot start this run
        raise UsageError(str(e)) from None
    last = [h for h in result["history"] if "val_psnr" in h]
    print(json.dumps({"out": str(args.out), "step": result["step"], "elapsed_s": round(result["elapsed_s"], 1),
                      "val_psnr": last[-1]["val_psnr"] if last else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
