"""EDSR (Lim, Son, Kim, Nah & Lee, "Enhanced Deep Residual Networks for Single Image
Super-Resolution", CVPRW 2017).

RGB. Mean shift (a fixed 1x1 conv subtracting the DIV2K mean), 3x3 head conv, ``n_blocks``
residual blocks (conv, ReLU, conv, times ``res_scale``, plus the input; no BatchNorm), a 3x3 conv
and the long skip, the upsampler (x2, x3: one conv to ``features * r^2`` and pixel shuffle r;
x4: twice x2; no activation), a 3x3 tail conv, and the mean added back.
EDSR baseline: 16 blocks x 64, res_scale 1; EDSR: 32 blocks x 256, res_scale 0.1.

As in the authors' code (EDSR-PyTorch ``model/edsr.py``), the mean shifts are 1x1 convs whose
parameters are frozen (``requires_grad=False``) and the layer names match (``sub_mean``,
``head.0``, ``body.<i>.body.0``/``.2``, ``body.<n_blocks>``, ``tail.0.<j>``, ``tail.1``,
``add_mean``), so their state_dicts load. ``rgb_range`` is the image's value range: 1.0 here
(the library's [0, 1] images); the authors trained with 255, and loading their state_dict
brings that mean-shift bias with it.

Trainable parameters (the mean shifts add 24 frozen ones): baseline x2 1,369,859, x3 1,554,499,
x4 1,517,571; EDSR x2 40,729,603, x3 43,680,003, x4 43,089,923 (the paper's "43M").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._registry import register_model

__all__ = ["EDSR", "ResBlock", "mean_shift", "upsampler", "edsr_baseline", "edsr", "DIV2K_RGB_MEAN"]

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


def mean_shift(rgb_range: float, mean=DIV2K_RGB_MEAN, sign: int = -1) -> nn.Conv2d:
    """x + sign * rgb_range * mean, per channel, as a frozen 1x1 conv (the authors' ``MeanShift``).
    A plain ``nn.Conv2d``, not a subclass: the layer planner fuses only the stock conv classes and
    traces a subclass into its ``F.conv2d`` call, which would run in PyTorch."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.copy_(sign * rgb_range * torch.tensor(mean))
    conv.requires_grad_(False)
    return conv


class ResBlock(nn.Module):
    """conv, ReLU, conv (``kernel_size`` square, "same" padding), times ``res_scale``, plus the
    input; the authors' ``common.ResBlock`` names (``body.0``, ``body.2``). MDSR's per-scale
    heads use ``kernel_size=5``."""

    def __init__(self, features: int, res_scale: float = 1.0, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(nn.Conv2d(features, features, kernel_size, padding=pad), nn.ReLU(inplace=True),
                                  nn.Conv2d(features, features, kernel_size, padding=pad))
        self.res_scale = float(res_scale)

    def forward(self, x):
        return x + self.body(x) * self.res_scale


def upsampler(scale: int, features: int) -> nn.Sequential:
    """The authors' ``common.Upsampler`` without activation: x2^k as k times (3x3 conv to
    ``4 * features``, pixel shuffle 2); x3 as one 3x3 conv to ``9 * features``, pixel shuffle 3."""
    layers = []
    if scale & (scale - 1) == 0:  # a power of two: x2 steps
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(features, 4 * features, 3, padding=1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(features, 9 * features, 3, padding=1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"scale must be 2, 3 or a power of two, got {scale!r}")
    return nn.Sequential(*layers)


class EDSR(nn.Module):
    def __init__(self, scale: int = 2, n_blocks: int = 16, features: int = 64, res_scale: float = 1.0,
                 rgb_range: float = 1.0):
        super().__init__()
        self.scale = scale
        self.rgb_range = float(rgb_range)
        self.sub_mean = mean_shift(rgb_range, sign=-1)
        self.head = nn.Sequential(nn.Conv2d(3, features, 3, padding=1))
        self.body = nn.Sequential(*[ResBlock(features, res_scale) for _ in range(n_blocks)],
                                  nn.Conv2d(features, features, 3, padding=1))
        self.tail = nn.Sequential(upsampler(scale, features), nn.Conv2d(features, 3, 3, padding=1))
        self.add_mean = mean_shift(rgb_range, sign=1)

    def forward(self, x):
        h = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(h + self.body(h)))


@register_model
def edsr_baseline(**options) -> EDSR:
    """EDSR baseline x2: 16 blocks x 64, res_scale 1: 1,369,859 trainable parameters."""
    return EDSR(**{"scale": 2, "n_blocks": 16, "features": 64, "res_scale": 1.0, **options})


@register_model
def edsr(**options) -> EDSR:
    """EDSR x2: 32 blocks x 256, res_scale 0.1: 40,729,603 trainable parameters."""
    return EDSR(**{"scale": 2, "n_blocks": 32, "features": 256, "res_scale": 0.1, **options})
