"""The CUDA C++ backend: our nvcc-built kernels in ``redkern._cuda`` (csrc/cuda).

fp16 and bf16 run on tensor cores (WMMA 16x16x16, fp32 accumulation), fp32 on CUDA cores;
activations are NHWC, weights packed once per weight tensor as ``[9][cin_pad][cout_pad]``.
Kernels launch on PyTorch's current stream of the input's device.

The same kernel source also builds for the host against our CUDA emulation layer
(``redkern._cuda_emu``, csrc/cuda_emu); ``launch_conv3x3`` drives either module, so the
emulation tests exercise this file's packing and layout code too.
"""

from __future__ import annotations

import functools

import torch

from .common import BackendUnavailable, WeightCache, conv_weight, to_nhwc

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
    what = f"CUDA C++ kernels built for {_archs()} (fp16/bf16 on tensor cores, fp32 on CUDA cores)"
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


def pack_weight(weight: torch.Tensor, transposed: bool, cin_pad: int, cout_pad: int) -> torch.Tensor:
    """``[9, cin_pad, cout_pad]`` (tap = ky*3+kx, cout contiguous), zero-padded, on the
    weight's device and in its dtype: the equivalent convolution of a (de)conv weight."""
    w = conv_weight(weight.detach(), transposed)  # [cout, cin, 3, 3]
    cout, cin = w.shape[0], w.shape[1]
    packed = w.new_zeros((9, cin_pad, cout_pad))
    packed[:, :cin, :cout] = w.permute(2, 3, 1, 0).reshape(9, cin, cout)
    return packed


def launch_conv3x3(module, x, weight, bias, extra, *, transposed: bool, epilogue, out=None,
                   stream: int = 0, device: int = 0, **options) -> torch.Tensor:
    """Run ``module.conv3x3`` (``redkern._cuda`` or ``redkern._cuda_emu``) on torch tensors.

    ``x``: ``[N, Cin, H, W]``; ``weight``: Conv2d ``[Cout, Cin, 3, 3]`` or, with
    ``transposed``, ConvTranspose2d ``[Cin, Cout, 3, 3]``; ``bias``: ``[Cout]``; ``extra``:
    ``[N, Cout, H, W]`` or None; all of one dtype on one device. Returns an NHWC
    (channels_last) ``[N, Cout, H, W]`` tensor, ``out`` if given (it must be one).
    ``options`` go to the module (the emulator's ``schedule`` and ``planted_bug``).
    """
    if x.dtype not in DTYPES:
        raise TypeError(f"the CUDA C++ kernels take {', '.join(map(str, DTYPES))}, got {x.dtype}")
    dtype = module.DTYPE_CODES[_DTYPE_NAMES[x.dtype]]
    n, cin, h, w = x.shape
    cout = weight.shape[1] if transposed else weight.shape[0]
    shape = module.packed_weight_shape(dtype, cin, cout)
    packed = _weights.get(weight, (module.__name__, transposed, x.dtype, shape),
                          lambda: pack_weight(weight.to(x.dtype), transposed, shape[1], shape[2]))
    xh = to_nhwc(x.detach())
    b = bias.detach().contiguous()
    eh = to_nhwc(extra.detach()) if extra is not None else None
    if out is None:
        out = torch.empty((n, cout, h, w), dtype=x.dtype, device=x.device,
                          memory_format=torch.channels_last)
    elif not (out.shape == (n, cout, h, w) and out.dtype == x.dtype and out.stride(1) == 1
              and out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError("out must be a dense NHWC tensor of the output's shape and dtype")
    module.conv3x3(xh.data_ptr(), xh.numel(), packed.data_ptr(), packed.numel(),
                   b.data_ptr(), b.numel(), eh.data_ptr() if eh is not None else 0,
                   eh.numel() if eh is not None else 0, out.data_ptr(), out.numel(),
                   n, h, w, cin, cout, dtype, int(epilogue), stream, device, **options)
    return out


def conv3x3(x, weight, bias, extra, *, transposed: bool, epilogue, out=None) -> torch.Tensor:
    """Fused 3x3 conv on CUDA tensors; returns an NHWC (channels_last) tensor, ``out`` if
    given (a dense NHWC tensor of the output's shape and dtype)."""
    if x.dtype not in DTYPES:
        raise TypeError(f"the CUDA C++ kernels take {', '.join(map(str, DTYPES))}, got {x.dtype}; "
                        f"convert with x.float() (or use the reference model for {x.dtype})")
    device = x.device.index if x.device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(x.device).cuda_stream
    return launch_conv3x3(_cuda, x, weight, bias, extra, transposed=transposed, epilogue=epilogue,
                          out=out, stream=stream, device=device)
