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
every tensor input (computed with PyTorch's convolution backward and the epilogue's
derivative), so fused models train.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import backends as _backends
from .backends.common import is_channels_last
from .epilogue import (ADD_RESIDUAL, RELU, RELU_ADD_RELU, Act, Epilogue, Residual, activation,
                       kernel_slopes, output_size, reference_conv2d)

__all__ = ["conv2d_fused", "conv_relu", "deconv_relu", "deconv_residual", "check_conv_args"]


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
    cout = weight.shape[1] if transposed else weight.shape[0]
    kh, kw = weight.shape[2:]
    shape = (x.shape[0], cout, output_size(x.shape[2], kh, padding[0], transposed),
             output_size(x.shape[3], kw, padding[1], transposed))
    return _empty_output(x, shape)


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


def _setup(ctx, inputs, output):
    x, weight, bias, extra, act_weight, act2_weight, transposed, padding, *codes, backend = inputs
    ctx.save_for_backward(x, weight, bias, extra, act_weight, act2_weight)
    ctx.transposed, ctx.padding = transposed, list(padding)
    ctx.epilogue = Epilogue.decode(*codes)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    return _grads(ctx, grad, ctx.needs_input_grad[:6]) + (None,) * 10


def _grads(ctx, grad, needs):
    """Gradients of ``(x, weight, bias, extra, act_weight, act2_weight)``: the pre-activations
    recomputed with PyTorch's convolution, the epilogue's derivative chained into
    ``aten.convolution_backward``."""
    x, weight, bias, extra, act_weight, act2_weight = ctx.saved_tensors
    e = ctx.epilogue
    conv = reference_conv2d(x, weight, None, None, transposed=ctx.transposed, padding=ctx.padding,
                            epilogue=Epilogue())
    v = e.alpha * conv if e.alpha != 1 else conv
    if bias is not None:
        v = v + bias.view(1, -1, 1, 1)
    if e.residual == Residual.BEFORE_ACT:
        v = v + e.beta * extra
    g_act_w = g_act2_w = g_extra = None
    g = grad
    if e.residual == Residual.AFTER_ACT:
        u = activation(v, e.act, e.slope, act_weight) + e.beta * extra
        if e.act2 == Act.PRELU:
            g_act2_w = _prelu_weight_grad(g, u, act2_weight)
        g = g * _act_grad(u, e.act2, e.slope2, act2_weight)
        g_extra = e.beta * g
    if e.act == Act.PRELU:
        g_act_w = _prelu_weight_grad(g, v, act_weight)
    g_v = g * _act_grad(v, e.act, e.slope, act_weight)
    if e.residual == Residual.BEFORE_ACT:
        g_extra = e.beta * g_v
    cout = weight.shape[1] if ctx.transposed else weight.shape[0]
    gx, gw, _ = torch.ops.aten.convolution_backward(
        (e.alpha * g_v).contiguous(), x, weight, [cout], [1, 1], ctx.padding, [1, 1], ctx.transposed, [0, 0], 1,
        [needs[0], needs[1], False])
    g_bias = g_v.sum(dim=(0, 2, 3)) if ctx.has_bias and needs[2] else None
    return (gx, gw, g_bias, g_extra if needs[3] else None, g_act_w if needs[4] else None,
            g_act2_w if needs[5] else None)


conv2d_fused.register_autograd(_backward, setup_context=_setup)


def _wrapper_autograd(op, transposed: bool, epilogue_of, takes_extra: bool):
    """Register a RED op's gradients: the general op's, for its 3 or 4 tensor arguments."""
    def setup(ctx, inputs, output):
        x, weight, bias = inputs[:3]
        extra = inputs[3] if takes_extra else None
        ctx.save_for_backward(x, weight, bias, extra, None, None)
        ctx.transposed, ctx.padding, ctx.has_bias = transposed, [1, 1], True
        ctx.epilogue = epilogue_of(extra)

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
