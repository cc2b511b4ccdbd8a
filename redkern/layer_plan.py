"""The layer plan: a module as a list of steps, each one fused convolution or one PyTorch operation.

    plan = redkern.plan(model)          # torch.fx traces model.forward
    print(plan)                         # every step: what it reads, writes and adds
    plan.receptive_field_radius()       # 30 for RED30
    plan.flops((1, 1, 256, 256))        # direct-convolution FLOPs of one forward pass

A ``ConvStep`` is one stride-1 ``nn.Conv2d`` / ``nn.ConvTranspose2d`` with everything that
follows it and only it, folded into its epilogue (``redkern.epilogue``): an eval-mode
BatchNorm, a constant scale, an activation, the addition of an earlier value, a second
activation. A ``TorchStep`` is any other node of the traced graph, run as PyTorch runs it
(pixel shuffle, concatenation, strided convolutions...), with the reason it is not fused.
Values are numbered: the module's inputs first, then each step's output. Every fact the rest of
redkern needs about a network (FLOPs, receptive field, which feature maps can share memory,
the conv-only export for ONNX/OpenVINO) is read off the plan, never re-derived from a model.

The plan keeps references to the module's own submodules (never copies), so it sees every
change to their parameters. RED-Net gets its plan from its definition, its ``forward``,
exactly as any other module does.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from fractions import Fraction
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .epilogue import Act, Epilogue, Residual

__all__ = ["Plan", "ConvStep", "TorchStep", "Ref", "Geometry", "plan", "PlanError", "conv_geometry",
           "reference_view", "plan_table"]

# What a fused module (redkern.fuse) keeps beside its reference class's state: its runtime
# (plan, per-layer backends, pooled maps; never pickled) and the backend name asked for.
RUNTIME_ATTRIBUTES = ("_redkern_runtime", "_redkern_backend", "_redkern_nonfinite")


class PlanError(RuntimeError):
    """A module's forward cannot be turned into a plan (it does not trace); the message says why."""


@dataclasses.dataclass(frozen=True)
class Ref:
    """A value of the plan: a module input or a step's output, by number."""

    value: int

    def __repr__(self):
        return f"%{self.value}"


# --- steps -----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class ConvStep:
    """One fused convolution: ``dst = epilogue(conv(src), extra)``.

    ``conv`` holds the weight and bias; ``bn`` (eval mode) is folded into them when run;
    ``bias_scale`` multiplies the (folded) bias, so that a scale applied to ``conv + b`` is
    ``epilogue.alpha`` on the sum and ``bias_scale`` on the bias. ``act_module`` /
    ``act2_module``: the PReLU modules whose weights the epilogue's PRELU reads. ``absorbed``:
    the graph nodes folded in (for the report); ``nodes``: their fx names, in order.
    """

    name: str
    conv: nn.Conv2d | nn.ConvTranspose2d
    src: int
    dst: int
    extra: int | None
    epilogue: Epilogue
    bias_scale: float = 1.0
    bn: nn.BatchNorm2d | None = None
    act_module: nn.Module | None = None
    act2_module: nn.Module | None = None
    absorbed: tuple[str, ...] = ()

    @property
    def transposed(self) -> bool:
        return isinstance(self.conv, nn.ConvTranspose2d)

    @property
    def kernel(self) -> tuple[int, int]:
        return tuple(self.conv.kernel_size)

    @property
    def padding(self) -> tuple[int, int]:
        return conv_geometry(self.conv)[1]

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def reads(self) -> tuple[int, ...]:
        return (self.src,) if self.extra is None else (self.src, self.extra)

    @property
    def act_weight(self) -> Tensor | None:
        return self.act_module.weight if self.act_module is not None else None

    @property
    def act2_weight(self) -> Tensor | None:
        return self.act2_module.weight if self.act2_module is not None else None

    @property
    def folds_batchnorm_in_training(self) -> bool:
        """Its BatchNorm is in training mode: batch statistics cannot be folded into weights."""
        return self.bn is not None and self.bn.training

    def weights(self) -> tuple[Tensor, Tensor | None]:
        """The effective ``(weight, bias)`` in the conv's own layout: BatchNorm folded in and the
        bias scaled by ``bias_scale``. Differentiable; the parameters themselves when nothing is
        folded."""
        w, b = self.conv.weight, self.conv.bias
        if self.bn is not None:
            bn = self.bn
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale
            if bn.bias is not None:
                shift = shift + bn.bias
            shape = (1, -1, 1, 1) if self.transposed else (-1, 1, 1, 1)
            w = w * scale.to(w.dtype).view(shape)
            b = shift.to(w.dtype) if b is None else b * scale.to(w.dtype) + shift.to(w.dtype)
        if self.bias_scale != 1 and b is not None:
            b = b * self.bias_scale
        return w, b

    def radius(self) -> tuple[int, int]:
        """Pixels of its input an output pixel depends on, up/left or down/right, per axis."""
        (kh, kw), (ph, pw) = self.kernel, self.padding
        if self.transposed:  # the equivalent convolution's padding
            ph, pw = kh - 1 - ph, kw - 1 - pw
        return max(ph, kh - 1 - ph), max(pw, kw - 1 - pw)

    def describe(self) -> str:
        kind = "deconv" if self.transposed else "conv"
        (kh, kw), (ph, pw) = self.kernel, self.padding
        pad = f"p{ph}" if ph == pw else f"p{ph},{pw}"
        size = f"{kh}x{kw}"
        return f"{kind} {size} {pad}"


