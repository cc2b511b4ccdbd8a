"""The tile planner wastes no work: the fewest windows an axis, of one size just large enough,
halos only on inner sides; the window, when none is given, sized from the memory available."""

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import redkern
from redkern import executor, tiling
from redkern import testing as T
from redkern.networks import create_model
from redkern.tiling import (
    default_tile,
    plan_tiles,
    receptive_field,
    restore_file,
    run_tiled,
    tile_overhead,
    tiled,
)

REL = 1e-5  # fp32, relative to the largest output
GiB = 2**30


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (conftest.one_thread)."""


def whole(model, x):
    with torch.no_grad():
        return model(x)


def window_rows(tiles):
    """``[(window, core)]`` along the rows, one per row of tiles."""
    seen = {}
    for t in tiles:
        seen.setdefault((t.window[0].start, t.window[0].stop), (t.core[0].start, t.core[0].stop))
    return sorted(seen.items())


# --- the plan, without a model --------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(length=st.integers(1, 20000), tile=st.integers(1, 4096), halo=st.integers(0, 40), data=st.data())
def test_fewest_windows_of_one_size_just_large_enough(length, tile, halo, data):
    """Along an axis of ``length``: one window when the tile holds it; else ``n`` windows, the
    fewest of at most ``tile`` that cover it, all of one size ``W``, the smallest with which ``n``
    cover it; cores cover what the whole image has output for exactly once, with ``halo`` of
    context at every edge inside the image, exactly ``halo`` at one at least; the work is at most
    ``length + (2 halo + 1)(n - 1)`` pixels."""
    trim = data.draw(st.integers(0, halo), label="trim")
    scale = data.draw(st.sampled_from((1, 1, 2, 3)), label="scale") if trim == 0 else 1
    assume(length > 2 * trim)
    if length > tile and tile <= 2 * halo:
        with pytest.raises(ValueError, match=r"tile > 2 \* halo"):
            plan_tiles(length, 2 * trim + 1, tile, halo, scale, trim)
        return
    assume(length <= tile or length // (tile - 2 * halo) < 2000)  # at most a few thousand windows
    tiles = plan_tiles(length, 2 * trim + 1, (tile, 4096), halo, scale, trim)
    rows = window_rows(tiles)
    n = len(rows)
    assert len(tiles) == n  # the columns fit one window
    sizes = {w1 - w0 for (w0, w1), _ in rows}
    assert len(sizes) == 1, sizes
    (size,) = sizes
    assert size <= min(tile, length)
    if length <= tile:
        assert n == 1 and size == length
    else:
        assert (n - 1) * (tile - 2 * halo) + 2 * halo < length  # n - 1 windows of `tile` fall short
        assert n * (size - 1) - 2 * (n - 1) * halo < length  # n windows one pixel smaller fall short
    assert n * size <= length + (2 * halo + 1) * (n - 1)
    covered = np.zeros(scale * (length - 2 * trim), int)
    context = []
    for t in tiles:
        (w0, w1), (c0, c1) = (t.window[0].start, t.window[0].stop), (t.core[0].start, t.core[0].stop)
        assert 0 <= w0 <= c0 < c1 <= w1 <= length
        assert c0 == trim or c0 - w0 >= halo
        assert c1 == length - trim or w1 - c1 >= halo
        context += [c0 - w0] if w0 > 0 else []
        context += [w1 - c1] if w1 < length else []
        covered[t.out_core[0]] += 1
    assert (covered == 1).all()
    assert n == 1 or min(context) == halo  # tight: a halo one pixel short would show


@pytest.mark.parametrize("tile,windows,size,most", [(2048, 3, 1406, 1.07), (1024, 5, 868, 1.13), (4096, 1, 4096, 1.0),
                                                    (2078, 2, 2078, 1.03)])
def test_the_issues_4096_image(tile, windows, size, most):
    """The issue's case: 4096^2 with a halo of 30 and ``tile=2048`` was 3 x 3 windows of 2048,
    2.25x the pixels of the image; it is 3 x 3 windows of 1406 (cores 1376 + 1345 + 1375),
    1.06x. ``tile=1024`` was 1.56x, and is 5 x 5 of 868, 1.12x; 2078 = 2048 + 30 is 2 x 2."""
    tiles = plan_tiles(4096, 4096, tile, 30)
    assert len(tiles) == windows**2
    shapes = {(t.window[0].stop - t.window[0].start, t.window[1].stop - t.window[1].start) for t in tiles}
    assert shapes == {(size, size)}
    assert tile_overhead(tiles, 4096, 4096) <= most
    halo_share = (1 + (2 * 30 + 1) / (tile - 2 * 30)) ** 2  # the bound the property test proves per axis
    assert tile_overhead(tiles, 4096, 4096) <= halo_share


@pytest.mark.parametrize("length,tile,halo", [(30, 8, 4), (100, 10, 5), (4096, 60, 30), (41, 1, 0)])
def test_a_tile_without_room_for_a_core_says_what_is_allowed(length, tile, halo):
    if halo == 0:  # a 1-pixel window is allowed without a halo
        assert len(plan_tiles(length, 5, tile, halo)) == length * 5
        return
    with pytest.raises(ValueError) as e:
        plan_tiles(length, length, tile, halo)
    message = str(e.value)
    for part in (f"a tile of {tile} pixels", f"a halo of {halo}", f"{length}-pixel axis",
                 f"tile > 2 * halo = {2 * halo}", f"at least {2 * halo + 1}", f"a tile of {length}"):
        assert part in message, (part, message)
    assert len(plan_tiles(length, 1, 2 * halo + 1, halo)) == length - 2 * halo  # the least allowed: 1 px cores
    assert len(plan_tiles(length, length, length, halo)) == 1


def test_an_axis_the_tile_holds_is_one_window_and_the_other_is_planned_alone():
    tiles = plan_tiles(97, 131, (97, 64), 6)
    assert {t.window[0].stop - t.window[0].start for t in tiles} == {97}
    assert {t.window[1].stop - t.window[1].start for t in tiles} == {(131 + 2 * 2 * 6 + 2) // 3}  # 3 of 52
    assert len(tiles) == 3


# --- tiled == whole image on odd sizes, every planner path ------------------------------------

def small_red(fused: bool):
    model = T.kaiming_init_((redkern.FusedREDNet if fused else redkern.REDNet)(6, 1, 8)).eval()
    return model


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_red_tiles_exactly_on_an_odd_image(fused):
    model = small_red(fused)
    x = torch.rand(2, 1, 97, 131)
    want = whole(model, x)
    for tile in (13, 16, 23, 40, 64, (20, 50), (97, 30), 131):
        T.assert_close(tiled(model, x, tile=tile, batch=3, quiet=True), want, REL)


@pytest.mark.parametrize("name,options,scale,trim", [
    ("espcn", {"n1": 16, "n2": 8}, 3, 0),
    ("fsrcnn", {"d": 8, "s": 4, "m": 2}, 3, 0),
    ("srcnn", {"n1": 8, "n2": 4}, 1, 6),
])
def test_upsamplers_and_unpadded_networks_tile_exactly_on_an_odd_image(name, options, scale, trim):
    model = T.randomize_(create_model(name, **options)).eval()
    field = receptive_field(model)
    assert (field.scale, field.trim) == (scale, trim)
    x = torch.rand(1, 1, 97, 131)
    want = whole(model, x)
    assert want.shape[2:] == (scale * (97 - 2 * trim), scale * (131 - 2 * trim))
    for tile in (2 * field.radius + 1, 2 * field.radius + 7, 40, (33, 70), 131):
        T.assert_close(tiled(model, x, tile=tile, batch=2, quiet=True), want, REL)


# --- the window when none is given ------------------------------------------------------------

@pytest.fixture
def memory(monkeypatch):
    """``memory(bytes)``: the memory the model's device has available from now on, for the
    planner (``None``: not known). Row strips off: these tests are of the square windows
    (tests/test_strips.py has the full-width ones)."""
    monkeypatch.setenv("REDKERN_CPU_STRIPS", "off")

    def set_available(available):
        monkeypatch.setattr(tiling, "_memory_available", lambda device: available)

    return set_available


def test_the_memory_available_is_the_executors():
    assert tiling._memory_available(torch.device("cpu")) == executor.available_memory(torch.device("cpu")) > 0


def budget(values, available, windows=1, scale=1, channels=1):
    """Window pixels: the memory fraction over fp32 maps and the tiles read ahead and behind."""
    per_pixel = (values + channels * (1 + scale**2) * 6) * 4 * windows
    return int(tiling.DEFAULT_MEMORY_FRACTION * available / per_pixel)


def expected_side(values, available, windows=1):
    return math.isqrt(budget(values, available, windows))


def test_red30_at_64_features_holds_nine_maps_a_pixel():
    field = receptive_field(redkern.FusedREDNet(30, 1, 64))
    assert field.values_per_pixel == 9 * 64


def test_the_default_window_is_the_largest_the_memory_allows(memory):
    model = redkern.FusedREDNet(30, 1, 64).eval()
    memory(int(18.3 * GiB))
    (rows, cols), why = default_tile(model, 8192, 8192)
    side = expected_side(576, 18.3 * GiB)
    assert rows == cols == side and 1900 < side < 2100
    assert why.startswith(f"tile {side} px chosen from 18.3 GiB available on cpu")
    plan = model.plan
    budget = tiling.DEFAULT_MEMORY_FRACTION * 18.3 * GiB
    assert plan.peak_bytes((1, 1, side, side), 4)[0] <= budget < plan.peak_bytes((1, 1, 2 * side, 2 * side), 4)[0]
    (rows4, _), _ = default_tile(model, 8192, 8192, batch=2, images=2)  # four windows at once: half the side
    assert abs(rows4 - side // 2) <= 1


def test_the_default_window_is_bounded_and_said_so(memory):
    model = small_red(True)
    memory(2**20)
    (rows, cols), why = default_tile(model, 4000, 4000)
    assert (rows, cols) == (256, 256) and "at least 256 px" in why
    memory(2**44)
    (rows, cols), why = default_tile(model, 4000, 4000)
    assert (rows, cols) == (8192, 8192) and "at most 8192 px" in why
    memory(None)
    (rows, cols), why = default_tile(model, 4000, 4000)
    assert (rows, cols) == (tiling.FALLBACK_TILE,) * 2 and "not known" in why


def test_a_strip_gets_the_budget_along_its_length(memory):
    model = small_red(True)
    memory(64 * 2**20)
    pixels = budget(receptive_field(model).values_per_pixel, 64 * 2**20)
    (rows, cols), _ = default_tile(model, 100, 100000)
    assert rows == math.isqrt(pixels) and cols == pixels // 100  # the square's pixels, 100 rows deep
    assert len(plan_tiles(100, 100000, (rows, cols), 6)) == math.ceil((100000 - 12) / (cols - 12))


def test_a_wrapper_taken_at_its_word_is_not_traced(memory):
    """A model outside redkern that states its radius: its forward is never called to size the
    window, whose bytes per pixel count every convolution's output alive at once."""

    class Counting(torch.nn.Module):
        receptive_field_radius = 2

        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 1, 3, padding=1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.b(self.a(x))

    model = Counting()
    memory(GiB)
    (rows, _), _ = default_tile(model, 5000, 5000)
    assert model.calls == 0 and rows == expected_side(8 + 1, GiB)


