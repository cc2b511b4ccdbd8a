"""What the benchmarks share: FLOP counts, the peers redkern is compared with, error checks.

Used by ``bench/`` and ``bench/compare_cpu.py``. Peers that are not installed are reported
as skipped with the reason, never as failures.
"""

from __future__ import annotations

import copy
import io
import platform
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .executor import as_module
from .layer_plan import plan, reference_view
from .testing import kaiming_init_, max_rel_error

__all__ = ["conv_flops", "model_flops", "cpu_model_name", "max_rel_error", "kaiming_init_", "median_seconds",
           "as_conv_only", "Peer", "torch_peers", "onnxruntime_peer", "openvino_peers", "fp64_reference"]


def conv_flops(n: int, h: int, w: int, cin: int, cout: int, kernel: int = 3) -> int:
    """Multiply-adds x 2 of one direct KxK convolution (stride 1, 'same' size)."""
    return 2 * kernel * kernel * n * h * w * cin * cout


def model_flops(model: nn.Module, n: int, h: int, w: int) -> int:
    """Direct-convolution FLOPs of one forward pass, read off the layer plan (2.07 MFLOP per
    pixel for RED30-64)."""
    return plan(model).flops((n, _in_channels(model), h, w))


def _in_channels(model: nn.Module) -> int:
    first = next(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))
    return first.in_channels


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def as_conv_only(model: nn.Module) -> nn.Module:
    """The same network in plain PyTorch with every stride-1 deconv run as a Conv2d (flipped,
    swapped weight): the form OpenVINO and ONNX Runtime run fastest. Made from the layer plan."""
    reference = copy.deepcopy(reference_view(model, detach=True)).eval()
    return as_module(plan(reference), reference)


@dataclass
class Peer:
    """One way of running the network: ``run(x) -> y`` or why it cannot run here."""

    name: str
    run: Callable[[torch.Tensor], torch.Tensor] | None
    note: str = ""


def torch_peers(model: nn.Module, x: torch.Tensor, compile_: bool = True) -> list[Peer]:
    """PyTorch eager NCHW, eager channels_last and torch.compile (with freezing) of the reference."""
    peers = [Peer("torch eager NCHW", lambda t: model(t))]
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    peers.append(Peer("torch eager channels_last",
                      lambda t: cl_model(t.contiguous(memory_format=torch.channels_last))))
    if compile_:
        try:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            # Static shapes: each size gets its own graph, as a deployment compiled for it would.
            compiled = torch.compile(cl_model, dynamic=False)
            with torch.no_grad():
                compiled(x.contiguous(memory_format=torch.channels_last))
            peers.append(Peer("torch.compile (freezing, channels_last)",
                              lambda t: compiled(t.contiguous(memory_format=torch.channels_last))))
        except Exception as e:  # a compiler that cannot run here is reported, not fatal
            peers.append(Peer("torch.compile (freezing, channels_last)", None, f"failed: {e!s:.120}"))
    return peers


def onnxruntime_peer(model: nn.Module, x: torch.Tensor) -> Peer:
    name = "ONNX Runtime fp32"
    try:
        import onnxruntime as ort
    except ImportError:
        return Peer(name, None, "not installed (pip install onnxruntime)")
    try:
        buf = io.BytesIO()
        torch.onnx.export(as_conv_only(model), (x,), buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        return Peer(name, None, f"export failed: {e!s:.160}")
    return Peer(name, lambda t: torch.from_numpy(sess.run(["y"], {"x": t.numpy()})[0]))


def openvino_peers(model: nn.Module, x: torch.Tensor) -> list[Peer]:
    """OpenVINO at fp32 and at its default precision for this CPU (bf16 where supported)."""
    try:
        import openvino as ov
    except ImportError:
        return [Peer("OpenVINO", None, "not installed (pip install openvino)")]
    try:
        core = ov.Core()
        ov_model = ov.convert_model(as_conv_only(model), example_input=x)
        threads = str(torch.get_num_threads())
        out = []
        for label, config in [("OpenVINO fp32", {"INFERENCE_PRECISION_HINT": "f32"}),
                              ("OpenVINO default", {})]:
            config = {**config, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
            compiled = core.compile_model(ov_model, "CPU", config)
            prec = compiled.get_property("INFERENCE_PRECISION_HINT")
            prec = prec.get_type_name() if hasattr(prec, "get_type_name") else str(prec)
            req = compiled.create_infer_request()

            def run(t, req=req):
                req.infer({0: t.numpy()})
                return torch.from_numpy(req.get_output_tensor(0).data.copy())

            out.append(Peer(f"{label} ({prec})", run))
        return out
    except Exception as e:
        return [Peer("OpenVINO", None, f"failed: {e!s:.160}")]


def fp64_reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model).double()
    with torch.no_grad():
        return ref(x.double())
