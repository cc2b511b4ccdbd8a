"""The fused convolution as a torch custom op, defined once: ``torch.ops.redkern.conv2d_fused``.

    y = torch.ops.redkern.conv2d_fused(x, weight, bias, extra, act_weight, act2_weight,
                                       transposed, padding, act, slope, alpha, residual, beta,
                                       act2, slope2, backend)

One stride-1 convolution of any kernel size (``weight`` in ``nn.Conv2d`` layout
``[Cout, Cin, kh, kw]``, or with ``transposed`` ``nn.ConvTranspose2d`` layout
``[Cin, Cout, kh, kw]``; ``padding`` ``[ph, pw]`` as those modules take it) followed by the
epilogue of ``redkern.epilogue`` (``Epilogue.encode()`` gives the seven scalars):
``v = alpha * conv + bias``, then ``act(v)``, ``act(v + beta * extra)`` or
``act2(act(v) + beta * extra)``. ``bias`` may be None; ``extra`` is required exactly when the
epilogue has a residual; ``act_weight``/``act2_weight`` are PReLU weights (1 or Cout values).

The three RED-Net ops keep their schemas as thin wrappers over the same implementation:

- ``conv_relu(x, weight, bias)``: ``relu(conv2d(x, weight) + bias)``, 3x3, padding 1;
- ``deconv_relu(x, weight, bias, skip=None)``: ``relu(conv_transpose2d(x, weight) + bias)``,
  and with a skip ``relu(. + skip)``;
- ``deconv_residual(x, weight, bias, residual)``: ``conv_transpose2d(x, weight) + bias + residual``.

Every op takes a trailing ``backend`` string: ``"auto"`` (CPU: our C++ kernels; CUDA: Triton,
else CUDA C++) or one of ``redkern.backends()``'s names to force it. Asking for one that
cannot run raises ``BackendUnavailable`` with the reason; nothing falls back silently.

Outputs keep the input's memory format: a channels_last input (``x.stride(1) == 1``) gives a
channels_last output, anything else a contiguous NCHW output. Gradients are registered for
every tensor input, computed by the backend's own kernels from what the forward kept (see
"autograd" below); ``fused_conv`` picks ``conv2d_fused_train`` where training needs the
pre-join tensor too, so fused models train without computing any convolution twice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends as _backends
from .backends.common import is_channels_last
from .epilogue import (ADD_RESIDUAL, RELU, RELU_ADD_RELU, Act, Epilogue, Residual, activation,
                       kernel_slopes, output_size, reference_conv2d)

__all__ = ["conv2d_fused", "conv2d_fused_train", "fused_conv", "conv_relu", "deconv_relu", "deconv_residual", "check_conv_args"]


def check_conv_args(where: str, x: Tensor, weight: Tensor, bias: Tensor | None, extra: Tensor | None,
                    transposed: bool, padding, epilogue: Epilogue, act_weight=None, act2_weight=None,
                    backend: str = "auto", extra_name: str = "extra") -> tuple[int, int, int]:
    """Validate one fused layer's arguments; return ``(Cout, OH, OW)``. Messages name the
    input's and the weight's shapes and what would be allowed."""
    from .validation import check_image_batch

    check_image_batch(x, None, weight, where)
    cin = x.shape[1]
    layout = "[Cin, Cout, kh, kw] (ConvTranspose2d layout)" if transposed else "[Cout, Cin, kh, kw] (Conv2d layout)"
    if weight.dim() != 4:
        raise ValueError(f"{where}: weight must be 4-D {layout}, got shape {tuple(weight.shape)}")
    w_cin, cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
    if w_cin != cin:
        raise ValueError(f"{where}: weight must be {layout} with Cin={cin} matching the input {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")
    if min(weight.shape) < 1:
        raise ValueError(f"{where}: the weight {tuple(weight.shape)} ({layout}) has an empty dimension; "
                         "channels and kernel sizes must be >= 1")
    kh, kw = weight.shape[2:]
    if len(padding) != 2 or not all(isinstance(p, int) for p in padding):
        raise ValueError(f"{where}: padding must be two integers [ph, pw], got {padding!r}")
    ph, pw = padding
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        raise ValueError(f"{where}: padding {list(padding)} for a {kh}x{kw} kernel; the fused kernels take "
                         f"0 <= padding <= kernel - 1 (0..{kh - 1}, 0..{kw - 1})")
    oh, ow = output_size(x.shape[2], kh, ph, transposed), output_size(x.shape[3], kw, pw, transposed)
    if oh < 1 or ow < 1:
        raise ValueError(f"{where}: a {kh}x{kw} kernel with padding {list(padding)} leaves no output of the "
                         f"{x.shape[2]}x{x.shape[3]} input {tuple(x.shape)}")
    for name, t, want in (("bias", bias, (cout,)), (extra_name, extra, (x.shape[0], cout, oh, ow))):
        if t is None:
            continue
        if tuple(t.shape) != want:
            raise ValueError(f"{where}: {name} must have shape {want} for the input {tuple(x.shape)} and the "
                             f"weight {tuple(weight.shape)}, got {tuple(t.shape)}")
        if t.device != x.device or t.dtype != x.dtype:
            raise ValueError(f"{where}: {name} is {t.dtype} on {t.device}, the input {x.dtype} on {x.device}")
    if epilogue.needs_extra != (extra is not None):
        raise ValueError(f"{where}: the epilogue {epilogue.formula()} "
                         + (f"needs {extra_name}" if epilogue.needs_extra else f"takes no {extra_name}"))
    for name, act, t in (("act_weight", epilogue.act, act_weight), ("act2_weight", epilogue.act2, act2_weight)):
        if act == Act.PRELU and t is None:
            raise ValueError(f"{where}: PRELU needs {name} (1 or {cout} values)")
        if t is not None and (act != Act.PRELU or t.numel() not in (1, cout) or t.device != x.device):
            raise ValueError(f"{where}: {name} must be a PReLU weight of 1 or {cout} values on {x.device} "
                             f"for act {act.name}, got shape {tuple(t.shape)} on {t.device}")
    if backend not in _backends.BACKEND_NAMES:
        raise ValueError(f"{where}: unknown backend {backend!r}; choose one of {_backends.BACKEND_NAMES}")
    return cout, oh, ow


def _output_strides(x: Tensor, shape) -> tuple[int, ...]:
    """Strides of the output an op returns for input ``x``: its memory format, dense."""
    _, c, h, w = shape
    if is_channels_last(x):
        return (h * w * c, 1, w * c, c)
    return (c * h * w, h * w, w, 1)


def _empty_output(x: Tensor, shape) -> Tensor:
    return torch.empty_strided(shape, _output_strides(x, shape), dtype=x.dtype, device=x.device)


def _fake_output(x: Tensor, weight: Tensor, transposed: bool, padding) -> Tensor:
    """The output a layer gives for ``x`` (the fake implementations' one shape rule)."""
    cout = weight.shape[1] if transposed else weight.shape[0]
    kh, kw = weight.shape[2:]
    return _empty_output(x, (x.shape[0], cout, output_size(x.shape[2], kh, padding[0], transposed),
                             output_size(x.shape[3], kw, padding[1], transposed)))


def _forward(where, x, weight, bias, extra, act_weight, act2_weight, transposed, padding, epilogue, backend,
             extra_name="extra"):
    cout, oh, ow = check_conv_args(where, x, weight, bias, extra, transposed, padding, epilogue,
                                   act_weight, act2_weight, backend, extra_name)
    impl = _backends.resolve(backend, x.device, x.dtype)
    if bias is None:
        bias = torch.zeros(cout, dtype=x.dtype, device=x.device)
    y = impl.conv2d(x, weight, bias, extra, transposed=transposed, padding=tuple(padding), epilogue=epilogue,
                    slopes=kernel_slopes(epilogue.act, epilogue.slope, act_weight, cout, x.device),
                    slopes2=kernel_slopes(epilogue.act2, epilogue.slope2, act2_weight, cout, x.device))
    shape = (x.shape[0], cout, oh, ow)
    if y.stride() == _output_strides(x, shape):
        return y
    out = _empty_output(x, shape)  # backends write NHWC; give back the input's memory format
    out.copy_(y)
    return out


# --- the general op ---------------------------------------------------------------------------

@torch.library.custom_op("redkern::conv2d_fused", mutates_args=())
def conv2d_fused(x: Tensor, weight: Tensor, bias: Tensor | None, extra: Tensor | None,
                 act_weight: Tensor | None, act2_weight: Tensor | None, transposed: bool,
                 padding: list[int], act: int, slope: float, alpha: float, residual: int, beta: float,
                 act2: int, slope2: float, backend: str = "auto") -> Tensor:
    """One fused stride-1 convolution with its epilogue (see the module docstring)."""
    e = Epilogue.decode(act, slope, alpha, residual, beta, act2, slope2)
    return _forward("redkern.conv2d_fused", x, weight, bias, extra, act_weight, act2_weight, transposed,
                    padding, e, backend)


@conv2d_fused.register_fake
def _(x, weight, bias, extra, act_weight, act2_weight, transposed, padding, act, slope, alpha, residual,
      beta, act2, slope2, backend="auto"):
    return _fake_output(x, weight, transposed, padding)


# --- the three RED-Net ops: their schemas, the general implementation ---------------------------

def _check_3x3(where, weight):
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"{where}: weight must be a 3x3 kernel, got shape {tuple(weight.shape)} "
                         "(use torch.ops.redkern.conv2d_fused for other sizes)")