class Tensors:
    """A source and sink over one tensor, with the images per read it holds."""

    def __init__(self, x):
        self.x, self.out = x, torch.full_like(x, float("nan"))
        self.images, self.height, self.width = x.shape[0], *x.shape[2:]

    def read(self, tile):
        return self.x[:, :, tile.window[0], tile.window[1]], None

    def write(self, tile, y, context):
        self.out[:, :, tile.out_core[0], tile.out_core[1]] = y


def test_without_a_tile_an_image_that_fits_is_one_window(memory, caplog):
    model = small_red(True)
    memory(GiB)
    x = torch.rand(2, 1, 97, 131)
    io = Tensors(x)
    with caplog.at_level(logging.INFO, logger="redkern"):
        run = run_tiled(model, io, io, quiet=True)
    assert run.tiles == 1 and run.tile_shape == (97, 131)
    assert run.tile_choice is not None and run.tile_choice.startswith("tile ")
    assert "chosen from 1.0 GiB available on cpu" in run.tile_choice
    assert run.tile_choice in caplog.text
    T.assert_close(io.out, whole(model, x), REL)
    assert run_tiled(model, io, io, tile=40, quiet=True).tile_choice is None


def test_without_a_tile_a_larger_image_is_tiled_exactly(memory, tmp_path):
    model = small_red(True)
    memory(2**20)  # the least window, 256 px
    x = torch.rand(1, 1, 300, 520)
    T.assert_close(tiled(model, x, quiet=True), whole(model, x), REL)
    np.save(tmp_path / "in.npy", x[0, 0].numpy())
    run = restore_file(model, tmp_path / "in.npy", tmp_path / "out.npy", quiet=True)
    assert run.tiles == 2 * 3 and run.tile_shape == ((300 + 2 * 6 + 1) // 2, (520 + 2 * 2 * 6 + 2) // 3)
    assert "at least 256 px" in run.tile_choice
    T.assert_close(torch.from_numpy(np.load(tmp_path / "out.npy")), whole(model, x)[0, 0], REL)
