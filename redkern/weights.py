"""Weights files, read one way: a RED-Net state_dict, a training checkpoint or shipped weights.

    info = redkern.weights.read("red30.pt")     # {"state_dict", "depth", "channels", "features",
                                                #  "task", "levels", "format", "source", ...}

Files are only ever loaded with ``torch.load(weights_only=True)``: plain tensors, numbers and
strings, never arbitrary pickled objects. Whatever the file is, the three layouts come back
alike; anything else raises ``WeightsError`` with one line saying what the file is not.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

__all__ = ["read", "load_file", "load_checkpoint", "save_atomic", "WeightsError", "CHECKPOINT_FORMAT",
           "WEIGHTS_FORMAT", "training_summary"]

CHECKPOINT_FORMAT = "redkern-checkpoint-v1"
WEIGHTS_FORMAT = "redkern-weights-v1"


class WeightsError(ValueError):
    """A weights file that cannot be used; the message (one line) names the file and why."""


def load_file(path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU, every failure one ``WeightsError`` line."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"{p}: no such file")
    if p.is_dir():
        raise WeightsError(f"{p}: is a directory, not a weights file")
    try:
        # TorchVersion (a str) for checkpoints written before it was stored as a str
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(p):
            raise WeightsError(f"{p}: not a RED-Net state_dict: not a file torch.save wrote") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found[1]})" if found else ""
        raise WeightsError(f"{p}: not a RED-Net state_dict: it holds a pickled Python object{what}, not only "
                           "tensors; a whole model saved with torch.save(model)? Save model.state_dict()") from None
    except Exception as e:  # torch.load's many ways of failing on what it did not write
        first = str(e).strip().split("\n")[0][:160]
        raise WeightsError(f"{p}: not a RED-Net state_dict: not a file torch.save wrote "
                           f"({type(e).__name__}: {first})") from None


def load_checkpoint(path) -> dict:
    """A training checkpoint (``CHECKPOINT_FORMAT``): config, model, optimizer, history."""
    data = load_file(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise WeightsError(f"{path}: not a redkern training checkpoint ({CHECKPOINT_FORMAT})")
    return data


def save_atomic(obj, path) -> None:
    """``torch.save`` to a temporary beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def training_summary(ckpt: dict) -> dict:
    """What shipped weights keep of the training run behind them."""
    vals = [h for h in ckpt["history"] if "val_psnr" in h]
    return {"steps": ckpt["step"], "elapsed_s": round(float(ckpt["elapsed_s"]), 1), "device": ckpt["device"],
            "torch": str(ckpt.get("torch", "")), "model_kind": ckpt["model_kind"], "config": ckpt["config"],
            "final_val_psnr": round(vals[-1]["val_psnr"], 3) if vals else None,
            "final_val_input_psnr": round(vals[-1]["input_psnr"], 3) if vals else None,
            # the learning curve: [step, seconds, validation PSNR] at every validation
            "curve": [[h["step"], h.get("seconds"), round(h["val_psnr"], 3)] for h in vals]}


def read(source) -> dict:
    """Any of the three layouts as one dict: ``state_dict``, the architecture (``depth``,
    ``channels``, ``features``), ``task`` and ``levels`` (``None`` for a bare state_dict),
    ``format`` and ``source``; shipped weights and checkpoints keep their other fields
    (``training``, validation numbers...)."""
    from .models import REDNet

    data = load_file(source)
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        cfg = data["config"]
        return {"format": WEIGHTS_FORMAT, "task": cfg["task"], "levels": cfg["levels"], "depth": cfg["depth"],
                "features": cfg["features"], "channels": cfg["channels"], "state_dict": data["model"],
                "training": training_summary(data), "source": str(source)}
    if isinstance(data, dict) and data.get("format") == WEIGHTS_FORMAT:
        return {**data, "source": str(source)}
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{source}: not a RED-Net state_dict (a {type(data).__name__}, not a dict of tensors)")
    try:
        config = REDNet.config_from_state_dict(data)
    except ValueError as e:
        raise WeightsError(f"{source}: not a RED-Net state_dict: {e}") from None
    return {"format": "state_dict", "task": None, "levels": None, **config, "state_dict": data,
            "source": str(source)}
