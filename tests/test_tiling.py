"""Tiled inference equals whole-image inference; files too large for memory stay out of it."""

import json
import random
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import redkern
from redkern import imageio
from redkern.tiling import InexactTilingWarning, plan_tiles, restore_file, tiled

ATOL = 1e-5  # fp32 on [0, 1] images


def kaiming_red(depth, channels=1, features=8, fused=False):
    """A RED model with weights that carry signal through every layer (default init shrinks it)."""
    model = (redkern.FusedREDNet if fused else redkern.REDNet)(depth, channels, features)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.normal_(m.bias, std=0.05)
    return model.eval()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (conftest.one_thread)."""


def whole(model, x):
    with torch.no_grad():
        return model(x)


def rng():
    return random.Random(torch.initial_seed())  # conftest seeds torch and prints the seed on failure


# --- the plan -----------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 260), w=st.integers(1, 260), tile=st.integers(1, 120), halo=st.integers(0, 30))
def test_tiles_cover_every_pixel_once_with_full_context(h, w, tile, halo):
    if (h > tile or w > tile) and tile <= 2 * halo:
        with pytest.raises(ValueError, match="tile > 2 \\* halo"):
            plan_tiles(h, w, tile, halo)
        return
    assume((h - tile) * (w - tile) < 400 * (tile - 2 * halo) ** 2)  # a few hundred tiles at most
    tiles = plan_tiles(h, w, tile, halo)
    covered = np.zeros((h, w), int)
    shapes = {(t.window[0].stop - t.window[0].start, t.window[1].stop - t.window[1].start) for t in tiles}
    assert len(shapes) == 1  # one shape: tiles batch, and a fused model's pooled maps are reused
    (rows, cols), = shapes
    assert rows <= min(tile, h) and cols <= min(tile, w)
    for t in tiles:
        (wr, wc), (cr, cc) = t.window, t.core
        assert 0 <= wr.start and wr.stop <= h and 0 <= wc.start and wc.stop <= w  # never padded
        for core, window, size in ((cr, wr, h), (cc, wc, w)):
            assert window.start <= core.start < core.stop <= window.stop
            # an interior core edge keeps `halo` pixels of context; at the border none is needed
            assert core.start == 0 or core.start - window.start >= halo
            assert core.stop == size or window.stop - core.stop >= halo
        covered[cr, cc] += 1
    assert (covered == 1).all()


def test_tile_as_rows_and_cols():
    """100 rows in windows of at most 41 with a halo of 5: three of 40 (cores 35 + 30 + 35);
    the 50 columns fit in one window of at most 64."""
    tiles = plan_tiles(100, 50, (41, 64), 5)
    assert {(t.window[0].stop - t.window[0].start, t.window[1].stop - t.window[1].start) for t in tiles} == {(40, 50)}
    assert [(t.core[0].start, t.core[0].stop) for t in tiles] == [(0, 35), (35, 65), (65, 100)]


# --- tiled == whole image -----------------------------------------------------------------

def test_tiled_equals_whole_image_over_random_cases():
    r = rng()
    models = {(d, c): kaiming_red(d, c) for d in (2, 4, 6) for c in (1, 3)}
    for case in range(40):
        depth, channels = r.choice((2, 4, 6)), r.choice((1, 3))
        model, radius = models[depth, channels], depth
        n = r.choice((1, 1, 2))
        h, w = r.randint(1, 90), r.randint(1, 90)
        halo = r.choice((None, radius, radius + r.randint(1, 3)))
        tile = r.choice((r.randint(2 * (halo or radius) + 4, 70), r.randint(91, 120)))
        batch = r.randint(1, 4)
        x = torch.rand(n, channels, h, w)
        got = tiled(model, x, tile=tile, halo=halo, batch=batch, quiet=True)
        where = f"case {case}: depth {depth}, x {tuple(x.shape)}, tile {tile}, halo {halo}, batch {batch}"
        torch.testing.assert_close(got, whole(model, x), atol=ATOL, rtol=0, msg=lambda m: f"{where}: {m}")


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 1, 1), (2, 1, 1, 37), (1, 1, 53, 1), (1, 3, 7, 5)])
def test_tiny_and_degenerate_images(shape):
    model = kaiming_red(4, shape[1])
    x = torch.rand(shape)
    for tile in (9, 10, 64):  # tile 9 > 2 * halo 4; 64 is larger than any of these images
        torch.testing.assert_close(tiled(model, x, tile=tile, quiet=True), whole(model, x), atol=ATOL, rtol=0)


def test_three_dimensional_input_gives_three_dimensional_output():
    model = kaiming_red(2, 3)
    x = torch.rand(3, 41, 29)
    got = tiled(model, x, tile=12, quiet=True)
    assert got.shape == x.shape
    torch.testing.assert_close(got, whole(model, x[None])[0], atol=ATOL, rtol=0)


def test_fused_model_tiles_exactly():
    fused = kaiming_red(4, 1, 8, fused=True)
    reference = redkern.REDNet(4, 1, 8).eval()
    reference.load_state_dict(fused.state_dict())
    x = torch.rand(1, 1, 45, 71)
    got = tiled(fused, x, tile=(24, 30), batch=3, quiet=True)
    torch.testing.assert_close(got, whole(fused, x), atol=ATOL, rtol=0)
    torch.testing.assert_close(got, whole(reference, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
def test_red30_tiles_exactly(fused):
    """Deep Kaiming models reach outputs of ~30, so float rounding is judged relative to them."""
    model = kaiming_red(30, 1, 8, fused=fused)
    x = torch.rand(1, 1, 101, 93)
    got, want = tiled(model, x, tile=(72, 80), batch=2, quiet=True), whole(model, x)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, atol=ATOL * max(1.0, scale), rtol=0)


def test_tiles_move_to_the_model_dtype_and_come_back():
    model = kaiming_red(4, 1).double()
    x = torch.rand(2, 1, 50, 33)
    got = tiled(model, x, tile=20, quiet=True)
    assert got.dtype == torch.float32 and got.device == x.device
    torch.testing.assert_close(got, whole(model, x.double()).float(), atol=ATOL, rtol=0)


def test_nan_reaches_exactly_the_pixels_it_reaches_on_the_whole_image():
    model = kaiming_red(4, 1)
    x = torch.rand(1, 1, 40, 40)
    x[0, 0, 17, 23] = float("nan")
    got, want = tiled(model, x, tile=14, quiet=True), whole(model, x)
    assert torch.isnan(want).any()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), atol=ATOL, rtol=0)


# --- the halo -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [2, 4, 10])
def test_a_halo_one_pixel_short_is_refused_and_detected(depth):
    model = kaiming_red(depth, 1, 8)
    radius = model.receptive_field_radius
    x = torch.rand(1, 1, 4 * radius + 11, 4 * radius + 7)
    tile = 2 * radius + 6
    want = whole(model, x)
    exact = tiled(model, x, tile=tile, quiet=True)
    torch.testing.assert_close(exact, want, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="allow_inexact"):
        tiled(model, x, tile=tile, halo=radius - 1, quiet=True)
    with pytest.warns(InexactTilingWarning, match=f"smaller than the model's receptive field radius {radius}"):
        short = tiled(model, x, tile=tile, halo=radius - 1, allow_inexact=True, quiet=True)
    assert (short - want).abs().max() > 1e-3  # the missing pixel of context shows


def test_a_tile_with_no_room_for_a_core_is_refused():
    model = kaiming_red(4)
    with pytest.raises(ValueError, match="tile > 2 \\* halo = 8"):
        tiled(model, torch.rand(1, 1, 30, 30), tile=8, quiet=True)


def test_a_model_without_a_radius_needs_a_halo():
    """A plain module's radius is read off its layer plan; where the plan has an operation
    whose reach it does not model (average pooling here), a halo must be given."""
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = torch.rand(1, 1, 30, 30)
    torch.testing.assert_close(tiled(conv, x, tile=10, quiet=True), whole(conv, x), atol=ATOL, rtol=0)
    pooled = torch.nn.Sequential(conv, torch.nn.AvgPool2d(3, stride=1, padding=1))
    with pytest.raises(ValueError, match="pass halo="):
        tiled(pooled, x, tile=10, quiet=True)
    torch.testing.assert_close(tiled(pooled, x, tile=10, halo=2, quiet=True), whole(pooled, x), atol=ATOL, rtol=0)


# --- interrupts and errors leave nothing behind -------------------------------------------

class Interrupting(torch.nn.Module):
    """Wraps a model; raises ``error`` on call number ``after + 1``."""

    def __init__(self, model, after, error=KeyboardInterrupt):
        super().__init__()
        self.model, self.after, self.error, self.calls = model, after, error, 0
        self.channels, self.receptive_field_radius = model.channels, model.receptive_field_radius

    def forward(self, x):
        self.calls += 1
        if self.calls > self.after:
            raise self.error(f"stopped after {self.after} tiles")
        return self.model(x)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".png", ".zarr"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_run_leaves_no_output_and_no_temporary(tmp_path, suffix, error):
    source = tmp_path / "in.npy"
    np.save(source, (np.random.default_rng(torch.initial_seed()).random((61, 77)) * 255).astype(np.uint8))
    target = tmp_path / f"out{suffix}"
    model = Interrupting(kaiming_red(2), after=3, error=error)
    with pytest.raises(error, match="stopped after 3 tiles"):
        restore_file(model, source, target, tile=20, quiet=True)
    assert model.calls == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_an_interrupt_keeps_the_old_output(tmp_path):
    source, target = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(source, np.random.default_rng(torch.initial_seed()).random((50, 50), dtype=np.float32))
    np.save(target, np.arange(6))
    with pytest.raises(KeyboardInterrupt):
        restore_file(Interrupting(kaiming_red(2), after=2), source, target, tile=16, overwrite=True, quiet=True)
    assert np.array_equal(np.load(target), np.arange(6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy"]


def test_a_failing_write_stops_the_run(tmp_path):
    """NaN has no uint8 value: the writer thread's error reaches the caller; nothing is written."""
    source, target = tmp_path / "in.png", tmp_path / "out.png"
    imageio.write_image(source, np.full((40, 40), 128, np.uint8))
    model = kaiming_red(2)
    with torch.no_grad():
        model.deconv_1.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        restore_file(model, source, target, tile=16, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


# --- out of core: a large image never held in memory --------------------------------------

CHILD = textwrap.dedent("""
    import json, sys, time
    import torch, redkern
    from redkern import tiling
    torch.set_num_threads(1)
    source, target, weights, tile = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def status(field):  # kB -> bytes, from the kernel's own accounting of this process
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    model = redkern.REDNet(depth=2, features=4).eval()
    model.load_state_dict(torch.load(weights))
    with torch.no_grad():  # warm up everything but the image itself
        model(torch.rand(1, 1, tile, tile))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS, so it measures the run alone
    before = status("VmRSS")
    start = time.perf_counter()
    run = tiling.restore_file(model, source, target, tile=tile, quiet=True)
    seconds = time.perf_counter() - start
    print(json.dumps({"before": before, "peak": status("VmHWM"), "seconds": seconds, "tiles": run.tiles}))
""")



def _write_large_input(path, size, dtype):
    rng = np.random.default_rng(torch.initial_seed())
    image = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(size, size))
    for y in range(0, size, 1024):
        band = rng.random((min(1024, size - y), size), dtype=np.float32)
        image[y:y + 1024] = band if dtype == np.float32 else np.rint(band * 255).astype(dtype)
    image.flush()
    del image


