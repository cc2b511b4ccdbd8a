"""SRCNN (Dong, Loy, He & Tang, "Image Super-Resolution Using Deep Convolutional Networks",
ECCV 2014 / TPAMI 2016).

9x9 conv (channels -> 64) + ReLU, k x k conv (64 -> 32) + ReLU with k = 1 (9-1-5) or 5 (9-5-5),
5x5 conv (32 -> channels). Input: the bicubic-enlarged Y channel.

Padding: the paper's convolutions are unpadded, so the output is smaller than the input by
8 + (k - 1) + 4 pixels in each dimension (12 for 9-1-5, 16 for 9-5-5); that is the default
(``padding="valid"``), following the paper. Public ports pad ``"same"`` (output the input's size):
pass ``padding="same"``. Parameters with biases (1 channel): 9-1-5 8,129 (the paper's 8,032
counts weights only); 9-5-5 57,281 (paper 57,184 without biases).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["SRCNN", "srcnn", "srcnn_955"]


class SRCNN(nn.Module):
    """SRCNN f1-f2-f3 = 9-``middle``-5 with ``n1``/``n2`` filters; ``padding`` "valid" or "same"."""

    def __init__(self, middle: int = 1, n1: int = 64, n2: int = 32, channels: int = 1, padding: str = "valid"):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' (the paper) or 'same' (ports), got {padding!r}")
        pad = (lambda k: k // 2) if padding == "same" else (lambda k: 0)
        self.padding = padding
        self.conv1 = nn.Conv2d(channels, n1, 9, padding=pad(9))
        self.conv2 = nn.Conv2d(n1, n2, middle, padding=pad(middle))
        self.conv3 = nn.Conv2d(n2, channels, 5, padding=pad(5))

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


@register_model
def srcnn(**options) -> SRCNN:
    """SRCNN 9-1-5, 64/32 filters, unpadded: 8,129 parameters."""
    return SRCNN(**{"middle": 1, **options})


@register_model
def srcnn_955(**options) -> SRCNN:
    """SRCNN 9-5-5, 64/32 filters, unpadded: 57,281 parameters."""
    return SRCNN(**{"middle": 5, **options})
