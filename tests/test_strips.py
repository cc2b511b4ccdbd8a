"""Row-strip inference on the CPU (``redkern.strips``) against whole-image inference and the
reference modules: RED-Nets and the zoo's same-size networks, odd sizes, batches, fp32 and bf16,
strips of a few rows (so every window drops old rows and grows past its first size), every
buffer NaN-poisoned so that a row read before it is written, or never written, fails."""

from __future__ import annotations

import pytest
import torch

import redkern
from redkern import strips
from redkern import testing as T
from redkern.networks import create_model
from redkern.strips import STRIPS_ENV, strip_peak_bytes, strip_problem, strip_rows, use_strips


@pytest.fixture
def poisoned(monkeypatch):
    """Every window buffer and output of a strip run starts as NaN (the zero padding rows are
    written by the run itself)."""
    monkeypatch.setattr(strips, "_empty", lambda shape, dtype: torch.full(shape, float("nan"), dtype=dtype))


def _small_strips(monkeypatch, pixels: int) -> None:
    monkeypatch.setattr(strips, "STRIP_PIXELS", pixels)


def _run(model, x, mode: str, monkeypatch):
    monkeypatch.setenv(STRIPS_ENV, mode)
    with torch.no_grad():
        return model(x)


MODELS = {
    "red30": lambda: redkern.RED30(features=16),
    "red20-rgb": lambda: redkern.RED20(channels=3, features=24),
    "red10": lambda: redkern.RED10(features=16),
    "vdsr": lambda: create_model("vdsr", depth=8, features=16),
    "dncnn-bn": lambda: create_model("dncnn_s", depth=6, features=16),
}


@pytest.mark.parametrize("pixels", [40, 700], ids=["4-row strips", "wider strips"])
@pytest.mark.parametrize("shape", [(1, 37, 53), (2, 61, 29), (1, 100, 7), (1, 5, 9), (1, 1, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS)
def test_strips_equal_whole_image_and_reference(name, shape, pixels, monkeypatch, poisoned):
    reference = MODELS[name]().eval()
    for p in reference.parameters():  # trained-like weights: not the zero-initialised last layer
        torch.nn.init.normal_(p, std=0.2 / max(1, p[0].numel()) ** 0.5)
    fused = redkern.fuse(reference)
    n, h, w = shape
    x = torch.randn(n, fused.plan.example_shapes[0][1], h, w)
    _small_strips(monkeypatch, pixels)
    assert strip_problem(fused.plan) is None
    got = _run(fused, x, "on", monkeypatch)
    whole = _run(fused, x, "off", monkeypatch)
    with torch.no_grad():
        want = reference.double()(x.double())
    T.assert_close(got, want, T.TOLERANCE[torch.float32] * 10)
    T.assert_close(got, whole, T.TOLERANCE[torch.float32] * 10, want.abs().max().item())


def test_bf16_strips_equal_whole_image(monkeypatch, poisoned):
    fused = redkern.RED30(features=16, fused=True).to(torch.bfloat16)
    for p in fused.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 1, 41, 23, dtype=torch.bfloat16)
    _small_strips(monkeypatch, 100)
    got, whole = _run(fused, x, "on", monkeypatch), _run(fused, x, "off", monkeypatch)
    assert got.dtype == torch.bfloat16
    T.assert_close(got, whole, 5e-2)


def test_every_row_of_every_layer_is_made_once(monkeypatch):
    """The schedule makes rows [0, H) of each step exactly once, in order, strip by strip, and
    every strip but a layer's last is the strip height."""
    from redkern.backends import cpu

    calls = []
    real = cpu.conv2d

    def recording(x, weight, *args, out=None, **kwargs):
        calls.append((id(weight), x.shape[2], out.shape[2]))
        return real(x, weight, *args, out=out, **kwargs)

    monkeypatch.setattr(cpu, "conv2d", recording)
    fused = redkern.RED20(features=16, fused=True)
    _small_strips(monkeypatch, 50)  # 4 rows a strip at 13 wide
    h = 47
    _run(fused, torch.randn(1, 1, h, 13), "on", monkeypatch)
    per_layer: dict[int, list[int]] = {}
    for weight, rows_in, rows_out in calls:
        assert rows_in == rows_out + 2  # the strip and one row each side, vertical padding 0
        per_layer.setdefault(weight, []).append(rows_out)
    assert len(per_layer) == 20
    for rows in per_layer.values():
        assert sum(rows) == h
        assert all(r == strip_rows(13) for r in rows[1:-1]), rows


def test_nan_reaches_at_least_the_pixels_it_reaches_in_pytorch(monkeypatch):
    """With ``nonfinite = "propagate"`` a NaN spreads through Winograd tiles, whose grid starts at
    each strip's first row: never to fewer pixels than the reference's, and every other pixel
    equals the whole-image run's where that one is finite too."""
    reference = redkern.RED10(features=16).eval()
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.1)
    fused = redkern.fuse(reference)
    fused.nonfinite = "propagate"
    x = torch.randn(1, 1, 200, 150)
    x[0, 0, 100, 71] = float("nan")
    _small_strips(monkeypatch, 1000)
    got, whole = _run(fused, x, "on", monkeypatch), _run(fused, x, "off", monkeypatch)
    with torch.no_grad():
        want = reference(x)
    assert torch.isnan(want).any()
    assert torch.isnan(got)[torch.isnan(want)].all()
    both = torch.isfinite(got) & torch.isfinite(whole)
    assert both.float().mean() > 0.5
    T.assert_close(got[both], whole[both], 1e-4)


