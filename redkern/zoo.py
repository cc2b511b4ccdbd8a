"""The model constructors users call: ``RED10``, ``RED20``, ``RED30`` (reference or fused)."""

from __future__ import annotations

from torch import nn

from .fused import FusedREDNet
from .models import REDNet

__all__ = ["RED10", "RED20", "RED30"]


def _build(depth: int, channels: int, features: int, fused: bool, backend: str) -> nn.Module:
    if fused:
        return FusedREDNet(depth, channels, features, backend=backend)
    if backend != "auto":
        raise ValueError(f"backend={backend!r} applies to the fused model only; "
                         "pass fused=True or leave backend='auto'")
    return REDNet(depth, channels, features)


def RED10(channels: int = 1, features: int = 64, *, fused: bool = False, backend: str = "auto") -> nn.Module:
    """RED10: 5 conv + 5 deconv layers, no skips. ``fused=True`` returns the fast model."""
    return _build(10, channels, features, fused, backend)


def RED20(channels: int = 1, features: int = 64, *, fused: bool = False, backend: str = "auto") -> nn.Module:
    """RED20: 10 conv + 10 deconv layers, 4 skips. ``fused=True`` returns the fast model."""
    return _build(20, channels, features, fused, backend)


def RED30(channels: int = 1, features: int = 64, *, fused: bool = False, backend: str = "auto") -> nn.Module:
    """RED30: 15 conv + 15 deconv layers, 7 skips. ``fused=True`` returns the fast model."""
    return _build(30, channels, features, fused, backend)
