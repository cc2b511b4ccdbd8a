"""What every backend shares: the layout helpers and the prepared-weight cache (the epilogue is
``redkern.epilogue``)."""

from __future__ import annotations

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


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


# Every optimizer step bumps this: PyTorch's fused optimizers (Adam(fused=True)...) update
# parameters in place without bumping their version counters, so versions alone miss them.
_optimizer_steps = 0


def _count_optimizer_step(optimizer, args, kwargs):
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class SourceStamp:
    """What prepared (packed, folded) weights were made from, to tell whether they still hold.

    A tensor counts as unchanged while it is the same object at the same address with the same
    version counter, no optimizer has stepped since (fused optimizers skip the version counter),
    and, on the CPU, its values equal the snapshot taken (``.data`` edits skip the version
    counter too; comparing costs one read of the weights, a small fraction of a convolution's).
    """

    def __init__(self, tensors):
        import weakref

        self.refs = [weakref.ref(t) for t in tensors]
        self.keys = [(t.data_ptr(), t._version) for t in tensors]
        self.steps = _optimizer_steps
        self.copies = [_raw_words(t).copy() if t.device.type == "cpu" else None for t in tensors]

    def matches(self, tensors) -> bool:
        if self.steps != _optimizer_steps or len(tensors) != len(self.refs):
            return False
        for ref, key, copy, t in zip(self.refs, self.keys, self.copies, tensors):
            if ref() is not t or key != (t.data_ptr(), t._version):
                return False
            if copy is not None and not np.array_equal(copy, _raw_words(t)):
                return False
        return True


def _raw_words(t: torch.Tensor) -> np.ndarray:
    """``t``'s bits as a flat array of the widest unsigned words its size divides into (a view
    where ``t`` is contiguous): a 64x64x3x3 weight compares in 9 us as 8-byte words, 18 us as
    bytes, and layers call this on every forward. Compared with NumPy, on the calling thread:
    torch.equal would wake torch's thread pool on every layer call (while the kernels' OpenMP
    threads still spin, which on two cores costs milliseconds), and bits also match where a
    weight holds NaN."""
    raw = t.detach().contiguous().view(torch.uint8).numpy().reshape(-1)
    for word in (np.uint64, np.uint32, np.uint16):
        if raw.size % np.dtype(word).itemsize == 0:
            return raw.view(word)
    return raw


class WeightCache:
    """Prepared (re-laid-out) weights, made once per weight tensor while it is unchanged
    (``SourceStamp``: an optimizer step, ``load_state_dict`` or a ``.data`` edit prepares the
    weight again); an entry goes away with its tensor.
    """

    def __init__(self):
        self._entries = {}

    def get(self, weight: torch.Tensor, tag, prepare):
        try:
            weight._version
        except RuntimeError:  # inference tensors keep no version counter: prepare every call
            return prepare()
        key = (id(weight), tag)
        hit = self._entries.get(key)
        if hit is not None and hit[0].matches([weight]):
            return hit[1]
        value = prepare()
        import weakref

        ref = weakref.ref(weight, lambda _r, k=key, d=self._entries: d.pop(k, None))
        self._entries[key] = (SourceStamp([weight]), value, ref)
        return value