def test_channels_last_input_gives_the_input_layout(monkeypatch):
    fused = redkern.RED10(channels=3, features=16, fused=True)
    x = torch.randn(1, 3, 30, 20).contiguous(memory_format=torch.channels_last)
    _small_strips(monkeypatch, 100)
    got, whole = _run(fused, x, "on", monkeypatch), _run(fused, x, "off", monkeypatch)
    assert got.stride() == whole.stride()
    T.assert_close(got, whole, 1e-4)


def test_auto_takes_strips_where_they_save_memory(monkeypatch):
    plan = redkern.RED30(fused=True).plan
    monkeypatch.delenv(STRIPS_ENV, raising=False)
    assert use_strips(plan, torch.empty(1, 1, 4096, 4096))
    assert use_strips(plan, torch.empty(1, 1, 2048, 2048))
    assert not use_strips(plan, torch.empty(1, 1, 1024, 1024))
    assert not use_strips(plan, torch.empty(1, 1, 256, 256))
    assert "auto" in strips.describe(plan)
    monkeypatch.setenv(STRIPS_ENV, "on")
    assert use_strips(plan, torch.empty(1, 1, 8, 8))
    assert "=on" in redkern.explain(redkern.RED30(fused=True))
    monkeypatch.setenv(STRIPS_ENV, "off")
    assert not use_strips(plan, torch.empty(1, 1, 8192, 8192))
    monkeypatch.setenv(STRIPS_ENV, "sometimes")
    with pytest.raises(ValueError, match="REDKERN_CPU_STRIPS='sometimes': choose auto, on or off"):
        use_strips(plan, torch.empty(1, 1, 8, 8))


@pytest.mark.parametrize("name,why", [("edsr", "runs in PyTorch"), ("srcnn", "changes the image's size"),
                                      ("espcn", "runs in PyTorch")])
def test_networks_that_change_the_size_run_whole(name, why, monkeypatch):
    fused = create_model(name, fused=True)
    assert why in strip_problem(fused.plan)
    monkeypatch.setenv(STRIPS_ENV, "on")
    assert not use_strips(fused.plan, torch.empty(1, fused.plan.example_shapes[0][1], 64, 64))