@torch.library.custom_op("redkern::conv_relu", mutates_args=())
def conv_relu(x: Tensor, weight: Tensor, bias: Tensor, backend: str = "auto") -> Tensor:
    """``relu(conv2d(x, weight, bias, padding=1))`` in one fused pass."""
    _check_3x3("redkern.conv_relu", weight)
    return _forward("redkern.conv_relu", x, weight, bias, None, None, None, False, [1, 1], RELU, backend)


@torch.library.custom_op("redkern::deconv_relu", mutates_args=())
def deconv_relu(x: Tensor, weight: Tensor, bias: Tensor, skip: Tensor | None = None,
                backend: str = "auto") -> Tensor:
    """``relu(conv_transpose2d(x, weight, bias, padding=1))``, then ``relu(. + skip)`` if given."""
    _check_3x3("redkern.deconv_relu", weight)
    e = RELU if skip is None else RELU_ADD_RELU
    return _forward("redkern.deconv_relu", x, weight, bias, skip, None, None, True, [1, 1], e, backend,
                    "skip/residual")


@torch.library.custom_op("redkern::deconv_residual", mutates_args=())
def deconv_residual(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor,
                    backend: str = "auto") -> Tensor:
    """``conv_transpose2d(x, weight, bias, padding=1) + residual`` (no activation)."""
    _check_3x3("redkern.deconv_residual", weight)
    return _forward("redkern.deconv_residual", x, weight, bias, residual, None, None, True, [1, 1],
                    ADD_RESIDUAL, backend, "skip/residual")


