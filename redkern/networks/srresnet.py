"""SRResNet (Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative
Adversarial Network", CVPR 2017): the SRGAN generator, x4, RGB.

9x9 conv 3 -> 64 + PReLU; 16 residual blocks (3x3 conv, BN, PReLU, 3x3 conv, BN, + input);
3x3 conv, BN, + the head's output (long skip); 2 x (3x3 conv 64 -> 256, pixel shuffle x2,
PReLU); 9x9 conv 64 -> 3. No output activation (the paper's figure has none).

Choices the paper leaves open, as sgrvinod's tutorial port takes them: every conv has a bias,
each PReLU has one shared slope. KAIR's ``MSRResNet0``/``MSRResNet1`` and BasicSR's ``MSRResNet``
are other networks (no BN, ReLU / leaky ReLU); the latter two are ``msrresnet``. A one-slope PReLU is
elementwise and commutes with the pixel shuffle, so ``forward`` applies it before the shuffle
(the same function) and the PReLU fuses into the upsampling conv.
Parameters: 1,549,462 (x4).
"""

from __future__ import annotations

import math

from torch import nn

from ._registry import register_model

__all__ = ["SRResNet", "srresnet"]


class ResidualBlock(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(features)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(features)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class UpsampleBlock(nn.Module):
    """3x3 conv to 4x the features, PReLU, pixel shuffle x2 (PReLU and shuffle commute)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv = nn.Conv2d(features, 4 * features, 3, padding=1)
        self.prelu = nn.PReLU()
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.prelu(self.conv(x)))


class SRResNet(nn.Module):
    def __init__(self, scale: int = 4, n_blocks: int = 16, features: int = 64, channels: int = 3):
        super().__init__()
        if scale < 2 or scale & (scale - 1):
            raise ValueError(f"scale must be a power of two >= 2, got {scale!r}")
        self.scale = scale
        self.head = nn.Conv2d(channels, features, 9, padding=4)
        self.head_prelu = nn.PReLU()
        self.body = nn.Sequential(*[ResidualBlock(features) for _ in range(n_blocks)])
        self.body_conv = nn.Conv2d(features, features, 3, padding=1)
        self.body_bn = nn.BatchNorm2d(features)
        self.upsample = nn.Sequential(*[UpsampleBlock(features) for _ in range(int(math.log2(scale)))])
        self.tail = nn.Conv2d(features, channels, 9, padding=4)

    def forward(self, x):
        h = self.head_prelu(self.head(x))
        return self.tail(self.upsample(h + self.body_bn(self.body_conv(self.body(h)))))


@register_model
def srresnet(**options) -> SRResNet:
    """SRResNet x4, 16 blocks x 64: 1,549,462 parameters."""
    return SRResNet(**options)
