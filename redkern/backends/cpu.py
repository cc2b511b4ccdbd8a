"""The CPU backend: our C++ kernels in ``redkern._C`` (csrc/cpu), on NHWC activations."""

from __future__ import annotations

import torch

from .common import BackendUnavailable, WeightCache, to_nhwc

try:
    from .. import _C
    _IMPORT_ERROR = None
except ImportError as e:  # the package still imports; backends() says why
    _C = None
    _IMPORT_ERROR = e

_weights = WeightCache()
DTYPES = (torch.float32,)


def status() -> dict:
    if _C is None:
        return {"available": False, "devices": [],
                "detail": f"extension redkern._C failed to import: {_IMPORT_ERROR}"}
    return {"available": True, "devices": ["cpu"],
            "detail": f"C++ kernels, {_C.selected_isa()} selected for this CPU, "
                      f"dtypes {', '.join(str(d).removeprefix('torch.') for d in DTYPES)}"}


def check_can_run(device: torch.device) -> None:
    if _C is None:
        raise BackendUnavailable(f"the CPU backend is unavailable: {status()['detail']}")
    if device.type != "cpu":
        raise BackendUnavailable(f"the 'cpu' backend runs CPU tensors only, got a tensor on {device}")


def _packed(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    cin, cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])

    def prepare():
        w = weight.detach().contiguous()
        packed = torch.empty(_C.packed_weight_size(cin, cout), dtype=torch.float32)
        _C.pack_weight(w.data_ptr(), w.numel(), cin, cout, transposed, packed.data_ptr(), packed.numel())
        return packed

    return _weights.get(weight, ("cpu", transposed), prepare)


def conv3x3(x, weight, bias, extra, *, transposed: bool, epilogue) -> torch.Tensor:
    """Fused 3x3 conv; returns an NHWC (channels_last) tensor."""
    if x.dtype not in DTYPES:
        raise TypeError(f"the CPU kernels take {', '.join(map(str, DTYPES))}, got {x.dtype}; "
                        f"convert with x.float() (or use the reference model for {x.dtype})")
    n, cin, h, w = x.shape
    cout = weight.shape[1] if transposed else weight.shape[0]
    xh = to_nhwc(x.detach())
    packed = _packed(weight, transposed)
    b = bias.detach().contiguous()
    eh = to_nhwc(extra.detach()) if extra is not None else None
    y = torch.empty((n, cout, h, w), dtype=x.dtype, memory_format=torch.channels_last)
    _C.conv3x3_f32(xh.data_ptr(), xh.numel(), packed.data_ptr(), packed.numel(),
                   b.data_ptr(), b.numel(), eh.data_ptr() if eh is not None else 0,
                   eh.numel() if eh is not None else 0, y.data_ptr(), y.numel(),
                   n, h, w, cin, cout, _C.Epilogue(int(epilogue)), torch.get_num_threads())
    return y
