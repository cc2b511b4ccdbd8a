"""RED-Net (Mao, Shen & Yang, NIPS 2016): the reference model in plain PyTorch.

This module defines the semantics every fused path is tested against.

Layer and parameter names follow the authors' released network definitions and are
stable: ``conv_1`` .. ``conv_n`` (``nn.Conv2d``) and ``deconv_1`` .. ``deconv_n``
(``nn.ConvTranspose2d``), so the ``state_dict`` keys are ``conv_1.weight``,
``conv_1.bias``, ..., ``deconv_n.bias``. The fused model shares them exactly.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .validation import check_image_batch

__all__ = ["REDNet", "skip_pairs"]

torch.fx.wrap("check_image_batch")  # a leaf when traced: the layer plan keeps it as an input check

SUPPORTED_DEPTHS = (10, 20, 30)


def skip_pairs(depth: int) -> dict[int, int]:
    """Map decoder layer index -> encoder layer index whose output it adds.

    ``conv_{2k}`` feeds the decoder layer that mirrors it: with ``n = depth // 2``,
    ``deconv_j`` takes ``conv_{n-j}`` whenever ``n - j`` is even. RED30 gives
    ``{1: 14, 3: 12, ..., 13: 2}``. (Whether a model uses them is ``REDNet``'s
    ``skips`` flag: the paper's RED10 has none.)
    """
    n = depth // 2
    return {j: n - j for j in range(1, n) if (n - j) % 2 == 0}


class REDNet(nn.Module):
    """Residual encoder-decoder network with symmetric skips.

    Args:
        depth: total number of layers, an even number >= 2 (10, 20 and 30 are the
            paper's RED10/RED20/RED30). Half are 3x3 convolutions, half 3x3
            transposed convolutions; all stride 1, padding 1, with bias.
        channels: image channels, 1 (grayscale / Y) or 3 (RGB). Any positive count works.
        features: feature maps per hidden layer (64 in the paper's text, 128 in the
            released models).
        skips: add the mirrored-layer skips every two layers. ``None`` follows the
            paper: on for depth > 10, off for RED10.

    Input and output: ``[N, channels, H, W]`` floating point, any ``H, W >= 1``;
    the output is ``net(x) + x`` (the network predicts the residual).
    """

    def __init__(self, depth: int = 30, channels: int = 1, features: int = 64,
                 skips: bool | None = None):
        super().__init__()
        if not isinstance(depth, int) or depth < 2 or depth % 2:
            raise ValueError(f"depth must be an even integer >= 2 (10, 20, 30 in the paper), got {depth!r}")
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer (1 or 3 in the paper), got {channels!r}")
        if not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive integer (64 or 128 in the paper), got {features!r}")
        self.depth = depth
        self.channels = channels
        self.features = features
        self.n = depth // 2
        use_skips = depth > 10 if skips is None else bool(skips)
        self.skips = skip_pairs(depth) if use_skips else {}
        for i in range(1, self.n + 1):
            cin = channels if i == 1 else features
            setattr(self, f"conv_{i}", nn.Conv2d(cin, features, 3, padding=1))
        for j in range(1, self.n + 1):
            cout = channels if j == self.n else features
            setattr(self, f"deconv_{j}", nn.ConvTranspose2d(features, cout, 3, padding=1))

    @property
    def receptive_field_radius(self) -> int:
        """Pixels an output depends on in each direction: one per 3x3 layer (30 for RED30),
        read off the layer plan (``redkern.plan``). Skips tap shallower layers and do not
        widen it. A tile halo of at least this many pixels makes tiled inference exact."""
        radius = self.__dict__.get("_receptive_field_radius")
        if radius is None:  # the structure is fixed at construction: plan once
            from .layer_plan import plan

            radius = self.__dict__["_receptive_field_radius"] = plan(self).receptive_field_radius()
        return radius

    @staticmethod
    def config_from_state_dict(state: dict) -> dict:
        """``{"depth", "channels", "features"}`` of the RED-Net whose ``state_dict`` this is.
        Raises ``ValueError`` naming the keys that are missing or do not belong."""
        convs = sorted(int(k[5:-7]) for k in state if k.startswith("conv_") and k.endswith(".weight")
                       and k[5:-7].isdigit())
        if not convs:
            some = ", ".join(list(state)[:4]) or "no keys"
            raise ValueError(f"no conv_1.weight ({some}{'...' if len(state) > 4 else ''})")
        n = convs[-1]
        want = {f"{kind}_{i}.{p}" for kind in ("conv", "deconv") for i in range(1, n + 1) for p in ("weight", "bias")}
        missing, unexpected = sorted(want - set(state)), sorted(set(state) - want)
        if missing or unexpected:
            raise ValueError(f"a RED{2 * n} state_dict has conv_1..conv_{n} and deconv_1..deconv_{n}"
                             + (f"; missing {', '.join(missing[:6])}" if missing else "")
                             + (f"; unexpected {', '.join(unexpected[:6])}" if unexpected else ""))
        w = state["conv_1.weight"]
        return {"depth": 2 * n, "channels": int(w.shape[1]), "features": int(w.shape[0])}

    def encoder(self, i: int) -> nn.Conv2d:
        return getattr(self, f"conv_{i}")

    def decoder(self, j: int) -> nn.ConvTranspose2d:
        return getattr(self, f"deconv_{j}")

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, channels={self.channels}, features={self.features}, "
                f"skips={len(self.skips)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.channels, self.conv_1.weight, "REDNet.forward")
        saved = {}
        h = x
        skip_sources = set(self.skips.values())
        for i in range(1, self.n + 1):
            h = F.relu(self.encoder(i)(h))
            if i in skip_sources:
                saved[i] = h
        for j in range(1, self.n):
            h = F.relu(self.decoder(j)(h))
            if j in self.skips:
                h = F.relu(h + saved[self.skips[j]])
        return self.decoder(self.n)(h) + x
