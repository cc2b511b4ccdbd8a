"""The scripts that turn benchmark runs into BENCHMARKS.md: ratios, baselines, sections."""

import importlib.util
import json
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(group, median, **info):
    return {"group": group, "name": f"test[{info.get('provider', group)}]", "stats": {"median": median},
            "extra_info": info}


RUN = {"machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "datetime": "2026-11-22T00:00:00",
       "benchmarks": [
           bench("RED30 1x1x256x256", 0.9, provider="torch eager NCHW", gflops_per_s=100.0, max_rel_error=2e-6),
           bench("RED30 1x1x256x256", 0.3, provider="redkern fused", gflops_per_s=300.0, max_rel_error=1e-6),
           bench("tiling 2048", 2.2, provider="redkern tiled 2x2 grid", megapixels_per_s=1.9, baseline=False),
           bench("tiling 2048", 2.0, provider="redkern whole image", megapixels_per_s=2.1, baseline=True),
       ]}


def test_ratios_are_to_redkern_or_to_the_marked_baseline():
    lines = load("ratio_table").rows_from(RUN)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines[2:]}
    assert "| 3.00x |" in rows[("RED30 1x1x256x256", "torch eager NCHW")]
    assert "| 1.00x |" in rows[("RED30 1x1x256x256", "redkern fused")]
    assert "| 1.10x |" in rows[("tiling 2048", "redkern tiled 2x2 grid")]
    assert "| 1.00x |" in rows[("tiling 2048", "redkern whole image")]
    assert len(rows) == 4


def test_write_replaces_only_its_own_section(tmp_path):
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n\n## CPU: RED30 against the peers\n\nkept\n\n"
                      "## pytest-benchmark: redkern against each provider\n\nold table\n\n## After\n\nalso kept\n")
    run_file = tmp_path / "bench.json"
    run_file.write_text(json.dumps(RUN))
    assert load("ratio_table").main([str(run_file), "--write", str(target), "--pytest-command", "pytest bench/ -x"]) == 0
    text = target.read_text()
    assert "old table" not in text and "kept" in text and "also kept" in text
    assert "`pytest bench/ -x`" in text and "Test CPU, 2026-11-22" in text
    assert text.count("## pytest-benchmark") == 1 and "| 3.00x |" in text


@pytest.mark.parametrize("existing", [None, "# Benchmarks\n\nintro\n"])
def test_replace_section_creates_or_appends(tmp_path, existing):
    target = tmp_path / "B.md"
    if existing:
        target.write_text(existing)
    load("ratio_table").replace_section(str(target), "## CPU", "## CPU\n\nnew\n")
    text = target.read_text()
    assert text.startswith("# Benchmarks") and text.rstrip().endswith("new")
    assert ("intro" in text) == bool(existing)


def test_bench_distributed_quick_mode_runs_and_reports(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    pytest.importorskip("zarr")
    root = str(BENCH.parent)  # the workers it starts import this checkout's redkern
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    out, section = tmp_path / "q.json", tmp_path / "B.md"
    assert load("bench_distributed").main(["--quick", "--json", str(out), "--write", str(section)]) == 0
    result = json.loads(out.read_text())
    runners = [r["runner"] for r in result["rows"]]
    assert runners[:4] == ["single-process redkern restore", "in-process, chunk grid", "local:1, 1 thread each",
                           "local:2, 1 thread each"]
    assert all(r["mp_per_s"] > 0 for r in result["rows"]) and result["per_task_tasks"] == 16
    assert 0 < result["scaling_efficiency"] and "per_task_overhead_ms" in result
    assert "## Distributed: RED30 on Dask LocalClusters" in section.read_text()


def test_compare_training_runs_every_runner_and_checks_gradients(capsys):
    """bench/compare_training.py on a tiny RED10 (no timing is judged): every runner steps, the
    fused gradients are checked against float64 first, and the table has a row per runner."""
    script = load("compare_training")
    assert script.main(["--depth", "10", "--features", "8", "--batch", "2", "--patch", "12", "--steps", "1",
                        "--warmup", "0", "--runners", "fused", "reference", "reference_cl"]) == 0
    out = capsys.readouterr().out
    err = float(out.split("max relative error ")[1].split()[0])
    assert err <= 1e-4
    assert out.count("| redkern fused") == 1 and out.count("| reference, ") == 2


def test_compare_sizes_runs_whole_and_tiled_and_writes_its_section(tmp_path, capsys, monkeypatch):
    """bench/compare_sizes.py on a tiny RED30 (no timing is judged): whole-image and tiled rows in
    both dtypes, each checked for non-finite output, and its section written into the file."""
    monkeypatch.syspath_prepend(str(BENCH))  # its `from ratio_table import ...`, as when run from bench/
    script = load("compare_sizes")
    target = tmp_path / "B.md"
    target.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    monkeypatch.setattr(script, "default_tile", lambda model, h, w: ((90, 90), "forced for the test"))
    assert script.main(["--sizes", "40", "100", "--whole-max", "64", "--repeats", "1", "--features", "8",
                        "--write", str(target)]) == 0
    out = capsys.readouterr().out
    # the smallest size is the reference, timed again after the larger one: two rounds
    assert out.count("| whole image (whole maps), median of 1, median of 2 rounds between the others |") == 2
    tiled_rows = [line for line in out.splitlines() if "| tiled, " in line]
    # 100 px with windows of at most 90 and RED30's 30 px halo: 2 per axis, just large enough
    assert len(tiled_rows) == 2 and all("4 windows of 80x80 (2.56x the pixels, whole maps)" in line for line in tiled_rows)
    text = target.read_text()
    assert "kept" in text and text.count(script.SECTION) == 1 and "| 100x100 | bf16 |" in text


def test_winograd_phase_timer_builds_and_times_the_kernels_own_loop(tmp_path):
    """bench/cpu/winograd_phases.cpp, built as its header says: its timed copy of the Winograd
    block loop must write exactly what the kernel writes (it exits 1 otherwise), here on an
    image of edge tiles only and one with interior tiles."""
    import re
    import shutil
    import subprocess

    from redkern import _C

    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    if "avx512" not in _C.supported_isas():
        pytest.skip("the phase timer runs the AVX-512 kernels; this CPU has no AVX-512")
    source = BENCH / "cpu" / "winograd_phases.cpp"
    header = [line[2:] for line in source.read_text().splitlines() if line.startswith("//")]
    first = next(i for i, line in enumerate(header) if line.split()[:1] == ["g++"])
    build = " ".join(header[first:first + 3]).split()  # the header's build line, from the repo root
    assert build[0] == "g++" and build[-2] == "-o", build
    exe = tmp_path / "winograd_phases"
    subprocess.run(build[:-1] + [str(exe)], check=True, cwd=BENCH.parent)
    for size in ("5", "37"):
        run = subprocess.run([str(exe), size, "2", "4"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        shares = [float(s) for s in re.findall(r"\((\d+)%\)", run.stdout)]
        assert len(shares) == 3 and 98 <= sum(shares) <= 102, run.stdout
    assert subprocess.run([str(exe), "0"], capture_output=True).returncode == 2
