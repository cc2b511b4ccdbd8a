"""The fused epilogue: what a convolution kernel does to its sum before the only store.

Composed as CUTLASS's residual-block epilogues are::

    v = alpha * conv(x, w) + bias
    Residual.NONE:        y = act(v)
    Residual.BEFORE_ACT:  y = act(v + beta * extra)
    Residual.AFTER_ACT:   y = act2(act(v) + beta * extra)

with ``act``, ``act2`` in ``Act``: IDENTITY, RELU, LEAKY_RELU (``slope``), PRELU (a
per-channel weight, given as a tensor), TANH. Instances of the one template:

=====================================  ==============================================
RED encoder, ``relu(conv + b)``        ``Epilogue(act=RELU)``
RED decoder with a skip                ``Epilogue(act=RELU, residual=AFTER_ACT, act2=RELU)``
RED/VDSR last layer, ``conv + b + x``  ``Epilogue(residual=BEFORE_ACT)``
EDSR block, ``x + 0.1 * (conv + b)``   ``Epilogue(alpha=0.1, residual=BEFORE_ACT)``, bias x 0.1
DnCNN, ``x - (conv + b)``              ``Epilogue(alpha=-1, residual=BEFORE_ACT)``, bias x -1
SRResNet, ``prelu(conv + b)``          ``Epilogue(act=PRELU)`` with the PReLU's weight
=====================================  ==============================================

The codes are read from ``epilogue.def`` beside this file, which the C++ and CUDA C++
kernels include too: one definition for every backend. ``reference_conv2d`` is the
semantics every kernel is tested against.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Act", "Residual", "Epilogue", "RELU", "RELU_ADD_RELU", "ADD_RESIDUAL",
           "activation", "apply_epilogue", "kernel_slopes", "reference_conv2d", "output_size",
           "DEFINITION"]

DEFINITION = Path(__file__).with_name("epilogue.def")


def _read_definition(kind: str) -> dict[str, int]:
    entries = re.findall(rf"^REDKERN_{kind}\((\w+),\s*(\d+)\)", DEFINITION.read_text(), re.M)
    if not entries:
        raise RuntimeError(f"{DEFINITION}: no REDKERN_{kind} entries (a damaged installation)")
    return {name: int(code) for name, code in entries}


Act = enum.IntEnum("Act", _read_definition("ACT"), module=__name__)
Act.__doc__ = "Activation codes (epilogue.def): IDENTITY, RELU, LEAKY_RELU, PRELU, TANH."
Residual = enum.IntEnum("Residual", _read_definition("RESIDUAL"), module=__name__)
Residual.__doc__ = "Where ``beta * extra`` joins (epilogue.def): NONE, BEFORE_ACT, AFTER_ACT."

_SLOPED = (Act.LEAKY_RELU, Act.PRELU)


@dataclasses.dataclass(frozen=True)
class Epilogue:
    """One layer's epilogue (see the module docstring).

    ``slope``/``slope2``: LEAKY_RELU's negative slope for ``act``/``act2``. PRELU's
    per-channel weights are tensors, passed beside the epilogue (``act_weight``,
    ``act2_weight``). ``act2`` exists only with ``Residual.AFTER_ACT``.
    """

    act: Act = Act.IDENTITY
    alpha: float = 1.0
    residual: Residual = Residual.NONE
    beta: float = 1.0
    act2: Act = Act.IDENTITY
    slope: float = 0.01
    slope2: float = 0.01

    def __post_init__(self):
        for name in ("act", "act2"):
            try:
                object.__setattr__(self, name, Act(getattr(self, name)))
            except ValueError:
                raise ValueError(f"Epilogue.{name} must be one of {[a.name for a in Act]}, "
                                 f"got {getattr(self, name)!r}") from None
        try:
            object.__setattr__(self, "residual", Residual(self.residual))
        except ValueError:
            raise ValueError(f"Epilogue.residual must be one of {[r.name for r in Residual]}, "
                             f"got {self.residual!r}") from None
        for name in ("alpha", "beta", "slope", "slope2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Epilogue.{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.act2 != Act.IDENTITY and self.residual != Residual.AFTER_ACT:
            raise ValueError(f"Epilogue.act2={self.act2.name} applies after the residual join, "
                             "so it needs residual=AFTER_ACT")

    @property
    def needs_extra(self) -> bool:
        return self.residual != Residual.NONE

    def encode(self) -> tuple:
        """The op schema's scalars: ``(act, slope, alpha, residual, beta, act2, slope2)``."""
        return (int(self.act), self.slope, self.alpha, int(self.residual), self.beta,
                int(self.act2), self.slope2)

    @classmethod
    def decode(cls, act, slope, alpha, residual, beta, act2, slope2) -> "Epilogue":
        return cls(act, alpha, residual, beta, act2, slope, slope2)  # __post_init__ names a bad code

    def formula(self, conv: str = "conv", extra: str = "extra", bias: str | None = "b") -> str:
        """The epilogue as arithmetic, e.g. ``relu(relu(conv + b) + extra)`` (``bias=None``:
        no bias term, as when ``conv`` already holds it)."""
        v = conv if self.alpha == 1 else f"{self.alpha:g} * {conv}"
        if bias is not None:
            v = f"{v} + {bias}"
        scaled = extra if self.beta == 1 else f"{self.beta:g} * {extra}"
        if self.residual == Residual.BEFORE_ACT:
            v = f"{v} + {scaled}"
        v = _act_text(self.act, self.slope, v)
        if self.residual == Residual.AFTER_ACT:
            v = _act_text(self.act2, self.slope2, f"{v} + {scaled}")
        return v


