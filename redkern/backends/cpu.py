"""The CPU backend: our C++ kernels in ``redkern._C`` (csrc/cpu), on NHWC activations.

One entry point, ``conv2d``: a fused stride-1 convolution (or transposed convolution) with
any ``kh x kw`` window and padding ``0 <= p <= k - 1``, and the general epilogue of
``redkern.epilogue`` applied before the only store. A transposed layer runs as its
equivalent convolution (window flipped and channels swapped when the weight is packed,
padding ``k - 1 - p``).

Algorithm per layer (``choose_algorithm``), decided by the window and the channel counts:

- Winograd F(4x4, 3x3) for 3x3 windows with (equivalent) padding 0 or 1 on each axis when both ``cin`` and
  ``cout`` are >= 16 (RED-Net's 64->64 layers): about 4x fewer multiplications; weights
  transformed in fp64, transforms in fp32 (F(6x6,3x3), 5x fewer, with
  ``REDKERN_CPU_WINOGRAD=f6``: ``fp32_winograd``). The GEMMs of the tile positions run in fp32,
  except with bf16 activations on the avx512 kernels: there the transformed input and weights
  are rounded to bf16 and multiplied on AMX tiles (CPUs with AMX-BF16) or with vdpbf16ps
  (AVX512_BF16, where it outruns fp32 FMAs), accumulating in fp32 (``bf16_winograd_gemm`` names which;
  ``REDKERN_CPU_BF16_GEMM=amx|dot|fp32`` forces one).
- Direct convolution otherwise (other windows, and the 1- or 3-channel first and last
  layers, where a Winograd transform would cost more than the few multiplications it saves):
  - ``cout <= 3`` (the last layer): vectorised over input channels, since a vector of output
    channels would be mostly padding;
  - else register-blocked over pixels x output-channel vectors; with bf16 activations, the
    avx512 kernels and a CPU with AVX512_BF16, with vdpbf16ps (two input channels per
    instruction). A 1x1 window is a GEMM over all pixels of the batch.
  3x3 windows are compiled as such (RED-Net's layers); other windows run the same
  micro-kernels with run-time bounds.

In the backward (``redkern.ops``) the same kernels run the input gradient (the forward with the
layout flipped) and ``conv2d_weight_grad`` the weight's; both take ReLU's derivative as a mask
read in the Winograd kernels' prologue (``x_mask``, ``grad_mask``).

``algorithm()`` names the choice for the plan report (``"winograd F(4x4,3x3)"``,
``"winograd F(4x4,3x3) bf16 AMX"``, ``"direct 5x5"``, ``"1x1 GEMM"``, ``"direct few-cout 3x3"``,
``"direct 3x3 bf16-dot"``...).

Kernel ISA: ``_C.selected_isa()``, the best this CPU supports unless ``REDKERN_CPU_ISA``
(generic, avx2, avx512) forces a lower one. ``conv2d(..., algorithm=, isa=)`` force either
for one call (the tests run every combination this CPU supports; ``runnable_algorithms``
lists them).
"""

from __future__ import annotations

import os

import torch

from ..epilogue import Act, Epilogue, output_size
from .common import BackendUnavailable, WeightCache, is_channels_last, to_nhwc

try:
    from .. import _C
    _IMPORT_ERROR = None
except ImportError as e:  # the package still imports; backends() says why
    _C = None
    _IMPORT_ERROR = e

_weights = WeightCache()
DTYPES = (torch.float32, torch.bfloat16)
PROLOGUE_MASKS = True  # conv2d(x_mask=) and conv2d_weight_grad(grad_mask=): ReLU masks in the prologue
WINOGRAD_MIN_CHANNELS = 16
FEW_COUT_MAX = 3  # csrc/cpu/conv.h: kFewCoutMax (also _C.few_cout_max)
_SLOPED = (Act.LEAKY_RELU, Act.PRELU)


def supported_dtypes() -> tuple[torch.dtype, ...]:
    """The activation dtypes the CPU kernels take (none when the extension is missing)."""
    return DTYPES if _C is not None else ()


