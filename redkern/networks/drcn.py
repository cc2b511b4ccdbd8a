"""DRCN (Kim, Lee & Lee, "Deeply-Recursive Convolutional Network for Image Super-Resolution",
CVPR 2016).

3x3 convolutions, 256 wide, ReLU, 1 channel (Y of the bicubic-enlarged image). Embedding net:
two convs (1 -> 256, 256 -> 256), ``H0``. Inference net: one conv 256 -> 256 applied ``D = 16``
times with the same weights, ``H_d = relu(W * H_{d-1} + b)``. Reconstruction net, shared by
every recursion: conv 256 -> 256 + ReLU, conv 256 -> 1. The advanced model (the paper's DRCN)
adds recursive supervision and the skip connection: each recursion's features are
reconstructed, ``y_d = f_rec(H_d) + x``, and the output is their learned weighted sum
``y = sum_d w_d y_d``, the ``D`` weights ``w_d`` trained with the network
(initialised here to 1/D, the plain average). With the skip connection the reconstruction net
predicts the residual, so its last conv has no activation.

Receptive field 41 x 41 (radius 2 + 16 + 2 = 20), as the paper states. Parameters with biases:
1,775,121 (1,774,080 conv weights, 1,025 biases, 16 ensemble weights).

At inference every conv fuses with its ReLU, the last one with ``+ x``; the weighted sum of the
16 predictions (multiplications by learned scalars and additions) stays in PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["DRCN", "drcn"]


class DRCN(nn.Module):
    """DRCN with ``recursions`` applications of one shared conv of ``features`` maps.

    Args: recursions (D: 16 in the paper), features (256), channels (1: Y).
    Layers: ``embed1``, ``embed2`` (embedding net), ``inference`` (the recursive conv),
    ``reconstruct1``, ``reconstruct2`` (reconstruction net, shared by the recursions),
    ``weights`` (``[D]``, the ensemble weights of the ``D`` predictions).
    Input/output ``[N, channels, H, W]``.
    """

    def __init__(self, recursions: int = 16, features: int = 256, channels: int = 1):
        super().__init__()
        if recursions < 1:
            raise ValueError(f"recursions must be >= 1, got {recursions!r}")
        self.recursions = int(recursions)
        self.embed1 = nn.Conv2d(channels, features, 3, padding=1)
        self.embed2 = nn.Conv2d(features, features, 3, padding=1)
        self.inference = nn.Conv2d(features, features, 3, padding=1)
        self.reconstruct1 = nn.Conv2d(features, features, 3, padding=1)
        self.reconstruct2 = nn.Conv2d(features, channels, 3, padding=1)
        self.weights = nn.Parameter(torch.full((self.recursions,), 1.0 / self.recursions))

    def predictions(self, x) -> list:
        """The ``D`` intermediate predictions ``y_d = f_rec(H_d) + x`` (recursive supervision
        trains each against the target)."""
        h = F.relu(self.embed2(F.relu(self.embed1(x))))
        ys = []
        for _ in range(self.recursions):
            h = F.relu(self.inference(h))
            ys.append(self.reconstruct2(F.relu(self.reconstruct1(h))) + x)
        return ys

    def forward(self, x):
        ys = self.predictions(x)
        out = self.weights[0] * ys[0]
        for d in range(1, self.recursions):
            out = out + self.weights[d] * ys[d]
        return out


@register_model
def drcn(**options) -> DRCN:
    """DRCN: 16 recursions, 256 wide, grayscale: 1,775,121 parameters."""
    return DRCN(**options)
