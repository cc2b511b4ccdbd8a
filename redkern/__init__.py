"""redkern: fused convolution kernels for RED-Net image restoration.

    import redkern
    model = redkern.RED30(fused=True)        # same state_dict as redkern.RED30()
    fast = redkern.fuse(my_model)            # the same kernels for any network of convolutions
    print(redkern.explain(fast))             # per layer: backend, algorithm, what was fused
    redkern.create_model("edsr_baseline", fused=True)   # the zoo: redkern.list_models()
    redkern.backends()                       # what was built here, and why not the rest
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops  # registers torch.ops.redkern.*
from .backends.common import BackendUnavailable
from .epilogue import Act, Epilogue, Residual
from .fusion import fuse, is_fused
from .fused import FusedREDNet
from .models import REDNet, skip_pairs
from .layer_plan import Plan, PlanError, plan
from .report import explain
from .tiling import InexactTilingWarning, restore_file, run_tiled, tiled
from .validation import NonFiniteInput, WorkingSetTooLarge
from .zoo import RED10, RED20, RED30
from . import networks  # the reference zoo: VDSR, DnCNN, SRCNN, ESPCN, FSRCNN, EDSR, SRResNet
from .networks import create_model, list_models
from . import pretrained  # redkern.pretrained("denoise"): the shipped weights (loaded on call)
from . import testing  # the shared test cases and reference (tests, benchmarks, users' own checks)


def backends() -> dict[str, dict]:
    """Every backend with ``available``, the ``devices`` it runs on, a ``detail`` line saying
    what was built or why it cannot run here, and ``backward``: which kernels compute the
    gradients in training."""
    from .backends import status

    return status()


__all__ = ["REDNet", "FusedREDNet", "RED10", "RED20", "RED30", "skip_pairs", "backends",
           "BackendUnavailable", "ops", "__version__", "tiled", "restore_file", "run_tiled",
           "InexactTilingWarning", "pretrained", "fuse", "is_fused", "plan", "Plan", "PlanError",
           "explain", "networks", "create_model", "list_models", "Epilogue", "Act", "Residual", "NonFiniteInput", "WorkingSetTooLarge", "testing"]
