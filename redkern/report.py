"""Readable reports of layer plans: what runs fused, where, how, and what stays in PyTorch.

``print(plan)`` shows the steps (``plan_table``); ``redkern.explain(module)`` adds, per fused
layer, the backend and algorithm that run it on a device and dtype, and walks a partly fused
module to show where tracing stopped.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer_plan import ConvStep, Plan

__all__ = ["plan_table", "explain"]

# Steps that only check inputs or read parameters: listed in one line, not as rows.
_QUIET_REASONS = ("input check", "a parameter or buffer read directly")


def _value(plan: Plan, v: int) -> str:
    return plan.names.get(v, f"%{v}")


def _fused_text(plan: Plan, step: ConvStep) -> str:
    extra = _value(plan, step.extra) if step.extra is not None else "extra"
    e = step.epilogue
    if step.bias_scale == e.alpha != 1:  # a scale applied to conv + b
        text = e.formula("(conv + b)", extra, bias=None)
    elif step.bias_scale != 1:
        text = e.formula("conv", extra, bias=f"{step.bias_scale:g} * b")
    else:
        text = e.formula("conv", extra)
    if step.bn is not None:
        text += " (BatchNorm folded" + (", in PyTorch while training)" if step.bn.training else ")")
    return text


def plan_table(plan: Plan, chosen: dict | None = None, title: str | None = None) -> str:
    """The plan as a table: one row per fused convolution and per PyTorch operation.
    ``chosen``: ``LayerBackends.for_call``'s answer, adding the backend and algorithm."""
    rows = []
    quiet = []
    for i, step in enumerate(plan.steps):
        if isinstance(step, ConvStep):
            where = ""
            if chosen is not None:
                name, mod, label = chosen[i]
                where = f"{name}: {label}" if mod is not None else f"PyTorch ({label})"
            if step.folds_batchnorm_in_training:
                where = "PyTorch (BatchNorm in training mode)"
            rows.append((str(len(rows) + 1), step.name, step.describe(), f"{step.in_channels} -> {step.out_channels}",
                         _value(plan, step.src), _fused_text(plan, step), where))
        elif step.reason in _QUIET_REASONS:
            quiet.append(step.name)
        else:
            reads = ", ".join(_value(plan, v) for v in step.reads)
            rows.append((str(len(rows) + 1), step.name, step.describe(), "", reads, "", f"PyTorch: {step.reason}"))
    fused = len(plan.conv_steps)
    left = len([s for s in plan.torch_steps if s.reason not in _QUIET_REASONS])
    head = title or f"{plan.root} plan"
    lines = [f"{head}: {fused} fused convolution{'s' if fused != 1 else ''}, "
             f"{left} operation{'s' if left != 1 else ''} left to PyTorch"]
    header = ("#", "layer", "op", "channels", "reads", "fused epilogue", "runs on" if chosen is not None else "")
    widths = [max(len(r[k]) for r in rows + [header]) for k in range(len(header))]
    for r in [header] + rows:
        lines.append("  " + "  ".join(c.ljust(widths[k]) for k, c in enumerate(r)).rstrip())
    radius = plan.receptive_field_radius()
    lines.append(f"  receptive field radius: {radius if radius is not None else 'unknown'} px"
                 + (f"; also {len(quiet)} input check/parameter read step(s)" if quiet else ""))
    lines.extend(f"  note: {n}" for n in plan.notes)
    return "\n".join(lines)


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
            chosen = layers.for_call(device, dtype) if m.plan.conv_steps else {}
            title = f"{path or type(m).__name__} ({type(m).__name__}, backend {backend or m.backend}, " \
                    f"{str(dtype).removeprefix('torch.')} on {device})"
            out.append(plan_table(m.plan, chosen, title))
            return
        why = untraced_reason(m)
        if why is not None:
            out.append(f"{path or type(m).__name__}: runs its own forward in PyTorch, its parts fused: {why}")
        for name, child in m.named_children():
            walk(child, f"{path}.{name}" if path else name)

    walk(module, "")
    return "\n\n".join(out) if out else f"{type(module).__name__}: nothing fused (no convolution found)"