def _fake_3x3(x, weight, transposed):
    cout = weight.shape[1] if transposed else weight.shape[0]
    return _empty_output(x, (x.shape[0], cout, x.shape[2], x.shape[3]))


conv_relu.register_fake(lambda x, weight, bias, backend="auto": _fake_3x3(x, weight, False))
deconv_relu.register_fake(lambda x, weight, bias, skip=None, backend="auto": _fake_3x3(x, weight, True))
deconv_residual.register_fake(lambda x, weight, bias, residual, backend="auto": _fake_3x3(x, weight, True))


# --- autograd -------------------------------------------------------------------------------
#
# What the forward keeps for the backward, chosen by the epilogue, so nothing is recomputed:
# - act IDENTITY, RELU, TANH or LEAKY_RELU with slope >= 0 ("readable from the output": its
#   derivative is a function of act(v)), residual NONE or BEFORE_ACT: the output y alone, the
#   tensor the next layer keeps as its input anyway;
# - otherwise (PRELU, LEAKY_RELU with a negative slope, or the residual AFTER_ACT) the op
#   ``conv2d_fused_train`` runs the kernel up to the first activation (or only its linear part)
#   and PyTorch the rest; it returns that pre-join tensor too, and the backward reads it: one
#   map per layer, as many as PyTorch keeps for the same modules.
# The backward runs our kernels: the gradient of the input is the backend's forward convolution
# of the output gradient with the same weight read as the other layout (a Conv2d weight as a
# ConvTranspose2d one and back: the flipped, channel-swapped convolution), the weight's and the
# bias's the backend's ``conv2d_weight_grad`` (PyTorch's ``convolution_backward`` where a
# backend has none: ``redkern.backends()`` says so).

