"""Weights that ship with redkern: one RED30 per task, ready to restore.

    import redkern
    model = redkern.pretrained("denoise")              # reference model, eval mode, CPU, float32
    fast = redkern.pretrained("denoise", fused=True)   # same weights in the fused model
    redkern.pretrained.info("sr")                      # config, training run, validation numbers

    redkern restore --task denoise --sigma 25 noisy.png clean.png

=========  =====================================  ======================================
task       trained on                             input the model expects
=========  =====================================  ======================================
denoise    Gaussian noise, sigma 0..50 (blind)    the noisy image (no sigma needed)
sr         bicubic x2, x3, x4 (one model)         the image already bicubic-enlarged to
                                                  the target size (``upscale_input``)
jpeg       Pillow JPEG, quality 10..40 (blind)    the decoded JPEG
deblur     Gaussian blur, sigma 1..3, then        the blurred image (no kernel or noise
           Gaussian noise sigma 0..2 (blind)      level needed)
inpaint    text drawn over 5..20% of the image    the image with the text on it (no mask:
           (blind, ``degradations.text_overlay``) the network finds the text itself)
=========  =====================================  ======================================

All five are 1-channel (grayscale, or the Y of YCbCr: ``redkern restore`` restores the
luminance of colour images and keeps their chroma, as the paper did). The weights are
stored in float16 (``redkern/weights/red30_TASK.pt``) with their configuration, and load
into a float32 model; each has a model card beside it (``red30_TASK.md``) with the data,
the training run, the command that reproduces it and the validation numbers. ``redkern
train`` makes weights of your own (``--init TASK`` fine-tunes a shipped model); ``load``
takes the resulting file.

The module itself is callable: ``redkern.pretrained(task, ...)`` is ``load(task, ...)``.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from pathlib import Path

import torch

from .degradations import TASKS, Degradation, bicubic_resize, quantize
from .weights import WEIGHTS_FORMAT

__all__ = ["load", "info", "available", "path", "check_level", "level_note", "level_problem", "upscale_input", "export",
           "WEIGHTS_FORMAT", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FILES = {task: f"red30_{task}.pt" for task in TASKS}  # one RED30 per task redkern trains


def available() -> list[str]:
    """Tasks whose weights are installed."""
    return [task for task, name in FILES.items() if (WEIGHTS_DIR / name).exists()]


def path(task: str) -> Path:
    """The shipped weights file for ``task``."""
    if task not in FILES:
        raise ValueError(f"no pretrained weights for task {task!r}; choose one of {tuple(FILES)}")
    p = WEIGHTS_DIR / FILES[task]
    if not p.exists():
        raise FileNotFoundError(f"the {task} weights {p} are not installed with this copy of redkern")
    return p


def _read(source) -> dict:
    """A weights file's dict (``redkern.weights.read``): a task name means its shipped file."""
    from .weights import read

    is_file = isinstance(source, os.PathLike) or isinstance(source, str) and (Path(source).suffix or os.sep in source)
    return read(Path(source) if is_file else path(source))  # path() names the tasks


def info(task_or_file) -> dict:
    """Everything stored with the weights except the tensors: task, levels, architecture,
    the training run (steps, time, device, config) and the validation numbers."""
    data = _read(task_or_file)
    return {k: v for k, v in data.items() if k != "state_dict"}


def load(task_or_file, *, fused: bool = False, backend: str = "auto", device="cpu",
         dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model for a task (``"denoise"``, ``"sr"``, ``"jpeg"``, ``"deblur"``, ``"inpaint"``) or a
    weights/checkpoint file, in eval mode without gradients, on ``device`` in ``dtype``.

    ``fused=True`` gives ``FusedREDNet`` (``backend`` as there), else the reference ``REDNet``;
    both hold the same parameters. The model carries ``task``, ``levels`` and ``info``.
    """
    from .fused import FusedREDNet
    from .models import REDNet

    data = _read(task_or_file)
    args = (data["depth"], data["channels"], data["features"])
    model = FusedREDNet(*args, backend=backend) if fused else REDNet(*args)
    model.load_state_dict({k: v.float() for k, v in data["state_dict"].items()})
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.task, model.levels = data["task"], data["levels"]
    model.info = {k: v for k, v in data.items() if k != "state_dict"}
    return model


# What a level can mean at all, whatever a model was trained on (0-255 noise, integer
# enlargements, JPEG's quality scale).
LEVEL_LIMITS = {"denoise": ("sigma", 0.0, 255.0, float), "sr": ("scale", 2, 16, int), "jpeg": ("quality", 1, 100, int),
                "deblur": ("blur sigma", 0.1, 10.0, float), "inpaint": ("text coverage", 0.0, 90.0, float)}


def level_problem(task: str, level) -> str | None:
    """Why ``level`` means nothing for ``task`` (a negative sigma, scale 0, quality 500...), or None."""
    name, lo, hi, kind = LEVEL_LIMITS[task]
    try:
        value = float(level)
    except (TypeError, ValueError):
        return f"{name} must be a number, got {level!r}"
    if value != value or not lo <= value <= hi or (kind is int and value != int(value)):
        what = "an integer" if kind is int else "a number"
        return f"{name} {level!r} is not {what} in [{lo}, {hi}]"
    return None


def level_note(model_or_task, level) -> str | None:
    """A one-line note when ``level`` (sigma, scale or quality) lies outside what the model was
    trained on, else None."""
    if isinstance(model_or_task, str):
        task, levels = model_or_task, info(model_or_task)["levels"]
    else:
        task, levels = model_or_task.task, model_or_task.levels
    d = Degradation(task, levels)
    lo, hi = (d.levels[0], d.levels[-1])
    if not lo <= float(level) <= hi or (task == "sr" and int(level) not in d.levels):
        return (f"the {task} model was trained on {d.describe()}; {d.level_name} {float(level):g} "
                "is outside that, expect weaker results")
    return None


def check_level(model_or_task, level) -> None:
    """``ValueError`` for a level no model can mean; a warning (``level_note``) for one outside
    what the model was trained on."""
    task = model_or_task if isinstance(model_or_task, str) else model_or_task.task
    problem = level_problem(task, level)
    if problem:
        raise ValueError(problem)
    note = level_note(model_or_task, level)
    if note:
        warnings.warn(note, stacklevel=2)


def upscale_input(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The SR model's input: ``[N, C, H, W]`` bicubic-enlarged by ``scale`` (as in training)."""
    return quantize(bicubic_resize(x.float(), (x.shape[-2] * scale, x.shape[-1] * scale))).to(x.dtype)


def export(checkpoint, out, *, dtype: torch.dtype = torch.float16, extra: dict | None = None) -> dict:
    """Write a training checkpoint's model as shipped weights: ``dtype`` tensors plus the
    config and the training summary (``extra`` is merged in, e.g. evaluation results)."""
    data = _read(checkpoint)
    data.pop("source")
    data["state_dict"] = {k: v.to(dtype).contiguous() for k, v in data["state_dict"].items()}
    data.update(extra or {})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, out)
    return data


class _CallableModule(types.ModuleType):
    """Lets ``redkern.pretrained("denoise")`` stand for ``redkern.pretrained.load("denoise")``."""

    def __call__(self, task_or_file, **kwargs) -> torch.nn.Module:
        return load(task_or_file, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
