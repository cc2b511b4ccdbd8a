"""The Triton backend: one implicit-GEMM kernel (redkern.kernels.conv2d) on NHWC activations.

Any KxK (or KHxKW) window, padding 0..k-1, stride 1, transposed or not, with the one fused
epilogue (``redkern.epilogue``).

Where it runs:
- CUDA tensors, when triton imports and torch sees a CUDA device: compiled and autotuned.
- CPU tensors, only under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
  first imported): numpy executes the kernel, slowly; this is how CI proves the kernels.
  The interpreter has no bfloat16 arithmetic, so bfloat16 runs on a GPU only.

float32 is exact by default (``tl.dot(input_precision="ieee")``). TF32 is used only when the
caller opts in: ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (or the older
``allow_tf32 = True``, or ``torch.set_float32_matmul_precision("high")``), or the environment
variable ``REDKERN_TF32=1``; ``REDKERN_TF32=0`` forces exact fp32 whatever torch says.
"""

from __future__ import annotations

import functools
import os

import torch

from ..epilogue import Epilogue, output_size
from .common import BackendUnavailable, WeightCache, conv_weight, to_nhwc

try:
    import triton

    from ..kernels import conv2d as _kernels
    from ..kernels import conv2d_pair as _pair_kernels
    from ..kernels import conv2d_wgrad as _wgrad_kernels
    _IMPORT_ERROR = None
except Exception as e:  # not installed, or broken: the package still imports; status() says why
    triton = _kernels = _pair_kernels = _wgrad_kernels = None
    _IMPORT_ERROR = e

_weights = WeightCache()
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRETER_DTYPES = (torch.float16, torch.float32)  # numpy has no bfloat16


def _dtypes() -> tuple[torch.dtype, ...]:
    return INTERPRETER_DTYPES if _kernels.INTERPRETED else GPU_DTYPES


def supported_dtypes() -> tuple[torch.dtype, ...]:
    """The activation dtypes the kernels take here (none when triton is missing)."""
    return _dtypes() if _kernels is not None else ()


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def status() -> dict:
    """``{"available", "devices", "detail"}``: where the kernels run here, or why they cannot."""
    st = _status()
    return {**st, "devices": list(st["devices"])}  # a copy: callers may not edit the cached one


@functools.cache  # what triton and the driver report does not change within a process
def _status() -> dict:
    if _kernels is None:
        why = "triton is not installed" if isinstance(_IMPORT_ERROR, ModuleNotFoundError) else "triton failed to import"
        return {"available": False, "devices": [], "detail": f"{why} ({_IMPORT_ERROR}); pip install 'redkern[triton]'"}
    version = f"triton {triton.__version__}"
    if _kernels.INTERPRETED:
        return {"available": True, "devices": ["cpu"],
                "detail": f"{version} in interpreter mode on CPU (TRITON_INTERPRET=1): correct but slow, "
                          f"for testing; dtypes {_names(INTERPRETER_DTYPES)}"}
    if not torch.cuda.is_available():
        return {"available": False, "devices": [],
                "detail": f"{version} is installed but torch sees no CUDA device; to run the kernels on "
                          "CPU tensors under the interpreter, set TRITON_INTERPRET=1 before triton is imported"}
    i = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(i)
    return {"available": True, "devices": ["cuda"],
            "detail": f"{version} on CUDA device {i}: {torch.cuda.get_device_name(i)} (sm_{major}{minor}), "
                      f"autotuned; dtypes {_names(GPU_DTYPES)} (float32 exact unless TF32 is allowed)"}


def check_can_run(device: torch.device) -> None:
    st = _status()
    if device.type in st["devices"]:
        return
    if not st["available"]:
        raise BackendUnavailable(f"the Triton backend is unavailable: {st['detail']}")
    if device.type == "cpu":
        raise BackendUnavailable("Triton runs CPU tensors only under its interpreter (TRITON_INTERPRET=1 "
                                 "set before triton is imported); use backend='cpu' for the C++ kernels")
    raise BackendUnavailable(f"the Triton backend runs {st['devices']} tensors here ({st['detail']}), "
                             f"got a tensor on {device}")


def tf32_allowed() -> bool:
    """Whether float32 convolutions may use TF32 tensor cores (see the module docstring)."""
    env = os.environ.get("REDKERN_TF32")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")  # torch >= 2.9's API
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:  # torch refuses to read the legacy flag once the new API was used
        return False