def _check_in_bands(model, source, target, rows=512):
    """Every output row against the model on a band of input rows with enough context."""
    x_all, y_all, r = imageio.open_image(source), imageio.open_image(target), model.receptive_field_radius
    with x_all, y_all:
        h, w = x_all.height, x_all.width
        for y0 in range(0, h, rows):
            y1, a, b = min(h, y0 + rows), max(0, y0 - r), min(h, y0 + rows + r)
            x = torch.from_numpy(imageio.to_float(x_all.read(slice(a, b), slice(0, w)))).permute(2, 0, 1)[None]
            want = whole(model, x)[0].permute(1, 2, 0)[y0 - a:y1 - a].numpy()
            got = y_all.read(slice(y0, y1), slice(0, w))
            if got.dtype == np.float32:
                np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"rows {y0}:{y1}")
            else:  # rounding may tip the other way where the float value is within ulps of .5
                expect = imageio.from_float(want, got.dtype).astype(int)
                assert np.abs(got.astype(int) - expect).max() <= 1, f"rows {y0}:{y1}"


def _out_of_core(tmp_path, size, dtype, source_suffix, target_suffix, tile, record_property):
    psutil = pytest.importorskip("psutil")
    source, target, weights = tmp_path / f"in{source_suffix}", tmp_path / f"out{target_suffix}", tmp_path / "w.pt"
    _write_large_input(source, size, dtype)
    model = kaiming_red(2, 1, 4)
    torch.save(model.state_dict(), weights)
    image_bytes = size * size * np.dtype(dtype).itemsize
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(source), str(target), str(weights), str(tile)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, sampled = psutil.Process(child.pid), 0
    while child.poll() is None:  # resident memory as the OS sees it, file-backed pages included
        try:
            sampled = max(sampled, watched.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    out, err = child.communicate()
    assert child.returncode == 0, err
    report = json.loads(out)
    grew = report["peak"] - report["before"]
    for name, value in (("image_mb", image_bytes / 2**20), ("peak_rss_mb", report["peak"] / 2**20),
                        ("rss_growth_mb", grew / 2**20), ("sampled_rss_mb", sampled / 2**20),
                        ("seconds", report["seconds"]), ("mp_per_s", size * size / 1e6 / report["seconds"])):
        record_property(name, round(value, 1))
    print(f"{size}x{size} {np.dtype(dtype)}: {report}, sampled RSS {sampled / 2**20:.0f} MiB")
    assert report["peak"] < 2 * 2**30 and sampled < 2 * 2**30
    # The working set is a few tiles (about 60 MiB at tile 512 with this model), whatever the image size.
    assert grew < image_bytes / 2, f"RSS grew by {grew / 2**20:.0f} MiB for a {image_bytes / 2**20:.0f} MiB image"
    _check_in_bands(model, source, target)
    for p in (source, target):
        p.unlink()


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak RSS from /proc")


@LINUX_ONLY
def test_out_of_core_64_megapixels_float32(tmp_path, record_property):
    """8192x8192 float32 (256 MiB in, 256 MiB out): .npy in, TIFF out, RSS far below the image."""
    _out_of_core(tmp_path, 8192, np.float32, ".npy", ".tif", 512, record_property)


@LINUX_ONLY
@pytest.mark.slow
def test_out_of_core_268_megapixels_uint8(tmp_path, record_property):
    """16384x16384 uint8, the issue's size: .npy in, .npy out."""
    _out_of_core(tmp_path, 16384, np.uint8, ".npy", ".npy", 512, record_property)


@pytest.mark.parametrize("tile", [2.5, "512", (64, 2.0), True])
def test_a_tile_that_is_not_an_integer_is_a_type_error(tile):
    model = redkern.REDNet(2, features=2)
    with pytest.raises(TypeError, match="tile must be an int or a pair"):
        tiled(model, torch.rand(1, 1, 8, 8), tile=tile, quiet=True)