def _act_text(act: Act, slope: float, v: str) -> str:
    if act == Act.IDENTITY:
        return v
    if act == Act.LEAKY_RELU:
        return f"leaky_relu({v}, {slope:g})"
    return f"{act.name.lower()}({v})"


RELU = Epilogue(act=Act.RELU)
RELU_ADD_RELU = Epilogue(act=Act.RELU, residual=Residual.AFTER_ACT, act2=Act.RELU)
ADD_RESIDUAL = Epilogue(residual=Residual.BEFORE_ACT)


# --- the reference semantics, in PyTorch --------------------------------------------------

def activation(v: Tensor, act: Act, slope: float = 0.01, weight: Tensor | None = None) -> Tensor:
    """``act`` applied to ``v`` ``[N, C, H, W]``; ``weight`` is PRELU's (1 or C values)."""
    if act == Act.IDENTITY:
        return v
    if act == Act.RELU:
        return F.relu(v)
    if act == Act.LEAKY_RELU:
        return F.leaky_relu(v, slope)
    if act == Act.PRELU:
        if weight is None:
            raise ValueError("Act.PRELU needs its per-channel weight")
        return F.prelu(v, weight.to(v.dtype))
    if act == Act.TANH:
        return torch.tanh(v)
    raise ValueError(f"unknown activation {act!r}")


def apply_epilogue(conv: Tensor, bias: Tensor | None, extra: Tensor | None, epilogue: Epilogue,
                   act_weight: Tensor | None = None, act2_weight: Tensor | None = None) -> Tensor:
    """The epilogue on a convolution's raw sum ``conv`` ``[N, C, H, W]`` (no bias added yet)."""
    v = epilogue.alpha * conv if epilogue.alpha != 1 else conv
    if bias is not None:
        v = v + bias.view(1, -1, 1, 1)
    if epilogue.needs_extra:
        if extra is None:
            raise ValueError(f"the epilogue {epilogue.formula()} needs an extra tensor")
        scaled = extra if epilogue.beta == 1 else epilogue.beta * extra
    if epilogue.residual == Residual.BEFORE_ACT:
        v = v + scaled
    v = activation(v, epilogue.act, epilogue.slope, act_weight)
    if epilogue.residual == Residual.AFTER_ACT:
        v = activation(v + scaled, epilogue.act2, epilogue.slope2, act2_weight)
    return v


def reference_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, extra: Tensor | None = None, *,
                     transposed: bool = False, padding=(1, 1), epilogue: Epilogue = RELU,
                     act_weight: Tensor | None = None, act2_weight: Tensor | None = None) -> Tensor:
    """What ``torch.ops.redkern.conv2d_fused`` computes, in plain PyTorch (stride 1).

    ``weight``: ``nn.Conv2d`` layout ``[Cout, Cin, kh, kw]``, or with ``transposed``
    ``nn.ConvTranspose2d`` layout ``[Cin, Cout, kh, kw]``; ``padding`` as those modules
    take it.
    """
    conv = (F.conv_transpose2d(x, weight, None, padding=tuple(padding)) if transposed
            else F.conv2d(x, weight, None, padding=tuple(padding)))
    return apply_epilogue(conv, bias, extra, epilogue, act_weight, act2_weight)


def output_size(size: int, kernel: int, padding: int, transposed: bool) -> int:
    """Output length along one axis of a stride-1 convolution (or transposed convolution)."""
    return size + kernel - 1 - 2 * padding if transposed else size + 2 * padding - kernel + 1


def kernel_slopes(act: Act, slope: float, weight: Tensor | None, cout: int, device) -> Tensor | None:
    """The contiguous ``[cout]`` float32 slope array on ``device`` that kernels read for
    LEAKY_RELU / PRELU (``weight``: PRELU's 1 or ``cout`` values); ``None`` otherwise."""
    if act not in _SLOPED:
        return None
    if act == Act.LEAKY_RELU:
        return torch.full((cout,), slope, dtype=torch.float32, device=device)
    if weight is None:
        raise ValueError("Act.PRELU needs its per-channel weight")
    if weight.numel() not in (1, cout):
        raise ValueError(f"a PReLU weight must have 1 or {cout} (the output channels) values, "
                         f"got {weight.numel()}")
    return weight.detach().reshape(-1).to(device=device, dtype=torch.float32).expand(cout).contiguous()