def _dtype_problem(dtype: torch.dtype, device: torch.device | None) -> str | None:
    """Why the kernels cannot take ``dtype`` here (``device``: a CUDA tensor's, else the
    current device), or None."""
    if dtype not in _dtypes():
        why = " under the interpreter (numpy has no bfloat16; run bfloat16 on a GPU)" if _kernels.INTERPRETED else ""
        return f"the Triton kernels take {_names(_dtypes())}{why}, got {dtype}"
    if dtype == torch.bfloat16 and not _kernels.INTERPRETED:
        cc = torch.cuda.get_device_capability(device)
        if cc[0] < 8:
            return (f"bfloat16 tensor-core products need compute capability >= 8.0; "
                    f"{torch.cuda.get_device_name(device)} has {cc[0]}.{cc[1]}")
    return None


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_padding(kernel, padding, transposed: bool) -> tuple[int, int]:
    """The padding of the convolution the kernel runs (``k - 1 - p`` for a transposed one),
    after checking ``0 <= p <= k - 1``."""
    (kh, kw), (ph, pw) = _pair(kernel), _pair(padding)
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel sizes must be >= 1, got {kh}x{kw}")
    if not (0 <= ph <= kh - 1 and 0 <= pw <= kw - 1):
        raise ValueError(f"padding {(ph, pw)} out of range for a {kh}x{kw} kernel: the Triton kernel "
                         "takes 0 <= p <= k - 1 on each axis")
    return (kh - 1 - ph, kw - 1 - pw) if transposed else (ph, pw)


def algorithm(cin: int, cout: int, kernel, padding, transposed: bool, dtype: torch.dtype) -> str:
    """The plan report's label, e.g. ``"implicit GEMM 3x3"``; raises ``BackendUnavailable``
    naming what this backend cannot run (triton missing, a dtype, a padding out of range)."""
    st = _status()
    if not st["available"]:
        raise BackendUnavailable(f"the Triton backend is unavailable: {st['detail']}")
    problem = _dtype_problem(dtype, None)
    if problem:
        raise BackendUnavailable(problem)
    try:
        _conv_padding(kernel, padding, transposed)
    except ValueError as e:
        raise BackendUnavailable(str(e)) from None
    kh, kw = _pair(kernel)
    return f"implicit GEMM {kh}x{kw}" + (" transposed" if transposed else "")


