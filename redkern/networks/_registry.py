"""The model registry (timm's convention): ``@register_model`` beside each definition,
``create_model(name, **options)`` and ``list_models(pattern)`` over it."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable

from torch import nn

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its own name; ``fn(**options)`` builds the model (called with no
    options it builds the paper's main configuration)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """The registered names matching the shell-style ``pattern`` (``"edsr*"``), sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, fused: bool = False, backend: str = "auto", **options) -> nn.Module:
    """The model registered as ``name``, built with ``options`` (its constructor's arguments).
    ``fused=True`` returns ``redkern.fuse(model, backend=backend)``: the same parameters, run
    by the fused kernels. Unknown names raise ``ValueError`` listing the names."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; registered: {', '.join(list_models())}")
    if not fused and backend != "auto":
        raise ValueError(f"backend={backend!r} applies to the fused model only; "
                         "pass fused=True or leave backend='auto'")
    model = _MODELS[name](**options)
    if fused:
        from ..fusion import fuse

        return fuse(model, backend=backend)
    return model
