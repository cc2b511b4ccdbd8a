"""The three fused RED-Net ops, defined once as torch custom ops (``torch.ops.redkern.*``).

All are 3x3, stride 1, padding 1 (zeros at the image border), with bias:

- ``conv_relu(x, weight, bias)``: ``relu(conv2d(x, weight) + bias)``; ``weight`` in
  ``nn.Conv2d`` layout ``[Cout, Cin, 3, 3]``.
- ``deconv_relu(x, weight, bias, skip=None)``: ``r = relu(conv_transpose2d(x, weight) + bias)``,
  and with a skip ``relu(r + skip)``; ``weight`` in ``nn.ConvTranspose2d`` layout
  ``[Cin, Cout, 3, 3]``, so a model's own parameters pass unchanged.
- ``deconv_residual(x, weight, bias, residual)``: ``conv_transpose2d(x, weight) + bias + residual``.

Every op takes a trailing ``backend`` string: ``"auto"`` (CPU: our C++ kernels; CUDA: Triton,
else CUDA C++) or one of ``redkern.backends()``'s names to force it. Asking for one that
cannot run raises ``BackendUnavailable`` with the reason; nothing falls back silently.

Outputs keep the input's memory format: a channels_last input (``x.stride(1) == 1``) gives a
channels_last output, anything else a contiguous NCHW output. Gradients are registered for
all inputs, computed with reference PyTorch ops, so fused models can be trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends as _backends
from .backends.common import Epilogue, is_channels_last

__all__ = ["conv_relu", "deconv_relu", "deconv_residual"]


def _check(name: str, x: Tensor, weight: Tensor, bias: Tensor, extra: Tensor | None,
           transposed: bool, backend: str) -> int:
    """Validate an op's arguments; return the output channel count."""
    from .validation import check_image_batch

    where = f"redkern.{name}"
    check_image_batch(x, None, weight, where)
    cin = x.shape[1]
    expect = "[Cin, Cout, 3, 3] (ConvTranspose2d layout)" if transposed else "[Cout, Cin, 3, 3] (Conv2d layout)"
    if weight.dim() != 4 or weight.shape[2:] != (3, 3) or weight.shape[1 if not transposed else 0] != cin:
        raise ValueError(f"{where}: weight must be {expect} with Cin={cin} matching the input, "
                         f"got {tuple(weight.shape)}")
    cout = weight.shape[0 if not transposed else 1]
    if bias.shape != (cout,):
        raise ValueError(f"{where}: bias must have shape ({cout},), got {tuple(bias.shape)}")
    if bias.device != x.device or bias.dtype != x.dtype:
        raise ValueError(f"{where}: bias is {bias.dtype} on {bias.device}, input is {x.dtype} on {x.device}")
    if extra is not None:
        want = (x.shape[0], cout, x.shape[2], x.shape[3])
        if tuple(extra.shape) != want:
            raise ValueError(f"{where}: skip/residual must have shape {want}, got {tuple(extra.shape)}")
        if extra.device != x.device or extra.dtype != x.dtype:
            raise ValueError(f"{where}: skip/residual is {extra.dtype} on {extra.device}, "
                             f"input is {x.dtype} on {x.device}")
    if backend not in _backends.BACKEND_NAMES:
        raise ValueError(f"{where}: unknown backend {backend!r}; choose one of {_backends.BACKEND_NAMES}")
    return cout


def _output_strides(x: Tensor, cout: int) -> tuple[int, ...]:
    """Strides of the output an op returns for input ``x``: its memory format, dense."""
    n, _, h, w = x.shape
    if is_channels_last(x):
        return (h * w * cout, 1, w * cout, cout)
    return (cout * h * w, h * w, w, 1)


def _empty_output(x: Tensor, cout: int) -> Tensor:
    shape = (x.shape[0], cout, x.shape[2], x.shape[3])
    return torch.empty_strided(shape, _output_strides(x, cout), dtype=x.dtype, device=x.device)


def _run(name, x, weight, bias, extra, transposed, epilogue, backend):
    cout = _check(name, x, weight, bias, extra, transposed, backend)
    impl = _backends.resolve(backend, x.device)
    y = impl.conv3x3(x, weight, bias, extra, transposed=transposed, epilogue=epilogue)
    if y.stride() == _output_strides(x, cout):
        return y
    out = _empty_output(x, cout)  # backends write their own layout; give back the input's
    out.copy_(y)
    return out


# --- the ops ------------------------------------------------------------------------------