@dataclasses.dataclass(eq=False)
class TorchStep:
    """One graph node run as PyTorch runs it: ``dst = target(*args, **kwargs)``.

    ``kind`` is the fx opcode (``call_module``, ``call_function``, ``call_method``,
    ``get_attr``); ``target`` the module, function or method name (an attribute path for
    ``get_attr``). ``args``/``kwargs`` hold ``Ref``s where the node takes plan values.
    ``reason``: why no kernel of ours runs it.
    """

    name: str
    kind: str
    target: Any
    args: tuple
    kwargs: dict
    dst: int
    reason: str

    @property
    def reads(self) -> tuple[int, ...]:
        found: list[int] = []
        _collect_refs((self.args, self.kwargs), found)
        return tuple(found)

    def describe(self) -> str:
        return _target_name(self.kind, self.target)


Step = ConvStep | TorchStep


def _collect_refs(a, found: list[int]) -> None:
    if isinstance(a, Ref):
        found.append(a.value)
    elif isinstance(a, (tuple, list)):
        for v in a:
            _collect_refs(v, found)
    elif isinstance(a, dict):
        for v in a.values():
            _collect_refs(v, found)


def substitute(a, env: dict):
    """``a`` with every ``Ref`` replaced by its value in ``env``."""
    if isinstance(a, Ref):
        return env[a.value]
    if isinstance(a, tuple):
        return tuple(substitute(v, env) for v in a)
    if isinstance(a, list):
        return [substitute(v, env) for v in a]
    if isinstance(a, dict):
        return {k: substitute(v, env) for k, v in a.items()}
    return a


def _target_name(kind: str, target) -> str:
    if kind == "call_module":
        return type(target).__name__
    if kind == "call_method":
        return f".{target}()"
    if kind == "get_attr":
        return f"attribute {target}"
    name = getattr(target, "__name__", repr(target))
    module = getattr(target, "__module__", "") or ""
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module.startswith("torch") and not module.startswith("torch.nn"):
        return f"torch.{name}"
    if module == "_operator":
        return {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "getitem": "[]", "neg": "-x",
                "iadd": "+=", "imul": "*="}.get(name, name)
    return name


