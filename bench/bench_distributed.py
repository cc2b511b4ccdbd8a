"""redkern.distributed against the single-process restore, on one machine's Dask LocalClusters.

    python bench/bench_distributed.py                         # 4096x4096 zarr, RED30 (64 features)
    python bench/bench_distributed.py --write BENCHMARKS.md   # and replace its section there
    python bench/bench_distributed.py --quick --json q.json   # a 256x256 smoke run (what the tests run)

Every runner uses one torch thread per task, so the numbers compare processes, not thread pools:

- ``single-process``: ``redkern restore`` (``tiling.restore_file``, its own tile grid);
- ``in-process, chunk grid``: ``redkern.distributed.restore(client=None)``: the distributed
  grid and tasks, one after another, no Dask (separates the grid's cost from Dask's);
- ``local:1``, ``local:2``: one and two worker processes, one thread each (cluster started
  before the clock). Scaling efficiency = MP/s of local:2 / (2 x MP/s of local:1); overhead =
  local:1 time / in-process time - 1 (scheduling, serialisation, the per-worker model build).

Then the per-chunk scheduler overhead: a tiny 2-layer, 1-feature RED on chunks of 32 pixels,
local:1 against in-process, divided by the number of tasks; and a sweep of tile and chunk size
on local:2 (``work`` is the halo recompute, pixels computed / kept; chunks hold whole cores).
Outputs are written to a temporary folder and checked equal to the in-process run's.
Keep the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import redkern
from redkern import benchmarking as B
from redkern import distributed as rd
from redkern import imageio
from redkern.tiling import plan_tiles, resolve_halo, restore_file, tile_overhead

SECTION = "## Distributed: RED30 on Dask LocalClusters"


def make_input(folder: Path, size: int) -> Path:
    import zarr

    path = folder / f"in{size}.zarr"
    array = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(1024, 1024), dtype="uint8")
    rng = np.random.default_rng(0)
    for r in range(0, size, 1024):
        array[r:r + 1024] = rng.integers(0, 256, (min(1024, size - r), size), dtype=np.uint8)
    return path


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def fresh(folder: Path, name: str) -> Path:
    path = folder / name
    if path.exists():
        shutil.rmtree(path)
    return path


def measure(args) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = B.kaiming_init_(redkern.FusedREDNet(args.depth, 1, args.features)).eval()
    halo = resolve_halo(model, None)
    folder = Path(tempfile.mkdtemp(prefix="redkern-bench-dist-"))
    rows, notes = [], []
    try:
        src = make_input(folder, args.size)
        mp = args.size ** 2 / 1e6
        chunk = args.chunk or rd.default_chunk(args.tile, halo, args.size, args.size)

        t, _ = timed(lambda: restore_file(model, src, fresh(folder, "single.zarr"), tile=args.tile, quiet=True))
        work = tile_overhead(plan_tiles(args.size, args.size, args.tile, halo), args.size, args.size)
        rows.append({"runner": "single-process redkern restore", "seconds": t, "mp_per_s": mp / t,
                     "tasks": 1, "work": work, "tile": args.tile, "chunk": None})
        t_here, here = timed(lambda: rd.restore(src, fresh(folder, "here.zarr"), model, tile=args.tile,
                                                chunk=chunk, threads=1, quiet=True))
        want = imageio.read_image(folder / "here.zarr")
        rows.append({"runner": "in-process, chunk grid", "seconds": t_here, "mp_per_s": mp / t_here,
                     "tasks": here.chunks_total, "work": here.work, "tile": args.tile, "chunk": chunk})
        tiny = redkern.REDNet(2, 1, 1).eval()  # nearly nothing to compute: what is left is per-task cost
        tiny_tile = 32 + 2 * tiny.receptive_field_radius
        tiny_src = make_input(folder, args.tiny_size)
        t_tiny_here, tiny_run = timed(lambda: rd.restore(tiny_src, fresh(folder, "tiny.zarr"), tiny, tile=tiny_tile,
                                                         chunk=32, threads=1, quiet=True))
        per_workers = {}
        for n in (1, 2):
            with rd.connect(f"local:{n}") as client:
                t, run = timed(lambda n=n: rd.restore(src, fresh(folder, f"local{n}.zarr"), model, client=client,
                                                  tile=args.tile, chunk=chunk, threads=1, quiet=True))
                assert np.array_equal(imageio.read_image(folder / f"local{n}.zarr"), want), f"local:{n} differs"
                per_workers[n] = t
                rows.append({"runner": f"local:{n}, 1 thread each", "seconds": t, "mp_per_s": mp / t,
                             "tasks": run.chunks_total, "work": run.work, "tile": args.tile, "chunk": chunk})
                if n == 1:
                    t_tiny, _ = timed(lambda: rd.restore(tiny_src, fresh(folder, "tiny1.zarr"), tiny, client=client,
                                                         tile=tiny_tile, chunk=32, threads=1, quiet=True))
                if n == 2:
                    for tile, m in args.sweep:
                        c = (tile - 2 * halo) * m
                        t, run = timed(lambda tile=tile, c=c: rd.restore(src, fresh(folder, "sweep.zarr"), model, client=client,
                                                          tile=tile, chunk=c, threads=1, quiet=True))
                        assert np.array_equal(imageio.read_image(folder / "sweep.zarr"), want) or tile != args.tile
                        rows.append({"runner": f"local:2 sweep: tile {tile}, chunk {m} cores", "seconds": t,
                                     "mp_per_s": mp / t, "tasks": run.chunks_total, "work": run.work,
                                     "tile": tile, "chunk": c})
        efficiency = (mp / per_workers[2]) / (2 * mp / per_workers[1])
        overhead = per_workers[1] / t_here - 1

        per_task = (t_tiny - t_tiny_here) / tiny_run.chunks_total
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"size": args.size, "depth": args.depth, "features": args.features, "halo": halo, "rows": rows,
            "scaling_efficiency": efficiency, "distributed_overhead": overhead,
            "per_task_overhead_ms": per_task * 1e3, "per_task_tasks": tiny_run.chunks_total, "notes": notes,
            "machine": {"cpu": B.cpu_model_name(), "cores": rd._cores(), "python": platform.python_version(),
                        "torch": torch.__version__, "date": datetime.date.today().isoformat()}}


def table(result: dict) -> str:
    lines = [SECTION, "",
             f"`python bench/bench_distributed.py` on {result['machine']['cpu']} ({result['machine']['cores']} "
             f"cores), {result['machine']['date']}, torch {result['machine']['torch']}: a "
             f"{result['size']}x{result['size']} uint8 zarr, RED{result['depth']} ({result['features']} features, "
             f"fused, halo {result['halo']}), one torch thread per task.", "",
             "| runner | tile | chunk | tasks | work | s | MP/s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['runner']} | {r['tile']} | {r['chunk'] or '-'} | {r['tasks']} | {r['work']:.2f} | "
                     f"{r['seconds']:.2f} | {r['mp_per_s']:.3g} |")
    lines += ["", f"Scaling efficiency local:1 -> local:2: {result['scaling_efficiency']:.0%}; distributed overhead "
              f"(local:1 over the same tasks in-process): {result['distributed_overhead']:+.1%}; per-task "
              f"scheduler overhead: {result['per_task_overhead_ms']:.1f} ms (RED2, 1 feature, "
              f"{result['per_task_tasks']} chunks of 32 px, local:1 against in-process).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--chunk", type=int, help="output chunk (default: redkern's, near 1024 px)")
    parser.add_argument("--tiny-size", type=int, default=1024, help="image for the per-task overhead")
    parser.add_argument("--quick", action="store_true", help="256x256, RED10 with 8 features: a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    parser.add_argument("--write", metavar="FILE", help=f"replace the section '{SECTION}' in FILE")
    args = parser.parse_args(argv)
    args.sweep = [(256, 1), (256, 4), (512, 1), (512, 2), (1024, 1)]
    if args.quick:
        args.size, args.depth, args.features, args.tile, args.tiny_size = 256, 10, 8, 64, 128
        args.sweep = [(64, 2), (128, 1)]
    result = measure(args)
    text = table(result)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from ratio_table import replace_section

        replace_section(args.write, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
