"""MemNet (Tai, Yang, Liu & Xu, "MemNet: A Persistent Memory Network for Image Restoration",
ICCV 2017).

64 wide, 1 channel (Y of the degraded or bicubic-enlarged image), every conv pre-activated
(BatchNorm + Scale, ReLU, conv, with bias), as the authors' Caffe definitions
(``MemNet_M6R6_80C64_train.prototxt``) build it. Feature extraction: a 3x3 conv 1 -> 64, ``B0``.
``M`` memory blocks; block ``m`` takes ``B_{m-1}`` and has

* a recursive unit: one residual building block (BN-ReLU-conv 3x3, BN-ReLU-conv 3x3, plus its
  input) applied ``R`` times with the same two convs (weights shared within the block,
  ``conv<m>_wa``/``_wb`` in the authors' files; each recursion keeps its own BatchNorms); its
  ``R`` outputs ``B_m^1 .. B_m^R`` are the short-term memory;
* a gate unit: BN-ReLU-conv 1x1 over the concatenation ``[B_0, ..., B_{m-1}, B_m^1, ..., B_m^R]``
  (the long-term memory first, in the authors' order), ``(R + m) * 64 -> 64``: ``B_m``.

Reconstruction: BN-ReLU-conv 3x3 64 -> 1, plus the input. The authors' released M6R6
training definition is multi-supervised, and that is the default here: the
reconstruction conv is shared by all blocks (``Recon_w``), each block's output ``B_m`` gets its
own BatchNorm before it, ``y_m = f_rec(B_m) + x``, and the output is ``sum_m w_m y_m`` with ``M``
learned scalars (initialised here to 1/M). ``multi_supervised=False``: one reconstruction of
``B_M`` (the paper's single-supervised variant).

Depth: 1 + M (2R + 1) + 1 conv layers (80 for M6R6). Parameters of M6R6, multi-supervised:
695,497; the conv weights alone are 676,992 (the paper's 677K).

At inference the BatchNorm after each unit's first conv folds into it; the BatchNorm + ReLU
before each unit, gate and reconstruction (their inputs are memories several layers read, or a
concatenation) stay in PyTorch, with the concatenations and the weighted sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["MemNet", "MemoryBlock", "memnet"]


class MemoryBlock(nn.Module):
    """Memory block number ``index`` (1-based): a recursive unit of ``units`` recursions of one
    residual building block (``conv1``, ``conv2`` shared; ``norms1[r]``, ``norms2[r]`` per
    recursion) and a gate unit (``gate_norm``, ``gate``: 1x1 conv over the ``units + index``
    memories). ``forward(x, long_term)``: ``long_term`` = ``[B_0, ..., B_{index-1}]``."""

    def __init__(self, features: int, units: int, index: int):
        super().__init__()
        if units < 1:
            raise ValueError(f"units must be >= 1, got {units!r}")
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.norms1 = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(units))
        self.norms2 = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(units))
        memories = (units + index) * features
        self.gate_norm = nn.BatchNorm2d(memories)
        self.gate = nn.Conv2d(memories, features, 1)

    def forward(self, x, long_term: list):
        short_term = []
        h = x
        for bn1, bn2 in zip(self.norms1, self.norms2):
            h = self.conv2(F.relu(bn2(self.conv1(F.relu(bn1(h)))))) + h
            short_term.append(h)
        return self.gate(F.relu(self.gate_norm(torch.cat(list(long_term) + short_term, 1))))


class MemNet(nn.Module):
    """MemNet with ``blocks`` memory blocks of ``units`` recursions (see the module docstring).

    Args: blocks (M: 6), units (R: 6), features (64), channels (1), multi_supervised (True: the
    weighted sum of every block's reconstruction; False: block M's only).
    Layers: ``feature_norm``, ``feature``; ``blocks[m]``; ``reconstruction_norms[m]`` (one per
    supervised output), ``reconstruction`` (shared); ``weights`` (``[M]``, multi-supervised only).
    Input/output ``[N, channels, H, W]``.
    """

    def __init__(self, blocks: int = 6, units: int = 6, features: int = 64, channels: int = 1,
                 multi_supervised: bool = True):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks!r}")
        self.multi_supervised = bool(multi_supervised)
        self.feature_norm = nn.BatchNorm2d(channels)
        self.feature = nn.Conv2d(channels, features, 3, padding=1)
        self.blocks = nn.ModuleList(MemoryBlock(features, units, m + 1) for m in range(blocks))
        outputs = blocks if self.multi_supervised else 1
        self.reconstruction_norms = nn.ModuleList(nn.BatchNorm2d(features) for _ in range(outputs))
        self.reconstruction = nn.Conv2d(features, channels, 3, padding=1)
        if self.multi_supervised:
            self.weights = nn.Parameter(torch.full((blocks,), 1.0 / blocks))

    def predictions(self, x) -> list:
        """``y_m = f_rec(B_m) + x`` for each supervised block (the last block's only when not
        multi-supervised)."""
        memories = [self.feature(F.relu(self.feature_norm(x)))]
        for block in self.blocks:
            memories.append(block(memories[-1], memories))
        outs = memories[1:] if self.multi_supervised else memories[-1:]
        return [self.reconstruction(F.relu(bn(b))) + x for bn, b in zip(self.reconstruction_norms, outs)]

    def forward(self, x):
        ys = self.predictions(x)
        if not self.multi_supervised:
            return ys[0]
        out = self.weights[0] * ys[0]
        for m in range(1, len(ys)):
            out = out + self.weights[m] * ys[m]
        return out


@register_model
def memnet(**options) -> MemNet:
    """MemNet M6R6 (80 layers), 64 wide, multi-supervised, grayscale: 695,497 parameters."""
    return MemNet(**options)
