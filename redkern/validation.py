"""Input checks shared by the models and the ops: one wording for every entry point.

Policy for non-finite values: they propagate as in PyTorch (a NaN in the input gives NaN
in the outputs it reaches); nothing here scans tensor values, which would cost a pass over
the data on every call.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class UsageError(ValueError):
    """Arguments that cannot work (the command line's exit code 2); the message says which."""


def check_image_batch(x: torch.Tensor, channels: int | None, weight: torch.Tensor, where: str) -> None:
    """Raise a ``ValueError``/``TypeError`` naming what is wrong with an image batch ``x``.

    ``x`` must be a 4-D ``[N, C, H, W]`` floating tensor with ``C == channels`` (when given),
    no empty dimension, on the device and of the dtype of ``weight``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{where}: expected a 4-D [N, C, H, W] tensor, got shape {tuple(x.shape)} "
                         f"({x.dim()}-D); add a batch dimension with x[None] for a single image")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{where}: expected a floating tensor (float32, float16, bfloat16 or float64), "
                        f"got {x.dtype}; convert images with x.float() / 255 first")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{where}: the model takes {channels} channel(s), got {x.shape[1]} "
                         f"(input shape {tuple(x.shape)})")
    if x.numel() == 0:
        raise ValueError(f"{where}: empty input of shape {tuple(x.shape)}; N, C, H and W must all be >= 1")
    if x.device != weight.device:
        raise ValueError(f"{where}: input is on {x.device} but the weights are on {weight.device}; "
                         f"move one with .to(device)")
    if x.dtype != weight.dtype:
        raise TypeError(f"{where}: input dtype {x.dtype} differs from the weights' {weight.dtype}; "
                        f"convert the input or call model.to(dtype)")


check_image_batch._redkern_check = True  # plans keep it as an input check (redkern.plan)
