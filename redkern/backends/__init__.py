"""Backend registry: which kernels exist, which were built, and which one runs a call.

``redkern.backends()`` reports every backend with whether it can run here and why not.
``resolve(name, device)`` returns the backend object for a call, or raises
``BackendUnavailable`` with the reason: there is no silent fallback.

What every backend module provides (the one contract the ops and the executor call):

``status() -> {"available", "devices", "detail"}``, ``check_can_run(device)`` and
``supported_dtypes()`` (the activation dtypes its kernels take here).

``algorithm(cin, cout, kernel, padding, transposed, dtype) -> str``
    A short label of how this backend computes such a layer (``"winograd F(4x4,3x3)"``,
    ``"direct 5x5"``, ``"1x1 GEMM"``...), for the plan report; raises ``BackendUnavailable``
    naming the layer's limitation when it cannot run it (a kernel size, a dtype).

``conv2d(x, weight, bias, extra=None, *, transposed, padding, epilogue, slopes=None,
slopes2=None, out=None) -> Tensor``
    One fused stride-1 convolution, ``redkern.epilogue.reference_conv2d``'s semantics:
    ``x`` ``[N, Cin, H, W]`` in any layout; ``weight`` ``nn.Conv2d`` ``[Cout, Cin, kh, kw]``
    or, with ``transposed``, ``nn.ConvTranspose2d`` ``[Cin, Cout, kh, kw]`` (run as the
    convolution with the window flipped, channels swapped and padding ``k - 1 - p``);
    ``padding`` ``(ph, pw)`` as those modules take it, ``0 <= p <= k - 1``; ``bias``
    ``[Cout]`` (zeros when the layer has none); ``extra`` ``[N, Cout, OH, OW]`` when
    ``epilogue.needs_extra``; ``slopes``/``slopes2``: float32 ``[Cout]`` on the device
    (``redkern.epilogue.kernel_slopes``) when ``act``/``act2`` is LEAKY_RELU or PRELU.
    Returns a dense NHWC (``stride(1) == 1``) ``[N, Cout, OH, OW]`` tensor in ``x``'s dtype:
    ``out`` when given (it must be exactly that). Never writes outside ``out``; writes
    every element of it.

Optional: ``conv2d_weight_grad(x, grad, *, weight_shape, transposed, padding) -> (grad_weight,
grad_bias)``, float32, the weight's (in the module's layout) and the bias's gradients for the
gradient ``grad`` at the convolution's output. The ops' backward uses it where a backend has it
and PyTorch's ``convolution_backward`` elsewhere (``status()[name]["backward"]`` says which).
"""

from __future__ import annotations

import logging

import torch

from .common import BackendUnavailable

log = logging.getLogger("redkern")

BACKEND_NAMES = ("auto", "cpu", "triton", "cuda", "cuda_emu")
_loaded = {}


class _Missing:
    """Stands for a backend whose module is not part of this installation."""

    def __init__(self, name, error):
        self.detail = f"backend module redkern.backends.{name} is not installed ({error})"

    def status(self):
        return {"available": False, "devices": [], "detail": self.detail}

    def check_can_run(self, device):
        raise BackendUnavailable(self.detail)


_MODULES = {"cpu": "cpu", "triton": "triton_backend", "cuda": "cuda", "cuda_emu": "cuda_emu"}
KERNEL_NAMES = {"cpu": "CPU", "triton": "Triton", "cuda": "CUDA C++", "cuda_emu": "emulated CUDA C++"}


def check_dtype(name: str, dtype) -> None:
    """``TypeError`` unless backend ``name``'s kernels take activations of ``dtype``."""
    takes = _load(name).supported_dtypes()
    if dtype not in takes:
        names = ", ".join(str(d).removeprefix("torch.") for d in takes)
        raise TypeError(f"the {KERNEL_NAMES[name]} kernels take {names}, got {dtype}; convert with "
                        f"x.float() (or use the reference model for {dtype})")


def _load(name: str):
    """Import a backend module once; return it (the contract in this module's docstring)."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")
    if name not in _loaded:
        import importlib

        try:
            _loaded[name] = importlib.import_module(f".{_MODULES[name]}", __name__)
        except ModuleNotFoundError as e:
            _loaded[name] = _Missing(_MODULES[name], e)
    return _loaded[name]


def backward_of(mod) -> str:
    """How the ops' backward runs on a backend module: the input's gradient is always its own
    forward kernel; the weight's is its ``conv2d_weight_grad`` where it has one."""
    if hasattr(mod, "conv2d_weight_grad"):
        return "these kernels (input gradient: the forward kernel; weight and bias: conv2d_weight_grad)"
    return ("input gradient by these kernels; weight and bias gradients by PyTorch "
            "(aten.convolution_backward)")


def status() -> dict[str, dict]:
    """``{name: {"available": bool, "devices": [...], "detail": str, "backward": str}}`` for every
    backend (``backward``: ``backward_of``)."""
    return {name: {**_load(name).status(), "backward": backward_of(_load(name))} for name in BACKEND_NAMES[1:]}


def resolve(name: str, device: torch.device, dtype=None):
    """The backend module that runs ops for tensors on ``device`` (of ``dtype``, if given:
    ``TypeError`` when its kernels do not take it)."""
    if name == "auto":
        name = default_for(device)
    mod = _load(name)
    mod.check_can_run(device)
    if dtype is not None:
        check_dtype(name, dtype)
    return mod


def default_for(device: torch.device) -> str:
    """``auto``'s choice: C++ on CPU; Triton on CUDA, else the CUDA C++ kernels."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        for name in ("triton", "cuda"):
            if _load(name).status()["available"]:
                return name
        raise BackendUnavailable(
            "no CUDA backend can run: triton: " + _load("triton").status()["detail"]
            + "; cuda: " + _load("cuda").status()["detail"])
    raise BackendUnavailable(f"redkern has no kernels for device type {device.type!r} "
                             "(supported: cpu, cuda)")


__all__ = ["BACKEND_NAMES", "BackendUnavailable", "resolve", "status", "default_for", "check_dtype",
           "KERNEL_NAMES"]
