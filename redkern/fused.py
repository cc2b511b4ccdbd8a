"""The fused RED-Net: the reference model's parameters, run through the layer plan's executor.

``FusedREDNet`` subclasses ``REDNet`` and changes nothing but how ``forward`` runs: it is
``redkern.fuse``'s machinery (``FusedForward``) on the reference class, so parameters,
``state_dict`` keys, ``load_state_dict``, ``.to()``, ``eval()`` and hooks are the reference
model's own, and its plan is traced from ``REDNet.forward`` itself (``print(model.plan)``).
Activations stay NHWC (channels_last) between layers; the output comes back in the input's
memory format. Without autograd, in eager mode, the kernels write straight into pooled feature
maps (``redkern.executor``); ``release_buffers()`` gives their memory back.
"""

from __future__ import annotations

from . import backends as _backends
from .fusion import FusedForward
from .models import REDNet

__all__ = ["FusedREDNet"]


class FusedREDNet(FusedForward, REDNet):
    """RED-Net whose every layer is one fused kernel call (see ``redkern.ops``).

    Args: as ``REDNet``, plus ``backend``: ``"auto"`` picks per device (CPU: C++; CUDA:
    Triton, else CUDA C++) or a name from ``redkern.backends()`` forces one; ``nonfinite``:
    ``"raise"`` (refuse NaN/inf inputs) or ``"propagate"`` (see ``FusedForward.nonfinite``).
    """

    _redkern_reference_class = REDNet

    def __init__(self, depth: int = 30, channels: int = 1, features: int = 64,
                 skips: bool | None = None, backend: str = "auto", nonfinite: str = "raise"):
        super().__init__(depth, channels, features, skips)
        if backend not in _backends.BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; choose one of {_backends.BACKEND_NAMES}")
        self._redkern_backend = backend
        self.nonfinite = nonfinite
        self._redkern_runtime_state()  # the plan, made now: a first call may be being compiled

    def extra_repr(self) -> str:
        return super().extra_repr() + f", backend={self.backend!r}"