def test_strip_windows_hold_a_small_part_of_the_maps():
    """RED30 at 4096x4096 whole needs tens of GB of maps at once; in strips a few GB."""
    plan = redkern.RED30(fused=True).plan
    whole, _ = plan.peak_bytes((1, 1, 4096, 4096), 4)
    windows = strip_peak_bytes(plan, (1, 1, 4096, 4096), 4)
    assert whole > 30 * 2**30
    assert windows < 2 * 2**30, windows / 2**30
    assert strip_peak_bytes(plan, (1, 1, 16384, 16384), 4) < 4 * 2**30


def test_a_strip_run_checks_its_own_working_set(monkeypatch):
    """An image whose whole maps would not fit runs in strips when the windows fit."""
    from redkern import executor

    fused = redkern.RED10(features=16, fused=True)
    x = torch.randn(1, 1, 400, 30)
    whole, _ = fused.plan.peak_bytes(tuple(x.shape), 4)
    monkeypatch.setattr(executor, "available_memory", lambda device: whole // 2)
    monkeypatch.setenv(STRIPS_ENV, "off")
    with pytest.raises(redkern.WorkingSetTooLarge, match="maps"):
        with torch.no_grad():
            fused(x)
    monkeypatch.setenv(STRIPS_ENV, "on")
    _small_strips(monkeypatch, 200)
    with torch.no_grad():
        assert torch.isfinite(fused(x)).all()


def test_default_tile_spans_the_width_for_a_strip_model(monkeypatch):
    from redkern import tiling

    fused = redkern.RED30(fused=True)
    monkeypatch.delenv(STRIPS_ENV, raising=False)
    monkeypatch.setattr(tiling, "_memory_available", lambda device: 24 * 2**30)
    (rows, cols), why = tiling.default_tile(fused, 4096, 4096)
    assert (rows, cols) == (4096, 4096) and "row strips" in why
    monkeypatch.setattr(tiling, "_memory_available", lambda device: 12 * 2**30)
    (rows, cols), why = tiling.default_tile(fused, 16384, 16384)
    assert cols == 16384 and 120 <= rows < 16384, (rows, why)
    monkeypatch.setenv(STRIPS_ENV, "off")
    (rows, cols), _ = tiling.default_tile(fused, 16384, 16384)
    assert cols < 16384
    reference = redkern.RED30()
    monkeypatch.delenv(STRIPS_ENV)
    assert tiling.default_tile(reference, 16384, 16384)[0][1] < 16384  # the reference runs whole maps


def test_tiled_strip_windows_equal_the_whole_image(monkeypatch):
    """Full-width windows of a strip model, cut by the memory budget, join into the whole image."""
    from redkern import tiling

    reference = redkern.RED10(features=16).eval()
    for p in reference.parameters():
        torch.nn.init.normal_(p, std=0.1)
    fused = redkern.fuse(reference)
    _small_strips(monkeypatch, 200)
    monkeypatch.setenv(STRIPS_ENV, "on")
    x = torch.randn(1, 1, 300, 40)
    with torch.no_grad():
        want = reference(x)
    got = tiling.tiled(fused, x, tile=(100, 40), quiet=True)
    T.assert_close(got, want, 1e-4)


def test_a_plan_strips_cannot_run_goes_the_whole_image_way(monkeypatch):
    """Strips asked for, but a BatchNorm in training mode (batch statistics: the layer runs
    unfused): the whole-image path runs, its working-set check included, and matches PyTorch."""
    from redkern import executor

    reference = create_model("dncnn_s", depth=4, features=16).train()
    fused = redkern.fuse(reference)
    x = torch.randn(2, 1, 40, 30)
    monkeypatch.setenv(STRIPS_ENV, "on")
    with torch.no_grad():
        want = reference(x)
        T.assert_close(fused(x), want, 1e-4)
    whole, _ = fused.plan.peak_bytes(tuple(x.shape), 4)
    monkeypatch.setattr(executor, "available_memory", lambda device: whole // 2)
    with pytest.raises(redkern.WorkingSetTooLarge, match="maps at once"):
        with torch.no_grad():
            fused(torch.randn(2, 1, 41, 30))
