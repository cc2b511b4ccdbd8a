"""What the tests and benchmarks share: one table of cases, one reference, checks that can fail.

    from redkern import testing as T
    case = T.layer_case(n=2, cin=5, cout=7, h=9, w=11, kernel=5, epilogue=T.EPILOGUES["prelu"])
    want = T.reference(case)                 # float64, from the same rounded inputs
    out = T.poisoned_nhwc(case.out_shape, torch.float32)
    backend.conv2d(*case.tensors, **case.options, out=out)
    T.assert_close(out, want, 1e-5)          # NaN (an unwritten element) never passes

Every backend's tests draw their layers from ``layer_case`` and compare against
``reference`` (``redkern.epilogue.reference_conv2d`` in float64), so "correct" means the
same thing everywhere.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .epilogue import Act, Epilogue, Residual, kernel_slopes, output_size, reference_conv2d

__all__ = ["EPILOGUES", "KERNELS", "LayerCase", "layer_case", "reference", "assert_close", "assert_like_pytorch", "conv_calls",
           "max_rel_error", "magnitude", "poisoned_nhwc", "kaiming_init_", "randomize_", "TOLERANCE", "BF16_GEMM_TOLERANCE", "WINOGRAD6_TOLERANCE", "bf16_gemm_tolerance", "cpu_tolerance", "triton_or_skip", "FUSE_MODULES",
           "backends_here", "copied", "COPY_WAYS"]

# Every activation in both places and every residual mode, with scales that are not 1.
EPILOGUES: dict[str, Epilogue] = {
    "identity": Epilogue(),
    "relu": Epilogue(act=Act.RELU),
    "leaky_relu": Epilogue(act=Act.LEAKY_RELU, slope=0.2),
    "prelu": Epilogue(act=Act.PRELU),
    "tanh": Epilogue(act=Act.TANH, alpha=0.5),
    "relu_add_relu": Epilogue(act=Act.RELU, residual=Residual.AFTER_ACT, act2=Act.RELU),
    "add_residual": Epilogue(residual=Residual.BEFORE_ACT),
    "scaled_residual": Epilogue(alpha=0.1, residual=Residual.BEFORE_ACT),
    "negated_residual": Epilogue(alpha=-1.0, residual=Residual.BEFORE_ACT),
    "relu_before_act": Epilogue(act=Act.RELU, residual=Residual.BEFORE_ACT, beta=-0.5),
    "prelu_then_leaky": Epilogue(act=Act.PRELU, residual=Residual.AFTER_ACT, beta=0.5,
                                 act2=Act.LEAKY_RELU, slope2=0.3),
    "tanh_then_prelu": Epilogue(act=Act.TANH, residual=Residual.AFTER_ACT, act2=Act.PRELU),
}

# (kernel, padding) pairs: "same" sizes and the unpadded ("valid") form SRCNN's paper uses.
KERNELS = [(1, 0), (3, 1), (5, 2), (9, 4), (3, 0), (5, 0)]

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
# The bf16 Winograd layers with a bf16 GEMM (the CPU's AMX and vdpbf16ps engines) also round the
# transformed input and weights to bf16. Those exceed the output by up to the transforms' gain,
# so one layer's error is a few times bf16's rounding; on trained weights PSNR stays within
# 0.01 dB of fp32 (tests/test_bf16_accuracy.py). Relative to ``magnitude`` the error falls as the
# input channels' independent roundings average out: on ``layer_case`` layers (37x53, 30 seeds,
# vdpbf16ps) the largest was 5.5e-2 at 1 input channel, 3.2e-2 at 3, 1.8e-2 at 8, 6.7e-3 at 64.
# Hence BF16_GEMM_TOLERANCE from 4 channels up and BF16_GEMM_TOLERANCE * sqrt(4 / cin) below
# (0.1 at one channel; the default plan runs these engines only from 16 channels up).
BF16_GEMM_TOLERANCE = 5e-2


# Winograd F(6x6,3x3) in fp32: its transforms' larger entries (21/4, 32) lose about 5x F(4x4)'s
# accuracy. Measured on ``layer_case`` 64 -> 64 layers (every ISA, epilogue and shape of
# tests/test_cpu_kernels.py): up to 1.2e-5 of the magnitude at 64 input channels, against 3.2e-6
# for F(4x4). Still well inside the fp32 goal of 1e-4 (a whole RED30: BENCHMARKS.md).
WINOGRAD6_TOLERANCE = 5e-5


def bf16_gemm_tolerance(cin: int) -> float:
    """The bf16-GEMM Winograd's tolerance for a layer of ``cin`` input channels (see above)."""
    return BF16_GEMM_TOLERANCE * max(1.0, (4.0 / cin) ** 0.5)


