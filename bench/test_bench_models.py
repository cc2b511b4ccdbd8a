"""Whole RED10/RED20/RED30 on the CPU: the reference in every PyTorch mode, the peers that
are installed (ONNX Runtime, OpenVINO), and redkern fused, side by side per model and size.

    pytest bench/test_bench_models.py --benchmark-only               # 256x256
    pytest bench/test_bench_models.py --benchmark-only --runslow     # and 1024x1024
"""

import functools

import pytest
import torch

import redkern
from redkern import benchmarking as B

MODELS = {"RED10": redkern.RED10, "RED20": redkern.RED20, "RED30": redkern.RED30}
SIZES = [256, pytest.param(1024, marks=pytest.mark.slow)]
PROVIDERS = ["torch eager NCHW", "torch eager channels_last", "torch.compile (freezing, channels_last)",
             "ONNX Runtime fp32", "OpenVINO fp32", "redkern fused"]


@functools.lru_cache(maxsize=None)
def reference(model_name):
    torch.manual_seed(0)
    return B.kaiming_init_(MODELS[model_name]()).eval()


@functools.lru_cache(maxsize=None)
def runner(model_name, provider, size):
    model = reference(model_name)
    x = torch.rand(1, 1, size, size)
    if provider == "redkern fused":
        fused = MODELS[model_name](fused=True).eval()
        fused.load_state_dict(model.state_dict())
        return B.Peer(provider, fused)
    if provider.startswith("torch"):
        peers = B.torch_peers(model, x, compile_=provider.startswith("torch.compile"))
    elif provider.startswith("ONNX"):
        peers = [B.onnxruntime_peer(model, x)]
    else:
        peers = B.openvino_peers(model, x)
    found = [p for p in peers if p.name.startswith(provider) or (p.run is None and provider.startswith(p.name))]
    return found[0] if found else B.Peer(provider, None, "not available")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_model(benchmark, record, model_name, size, provider):
    benchmark.group = f"{model_name} 1x1x{size}x{size}"
    peer = runner(model_name, provider, size)
    if peer.run is None:
        pytest.skip(f"{provider}: {peer.note}")
    model = reference(model_name)
    x = torch.rand(1, 1, size, size)
    with torch.inference_mode():
        error = B.max_rel_error(peer.run(x), B.fp64_reference(model, x))
        benchmark.pedantic(peer.run, args=(x,), rounds=3, warmup_rounds=1)
    assert error <= 1e-4, f"{provider} result is wrong: max rel error {error}"
    record(flops=B.model_flops(model, 1, size, size), pixels=size * size, error=error,
           backend="cpu" if provider.startswith("redkern") else provider, dtype="float32",
           provider=provider)
