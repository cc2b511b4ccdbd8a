"""SRDenseNet (Tong, Li, Liu & Gao, "Image Super-Resolution Using Dense Skip Connections",
ICCV 2017), the paper's full variant SRDenseNet_All.

On the low-resolution image (Y channel): a 3x3 conv to 128 low-level feature maps + ReLU;
8 dense blocks, each of 8 3x3 convs + ReLU with growth rate 16: layer j of a block reads the
block's input concatenated with the outputs of layers 0..j-1 (128 + 16 j maps) and makes 16,
and the block's output is its 8 layers' outputs concatenated (8 x 16 = 128 maps), the next
block's input. Dense skip connections: the low-level features and all 8 blocks' outputs are
concatenated (128 + 8 x 128 = 1152 maps), a 1x1 bottleneck conv reduces them to 256 (+ ReLU),
two 3x3 stride-2 transposed convs of 256 maps (+ ReLU) upsample x4, and a 3x3 conv 256 -> 1
reconstructs the image. Biases throughout.

Public ports differ: wxywhu/SRDenseNet-pytorch uses 4x4 stride-2 deconvolutions
(``deconv_kernel=4`` here) and a 16-map low-level conv whose blocks keep their inputs.

Parameters (1 channel): 3,175,681 (3x3 deconvolutions), 4,093,185 with ``deconv_kernel=4``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["DenseBlock", "SRDenseNet", "srdensenet"]


class DenseBlock(nn.Module):
    """``layers`` 3x3 convs + ReLU, each reading the block input and every earlier layer's output
    concatenated, making ``growth`` maps; returns the layers' outputs concatenated
    (``layers * growth`` maps)."""

    def __init__(self, in_channels: int, growth: int = 16, layers: int = 8):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels + j * growth, growth, 3, padding=1) for j in range(layers))

    def forward(self, x):
        outputs = []
        for conv in self.convs:
            outputs.append(F.relu(conv(torch.cat([x, *outputs], 1) if outputs else x)))
        return torch.cat(outputs, 1)


class SRDenseNet(nn.Module):
    """SRDenseNet_All: low-level conv, ``blocks`` dense blocks, dense skip concatenation,
    1x1 bottleneck, ``log2(scale)`` stride-2 deconvolutions, reconstruction conv.

    Args: scale (4 in the paper: two deconvolutions; 2 or 8 for one or three), blocks (8),
    layers per block (8), growth (16), low_features (128 = layers x growth, the low-level
    conv's maps), bottleneck (256), deconv_kernel (3 as the paper; 4 as the public port),
    channels (1: Y). Input ``[N, channels, H, W]`` (the low-resolution image, any H, W);
    output ``[N, channels, scale*H, scale*W]``.
    """

    def __init__(self, scale: int = 4, blocks: int = 8, layers: int = 8, growth: int = 16,
                 low_features: int | None = None, bottleneck: int = 256, deconv_kernel: int = 3,
                 channels: int = 1):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"SRDenseNet upsamples by x2 per deconvolution: scale must be 2, 4 or 8, got {scale!r}")
        if deconv_kernel not in (3, 4):
            raise ValueError(f"deconv_kernel must be 3 (the paper) or 4 (the public port), got {deconv_kernel!r}")
        block_out = layers * growth
        low = block_out if low_features is None else low_features
        self.scale = scale
        self.lowlevel = nn.Conv2d(channels, low, 3, padding=1)
        self.blocks = nn.ModuleList(DenseBlock(low if b == 0 else block_out, growth, layers) for b in range(blocks))
        self.bottleneck = nn.Conv2d(low + blocks * block_out, bottleneck, 1)
        # stride 2, padding 1: exactly 2x (output_padding 1 for the odd 3x3 kernel)
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(bottleneck, bottleneck, deconv_kernel, stride=2, padding=1,
                               output_padding=deconv_kernel % 2)
            for _ in range(scale.bit_length() - 1))
        self.reconstruction = nn.Conv2d(bottleneck, channels, 3, padding=1)

    def forward(self, x):
        h = F.relu(self.lowlevel(x))
        skips = [h]
        for block in self.blocks:
            h = block(h)
            skips.append(h)
        h = F.relu(self.bottleneck(torch.cat(skips, 1)))
        for deconv in self.deconvs:
            h = F.relu(deconv(h))
        return self.reconstruction(h)


@register_model
def srdensenet(**options) -> SRDenseNet:
    """SRDenseNet_All x4 (8 dense blocks x 8 convs, growth 16), 1 channel: 3,175,681 parameters."""
    return SRDenseNet(**options)
