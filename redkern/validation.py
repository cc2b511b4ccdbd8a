"""Input checks shared by the models and the ops: one wording for every entry point.

Policy for non-finite values: the checks here never read tensor values, except
``check_finite``, which fused models run once per call on their inputs (``nonfinite="raise"``,
the default): one cheap pass over the input, because the fused kernels would spread a NaN or
an inf further than PyTorch does (a Winograd tile mixes a 6x6 block of its input).
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class NonFiniteInput(ValueError):
    """An input holds NaN or inf, which a fused model refuses unless told to let them through.
    ``count``: how many values; ``first``: the index of the first."""

    def __init__(self, message: str, count: int = 0, first=()):
        super().__init__(message)
        self.count, self.first = count, list(first)


class WorkingSetTooLarge(MemoryError):
    """A whole-image call would need more memory than the machine has; tile it instead."""


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


def check_finite(inputs, where: str) -> None:
    """Raise ``NonFiniteInput`` if a floating tensor among ``inputs`` holds NaN or inf."""
    for t in inputs:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or type(t) is not torch.Tensor \
                or t.device.type == "meta":
            continue
        bad = ~torch.isfinite(t)
        if bad.any():
            first = [int(i) for i in bad.nonzero()[0]]
            raise NonFiniteInput(
                f"{where}: the input holds {int(bad.sum())} NaN/inf value(s), the first at index {first}; "
                "the fused kernels would spread them further than PyTorch (a Winograd tile mixes 6x6 input "
                "pixels), so they are refused: clean the input (torch.nan_to_num) or set "
                "model.nonfinite = 'propagate' to let them through", int(bad.sum()), first)