def triton_or_skip():
    """For a test module's top: ``(triton_backend, device)``, the Triton backend module and the
    device its kernels run on (the CPU under ``TRITON_INTERPRET=1``), or the whole module skipped
    with the reason the backend is unavailable (importing it before that check imports triton)."""
    import pytest

    import redkern

    status = redkern.backends()["triton"]
    if not status["available"]:
        pytest.skip(f"Triton backend unavailable (needs TRITON_INTERPRET=1 set before triton is imported, "
                    f"or a CUDA device): {status['detail']}", allow_module_level=True)
    from .backends import triton_backend

    return triton_backend, torch.device("cpu" if triton_backend._kernels.INTERPRETED else "cuda")


def cpu_tolerance(dtype: torch.dtype, algorithm=None, cin: int = 1) -> float:
    """``TOLERANCE[dtype]``, or ``bf16_gemm_tolerance(cin)`` for a CPU algorithm (a
    ``_C.Algorithm``) whose GEMM rounds its operands to bf16, on a layer of ``cin`` input
    channels (by default the worst case, one), or at least ``WINOGRAD6_TOLERANCE`` for
    Winograd F(6x6,3x3)."""
    from .backends import cpu

    if cpu._C is None:
        return TOLERANCE[dtype]
    if algorithm in cpu.bf16_gemm_algorithms():
        return bf16_gemm_tolerance(cin)
    if algorithm == cpu._C.Algorithm.winograd6x6:
        return max(TOLERANCE[dtype], WINOGRAD6_TOLERANCE)
    return TOLERANCE[dtype]


@dataclasses.dataclass
class LayerCase:
    """One fused layer's inputs. ``tensors`` and ``options`` are what ``conv2d`` takes."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    extra: torch.Tensor | None
    act_weight: torch.Tensor | None
    act2_weight: torch.Tensor | None
    transposed: bool
    padding: tuple[int, int]
    epilogue: Epilogue

    @property
    def cout(self) -> int:
        return self.weight.shape[1 if self.transposed else 0]

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        n, _, h, w = self.x.shape
        kh, kw = self.weight.shape[2:]
        return (n, self.cout, output_size(h, kh, self.padding[0], self.transposed),
                output_size(w, kw, self.padding[1], self.transposed))

    @property
    def tensors(self) -> tuple:
        return self.x, self.weight, self.bias, self.extra

    @property
    def options(self) -> dict:
        """The keyword arguments of a backend's ``conv2d`` (slopes made as the op makes them)."""
        e, dev = self.epilogue, self.x.device
        return dict(transposed=self.transposed, padding=self.padding, epilogue=e,
                    slopes=kernel_slopes(e.act, e.slope, self.act_weight, self.cout, dev),
                    slopes2=kernel_slopes(e.act2, e.slope2, self.act2_weight, self.cout, dev))

    def to(self, **kwargs) -> "LayerCase":
        move = lambda t: None if t is None else t.to(**kwargs)  # noqa: E731
        return dataclasses.replace(self, **{f: move(getattr(self, f)) for f in
                                            ("x", "weight", "bias", "extra", "act_weight", "act2_weight")})


