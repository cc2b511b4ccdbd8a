"""FSRCNN (Dong, Loy & Tang, "Accelerating the Super-Resolution Convolutional Neural Network",
ECCV 2016).

On the low-resolution image: 5x5 conv (channels -> d) + PReLU (feature extraction), 1x1 conv
d -> s + PReLU (shrinking), m x (3x3 conv s -> s + PReLU) (mapping), 1x1 conv s -> d + PReLU
(expanding), 9x9 transposed conv d -> channels with stride = scale, padding 4, output_padding
scale - 1 (output exactly scale times the input). PReLU per channel. FSRCNN(d=56, s=12, m=4),
x3 by default (the paper's x2/x3/x4 differ only in the deconvolution's stride).
Parameters (1 channel): 12,809 with biases and PReLU slopes; 12,464 weights only, as the paper counts.
"""

from __future__ import annotations

from torch import nn

from ._registry import register_model

__all__ = ["FSRCNN", "fsrcnn"]


class FSRCNN(nn.Module):
    def __init__(self, scale: int = 3, d: int = 56, s: int = 12, m: int = 4, channels: int = 1):
        super().__init__()
        self.scale = scale
        layers = [nn.Conv2d(channels, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.features = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(d, channels, 9, stride=scale, padding=4, output_padding=scale - 1)

    def forward(self, x):
        return self.deconv(self.features(x))


@register_model
def fsrcnn(**options) -> FSRCNN:
    """FSRCNN(56, 12, 4) x3, 1 channel: 12,809 parameters."""
    return FSRCNN(**options)