def status() -> dict:
    if _C is None:
        return {"available": False, "devices": [],
                "detail": f"extension redkern._C failed to import: {_IMPORT_ERROR}"}
    try:
        isa = _C.selected_isa()
    except ValueError as e:  # REDKERN_CPU_ISA names an ISA this CPU lacks
        return {"available": False, "devices": [], "detail": str(e)}
    return {"available": True, "devices": ["cpu"],
            "detail": f"C++ kernels, {isa} selected for this CPU, "
                      f"dtypes {', '.join(str(d).removeprefix('torch.') for d in DTYPES)}"}


def check_can_run(device: torch.device) -> None:
    if _C is None or not status()["available"]:
        raise BackendUnavailable(f"the CPU backend is unavailable: {status()['detail']}")
    if device.type != "cpu":
        raise BackendUnavailable(f"the 'cpu' backend runs CPU tensors only, got a tensor on {device}")


def _pair(value, name: str) -> tuple[int, int]:
    # The common cases first: layers call this several times on every forward.
    if type(value) is int:
        return value, value
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_dtype(dtype: torch.dtype) -> None:
    if dtype not in DTYPES:
        raise BackendUnavailable(f"the CPU kernels take {', '.join(map(str, DTYPES))} activations, "
                                 f"got {dtype}; convert with x.float() (or use the reference model "
                                 f"for {dtype})")


def conv_geometry(kernel, padding, transposed: bool) -> tuple[int, int, int, int]:
    """``(kh, kw, ph, pw)`` of the convolution the kernels run: a transposed layer's padding
    ``p`` becomes ``k - 1 - p``. Raises ``ValueError`` for a window under 1x1 or a negative
    padding, ``BackendUnavailable`` for a padding over ``k - 1``."""
    kh, kw = _pair(kernel, "kernel")
    ph, pw = _pair(padding, "padding")
    if kh < 1 or kw < 1:
        raise ValueError(f"the kernel window must be at least 1x1, got {kh}x{kw}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {(ph, pw)}")
    if ph > kh - 1 or pw > kw - 1:
        raise BackendUnavailable(f"the CPU kernels take padding 0..k-1 on each axis; a {kh}x{kw} "
                                 f"{'transposed ' if transposed else ''}layer with padding "
                                 f"{(ph, pw)} is outside that")
    return (kh, kw, kh - 1 - ph, kw - 1 - pw) if transposed else (kh, kw, ph, pw)


def _winograd_fits(kh, kw, ph, pw) -> bool:
    """The Winograd kernels' windows: 3x3 with (convolution) padding 0 or 1 on each axis."""
    return (kh, kw) == (3, 3) and ph in (0, 1) and pw in (0, 1)


def bf16_gemm_algorithms():
    """The Winograd ``_C.Algorithm``s whose GEMM rounds its operands to bf16."""
    return (_C.Algorithm.winograd4x4_bf16dot, _C.Algorithm.winograd4x4_amx)


def winograd_algorithms():
    """Every Winograd ``_C.Algorithm``, F(4x4,3x3) and F(6x6,3x3) (they all take ``x_mask``)."""
    return (_C.Algorithm.winograd4x4, _C.Algorithm.winograd6x6, *bf16_gemm_algorithms())


WINOGRAD_TILE_ENV = "REDKERN_CPU_WINOGRAD"
_WINOGRAD_TILES = ("f4", "f6")