def _readable_from_output(act: Act, slope: float) -> bool:
    return act in (Act.IDENTITY, Act.RELU, Act.TANH) or (act == Act.LEAKY_RELU and slope >= 0)


def _through_act_by_output(g: Tensor, y: Tensor, act: Act, slope: float) -> Tensor:
    """``g * act'(v)`` from ``y = act(v)`` (``_readable_from_output`` activations)."""
    if act == Act.IDENTITY:
        return g
    if act == Act.RELU:
        return torch.ops.aten.threshold_backward(g, y, 0)
    if act == Act.LEAKY_RELU:
        return torch.where(y > 0, g, g * slope)
    if act == Act.TANH:
        return g * (1 - y * y)
    raise ValueError(f"the derivative of {act!r} cannot be read from its output")


def _act_grad(v: Tensor, act: Act, slope: float, weight: Tensor | None) -> Tensor:
    """d act(v) / dv."""
    if act == Act.IDENTITY:
        return torch.ones_like(v)
    if act == Act.RELU:
        return (v > 0).to(v.dtype)
    if act == Act.LEAKY_RELU:
        return torch.where(v > 0, 1.0, slope).to(v.dtype)
    if act == Act.PRELU:
        w = weight.to(v.dtype).reshape(-1)
        w = w.view(1, -1, 1, 1) if w.numel() > 1 else w.view(1, 1, 1, 1)
        return torch.where(v > 0, torch.ones_like(v), w.expand_as(v))
    if act == Act.TANH:
        return 1 - torch.tanh(v) ** 2
    raise ValueError(f"unknown activation {act!r}")


def _prelu_weight_grad(g: Tensor, v: Tensor, weight: Tensor) -> Tensor:
    """d loss / d PReLU weight, for ``g`` the gradient at PReLU's output and ``v`` its input."""
    contrib = torch.where(v > 0, torch.zeros_like(v), g * v)
    if weight.numel() == 1:
        return contrib.sum().reshape(weight.shape).to(weight.dtype)
    return contrib.sum(dim=(0, 2, 3)).reshape(weight.shape).to(weight.dtype)


def _keeps_pre(e: Epilogue) -> bool:
    """The backward of ``e`` needs the pre-join tensor (``conv2d_fused_train``), not only y."""
    return e.residual == Residual.AFTER_ACT or not _readable_from_output(e.act, e.slope)


def _pre_epilogue(e: Epilogue) -> Epilogue:
    """The part of ``e`` the kernel runs in training when ``_keeps_pre(e)``: up to the first
    activation if its derivative reads from its output, else only the linear part."""
    act = e.act if _readable_from_output(e.act, e.slope) else Act.IDENTITY
    residual = Residual.NONE if e.residual == Residual.AFTER_ACT else e.residual
    return Epilogue(act=act, alpha=e.alpha, residual=residual, beta=e.beta, slope=e.slope)


def _after_pre(pre: Tensor, e: Epilogue, extra, act_weight, act2_weight) -> Tensor:
    """y from the pre-join tensor: the rest of ``e`` (``_pre_epilogue``) in PyTorch."""
    u = pre if _readable_from_output(e.act, e.slope) else activation(pre, e.act, e.slope, act_weight)
    if e.residual != Residual.AFTER_ACT:
        return u
    joined = _scaled_add(u, extra, e.beta)
    if e.act2 == Act.RELU:
        return joined.relu_()  # a fresh tensor: in place saves a pass over the map
    return activation(joined, e.act2, e.slope2, act2_weight)


def _scaled_add(a: Tensor, b: Tensor, beta: float) -> Tensor:
    """``a + beta * b`` in one pass."""
    return a + b if beta == 1 else torch.add(a, b, alpha=beta)


def _scaled(t: Tensor, beta: float) -> Tensor:
    return t if beta == 1 else beta * t


