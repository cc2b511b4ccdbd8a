"""The CUDA C++ backend: our nvcc-built kernels in ``redkern._cuda`` (csrc/cuda).

Stride-1 convolutions of two sizes, each with the one padding that keeps the image size:
3x3 with padding 1 (an implicit GEMM over a shared-memory window with its halo) and 1x1 with
padding 0 (a GEMM over the batch's pixels); for a transposed layer, the equivalent
convolution's padding ``k - 1 - p`` must be that. Other layers raise ``BackendUnavailable``
naming them. Every kernel ends in the fused epilogue of ``redkern.epilogue`` (any act,
residual and act2, per-channel LEAKY_RELU/PRELU slopes).

fp16 and bf16 run on tensor cores (WMMA 16x16x16, fp32 accumulation), fp32 on CUDA cores;
activations are NHWC, weights packed once per weight tensor as ``[k*k][cin_pad][cout_pad]``.
Kernels launch on PyTorch's current stream of the input's device.

The same kernel source also builds for the host against our CUDA emulation layer
(``redkern._cuda_emu``, csrc/cuda_emu); ``launch_conv2d`` drives either module, so the
emulation tests exercise this file's packing and layout code too.
"""

from __future__ import annotations

import functools

import torch

from ..epilogue import Act, Epilogue, Residual
from .common import BackendUnavailable, WeightCache, conv_weight, is_channels_last, to_nhwc

try:
    from .. import _cuda
    _IMPORT_ERROR = None
except ImportError as e:  # the package still imports; backends() says why
    _cuda = None
    _IMPORT_ERROR = e

_weights = WeightCache()
_usable_indices: set[int] = set()  # devices of compute capability >= MIN_CAPABILITY
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# The first architecture with bf16 WMMA; the module holds sm_80 and sm_90 code (+ PTX).
MIN_CAPABILITY = (8, 0)
# Kernel size -> the padding of the convolution the kernels run (csrc/cuda/conv.h, KERNELS).
KERNELS = {3: 1, 1: 0}
_SLOPED = (Act.LEAKY_RELU, Act.PRELU)


def _build_status() -> str:
    """What the CMake configure said about the CUDA kernels (recorded in redkern._C)."""
    try:
        from .. import _C
    except ImportError as e:
        return f"unknown (redkern._C failed to import: {e})"
    return _C.cuda_status


def _archs() -> str:
    return ", ".join(f"sm_{a}" for a in _cuda.built_archs.split(","))


def _driver_loadable() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def status() -> dict:
    """Whether the kernels were built and can run here; asked of the driver once."""
    return dict(_status())


@functools.lru_cache(maxsize=None)
def _status() -> dict:
    if _cuda is None:
        built = _build_status()
        if built.startswith("not built"):
            detail = built
        else:
            detail = f"not built here: the build said '{built}' but redkern._cuda failed to import: {_IMPORT_ERROR}"
        return {"available": False, "devices": [], "detail": detail}
    what = (f"CUDA C++ kernels built for {_archs()} (3x3 and 1x1 convolutions; fp16/bf16 on "
            "tensor cores, fp32 on CUDA cores)")
    count, why = _cuda.device_count()
    if count == 0 and "cudaErrorInsufficientDriver" in why and not _driver_loadable():
        why = f"no NVIDIA driver is installed (libcuda.so.1 cannot be loaded; {why})"
    if count == 0:
        return {"available": False, "devices": [], "detail": f"{what}, but no CUDA device: {why}"}
    if not torch.cuda.is_available():
        return {"available": False, "devices": [],
                "detail": f"{what} and {count} CUDA device(s) found, but this torch build has no "
                          f"CUDA support (torch {torch.__version__})"}
    usable, seen = [], []
    for i in range(count):
        name, major, minor = _cuda.device_properties(i)
        seen.append(f"cuda:{i} {name} (sm_{major}{minor})")
        if (major, minor) >= MIN_CAPABILITY:
            usable.append(i)
    if not usable:
        return {"available": False, "devices": [],
                "detail": f"{what}, but no device has compute capability >= "
                          f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}: {', '.join(seen)}"}
    _usable_indices.update(usable)
    return {"available": True, "devices": ["cuda"], "detail": f"{what}; devices: {', '.join(seen)}"}