def fp32_winograd() -> object:
    """The ``_C.Algorithm`` of Winograd layers whose GEMM runs in fp32 (fp32 models, and bf16
    ones without a bf16 GEMM engine): ``winograd4x4`` unless ``REDKERN_CPU_WINOGRAD=f6`` asks
    for ``winograd6x6``.

    F(6x6,3x3) needs 21% fewer multiplications than F(4x4,3x3), but its 64-position transforms
    cost more per pixel and its transformed 64x64 weights (1 MB) do not stay in a 1.25 MB L2
    beside the tile blocks; on the CPUs measured it is no faster (BENCHMARKS.md), so it is not the
    default. Its fp32 error is about 5x F(4x4)'s (``testing.WINOGRAD6_TOLERANCE``). An unknown
    value raises ``ValueError``."""
    forced = os.environ.get(WINOGRAD_TILE_ENV, "") or "f4"
    if forced not in _WINOGRAD_TILES:
        raise ValueError(f"{WINOGRAD_TILE_ENV}={forced!r}: choose one of {', '.join(_WINOGRAD_TILES)}")
    return _C.Algorithm.winograd6x6 if forced == "f6" else _C.Algorithm.winograd4x4


BF16_GEMM_ENV = "REDKERN_CPU_BF16_GEMM"
_BF16_GEMMS = ("amx", "dot", "fp32")
# vdpbf16ps over the fp32 FMA multiply-add rate (_C.bf16_dot_speedup) from which the dot engine
# is taken: between the rates where it was measured to lose (an Intel Xeon, 1.0-1.2: 0.71x the
# fp32 GEMM's speed) and to win (AMD Zen 5, 2.00: 1.57x), with room on both sides for noise.
BF16_DOT_MIN_SPEEDUP = 1.35


def bf16_gemm_engines(isa: str | None = None) -> dict:
    """The bf16 Winograd GEMM engines the kernels of ``isa`` (default: the selected one) run on
    this CPU, by their ``REDKERN_CPU_BF16_GEMM`` name: ``{"fp32": None, "dot": ..., "amx": ...}``
    (``None``: the fp32 Winograd on the widened bf16 input)."""
    isa = isa or _C.selected_isa()
    engines = {"fp32": None}
    if isa == "avx512" and _C.bf16_dot_supported():
        engines["dot"] = _C.Algorithm.winograd4x4_bf16dot
    if isa == "avx512" and _C.amx_supported():
        engines["amx"] = _C.Algorithm.winograd4x4_amx
    return engines


def bf16_winograd_gemm(isa: str | None = None):
    """The GEMM engine of bf16 models' Winograd layers with the kernels of ``isa`` (default: the
    selected one): ``_C.Algorithm.winograd4x4_amx`` on CPUs with AMX-BF16,
    ``winograd4x4_bf16dot`` on CPUs with AVX512_BF16 where vdpbf16ps does at least
    ``BF16_DOT_MIN_SPEEDUP`` times the FMA's multiply-adds per second (measured once,
    ``_C.bf16_dot_speedup()``), both with the avx512 kernels; else ``None`` (the fp32 Winograd on
    the widened bf16 input).

    ``REDKERN_CPU_BF16_GEMM=amx|dot|fp32`` lowers the choice (to compare the engines on one CPU);
    an unknown value, or an engine this CPU or ``isa`` cannot run, raises ``ValueError``: a forced
    engine is never silently replaced."""
    isa = isa or _C.selected_isa()
    runnable = bf16_gemm_engines(isa)
    forced = os.environ.get(BF16_GEMM_ENV, "")
    if not forced:
        if "amx" in runnable:
            return runnable["amx"]
        # The dot engine rounds V and U to bf16 to halve the GEMM's instructions; that pays
        # only where vdpbf16ps runs at the FMA's instruction rate (AMD Zen 4/5). On Intel cores
        # it runs at half that rate and the fp32 GEMM is faster.
        if "dot" in runnable and _C.bf16_dot_speedup() >= BF16_DOT_MIN_SPEEDUP:
            return runnable["dot"]
        return None
    if forced not in _BF16_GEMMS:
        raise ValueError(f"{BF16_GEMM_ENV}={forced!r}: choose one of {', '.join(_BF16_GEMMS)}")
    if forced not in runnable:
        raise ValueError(f"{BF16_GEMM_ENV}={forced} but the {isa} kernels on this CPU run only "
                         f"{', '.join(runnable)}")
    return runnable[forced]


