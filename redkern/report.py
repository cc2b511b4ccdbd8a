"""``redkern.explain(module)``: what runs fused, where, how, and what stays in PyTorch.

Per fused layer, the backend and algorithm that run it on a device and dtype (the plan's own
table, ``layer_plan.plan_table``, with a column more), which layers run two to a kernel launch
in eager inference and why the others do not; for a partly fused module, where tracing stopped
and why.
"""

from __future__ import annotations

import torch
from torch import nn

from . import strips
from .layer_plan import plan_table

__all__ = ["explain"]


def explain(module: nn.Module, *, backend: str | None = None, device=None, dtype=None) -> str:
    """What ``redkern.fuse(module)`` runs, per layer, on ``device`` in ``dtype`` (by default
    the module's own, or CPU float32): the backend and algorithm of each fused convolution,
    what was folded into it, and every operation left to PyTorch with the reason. A module
    that is not fused yet is planned as ``fuse`` would plan it (``backend`` default auto)."""
    from .executor import LayerBackends
    from .fusion import FusedForward, fuse, untraced_reason

    if not any(isinstance(m, FusedForward) for m in module.modules()):
        module = fuse(module, backend=backend or "auto")
    p = next(iter(module.parameters()), None)
    device = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
    dtype = dtype or (p.dtype if p is not None else torch.float32)
    out = []

    def walk(m, path):
        if isinstance(m, FusedForward):
            layers = LayerBackends(m.plan, backend or m.backend)
            layers.pair_layers = m.pair_layers
            chosen = layers.for_call(device, dtype) if m.plan.conv_steps else {}
            pairs = layers.pairs_for(device, dtype) if m.plan.conv_steps else None
            title = f"{path or type(m).__name__} ({type(m).__name__}, backend {backend or m.backend}, " \
                    f"{str(dtype).removeprefix('torch.')} on {device})"
            out.append(plan_table(m.plan, chosen, title, pairs if pairs and (pairs.first or pairs.why_not) else None))
            if device.type == "cpu" and m.plan.conv_steps:
                out[-1] += "\n  " + strips.describe(m.plan)
            return
        why = untraced_reason(m)
        if why is not None:
            out.append(f"{path or type(m).__name__}: runs its own forward in PyTorch, its parts fused: {why}")
        for name, child in m.named_children():
            walk(child, f"{path}.{name}" if path else name)

    walk(module, "")
    return "\n\n".join(out) if out else f"{type(module).__name__}: nothing fused (no convolution found)"