@torch.library.custom_op("redkern::conv2d_fused_train", mutates_args=())
def conv2d_fused_train(x: Tensor, weight: Tensor, bias: Tensor | None, extra: Tensor | None,
                       act_weight: Tensor | None, act2_weight: Tensor | None, transposed: bool,
                       padding: list[int], act: int, slope: float, alpha: float, residual: int,
                       beta: float, act2: int, slope2: float,
                       backend: str = "auto") -> tuple[Tensor, Tensor]:
    """``conv2d_fused``'s output and the pre-join tensor its backward reads (``_pre_epilogue``):
    for training with epilogues whose derivative the output alone does not give."""
    e = Epilogue.decode(act, slope, alpha, residual, beta, act2, slope2)
    check_conv_args("redkern.conv2d_fused_train", x, weight, bias, extra, transposed, padding, e,
                    act_weight, act2_weight, backend)
    pe = _pre_epilogue(e)
    pre = _forward("redkern.conv2d_fused_train", x, weight, bias, extra if pe.needs_extra else None, None, None,
                   transposed, padding, pe, backend)
    return _after_pre(pre, e, extra, act_weight, act2_weight), pre


@conv2d_fused_train.register_fake
def _(x, weight, bias, extra, act_weight, act2_weight, transposed, padding, act, slope, alpha, residual,
      beta, act2, slope2, backend="auto"):
    return _fake_output(x, weight, transposed, padding), _fake_output(x, weight, transposed, padding)


def fused_conv(x, weight, bias, extra, act_weight, act2_weight, transposed, padding, epilogue: Epilogue,
               backend: str = "auto") -> Tensor:
    """One fused layer through the custom ops: ``conv2d_fused``, or, when autograd will need what
    its output alone does not give, ``conv2d_fused_train`` (its output)."""
    tensors = (x, weight, bias, extra, act_weight, act2_weight)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    op = conv2d_fused_train if training and _keeps_pre(epilogue) else conv2d_fused
    out = op(x, weight, bias, extra, act_weight, act2_weight, transposed, list(padding), *epilogue.encode(),
             backend)
    return out[0] if op is conv2d_fused_train else out


def _save(ctx, x, weight, bias, extra, act_weight, act2_weight, transposed, padding, e, backend, y, pre):
    ctx.save_for_backward(x, weight, bias, extra, act_weight, act2_weight, y, pre)
    ctx.transposed, ctx.padding, ctx.epilogue, ctx.backend = transposed, list(padding), e, backend
    ctx.has_bias = bias is not None


def _setup(ctx, inputs, output):
    x, weight, bias, extra, act_weight, act2_weight, transposed, padding, *codes, backend = inputs
    e = Epilogue.decode(*codes)
    keep_y = not _keeps_pre(e) and e.act != Act.IDENTITY
    _save(ctx, x, weight, bias, extra, act_weight, act2_weight, transposed, padding, e, backend,
          output if keep_y else None, None)


def _setup_train(ctx, inputs, output):
    x, weight, bias, extra, act_weight, act2_weight, transposed, padding, *codes, backend = inputs
    y, pre = output
    ctx.mark_non_differentiable(pre)
    ctx.set_materialize_grads(False)  # pre's gradient is never used: no map of zeros for it
    _save(ctx, x, weight, bias, extra, act_weight, act2_weight, transposed, padding, Epilogue.decode(*codes),
          backend, y, pre)


def _backward(ctx, grad):
    return _grads(ctx, grad, ctx.needs_input_grad[:6]) + (None,) * 10


def _backward_train(ctx, grad, _grad_pre):
    if grad is None:  # grads are not materialized (pre's never is): y was not used either
        return (None,) * 16
    return _backward(ctx, grad)


def _pre_recomputed(ctx, x, weight, bias, extra):
    """The pre-join tensor, computed again by the forward kernel: only when ``conv2d_fused``
    (not ``conv2d_fused_train``) was called with an epilogue that needs it."""
    pe = _pre_epilogue(ctx.epilogue)
    with torch.no_grad():
        return conv2d_fused(x, weight, bias, extra if pe.needs_extra else None, None, None, ctx.transposed,
                            ctx.padding, *pe.encode(), ctx.backend)