def runnable_algorithms(cin: int, cout: int, kernel, padding, transposed: bool,
                        dtype: torch.dtype, isa: str | None = None) -> list:
    """Every ``_C.Algorithm`` the kernels of ``isa`` (default: the selected one) can run
    this layer with, the default (``choose_algorithm``'s) among them. Winograd runs any
    channel counts; the default takes it only from 16 channels up."""
    _check_dtype(dtype)
    kh, kw, ph, pw = conv_geometry(kernel, padding, transposed)
    isa = isa or _C.selected_isa()
    algos = [_C.Algorithm.direct]
    winograd = _winograd_fits(kh, kw, ph, pw)
    if winograd:
        algos += [_C.Algorithm.winograd4x4, _C.Algorithm.winograd6x6]
    if cout <= FEW_COUT_MAX:
        algos.append(_C.Algorithm.direct_few_cout)
    if dtype == torch.bfloat16 and isa == "avx512" and _C.bf16_dot_supported():
        algos.append(_C.Algorithm.direct_bf16dot)
    if dtype == torch.bfloat16 and winograd:
        algos += [a for a in bf16_gemm_engines(isa).values() if a is not None]
    return algos


def choose_algorithm(cin: int, cout: int, kernel, padding, transposed: bool, dtype: torch.dtype,
                     isa: str | None = None):
    """The ``_C.Algorithm`` used for a layer (see the module docstring)."""
    _check_dtype(dtype)
    kh, kw, ph, pw = conv_geometry(kernel, padding, transposed)
    if _winograd_fits(kh, kw, ph, pw) and min(cin, cout) >= WINOGRAD_MIN_CHANNELS:
        bf16_gemm = bf16_winograd_gemm(isa) if dtype == torch.bfloat16 else None
        return bf16_gemm if bf16_gemm is not None else fp32_winograd()
    if cout <= FEW_COUT_MAX:
        return _C.Algorithm.direct_few_cout
    if dtype == torch.bfloat16 and (isa or _C.selected_isa()) == "avx512" and _C.bf16_dot_supported():
        return _C.Algorithm.direct_bf16dot
    return _C.Algorithm.direct


def label(algo, kernel) -> str:
    """The plan report's name of ``algo`` (a ``_C.Algorithm``) on a ``kernel`` window."""
    kh, kw = _pair(kernel, "kernel")
    window = f"{kh}x{kw}"
    if algo == _C.Algorithm.winograd4x4:
        return "winograd F(4x4,3x3)"
    if algo == _C.Algorithm.winograd6x6:
        return "winograd F(6x6,3x3)"
    if algo == _C.Algorithm.winograd4x4_bf16dot:
        return "winograd F(4x4,3x3) bf16-dot"
    if algo == _C.Algorithm.winograd4x4_amx:
        return "winograd F(4x4,3x3) bf16 AMX"
    if algo == _C.Algorithm.direct_few_cout:
        return f"direct few-cout {window}"
    gemm = (kh, kw) == (1, 1)
    if algo == _C.Algorithm.direct_bf16dot:
        return "1x1 GEMM bf16-dot" if gemm else f"direct {window} bf16-dot"
    return "1x1 GEMM" if gemm else f"direct {window}"


def algorithm(cin: int, cout: int, kernel, padding, transposed: bool, dtype: torch.dtype,
              *, isa: str | None = None) -> str:
    """How this backend computes such a layer (``label`` of ``choose_algorithm``); raises
    ``BackendUnavailable`` naming what it cannot run (a dtype, a padding over ``k - 1``)."""
    if _C is None:
        raise BackendUnavailable(status()["detail"])
    if cin < 1 or cout < 1:
        raise ValueError(f"a layer needs at least one input and one output channel, got {cin} -> {cout}")
    return label(choose_algorithm(cin, cout, kernel, padding, transposed, dtype, isa), kernel)


def _dtype_code(dtype: torch.dtype):
    return _C.DType.bfloat16 if dtype == torch.bfloat16 else _C.DType.float32


