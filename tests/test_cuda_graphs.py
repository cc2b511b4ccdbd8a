"""CUDA graph replay of the fused model's inference call (redkern.graphs).

The bookkeeping (when a graph is captured again, what is copied in and out) runs on any
machine: ``GraphReplay`` takes its capture step as a parameter, and here a stand-in whose
"replay" runs the plan again into the captured output stands for ``torch.cuda.graph``. The
model runs on the Triton backend (under the interpreter without a GPU). The real capture is
tested at the end, on a GPU only.
"""

from __future__ import annotations

import copy

import pytest
import torch

import redkern
from redkern import graphs
from redkern import testing as T

_STATUS = redkern.backends()["triton"]
if not _STATUS["available"]:
    pytest.skip(f"Triton backend unavailable: {_STATUS['detail']}", allow_module_level=True)

HERE = torch.device("cuda" if "cuda" in _STATUS["devices"] else "cpu")


def stand_in_capture(fn, inputs):
    """``capture_cuda``'s contract without CUDA: static copies of the inputs, the outputs of one
    call, and a replay that recomputes them in place from the static inputs."""
    static = [graphs._static_copy(t) for t in inputs]
    output = fn(*static)

    def replay():
        output.copy_(fn(*static))

    return graphs.Captured(static, output, replay)


@pytest.fixture
def red10(monkeypatch):
    """A fused RED10 whose graphs use the stand-in capture, on this machine's device."""
    monkeypatch.setattr(redkern.fusion, "graph_eligible", lambda inputs: True)
    ref = redkern.RED10(features=8).to(HERE)
    fused = redkern.RED10(features=8, fused=True, backend="triton").to(HERE)
    fused.load_state_dict(ref.state_dict())
    fused.cuda_graphs = True
    fused._redkern_runtime_state().graphs = graphs.GraphReplay(capture=stand_in_capture)
    return ref, fused


def check(fused, ref, x):
    with torch.no_grad():
        y = fused(x)
        exact = copy.deepcopy(ref).double()(x.double())
    T.assert_close(y - x, exact - x.double(), 1e-5 if x.dtype == torch.float32 else 2e-2)
    return y


def captures(fused) -> int:
    return fused._redkern_runtime_state().graphs.captures


def test_replayed_while_nothing_changes(red10):
    ref, fused = red10
    x = torch.rand(1, 1, 7, 9, device=HERE)
    y1 = check(fused, ref, x)
    y2 = check(fused, ref, torch.rand(1, 1, 7, 9, device=HERE))  # new values, same shape: replayed
    assert captures(fused) == 1
    assert not torch.equal(y1, y2)  # the output is a copy: the next replay did not overwrite y1
    assert y1.data_ptr() != fused._redkern_runtime_state().graphs._entry.captured.output.data_ptr()


def test_captured_again_when_shapes_weights_or_dtype_change(red10):
    ref, fused = red10
    x = torch.rand(1, 1, 7, 9, device=HERE)
    check(fused, ref, x)
    check(fused, ref, torch.rand(1, 1, 8, 9, device=HERE))  # another size
    assert captures(fused) == 2
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE))  # another batch
    assert captures(fused) == 3
    check(fused, ref, T.poisoned_nhwc((2, 1, 8, 9), torch.float32, HERE).copy_(torch.rand(2, 1, 8, 9)))  # NHWC
    assert captures(fused) == 4
    with torch.no_grad():  # an in-place weight update (an optimizer step, an edit)
        fused.conv_2.weight.mul_(-1.5)
        ref.conv_2.weight.mul_(-1.5)
    n = captures(fused)
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE))
    assert captures(fused) == n + 1
    state = {k: v * 0.9 for k, v in ref.state_dict().items()}
    ref.load_state_dict(state), fused.load_state_dict(state)
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE))
    assert captures(fused) == n + 2
    fused.half(), ref.half()  # new parameter tensors, and a new input dtype
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE).half())
    assert captures(fused) == n + 3
    fused.pair_layers = False  # another plan of launches
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE).half())
    assert captures(fused) == n + 4
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE).half())
    assert captures(fused) == n + 4
    fused.eval()  # the modules' mode (a BatchNorm's would change what runs)
    check(fused, ref, torch.rand(2, 1, 8, 9, device=HERE).half())
    assert captures(fused) == n + 5


def test_not_used_for_autograd_cpu_inputs_or_when_off(monkeypatch):
    fused = redkern.RED10(features=8, fused=True, backend="triton").to(HERE)
    assert not fused.cuda_graphs
    fused.cuda_graphs = True
    fused._redkern_runtime_state().graphs = replay = graphs.GraphReplay(capture=stand_in_capture)
    x = torch.rand(1, 1, 6, 7, device=HERE)
    if HERE.type == "cpu":
        with torch.no_grad():
            fused(x)  # CPU inputs: no graph
        assert replay.captures == 0
    monkeypatch.setattr(redkern.fusion, "graph_eligible", lambda inputs: True)
    fused(x).sum().backward()  # autograd: the ops, never a graph
    assert replay.captures == 0 and fused.conv_1.weight.grad is not None
    fused.cuda_graphs = False
    with torch.no_grad():
        fused(x)
    assert replay.captures == 0 and not fused.cuda_graphs


def test_eligibility_and_signature():
    cpu = torch.zeros(1, 1, 2, 3)
    assert not graphs.eligible((cpu,)) and not graphs.eligible(()) and not graphs.eligible((1.0,))
    a = graphs.signature((cpu,))
    assert a == graphs.signature((torch.ones(1, 1, 2, 3),))  # values do not matter
    assert graphs.signature((cpu.half(),)) != a  # dtype
    assert graphs.signature((torch.zeros(1, 1, 2, 4)[..., :3],)) != a  # strides
    assert graphs.signature((cpu, 2)) != graphs.signature((cpu, 3))  # non-tensor arguments by value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_real_cuda_graph_replays_red30(dtype):
    torch.manual_seed(0)
    ref = T.kaiming_init_(redkern.RED30()).cuda()
    fused = redkern.RED30(fused=True, backend="triton").cuda()
    fused.load_state_dict(ref.state_dict())
    fused, ref = fused.to(dtype), ref.to(dtype)
    plain = [torch.rand(1, 1, 64, 48, device="cuda", dtype=dtype) for _ in range(3)]
    with torch.inference_mode():
        want = [fused(x) for x in plain]
        fused.cuda_graphs = True
        got = [fused(x) for x in plain]
        assert fused._redkern_runtime_state().graphs.captures == 1
        for g, w in zip(got, want):
            T.assert_close(g, w.double(), 1e-6 if dtype == torch.float32 else 2e-3)
    with torch.no_grad():
        fused.deconv_3.weight.mul_(0.5)
    with torch.inference_mode():
        again = fused(plain[0])
        fused.cuda_graphs = False
        T.assert_close(again, fused(plain[0]).double(), 1e-6 if dtype == torch.float32 else 2e-3)
