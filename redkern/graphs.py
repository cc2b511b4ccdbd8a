"""CUDA graph replay of a fused model's whole inference call: no per-layer Python or launch cost.

    fast = redkern.RED30(fused=True).cuda().eval()
    fast.cuda_graphs = True                 # off by default
    with torch.inference_mode():
        y = fast(x)                         # first call of a shape: warm-up, then capture
        y = fast(x2)                        # same shape: x2 copied in, the graph replayed

A ``GraphReplay`` holds one captured graph, for one input signature (shapes, strides, dtypes,
devices) and one state of the module's tensors (``backends.common.SourceStamp``: the same
parameter and buffer objects at the same addresses and versions, no optimizer step since). A
call that differs in either captures again (the old graph is freed first): new weights, a
``load_state_dict``, ``.to()`` another dtype or device, another image size or batch. Tiles of
one size (``redkern.tiled``) share a graph. The warm-up call before a capture runs the whole
plan on a side stream, so Triton compiles and autotunes and the prepared-weight caches fill
outside the capture. Outputs are copies of the graph's own (the next replay overwrites those).

``capture`` is the one CUDA-specific step; ``GraphReplay(capture=...)`` takes another with the
same contract, so the bookkeeping is tested on any machine.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Callable

import torch
from torch import Tensor

from .backends.common import SourceStamp

__all__ = ["GraphReplay", "signature", "capture_cuda", "eligible"]


def signature(inputs) -> tuple:
    """What a captured graph is specific to: each input's shape, strides, dtype and device (or
    its value, for a non-tensor)."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.device) if isinstance(t, Tensor) else ("value", t)
                 for t in inputs)


def eligible(inputs) -> bool:
    """Whether a call can replay a graph: every tensor input on a CUDA device, at least one,
    and nothing being compiled or traced (autograd's need is the executor's ``needs_ops``)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    return bool(tensors) and all(t.device.type == "cuda" and type(t) is Tensor for t in tensors)


@dataclasses.dataclass
class Captured:
    """``capture``'s result: the static inputs the graph reads, the outputs it writes, and
    ``replay()`` to run it again."""

    inputs: list
    output: Any
    replay: Callable[[], None]


def _static_copy(t):
    if not isinstance(t, Tensor):
        return t
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t)


def capture_cuda(fn: Callable, inputs) -> Captured:
    """Run ``fn(*inputs)`` once on a side stream (compiling, autotuning and preparing weights
    outside the graph), then capture one more call into a ``torch.cuda.CUDAGraph``."""
    static = [_static_copy(t) for t in inputs]
    device = next(t.device for t in static if isinstance(t, Tensor))
    with torch.cuda.device(device):
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            fn(*static)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = fn(*static)
    return Captured(static, output, graph.replay)


def _clone(value):
    if isinstance(value, Tensor):
        return value.clone(memory_format=torch.preserve_format)
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


@dataclasses.dataclass
class _Entry:
    key: tuple
    stamp: SourceStamp
    captured: Captured


class GraphReplay:
    """One captured graph of ``fn`` at a time (see the module docstring); ``captures`` counts
    how many were made."""

    def __init__(self, capture: Callable[[Callable, Any], Captured] = capture_cuda):
        self._capture = capture
        self._entry: _Entry | None = None
        self._lock = threading.Lock()  # one replay at a time: the static buffers are shared
        self.captures = 0

    def __call__(self, fn: Callable, inputs, tensors, extra_key=()) -> Any:
        """``fn(*inputs)``, replayed from the graph captured for this call's ``signature``,
        ``extra_key`` and the state of ``tensors`` (the module's parameters and buffers), or
        captured now."""
        key = (signature(inputs), extra_key)
        tensors = list(tensors)
        try:
            for t in tensors:
                t._version
        except RuntimeError:  # inference tensors keep no version counter: no way to see a change
            return fn(*inputs)
        with self._lock:
            e = self._entry
            if e is None or e.key != key or not e.stamp.matches(tensors):
                self._entry = None  # free the old graph's memory before capturing the new one
                captured = self._capture(fn, inputs)  # its static inputs hold this call's already
                self.captures += 1
                e = self._entry = _Entry(key, SourceStamp(tensors), captured)
            else:
                for static, t in zip(e.captured.inputs, inputs):
                    if isinstance(t, Tensor):
                        static.copy_(t)
            e.captured.replay()  # a capture records the kernels without running them
            return _clone(e.captured.output)

    def clear(self) -> None:
        with self._lock:
            self._entry = None
