"""The CPU backend: our C++ kernels in ``redkern._C`` (csrc/cpu), on NHWC activations.

Algorithm per layer (``choose_algorithm``), decided by the channel counts alone:

- Winograd F(4x4, 3x3) when both ``cin`` and ``cout`` are >= 16 (RED-Net's 64->64 layers):
  about 4x fewer multiplications; transforms and GEMMs in fp32, weights transformed in fp64.
- Direct convolution otherwise (the 1- or 3-channel first and last layers), where a
  Winograd transform would cost more than the few multiplications it saves:
  - ``cout <= 3`` (the last layer): vectorised over input channels, since a vector of output
    channels would be mostly padding;
  - else vectorised over output channels; with bf16 activations, the avx512 kernels and a
    CPU with AVX512_BF16, with vdpbf16ps (two input channels per instruction).

Kernel ISA: ``_C.selected_isa()``, the best this CPU supports unless ``REDKERN_CPU_ISA``
(generic, avx2, avx512) forces a lower one. ``conv3x3(..., algorithm=, isa=)``
force either for one call (the tests run every combination this CPU supports).
"""

from __future__ import annotations

import torch

from .common import BackendUnavailable, WeightCache, is_channels_last, to_nhwc

try:
    from .. import _C
    _IMPORT_ERROR = None
except ImportError as e:  # the package still imports; backends() says why
    _C = None
    _IMPORT_ERROR = e

_weights = WeightCache()
DTYPES = (torch.float32, torch.bfloat16)
WINOGRAD_MIN_CHANNELS = 16
FEW_COUT_MAX = 3  # csrc/cpu/conv3x3_few_cout.h: kMaxCout


def status() -> dict:
    if _C is None:
        return {"available": False, "devices": [],
                "detail": f"extension redkern._C failed to import: {_IMPORT_ERROR}"}
    try:
        isa = _C.selected_isa()
    except ValueError as e:  # REDKERN_CPU_ISA names an ISA this CPU lacks
        return {"available": False, "devices": [], "detail": str(e)}
    return {"available": True, "devices": ["cpu"],
            "detail": f"C++ kernels, {isa} selected for this CPU, "
                      f"dtypes {', '.join(str(d).removeprefix('torch.') for d in DTYPES)}"}


def check_can_run(device: torch.device) -> None:
    if _C is None or not status()["available"]:
        raise BackendUnavailable(f"the CPU backend is unavailable: {status()['detail']}")
    if device.type != "cpu":
        raise BackendUnavailable(f"the 'cpu' backend runs CPU tensors only, got a tensor on {device}")


def choose_algorithm(cin: int, cout: int, dtype: torch.dtype, isa: str | None = None):
    """The ``_C.Algorithm`` used for a layer (see the module docstring)."""
    if min(cin, cout) >= WINOGRAD_MIN_CHANNELS:
        return _C.Algorithm.winograd4x4
    if cout <= FEW_COUT_MAX:
        return _C.Algorithm.direct_few_cout
    if dtype == torch.bfloat16 and (isa or _C.selected_isa()) == "avx512" and _C.bf16_dot_supported():
        return _C.Algorithm.direct_bf16dot
    return _C.Algorithm.direct


def _dtype_code(dtype: torch.dtype):
    return _C.DType.bfloat16 if dtype == torch.bfloat16 else _C.DType.float32


def packed_weight(weight: torch.Tensor, transposed: bool, algorithm) -> torch.Tensor:
    """``weight`` re-laid-out for ``algorithm``, cached per weight tensor and version."""
    cin, cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])

    def prepare():
        w = weight.detach().float().contiguous()
        packed = torch.empty(_C.packed_weight_size(cin, cout, algorithm), dtype=torch.float32)
        _C.pack_weight(w.data_ptr(), w.numel(), cin, cout, transposed, algorithm,
                       packed.data_ptr(), packed.numel())
        return packed

    return _weights.get(weight, ("cpu", transposed, int(algorithm)), prepare)


def conv3x3(x, weight, bias, extra, *, transposed: bool, epilogue, algorithm=None, isa=None,
            out=None) -> torch.Tensor:
    """Fused 3x3 conv of ``x`` [N, Cin, H, W]; returns an NHWC (channels_last) tensor.

    ``algorithm`` (a ``_C.Algorithm``) and ``isa`` (a name from ``_C.supported_isas()``)
    override the defaults; ``out`` is an NHWC tensor to write into (tests poison it).
    """
    if x.dtype not in DTYPES:
        raise TypeError(f"the CPU kernels take {', '.join(map(str, DTYPES))}, got {x.dtype}; "
                        f"convert with x.float() (or use the reference model for {x.dtype})")
    n, cin, h, w = x.shape
    cout = weight.shape[1] if transposed else weight.shape[0]
    if algorithm is None:
        algorithm = choose_algorithm(cin, cout, x.dtype, isa)
    xh = to_nhwc(x.detach())
    packed = packed_weight(weight, transposed, algorithm)
    b = bias.detach().float().contiguous()
    eh = to_nhwc(extra.detach()) if extra is not None else None
    if out is None:
        y = torch.empty((n, cout, h, w), dtype=x.dtype, memory_format=torch.channels_last)
    elif out.shape != (n, cout, h, w) or out.dtype != x.dtype or not is_channels_last(out):
        raise ValueError(f"out must be a channels_last {x.dtype} tensor of shape {(n, cout, h, w)}, "
                         f"got {out.dtype} {tuple(out.shape)} with strides {out.stride()}")
    else:
        y = out
    _C.conv3x3(xh.data_ptr(), xh.numel(), packed.data_ptr(), packed.numel(),
               b.data_ptr(), b.numel(), eh.data_ptr() if eh is not None else 0,
               eh.numel() if eh is not None else 0, y.data_ptr(), y.numel(),
               n, h, w, cin, cout, _C.Epilogue(int(epilogue)), _dtype_code(x.dtype), algorithm,
               torch.get_num_threads(), isa or "")
    return y