@torch.library.custom_op("redkern::conv_relu", mutates_args=())
def conv_relu(x: Tensor, weight: Tensor, bias: Tensor, backend: str = "auto") -> Tensor:
    """``relu(conv2d(x, weight, bias, padding=1))`` in one fused pass."""
    return _run("conv_relu", x, weight, bias, None, False, Epilogue.RELU, backend)


@torch.library.custom_op("redkern::deconv_relu", mutates_args=())
def deconv_relu(x: Tensor, weight: Tensor, bias: Tensor, skip: Tensor | None = None,
                backend: str = "auto") -> Tensor:
    """``relu(conv_transpose2d(x, weight, bias, padding=1))``, then ``relu(. + skip)`` if given."""
    epi = Epilogue.RELU if skip is None else Epilogue.RELU_ADD_RELU
    return _run("deconv_relu", x, weight, bias, skip, True, epi, backend)


@torch.library.custom_op("redkern::deconv_residual", mutates_args=())
def deconv_residual(x: Tensor, weight: Tensor, bias: Tensor, residual: Tensor,
                    backend: str = "auto") -> Tensor:
    """``conv_transpose2d(x, weight, bias, padding=1) + residual`` (no activation)."""
    return _run("deconv_residual", x, weight, bias, residual, True, Epilogue.ADD_RESIDUAL, backend)


# --- fake (meta) implementations: shapes, dtypes and memory formats only -----------------

@conv_relu.register_fake
def _(x, weight, bias, backend="auto"):
    return _empty_output(x, weight.shape[0])


@deconv_relu.register_fake
def _(x, weight, bias, skip=None, backend="auto"):
    return _empty_output(x, weight.shape[1])


@deconv_residual.register_fake
def _(x, weight, bias, residual, backend="auto"):
    return _empty_output(x, weight.shape[1])


# --- autograd, from reference PyTorch ops ------------------------------------------------

def _conv_grads(grad_pre: Tensor, x: Tensor, weight: Tensor, transposed: bool, needs):
    gx, gw, gb = torch.ops.aten.convolution_backward(
        grad_pre, x, weight, [weight.shape[1] if transposed else weight.shape[0]],
        [1, 1], [1, 1], [1, 1], transposed, [0, 0], 1, [needs[0], needs[1], needs[2]])
    return gx, gw, gb


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*[t for t in inputs if isinstance(t, Tensor)], output)
    ctx.has_extra = len(inputs) > 3 and isinstance(inputs[3], Tensor)


def _conv_relu_backward(ctx, grad):
    x, weight, bias, y = ctx.saved_tensors
    g = grad * (y > 0)
    gx, gw, gb = _conv_grads(g, x, weight, False, ctx.needs_input_grad[:3])
    return gx, gw, gb, None


def _deconv_relu_backward(ctx, grad):
    if ctx.has_extra:
        x, weight, bias, skip, y = ctx.saved_tensors
        g_skip = grad * (y > 0)
        # r (before the skip) is not kept by the fused forward; recompute it.
        r = F.relu(F.conv_transpose2d(x, weight, bias, padding=1))
        g = g_skip * (r > 0)
    else:
        x, weight, bias, y = ctx.saved_tensors
        g_skip = None
        g = grad * (y > 0)
    gx, gw, gb = _conv_grads(g, x, weight, True, ctx.needs_input_grad[:3])
    return gx, gw, gb, g_skip, None


def _deconv_residual_backward(ctx, grad):
    x, weight, bias, residual, y = ctx.saved_tensors
    gx, gw, gb = _conv_grads(grad.contiguous(), x, weight, True, ctx.needs_input_grad[:3])
    return gx, gw, gb, grad, None


conv_relu.register_autograd(_conv_relu_backward, setup_context=_save_inputs)
deconv_relu.register_autograd(_deconv_relu_backward, setup_context=_save_inputs)
deconv_residual.register_autograd(_deconv_residual_backward, setup_context=_save_inputs)


# --- the reference semantics, used by tests and benchmarks -------------------------------

def reference_conv_relu(x, weight, bias):
    return F.relu(F.conv2d(x, weight, bias, padding=1))


def reference_deconv_relu(x, weight, bias, skip=None):
    r = F.relu(F.conv_transpose2d(x, weight, bias, padding=1))
    return r if skip is None else F.relu(r + skip)


def reference_deconv_residual(x, weight, bias, residual):
    return F.conv_transpose2d(x, weight, bias, padding=1) + residual