# --- the plan ----------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Plan:
    """Steps in execution order, over numbered values (see the module docstring).

    ``inputs``: the values of the module's positional inputs; ``output``: the module's output
    structure with ``Ref``s; ``shapes``: value shapes for ``example_shapes`` (the inputs' shapes
    the plan was made with), where shape propagation succeeded; ``names``: each value's name
    (``x``, a layer's name...); ``root``: the module's class name.
    """

    root: str
    inputs: list[int]
    steps: list[Step]
    output: Any
    names: dict[int, str]
    shapes: dict[int, tuple[int, ...]]
    example_shapes: tuple[tuple[int, ...], ...]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def conv_steps(self) -> list[ConvStep]:
        return [s for s in self.steps if isinstance(s, ConvStep)]

    @property
    def torch_steps(self) -> list[TorchStep]:
        return [s for s in self.steps if isinstance(s, TorchStep)]

    @property
    def output_values(self) -> tuple[int, ...]:
        found: list[int] = []
        _collect_refs(self.output, found)
        return tuple(found)

    def last_uses(self) -> dict[int, int]:
        """For each value, the index of the last step that reads it (where it is made if none
        does; ``len(steps)`` for the outputs, which outlive the plan; -1 for the inputs): a
        feature map's memory may be reused after that step."""
        last = {v: -1 for v in self.inputs}
        for i, step in enumerate(self.steps):
            for v in step.reads:
                last[v] = i
            last[step.dst] = i  # a value nothing reads dies where it is made
        for v in self.output_values:
            last[v] = len(self.steps)
        return last

    def pair_problem(self, i: int) -> str | None:
        """Why steps ``i`` and ``i + 1`` cannot run as one two-layer kernel (the first's output
        kept on chip, never stored), or ``None`` when the plan allows it: both fused
        convolutions, the second reading the first's output as its input, and nothing else
        reading that output (not even as the second's extra, nor as the module's output). Whether
        a backend has such a kernel for the two layers is the backend's to say."""
        first = self.steps[i]
        if not isinstance(first, ConvStep):
            return "not a fused convolution"
        if i + 1 >= len(self.steps):
            return "the last step"
        second = self.steps[i + 1]
        name = _value(self, first.dst)
        if not isinstance(second, ConvStep):
            return f"the next step ({second.name}) runs in PyTorch"
        if second.src != first.dst:
            return f"{second.name} reads {_value(self, second.src)}, not {name}"
        for s in (first, second):
            if s.folds_batchnorm_in_training:
                return f"{s.name}'s BatchNorm is in training mode"
        readers = [s.name for s in self.steps[i + 2:] if first.dst in s.reads]
        if second.extra == first.dst:
            readers.insert(0, f"{second.name} (as its extra)")
        if readers or first.dst in self.output_values:
            return f"{name} is also read by {', '.join(readers) or 'the output'}, so it must be stored"
        return None

    def radius(self) -> int | None:
        """The receptive field radius in input pixels (see ``receptive_field_radius``)."""
        return self.receptive_field_radius()

    def receptive_field_radius(self) -> int | None:
        """Input pixels an output pixel depends on in any direction (``geometry().radius``):
        30 for RED30. For an upsampler it is counted on the input grid: the output pixels over
        input pixel ``c`` depend on input pixels within this many of ``c``. Skips join
        shallower paths and do not widen it. ``None`` when a step's reach is not known (an
        operation we do not model)."""
        return self.geometry().radius

    def scale(self) -> Fraction | None:
        """Output pixels per input pixel along each axis: 1 for a denoiser, 2 for a x2
        upsampler (a ``Fraction``, equal to the int). ``None`` when the two axes differ or a
        step's effect on the resolution is not known; ``geometry()`` has both axes."""
        s = self.geometry().scale
        return s[0] if s is not None and s[0] == s[1] else None

    def spatial_scales(self) -> dict[int, Fraction]:
        """Each image-like value's resolution relative to the first input (2 after a x2 pixel
        shuffle, 3 after a stride-3 transposed convolution), composed from the steps' own
        facts (``geometry``); values whose two axes differ are left out."""
        scales, _ = _value_scales(self)
        return {v: s[0] for v, s in scales.items() if s[0] == s[1]}

    def geometry(self) -> Geometry:
        """Where the output lies over the input, read off the steps: the scale, the reach of
        every output pixel into the input, and whether tiles can reproduce the whole image
        exactly (see ``Geometry``). The one definition the receptive field and tiling use."""
        return _geometry(self)

    def flops(self, input_shape) -> int:
        """Direct-convolution FLOPs (2 per multiply-add) of the convolutions, fused or not, for
        an input of ``input_shape`` ``[N, C, H, W]`` (2.07 MFLOP per pixel for RED30-64)."""
        n, _, h, w = input_shape
        sizes = self.value_sizes(h, w)
        total = 0
        for step in self.steps:
            conv = step.conv if isinstance(step, ConvStep) else (
                step.target if step.kind == "call_module" and isinstance(step.target, nn.modules.conv._ConvNd) else None)
            if conv is None:
                continue
            src = step.src if isinstance(step, ConvStep) else step.reads[0]
            oh, ow = sizes[step.dst]
            ih, iw = sizes[src]
            kh, kw = conv.kernel_size
            per = 2 * kh * kw * (conv.in_channels // conv.groups) * conv.out_channels
            # A transposed convolution does its multiply-adds per input pixel.
            pixels = ih * iw if isinstance(conv, nn.modules.conv._ConvTransposeNd) else oh * ow
            total += per * n * pixels
        return total

    def value_sizes(self, h: int, w: int) -> dict[int, tuple[int, int]]:
        """Each 4-D value's spatial size for an input of ``h x w``: the propagated shapes, with
        every size that scaled with the example input scaled again (and borders that shrink or
        grow by a constant, as unpadded convolutions do, kept constant)."""
        h0, w0 = self.example_shapes[0][2:] if self.example_shapes and len(self.example_shapes[0]) == 4 else (h, w)
        out = {}
        for v, s in self.shapes.items():
            if len(s) == 4:
                out[v] = (_rescale(s[2], h0, h), _rescale(s[3], w0, w))
        return out

    def peak_bytes(self, input_shape, itemsize: int) -> tuple[int, int]:
        """``(bytes, maps)``: the most memory the values made by the steps hold at once (each
        freed after its last reader), for an input of ``input_shape`` ``[N, C, H, W]`` and
        elements of ``itemsize`` bytes; the number of values live at that peak."""
        n, _, h, w = input_shape
        sizes = self.value_sizes(h, w)
        last = self.last_uses()
        live, peak, peak_maps = {}, 0, 0
        for i, step in enumerate(self.steps):
            shape = self.shapes.get(step.dst)
            if shape is not None and len(shape) == 4 and step.dst in sizes:
                live[step.dst] = n * shape[1] * sizes[step.dst][0] * sizes[step.dst][1] * itemsize
            total = sum(live.values())
            if total > peak:
                peak, peak_maps = total, len(live)
            for v in [v for v in live if last.get(v) == i]:
                del live[v]
        return peak, peak_maps

    def __str__(self) -> str:
        return plan_table(self)


def _rescale(size: int, example: int, new: int) -> int:
    """``size`` at an example input size ``example``, for input size ``new``: a multiple
    ``k * example`` stays a multiple; otherwise ``size`` is taken as ``example * r + c`` with
    ``r`` the nearest power-of-two ratio."""
    if example == new:
        return size
    ratio = Fraction(size, example)
    if ratio.denominator <= 8 and ratio.numerator <= 64 and size * ratio.denominator % example == 0:
        return int(ratio * new)
    r = Fraction(2) ** round(math.log2(size / example)) if size > 0 else Fraction(0)
    return int(r * new + (size - r * example))


# PyTorch operations that act on each pixel alone (or on channels): no reach, no change of scale.
_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.iadd,
    operator.isub, operator.imul, operator.getitem, torch.add, torch.sub, torch.mul, torch.div,
    torch.cat, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, F.relu, F.leaky_relu, F.prelu,
    F.sigmoid, F.tanh, F.hardtanh, F.elu, F.gelu, torch.stack, F.dropout, torch.flatten,
}
_POINTWISE_METHODS = {"add", "sub", "mul", "div", "relu", "sigmoid", "tanh", "clamp", "add_", "mul_",
                      "relu_", "clamp_", "contiguous", "float", "to", "type_as", "__getitem__", "size",
                      "dim", "view_as", "chunk", "split", "neg"}
_POINTWISE_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout,
                      nn.BatchNorm2d, nn.ELU, nn.GELU, nn.Hardtanh, nn.ReLU6)


# --- geometry: scale and reach, composed from each step's own facts ------------------------------

