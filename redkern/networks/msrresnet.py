"""MSRResNet, the "modified SRResNet" of BasicSR (``basicsr/archs/srresnet_arch.py``; KAIR's
``MSRResNet1`` is the same network under other names), from ESRGAN (Wang et al., ECCVW 2018):
the SRResNet of Ledig et al. without BatchNorm, x4, RGB. Not ``srresnet``: a different network.

3x3 conv (channels -> 64) + leaky ReLU 0.1; ``n_blocks`` residual blocks (3x3 conv, ReLU, 3x3
conv, + input; no BN, no long skip over the body); the upsampler (x2, x3: one 3x3 conv to
``features * r^2``, pixel shuffle r, leaky ReLU; x4: that twice with r = 2); 3x3 conv + leaky
ReLU; 3x3 conv to ``channels``; plus the input enlarged bilinearly (``align_corners=False``).
Compared with ``srresnet``: no BatchNorm, ReLU / leaky ReLU instead of PReLU, 3x3 instead of 9x9
head and tail, an extra HR conv, and a bilinear global residual instead of the long skip.

Layer names are BasicSR's (``conv_first``, ``body.<i>.conv1``/``conv2``, ``upconv1``,
``upconv2``, ``conv_hr``, ``conv_last``), so BasicSR's ``params`` load as they are. BasicSR
applies the leaky ReLU after the pixel shuffle; an elementwise activation commutes with the
shuffle, so ``forward`` applies it before (the same function) and it fuses into the conv.
Parameters (16 blocks x 64, BasicSR's MSRResNet_x4): x4 1,517,571.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["MSRResNet", "msrresnet"]


class ResidualBlockNoBN(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    def __init__(self, scale: int = 4, n_blocks: int = 16, features: int = 64, channels: int = 3):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {scale!r}")
        self.scale, self.channels = scale, channels
        self.conv_first = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(features) for _ in range(n_blocks)])
        r = 2 if scale == 4 else scale
        self.upconv1 = nn.Conv2d(features, features * r * r, 3, padding=1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(features, features * 4, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(r)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, channels, 3, padding=1)

    def forward(self, x):
        out = self.body(F.leaky_relu(self.conv_first(x), 0.1))
        # leaky ReLU is elementwise, so it commutes with the shuffle: applied first, it fuses
        out = self.pixel_shuffle(F.leaky_relu(self.upconv1(out), 0.1))
        if self.scale == 4:
            out = self.pixel_shuffle(F.leaky_relu(self.upconv2(out), 0.1))
        out = self.conv_last(F.leaky_relu(self.conv_hr(out), 0.1))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


@register_model
def msrresnet(**options) -> MSRResNet:
    """MSRResNet x4 (BasicSR's), 16 blocks x 64: 1,517,571 parameters."""
    return MSRResNet(**options)