def packed_weight(weight: torch.Tensor, transposed: bool, algorithm) -> torch.Tensor:
    """``weight`` re-laid-out for ``algorithm``, cached per weight tensor and version."""
    cin, cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
    kh, kw = weight.shape[2:]

    def prepare():
        w = weight.detach().float().contiguous()
        packed = torch.empty(_C.packed_weight_size(cin, cout, kh, kw, algorithm), dtype=torch.float32)
        _C.pack_weight(w.data_ptr(), w.numel(), cin, cout, kh, kw, transposed, algorithm,
                       packed.data_ptr(), packed.numel())
        return packed

    return _weights.get(weight, ("cpu", transposed, int(algorithm)), prepare)


def _slope_array(slopes, act: Act, cout: int, name: str):
    """``(pointer, numel, tensor)`` of a slope array: fp32 ``[cout]`` exactly when ``act``
    reads one."""
    if act not in _SLOPED:
        if slopes is not None:
            raise ValueError(f"{name} given, but the activation {act.name} reads no slope")
        return 0, 0, None
    if slopes is None:
        raise ValueError(f"the activation {act.name} needs {name}: a float32 [{cout}] tensor "
                         "(redkern.epilogue.kernel_slopes)")
    if slopes.device.type != "cpu" or slopes.numel() != cout:
        raise ValueError(f"{name} must be a CPU tensor of {cout} (the output channels) values, "
                         f"got {slopes.numel()} on {slopes.device}")
    s = slopes.detach().reshape(-1).float().contiguous()
    return s.data_ptr(), s.numel(), s