@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a plan's output lies over its input, per axis ``(rows, cols)``: what exact tiling
    needs (``Plan.geometry``).

    ``scale``: output pixels per input pixel (``Fraction``s: 2 after a x2 pixel shuffle, 1/2
    after a stride-2 convolution); ``None`` when a step's effect on resolution is not known.
    ``reach``: ``((up, down), (left, right))``: the output pixels over input pixel ``c`` (the
    ``scale x scale`` block at ``scale * c``) depend on input rows ``c - up .. c + down`` and
    columns alike; exact for dense kernels, composed step by step on each value's own grid;
    ``None`` when a step's reach is not known. ``size_offset``: output size minus ``scale``
    times the input size at the plan's example input (``(-12, -12)`` for an unpadded SRCNN),
    ``None`` without shapes. ``problem``: why tiles cannot reproduce whole-image inference
    exactly, or ``None``. ``unknown``: the first step whose reach or effect on resolution the
    planner does not model (why ``reach`` or ``scale`` is ``None``), or ``None``. ``trim``: the
    input pixels the network drops at every border (its output pixel ``o`` lies over input
    pixel ``o + trim``: 6 for the unpadded SRCNN 9-1-5), at scale 1; ``reach`` is then counted
    from that pixel.
    """

    scale: tuple[Fraction, Fraction] | None
    reach: tuple[tuple[int, int], tuple[int, int]] | None
    size_offset: tuple[int, int] | None
    problem: str | None
    unknown: str | None = None
    trim: int = 0

    @property
    def radius(self) -> int | None:
        """The largest reach in any direction, in input pixels (a tile's halo)."""
        if self.reach is None:
            return None
        return max(0, *(r for axis in self.reach for r in axis))


_ONE = (Fraction(1), Fraction(1))


@dataclasses.dataclass(frozen=True)
class _Conv:
    """A 2-D convolution's geometry: kernel, stride, dilation, padding before, per axis."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int] | str
    transposed: bool

    def before(self, axis: int) -> int:
        p = self.padding
        if isinstance(p, str):  # "same" pads d (k - 1) // 2 before, the rest after
            return 0 if p == "valid" else self.dilation[axis] * (self.kernel[axis] - 1) // 2
        return p[axis]

    @property
    def factor(self) -> tuple[Fraction, Fraction]:
        return tuple(Fraction(s) if self.transposed else Fraction(1, s) for s in self.stride)

    def back(self, axis: int, a: int, b: int) -> tuple[int, int]:
        """The input pixels outputs ``a..b`` read along ``axis``."""
        k, s, d, p = self.kernel[axis], self.stride[axis], self.dilation[axis], self.before(axis)
        if self.transposed:  # out o = s i - p + d j, j < k
            return -((-(a + p - d * (k - 1))) // s), (b + p) // s
        return s * a - p, s * b - p + d * (k - 1)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _functional_conv(step: TorchStep, shapes: dict) -> _Conv | None:
    """``F.conv2d`` / ``F.conv_transpose2d`` (a conv subclass with its own forward, a bare conv
    traced as the root) with its kernel read off the weight's propagated shape."""
    transposed = step.target in (F.conv_transpose2d, torch.conv_transpose2d)
    names = (("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation") if transposed
             else ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))
    args = dict(zip(names, step.args)) | dict(step.kwargs)
    weight = args.get("weight")
    shape = shapes.get(weight.value) if isinstance(weight, Ref) else None
    params = [args.get(n, 1 if n in ("stride", "dilation") else 0) for n in ("stride", "padding", "dilation")]
    if shape is None or len(shape) != 4 or any(isinstance(v, Ref) for v in params):
        return None
    stride, padding, dilation = params
    return _Conv(tuple(shape[2:]), _pair(stride), _pair(dilation),
                 padding if isinstance(padding, str) else _pair(padding), transposed)


_FUNCTIONAL_CONVS = (F.conv2d, torch.conv2d, F.conv_transpose2d, torch.conv_transpose2d)


