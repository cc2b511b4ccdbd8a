"""MDSR (Lim, Son, Kim, Nah & Lee, "Enhanced Deep Residual Networks for Single Image
Super-Resolution", CVPRW 2017): the multi-scale model, one network for x2, x3 and x4.

RGB, built from EDSR's parts (``redkern.networks.edsr``): the frozen mean shift, a 3x3 head
conv (3 -> 64), then per scale a pre-processing module of two 5x5 residual blocks, the shared
body (80 residual blocks x 64, res scale 1, then a 3x3 conv and the long skip), per scale an
upsampler (conv + pixel shuffle, no activation), the shared 3x3 tail conv (64 -> 3) and the
mean added back. One forward pass runs one scale's pre-processing and upsampler: the one
``set_scale`` (or the constructor's ``scale``) selected.

As in the authors' code (EDSR-PyTorch ``model/mdsr.py``, 80 blocks for MDSR), the layer names
match (``sub_mean``, ``head.0``, ``pre_process.<i>.<0|1>.body.<0|2>``, ``body.<b>.body.<0|2>``,
``body.80``, ``upsample.<i>.<j>``, ``tail.0``, ``add_mean``; ``i`` indexes ``scales``), so
their state_dicts load. Their ``set_scale`` takes the index into ``scales``; ours takes the
scale factor itself. ``rgb_range`` as for EDSR (1.0 here, 255 in the authors' training).

Trainable parameters: 7,953,987 (the paper's "8.0M"); the two mean shifts add 24 frozen ones.
"""

from __future__ import annotations

from torch import nn

from ..layer_plan import RUNTIME_ATTRIBUTES
from ._registry import register_model
from .edsr import ResBlock, mean_shift, upsampler

__all__ = ["MDSR", "mdsr"]


class MDSR(nn.Module):
    """MDSR: shared head, body and tail; per-scale 5x5 pre-processing and upsamplers.

    Args: scales (the scales it holds branches for: (2, 3, 4)), scale (the one ``forward``
    runs at first; ``set_scale`` changes it), n_blocks (80 shared residual blocks), features
    (64), pre_blocks (2 per-scale 5x5 residual blocks), rgb_range (1.0).
    Input ``[N, 3, H, W]`` (the low-resolution image); output ``[N, 3, s*H, s*W]``, s the
    selected scale.
    """

    def __init__(self, scales=(2, 3, 4), scale: int | None = None, n_blocks: int = 80, features: int = 64,
                 pre_blocks: int = 2, rgb_range: float = 1.0):
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        if not self.scales or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct scale factors, got {scales!r}")
        self.sub_mean = mean_shift(rgb_range, sign=-1)
        self.head = nn.Sequential(nn.Conv2d(3, features, 3, padding=1))
        self.pre_process = nn.ModuleList(
            nn.Sequential(*[ResBlock(features, 1.0, kernel_size=5) for _ in range(pre_blocks)])
            for _ in self.scales)
        self.body = nn.Sequential(*[ResBlock(features, 1.0) for _ in range(n_blocks)],
                                  nn.Conv2d(features, features, 3, padding=1))
        self.upsample = nn.ModuleList(upsampler(s, features) for s in self.scales)
        self.tail = nn.Sequential(nn.Conv2d(features, 3, 3, padding=1))
        self.add_mean = mean_shift(rgb_range, sign=1)
        self.scale_idx = 0
        self.set_scale(self.scales[0] if scale is None else scale)

    @property
    def scale(self) -> int:
        """The scale factor ``forward`` runs at."""
        return self.scales[self.scale_idx]

    def set_scale(self, scale: int) -> None:
        """Run at ``scale`` (one of ``scales``) from now on. A fused MDSR (``redkern.fuse``)
        drops its plan, traced for the previous scale, and plans the new one at its next call."""
        if scale not in self.scales:
            raise ValueError(f"MDSR holds branches for scales {self.scales}, got {scale!r}")
        self.scale_idx = self.scales.index(scale)
        self.__dict__.pop(RUNTIME_ATTRIBUTES[0], None)  # the fused runtime: its plan ran one branch

    def forward(self, x):
        h = self.pre_process[self.scale_idx](self.head(self.sub_mean(x)))
        h = h + self.body(h)
        return self.add_mean(self.tail(self.upsample[self.scale_idx](h)))

    def extra_repr(self) -> str:
        return f"scales={self.scales}, scale={self.scale}"


@register_model
def mdsr(**options) -> MDSR:
    """MDSR x2/x3/x4: 80 shared blocks x 64, per-scale 5x5 pre-processing and upsamplers:
    7,953,987 trainable parameters."""
    return MDSR(**options)
