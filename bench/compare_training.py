"""Training speed, side by side in one process: a full RED-Net step (forward, MSE loss,
backward, fused Adam) on the fused model against the reference model in NCHW, in channels_last and
under ``torch.compile``, with medians of repeated steps taken in turn.

    python bench/compare_training.py                      # RED30-64, batch 64 of 50x50, fp32
    python bench/compare_training.py --batch 16 --steps 5 --runners fused reference_cl
    python bench/compare_training.py --amp bf16           # bfloat16 autocast (fp32 weights)
    python bench/compare_training.py --device cuda --amp bf16   # on a GPU: Triton's backward vs cuDNN

Before timing, the first step's gradients of the fused model are compared with the
reference's (same weights, same batch) and the largest relative error is printed, so a fast
but wrong backward cannot pass unnoticed. Prints a Markdown table (``--markdown`` for only
the table) with each runner's median step and its ratio to the fused model's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __name__ == "__main__":  # run as a script from a checkout; never put the source tree first for importers
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from redkern import benchmarking as B  # noqa: E402
from redkern.training import build_model  # noqa: E402

RUNNERS = ("fused", "reference", "reference_cl", "compiled_cl")
DEFAULT_RUNNERS = {"cpu": RUNNERS, "cuda": ("fused", "reference_cl", "compiled_cl")}
LABELS = {"fused": "redkern fused (our forward and backward kernels)",
          "reference": "reference, NCHW",
          "reference_cl": "reference, channels_last",
          "compiled_cl": "torch.compile(reference), channels_last"}


def make_model(name: str, depth: int, features: int, seed: int, device="cpu"):
    """``(model, channels_last)`` for a runner, all with the same weights (from ``seed``), on
    ``device``."""
    torch.manual_seed(seed)
    ref = build_model(depth, 1, features, "reference")
    for p in ref.parameters():  # build_model zeroes the last layer; give it weights to train
        if not p.any():
            p.data.normal_(0, 1e-2)
    if name == "fused":
        model = build_model(depth, 1, features, "fused")
        model.load_state_dict(ref.state_dict())
        return model.to(device), False
    ref = ref.to(device)
    if name == "reference":
        return ref, False
    ref = ref.to(memory_format=torch.channels_last)
    if name == "reference_cl":
        return ref, True
    return torch.compile(ref), True


def batch(n: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(n, 1, size, size, generator=g)
    return clean + 0.1 * torch.randn(clean.shape, generator=g), clean


def step(model, opt, x, y, amp=None):
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        pred = model(x)
    loss = F.mse_loss(pred.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def grad_error(depth: int, features: int, x, y) -> float:
    """Largest relative error (to each tensor's largest reference value) of the fused model's
    first-step gradients against the float64 reference's."""
    fused, _ = make_model("fused", depth, features, 0)
    ref, _ = make_model("reference", depth, features, 0)
    ref = copy.deepcopy(ref).double()
    F.mse_loss(fused(x), y).backward()
    F.mse_loss(ref(x.double()), y.double()).backward()
    worst = 0.0
    want = dict(ref.named_parameters())
    for name, p in fused.named_parameters():
        r = want[name].grad
        worst = max(worst, float((p.grad.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)))
    return worst


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runners(names, depth: int, features: int, x, y, steps: int, warmup: int, amp=None) -> dict:
    """``{name: [step seconds]}``, the runners' steps taken in turn (round robin), so that a
    drift in the machine's speed touches every runner alike."""
    runners = {}
    for name in names:
        model, channels_last = make_model(name, depth, features, 0, x.device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as redkern train
        xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        for _ in range(warmup):
            step(model, opt, xin, y, amp)
        runners[name] = (model, opt, xin)
    times = {name: [] for name in names}
    for _ in range(steps):
        for name, (model, opt, xin) in runners.items():
            _sync(x.device)
            t0 = time.perf_counter()
            loss = step(model, opt, xin, y, amp)
            _sync(x.device)
            times[name].append(time.perf_counter() - t0)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: the loss became {float(loss)}")
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=30)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--patch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=7, help="timed steps per runner (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, buffers)")
    ap.add_argument("--runners", nargs="+", choices=RUNNERS, help="default: all on a CPU; fused, reference_cl "
                    "and compiled_cl on CUDA")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the fused model's default backend there)")
    ap.add_argument("--amp", choices=("fp32", "bf16"), default="fp32",
                    help="bf16: every runner under bfloat16 autocast (weights, loss and Adam in fp32)")
    ap.add_argument("--markdown", action="store_true", help="print only the table")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    x, y = (t.to(device) for t in batch(args.batch, args.patch, 1))
    err = grad_error(args.depth, args.features, *batch(min(args.batch, 4), args.patch, 2))
    times = time_runners(args.runners or DEFAULT_RUNNERS[device.type], args.depth, args.features, x, y,
                         args.steps, args.warmup, amp)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians.get("fused")
    if not args.markdown:
        where = (torch.cuda.get_device_name(device) if device.type == "cuda"
                 else f"{torch.get_num_threads()} threads on {B.cpu_model_name()}")
        print(f"RED{args.depth}-{args.features}, batch {args.batch} of {args.patch}x{args.patch}, {args.amp}, Adam; "
              f"{where}; median of {args.steps} steps")
        print(f"fused gradients (CPU, fp32) vs float64 reference: max relative error {err:.1e}")
    print("| runner | step (median) | fastest - slowest | vs fused |")
    print("| --- | --- | --- | --- |")
    for name, t in medians.items():
        ratio = f"{t / base:.2f}x" if base else "-"
        print(f"| {LABELS[name]} | {t * 1e3:.0f} ms | {min(times[name]) * 1e3:.0f} - {max(times[name]) * 1e3:.0f} ms "
              f"| {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
