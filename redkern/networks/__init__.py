"""Reference modules of classic restoration networks, one file per family, each following its
paper, and the registry that builds them (timm's convention):

    redkern.list_models("edsr*")             # ['edsr', 'edsr_baseline']
    m = redkern.create_model("vdsr")         # the paper's main configuration
    fast = redkern.create_model("edsr_baseline", scale=4, fused=True)   # redkern.fuse(model)
    m = redkern.networks.model_from_checkpoint("dncnn_b", "dncnn_gray_blind.pth")  # KAIR, BasicSR...
"""

from __future__ import annotations

from ._registry import create_model, list_models, register_model
from .dncnn import DnCNN
from .drcn import DRCN
from .drrn import DRRN
from .edsr import EDSR
from .espcn import ESPCN
from .fsrcnn import FSRCNN
from .lapsrn import LapSRN
from .mdsr import MDSR
from .memnet import MemNet
from .msrresnet import MSRResNet
from .srcnn import SRCNN
from .srdensenet import SRDenseNet
from .srn_deblur import SRNDeblurNet
from .srresnet import SRResNet
from .vdsr import VDSR
from . import red  # noqa: F401  (registers red10/20/30)
from . import checkpoints  # the public ports' checkpoint layouts
from .checkpoints import load_state_dict, model_from_checkpoint

__all__ = ["create_model", "list_models", "register_model", "checkpoints", "load_state_dict",
           "model_from_checkpoint", "DnCNN", "DRCN", "DRRN", "EDSR", "ESPCN", "FSRCNN", "LapSRN", "MDSR",
           "MemNet", "MSRResNet", "SRCNN", "SRDenseNet", "SRNDeblurNet", "SRResNet", "VDSR"]
