"""LapSRN (Lai, Huang, Ahuja & Yang, "Deep Laplacian Pyramid Networks for Fast and Accurate
Super-Resolution", CVPR 2017).

On the low-resolution image (Y channel), progressively, one pyramid level per x2: a 3x3 input
conv (1 -> 64, leaky ReLU 0.2); per level, the feature extraction branch (``depth`` = d = 10
3x3 convs 64 -> 64 with leaky ReLU 0.2, then a 4x4 stride-2 transposed conv 64 -> 64 with leaky
ReLU 0.2) and the image reconstruction branch (a 4x4 stride-2 transposed conv 1 -> 1 upsampling
the image, initialised to the bilinear kernel, no bias) plus a 3x3 conv 64 -> 1 predicting the
level's residual from the upsampled features. Each level's output image is the next level's
input image; the features go on to the next level. x2, x4, x8: 1, 2, 3 levels.

Biases on every conv and on the feature deconvolutions, none on the image deconvolution, as
in the authors' MatConvNet code (``init_LapSRN.m``). The paper states 4x4 transposed filters;
that code's feature upsampler is f x f = 3x3 (cropped [0, 1]), which, counting weights only,
gives the "812K" the authors report for x4; this module follows the paper's 4x4.

Parameters (1 channel, with biases): x2 436,113, x4 871,586 (the default), x8 1,307,059.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["LapSRN", "bilinear_kernel", "lapsrn"]

SLOPE = 0.2  # the leaky ReLUs' negative slope


def bilinear_kernel(size: int) -> torch.Tensor:
    """The ``size`` x ``size`` bilinear upsampling kernel (x2 for size 4): the outer product of
    ``1 - |i - c| / f`` with ``f = ceil(size / 2)``, the kernel LapSRN initialises its
    transposed convolutions with."""
    f = math.ceil(size / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    t = 1 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    return (t[:, None] * t[None, :]).float()


class Level(nn.Module):
    """One x2 pyramid level: ``convs`` (d x 3x3 64 -> 64), ``upconv`` (4x4 stride-2 features),
    ``residual`` (3x3 64 -> channels) and ``img_up`` (4x4 stride-2 image, no bias)."""

    def __init__(self, depth: int, features: int, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(features, features, 3, padding=1) for _ in range(depth))
        self.upconv = nn.ConvTranspose2d(features, features, 4, stride=2, padding=1)
        self.residual = nn.Conv2d(features, channels, 3, padding=1)
        self.img_up = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1, bias=False)
        with torch.no_grad():  # each channel upsampled on its own, bilinearly
            self.img_up.weight.zero_()
            for c in range(channels):
                self.img_up.weight[c, c] = bilinear_kernel(4)

    def forward(self, features, image):
        for conv in self.convs:
            features = F.leaky_relu(conv(features), SLOPE)
        features = F.leaky_relu(self.upconv(features), SLOPE)
        return features, self.img_up(image) + self.residual(features)


class LapSRN(nn.Module):
    """LapSRN: ``log2(scale)`` pyramid levels of ``depth`` convs each.

    Args: scale (2, 4 or 8; 4 in the paper's main results), depth (d = 10 convs per level),
    features (64), channels (1: Y), return_all_levels (False: ``forward`` returns the finest
    image ``[N, channels, scale*H, scale*W]``; True: the list of every level's image, coarsest
    first, x2 ... x``scale``, which the paper's multi-scale training loss supervises).
    Input: the low-resolution image ``[N, channels, H, W]``, any H, W.
    """

    def __init__(self, scale: int = 4, depth: int = 10, features: int = 64, channels: int = 1,
                 return_all_levels: bool = False):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"LapSRN upsamples by x2 per level: scale must be 2, 4 or 8, got {scale!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth!r}")
        self.scale = scale
        self.return_all_levels = bool(return_all_levels)
        self.input_conv = nn.Conv2d(channels, features, 3, padding=1)
        self.levels = nn.ModuleList(Level(depth, features, channels) for _ in range(int(math.log2(scale))))

    def forward(self, x):
        features = F.leaky_relu(self.input_conv(x), SLOPE)
        image, outputs = x, []
        for level in self.levels:
            features, image = level(features, image)
            outputs.append(image)
        return outputs if self.return_all_levels else image


@register_model
def lapsrn(**options) -> LapSRN:
    """LapSRN x4 (2 levels of d = 10 convs x 64), 1 channel: 871,586 parameters."""
    return LapSRN(**options)
