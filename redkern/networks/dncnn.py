"""DnCNN (Zhang, Zuo, Chen, Meng & Zhang, "Beyond a Gaussian Denoiser: Residual Learning of
Deep CNN for Image Denoising", IEEE TIP 2017).

conv 3x3 (channels -> 64) + ReLU, (depth - 2) x (conv 3x3 64 -> 64, BatchNorm, ReLU), conv 3x3
64 -> channels; the network predicts the noise: output = x - net(x). DnCNN-S (known noise level):
depth 17; DnCNN-B (blind): depth 20. The BN convolutions and the last one have no bias: the
authors' MatConvNet model freezes those biases at zero (learning rate 0) and their PyTorch port
(cszn/DnCNN ``TrainingCodes/dncnn_pytorch``) builds them with ``bias=False``; BatchNorm there
has ``eps=1e-4``. Layer names follow that port (``dncnn.0.weight`` ...), so its state_dicts load.

Parameters (1 channel): DnCNN-S 556,096; DnCNN-B 667,072 (BatchNorm affine terms included).
At inference each BatchNorm folds into its convolution.

Options for the public ports' variants (``redkern.networks.checkpoints`` picks them from a
checkpoint's keys): ``bias=True`` gives the BN convolutions and the last one a bias, as KAIR's
``models/network_dncnn.py`` builds them; ``batchnorm=False`` drops the BatchNorms (KAIR's
released models, whose BatchNorms were merged into the convolutions: ``act_mode='R'``), so the
middle convolutions are ``dncnn.0, .2, .4 ...`` as in that file.
"""

from __future__ import annotations

from torch import nn

from ._registry import register_model

__all__ = ["DnCNN", "dncnn_s", "dncnn_b"]


class DnCNN(nn.Module):
    """DnCNN of ``depth`` conv layers, ``features`` wide, on ``channels``-channel images;
    ``batchnorm`` and ``bias`` as in the module docstring (a middle convolution without its
    BatchNorm always has a bias)."""

    def __init__(self, depth: int = 17, features: int = 64, channels: int = 1, batchnorm: bool = True,
                 bias: bool = False):
        super().__init__()
        if depth < 2:
            raise ValueError(f"depth must be >= 2, got {depth!r}")
        self.channels = channels
        layers = [nn.Conv2d(channels, features, 3, padding=1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            if batchnorm:
                layers += [nn.Conv2d(features, features, 3, padding=1, bias=bias),
                           nn.BatchNorm2d(features, eps=1e-4), nn.ReLU(inplace=True)]
            else:
                layers += [nn.Conv2d(features, features, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1, bias=bias))
        self.dncnn = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.dncnn(x)


@register_model
def dncnn_s(**options) -> DnCNN:
    """DnCNN-S: depth 17, 64 wide, grayscale: 556,096 parameters."""
    return DnCNN(**{"depth": 17, **options})


@register_model
def dncnn_b(**options) -> DnCNN:
    """DnCNN-B (blind noise level): depth 20, 64 wide, grayscale: 667,072 parameters."""
    return DnCNN(**{"depth": 20, **options})
