"""DRRN (Tai, Yang & Liu, "Image Super-Resolution via Deep Recursive Residual Network", CVPR 2017).

``B`` recursive blocks of ``U`` residual units, 128 wide, 3x3 convolutions, 1 channel (Y of the
bicubic-enlarged image), global residual: output = net(x) + x. Each block starts with its own
conv, whose output ``H0`` every unit of the block adds back (the multi-path local residual,
``H_u = F(H_{u-1}, W) + H0``); the two convs of the residual function ``F`` are
shared by all ``U`` units of the block (recursive learning: ``W`` does not depend on ``u``).
Depth ``d = (1 + 2U) B + 1``: B1U9 20 layers, B1U25 52 (the paper's main model).

Every layer is pre-activated (He et al. 2016), as the paper draws its residual unit and as the
authors' Caffe definitions (``DRRN_B1U9_20C128_train.prototxt``) build the whole network:
BatchNorm + Scale, ReLU, conv, with biases, for the block's first conv (the BatchNorm then acts
on the input image), for each unit's two convs, and for the output conv. Only the convolutions
are shared (parameter names ``RB1_wa``/``RB1_ba``, ``RB1_wb``/``RB1_bb``); each unit keeps its
own BatchNorms. The paper's "297K parameters" counts the conv weights alone: 1,152 + 2 x 147,456
+ 1,152 = 297,216 for any U. With the biases and BatchNorms: B1U25 310,659, B1U9 302,467.
The public PyTorch port (jt827859032/DRRN-pytorch) drops BatchNorm and biases (ReLU-conv units,
exactly 297,216 parameters): ``batchnorm=False, bias=False``.

At inference the BatchNorm + ReLU after a unit's first conv fold into that conv's epilogue, and
each unit's second conv fuses with ``+ H0``. The other BatchNorm + ReLU pairs (before the block's
first conv, before each unit: after the previous unit's sum, and before the output conv) stay in
PyTorch: a ReLU lies between them and the conv they feed, and they follow a sum, not a conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["DRRN", "RecursiveBlock", "drrn", "drrn_b1u9"]


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class RecursiveBlock(nn.Module):
    """One recursive block: ``H0 = conv_in(relu(bn(x)))``, then ``units`` times
    ``H = conv2(relu(bn2_u(conv1(relu(bn1_u(H)))))) + H0`` with ``conv1``/``conv2`` shared.

    ``norm``/``input``: the block's first (pre-activated) conv; ``conv1``, ``conv2``: the shared
    convs; ``norms1[u]``, ``norms2[u]``: unit ``u``'s own BatchNorms (``nn.Identity`` without).
    """

    def __init__(self, in_channels: int, features: int, units: int, batchnorm: bool = True, bias: bool = True):
        super().__init__()
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units!r}")
        self.norm = _norm(in_channels, batchnorm)
        self.input = nn.Conv2d(in_channels, features, 3, padding=1, bias=bias)
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=bias)
        self.norms1 = nn.ModuleList(_norm(features, batchnorm) for _ in range(units))
        self.norms2 = nn.ModuleList(_norm(features, batchnorm) for _ in range(units))

    def forward(self, x):
        h0 = self.input(F.relu(self.norm(x)))
        h = h0
        for bn1, bn2 in zip(self.norms1, self.norms2):
            h = self.conv2(F.relu(bn2(self.conv1(F.relu(bn1(h)))))) + h0
        return h


class DRRN(nn.Module):
    """DRRN of ``blocks`` recursive blocks of ``units`` residual units (see the module docstring).

    Args: blocks (B: 1 in the paper's models), units (U: 25 for the main model, 9 for the
    20-layer one), features (128), channels (1: Y), batchnorm (True: the authors' pre-activation
    BN-ReLU-conv; False: ReLU-conv as the public PyTorch port), bias (True, as the authors').
    Input/output ``[N, channels, H, W]``; output = net(x) + x (the output conv's add is fused).
    """

    def __init__(self, blocks: int = 1, units: int = 25, features: int = 128, channels: int = 1,
                 batchnorm: bool = True, bias: bool = True):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks!r}")
        self.blocks = nn.ModuleList(
            RecursiveBlock(channels if b == 0 else features, features, units, batchnorm, bias) for b in range(blocks))
        self.output_norm = _norm(features, batchnorm)
        self.output = nn.Conv2d(features, channels, 3, padding=1, bias=bias)

    def forward(self, x):
        h = x
        for block in self.blocks:
            h = block(h)
        return self.output(F.relu(self.output_norm(h))) + x


@register_model
def drrn(**options) -> DRRN:
    """DRRN_B1U25 (52 layers, the paper's main model), 128 wide, BatchNorm, biases:
    310,659 parameters (297,216 conv weights: the paper's 297K)."""
    return DRRN(**{"blocks": 1, "units": 25, **options})


@register_model
def drrn_b1u9(**options) -> DRRN:
    """DRRN_B1U9 (20 layers), 128 wide, BatchNorm, biases: 302,467 parameters (297,216 conv
    weights: the paper's 297K)."""
    return DRRN(**{"blocks": 1, "units": 9, **options})
