"""Each fused op alone: reference PyTorch (NCHW, channels_last) against redkern.

    pytest bench/test_bench_ops.py --benchmark-only

RED-Net's three ops at 64 channels, and the general ``conv2d_fused`` on the layers of the other
networks (SRCNN's 9x9, 1x1 and 5x5; SRResNet's PReLU block conv; EDSR's scaled residual).
Cases come from ``redkern.testing`` and are checked against its reference.
"""

import pytest
import torch

from redkern import benchmarking as B
from redkern import ops
from redkern import testing as T
from redkern.epilogue import reference_conv2d

# name: (cin, cout, kernel, transposed, epilogue, the op to time or None for conv2d_fused)
CASES = {
    "conv_relu 3x3 64->64": (64, 64, 3, False, "relu", torch.ops.redkern.conv_relu),
    "deconv_relu_skip 3x3 64->64": (64, 64, 3, True, "relu_add_relu", torch.ops.redkern.deconv_relu),
    "deconv_residual 3x3 64->64": (64, 64, 3, True, "add_residual", torch.ops.redkern.deconv_residual),
    "conv2d_fused 9x9 1->64 relu": (1, 64, 9, False, "relu", None),
    "conv2d_fused 1x1 64->32 relu": (64, 32, 1, False, "relu", None),
    "conv2d_fused 5x5 32->1": (32, 1, 5, False, "identity", None),
    "conv2d_fused 3x3 64->64 prelu": (64, 64, 3, False, "prelu", None),
    "conv2d_fused 3x3 64->64 scaled residual": (64, 64, 3, False, "scaled_residual", None),
}
SIZES = [256, pytest.param(512, marks=pytest.mark.slow)]
PROVIDERS = ["torch NCHW", "torch channels_last", "redkern"]


def runner(name, size, memory_format):
    """``(fn, args, reference)`` for one case at ``size``, inputs in ``memory_format``."""
    cin, cout, k, transposed, epilogue, op = CASES[name]
    c = T.layer_case(1, cin, cout, size, size, kernel=k, transposed=transposed, epilogue=epilogue)
    fmt = lambda t: t if t is None or t.dim() != 4 else t.contiguous(memory_format=memory_format)  # noqa: E731
    x, extra = fmt(c.x), fmt(c.extra)
    if op is not None:
        args = [x, c.weight, c.bias] + ([extra] if extra is not None else [])
        ref = {torch.ops.redkern.conv_relu: ops.reference_conv_relu, torch.ops.redkern.deconv_relu: ops.reference_deconv_relu,
               torch.ops.redkern.deconv_residual: ops.reference_deconv_residual}[op]
        return op, args, ref
    args = [x, c.weight, c.bias, extra, c.act_weight, c.act2_weight, transposed, list(c.padding), *c.epilogue.encode()]

    def ref(x, w, b, e, aw, a2w, tr, pad, *codes):
        from redkern.epilogue import Epilogue
        return reference_conv2d(x, w, b, e, transposed=tr, padding=pad, epilogue=Epilogue.decode(*codes),
                                act_weight=aw, act2_weight=a2w)

    return torch.ops.redkern.conv2d_fused, args, ref


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(CASES))
def test_op(benchmark, record, name, size, provider):
    cin, cout, k = CASES[name][:3]
    benchmark.group = f"op {name} 1x{cin}x{size}x{size}"
    fmt = torch.contiguous_format if provider == "torch NCHW" else torch.channels_last
    op, args, ref = runner(name, size, fmt)
    fn = op if provider == "redkern" else ref
    with torch.inference_mode():
        want = ref(*[a.double() if isinstance(a, torch.Tensor) else a for a in args])
        error = B.max_rel_error(fn(*args), want)
        benchmark(fn, *args)
    assert error <= 1e-5, f"{provider} result is wrong: max rel error {error}"
    record(flops=B.conv_flops(1, size, size, cin, cout, k), pixels=size * size, error=error,
           backend="cpu" if provider == "redkern" else "torch", dtype="float32", provider=provider)
