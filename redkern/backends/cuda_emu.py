"""The CUDA C++ kernels on the host: ``redkern._cuda_emu``, the same kernel source built against
our CUDA emulation (csrc/cuda_emu), on CPU tensors.

Correct but slow, for testing on machines without a GPU: the fusion tests run whole networks
through it, so the CUDA C++ kernels' epilogues and layouts are checked in CI. ``"auto"`` never
picks it; ask for it by name (``backend="cuda_emu"``). What it runs and refuses is exactly what
the ``cuda`` backend runs and refuses (``algorithm``).
"""

from __future__ import annotations

import torch

from .common import BackendUnavailable
from .cuda import DTYPES, algorithm, launch_conv2d

try:
    from .. import _cuda_emu
    _IMPORT_ERROR = None
except ImportError as e:  # the package still imports; backends() says why
    _cuda_emu = None
    _IMPORT_ERROR = e

__all__ = ["status", "check_can_run", "supported_dtypes", "algorithm", "conv2d"]


def status() -> dict:
    if _cuda_emu is None:
        return {"available": False, "devices": [], "detail": f"redkern._cuda_emu failed to import: {_IMPORT_ERROR}"}
    return {"available": True, "devices": ["cpu"],
            "detail": "the CUDA C++ kernels under redkern's host emulation, on CPU tensors: correct but slow, "
                      "for testing"}


def check_can_run(device: torch.device) -> None:
    if _cuda_emu is None:
        raise BackendUnavailable(status()["detail"])
    if device.type != "cpu":
        raise BackendUnavailable(f"the CUDA emulation runs CPU tensors only, got a tensor on {device}")


def supported_dtypes() -> tuple[torch.dtype, ...]:
    return DTYPES if _cuda_emu is not None else ()


def conv2d(x, weight, bias, extra=None, *, transposed: bool, padding, epilogue, slopes=None, slopes2=None,
           out=None) -> torch.Tensor:
    """The ``cuda`` backend's ``conv2d`` on CPU tensors, through the emulated kernels."""
    check_can_run(x.device)
    return launch_conv2d(_cuda_emu, x, weight, bias, extra, transposed=transposed, padding=padding,
                         epilogue=epilogue, slopes=slopes, slopes2=slopes2, out=out)
