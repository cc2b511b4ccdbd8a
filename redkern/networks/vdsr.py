"""VDSR (Kim, Lee & Lee, "Accurate Image Super-Resolution Using Very Deep Convolutional
Networks", CVPR 2016).

20 layers of 3x3 convolutions, 64 wide, ReLU after every layer but the last; the network
predicts the residual: output = net(x) + x. Input: the bicubic-enlarged image (Y channel
in the paper), output of the same size. With biases: 665,921 parameters (1 channel).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["VDSR", "vdsr"]


class VDSR(nn.Module):
    """VDSR: ``depth`` 3x3 convs (stride 1, padding 1, bias) of ``features`` maps.

    Args: depth (20 in the paper), features (64), channels (1: Y).
    Input/output ``[N, channels, H, W]``; output = net(x) + x (the last conv's residual add is fused).
    """

    def __init__(self, depth: int = 20, features: int = 64, channels: int = 1):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth!r}")
        self.channels = channels
        self.input = nn.Conv2d(channels, features, 3, padding=1)
        self.body = nn.ModuleList(nn.Conv2d(features, features, 3, padding=1) for _ in range(depth - 2))
        self.output = nn.Conv2d(features, channels, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.input(x))
        for conv in self.body:
            h = F.relu(conv(h))
        return self.output(h) + x


@register_model
def vdsr(**options) -> VDSR:
    """VDSR, 20 layers x 64, 1 channel: 665,921 parameters."""
    return VDSR(**options)