def _spatial_rule(step: Step, shapes: dict):
    """``(factor, back)`` for a step: ``factor`` the per-axis resolution of its output over its
    image input's; ``back(axis, a, b) -> (lo, hi)``: the pixels of that input that outputs
    ``a..b`` read (every other image input is read at ``a..b``: a residual, a concatenation).
    ``None`` for a step whose geometry is not known."""
    if isinstance(step, ConvStep):
        k, p = step.kernel, step.padding  # stride 1: the padding the fused kernel uses
        if step.transposed:
            return _ONE, lambda axis, a, b: (a + p[axis] - k[axis] + 1, b + p[axis])
        return _ONE, lambda axis, a, b: (a - p[axis], b - p[axis] + k[axis] - 1)
    if step.kind == "get_attr":
        return _ONE, None
    target = step.target
    if step.kind == "call_function":
        if target in _POINTWISE_FUNCTIONS or _is_check(target):
            return _ONE, None
        if target in _FUNCTIONAL_CONVS:
            conv = _functional_conv(step, shapes)
            return None if conv is None else (conv.factor, conv.back)
        if target in (F.pixel_shuffle, torch.pixel_shuffle, F.pixel_unshuffle, torch.pixel_unshuffle):
            r = step.args[1] if len(step.args) > 1 else step.kwargs.get("upscale_factor",
                                                                         step.kwargs.get("downscale_factor"))
            if not isinstance(r, int):
                return None
            return _shuffle_rule(r, target in (F.pixel_shuffle, torch.pixel_shuffle))
        return None
    if step.kind == "call_method":
        return (_ONE, None) if target in _POINTWISE_METHODS else None
    if step.kind == "call_module":
        if isinstance(target, _POINTWISE_MODULES):
            return _ONE, None
        if isinstance(target, (nn.PixelShuffle, nn.PixelUnshuffle)):
            shuffle = isinstance(target, nn.PixelShuffle)
            return _shuffle_rule(target.upscale_factor if shuffle else target.downscale_factor, shuffle)
        if isinstance(target, nn.Upsample) and target.mode == "nearest" and target.size is None:
            f = target.scale_factor
            f = f if isinstance(f, tuple) else (f, f)
            if all(float(x).is_integer() for x in f):
                f = tuple(int(x) for x in f)
                return (Fraction(f[0]), Fraction(f[1])), lambda axis, a, b: (a // f[axis], b // f[axis])
            return None
        if isinstance(target, (nn.Conv2d, nn.ConvTranspose2d)):
            conv = _Conv(tuple(target.kernel_size), tuple(target.stride), tuple(target.dilation),
                         target.padding if isinstance(target.padding, str) else tuple(target.padding),
                         isinstance(target, nn.ConvTranspose2d))
            return conv.factor, conv.back
    return None


def _shuffle_rule(r: int, shuffle: bool):
    if shuffle:  # fine pixel q comes from coarse pixel q // r
        return (Fraction(r), Fraction(r)), lambda axis, a, b: (a // r, b // r)
    return (Fraction(1, r), Fraction(1, r)), lambda axis, a, b: (a * r, b * r + r - 1)


def _value_scales(plan: Plan) -> tuple[dict[int, tuple[Fraction, Fraction]], str | None]:
    """Each image-like value's per-axis resolution relative to the inputs (values computed
    from the inputs; parameters have none), and the first step that loses it, described."""
    scales = {v: _ONE for v in plan.inputs}
    lost = None
    for step in plan.steps:
        image_inputs = [v for v in step.reads if v in scales]
        if not image_inputs:
            continue
        rule = _spatial_rule(step, plan.shapes)
        main = step.src if isinstance(step, ConvStep) else image_inputs[0]
        if main not in scales:
            continue
        if rule is None or any(scales[v] != scales[main] for v in image_inputs):
            lost = lost or f"step {step.name} ({step.describe()})"
            continue
        factor = rule[0]
        scales[step.dst] = (scales[main][0] * factor[0], scales[main][1] * factor[1])
    return scales, lost


def _reach(plan: Plan, scales: dict) -> tuple[tuple[tuple[int, int], tuple[int, int]] | None, str | None]:
    """The input pixels the output block over input pixel 0 reads, as ``((up, down), (left,
    right))``, walking the steps backwards with the pixels each value must supply (the hull
    of what its readers need); and the first step whose reach is unknown."""
    need: dict[int, list[list[int]]] = {}

    def merge(v, box):
        old = need.get(v)
        need[v] = box if old is None else [[min(o[0], n[0]), max(o[1], n[1])] for o, n in zip(old, box)]

    for v in plan.output_values:
        s = scales.get(v)
        if s is None or any(x.denominator != 1 for x in s):
            return None, None
        merge(v, [[0, int(s[0]) - 1], [0, int(s[1]) - 1]])
    for step in reversed(plan.steps):
        box = need.pop(step.dst, None)
        if box is None:
            continue
        image_inputs = [v for v in step.reads if v in scales]
        if not image_inputs:
            continue
        rule = _spatial_rule(step, plan.shapes)
        if rule is None:
            return None, f"step {step.name} ({step.describe()})"
        main = step.src if isinstance(step, ConvStep) else image_inputs[0]
        for v in image_inputs:
            if v == main and rule[1] is not None:
                merge(v, [list(rule[1](axis, a, b)) for axis, (a, b) in enumerate(box)])
            else:
                merge(v, box)
    boxes = [need[v] for v in plan.inputs if v in need]
    if not boxes:
        return ((0, 0), (0, 0)), None
    lo = [min(b[axis][0] for b in boxes) for axis in (0, 1)]
    hi = [max(b[axis][1] for b in boxes) for axis in (0, 1)]
    return ((-lo[0], hi[0]), (-lo[1], hi[1])), None


def _geometry(plan: Plan) -> Geometry:
    scales, lost = _value_scales(plan)
    outs = plan.output_values
    out_scales = {scales.get(v) for v in outs}
    scale = next(iter(out_scales)) if len(out_scales) == 1 else None
    reach, unknown = _reach(plan, scales)
    problem = offset = None
    if scale is None and len(out_scales) > 1 and None not in out_scales:
        problem = "its outputs have different resolutions"
    elif scale is None:
        pass  # not known (``lost`` says where): nothing to refuse, nothing to plan with
    elif scale[0] != scale[1]:
        problem = f"the output has {scale[0]} rows per input row but {scale[1]} columns per input column"
    elif scale[0].denominator != 1 or scale[0] < 1:
        problem = (f"the output has {scale[0]} pixels per input pixel: tiles would have to start at multiples "
                   f"of {scale[0].denominator} input pixels")
    if problem is None:
        low = [(v, s) for v, s in scales.items() if any(x.denominator != 1 for x in s)]
        if low:
            v, s = low[0]
            problem = (f"{plan.names.get(v, f'%{v}')} is at {s[0]} x {s[1]} of the input's resolution: a tile "
                       f"gives the same result as the whole image only if it starts at a multiple of "
                       f"{max(x.denominator for x in s)} input pixels, which tiling does not do")
    if problem is None:
        circular = [s.name for s in plan.torch_steps if s.kind == "call_module"
                    and isinstance(s.target, nn.modules.conv._ConvNd) and s.target.padding_mode == "circular"]
        if circular:
            problem = f"{circular[0]} pads circularly: a tile would wrap around itself, not the image"
    if scale is not None and plan.example_shapes and len(plan.example_shapes[0]) == 4:
        h, w = plan.example_shapes[0][2:]
        shapes = [plan.shapes.get(v) for v in outs]
        if shapes and all(s is not None and len(s) == 4 for s in shapes):
            oh, ow = shapes[0][2:]
            offset = (int(oh - scale[0] * h), int(ow - scale[1] * w)) if all(
                (x * n).denominator == 1 for x, n in zip(scale, (h, w))) else None
            trim = -offset[0] // 2
            if (problem is None and offset[0] == offset[1] < 0 and offset[0] % 2 == 0 and scale == _ONE
                    and reach is not None and min(reach[0][0], reach[1][0]) + trim >= 0
                    and min(reach[0][1], reach[1][1]) - trim >= 0):
                # unpadded convolutions: output pixel o lies over input pixel o + trim
                reach = tuple((up + trim, down - trim) for up, down in reach)
                return Geometry(scale, reach, offset, None, unknown or lost, trim)
            if problem is None and offset is not None and offset != (0, 0):
                problem = (f"its output is {oh}x{ow} for a {h}x{w} input, not {scale[0] * h}x{scale[1] * w} "
                           f"(scale {scale[0]}"
                           + (": its convolutions trim the border unevenly" if max(offset) < 0 else "") + ")")
    return Geometry(scale, reach, offset, problem, unknown or lost)


def _is_check(fn) -> bool:
    """An input check (``redkern.validation.check_image_batch``): traced as a leaf, no reach."""
    return getattr(fn, "_redkern_check", False)


# --- making a plan -------------------------------------------------------------------------------

def own_containers(m: nn.Module) -> None:
    """Give a shallow copy of a module its own child/parameter/buffer dicts (same objects in them)."""
    for name in ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"):
        if name in m.__dict__:
            m.__dict__[name] = copy.copy(m.__dict__[name])


def reference_view(module: nn.Module, detach: bool = False) -> nn.Module:
    """A fused module (``redkern.fuse``) as an instance of its reference class, sharing its
    submodules and parameters, so the reference ``forward`` can be traced or pickled (with
    ``detach``, in containers of its own). Any other module is returned as it is."""
    cls = getattr(type(module), "_redkern_reference_class", None)
    if cls is None:
        return module
    view = object.__new__(cls)  # not copy.copy: a fused module's pickling goes through here
    view.__dict__.update({k: v for k, v in module.__dict__.items() if k not in RUNTIME_ATTRIBUTES})
    if detach:
        own_containers(view)
    return view


def conv_geometry(conv: nn.Module) -> tuple[str | None, tuple[int, int]]:
    """``(why it cannot be fused or None, (ph, pw))`` for a conv module."""
    if type(conv).forward not in (nn.Conv2d.forward, nn.ConvTranspose2d.forward):
        return f"{type(conv).__name__} has its own forward", (0, 0)
    kh, kw = conv.kernel_size
    padding = conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif kh % 2 and kw % 2:  # "same" with an odd kernel pads symmetrically
            padding = (kh // 2, kw // 2)
        else:
            return f"padding='same' with the even kernel {kh}x{kw} pads unevenly", (0, 0)
    ph, pw = padding
    if tuple(conv.stride) != (1, 1):
        return f"stride {tuple(conv.stride)}: the fused kernels are stride 1", (ph, pw)
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)}: the fused kernels are not dilated", (ph, pw)
    if conv.groups != 1:
        return f"groups={conv.groups}: the fused kernels are dense", (ph, pw)
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}: the fused kernels pad with zeros", (ph, pw)
    if isinstance(conv, nn.ConvTranspose2d) and tuple(conv.output_padding) != (0, 0):
        return f"output_padding {tuple(conv.output_padding)}", (ph, pw)
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        return f"padding {(ph, pw)} beyond kernel - 1 for a {kh}x{kw} kernel", (ph, pw)
    return None, (ph, pw)