def packed_weight(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The kernel's ``[KH*KW*Cin, Cout]`` weight, made once per weight tensor and version."""
    return _weights.get(weight, ("triton", transposed),
                        lambda: _kernels.pack_weight(conv_weight(weight.detach(), transposed)))


def _check_input(x: torch.Tensor) -> None:
    check_can_run(x.device)
    problem = _dtype_problem(x.dtype, x.device)
    if problem:  # a dtype it never takes is a TypeError; bfloat16 on an old GPU a missing feature
        if x.dtype not in _dtypes():
            raise TypeError(problem)
        raise BackendUnavailable(problem)


def _prepared_layer(x, cin: int, weight, bias, *, transposed: bool, padding, epilogue: Epilogue, layer: str = ""):
    """One layer's checks and kernel arguments, reading ``cin`` channels of x's dtype and device:
    ``(kernel, conv_padding, packed weight, float32 bias)``. ``layer`` prefixes the messages."""
    if not isinstance(epilogue, Epilogue):
        raise TypeError(f"{layer}epilogue must be a redkern.epilogue.Epilogue, got {type(epilogue).__name__} {epilogue!r}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"x must be [N, Cin, H, W] and {layer}weight [.., .., KH, KW], got shapes "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"{layer}weight is {weight.dtype} on {weight.device}; x is {x.dtype} on {x.device}")
    takes = weight.shape[0 if transposed else 1]
    if cin != takes:
        layout = "ConvTranspose2d [Cin, Cout, KH, KW]" if transposed else "Conv2d [Cout, Cin, KH, KW]"
        what = "x has" if not layer else f"{layer}input has"
        raise ValueError(f"{what} {cin} channels but the {layout} weight {tuple(weight.shape)} takes {takes}")
    kernel = tuple(weight.shape[2:])
    conv_padding = _conv_padding(kernel, padding, transposed)
    cout = weight.shape[1 if transposed else 0]
    bias = (torch.zeros(cout, dtype=torch.float32, device=x.device) if bias is None
            else bias.detach().to(torch.float32).contiguous())
    return kernel, conv_padding, packed_weight(weight, transposed), bias


def conv2d(x, weight, bias, extra=None, *, transposed: bool, padding, epilogue: Epilogue,
           slopes=None, slopes2=None, out=None) -> torch.Tensor:
    """One fused stride-1 convolution (the contract in ``redkern.backends``).

    ``x`` ``[N, Cin, H, W]`` in any layout; ``weight`` Conv2d ``[Cout, Cin, KH, KW]`` or, with
    ``transposed``, ConvTranspose2d ``[Cin, Cout, KH, KW]`` (run as the convolution with the
    window flipped, channels swapped and padding ``k - 1 - p``); ``padding`` ``(PH, PW)`` as
    those modules take it, ``0 <= p <= k - 1``; ``bias`` ``[Cout]`` (None: zeros);
    ``extra`` ``[N, Cout, OH, OW]`` in any layout when ``epilogue.needs_extra``;
    ``slopes``/``slopes2`` float32 ``[Cout]`` (``redkern.epilogue.kernel_slopes``) when
    ``act``/``act2`` is LEAKY_RELU or PRELU. Returns a dense NHWC ``[N, Cout, OH, OW]``
    tensor in x's dtype: ``out`` when given (a NHWC tensor of exactly that, overlapping
    neither x nor extra).
    """
    _check_input(x)
    kernel, conv_padding, w_packed, bias = _prepared_layer(
        x, x.shape[1] if x.dim() == 4 else -1, weight, bias, transposed=transposed, padding=padding,
        epilogue=epilogue)
    return _kernels.conv2d_nhwc(
        to_nhwc(x.detach()), w_packed, bias, to_nhwc(extra.detach()) if extra is not None else None,
        kernel=kernel, padding=conv_padding, epilogue=epilogue, slopes=slopes, slopes2=slopes2,
        out=out, allow_tf32=x.dtype == torch.float32 and tf32_allowed())


def pair_algorithm(first, second, dtype: torch.dtype) -> str:
    """The plan report's label for two consecutive layers run as one kernel launch
    (``conv2d_pair``), each ``(cin, cout, kernel, padding, transposed)`` as ``algorithm``
    takes them; raises ``BackendUnavailable`` saying why this pair cannot run so."""
    for layer in (first, second):
        algorithm(*layer, dtype)  # each must run here on its own
    if first[1] != second[0]:
        raise BackendUnavailable(f"the first layer's {first[1]} outputs are not the second's {second[0]} inputs")
    for which, (cin, cout, kernel, padding, transposed) in (("first", first), ("second", second)):
        if _pair(kernel) != (3, 3) or _conv_padding(kernel, padding, transposed) != (1, 1):
            kind = "deconv" if transposed else "conv"
            raise BackendUnavailable(f"the {which} layer is a {kind} {'x'.join(map(str, _pair(kernel)))} with "
                                     f"padding {_pair(padding)}; pairs are of 3x3 layers with padding 1")
        if cout > _pair_kernels.PAIR_MAX_CHANNELS:
            raise BackendUnavailable(f"the {which} layer has {cout} output channels; pairs keep at most "
                                     f"{_pair_kernels.PAIR_MAX_CHANNELS} on chip")
    return "implicit GEMM 3x3 pair, mid tile on chip"


def conv2d_pair(x, first: dict, second: dict, *, out=None) -> torch.Tensor:
    """Two consecutive fused stride-1 3x3 layers (padding 1) in one kernel launch, the first's
    output kept on chip (``redkern.kernels.conv2d_pair``).

    ``x`` ``[N, Cin, H, W]`` in any layout; ``first`` and ``second``: each layer's ``conv2d``
    arguments as a dict (``weight``, ``bias``, ``extra``, ``transposed``, ``padding``,
    ``epilogue``, ``slopes``, ``slopes2``; ``extra`` is that layer's own ``[N, C, H, W]``).
    Returns the second layer's output, dense NHWC ``[N, Cout, H, W]`` in x's dtype: ``out``
    when given. Equals ``conv2d`` run twice, the first output rounded to x's dtype.
    """
    _check_input(x)
    layers, cin = [], x.shape[1] if x.dim() == 4 else -1
    for which, spec in (("first", first), ("second", second)):
        name = f"the {which} layer's "
        kernel, conv_padding, w_packed, bias = _prepared_layer(
            x, cin, spec["weight"], spec.get("bias"), transposed=spec["transposed"], padding=spec["padding"],
            epilogue=spec["epilogue"], layer=name)
        if kernel != (3, 3) or conv_padding != (1, 1):
            raise ValueError(f"{name}window is {kernel[0]}x{kernel[1]} with padding {tuple(spec['padding'])}; "
                             "conv2d_pair runs 3x3 layers with padding 1")
        extra = spec.get("extra")
        layers.append(_pair_kernels.PairLayer(w_packed, bias, to_nhwc(extra.detach()) if extra is not None else None,
                                              spec["epilogue"], spec.get("slopes"), spec.get("slopes2")))
        cin = w_packed.shape[1]
    return _pair_kernels.conv3x3_pair_nhwc(to_nhwc(x.detach()), *layers, out=out,
                                           allow_tf32=x.dtype == torch.float32 and tf32_allowed())


def conv2d_weight_grad(x, grad, *, weight_shape, transposed: bool, padding) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias gradients of one stride-1 convolution (the contract in ``redkern.backends``).

    ``x`` the layer's input ``[N, Cin, H, W]`` in any layout; ``grad`` the gradient at the
    convolution's output (the activation's derivative and alpha already applied)
    ``[N, Cout, OH, OW]`` in any layout, x's dtype and device; ``weight_shape`` the module
    weight's shape, Conv2d ``[Cout, Cin, KH, KW]`` or, with ``transposed``, ConvTranspose2d
    ``[Cin, Cout, KH, KW]``; ``padding`` ``(PH, PW)`` as those modules take it,
    ``0 <= p <= k - 1``. Returns float32 ``(grad_weight, grad_bias)`` (fp32 accumulation for
    every input dtype; ``redkern.ops`` casts them to the parameters' dtypes): ``grad_weight``
    contiguous in the module's layout, ``grad_bias`` ``[Cout]``; the values of
    ``aten.convolution_backward``'s weight and bias gradients, bitwise the same every call.
    """
    _check_input(x)
    if x.dim() != 4 or grad.dim() != 4:
        raise ValueError(f"x must be [N, Cin, H, W] and grad [N, Cout, OH, OW], got shapes "
                         f"{tuple(x.shape)} and {tuple(grad.shape)}")
    if grad.dtype != x.dtype or grad.device != x.device:
        raise ValueError(f"grad is {grad.dtype} on {grad.device}; x is {x.dtype} on {x.device}")
    layout = "ConvTranspose2d [Cin, Cout, KH, KW]" if transposed else "Conv2d [Cout, Cin, KH, KW]"
    shape = tuple(weight_shape)
    if len(shape) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"weight_shape must be the {layout} shape, 4 ints >= 1, got {weight_shape!r}")
    cin, cout = (shape[0], shape[1]) if transposed else (shape[1], shape[0])
    if x.shape[1] != cin:
        raise ValueError(f"x has {x.shape[1]} channels but the {layout} weight {shape} takes {cin}")
    kernel = shape[2:]
    conv_padding = _conv_padding(kernel, padding, transposed)
    (ph, pw), (n, _, h, w) = _pair(padding), x.shape
    out_shape = (n, cout, output_size(h, kernel[0], ph, transposed), output_size(w, kernel[1], pw, transposed))
    if out_shape[2] < 1 or out_shape[3] < 1:
        raise ValueError(f"a {kernel[0]}x{kernel[1]} kernel with padding {(ph, pw)} leaves no output of x "
                         f"{tuple(x.shape)}")
    if tuple(grad.shape) != out_shape:
        raise ValueError(f"grad must be the layer's output shape [N, Cout, OH, OW] = {list(out_shape)} "
                         f"(x {tuple(x.shape)}, {layout} weight {shape}, padding {(ph, pw)}), "
                         f"got {tuple(grad.shape)}")
    dw, db = _wgrad_kernels.conv2d_weight_grad_nhwc(
        to_nhwc(x.detach()), to_nhwc(grad.detach()), kernel=kernel, padding=conv_padding,
        allow_tf32=x.dtype == torch.float32 and tf32_allowed())
    if transposed:  # the inverse of conv_weight: swap the channels back, un-flip the window
        dw = dw.flip(2, 3).transpose(0, 1)
    return dw.contiguous(), db
