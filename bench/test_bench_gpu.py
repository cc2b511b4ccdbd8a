"""GPU benchmarks (pytest-benchmark): RED30 and one fused layer, redkern vs PyTorch.

    pytest bench/test_bench_gpu.py --benchmark-only              # the 1x64x512x512 layer
    pytest bench/test_bench_gpu.py --benchmark-only --runslow    # and RED30 at 1x1x1024x1024

Skipped without CUDA. Every timed call ends in ``torch.cuda.synchronize()``, so a round is the
whole GPU work, not the launch. ``extra_info`` (the ``record`` fixture in bench/conftest.py)
holds GFLOP/s (direct-convolution FLOPs, 2.07 MFLOP per pixel for RED30-64), megapixels/s
and the max relative error against a float64 reference of the same weights and input.

Providers: our Triton kernels (fp16, bf16, exact fp32), our CUDA C++ backend where it is
built, cuDNN through the eager reference in NCHW and channels_last, and
``torch.compile(mode="max-autotune")`` of the reference (compiling and tuning are not timed).
The numbers to expect are in bench/README.md, "Roofline: RED30 on an H100".
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

import redkern
from redkern import benchmarking as B

pytest.importorskip("pytest_benchmark")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA device")]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Sanity bounds on max |y - ref| / max |ref|, not accuracy targets: a wrong kernel is far off.
MAX_REL_ERROR = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}
RED30_PROVIDERS = ["triton fp16", "triton bf16", "triton fp32", "cuda fp16",
                   "cudnn NCHW fp16", "cudnn channels_last fp16", "cudnn channels_last bf16",
                   "torch.compile max-autotune fp16"]
LAYER_PROVIDERS = ["triton fp16", "triton bf16", "triton fp32", "cuda fp16",
                   "cudnn NCHW fp16", "cudnn channels_last fp16"]


def _split(provider: str) -> tuple[str, torch.dtype]:
    kind, dtype = provider.rsplit(" ", 1)
    if kind in ("triton", "cuda"):
        st = redkern.backends()[kind]
        if not st["available"] or "cuda" not in st["devices"]:
            pytest.skip(f"backend {kind!r} cannot run CUDA tensors here: {st['detail']}")
    return kind, DTYPES[dtype]


def _synchronized(fn):
    def step():
        with torch.no_grad():
            y = fn()
        torch.cuda.synchronize()
        return y
    return step


@functools.lru_cache(maxsize=1)
def _red30():
    """RED30-64 with He-initialised weights (activations keep their scale through 30 layers),
    a 1x1x1024x1024 input and the float64 reference output."""
    torch.manual_seed(0)
    model = B.kaiming_init_(redkern.RED30()).cuda().eval()
    x = torch.rand(1, 1, 1024, 1024, device="cuda")
    return model, x, B.fp64_reference(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("provider", RED30_PROVIDERS)
def test_red30_1024x1024(benchmark, record, provider):
    benchmark.group = "RED30-64 1x1x1024x1024 (GPU)"
    kind, dtype = _split(provider)
    ref, x32, want = _red30()
    x = x32.to(dtype)
    if kind in ("triton", "cuda"):
        model = redkern.RED30(fused=True, backend=kind)
        model.load_state_dict(ref.state_dict())
        model = model.to("cuda", dtype).eval()
    else:
        model = redkern.RED30().to("cuda", dtype).eval()
        model.load_state_dict(ref.state_dict())
        if kind != "cudnn NCHW":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if kind.startswith("torch.compile"):
            model = torch.compile(model, mode="max-autotune")
    step = _synchronized(lambda: model(x))
    error = B.max_rel_error(step(), want)  # the first call also compiles and autotunes
    benchmark.pedantic(step, rounds=10 if dtype == torch.float32 else 20, warmup_rounds=3)
    record(flops=B.model_flops(ref, 1, 1024, 1024), pixels=1024 * 1024, error=error, backend=kind,
           dtype=str(dtype).removeprefix("torch."), gpu=torch.cuda.get_device_name())
    assert error <= MAX_REL_ERROR[dtype], f"{provider} result is wrong: max rel error {error}"


@pytest.mark.parametrize("provider", LAYER_PROVIDERS)
def test_layer_1x64x512x512(benchmark, record, provider):
    """A skip decoder layer, relu(relu(deconv(x) + b) + skip), 64 -> 64 channels."""
    benchmark.group = "deconv_relu + skip 1x64x512x512 (GPU)"
    kind, dtype = _split(provider)
    torch.manual_seed(0)
    n, c, h, w = 1, 64, 512, 512
    x64, skip64 = torch.rand(n, c, h, w, device="cuda").double(), torch.rand(n, c, h, w, device="cuda").double()
    w64 = torch.randn(c, c, 3, 3, device="cuda").double() * (2 / 576) ** 0.5
    b64 = torch.randn(c, device="cuda").double() * 0.1
    want = redkern.ops.reference_deconv_relu(x64, w64, b64, skip64)
    fmt = torch.contiguous_format if kind == "cudnn NCHW" else torch.channels_last
    x, skip = (t.to(dtype).contiguous(memory_format=fmt) for t in (x64, skip64))
    weight, bias = w64.to(dtype), b64.to(dtype)
    if kind in ("triton", "cuda"):
        step = _synchronized(lambda: torch.ops.redkern.deconv_relu(x, weight, bias, skip, kind))
    else:
        step = _synchronized(lambda: F.relu(F.relu(F.conv_transpose2d(x, weight, bias, padding=1)) + skip))
    error = B.max_rel_error(step(), want)
    benchmark.pedantic(step, rounds=50, warmup_rounds=5)
    record(flops=B.conv_flops(n, h, w, c, c), pixels=h * w, error=error, backend=kind,
           dtype=str(dtype).removeprefix("torch."), gpu=torch.cuda.get_device_name())
    assert error <= MAX_REL_ERROR[dtype], f"{provider} result is wrong: max rel error {error}"
