"""Reliability: fuzzed ops on every backend that runs here, no leaks, thread safety."""

import gc
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redkern
from redkern import ops

REFERENCE = {
    "conv_relu": (torch.ops.redkern.conv_relu, ops.reference_conv_relu, False, False),
    "deconv_relu": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, False),
    "deconv_relu_skip": (torch.ops.redkern.deconv_relu, ops.reference_deconv_relu, True, True),
    "deconv_residual": (torch.ops.redkern.deconv_residual, ops.reference_deconv_residual, True, True),
}


def runnable_backends():
    """Backends that can run on CPU tensors here (CPU C++, Triton under its interpreter)."""
    return [name for name, s in redkern.backends().items() if s["available"] and "cpu" in s["devices"]]


# The Triton interpreter runs a kernel in Python: keep its cases smaller.
LIMITS = {"cpu": dict(c=70, hw=24, examples=60), "triton": dict(c=20, hw=9, examples=8),
          "cuda": dict(c=20, hw=9, examples=8)}


def fuzz_case(backend):
    lim = LIMITS.get(backend, LIMITS["triton"])
    return st.fixed_dictionaries({
        "op": st.sampled_from(sorted(REFERENCE)),
        "n": st.integers(1, 3),
        "cin": st.integers(1, lim["c"]),
        "cout": st.integers(1, lim["c"]),
        "h": st.integers(1, lim["hw"]),
        "w": st.integers(1, lim["hw"]),
        "layout": st.sampled_from(["nchw", "channels_last", "strided"]),
        "scale": st.sampled_from([1e-3, 1.0, 1e3]),
        "seed": st.integers(0, 2**31 - 1),
    })


def build_args(case):
    g = torch.Generator().manual_seed(case["seed"])
    op, ref, transposed, has_extra = REFERENCE[case["op"]]
    n, cin, cout, h, w = case["n"], case["cin"], case["cout"], case["h"], case["w"]
    if case["layout"] == "strided":  # every other column of a wider tensor
        x = torch.randn(n, cin, h, 2 * w, generator=g)[..., ::2]
    else:
        x = torch.randn(n, cin, h, w, generator=g)
        if case["layout"] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
    x = x * case["scale"]
    wshape = (cin, cout, 3, 3) if transposed else (cout, cin, 3, 3)
    weight = torch.randn(wshape, generator=g) / (9 * cin) ** 0.5
    bias = torch.randn(cout, generator=g) * 0.1 * case["scale"]
    args = [x, weight, bias]
    if has_extra:
        args.append(torch.randn(n, cout, h, w, generator=g) * case["scale"])
    return op, ref, args


@pytest.mark.parametrize("backend", runnable_backends())
def test_fuzz_ops_against_reference(backend):
    lim = LIMITS.get(backend, LIMITS["triton"])

    @settings(max_examples=lim["examples"], deadline=None, suppress_health_check=list(HealthCheck))
    @given(fuzz_case(backend))
    def check(case):
        op, ref, args = build_args(case)
        got = op(*args, backend=backend)
        want = ref(*[a.double() for a in args])
        assert got.shape == want.shape
        assert torch.isfinite(got).all(), case
        err = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        assert err <= 1e-5, (case, err)

    check()


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_no_leak_over_1000_calls():
    model = redkern.RED10(features=16, fused=True).eval()
    x = torch.rand(1, 1, 24, 24)
    with torch.inference_mode():
        for _ in range(100):
            model(x)
        gc.collect()
        before = rss_bytes()
        for _ in range(1000):
            model(x)
        gc.collect()
        grown = rss_bytes() - before
    # 1000 calls allocate ~1000 x 10 activations of 37 KB each: a leak would grow by ~370 MB.
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 1000 calls"


def test_concurrent_calls_from_threads_are_correct():
    ref = redkern.RED20(features=16).eval()
    fused = redkern.RED20(features=16, fused=True).eval()
    fused.load_state_dict(ref.state_dict())
    inputs = [torch.rand(1, 1, 13 + i, 17) for i in range(6)]
    with torch.no_grad():
        want = [ref(x) for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(5):
                    results[i] = fused(inputs[i])
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, w in enumerate(want):
        assert torch.allclose(results[i], w, rtol=1e-5, atol=1e-5), i


def test_wrong_shaped_checkpoint_names_the_key():
    sd = redkern.RED30(features=32).state_dict()
    with pytest.raises(RuntimeError, match="conv_1.weight"):
        redkern.RED30(fused=True).load_state_dict(sd)
    sd = redkern.RED30().state_dict()
    del sd["deconv_7.bias"]
    with pytest.raises(RuntimeError, match="deconv_7.bias"):
        redkern.RED30(fused=True).load_state_dict(sd)