_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, F.relu_}
_TANH_FUNCTIONS = {torch.tanh, F.tanh}


def _activation(node: torch.fx.Node, modules: dict) -> tuple[Act, float, nn.Module | None] | None:
    """The activation ``node`` applies to its first argument, or None."""
    if node.op == "call_module":
        m = modules[node.target]
        if type(m) is nn.ReLU:
            return Act.RELU, 0.0, None
        if type(m) is nn.LeakyReLU:
            return Act.LEAKY_RELU, float(m.negative_slope), None
        if type(m) is nn.PReLU:
            return Act.PRELU, 0.0, m
        if type(m) is nn.Tanh:
            return Act.TANH, 0.0, None
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS and len(node.args) == 1 and set(node.kwargs) <= {"inplace"}:
            return Act.RELU, 0.0, None
        if node.target in _TANH_FUNCTIONS and len(node.args) == 1 and not node.kwargs:
            return Act.TANH, 0.0, None
        if node.target is F.leaky_relu and set(node.kwargs) <= {"negative_slope", "inplace"}:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            if isinstance(slope, (int, float)):
                return Act.LEAKY_RELU, float(slope), None
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1:
        return Act.RELU, 0.0, None
    if node.op == "call_method" and node.target in ("tanh", "tanh_") and len(node.args) == 1:
        return Act.TANH, 0.0, None
    return None


_ADDS = {operator.add, operator.iadd, torch.add}
_SUBS = {operator.sub, operator.isub, torch.sub}
_MULS = {operator.mul, operator.imul, torch.mul}
_DIVS = {operator.truediv, operator.itruediv, torch.div}


