"""RED-Net (Mao, Shen & Yang, NIPS 2016) in the registry: ``red10``, ``red20``, ``red30``
build ``redkern.REDNet`` as ``redkern.RED10/20/30`` do (``channels``, ``features`` options;
defaults 1 channel, 64 features)."""

from __future__ import annotations

from ..zoo import RED10, RED20, RED30
from ._registry import register_model

__all__ = ["red10", "red20", "red30"]


@register_model
def red10(**options):
    """RED10, 1 channel x 64: 296,641 parameters."""
    return RED10(**options)


@register_model
def red20(**options):
    """RED20, 1 channel x 64: 665,921 parameters."""
    return RED20(**options)


@register_model
def red30(**options):
    """RED30, 1 channel x 64: 1,035,201 parameters."""
    return RED30(**options)
