"""What every backend shares: the layout helpers and the prepared-weight cache (the epilogue is
``redkern.epilogue``)."""

from __future__ import annotations

import torch


class BackendUnavailable(RuntimeError):
    """A backend that was asked for cannot run here; the message says why."""


def is_channels_last(x: torch.Tensor) -> bool:
    """True when ``x`` is stored NHWC: channels innermost (``stride(1) == 1``) and dense."""
    return x.dim() == 4 and x.stride(1) == 1 and x.is_contiguous(memory_format=torch.channels_last)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense NHWC tensor (still indexed ``[N, C, H, W]``); no copy if it already is.

    Unlike ``x.contiguous(memory_format=torch.channels_last)``, this also moves 1-channel
    NCHW tensors (which torch calls channels_last-contiguous already) to stride(1) == 1.
    """
    if is_channels_last(x):
        return x
    # Not .permute(0, 2, 3, 1).contiguous(): for C == 1 that view counts as contiguous already,
    # so nothing is copied and stride(1) stays H*W.
    n, c, h, w = x.shape
    return torch.empty((n, h, w, c), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2).copy_(x)


def conv_weight(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The Conv2d-layout weight ``[Cout, Cin, kh, kw]`` of a (possibly transposed) layer.

    A stride-1 ConvTranspose2d with padding p is the Conv2d with channels swapped, the window
    flipped and padding ``k - 1 - p``.
    """
    return weight.transpose(0, 1).flip(2, 3) if transposed else weight


class WeightCache:
    """Prepared (re-laid-out) weights, made once per weight tensor and version.

    The key is the tensor's identity, storage address and version counter, so an in-place
    update (an optimizer step, ``load_state_dict``) prepares the weight again, and an entry
    goes away with its tensor.
    """

    def __init__(self):
        self._entries = {}

    def get(self, weight: torch.Tensor, tag, prepare):
        try:
            version = weight._version
        except RuntimeError:  # inference tensors keep no version counter: prepare every call
            return prepare()
        key = (id(weight), tag)
        hit = self._entries.get(key)
        if hit is not None:
            ref, ptr, ver, value = hit
            if ref() is weight and ptr == weight.data_ptr() and ver == version:
                return value
        value = prepare()
        import weakref

        ref = weakref.ref(weight, lambda _r, k=key, d=self._entries: d.pop(k, None))
        self._entries[key] = (ref, weight.data_ptr(), version, value)
        return value
