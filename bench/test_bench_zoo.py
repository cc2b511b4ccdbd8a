"""Every network of the zoo (``redkern.list_models()``, RED aside: see test_bench_models.py) in
its paper's main configuration, one 256x256 input (1 channel, or 3 where the paper uses RGB):
the reference eager (NCHW and channels_last), ``torch.compile`` of it, and ``redkern.fuse``.

    pytest bench/test_bench_zoo.py --benchmark-only               # the networks of < 1.5 TFLOP
    pytest bench/test_bench_zoo.py --benchmark-only --runslow     # and EDSR, DRCN, ... too

The group's baseline is redkern fused, so each peer's ratio is how many times slower it is.
With ``--benchmark-disable`` (the test suite) each network runs once at 48x48 to check every
provider's result, and ``torch.compile`` (tens of seconds per network) is left out.
"""

import copy
import functools

import pytest
import torch

import redkern
from redkern import benchmarking as B

NETWORKS = [n for n in redkern.list_models() if not n.startswith("red")]
PROVIDERS = ["torch eager NCHW", "torch eager channels_last", "torch.compile (freezing, channels_last)",
             "redkern fused"]
SLOW_FLOPS = 1.5e12  # a forward above this takes seconds on 2 cores: only with --runslow


# One network's models, inputs and compiled graphs at a time (the tests run network by network):
# all of them together outgrow 24 GiB.
@functools.lru_cache(maxsize=1)
def reference(name):
    torch.manual_seed(0)
    return B.kaiming_init_(redkern.create_model(name)).eval()


def channels_of(name):
    """The image channels the network takes (SRN-DeblurNet's first conv also reads its estimate)."""
    shape = getattr(reference(name), "example_input_shape", None)
    return shape[0] if shape else B._in_channels(reference(name))


@functools.cache
def flops(name, size):
    return redkern.plan(reference(name)).flops((1, channels_of(name), size, size))


@functools.lru_cache(maxsize=1)
def example(name, size):
    """One input per network and size, and its exact (float64) result, shared by the providers."""
    torch.manual_seed(1)
    x = torch.rand(1, channels_of(name), size, size)
    exact = copy.deepcopy(reference(name)).double()
    try:  # tile by tile (exact): PyTorch's float64 convolutions unfold whole maps (43 GB for SRResNet)
        tile = 2 * redkern.tiling.receptive_field(exact).radius + 16
        with torch.no_grad():
            return x, redkern.tiled(exact, x.double(), tile=tile, quiet=True)
    except ValueError:  # a network that cannot be tiled exactly (SRN-DeblurNet) runs whole
        return x, B.fp64_reference(reference(name), x)


@functools.lru_cache(maxsize=len(PROVIDERS))
def runner(name, provider, size):
    model = reference(name)
    if provider == "redkern fused":
        return B.Peer(provider, redkern.fuse(copy.deepcopy(model)))
    peers = B.torch_peers(model, example(name, size)[0], compile_=provider.startswith("torch.compile"))
    found = [p for p in peers if p.name == provider]
    return found[0] if found else B.Peer(provider, None, "not available")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", NETWORKS)
def test_network(benchmark, record, request, name, provider):
    timing = not request.config.getoption("benchmark_disable")
    size = 256 if timing else 48
    if not timing and provider.startswith("torch.compile"):
        pytest.skip("torch.compile is timed only when benchmarking (it compiles for tens of seconds)")
    if timing and flops(name, size) > SLOW_FLOPS and not request.config.getoption("--runslow"):
        pytest.skip(f"{name}: {flops(name, size) / 1e12:.1f} TFLOP per forward at {size}^2 (--runslow)")
    channels = channels_of(name)
    benchmark.group = f"zoo {name} 1x{channels}x{size}x{size}"
    peer = runner(name, provider, size)
    if peer.run is None:
        pytest.skip(f"{provider}: {peer.note}")
    x, exact = example(name, size)
    with torch.inference_mode():
        error = B.max_rel_error(peer.run(x), exact)
        benchmark.pedantic(peer.run, args=(x,), rounds=3, warmup_rounds=1)
    assert error <= 1e-4, f"{name}, {provider}: result is wrong, max rel error {error}"
    record(flops=flops(name, size), pixels=size * size, error=error, dtype="float32", provider=provider,
           backend="cpu" if provider.startswith("redkern") else provider)