def _grads(ctx, grad, needs):
    """Gradients of ``(x, weight, bias, extra, act_weight, act2_weight)`` from what the forward
    kept (see the comment above ``_readable_from_output``)."""
    x, weight, bias, extra, act_weight, act2_weight, y, pre = ctx.saved_tensors
    e = ctx.epilogue
    if pre is None and _keeps_pre(e):
        pre = _pre_recomputed(ctx, x, weight, bias, extra)
    first_by_output = _readable_from_output(e.act, e.slope)
    g_act_w = g_act2_w = g_extra = None
    g = grad
    if e.residual == Residual.AFTER_ACT:
        if _readable_from_output(e.act2, e.slope2) and y is not None:
            g = _through_act_by_output(g, y, e.act2, e.slope2)
        else:
            u = pre if first_by_output else activation(pre, e.act, e.slope, act_weight)
            joined = _scaled_add(u, extra, e.beta)
            if e.act2 == Act.PRELU:
                g_act2_w = _prelu_weight_grad(g, joined, act2_weight)
            g = g * _act_grad(joined, e.act2, e.slope2, act2_weight)
        g_extra = _scaled(g, e.beta)
        by_output = pre  # u = act(v) when first_by_output, else v
    else:
        by_output = y
    mask = None  # g_v is g where mask > 0, else 0: ReLU's derivative, left to the kernels' prologue
    if first_by_output and e.act == Act.RELU:
        g_v, mask = g, by_output
    elif first_by_output:
        g_v = _through_act_by_output(g, by_output, e.act, e.slope)
    else:
        if e.act == Act.PRELU:
            g_act_w = _prelu_weight_grad(g, pre, act_weight)
        g_v = g * _act_grad(pre, e.act, e.slope, act_weight)
    if e.residual == Residual.BEFORE_ACT:
        if mask is not None:
            g_v, mask = _through_act_by_output(g_v, mask, Act.RELU, 0.0), None
        g_extra = _scaled(g_v, e.beta)
    gx, gw, g_bias = _conv_grads(ctx, x, weight, g_v, mask, e.alpha, needs)
    return (gx, gw, g_bias if ctx.has_bias and needs[2] else None, g_extra if needs[3] else None,
            g_act_w if needs[4] else None, g_act2_w if needs[5] else None)


def _conv_grads(ctx, x, weight, g_v, mask, alpha: float, needs):
    """``(grad x, grad weight, grad bias)`` for ``g_v`` (where ``mask > 0``, with a mask), the
    gradient at ``v = alpha * conv + bias``, by the backend that ran the forward (through the ops,
    so that compiled and traced backwards see them too)."""
    g_v = g_v.to(x.dtype)
    mask = None if mask is None else mask.to(x.dtype)
    gx = gw = gb = None
    if needs[0]:
        gx = conv2d_input_grad(g_v, mask, weight, ctx.transposed, ctx.padding, alpha, ctx.backend)
    if needs[1] or needs[2]:
        gw, gb = conv2d_weight_grad(x, g_v, mask, weight, ctx.transposed, ctx.padding, ctx.backend)
        gw = _scaled(gw, alpha).to(weight.dtype) if needs[1] else None
        gb = gb.to(g_v.dtype)
    return gx, gw, gb


def _takes_masks(impl) -> bool:
    """The backend reads ReLU masks in its kernels' prologue (``conv2d(x_mask=)``,
    ``conv2d_weight_grad(grad_mask=)``); for others the ops apply the mask first, in one pass."""
    return getattr(impl, "PROLOGUE_MASKS", False)


@torch.library.custom_op("redkern::conv2d_input_grad", mutates_args=())
def conv2d_input_grad(grad: Tensor, mask: Tensor | None, weight: Tensor, transposed: bool, padding: list[int],
                      alpha: float, backend: str = "auto") -> Tensor:
    """The gradient of a fused layer's input for the gradient ``grad`` at ``v = alpha * conv +
    bias`` (read where ``mask > 0`` when a mask is given): ``alpha`` times the layer's convolution
    run backwards, i.e. the backend's forward with the weight read in the other layout (a Conv2d
    weight as a ConvTranspose2d one and back)."""
    e = Epilogue(alpha=alpha)
    _, oh, ow = check_conv_args("redkern.conv2d_input_grad", grad, weight, None, None, not transposed, padding, e,
                                backend=backend)
    impl = _backends.resolve(backend, grad.device, grad.dtype)
    masks = {}
    if mask is not None and _takes_masks(impl):
        masks = {"x_mask": mask}
    elif mask is not None:
        grad = _through_act_by_output(grad, mask, Act.RELU, 0.0)
    cout = weight.shape[0] if transposed else weight.shape[1]
    y = impl.conv2d(grad, weight, None, transposed=not transposed, padding=tuple(padding), epilogue=e, **masks)
    shape = (grad.shape[0], cout, oh, ow)
    if y.stride() == _output_strides(grad, shape):
        return y
    return _empty_output(grad, shape).copy_(y)


