"""bench/gpu_report.py's CPU side: what it does without a GPU, the timing loop's order, budget and
failure handling (with stand-in providers and a stand-in clock), the table and the section it writes.
The GPU side runs where there is a GPU (the script itself, on such a machine)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run")
def test_without_a_gpu_it_says_so_and_touches_nothing(report, tmp_path, capsys):
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n\nkept as it was\n")
    assert report.main(["--write", str(target)]) == report.NO_GPU_EXIT != 0
    assert target.read_text() == "# Benchmarks\n\nkept as it was\n"
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "left as it was" in err


def test_bad_sizes_are_refused(report):
    with pytest.raises(SystemExit):
        report.main(["--sizes", "8"])


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_measure_order_budget_and_failures(report):
    clock, ran, released, checked = Clock(), [], [], []

    def provider(name, expensive=False, fail=None, cost=1.0):
        def make(size):
            if fail is not None:
                raise fail
            ran.append((name, size))

            def call():
                return f"{name}@{size}"
            return call
        return report.Provider(name, make, expensive, lambda: released.append(name))

    def timer(fn, size):
        clock.t += 10.0 if size > 256 else 1.0  # a big size takes long
        return size / 256

    def check(name, out):
        checked.append(out)
        return 1e-6

    providers = [provider("fast"), provider("compiled", expensive=True),
                 provider("absent", fail=report.Unavailable("not built here")),
                 provider("huge", fail=RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")),
                 provider("broken", fail=ValueError("bad\nsecond line"))]
    cells = report.measure(providers, [1024, 256, 4096], timer=timer, budget_s=21.5, clock=clock, check=check,
                           log=lambda line: None)
    # Sizes ascending, the expensive provider last; nothing starts past 21.5 s.
    assert ran == [("fast", 256), ("fast", 1024), ("fast", 4096), ("compiled", 256)]
    assert cells[("fast", 4096)].ms == 16 and cells[("compiled", 256)].ms == 1
    assert "past the 21.5 s budget" in cells[("compiled", 1024)].note
    assert cells[("absent", 256)].note == "n/a: not built here"
    assert cells[("huge", 1024)].note == "out of memory"
    assert cells[("broken", 256)].note == "failed: ValueError: bad"
    assert checked == ["fast@256", "compiled@256"]  # at the smallest size only
    assert cells[("fast", 256)].error == 1e-6 and cells[("fast", 1024)].error is None
    assert released.count("fast") == 3  # after every cell that started


def test_table_and_section_written_in_place(report, tmp_path):
    providers = [report.Provider("redkern Triton, layer pairs", None), report.Provider("cuDNN eager NCHW", None)]
    cells = {("redkern Triton, layer pairs", 256): report.Cell(0.25, error=3e-4),
             ("redkern Triton, layer pairs", 1024): report.Cell(2.0),
             ("cuDNN eager NCHW", 256): report.Cell(1.0, error=1e-3),
             ("cuDNN eager NCHW", 1024): report.Cell(None, "out of memory")}
    body = report.table(providers, [1024, 256], cells, flops_per_pixel=2.07e6)
    lines = body.splitlines()
    assert lines[0] == "| provider | 256x256 (ms) | 1024x1024 (ms) | TFLOP/s at 1024 | max rel error (256) |"
    assert lines[2] == "| redkern Triton, layer pairs | 0.250 | 2.000 | 1085 | 3.0e-04 |"
    assert lines[3] == "| cuDNN eager NCHW | 1.000 | - |  | 1.0e-03 |"
    assert "- cuDNN eager NCHW at 1024: out of memory" in lines
    text = report.section(body, gpu="Test GPU (80 GiB)", versions="torch x, triton y", dtype="fp16",
                          command="python bench/gpu_report.py --write BENCHMARKS.md", tests="3 passed", date="2026-12-02")
    target = tmp_path / "BENCHMARKS.md"
    target.write_text("# Benchmarks\n\n## CPU: RED30 against the peers\n\ncpu table\n\n"
                      f"{report.SECTION}\n\nold gpu table\n\n## Reading the tables\n\nkept\n")
    report._load_ratio_table().replace_section(str(target), report.SECTION, text)
    out = target.read_text()
    assert "old gpu table" not in out and "cpu table" in out and "kept" in out and out.count(report.SECTION) == 1
    assert "Test GPU (80 GiB)" in out and "GPU tests: 3 passed" in out and lines[2] in out


def test_repeats_shrink_with_size(report):
    assert report.repeats_at(256) > report.repeats_at(1024) > report.repeats_at(4096) >= 3
