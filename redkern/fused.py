"""The fused RED-Net: the reference model's parameters, run through ``torch.ops.redkern``.

``FusedREDNet`` subclasses ``REDNet`` and only replaces ``forward``, so parameters,
``state_dict`` keys, ``load_state_dict``, ``.to()``, ``eval()`` and hooks are the
reference model's own. Activations stay NHWC (channels_last) between layers; the input is
converted once and the output returned in the input's memory format.

Two ways through the same kernels:

- **The ops** (``torch.ops.redkern.*``), whenever autograd needs a graph or the call is being
  traced or compiled: they carry the fake implementations and the gradients.
- **Inference** (no gradient needed, eager): the backend's kernel is called directly with
  output buffers from a pool, skipping 30 op dispatches, and on the CPU reusing the feature
  maps of the previous call of the same shape. A fresh 256 MiB feature map (64 channels at
  1024x1024) costs a page fault per 4 KiB the kernel first writes, which was a third of
  RED30's time at that size. ``release_buffers()`` gives the pool's memory back.
"""

from __future__ import annotations

import threading

import torch

from . import backends as _backends
from .backends.common import Epilogue, is_channels_last, to_nhwc
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
        if self._needs_ops(x):
            return self._forward_ops(x)
        return self._forward_inference(x)

    def release_buffers(self) -> None:
        """Free the feature maps kept from the last inference call (see the module docstring)."""
        self._pool().clear()

    def _pool(self) -> "_BufferPool":
        pool = self.__dict__.get("_buffer_pool")
        if pool is None:  # not in __init__: models restored by pickle or deepcopy get one too
            pool = self.__dict__.setdefault("_buffer_pool", _BufferPool())
        return pool

    def _needs_ops(self, x: torch.Tensor) -> bool:
        """True when the call must go through the custom ops: autograd, tracing, compiling,
        or fake/meta tensors, which only the ops' fake implementations understand."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or x.device.type == "meta":
            return True
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            return True
        return type(x) is not torch.Tensor  # subclasses (fake, functional) need the ops

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        impl = _backends.resolve(self.backend, x.device)
        for name, p in self.named_parameters():  # the ops check this per call; here once
            if p.device != x.device or p.dtype != x.dtype:
                raise ValueError(f"FusedREDNet.forward: parameter {name} is {p.dtype} on {p.device}, "
                                 f"the input {x.dtype} on {x.device}; move the whole model with .to()")
        n, _, h, w = x.shape
        pooled = x.device.type == "cpu"  # CUDA's caching allocator already reuses memory
        key = (n, h, w, self.features, x.dtype, x.device)
        free = self._pool().take(key) if pooled else []

        def new_map():
            if free:
                return free.pop()
            return torch.empty((n, self.features, h, w), dtype=x.dtype, device=x.device,
                               memory_format=torch.channels_last)

        inp = to_nhwc(x.detach())
        h_map, saved = inp, {}
        skip_sources = set(self.skips.values())
        for i in range(1, self.n + 1):
            layer, out = self.encoder(i), new_map()
            impl.conv3x3(h_map, layer.weight, layer.bias, None, transposed=False, epilogue=Epilogue.RELU, out=out)
            if i > 1 and i - 1 not in skip_sources:
                free.append(h_map)
            h_map = out
            if i in skip_sources:
                saved[i] = out
        for j in range(1, self.n):
            layer, out = self.decoder(j), new_map()
            skip = saved.pop(self.skips[j]) if j in self.skips else None
            impl.conv3x3(h_map, layer.weight, layer.bias, skip, transposed=True,
                         epilogue=Epilogue.RELU if skip is None else Epilogue.RELU_ADD_RELU, out=out)
            free.append(h_map)  # a decoder's input is never a skip (those are conv_1..conv_{n-1})
            if skip is not None:
                free.append(skip)
            h_map = out
        last = self.decoder(self.n)
        # NHWC with stride(1) == 1 even for one channel (what the kernels write).
        out = torch.empty((n, h, w, self.channels), dtype=x.dtype, device=x.device).permute(0, 3, 1, 2)
        impl.conv3x3(h_map, last.weight, last.bias, inp, transposed=True, epilogue=Epilogue.ADD_RESIDUAL, out=out)
        free.append(h_map)
        if pooled:
            self._pool().put(key, free)
        return out if is_channels_last(x) else out.contiguous()

    def _forward_ops(self, x: torch.Tensor) -> torch.Tensor:
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


class _BufferPool:
    """Feature maps kept between inference calls, for the most recent input shape only.

    ``take`` hands a call the whole free list for its shape (a concurrent call of the same
    shape finds none and allocates its own, so no two calls share a buffer); ``put`` gives
    it back afterwards, replacing whatever another shape left.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._key, self._maps = None, []

    def take(self, key) -> list:
        with self._lock:
            if key != self._key:
                return []
            maps, self._maps = self._maps, []
            return maps

    def put(self, key, maps: list) -> None:
        with self._lock:
            self._key, self._maps = key, maps

    def clear(self) -> None:
        with self._lock:
            self._key, self._maps = None, []
