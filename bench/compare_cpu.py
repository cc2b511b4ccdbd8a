"""RED30 on the CPU: redkern against every installed peer, side by side in one process.

    python bench/compare_cpu.py                       # 256x256 and 1024x1024, print the table
    python bench/compare_cpu.py --sizes 256 --write BENCHMARKS.md

Times are medians of repeats, measured in this one run, the runners taking turns (one run
of each per round) so that load from elsewhere hits all of them alike; ratios are peer
time / redkern time (> 1 means redkern is faster). Errors are max |y - y64| / max |y64| against an fp64 run of
the same network (Kaiming-init random weights, inputs in [0, 1]). Peers that are not
installed are listed with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time

import torch

import redkern
from redkern import benchmarking as B
from redkern.backends import cpu as cpu_backend
from ratio_table import replace_section  # same folder


def measure(size: int, repeats: int, features: int, compile_: bool, slow_limit: float,
            too_slow: dict[str, str]) -> tuple[list[dict], list[str]]:
    """Rows for one size. ``too_slow``: peers over ``slow_limit`` at a smaller size (name ->
    where), skipped here with a note; this call adds the ones it finds."""
    torch.manual_seed(0)
    model = B.kaiming_init_(redkern.RED30(features=features)).eval()
    x = torch.rand(1, 1, size, size)
    flops = B.model_flops(model, 1, size, size)
    want = B.fp64_reference(model, x)

    fused = redkern.RED30(features=features, fused=True).eval()
    fused.load_state_dict(model.state_dict())
    fused_bf16 = redkern.RED30(features=features, fused=True).eval()
    fused_bf16.load_state_dict(model.state_dict())
    fused_bf16 = fused_bf16.to(torch.bfloat16)

    runners = [B.Peer("redkern fp32", fused),
               B.Peer(f"redkern fp32, {cpu_backend.WINOGRAD_TILE_ENV}=f6 (F(6x6,3x3))",
                      lambda t: _with_env(cpu_backend.WINOGRAD_TILE_ENV, "f6", fused, t))]
    bf16_ok = torch.bfloat16 in cpu_backend.DTYPES
    engine = cpu_backend.algorithm(features, features, 3, 1, False, torch.bfloat16) if bf16_ok else ""
    runners.append(B.Peer(f"redkern bf16 ({engine})", (lambda t: fused_bf16(t.bfloat16())) if bf16_ok else None,
                          "" if bf16_ok else "the CPU kernels were built without bf16"))
    for other in _other_bf16_engines() if bf16_ok else []:  # the engines the default passed over
        runners.append(B.Peer(f"redkern bf16, {cpu_backend.BF16_GEMM_ENV}={other}",
                              lambda t, other=other: _with_env(cpu_backend.BF16_GEMM_ENV, other, fused_bf16,
                                                               t.bfloat16())))
    runners += B.torch_peers(model, x, compile_=compile_)
    cl_bf16 = redkern.RED30(features=features).eval()
    cl_bf16.load_state_dict(model.state_dict())
    cl_bf16 = cl_bf16.to(torch.bfloat16, memory_format=torch.channels_last)
    runners.append(B.Peer("torch eager bf16 channels_last",
                          lambda t: cl_bf16(t.bfloat16().contiguous(memory_format=torch.channels_last))))
    runners.append(B.onnxruntime_peer(model, x))
    runners += B.openvino_peers(model, x)

    rows, notes, timed = [], [], []
    with torch.inference_mode():
        for peer in runners:  # the first run of each: its error, and a warm-up
            if peer.run is None:
                notes.append(f"{peer.name}: skipped, {peer.note}")
                continue
            if peer.name in too_slow:
                notes.append(f"{peer.name}: not run at {size}x{size}, {too_slow[peer.name]}")
                continue
            t0 = time.perf_counter()
            row = {"name": peer.name, "size": size, "error": B.max_rel_error(peer.run(x), want)}
            first = time.perf_counter() - t0
            rows.append(row)
            if first > slow_limit:
                # A peer this slow is no contest; one timed run says so without costing minutes.
                row.update(name=f"{peer.name} (one run: over {slow_limit:g} s)", times=[first])
                too_slow[peer.name] = f"as it took {first:.0f} s at {size}x{size}"
            else:
                row["times"] = []
                timed.append((peer, row))
        # Round-robin: a burst of load from elsewhere on a shared machine slows one round of
        # every runner instead of every repeat of one, and the medians shrug it off.
        for _ in range(repeats):
            for peer, row in timed:
                t0 = time.perf_counter()
                peer.run(x)
                row["times"].append(time.perf_counter() - t0)
    for row in rows:
        row["seconds"] = statistics.median(row.pop("times"))
        row["gflops"] = flops / row["seconds"] / 1e9
    base = next(r["seconds"] for r in rows if r["name"] == "redkern fp32")
    for r in rows:
        r["ratio"] = r["seconds"] / base
    notes += _precision_ratios(rows, size)
    return rows, notes


def _precision_ratios(rows: list[dict], size: int) -> list[str]:
    """OpenVINO over redkern at the same precision (its bf16 runs where the CPU has bf16)."""
    seconds = lambda prefix: next((r["seconds"] for r in rows if r["name"].startswith(prefix)), None)  # noqa: E731
    ours = {"f32": seconds("redkern fp32"), "bf16": seconds("redkern bf16 (")}
    out = []
    for prec, mine in ours.items():
        peer = next((r["seconds"] for r in rows if r["name"].startswith("OpenVINO") and f"({prec})" in r["name"]), None)
        if peer is not None and mine is not None:
            out.append(f"{size}x{size}: OpenVINO {prec} / redkern {prec} = {peer / mine:.2f}x")
    return out


def _other_bf16_engines() -> list[str]:
    """The bf16 Winograd GEMM engines this CPU runs besides the default one."""
    default = cpu_backend.bf16_winograd_gemm()
    return [name for name, algo in cpu_backend.bf16_gemm_engines().items() if algo != default]


@contextlib.contextmanager
def _env(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _with_env(name: str, value: str, model, x):
    with _env(name, value):
        return model(x)


def table(rows: list[dict]) -> str:
    lines = ["| size | runner | median time (s) | GFLOP/s | time / redkern fp32 | max rel error vs fp64 |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['size']}x{r['size']} | {r['name']} | {r['seconds']:.3f} | {r['gflops']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['error']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to build)")
    p.add_argument("--slow-limit", type=float, default=60.0, metavar="SECONDS",
                   help="a peer whose first run takes longer is timed once, not repeated (default 60)")
    p.add_argument("--write", metavar="FILE", help="also write the table into FILE (markdown)")
    args = p.parse_args(argv)

    from redkern import _C

    peak = _C.measure_fma_peak_gflops(torch.get_num_threads()) if hasattr(_C, "measure_fma_peak_gflops") else None
    header = [f"RED30-{args.features}, 1 channel, batch 1, {torch.get_num_threads()} threads, "
              f"{B.cpu_model_name()}, CPU kernel ISA {_C.selected_isa()}, torch {torch.__version__}, "
              f"{datetime.date.today()}",
              f"bf16 on this CPU: AVX512_BF16 {'yes' if _C.bf16_dot_supported() else 'no'}"
              + (f" (vdpbf16ps at {_C.bf16_dot_speedup():.2f}x the FMA's multiply-adds)" if _C.bf16_dot_supported() else "")
              + f", AMX-BF16 {'yes' if _C.amx_supported() else 'no'}",
              f"Measured fp32 FMA peak: {peak:.0f} GFLOP/s" if peak else "fp32 FMA peak: not measured",
              f"FLOPs counted as direct convolution: {B.model_flops(redkern.RED30(features=args.features), 1, 1, 1) / 1e6:.2f} MFLOP per pixel"]
    all_rows, all_notes, too_slow = [], [], {}
    for size in sorted(args.sizes):
        rows, notes = measure(size, args.repeats, args.features, not args.no_compile, args.slow_limit, too_slow)
        all_rows += rows
        all_notes += [n for n in notes if n not in all_notes]
    out = "\n".join(header) + "\n\n" + table(all_rows) + "\n\n" + "\n".join(f"- {n}" for n in all_notes)
    print(out)
    if args.write:
        cmd = "python bench/compare_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])
        section = f"## CPU: RED30 against the peers\n\nProduced by `{cmd}` on {platform.node() or 'this machine'}.\n\n{out}\n"
        replace_section(args.write, "## CPU: RED30 against the peers", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
