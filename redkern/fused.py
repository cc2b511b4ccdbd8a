"""The fused RED-Net: the reference model's parameters, run through ``torch.ops.redkern``.

``FusedREDNet`` subclasses ``REDNet`` and only replaces ``forward``, so parameters,
``state_dict`` keys, ``load_state_dict``, ``.to()``, ``eval()`` and hooks are the
reference model's own. Activations stay NHWC (channels_last) between layers; the input is
converted once and the output returned in the input's memory format.
"""

from __future__ import annotations

import torch

from . import backends as _backends
from .backends.common import is_channels_last, to_nhwc
from .models import REDNet
from .validation import check_image_batch

ops = torch.ops.redkern


class FusedREDNet(REDNet):
    """RED-Net whose every layer is one fused kernel call (see ``redkern.ops``).

    Args: as ``REDNet``, plus ``backend``: ``"auto"`` picks per device (CPU: C++; CUDA:
    Triton, else CUDA C++) or a name from ``redkern.backends()`` forces one.
    """

    def __init__(self, depth: int = 30, channels: int = 1, features: int = 64,
                 skips: bool | None = None, backend: str = "auto"):
        super().__init__(depth, channels, features, skips)
        if backend not in _backends.BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; choose one of {_backends.BACKEND_NAMES}")
        self.backend = backend

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.channels, self.conv_1.weight, "FusedREDNet.forward")
        be = self.backend
        h = to_nhwc(x)
        inp = h
        saved = {}
        skip_sources = set(self.skips.values())
        for i in range(1, self.n + 1):
            layer = self.encoder(i)
            h = ops.conv_relu(h, layer.weight, layer.bias, be)
            if i in skip_sources:
                saved[i] = h
        for j in range(1, self.n):
            layer = self.decoder(j)
            skip = saved.pop(self.skips[j]) if j in self.skips else None
            h = ops.deconv_relu(h, layer.weight, layer.bias, skip, be)
        last = self.decoder(self.n)
        out = ops.deconv_residual(h, last.weight, last.bias, inp, be)
        return out if is_channels_last(x) else out.contiguous()
