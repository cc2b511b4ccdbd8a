"""ESPCN (Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient
Sub-Pixel Convolutional Neural Network", CVPR 2016).

On the low-resolution image: 5x5 conv (channels -> 64) + tanh, 3x3 conv (64 -> 32) + tanh,
3x3 conv (32 -> channels * r^2), pixel shuffle r. "Same" padding, as the public ports (the
output is exactly r times the input). Scale 3 is the default (the paper's main experiments use
x3 and x4). Parameters (1 channel): x3 22,729; x4 24,752; x2 21,284.
"""

from __future__ import annotations

import torch
from torch import nn

from ._registry import register_model

__all__ = ["ESPCN", "espcn"]


class ESPCN(nn.Module):
    def __init__(self, scale: int = 3, channels: int = 1, n1: int = 64, n2: int = 32):
        super().__init__()
        self.scale = scale
        self.conv1 = nn.Conv2d(channels, n1, 5, padding=2)
        self.conv2 = nn.Conv2d(n1, n2, 3, padding=1)
        self.conv3 = nn.Conv2d(n2, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        return self.shuffle(self.conv3(torch.tanh(self.conv2(torch.tanh(self.conv1(x))))))


@register_model
def espcn(**options) -> ESPCN:
    """ESPCN x3, 1 channel: 22,729 parameters."""
    return ESPCN(**options)