@conv2d_input_grad.register_fake
def _(grad, mask, weight, transposed, padding, alpha, backend="auto"):
    return _fake_output(grad, weight, not transposed, padding)


@torch.library.custom_op("redkern::conv2d_weight_grad", mutates_args=())
def conv2d_weight_grad(x: Tensor, grad: Tensor, mask: Tensor | None, weight: Tensor, transposed: bool,
                       padding: list[int], backend: str = "auto") -> tuple[Tensor, Tensor]:
    """The gradients of a fused layer's weight (``weight``'s shape and layout, float32) and of a
    bias added after its convolution (``[Cout]``, float32), for its input ``x`` and the gradient
    ``grad`` at its convolution's output (read where ``mask > 0`` when a mask is given): the
    backend's ``conv2d_weight_grad`` kernel, or PyTorch's ``convolution_backward`` for a backend
    without one (``redkern.backends()`` says)."""
    impl = _backends.resolve(backend, x.device, x.dtype)
    masks = {}
    if mask is not None and _takes_masks(impl):
        masks = {"grad_mask": mask}
    elif mask is not None:
        grad = _through_act_by_output(grad, mask, Act.RELU, 0.0)
    kernel = getattr(impl, "conv2d_weight_grad", None)
    if kernel is not None:
        return kernel(x, grad, weight_shape=tuple(weight.shape), transposed=transposed, padding=tuple(padding),
                      **masks)
    cout = weight.shape[1] if transposed else weight.shape[0]
    _, gw, gb = torch.ops.aten.convolution_backward(
        grad.contiguous(), x, weight.to(x.dtype), [cout], [1, 1], list(padding), [1, 1], transposed, [0, 0], 1,
        [False, True, True])
    return gw.float(), gb.float()


@conv2d_weight_grad.register_fake
def _(x, grad, mask, weight, transposed, padding, backend="auto"):
    cout = weight.shape[1] if transposed else weight.shape[0]
    return (torch.empty(weight.shape, dtype=torch.float32, device=x.device),
            torch.empty(cout, dtype=torch.float32, device=x.device))


conv2d_fused.register_autograd(_backward, setup_context=_setup)
conv2d_fused_train.register_autograd(_backward_train, setup_context=_setup_train)


def _wrapper_autograd(op, transposed: bool, epilogue_of, takes_extra: bool):
    """Register a RED op's gradients: the general op's, for its 3 or 4 tensor arguments."""
    def setup(ctx, inputs, output):
        x, weight, bias = inputs[:3]
        extra = inputs[3] if takes_extra else None
        backend = inputs[4] if takes_extra else inputs[3]
        e = epilogue_of(extra)
        keep_y = not _keeps_pre(e) and e.act != Act.IDENTITY
        _save(ctx, x, weight, bias, extra, None, None, transposed, [1, 1], e, backend,
              output if keep_y else None, None)

    def backward(ctx, grad):
        needs = ctx.needs_input_grad
        wants_extra = takes_extra and len(needs) > 3 and needs[3]
        gx, gw, gb, g_extra, *_ = _grads(ctx, grad, (needs[0], needs[1], needs[2], wants_extra, False, False))
        return (gx, gw, gb, g_extra, None) if takes_extra else (gx, gw, gb, None)

    op.register_autograd(backward, setup_context=setup)


_wrapper_autograd(conv_relu, False, lambda extra: RELU, takes_extra=False)
_wrapper_autograd(deconv_relu, True, lambda skip: RELU if skip is None else RELU_ADD_RELU, takes_extra=True)
_wrapper_autograd(deconv_residual, True, lambda residual: ADD_RESIDUAL, takes_extra=True)


# --- the reference semantics of the RED-Net ops, used by tests and benchmarks -----------------

def reference_conv_relu(x, weight, bias):
    return reference_conv2d(x, weight, bias, epilogue=RELU)


def reference_deconv_relu(x, weight, bias, skip=None):
    return reference_conv2d(x, weight, bias, skip, transposed=True,
                            epilogue=RELU if skip is None else RELU_ADD_RELU)


def reference_deconv_residual(x, weight, bias, residual):
    return reference_conv2d(x, weight, bias, residual, transposed=True, epilogue=ADD_RESIDUAL)
