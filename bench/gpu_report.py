"""The GPU report in one command: run the GPU tests, time RED30 on every GPU provider, write the table.

    python bench/gpu_report.py --write BENCHMARKS.md               # tests, then the table
    python bench/gpu_report.py --sizes 256 1024 --dtype bf16       # print only, bf16
    python bench/gpu_report.py --no-tests --budget-s 300

On a machine without a CUDA device it says so and exits with 2, touching nothing. Otherwise:

1. The GPU tests (``tests/test_gpu_triton.py``, ``tests/test_gpu_cuda.py``, and natively on the
   GPU the Triton tests the interpreter runs elsewhere: the single-layer kernel, the two-layer
   kernel and the CUDA graphs), in a subprocess. A failure stops the report (exit 1): a table of
   wrong kernels would mislead. ``--no-tests`` skips them.
2. RED30-64 (1 channel, He-initialised weights, batch 1) at each size (default 256, 1024 and
   4096) on each provider, with and without CUDA graphs: redkern's Triton kernels with layer
   pairs and one layer per launch, redkern's CUDA C++ kernels, cuDNN through the eager
   reference in NCHW and channels_last, and ``torch.compile(mode="max-autotune")`` of the
   reference (``max-autotune-no-cudagraphs`` without graphs). Times are medians of CUDA-event
   timed calls after warm-up (compiling, autotuning and graph capture are not timed). Each
   provider's result at the smallest size is checked against the float64 reference.
3. The table, in ms (and TFLOP/s of direct-convolution FLOPs at 1024), printed, and with
   ``--write FILE`` put in FILE's section "## GPU: RED30 on each provider" (the rest of FILE is
   kept; ``bench/ratio_table.replace_section``).

The run keeps to ``--budget-s`` seconds of timing (default 330; the tests get at most
``--tests-timeout-s``, 200, so that the whole stays well under 10 minutes): a cell that would start after it is reported as skipped, cheap cells
first (sizes ascending, torch.compile last).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GPU: RED30 on each provider"
# The hypothesis searches compile a kernel per example; the interpreter runs them on every CI
# machine, so the report leaves them out ("-k").
GPU_TESTS = ["tests/test_gpu_triton.py", "tests/test_gpu_cuda.py", "tests/test_triton_pair.py",
             "tests/test_cuda_graphs.py", "-k", "not any_shape"]
DEFAULT_SIZES = (256, 1024, 4096)
DTYPES = ("fp16", "bf16", "fp32")
# Sanity bounds on max |y - ref| / max |ref| over 30 layers, not accuracy targets.
MAX_REL_ERROR = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 1e-1}
NO_GPU_EXIT, TESTS_FAILED_EXIT = 2, 1


@dataclasses.dataclass(frozen=True)
class Provider:
    """One row: ``make(size)`` returns the call to time for a 1x1xSIZExSIZE input (its setup,
    compiling and capture done), or raises ``Unavailable`` with the reason."""

    name: str
    make: Callable[[int], Callable[[], object]]
    expensive: bool = False  # compiled per size: timed after the others
    release: Callable[[], None] = lambda: None  # frees what a size held (pooled maps, a graph)


class Unavailable(RuntimeError):
    """A provider that cannot run here; the message says why (reported in the table)."""


@dataclasses.dataclass
class Cell:
    ms: float | None = None
    note: str = ""      # why there is no time: unavailable, out of memory, past the budget
    error: float | None = None


def measure(providers: list[Provider], sizes, *, timer: Callable[[Callable[[], object], int], float],
            budget_s: float, clock: Callable[[], float] = time.monotonic,
            check: Callable[[str, object], float | None] | None = None,
            log: Callable[[str], None] = print) -> dict[tuple[str, int], Cell]:
    """Time every provider at every size: ``{(provider name, size): Cell}``.

    ``timer(fn, size)`` returns fn's median time in ms; ``check(name, output)`` the error of a
    provider's first output at the smallest size. Cheap cells go first (sizes ascending, then
    the expensive providers'); a cell that would start after ``budget_s`` seconds is skipped
    with that reason, as is every cell of a provider at a size where it ran out of memory."""
    start = clock()
    cells: dict[tuple[str, int], Cell] = {}
    order = [(p, s) for expensive in (False, True) for s in sorted(sizes) for p in providers
             if p.expensive == expensive]
    smallest = min(sizes)
    for p, size in order:
        cell = cells[(p.name, size)] = Cell()
        if clock() - start > budget_s:
            cell.note = f"skipped: past the {budget_s:g} s budget"
            continue
        try:
            fn = p.make(size)
            out = fn()
            if check is not None and size == smallest:
                cell.error = check(p.name, out)
            cell.ms = timer(fn, size)
        except Unavailable as e:
            cell.note = f"n/a: {e}"
        except Exception as e:  # noqa: BLE001 - one provider's failure is reported, the table goes on
            oom = "out of memory" in str(e).lower()
            cell.note = "out of memory" if oom else f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        finally:
            fn = out = None  # noqa: F841 - let the next cell have the memory
            p.release()
        log(f"{p.name} @ {size}: " + (f"{cell.ms:.3f} ms" if cell.ms is not None else cell.note))
    return cells


def table(providers: list[Provider], sizes, cells, *, flops_per_pixel: float | None = None,
          flops_size: int = 1024) -> str:
    """The markdown table: one row per provider, ms per size, TFLOP/s at ``flops_size`` and the
    error at the smallest size; the reasons for empty cells are listed below it."""
    sizes = sorted(sizes)
    head = ["provider", *[f"{s}x{s} (ms)" for s in sizes]]
    if flops_per_pixel and flops_size in sizes:
        head.append(f"TFLOP/s at {flops_size}")
    head.append(f"max rel error ({sizes[0]})")
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    notes = []
    for p in providers:
        row = [p.name]
        for s in sizes:
            c = cells.get((p.name, s), Cell(note="not run"))
            if c.ms is None:
                notes.append(f"{p.name} at {s}: {c.note}")
            row.append(f"{c.ms:.3f}" if c.ms is not None else "-")
        if flops_per_pixel and flops_size in sizes:
            c = cells.get((p.name, flops_size))
            row.append(f"{flops_per_pixel * flops_size ** 2 / (c.ms * 1e-3) / 1e12:.0f}"
                       if c is not None and c.ms else "")
        err = cells.get((p.name, sizes[0]), Cell()).error
        row.append(f"{err:.1e}" if err is not None else "")
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


def section(body: str, *, gpu: str, versions: str, dtype: str, command: str, tests: str, date: str) -> str:
    return (f"{SECTION}\n\nProduced by `{command}` on {gpu} ({versions}, {date}): RED30-64, 1 channel, batch 1, "
            f"{dtype}; medians of CUDA-event timed calls after warm-up. GPU tests: {tests}.\n\n{body}\n")


def _load_ratio_table():
    spec = importlib.util.spec_from_file_location("ratio_table", ROOT / "bench" / "ratio_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_gpu_tests(timeout_s: float) -> tuple[bool, str]:
    """The GPU tests in a subprocess (natively: no TRITON_INTERPRET); ``(passed, summary line)``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TESTS]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout_s:g} s"
    lines = [line for line in done.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    if done.returncode != 0:
        sys.stdout.write(done.stdout[-6000:] + done.stderr[-2000:])
    return done.returncode == 0, summary


# --- the GPU side: never reached without a CUDA device ----------------------------------------------

def repeats_at(size: int) -> int:
    """Timed calls per cell: many where a call is short, few at 4096 (about 0.1-0.5 s a call)."""
    return 50 if size <= 256 else 20 if size <= 1024 else 5


def cuda_timer():
    import torch

    def timer(fn, size):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(repeats_at(size)):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    return timer


def gpu_providers(dtype_name: str):
    """The providers of the table, and ``check`` (the error against float64 at one size)."""
    import torch

    import redkern
    from redkern import benchmarking as B
    from redkern import graphs

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    torch.manual_seed(0)
    ref32 = B.kaiming_init_(redkern.RED30()).cuda().eval()
    inputs: dict[int, torch.Tensor] = {}

    def x_of(size, channels_last=False):
        if size not in inputs:
            inputs.clear()  # one size's input at a time
            inputs[size] = torch.rand(1, 1, size, size, device="cuda").to(dtype)
        x = inputs[size]
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def inference(fn):
        def call():
            with torch.inference_mode():
                return fn()
        return call

    def fused(backend, pairs, cuda_graphs):
        st = redkern.backends()[backend]
        if not st["available"] or "cuda" not in st["devices"]:
            raise Unavailable(st["detail"])
        model = redkern.RED30(fused=True, backend=backend)
        model.load_state_dict(ref32.state_dict())
        model = model.to("cuda", dtype).eval()
        model.pair_layers = pairs
        model.cuda_graphs = cuda_graphs

        def make(size):
            x = x_of(size)
            return inference(lambda: model(x))
        return make, model.release_buffers

    def eager(channels_last, cuda_graphs):
        model = redkern.RED30().cuda().eval()
        model.load_state_dict(ref32.state_dict())
        model = model.to(dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        replay = graphs.GraphReplay() if cuda_graphs else None
        tensors = [*model.parameters(), *model.buffers()]

        def make(size):
            x = x_of(size, channels_last)
            if replay is None:
                return inference(lambda: model(x))
            return inference(lambda: replay(model, (x,), tensors))
        return make, (replay.clear if replay is not None else lambda: None)

    def compiled(mode):
        model = redkern.RED30().cuda().eval()
        model.load_state_dict(ref32.state_dict())
        model = model.to(dtype).to(memory_format=torch.channels_last)
        fn = torch.compile(model, mode=mode, dynamic=False)

        def make(size):
            x = x_of(size, True)
            return inference(lambda: fn(x))
        return make, lambda: None

    def provider(name, setup, expensive=False):
        try:
            make, release = setup()
        except Unavailable as e:  # reported in every cell of the row
            def make(size, why=str(e)):
                raise Unavailable(why)
            release = lambda: None  # noqa: E731

        def free():
            release()
            torch.cuda.empty_cache()
        return Provider(name, make, expensive, free)

    providers = [
        provider("redkern Triton, layer pairs", lambda: fused("triton", True, False)),
        provider("redkern Triton, layer pairs, CUDA graph", lambda: fused("triton", True, True)),
        provider("redkern Triton, one layer per launch", lambda: fused("triton", False, False)),
        provider("redkern Triton, one layer per launch, CUDA graph", lambda: fused("triton", False, True)),
        provider("redkern CUDA C++", lambda: fused("cuda", False, False)),
        provider("redkern CUDA C++, CUDA graph", lambda: fused("cuda", False, True)),
        provider("cuDNN eager NCHW", lambda: eager(False, False)),
        provider("cuDNN eager channels_last", lambda: eager(True, False)),
        provider("cuDNN eager channels_last, CUDA graph", lambda: eager(True, True)),
        provider("torch.compile max-autotune-no-cudagraphs", lambda: compiled("max-autotune-no-cudagraphs"), True),
        provider("torch.compile max-autotune (CUDA graphs)", lambda: compiled("max-autotune"), True),
    ]
    references: dict[int, torch.Tensor] = {}

    def check(name, out):
        size = out.shape[-1]
        if size not in references:
            references[size] = B.fp64_reference(ref32, inputs[size].float()).cpu()
        err = B.max_rel_error(out.float().cpu(), references[size])
        if err > MAX_REL_ERROR[dtype_name]:
            raise RuntimeError(f"wrong result: max rel error {err:.2e} > {MAX_REL_ERROR[dtype_name]:g}")
        return err

    flops_per_pixel = B.model_flops(ref32, 1, 64, 64) / 64 ** 2
    return providers, check, flops_per_pixel


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    p.add_argument("--dtype", choices=DTYPES, default="fp16")
    p.add_argument("--write", metavar="FILE", help="put the table in FILE's GPU section")
    p.add_argument("--no-tests", action="store_true", help="skip the GPU tests")
    p.add_argument("--tests-timeout-s", type=float, default=200)
    p.add_argument("--budget-s", type=float, default=330, help="start no timing after this many seconds")
    args = p.parse_args(argv)
    if any(s < 16 for s in args.sizes):
        p.error(f"sizes must be >= 16, got {args.sizes}")

    import torch

    if not torch.cuda.is_available():
        print("gpu_report: no CUDA device here (torch.cuda.is_available() is False): no GPU tests run, "
              "nothing timed" + (f", {args.write} left as it was" if args.write else ""), file=sys.stderr)
        return NO_GPU_EXIT
    tests = "skipped (--no-tests)"
    if not args.no_tests:
        passed, tests = run_gpu_tests(args.tests_timeout_s)
        print(f"gpu_report: GPU tests: {tests}")
        if not passed:
            print("gpu_report: the GPU tests failed: no table written", file=sys.stderr)
            return TESTS_FAILED_EXIT
    providers, check, flops_per_pixel = gpu_providers(args.dtype)
    cells = measure(providers, args.sizes, timer=cuda_timer(), budget_s=args.budget_s, check=check)
    body = table(providers, args.sizes, cells, flops_per_pixel=flops_per_pixel)
    try:
        import triton
        triton_version = f"triton {triton.__version__}"
    except ImportError:
        triton_version = "no triton"
    props = torch.cuda.get_device_properties(0)
    text = section(body, gpu=f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB)",
                   versions=f"torch {torch.__version__}, {triton_version}", dtype=args.dtype,
                   command="python bench/gpu_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   tests=tests, date=time.strftime("%Y-%m-%d"))
    print(text)
    if args.write:
        _load_ratio_table().replace_section(args.write, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
