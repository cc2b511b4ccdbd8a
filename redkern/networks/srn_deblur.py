"""SRN-DeblurNet (Tao, Gao, Shen, Wang & Jia, "Scale-recurrent Network for Deep Image
Deblurring", CVPR 2018).

RGB. One encoder-decoder, its weights shared by ``levels`` = 3 scales, run coarse to fine (the
blurred image bilinearly resized by 1/4, 1/2, 1). At each scale the network reads the blurred
image concatenated with the previous scale's output, bilinearly upsampled x2 (at the coarsest
scale, with the blurred image itself), and a convolutional LSTM at the bottleneck carries its
state (bilinearly upsampled x2) from scale to scale.

Encoder: 5x5 conv 2C -> 32 + ReLU, 3 ResBlocks at 32; 5x5 stride-2 conv -> 64 + ReLU, 3
ResBlocks; 5x5 stride-2 conv -> 128 + ReLU, 3 ResBlocks. ResBlock: 5x5 conv, ReLU, 5x5 conv,
plus the input. ConvLSTM over the 128 maps: one 3x3 conv of [input, h] to the 4 x 128 gate
pre-activations (the authors' ``BasicConvLSTMCell([h/4, w/4], [3, 3], 128)``, forget bias 1).
Decoder: 3 ResBlocks at 128; 4x4 stride-2 transposed conv -> 64 + ReLU, plus the encoder's
64-map output, 3 ResBlocks; 4x4 stride-2 transposed conv -> 32 + ReLU, plus the encoder's
32-map output, 3 ResBlocks; 5x5 conv 32 -> C (no activation). Layer names follow the authors'
TensorFlow scopes (``enc1_1``, ``enc1_2.conv1``, ..., ``dec1_0``; the ConvLSTM ``convlstm.conv``).

Sizes: each scale's H and W must be divisible by 4 (two stride-2 convs there, two x2
deconvolutions back, and the skip additions need equal sizes), so the input's H and W must
be multiples of ``4 * 2**(levels - 1)`` (16 by default); the authors pad their test images to
a fixed size for the same reason. Other sizes raise ``ValueError``: pad first (edge padding,
as the authors do) and crop the output. PyTorch's bilinear resizing (half-pixel centres) stands
in for TensorFlow 1's ``resize_images``, which aligned pixels differently.

Parameters (RGB): 8,061,411.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ._registry import register_model

__all__ = ["ConvLSTMCell", "SRNDeblurNet", "srn_deblur"]


def check_srn_input(x: torch.Tensor, channels: int, multiple: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[N, channels, H, W]`` with H and W multiples of
    ``multiple`` (what every scale's encoder-decoder needs)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"SRNDeblurNet.forward: expected a [N, {channels}, H, W] batch, got {shape}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"SRNDeblurNet.forward: H and W must be multiples of {multiple} (each of the scales' "
            f"encoder-decoders halves them twice and the skip additions need equal sizes), got {h}x{w}; "
            f"pad the image to {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple} and crop the output")


check_srn_input._redkern_check = True  # plans keep it as an input check (redkern.plan)
torch.fx.wrap("check_srn_input")       # a leaf when traced: it reads shapes


class ResBlock(nn.Module):
    """5x5 conv, ReLU, 5x5 conv, plus the input (the authors' ``ResnetBlock``, no BatchNorm)."""

    def __init__(self, features: int, kernel_size: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv2d(features, features, kernel_size, padding=kernel_size // 2)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x))) + x


class ConvLSTMCell(nn.Module):
    """A convolutional LSTM cell: ``conv`` maps ``[x, h]`` to the input, candidate, forget and
    output gates' pre-activations (in that order, as the authors' ``BasicConvLSTMCell``);
    c' = c sigmoid(f + forget_bias) + sigmoid(i) tanh(j), h' = tanh(c') sigmoid(o)."""

    def __init__(self, features: int, kernel_size: int = 3, forget_bias: float = 1.0):
        super().__init__()
        self.conv = nn.Conv2d(2 * features, 4 * features, kernel_size, padding=kernel_size // 2)
        self.forget_bias = float(forget_bias)

    def forward(self, x, c, h):
        gates = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        i, j, f, o = gates[0], gates[1], gates[2], gates[3]
        c = c * torch.sigmoid(f + self.forget_bias) + torch.sigmoid(i) * torch.tanh(j)
        return c, torch.tanh(c) * torch.sigmoid(o)


def _resize(x, factor: float):
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class SRNDeblurNet(nn.Module):
    """SRN-DeblurNet: one encoder-decoder with a ConvLSTM, run at ``levels`` scales.

    Args: levels (3 scales, each half the next), channels (3: RGB), features (32: the first
    level's width; 2x and 4x below), kernel_size (5: the ResBlocks' and encoder's convs),
    lstm_kernel (3, as the authors' code), return_all_scales (False: ``forward`` returns the
    finest scale's output ``[N, channels, H, W]``; True: every scale's, coarsest first, which
    the paper's multi-scale loss supervises). Input: the blurred image ``[N, channels, H, W]``,
    H and W multiples of ``4 * 2**(levels - 1)`` (16).
    """

    def __init__(self, levels: int = 3, channels: int = 3, features: int = 32, kernel_size: int = 5,
                 lstm_kernel: int = 3, return_all_scales: bool = False):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels!r}")
        self.levels, self.channels = levels, channels
        self.return_all_scales = bool(return_all_scales)
        k, p = kernel_size, kernel_size // 2
        f1, f2, f3 = features, 2 * features, 4 * features
        self.enc1_1 = nn.Conv2d(2 * channels, f1, k, padding=p)
        self.enc1_2, self.enc1_3, self.enc1_4 = (ResBlock(f1, k) for _ in range(3))
        self.enc2_1 = nn.Conv2d(f1, f2, k, stride=2, padding=p)
        self.enc2_2, self.enc2_3, self.enc2_4 = (ResBlock(f2, k) for _ in range(3))
        self.enc3_1 = nn.Conv2d(f2, f3, k, stride=2, padding=p)
        self.enc3_2, self.enc3_3, self.enc3_4 = (ResBlock(f3, k) for _ in range(3))
        self.convlstm = ConvLSTMCell(f3, lstm_kernel)
        self.dec3_3, self.dec3_2, self.dec3_1 = (ResBlock(f3, k) for _ in range(3))
        self.dec2_4 = nn.ConvTranspose2d(f3, f2, 4, stride=2, padding=1)
        self.dec2_3, self.dec2_2, self.dec2_1 = (ResBlock(f2, k) for _ in range(3))
        self.dec1_4 = nn.ConvTranspose2d(f2, f1, 4, stride=2, padding=1)
        self.dec1_3, self.dec1_2, self.dec1_1 = (ResBlock(f1, k) for _ in range(3))
        self.dec1_0 = nn.Conv2d(f1, channels, k, padding=p)

    @property
    def size_multiple(self) -> int:
        """What the input's H and W must be multiples of."""
        return 4 * 2 ** (self.levels - 1)

    @property
    def example_input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of an input that works, for the layer planner's shape propagation (its
        default, from the first conv's input channels, would be the concatenated 2C)."""
        m = max(32, self.size_multiple)
        return (self.channels, m, m)

    def scale_step(self, blur, pred, state):
        """One scale: the blurred image and the previous estimate (same size), the ConvLSTM
        state ``(c, h)`` or None at the coarsest scale; returns the estimate and the new state."""
        e1 = self.enc1_4(self.enc1_3(self.enc1_2(F.relu(self.enc1_1(torch.cat([blur, pred], 1))))))
        e2 = self.enc2_4(self.enc2_3(self.enc2_2(F.relu(self.enc2_1(e1)))))
        e3 = self.enc3_4(self.enc3_3(self.enc3_2(F.relu(self.enc3_1(e2)))))
        if state is None:
            state = (torch.zeros_like(e3), torch.zeros_like(e3))
        c, h = self.convlstm(e3, *state)
        d2 = F.relu(self.dec2_4(self.dec3_1(self.dec3_2(self.dec3_3(h))))) + e2
        d1 = F.relu(self.dec1_4(self.dec2_1(self.dec2_2(self.dec2_3(d2))))) + e1
        return self.dec1_0(self.dec1_1(self.dec1_2(self.dec1_3(d1)))), (c, h)

    def forward(self, x):
        check_srn_input(x, self.channels, self.size_multiple)
        outputs, pred, state = [], None, None
        for i in range(self.levels):
            down = self.levels - 1 - i
            blur = _resize(x, 0.5 ** down) if down else x
            if pred is None:
                pred = blur
            else:  # the authors stop the gradient through the upsampled estimate
                pred = _resize(pred.detach(), 2.0)
                state = (_resize(state[0], 2.0), _resize(state[1], 2.0))
            pred, state = self.scale_step(blur, pred, state)
            outputs.append(pred)
        return outputs if self.return_all_scales else pred


@register_model
def srn_deblur(**options) -> SRNDeblurNet:
    """SRN-DeblurNet, 3 scales, 32/64/128 wide, 3x3 ConvLSTM, RGB: 8,061,411 parameters."""
    return SRNDeblurNet(**options)
