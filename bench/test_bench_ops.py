"""Each fused op alone at 64 channels: reference PyTorch (NCHW, channels_last) vs redkern.

    pytest bench/test_bench_ops.py --benchmark-only
"""

import pytest
import torch

from redkern import benchmarking as B
from redkern import ops

OPS = {
    "conv_relu": (torch.ops.redkern.conv_relu, ops.reference_conv_relu, False, False),
    "deconv_relu_skip": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, True),
    "deconv_residual": (torch.ops.redkern.deconv_residual, ops.reference_deconv_residual, True, True),
}
SIZES = [256, pytest.param(512, marks=pytest.mark.slow)]
PROVIDERS = ["torch NCHW", "torch channels_last", "redkern"]


def make_args(name, size, memory_format):
    _, _, transposed, extra = OPS[name]
    x = torch.rand(1, 64, size, size)
    w = torch.randn(64, 64, 3, 3) * (2 / 576) ** 0.5
    args = [x, w, torch.randn(64) * 0.1] + ([torch.rand(1, 64, size, size)] if extra else [])
    return [a.contiguous(memory_format=memory_format) if a.dim() == 4 and i != 1 else a
            for i, a in enumerate(args)]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(OPS))
def test_op(benchmark, record, name, size, provider):
    op, ref, _, _ = OPS[name]
    benchmark.group = f"op {name} 1x64x{size}x{size}"
    fmt = torch.contiguous_format if provider == "torch NCHW" else torch.channels_last
    args = make_args(name, size, fmt)
    fn = op if provider == "redkern" else ref
    with torch.inference_mode():
        want = ref(*[a.double() for a in args])
        error = B.max_rel_error(fn(*args), want)
        benchmark(fn, *args)
    assert error <= 1e-5, f"{provider} result is wrong: max rel error {error}"
    record(flops=B.conv_flops(1, size, size, 64, 64), pixels=size * size, error=error,
           backend="cpu" if provider == "redkern" else "torch", dtype="float32", provider=provider)