def _masked(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask <= 0 ? 0 : t`` in one pass (ReLU's backward; NaN in the mask keeps ``t``), for the
    algorithms with no mask prologue."""
    return torch.ops.aten.threshold_backward(t, mask, 0)


def _mask_pointer(mask, like: torch.Tensor, name: str):
    """``(pointer, numel, tensor)`` of an NHWC mask laid out as ``like``, or zeros for none."""
    if mask is None:
        return 0, 0, None
    if tuple(mask.shape) != tuple(like.shape) or mask.dtype != like.dtype:
        raise ValueError(f"{name} must match the tensor it masks, {like.dtype} {tuple(like.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    m = to_nhwc(mask.detach())
    return m.data_ptr(), m.numel(), m


def conv2d(x, weight, bias, extra=None, *, transposed: bool, padding, epilogue: Epilogue,
           slopes=None, slopes2=None, out=None, algorithm=None, isa=None, x_mask=None) -> torch.Tensor:
    """One fused stride-1 convolution (``redkern.epilogue.reference_conv2d``'s semantics).

    ``x`` ``[N, Cin, H, W]`` (float32 or bfloat16, any layout); ``weight`` ``nn.Conv2d``
    ``[Cout, Cin, kh, kw]`` or, with ``transposed``, ``nn.ConvTranspose2d``
    ``[Cin, Cout, kh, kw]``; ``bias`` ``[Cout]`` (``None``: zeros); ``padding`` an int or
    ``(ph, pw)``, ``0 <= p <= k - 1``; ``extra`` ``[N, Cout, OH, OW]`` in ``x``'s dtype when
    ``epilogue.needs_extra``; ``slopes``/``slopes2`` ``[Cout]`` when ``act``/``act2`` is
    LEAKY_RELU or PRELU (``redkern.epilogue.kernel_slopes``). Returns a dense NHWC
    (``stride(1) == 1``) ``[N, Cout, OH, OW]`` tensor in ``x``'s dtype: ``out`` when given.

    ``algorithm`` (a ``_C.Algorithm``) and ``isa`` (a name from ``_C.supported_isas()``)
    override the defaults (``ValueError`` if that algorithm cannot run the layer there).

    ``x_mask`` (the backward's input gradient): ``x`` is read as ``x_mask <= 0 ? 0 : x``, ReLU's
    derivative from its output, in the Winograd kernel's prologue (other algorithms: one pass
    over ``x`` first).
    """
    _check_dtype(x.dtype)
    if x.dim() != 4:
        raise ValueError(f"the input must be [N, Cin, H, W], got shape {tuple(x.shape)}")
    n, cin, h, w = x.shape
    layout = "[Cin, Cout, kh, kw] (ConvTranspose2d layout)" if transposed else "[Cout, Cin, kh, kw] (Conv2d layout)"
    if weight.dim() != 4 or weight.shape[0 if transposed else 1] != cin:
        raise ValueError(f"the weight must be {layout} with Cin={cin} matching the input "
                         f"{tuple(x.shape)}, got {tuple(weight.shape)}")
    cout = weight.shape[1] if transposed else weight.shape[0]
    kh, kw = weight.shape[2:]
    ph, pw = _pair(padding, "padding")
    conv_geometry((kh, kw), (ph, pw), transposed)  # the padding's range
    oh, ow = output_size(h, kh, ph, transposed), output_size(w, kw, pw, transposed)
    if not isinstance(epilogue, Epilogue):
        raise ValueError(f"epilogue must be a redkern.epilogue.Epilogue, got {epilogue!r}")
    e = epilogue
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} {'transposed ' if transposed else ''}layer with padding "
                         f"{(ph, pw)} leaves no output of the input {tuple(x.shape)}")
    if algorithm is None:
        algorithm = choose_algorithm(cin, cout, (kh, kw), (ph, pw), transposed, x.dtype, isa)
    _, _, cph, cpw = conv_geometry((kh, kw), (ph, pw), transposed)
    if x_mask is not None and algorithm not in winograd_algorithms():
        x, x_mask = _masked(x, x_mask), None
    mp, mn, keep_mask = _mask_pointer(x_mask, x, "x_mask")

    xh = to_nhwc(x.detach())
    b = (torch.zeros(cout) if bias is None else bias.detach().reshape(-1).float()).contiguous()
    if e.needs_extra:
        if extra is None:
            raise ValueError(f"the epilogue {e.formula()} needs extra [N, Cout, OH, OW] = "
                             f"{(n, cout, oh, ow)}")
        if tuple(extra.shape) != (n, cout, oh, ow) or extra.dtype != x.dtype:
            raise ValueError(f"extra must be a {x.dtype} tensor of shape {(n, cout, oh, ow)}, "
                             f"got {extra.dtype} {tuple(extra.shape)}")
        eh = to_nhwc(extra.detach())
    elif extra is not None:
        raise ValueError(f"extra given, but the epilogue {e.formula()} reads none")
    else:
        eh = None
    s1, s1n, keep1 = _slope_array(slopes, e.act, cout, "slopes")
    s2, s2n, keep2 = _slope_array(slopes2, e.act2, cout, "slopes2")
    packed = packed_weight(weight, transposed, algorithm)
    shape = (n, cout, oh, ow)
    if out is None:
        y = torch.empty((n, oh, ow, cout), dtype=x.dtype).permute(0, 3, 1, 2)
    elif tuple(out.shape) != shape or out.dtype != x.dtype or not is_channels_last(out):
        raise ValueError(f"out must be a dense NHWC (stride(1) == 1) {x.dtype} tensor of shape "
                         f"{shape}, got {out.dtype} {tuple(out.shape)} with strides {out.stride()}")
    else:
        y = out
    _C.conv2d(xh.data_ptr(), xh.numel(), packed.data_ptr(), packed.numel(),
              b.data_ptr(), b.numel(), eh.data_ptr() if eh is not None else 0,
              eh.numel() if eh is not None else 0, y.data_ptr(), y.numel(),
              s1, s1n, s2, s2n, n, h, w, cin, cout, kh, kw, cph, cpw,
              int(e.act), int(e.act2), int(e.residual), e.alpha, e.beta,
              _dtype_code(x.dtype), algorithm, torch.get_num_threads(), isa or "", mp, mn)
    del keep1, keep2, keep_mask
    return y


def weight_grad_algorithm(cin: int, cout: int, kernel, padding, transposed: bool):
    """The ``_C.Algorithm`` of a layer's weight gradient: Winograd F(4x4,3x3) where the forward
    takes it (3x3, equivalent padding 1, both channel counts >= 16), else direct."""
    kh, kw, ph, pw = conv_geometry(kernel, padding, transposed)
    if (kh, kw, ph, pw) == (3, 3, 1, 1) and min(cin, cout) >= WINOGRAD_MIN_CHANNELS:
        return _C.Algorithm.winograd4x4
    return _C.Algorithm.direct


def conv2d_weight_grad(x, grad, *, weight_shape, transposed: bool, padding, grad_mask=None, algorithm=None,
                       isa=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_weight, grad_bias)`` of one stride-1 convolution, by our kernels (csrc/cpu/wgrad.h).

    ``x`` ``[N, Cin, H, W]`` is the layer's input and ``grad`` ``[N, Cout, OH, OW]`` the gradient
    at its convolution's output (any layout, float32 or bfloat16, both alike); ``weight_shape``
    the ``nn.Conv2d`` ``[Cout, Cin, kh, kw]`` or, with ``transposed``, ``nn.ConvTranspose2d``
    ``[Cin, Cout, kh, kw]`` shape; ``padding`` ``(ph, pw)`` as that module takes it. Returns
    the weight's gradient in that layout and the bias's ``[Cout]``, float32 (fp32 accumulation),
    equal to ``aten.convolution_backward``'s; deterministic for a given thread count.
    ``grad_mask``: ``grad`` is read as ``grad_mask <= 0 ? 0 : grad`` (as ``conv2d``'s ``x_mask``).
    """
    _check_dtype(x.dtype)
    if grad.dtype != x.dtype or x.dim() != 4 or grad.dim() != 4 or len(weight_shape) != 4:
        raise ValueError(f"conv2d_weight_grad takes 4-D x and grad of one dtype and a 4-D weight shape, got "
                         f"x {x.dtype} {tuple(x.shape)}, grad {grad.dtype} {tuple(grad.shape)}, weight "
                         f"{tuple(weight_shape)}")
    n, cin, h, w = x.shape
    kh, kw = weight_shape[2:]
    cout = weight_shape[1] if transposed else weight_shape[0]
    if (weight_shape[0] if transposed else weight_shape[1]) != cin:
        raise ValueError(f"the weight shape {tuple(weight_shape)} does not take the input's {cin} channels")
    ph, pw = _pair(padding, "padding")
    _, _, cph, cpw = conv_geometry((kh, kw), (ph, pw), transposed)
    oh, ow = output_size(h, kh, ph, transposed), output_size(w, kw, pw, transposed)
    if tuple(grad.shape) != (n, cout, oh, ow):
        raise ValueError(f"grad must have the layer's output shape {(n, cout, oh, ow)}, got {tuple(grad.shape)}")
    if algorithm is None:
        algorithm = weight_grad_algorithm(cin, cout, (kh, kw), (ph, pw), transposed)
    if grad_mask is not None and algorithm != _C.Algorithm.winograd4x4:
        grad, grad_mask = _masked(grad, grad_mask), None
    mp, mn, keep_mask = _mask_pointer(grad_mask, grad, "grad_mask")
    xh, gh = to_nhwc(x.detach()), to_nhwc(grad.detach())
    dw = torch.empty((cout, cin, kh, kw), dtype=torch.float32)
    db = torch.empty(cout, dtype=torch.float32)
    _C.conv2d_weight_grad(xh.data_ptr(), xh.numel(), gh.data_ptr(), gh.numel(), dw.data_ptr(), dw.numel(),
                          db.data_ptr(), db.numel(), n, h, w, cin, cout, kh, kw, cph, cpw,
                          _dtype_code(x.dtype), algorithm, torch.get_num_threads(), isa or "", mp, mn)
    del keep_mask
    if transposed:  # the equivalent convolution's weight, back to the ConvTranspose2d layout
        dw = dw.flip(2, 3).transpose(0, 1).contiguous()
    return dw, db