def _binary(node: torch.fx.Node):
    """``(kind, a, b, kwargs)`` for an add/sub/mul/div node (function or method), else None."""
    if node.op == "call_function":
        fn = node.target
        kind = ("add" if fn in _ADDS else "sub" if fn in _SUBS else "mul" if fn in _MULS
                else "div" if fn in _DIVS else None)
    elif node.op == "call_method":
        kind = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                "div": "div", "div_": "div"}.get(node.target)
    else:
        kind = None
    if kind is None or len(node.args) != 2:
        return None
    return kind, node.args[0], node.args[1], dict(node.kwargs)


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _is_inplace(node: torch.fx.Node, modules: dict) -> bool:
    """Whether ``node`` may write into one of its inputs."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return (node.target in _INPLACE_OPERATORS or bool(node.kwargs.get("inplace", False))
                or (name.endswith("_") and not name.startswith("__")))
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    return False


class _Matcher:
    """Folds what follows a convolution node into its epilogue, one node at a time."""

    def __init__(self, conv_node, modules, shapes, output_nodes):
        self.modules, self.shapes, self.output_nodes = modules, shapes, output_nodes
        self.last = conv_node
        self.nodes = [conv_node]
        self.bn = None
        self.alpha = 1.0
        self.bias_scale = 1.0
        self.act = None            # (Act, slope, module)
        self.residual = Residual.NONE
        self.beta = 1.0
        self.extra = None
        self.act2 = None

    def next_node(self):
        """The only user of the current value, if the value is used by nothing else."""
        v = self.last
        if len(v.users) != 1 or v in self.output_nodes:
            return None
        return next(iter(v.users))

    def same_shape(self, a, b) -> bool:
        sa, sb = self.shapes.get(a), self.shapes.get(b)
        return sa is not None and sa == sb

    def try_absorb(self, u) -> bool:
        a = _activation(u, self.modules)
        if a is not None and u.args and u.args[0] is self.last:
            if self.residual == Residual.AFTER_ACT:
                if self.act2 is not None:
                    return False
                self.act2 = a
            elif self.act is None:
                self.act = a
            else:
                return False
            return self._take(u)
        if u.op == "call_module" and type(self.modules[u.target]) is nn.BatchNorm2d:
            bn = self.modules[u.target]
            if (self.bn is None and len(self.nodes) == 1 and bn.track_running_stats
                    and bn.running_mean is not None and bn.num_features == self.modules[self.nodes[0].target].out_channels):
                self.bn = bn
                return self._take(u)
            return False
        b = _binary(u)
        if b is None:
            return False
        kind, lhs, rhs, kwargs = b
        mine_first = lhs is self.last
        other = rhs if mine_first else lhs
        if other is self.last:
            return False
        if kind in ("mul", "div") and isinstance(other, (int, float)) and not isinstance(other, bool) \
                and self.act is None and self.residual == Residual.NONE and not kwargs:
            if kind == "div" and not mine_first:
                return False
            c = float(other) if kind == "mul" else 1.0 / float(other)
            self.alpha *= c
            self.bias_scale *= c
            return self._take(u)
        if kind in ("add", "sub") and isinstance(other, torch.fx.Node) and self.residual == Residual.NONE:
            if set(kwargs) - {"alpha"} or not self.same_shape(other, u) or not self.same_shape(self.last, u):
                return False
            beta = kwargs.get("alpha", 1)
            if not isinstance(beta, (int, float)):
                return False
            if kind == "sub" and mine_first:
                beta = -beta
            elif kind == "sub":  # other - mine: negate the sum, which only a pre-activation allows
                if self.act is not None:
                    return False
                self.alpha, self.bias_scale = -self.alpha, -self.bias_scale
            if kind == "add" and not mine_first and "alpha" in kwargs:
                return False  # torch.add(other, mine, alpha=c) scales mine: not an epilogue
            self.residual = Residual.AFTER_ACT if self.act is not None else Residual.BEFORE_ACT
            self.beta, self.extra = float(beta), other
            return self._take(u)
        return False

    def _take(self, u) -> bool:
        self.nodes.append(u)
        self.last = u
        return True

    def epilogue(self) -> Epilogue:
        act, slope, _ = self.act or (Act.IDENTITY, 0.01, None)
        act2, slope2, _ = self.act2 or (Act.IDENTITY, 0.01, None)
        return Epilogue(act=act, alpha=self.alpha, residual=self.residual, beta=self.beta, act2=act2,
                        slope=slope if act == Act.LEAKY_RELU else 0.01,
                        slope2=slope2 if act2 == Act.LEAKY_RELU else 0.01)


def plan(module: nn.Module, example_inputs=None) -> Plan:
    """The layer plan of ``module`` (see the module docstring), by tracing its ``forward``.

    ``example_inputs``: a tensor, a tuple of tensors, or shapes, giving the inputs' shapes the
    values are propagated with (fake tensors: nothing is computed). By default one image
    ``[1, C, 32, 32]`` with ``C`` the first convolution's input channels, or
    ``[1, *module.example_input_shape]`` where the module defines that ``(C, H, W)``. Shapes decide which
    additions can join an epilogue (both sides the same shape). Raises ``PlanError`` when
    ``forward`` does not trace.
    """
    module = reference_view(module)
    try:
        graph = _Tracer().trace(module)
    except Exception as e:
        raise PlanError(f"{type(module).__name__}.forward does not trace with torch.fx "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e})") from e
    modules = dict(module.named_modules())
    for node in list(graph.nodes):  # nn.Identity (a disabled BatchNorm, say) passes its input on
        if node.op == "call_module" and type(modules[node.target]) is nn.Identity and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    gm = torch.fx.GraphModule(module, graph)
    examples = _example_inputs(module, graph, example_inputs)
    node_shapes, note = _propagate(gm, examples)
    return _plan_from_graph(type(module).__name__, graph, modules, node_shapes, examples, note)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with convolutions of subclasses that keep the stock ``forward`` (a
    fixed mean-shift conv, say) as leaves too, so the planner sees them as the layers they are."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and \
                type(m).forward in (nn.Conv2d.forward, nn.ConvTranspose2d.forward):
            return True
        return super().is_leaf_module(m, qualname)


def _example_inputs(module, graph, example_inputs) -> tuple | None:
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if example_inputs is None:
        first = next((m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
        if first is None or len(placeholders) != 1:
            return None
        p = next(module.parameters(), None)
        like = dict(dtype=p.dtype, device=p.device) if p is not None else {}
        # a network whose first conv reads more than its input (SRN-DeblurNet's reads the
        # image and an estimate concatenated) or that needs sizes of a multiple says so
        shape = getattr(module, "example_input_shape", None) or (first.in_channels, 32, 32)
        return (torch.empty(1, *shape, **like),)
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(isinstance(s, int) for s in example_inputs):
        return (torch.empty(*example_inputs),)
    return tuple(torch.empty(*e) if isinstance(e, (tuple, list, torch.Size)) else e for e in example_inputs)


def _propagate(gm: torch.fx.GraphModule, examples) -> tuple[dict, str | None]:
    """Each node's output shape for ``examples``, with fake tensors (no arithmetic is done)."""
    if examples is None:
        return {}, "no example input: shapes unknown, so no addition is fused"
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    try:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fakes = [mode.from_tensor(e) if isinstance(e, Tensor) else e for e in examples]
        FakeTensorProp(gm, mode).propagate(*fakes)
    except Exception as e:
        return {}, (f"shape propagation with inputs {[tuple(e.shape) for e in examples if isinstance(e, Tensor)]} "
                    f"failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); no addition is fused")
    shapes = {}
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, Tensor):
            shapes[node.name] = tuple(val.shape)
    return shapes, None