def layer_case(n: int = 1, cin: int = 8, cout: int = 8, h: int = 9, w: int = 11, *, kernel=3,
               padding=None, transposed: bool = False, epilogue: Epilogue | str = "relu",
               dtype: torch.dtype = torch.float32, device="cpu", generator=None) -> LayerCase:
    """Random inputs of one layer whose outputs are O(1): He-scaled weights, bias and extra
    of unit order, PReLU weights per channel in (0, 0.5). ``padding`` defaults to "same"
    (``kernel // 2``); the values are drawn in float32, then cast to ``dtype``."""
    e = EPILOGUES[epilogue] if isinstance(epilogue, str) else epilogue
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    ph, pw = (kh // 2, kw // 2) if padding is None else ((padding, padding) if isinstance(padding, int) else tuple(padding))
    g = generator
    randn = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x = randn(n, cin, h, w)
    weight = randn(*((cin, cout, kh, kw) if transposed else (cout, cin, kh, kw))) * (2.0 / (kh * kw * cin)) ** 0.5
    bias = randn(cout) * 0.5
    case = LayerCase(x, weight, bias, None, None, None, transposed, (ph, pw), e)
    _, _, oh, ow = case.out_shape
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kh}x{kw} kernel with padding {(ph, pw)} leaves no output of a {h}x{w} input")
    if e.needs_extra:
        case.extra = randn(n, cout, oh, ow)
    if e.act == Act.PRELU:
        case.act_weight = torch.rand(cout, generator=g) * 0.5
    if e.act2 == Act.PRELU:
        case.act2_weight = torch.rand(cout, generator=g) * 0.5
    return case.to(dtype=dtype, device=device)


def reference(case: LayerCase) -> torch.Tensor:
    """The layer in float64 on the CPU, from the very same (rounded) inputs."""
    c = case.to(dtype=torch.float64, device="cpu")
    return reference_conv2d(c.x, c.weight, c.bias, c.extra, transposed=c.transposed, padding=c.padding,
                            epilogue=c.epilogue, act_weight=c.act_weight, act2_weight=c.act2_weight)


def max_rel_error(got: torch.Tensor, want: torch.Tensor, scale: float | None = None) -> float:
    """max |got - want| / ``scale`` (by default max |want|) in float64; inf if ``got`` has a
    non-finite element."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    scale = want.abs().max().item() if scale is None else scale
    return ((got - want).abs().max() / max(scale, 1e-30)).item()


def assert_close(got: torch.Tensor, want: torch.Tensor, rel: float, scale: float | None = None) -> None:
    """Same shape, every element finite (an unwritten, NaN-poisoned element fails), and
    max |got - want| <= rel * ``scale`` (by default max |want|; ``magnitude(case)`` where a few
    outputs could cancel to nearly zero)."""
    assert tuple(got.shape) == tuple(want.shape), f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = (~torch.isfinite(got.detach().cpu())).sum().item()
    assert bad == 0, f"{bad} of {got.numel()} output elements are not finite (unwritten or overflowed)"
    err = max_rel_error(got, want, scale)
    assert err <= rel, f"max relative error {err:.3e} > {rel:.1e}"


def conv_calls(module: nn.Module, x: torch.Tensor):
    """``(module(x), calls)``: the output and every convolution module its forward called, in
    order (a shared one once per call): what a plan's fused steps must account for."""
    calls = []
    hooks = [c.register_forward_hook(lambda mod, i, o: calls.append(mod))
             for c in module.modules() if isinstance(c, nn.modules.conv._ConvNd)]
    try:
        with torch.no_grad():
            y = module(x)
    finally:
        for hook in hooks:
            hook.remove()
    return y, calls


def assert_like_pytorch(got, module: nn.Module, x: torch.Tensor, rel: float) -> None:
    """``got`` (a tensor or a list of them: ``module(x)`` computed another way) within ``rel`` of
    the exact result (``module`` and ``x`` in float64), or within twice PyTorch's own fp32 error
    where that is larger: a deep random network (120 conv calls) rounds more than ``rel``."""
    import copy

    as_list = lambda t: list(t) if isinstance(t, (list, tuple)) else [t]  # noqa: E731
    with torch.no_grad():
        exact = as_list(copy.deepcopy(module).double()(x.double()))
        fp32 = as_list(module(x))
    got = as_list(got)
    assert len(got) == len(exact), f"{len(got)} outputs, the module gives {len(exact)}"
    for g, e, f in zip(got, exact, fp32):
        assert_close(g, e, max(rel, 2 * max_rel_error(f, e)))


