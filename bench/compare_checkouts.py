"""RED30 inference time of this checkout against another one (a regression check across a change).

    python bench/compare_checkouts.py --base ../redkern-before --sizes 256 1024 --repeats 5

Each checkout must have its extension modules built in place (``pip install -e .`` or
``python setup.py build_ext --inplace``). The two run in turns, in fresh processes with
``PYTHONPATH`` set to their root, each timing ``--repeats`` calls of the fused RED30 on the same
seeded weights and input after one warm-up call; the rounds alternate so that noise hits both
alike. Prints the median of every checkout's per-round medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TIMER = r"""
import json, sys, time, torch, redkern
size, repeats, features = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dtype = getattr(torch, sys.argv[4])
torch.manual_seed(0)
model = redkern.RED30(features=features, fused=True).eval()
for m in model.modules():
    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
        torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
model = model.to(dtype)
x = torch.rand(1, 1, size, size, dtype=dtype)
times = []
with torch.inference_mode():
    y = model(x)
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t)
print(json.dumps({"file": redkern.__file__, "median": sorted(times)[len(times) // 2],
                  "checksum": float(y.double().abs().sum())}))
"""


def time_checkout(root: Path, size: int, repeats: int, features: int, dtype: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", TIMER, str(size), str(repeats), str(features), dtype],
                          capture_output=True, text=True, env=env, cwd="/", timeout=3600)
    if done.returncode:
        raise SystemExit(f"{root}: the timing run failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["file"].startswith(str(root)):
        raise SystemExit(f"{root}: imported redkern from {result['file']}, not from the checkout")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="the other checkout (built in place)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per checkout")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args(argv)
    checkouts = {"base": args.base.resolve(), "this": ROOT}
    from redkern.benchmarking import cpu_model_name

    print(f"RED30-{args.features}, 1 channel, batch 1, {args.dtype}, {cpu_model_name()}, "
          f"{args.rounds} rounds x {args.repeats} calls per checkout, medians")
    for size in args.sizes:
        medians = {k: [] for k in checkouts}
        sums = {}
        for _ in range(args.rounds):
            for name, root in checkouts.items():
                r = time_checkout(root, size, args.repeats, args.features, args.dtype)
                medians[name].append(r["median"])
                sums[name] = r["checksum"]
        base, this = (statistics.median(medians[k]) for k in ("base", "this"))
        agree = abs(sums["base"] - sums["this"]) <= 1e-4 * abs(sums["base"])
        print(f"  {size}x{size}: base {base:.3f} s, this {this:.3f} s, base/this {base / this:.2f}x"
              f"{'' if agree else '  (outputs differ!)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