def check_can_run(device: torch.device) -> None:
    if device.type != "cuda":
        raise BackendUnavailable(f"the 'cuda' backend runs CUDA tensors only, got a tensor on {device}")
    st = status()
    if not st["available"]:
        raise BackendUnavailable(f"the CUDA C++ backend is unavailable: {st['detail']}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _usable_indices:
        raise BackendUnavailable(f"the CUDA C++ kernels cannot run on cuda:{index}: {st['detail']}")


def _pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(e) for e in v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return t


def _layer_text(cin, cout, kernel, padding, transposed) -> str:
    kind = "ConvTranspose2d" if transposed else "Conv2d"
    return f"{kernel[0]}x{kernel[1]} {kind} {cin}->{cout} with padding {padding}"


def _check_layer(cin, cout, kernel, padding, transposed, dtype) -> int:
    """The kernel size ``k`` of a layer these kernels run; ``BackendUnavailable`` naming the
    layer otherwise."""
    kernel, padding = _pair(kernel, "kernel"), _pair(padding, "padding")
    layer = _layer_text(cin, cout, kernel, padding, transposed)
    if dtype not in DTYPES:
        raise BackendUnavailable(
            f"the CUDA C++ kernels take {', '.join(_DTYPE_NAMES[d] for d in DTYPES)}, not "
            f"{str(dtype).removeprefix('torch.')} (layer: {layer}); convert with .float() or use "
            "another backend")
    # A stride-1 transposed convolution is the convolution with padding k - 1 - p.
    conv_pad = tuple(k - 1 - p for k, p in zip(kernel, padding)) if transposed else padding
    k = kernel[0]
    if kernel[0] != kernel[1] or k not in KERNELS or conv_pad != (KERNELS[k], KERNELS[k]):
        equivalent = f" (the convolution with padding {conv_pad})" if transposed else ""
        raise BackendUnavailable(
            f"the CUDA C++ backend runs 3x3 convolutions with padding 1 and 1x1 with padding 0 "
            f"(stride 1, or the transposed layers equivalent to them), not a {layer}{equivalent}")
    return k


def supported_dtypes() -> tuple[torch.dtype, ...]:
    """The activation dtypes the CUDA C++ kernels take."""
    return DTYPES


def algorithm(cin: int, cout: int, kernel, padding, transposed: bool, dtype: torch.dtype) -> str:
    """How these kernels compute such a layer: ``"WMMA implicit GEMM 3x3"``, ``"WMMA GEMM 1x1"``
    (fp16/bf16 on tensor cores) or ``"fp32 CUDA-core 3x3"``/``"1x1"``; ``BackendUnavailable``
    naming the layer for kernel sizes, paddings and dtypes they do not run."""
    k = _check_layer(cin, cout, kernel, padding, transposed, dtype)
    if dtype == torch.float32:
        return f"fp32 CUDA-core {k}x{k}"
    return "WMMA implicit GEMM 3x3" if k == 3 else "WMMA GEMM 1x1"


def pack_weight(weight: torch.Tensor, transposed: bool, cin_pad: int, cout_pad: int) -> torch.Tensor:
    """``[k*k, cin_pad, cout_pad]`` (tap = ky*k+kx, cout contiguous), zero-padded, on the
    weight's device and in its dtype: the equivalent convolution of a (de)conv weight."""
    w = conv_weight(weight.detach(), transposed)  # [cout, cin, k, k]
    cout, cin, kh, kw = w.shape
    packed = w.new_zeros((kh * kw, cin_pad, cout_pad))
    packed[:, :cin, :cout] = w.permute(2, 3, 1, 0).reshape(kh * kw, cin, cout)
    return packed


def _slope_arg(act: Act, slopes, name: str, cout: int, device) -> torch.Tensor | None:
    if act not in _SLOPED:
        return None
    if slopes is None:
        raise ValueError(f"{act.name} needs {name}: float32 [{cout}] (redkern.epilogue.kernel_slopes)")
    if slopes.device != device or slopes.numel() != cout:
        raise ValueError(f"{name} must hold {cout} (the output channels) values on {device}, got "
                         f"{slopes.numel()} on {slopes.device}")
    return slopes.detach().reshape(cout).to(torch.float32).contiguous()


def launch_conv2d(module, x, weight, bias, extra=None, *, transposed: bool, padding, epilogue,
                  slopes=None, slopes2=None, out=None, stream: int = 0, device: int = 0,
                  **options) -> torch.Tensor:
    """Run ``module.conv2d`` (``redkern._cuda`` or ``redkern._cuda_emu``) on torch tensors.

    The backend contract's ``conv2d`` (redkern/backends/__init__.py): ``x`` ``[N, Cin, H, W]``;
    ``weight`` Conv2d ``[Cout, Cin, k, k]`` or, with ``transposed``, ConvTranspose2d
    ``[Cin, Cout, k, k]``, k = 3 with padding 1 or k = 1 with padding 0 (equivalent
    convolution); ``bias`` ``[Cout]`` (None: zeros); ``extra`` ``[N, Cout, H, W]`` when
    ``epilogue.needs_extra``; ``slopes``/``slopes2`` float32 ``[Cout]`` when ``act``/``act2``
    is LEAKY_RELU or PRELU. Tensors on one device, converted to ``x``'s dtype. Returns a
    dense NHWC (channels_last) ``[N, Cout, H, W]`` tensor, ``out`` if given (it must be one).
    ``options`` go to the module (the emulator's ``schedule`` and ``planted_bug``).
    """
    if not isinstance(epilogue, Epilogue):
        raise TypeError(f"epilogue must be a redkern.epilogue.Epilogue, got {epilogue!r}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(f"x and weight must be 4-d, got {tuple(x.shape)} and {tuple(weight.shape)}")
    n, cin, h, w = x.shape
    wcin, cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
    k = _check_layer(cin, cout, tuple(weight.shape[2:]), padding, transposed, x.dtype)
    if wcin != cin:
        raise ValueError(f"x has {cin} channels but the weight {tuple(weight.shape)} takes {wcin}"
                         + (" (ConvTranspose2d layout [Cin, Cout, k, k])" if transposed else ""))
    dev = x.device
    if bias is None:
        bias = torch.zeros(cout, dtype=x.dtype, device=dev)
    if bias.shape != (cout,):
        raise ValueError(f"bias must be [{cout}], got {tuple(bias.shape)}")
    e = epilogue.needs_extra
    if e and extra is None:
        raise ValueError(f"the epilogue {epilogue.formula()} needs extra [N, Cout, H, W]")
    if e and tuple(extra.shape) != (n, cout, h, w):
        raise ValueError(f"extra must be {(n, cout, h, w)}, got {tuple(extra.shape)}")
    for name, t in (("weight", weight), ("bias", bias), ("extra", extra if e else None), ("out", out)):
        if t is not None and t.device != dev:
            raise ValueError(f"{name} is on {t.device}, x on {dev}: all on one device")
    s1 = _slope_arg(epilogue.act, slopes, "slopes", cout, dev)
    s2 = (_slope_arg(epilogue.act2, slopes2, "slopes2", cout, dev)
          if epilogue.residual == Residual.AFTER_ACT else None)

    dtype = module.DTYPE_CODES[_DTYPE_NAMES[x.dtype]]
    shape = module.packed_weight_shape(dtype, k, cin, cout)
    packed = _weights.get(weight, (module.__name__, transposed, x.dtype, shape),
                          lambda: pack_weight(weight.to(x.dtype), transposed, shape[1], shape[2]))
    xh = to_nhwc(x.detach())
    b = bias.detach().to(x.dtype).contiguous()
    eh = to_nhwc(extra.detach().to(x.dtype)) if e else None
    if out is None:
        out = torch.empty((n, cout, h, w), dtype=x.dtype, device=dev, memory_format=torch.channels_last)
    elif not (tuple(out.shape) == (n, cout, h, w) and out.dtype == x.dtype and is_channels_last(out)):
        raise ValueError(f"out must be a dense NHWC {x.dtype} tensor of shape {(n, cout, h, w)}, got "
                         f"{out.dtype} {tuple(out.shape)} with strides {out.stride()}")
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    numel = lambda t: 0 if t is None else t.numel()  # noqa: E731
    module.conv2d(
        x=xh.data_ptr(), x_numel=xh.numel(), weight=packed.data_ptr(), weight_numel=packed.numel(),
        bias=b.data_ptr(), bias_numel=b.numel(), extra=ptr(eh), extra_numel=numel(eh),
        slope=ptr(s1), slope_numel=numel(s1), slope2=ptr(s2), slope2_numel=numel(s2),
        y=out.data_ptr(), y_numel=out.numel(), n=n, h=h, width=w, cin=cin, cout=cout, kernel=k,
        padding=KERNELS[k], dtype=dtype, act=int(epilogue.act), residual=int(epilogue.residual),
        act2=int(epilogue.act2), alpha=epilogue.alpha, beta=epilogue.beta, stream=stream,
        device=device, **options)
    return out


def conv2d(x, weight, bias, extra=None, *, transposed: bool, padding, epilogue, slopes=None,
           slopes2=None, out=None) -> torch.Tensor:
    """One fused stride-1 convolution of CUDA tensors (the backend contract's ``conv2d``, see
    ``launch_conv2d``): a dense NHWC (channels_last) tensor, ``out`` if given."""
    check_can_run(x.device)
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(x.device).cuda_stream
    return launch_conv2d(_cuda, x, weight, bias, extra, transposed=transposed, padding=padding,
                         epilogue=epilogue, slopes=slopes, slopes2=slopes2, out=out,
                         stream=stream, device=device)
