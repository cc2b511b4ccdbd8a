"""GPU benchmarks (pytest-benchmark): RED30 and one fused layer, Triton vs the alternatives.

    pytest bench/test_bench_gpu.py --runslow --benchmark-columns=median,min,rounds

Skipped without CUDA. Every timed call ends in ``torch.cuda.synchronize()``, so a round is the
whole GPU work, not the launch. ``extra_info`` of each case holds GFLOP/s (direct-convolution
FLOPs: 2 per multiply-add, 2.07 MFLOP per pixel for RED30-64), GB/s for the layer (NHWC bytes
in + out), and the maximum error against the float32 reference with TF32 off.

Contenders: our Triton kernels (fp16, bf16, fp32 exact), our CUDA C++ backend where built,
cuDNN through the eager reference model in NCHW and channels_last, and
``torch.compile(mode="max-autotune")`` of the reference (compile time is not timed).
The 1024x1024 RED30 cases are marked slow (see pyproject's marker).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import redkern

pytest.importorskip("pytest_benchmark")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA device")]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
RED30_CASES = ["triton-fp16", "triton-bf16", "triton-fp32", "cuda-fp16",
               "cudnn-nchw-fp16", "cudnn-channels_last-fp16", "cudnn-channels_last-bf16",
               "compile-max-autotune-fp16"]
LAYER_CASES = ["triton-fp16", "triton-bf16", "triton-fp32", "cuda-fp16",
               "cudnn-nchw-fp16", "cudnn-channels_last-fp16"]


def _needs_backend(name: str) -> None:
    st = redkern.backends()[name]
    if not st["available"] or "cuda" not in st["devices"]:
        pytest.skip(f"backend {name!r} cannot run CUDA tensors here: {st['detail']}")


def _flops_per_pixel(model: torch.nn.Module) -> int:
    """Direct-convolution FLOPs per output pixel: 2 per multiply-add, summed over the layers."""
    return sum(2 * 9 * m.in_channels * m.out_channels for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))


def _exact_fp32(fn):
    """Run ``fn`` with cuDNN's and cuBLAS's TF32 switched off: the reference is true fp32."""
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            return fn()
    finally:
        torch.backends.cudnn.allow_tf32 = cudnn


def _time(benchmark, step, flops: float, nbytes: float | None, err: dict, rounds: int) -> None:
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=3, iterations=1)
    benchmark.extra_info.update(err)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # absent under --benchmark-disable
        median = stats.stats.median
        benchmark.extra_info["GFLOP/s"] = round(flops / median / 1e9, 1)
        if nbytes is not None:
            benchmark.extra_info["GB/s"] = round(nbytes / median / 1e9, 1)


def _errors(y: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (y.float() - ref.float()).abs().max().item()
    return {"max_abs_err": diff, "max_rel_err": diff / ref.float().abs().max().item()}


@pytest.mark.slow
@pytest.mark.parametrize("case", RED30_CASES)
def test_red30_1024x1024(benchmark, case):
    kind, dtype = case.rsplit("-", 1)[0], DTYPES[case.rsplit("-", 1)[1]]
    torch.manual_seed(0)
    ref = redkern.RED30().cuda().eval()
    x32 = torch.rand(1, 1, 1024, 1024, device="cuda")
    expect = _exact_fp32(lambda: ref(x32))
    x = x32.to(dtype)
    if kind in ("triton", "cuda"):
        _needs_backend(kind)
        model = redkern.RED30(fused=True, backend=kind)
        model.load_state_dict(ref.state_dict())
        model = model.cuda().to(dtype).eval()
    else:
        model = redkern.RED30().cuda().to(dtype).eval()
        model.load_state_dict(ref.state_dict())
        if "channels_last" in kind or "compile" in kind:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if kind.startswith("compile"):
            model = torch.compile(model, mode="max-autotune")

    def step():
        with torch.no_grad():
            y = model(x)
        torch.cuda.synchronize()
        return y

    y = step()  # compiles and autotunes outside the timed rounds
    flops = _flops_per_pixel(ref) * x.numel()
    benchmark.extra_info["MFLOP/pixel"] = round(_flops_per_pixel(ref) / 1e6, 3)
    _time(benchmark, step, flops, None, _errors(y, expect), rounds=10 if dtype == torch.float32 else 20)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_1x64x512x512(benchmark, case):
    """The middle decoder layer: relu(relu(deconv(x) + b) + skip), 64 -> 64 channels."""
    kind, dtype = case.rsplit("-", 1)[0], DTYPES[case.rsplit("-", 1)[1]]
    torch.manual_seed(0)
    n, c, h, w = 1, 64, 512, 512
    x32 = torch.randn(n, c, h, w, device="cuda")
    skip32 = torch.randn(n, c, h, w, device="cuda")
    w32 = torch.randn(c, c, 3, 3, device="cuda") / 24
    b32 = torch.randn(c, device="cuda") * 0.1
    expect = _exact_fp32(lambda: F.relu(F.relu(F.conv_transpose2d(x32, w32, b32, padding=1)) + skip32))
    fmt = torch.contiguous_format if kind == "cudnn-nchw" else torch.channels_last
    x, skip = (t.to(dtype).contiguous(memory_format=fmt) for t in (x32, skip32))
    weight, bias = w32.to(dtype), b32.to(dtype)
    if kind in ("triton", "cuda"):
        _needs_backend(kind)

        def op():
            return torch.ops.redkern.deconv_relu(x, weight, bias, skip, kind)
    else:
        def op():
            return F.relu(F.relu(F.conv_transpose2d(x, weight, bias, padding=1)) + skip)

    def step():
        with torch.no_grad():
            y = op()
        torch.cuda.synchronize()
        return y

    y = step()
    flops = 2 * 9 * c * c * n * h * w
    nbytes = 3 * x.numel() * x.element_size()  # x, skip in; y out (weights stay in cache)
    _time(benchmark, step, flops, nbytes, _errors(y, expect), rounds=50)