def _plan_from_graph(root: str, graph, modules, node_shapes, examples, note) -> Plan:
    nodes = list(graph.nodes)
    output_node = next(n for n in nodes if n.op == "output")
    output_nodes = set(output_node.all_input_nodes)
    shapes_by_node = {n: node_shapes[n.name] for n in nodes if n.name in node_shapes}
    position = {n: i for i, n in enumerate(nodes)}

    # Fusion groups: each eligible convolution with what follows it and only it.
    groups, skipped = {}, {}  # last node -> matcher; node -> reason it stays in PyTorch
    absorbed = set()
    for node in nodes:
        if node.op != "call_module" or node in absorbed:
            continue
        m = modules[node.target]
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        why, _ = conv_geometry(m)
        if why is not None:
            skipped[node] = why
            continue
        match = _Matcher(node, modules, shapes_by_node, output_nodes)
        while (u := match.next_node()) is not None:
            between = [n for n in nodes[position[match.last] + 1:position[u]]]
            if any(_is_inplace(n, modules) for n in between):
                break  # a mutation in between could change what the fused step reads
            if not match.try_absorb(u):
                break
        # The step runs where its last node was: every value it reads exists by then, and no
        # mutation in between (checked above) has changed them.
        groups[match.last] = match
        absorbed.update(match.nodes)

    values: dict[torch.fx.Node, int] = {}
    names: dict[int, str] = {}
    shapes: dict[int, tuple] = {}
    inputs, steps = [], []

    def new_value(node, name=None):
        v = len(names)
        values[node] = v
        names[v] = name or node.name
        if node in shapes_by_node:
            shapes[v] = shapes_by_node[node]
        return v

    def ref(a):
        return torch.fx.node.map_arg(a, lambda n: Ref(values[n]))

    for node in nodes:
        if node.op == "placeholder":
            inputs.append(new_value(node))
        elif node in groups:
            g = groups[node]
            conv_node = g.nodes[0]
            conv = modules[conv_node.target]
            src = values[conv_node.args[0]]
            extra = values[g.extra] if g.extra is not None else None
            dst = new_value(node, conv_node.target)
            steps.append(ConvStep(
                name=conv_node.target, conv=conv, src=src, dst=dst, extra=extra, epilogue=g.epilogue(),
                bias_scale=g.bias_scale, bn=g.bn, act_module=(g.act or (None, None, None))[2],
                act2_module=(g.act2 or (None, None, None))[2], absorbed=tuple(n.name for n in g.nodes[1:])))
            for n in g.nodes:  # interior nodes are nobody's input outside the group
                values.setdefault(n, dst)
        elif node in absorbed:
            continue
        elif node.op == "output":
            output = ref(node.args[0])
        else:
            target = modules[node.target] if node.op == "call_module" else node.target
            reason = skipped.get(node) or _why_not_fused(node, modules)
            dst = new_value(node)
            steps.append(TorchStep(node.name, node.op, target, ref(tuple(node.args)), ref(dict(node.kwargs)),
                                   dst, reason))
    return Plan(root, inputs, steps, output, names, shapes,
                tuple(tuple(e.shape) for e in examples if isinstance(e, Tensor)) if examples else (),
                [note] if note else [])


def _why_not_fused(node, modules) -> str:
    if node.op == "get_attr":
        return "a parameter or buffer read directly"
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.BatchNorm2d):
            return "BatchNorm not directly after a convolution used only by it"
        if isinstance(m, (nn.PixelShuffle, nn.PixelUnshuffle)):
            return "pixel rearrangement: a copy, no arithmetic to fuse"
        if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Tanh)):
            return "activation not directly after a convolution used only by it"
        return f"{type(m).__name__}: no fused kernel for it"
    if _is_check(node.target):
        return "input check"
    if _binary(node) is not None or _activation(node, modules) is not None:
        return "not directly after a convolution used only by it (or shapes differ)"
    return "no fused kernel for it"


# --- the plan as a table -------------------------------------------------------------------------

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


def _pair_text(plan: Plan, i: int, pairs) -> str:
    """The report's words on step ``i``'s pairing (``executor.Pairing``)."""
    if i in pairs.first:
        return f"; paired with {plan.steps[i + 1].name} ({pairs.first[i]})"
    if i - 1 in pairs.first:
        return f"; in {plan.steps[i - 1].name}'s launch"
    if i in pairs.why_not:
        return f"; not paired: {pairs.why_not[i]}"
    return ""


def plan_table(plan: Plan, chosen: dict | None = None, title: str | None = None,
               pairs: dict | None = None) -> str:
    """The plan as a table: one row per fused convolution and per PyTorch operation.
    ``chosen``: ``LayerBackends.for_call``'s answer, adding the backend and algorithm;
    ``pairs``: ``LayerBackends.pairs_for``'s answer, adding which layers run two to a launch
    and why the others do not."""
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
            if pairs is not None:
                where += _pair_text(plan, i, pairs)
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
