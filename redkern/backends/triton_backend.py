"""The Triton backend: one implicit-GEMM kernel (redkern.kernels.conv3x3) on NHWC activations.

Where it runs:
- CUDA tensors, when triton imports and torch sees a CUDA device: compiled and autotuned.
- CPU tensors, only under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is
  first imported): numpy executes the kernel, slowly; this is how CI proves the kernels.
  The interpreter has no bfloat16 arithmetic, so bfloat16 runs on a GPU only.

float32 is exact by default (``tl.dot(input_precision="ieee")``). TF32 is used only when the
caller opts in: ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (or the older
``allow_tf32 = True``, or ``torch.set_float32_matmul_precision("high")``), or the environment
variable ``REDKERN_TF32=1``; ``REDKERN_TF32=0`` forces exact fp32 whatever torch says.
"""

from __future__ import annotations

import functools
import os

import torch

from .common import BackendUnavailable, WeightCache, conv_weight, to_nhwc

try:
    import triton

    from ..kernels import conv3x3 as _kernels
    _IMPORT_ERROR = None
except Exception as e:  # not installed, or broken: the package still imports; status() says why
    triton = _kernels = None
    _IMPORT_ERROR = e

_weights = WeightCache()
GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INTERPRETER_DTYPES = (torch.float16, torch.float32)  # numpy has no bfloat16


def _dtypes() -> tuple[torch.dtype, ...]:
    return INTERPRETER_DTYPES if _kernels.INTERPRETED else GPU_DTYPES


def _names(dtypes) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def status() -> dict:
    """``{"available", "devices", "detail"}``: where the kernels run here, or why they cannot."""
    st = _status()
    return {**st, "devices": list(st["devices"])}  # a copy: callers may not edit the cached one


@functools.cache  # what triton and the driver report does not change within a process
def _status() -> dict:
    if _kernels is None:
        why = "triton is not installed" if isinstance(_IMPORT_ERROR, ModuleNotFoundError) else "triton failed to import"
        return {"available": False, "devices": [], "detail": f"{why} ({_IMPORT_ERROR}); pip install 'redkern[triton]'"}
    version = f"triton {triton.__version__}"
    if _kernels.INTERPRETED:
        return {"available": True, "devices": ["cpu"],
                "detail": f"{version} in interpreter mode on CPU (TRITON_INTERPRET=1): correct but slow, "
                          f"for testing; dtypes {_names(INTERPRETER_DTYPES)}"}
    if not torch.cuda.is_available():
        return {"available": False, "devices": [],
                "detail": f"{version} is installed but torch sees no CUDA device; to run the kernels on "
                          "CPU tensors under the interpreter, set TRITON_INTERPRET=1 before triton is imported"}
    i = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(i)
    return {"available": True, "devices": ["cuda"],
            "detail": f"{version} on CUDA device {i}: {torch.cuda.get_device_name(i)} (sm_{major}{minor}), "
                      f"autotuned; dtypes {_names(GPU_DTYPES)} (float32 exact unless TF32 is allowed)"}


def check_can_run(device: torch.device) -> None:
    st = _status()
    if device.type in st["devices"]:
        return
    if not st["available"]:
        raise BackendUnavailable(f"the Triton backend is unavailable: {st['detail']}")
    if device.type == "cpu":
        raise BackendUnavailable("Triton runs CPU tensors only under its interpreter (TRITON_INTERPRET=1 "
                                 "set before triton is imported); use backend='cpu' for the C++ kernels")
    raise BackendUnavailable(f"the Triton backend runs {st['devices']} tensors here ({st['detail']}), "
                             f"got a tensor on {device}")


def tf32_allowed() -> bool:
    """Whether float32 convolutions may use TF32 tensor cores (see the module docstring)."""
    env = os.environ.get("REDKERN_TF32")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", "none")  # torch >= 2.9's API
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:  # torch refuses to read the legacy flag once the new API was used
        return False


def packed_weight(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """The kernel's ``[9*Cin, Cout]`` weight, made once per weight tensor and version."""
    return _weights.get(weight, ("triton", transposed),
                        lambda: _kernels.pack_weight(conv_weight(weight.detach(), transposed)))


def conv3x3(x, weight, bias, extra, *, transposed: bool, epilogue, out=None) -> torch.Tensor:
    """Fused 3x3 conv of ``x [N, Cin, H, W]``; returns an NHWC (channels_last) tensor.

    ``weight`` is Conv2d ``[Cout, Cin, 3, 3]`` or, with ``transposed``, ConvTranspose2d
    ``[Cin, Cout, 3, 3]``; ``extra`` the skip/residual for ``epilogue``. ``out``: optional
    NHWC ``[N, Cout, H, W]`` destination (tests pass a NaN-filled one).
    """
    check_can_run(x.device)
    if x.dtype not in _dtypes():
        why = " under the interpreter (numpy has no bfloat16; run bfloat16 on a GPU)" if _kernels.INTERPRETED else ""
        raise TypeError(f"the Triton kernels take {_names(_dtypes())}{why}, got {x.dtype}")
    if x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] < 8:
        raise BackendUnavailable(f"bfloat16 tensor-core products need compute capability >= 8.0; "
                                 f"{torch.cuda.get_device_name(x.device)} has "
                                 f"{'.'.join(map(str, torch.cuda.get_device_capability(x.device)))}")
    return _kernels.conv3x3_nhwc(
        to_nhwc(x.detach()), packed_weight(weight, transposed), bias.detach().contiguous(),
        to_nhwc(extra.detach()) if extra is not None else None, int(epilogue),
        out=out, allow_tf32=x.dtype == torch.float32 and tf32_allowed())