def magnitude(case: "LayerCase") -> float:
    """The largest sum of absolute terms behind any output of the layer: the scale rounding
    errors are proportional to (a layer of a few outputs can cancel to nearly zero)."""
    c = case.to(dtype=torch.float64, device="cpu")
    e = c.epilogue
    terms = reference_conv2d(c.x.abs(), c.weight.abs(), None, transposed=c.transposed, padding=c.padding,
                             epilogue=Epilogue())
    total = abs(e.alpha) * terms + c.bias.abs().view(1, -1, 1, 1)
    if c.extra is not None:
        total = total + abs(e.beta) * c.extra.abs()
    return total.max().item()


def poisoned_nhwc(shape, dtype: torch.dtype, device="cpu") -> torch.Tensor:
    """A NaN-filled dense NHWC ``[N, C, H, W]`` tensor (``stride(1) == 1`` even for one channel):
    an output buffer in which every element a kernel fails to write stays NaN."""
    n, c, h, w = shape
    return torch.full((n, h, w, c), float("nan"), dtype=dtype, device=device).permute(0, 3, 1, 2)


def kaiming_init_(model: nn.Module) -> nn.Module:
    """He-normal weights and small biases: activations keep their scale through deep stacks."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.01, 0.01)
    return model


# --- small hand-made networks: every pattern the planner folds, the ways real networks do -------

class _Block(nn.Module):
    """conv -> [BN] -> act -> conv -> [BN], scaled, plus the block's input (EDSR, SRResNet)."""

    def __init__(self, c: int, k: int = 3, bn: bool = False, act: str = "relu", scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, k, padding=k // 2, bias=not bn)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.act = {"relu": nn.ReLU(inplace=True), "prelu": nn.PReLU(c), "leaky": nn.LeakyReLU(0.2)}[act]
        self.conv2 = nn.Conv2d(c, c, k, padding=k // 2, bias=not bn)
        self.bn2 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.scale = scale

    def forward(self, x):
        r = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return x + r * self.scale if self.scale != 1 else x + r


class ResNetLike(nn.Module):
    """Head, residual blocks, a long skip, a x2 pixel-shuffle upsampler, a tail."""

    def __init__(self, channels=3, features=16, blocks=2, k=3, bn=False, act="relu", scale=1.0,
                 head_k=9, tanh=False):
        super().__init__()
        self.head = nn.Conv2d(channels, features, head_k, padding=head_k // 2)
        self.head_act = nn.PReLU() if act == "prelu" else nn.Identity()
        self.body = nn.Sequential(*[_Block(features, k, bn, act, scale) for _ in range(blocks)])
        self.body_end = nn.Conv2d(features, features, 3, padding=1)
        self.up = nn.Conv2d(features, features * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.tail = nn.Conv2d(features, channels, head_k, padding=head_k // 2)
        self.tanh = tanh

    def forward(self, x):
        h = self.head_act(self.head(x))
        h = h + self.body_end(self.body(h))
        y = self.tail(F.relu(self.shuffle(self.up(h))))
        return torch.tanh(y) if self.tanh else y


class DnCNNLike(nn.Module):
    """conv+ReLU, (conv+BN+ReLU) x depth, conv; the network predicts the noise: x - net(x)."""

    def __init__(self, channels=1, features=17, depth=3):
        super().__init__()
        layers = [nn.Conv2d(channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth):
            layers += [nn.Conv2d(features, features, 3, padding=1, bias=False), nn.BatchNorm2d(features),
                       nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(features, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.net(x)


class SRCNNLike(nn.Module):
    """9-1-5 (or 9-5-5), "same" padding as the ports do or none as the paper does."""

    def __init__(self, channels=1, f1=64, f2=32, middle=1, same=True):
        super().__init__()
        pad = (lambda k: k // 2) if same else (lambda k: 0)
        self.conv1 = nn.Conv2d(channels, f1, 9, padding=pad(9))
        self.conv2 = nn.Conv2d(f1, f2, middle, padding=pad(middle))
        self.conv3 = nn.Conv2d(f2, channels, 5, padding=pad(5))

    def forward(self, x):
        return self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))


class FSRCNNLike(nn.Module):
    """5x5 PReLU, 1x1 shrink, m x 3x3, 1x1 expand (PReLU each), then a deconvolution: stride 1
    (fused) or the paper's stride = scale (left to PyTorch)."""

    def __init__(self, d=12, s=5, m=2, stride=1):
        super().__init__()
        layers = [nn.Conv2d(1, d, 5, padding=2), nn.PReLU(d), nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.features = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(d, 1, 9, stride=stride, padding=4, output_padding=stride - 1)

    def forward(self, x):
        return self.deconv(self.features(x))


class EveryEpilogue(nn.Module):
    """One layer per epilogue of ``EPILOGUES``, in module form, with odd channel counts and
    kernels 1, 3, 5 and transposed layers between."""

    def __init__(self, c=5):
        super().__init__()
        self.c0 = nn.Conv2d(2, c, 3, padding=1)
        self.c1 = nn.Conv2d(c, c, 5, padding=2)
        self.c2 = nn.ConvTranspose2d(c, c, 3, padding=1)
        self.c3 = nn.Conv2d(c, c, 1)
        self.c4 = nn.ConvTranspose2d(c, c, 5, padding=2)
        self.c5 = nn.Conv2d(c, c, 3, padding=1)
        self.c6 = nn.Conv2d(c, c, 3, padding=1)
        self.c7 = nn.Conv2d(c, 2, 1)
        self.p1, self.p2 = nn.PReLU(c), nn.PReLU(c)

    def forward(self, x):
        a = F.leaky_relu(self.c0(x), 0.2)                  # leaky_relu
        b = self.p1(self.c1(a))                            # prelu
        c = F.relu(F.relu(self.c2(b)) + a)                 # relu, residual, relu
        d = torch.tanh(0.5 * self.c3(c))                   # scaled tanh
        e = b - self.c4(d)                                 # negated residual
        f = F.leaky_relu(self.p2(self.c5(e)) + c, 0.3)     # prelu, residual, leaky
        g = F.relu(self.c6(f) - d)                         # relu after a subtracted residual
        return self.c7(g) + x                              # the global residual


FUSE_MODULES = {
    "edsr_like": lambda: ResNetLike(3, 16, blocks=2, scale=0.1, head_k=3),
    "srresnet_like": lambda: ResNetLike(3, 16, blocks=2, bn=True, act="prelu", head_k=9, tanh=True),
    "leaky_5x5": lambda: ResNetLike(1, 24, blocks=1, k=5, act="leaky", head_k=5),
    "dncnn_like": lambda: DnCNNLike(1, 17, 3),
    "srcnn_915": lambda: SRCNNLike(1, 64, 32, 1),
    "srcnn_955_valid": lambda: SRCNNLike(1, 32, 16, 5, same=False),
    "fsrcnn_like": lambda: FSRCNNLike(),
    "fsrcnn_strided": lambda: FSRCNNLike(stride=2),
    "every_epilogue": lambda: EveryEpilogue(),
    "wide_1x1_128": lambda: nn.Sequential(nn.Conv2d(3, 128, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1),
                                          nn.ReLU(), nn.Conv2d(128, 1, 1)),
}


def randomize_(module: nn.Module) -> nn.Module:
    """Kaiming weights and BatchNorms with statistics and affine terms far from the identity,
    so folding them is really tested; PReLU slopes drawn per channel."""
    kaiming_init_(module)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        elif isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.05, 0.5)
    return module


def backends_here() -> list[str]:
    """The backends that run CPU tensors on this machine: ``cpu`` (our C++ kernels), ``triton``
    (under its interpreter, ``TRITON_INTERPRET=1``), ``cuda_emu`` (the CUDA C++ kernels under
    our host emulation). Backend tests run over all of them."""
    from .backends import status

    return [name for name, st in status().items() if st["available"] and "cpu" in st["devices"]]


COPY_WAYS = ("deepcopy", "pickle", "torch.save")


def copied(module: nn.Module, how: str) -> nn.Module:
    """``module`` copied one of the ways users and cluster workers copy models (``COPY_WAYS``)."""
    import copy
    import io
    import pickle

    if how == "deepcopy":
        return copy.deepcopy(module)
    if how == "pickle":
        return pickle.loads(pickle.dumps(module))
    if how == "torch.save":
        buf = io.BytesIO()
        torch.save(module, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)
    raise ValueError(f"how must be one of {COPY_WAYS}, got {how!r}")
