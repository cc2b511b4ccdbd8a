"""Turn a pytest-benchmark JSON run into the ratio table of BENCHMARKS.md.

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/ratio_table.py bench.json --write BENCHMARKS.md

For each group (one op or model at one size) the table lists every provider's median time
and its ratio to the group's baseline (> 1: slower than the baseline), with GFLOP/s and
megapixels/s. The baseline is the benchmark that recorded ``baseline=True`` (the whole-image
run of a tiling group), else redkern's fastest entry.
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
    lines = ["| group | provider | median (ms) | time / baseline | GFLOP/s | MP/s | max rel error |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for group, items in sorted(groups.items()):
        marked = [b for b in items if b["extra_info"].get("baseline")]
        ours = marked or [b for b in items if str(b["extra_info"].get("provider", "")).startswith("redkern")]
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


def replace_section(path: str, heading: str, section: str) -> None:
    """Replace the markdown section that starts at ``heading`` (up to the next '## ')."""
    try:
        text = open(path).read()
    except FileNotFoundError:
        text = "# Benchmarks\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json_file")
    p.add_argument("--write", metavar="FILE", help="replace the pytest-benchmark section of FILE")
    p.add_argument("--pytest-command", default="pytest bench/ --benchmark-only --benchmark-json=bench.json",
                   help="the command that produced JSON_FILE, quoted in FILE")
    args = p.parse_args(argv)
    with open(args.json_file) as f:
        run = json.load(f)
    machine = run.get("machine_info", {})
    info = (f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', ''))}, "
            f"{run.get('datetime', '')[:10]}")
    table = "\n".join(rows_from(run))
    print(table)
    if args.write:
        section = (f"{HEADING}\n\nProduced by `{args.pytest_command}` then "
                   f"`python bench/ratio_table.py {args.json_file} --write {args.write}` ({info}). "
                   "Baseline: redkern fused; in the tiling groups, whole-image inference.\n\n"
                   f"{table}\n")
        replace_section(args.write, HEADING, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
