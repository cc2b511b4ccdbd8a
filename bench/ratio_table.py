"""Turn a pytest-benchmark JSON run into the ratio table of BENCHMARKS.md.

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/ratio_table.py bench.json --write BENCHMARKS.md

For each group (one op or model at one size) the table lists every provider's median time
and its ratio to redkern's (> 1: redkern is faster), with GFLOP/s and megapixels/s.
"""

from __future__ import annotations

import argparse
import json
import sys

HEADING = "## pytest-benchmark: redkern against each provider"


def rows_from(run: dict) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for b in run["benchmarks"]:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    lines = ["| group | provider | median (ms) | ratio to redkern | GFLOP/s | MP/s | max rel error |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for group, items in sorted(groups.items()):
        ours = [b for b in items if str(b["extra_info"].get("provider", "")).startswith("redkern")]
        base = min(b["stats"]["median"] for b in ours) if ours else None
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            info = b["extra_info"]
            med = b["stats"]["median"]
            ratio = f"{med / base:.2f}x" if base else "n/a"
            gflops = f"{info['gflops_per_s']:.0f}" if "gflops_per_s" in info else ""
            mps = f"{info['megapixels_per_s']:.2f}" if "megapixels_per_s" in info else ""
            err = f"{info['max_rel_error']:.1e}" if "max_rel_error" in info else ""
            lines.append(f"| {group} | {info.get('provider', b['name'])} | {med * 1e3:.1f} | {ratio} | "
                         f"{gflops} | {mps} | {err} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_file")
    p.add_argument("--write", metavar="FILE", help="replace the pytest-benchmark section of FILE")
    args = p.parse_args(argv)
    with open(args.json_file) as f:
        run = json.load(f)
    machine = run.get("machine_info", {})
    info = (f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', ''))}, "
            f"{run.get('datetime', '')[:10]}")
    table = "\n".join(rows_from(run))
    print(table)
    if args.write:
        from compare_cpu import _replace_section  # same folder

        section = (f"{HEADING}\n\nProduced by `pytest bench/ --benchmark-only --benchmark-json=bench.json` "
                   f"then `python bench/ratio_table.py bench.json --write {args.write}` ({info}).\n\n{table}\n")
        _replace_section(args.write, HEADING, section)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    sys.exit(main())
