"""Tiled inference of upsamplers (scale > 1) equals whole-image inference; the scale and the
receptive field in input pixels are read off the layer plan and match the impulse response."""

import random

import numpy as np
import pytest
import torch
from torch import nn

import redkern
from redkern import imageio
from redkern import testing as T
from redkern.networks import create_model
from redkern.tiling import (
    InexactTilingWarning,
    plan_tiles,
    prepare_restore,
    receptive_field,
    restore_file,
    tiled,
)

REL = 1e-5  # fp32, relative to the largest output

# name, options (small), scale, reach ((up, down), (left, right)) in input pixels.
# EDSR: head 1 + 2 blocks x 2 + body conv 1 + upsampling conv(s) at the input's resolution 1
# (x4: one more at x2, 1/2) + tail 3x3 at the output's resolution (1/s): ceil(7 + ...) = 8.
# SRResNet: 9x9 head 4 + 2 x 2 + 1 + 1 + 1/2 + tail 9x9 at x4 4/4 = 11.5 -> 12.
# FSRCNN x3: 5x5 2 + 2 x 3x3 2, then the 9x9 stride-3 deconvolution (padding 4) reaches
# 1 input pixel up and 2 down: (5, 6), not symmetric.
ZOO = {
    "edsr_x2": ("edsr_baseline", {"scale": 2, "n_blocks": 2, "features": 8}, 2, ((8, 8), (8, 8))),
    "edsr_x3": ("edsr_baseline", {"scale": 3, "n_blocks": 2, "features": 8}, 3, ((8, 8), (8, 8))),
    "edsr_x4": ("edsr_baseline", {"scale": 4, "n_blocks": 2, "features": 8}, 4, ((8, 8), (8, 8))),
    "srresnet_x4": ("srresnet", {"n_blocks": 2, "features": 8}, 4, ((12, 12), (12, 12))),
    "srresnet_x2": ("srresnet", {"scale": 2, "n_blocks": 2, "features": 8}, 2, ((12, 12), (12, 12))),
    "espcn_x3": ("espcn", {"n1": 16, "n2": 8}, 3, ((4, 4), (4, 4))),
    "fsrcnn_x3": ("fsrcnn", {"d": 8, "s": 4, "m": 2}, 3, ((5, 6), (5, 6))),
    "fsrcnn_x2": ("fsrcnn", {"scale": 2, "d": 8, "s": 4, "m": 2}, 2, ((6, 6), (6, 6))),
    "srcnn_same": ("srcnn", {"n1": 8, "n2": 4, "padding": "same"}, 1, ((6, 6), (6, 6))),
    "vdsr": ("vdsr", {"depth": 5, "features": 8}, 1, ((5, 5), (5, 5))),
    "dncnn_s": ("dncnn_s", {"depth": 5, "features": 8}, 1, ((5, 5), (5, 5))),
    "red10": ("red10", {"features": 8}, 1, ((10, 10), (10, 10))),
}
UPSAMPLERS = ["edsr_x2", "edsr_x3", "edsr_x4", "srresnet_x4", "espcn_x3", "fsrcnn_x3"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (conftest.one_thread)."""


def build(case: str) -> nn.Module:
    name, options, _, _ = ZOO[case]
    return T.randomize_(create_model(name, **options)).eval()


def in_channels(model) -> int:
    return next(m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)).in_channels


def whole(model, x):
    with torch.no_grad():
        return model(x)


def rng():
    return random.Random(torch.initial_seed())  # conftest seeds torch and prints the seed on failure


# --- the plan knows the scale and the radius ----------------------------------------------

@pytest.mark.parametrize("case", list(ZOO))
def test_scale_and_reach_are_read_off_the_plan(case):
    _, _, scale, reach = ZOO[case]
    model = build(case)
    plan = redkern.plan(model)
    geometry = plan.geometry()
    assert plan.scale() == scale and geometry.scale == (scale, scale)
    assert geometry.reach == reach and geometry.problem is None and geometry.size_offset == (0, 0)
    assert plan.receptive_field_radius() == max(max(axis) for axis in reach)
    field = receptive_field(model)
    assert (field.radius, field.scale) == (plan.receptive_field_radius(), scale)
    fused = redkern.fuse(model)
    assert fused.plan.geometry() == geometry
    assert (receptive_field(fused).radius, receptive_field(fused).scale) == (field.radius, scale)


def impulse_reach(model, scale: int, radius: int):
    """``((up, down), (left, right))`` measured: change one input pixel and see which output
    blocks (``scale x scale`` pixels over one input pixel) move. An input pixel ``i`` moves the
    blocks ``i - down .. i + up``, so the sides come back mirrored."""
    size = 2 * radius + 9
    x = torch.rand(1, in_channels(model), size, size, dtype=torch.float64) + 0.5
    i = size // 2
    moved = x.clone()
    moved[:, :, i, i] += 1.0
    hit = ((whole(model, moved) - whole(model, x)) != 0).any(0).any(0).nonzero()
    rows, cols = hit[:, 0] // scale, hit[:, 1] // scale
    return ((int(rows.max()) - i, i - int(rows.min())), (int(cols.max()) - i, i - int(cols.min())))


@pytest.mark.parametrize("case", list(ZOO))
def test_reach_is_the_impulse_response(case):
    """Tight on every side for every network: exact interval arithmetic on each value's grid
    (a conv of radius k after a x r shuffle adds k / r, rounded up only once, on the input's
    grid). Positive weights and biases on a positive input, so no ReLU or cancellation hides
    a dependency (BatchNorms and PReLUs stay random: a PReLU never zeroes its input)."""
    name, options, scale, reach = ZOO[case]
    model = create_model(name, **options).double().eval()
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.weight.requires_grad:  # not EDSR's mean shift
            nn.init.uniform_(m.weight, 0.01, 0.1)
            if m.bias is not None:
                nn.init.uniform_(m.bias, 0.0, 0.01)
    measured = impulse_reach(model, scale, redkern.plan(model).receptive_field_radius())
    assert measured == reach


def test_unpadded_srcnn_trims_its_border_evenly():
    """Valid convolutions: output pixel o reads input o .. o + 12 and the output is 12 pixels
    smaller, so o lies over input pixel o + 6 and reaches 6 either way from there."""
    geometry = redkern.plan(create_model("srcnn", n1=8, n2=4)).geometry()
    assert geometry.size_offset == (-12, -12) and geometry.scale == (1, 1) and geometry.problem is None
    assert geometry.trim == 6 and geometry.reach == ((6, 6), (6, 6))
    assert receptive_field(create_model("srcnn")).trim == 6
    assert receptive_field(create_model("srcnn_955")).trim == 8  # 9-5-5: 4 + 2 + 2


# --- tiled == whole image ------------------------------------------------------------------

def odd_case(radius: int, r: random.Random, tile: int | None = None):
    """A window, and an image size a few pixels past what windows of ``tile`` cover with a
    whole number of steps: at least three windows an axis, of a size between, on cores of
    unequal sizes."""
    tile = tile or 2 * radius + r.randint(3, 7)
    step = tile - 2 * radius
    size = tile + step * r.randint(1, 3) + r.randint(1, max(1, min(step, radius) - 1))
    return tile, size


def assert_windows_are_tight(tiles, halo):
    """Three windows or more an axis, and some core edge inside the image with exactly
    ``halo`` pixels of context: a halo one pixel short changes that pixel."""
    for axis in (0, 1):
        length = max(t.window[axis].stop for t in tiles)
        starts = sorted({t.window[axis].start for t in tiles})
        context = [t.core[axis].start - t.window[axis].start for t in tiles if t.window[axis].start > 0] + \
                  [t.window[axis].stop - t.core[axis].stop for t in tiles if t.window[axis].stop < length]
        assert len(starts) > 2 and min(context) == halo, (axis, starts, context, halo)


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("case", UPSAMPLERS)
def test_upsampler_tiles_exactly(case, fused):
    _, _, scale, _ = ZOO[case]
    r = rng()
    model = build(case)
    model = redkern.fuse(model) if fused else model
    radius = receptive_field(model).radius
    tile, h = odd_case(radius, r)
    _, w = odd_case(radius, r, tile)
    x = torch.rand(r.choice((1, 2)), in_channels(model), h, w)
    tiles = plan_tiles(h, w, tile, radius, scale)
    assert_windows_are_tight(tiles, radius)
    want = whole(model, x)
    assert want.shape[2:] == (scale * h, scale * w)
    got = tiled(model, x, tile=tile, batch=r.randint(1, 3), quiet=True)
    T.assert_close(got, want, REL)


@pytest.mark.parametrize("case", ["edsr_x3", "fsrcnn_x3"])
def test_fused_tiles_equal_the_reference_whole_image(case):
    model = build(case)
    x = torch.rand(1, in_channels(model), 37, 29)
    radius = receptive_field(model).radius
    got = tiled(redkern.fuse(model), x, tile=(2 * radius + 5, 2 * radius + 8), quiet=True)
    T.assert_close(got, whole(model, x), REL)


@pytest.mark.parametrize("case", UPSAMPLERS)
def test_a_halo_one_pixel_short_differs(case):
    """The negative control: with one pixel less of context than the plan's radius, tiles
    differ from the whole image by more than tiling's tolerance (for FSRCNN on the side that
    reaches further)."""
    r = rng()
    model = build(case)
    radius = receptive_field(model).radius
    tile, h = odd_case(radius, r)
    x = torch.rand(1, in_channels(model), h, h)
    want = whole(model, x)
    with pytest.raises(ValueError, match="allow_inexact"):
        tiled(model, x, tile=tile, halo=radius - 1, quiet=True)
    with pytest.warns(InexactTilingWarning, match=f"receptive field radius {radius}"):
        short = tiled(model, x, tile=tile, halo=radius - 1, allow_inexact=True, quiet=True)
    # Far outside the tolerance exact tiles are held to; how far depends on the random weights
    # (the outermost pixel's weight in the output decays with depth: seed 2006123286 gave 9.6e-4).
    assert T.max_rel_error(short, want) > 10 * REL
    T.assert_close(tiled(model, x, tile=tile, quiet=True), want, REL)


def test_tiles_of_an_upsampler_place_their_output_at_scale_times_the_core():
    tiles = plan_tiles(50, 31, 20, 4, scale=3)
    assert tiles == [t.__class__(t.window, t.core, 3) for t in plan_tiles(50, 31, 20, 4)]
    covered = np.zeros((150, 93), int)
    for t in tiles:
        (rows, cols), (crop_rows, crop_cols) = t.out_core, t.out_crop
        assert (rows.stop - rows.start, cols.stop - cols.start) == (crop_rows.stop - crop_rows.start,
                                                                     crop_cols.stop - crop_cols.start)
        assert crop_rows.start == 3 * (t.core[0].start - t.window[0].start)
        covered[rows, cols] += 1
    assert (covered == 1).all()
    with pytest.raises(ValueError, match="scale must be an integer >= 1"):
        plan_tiles(50, 31, 20, 4, scale=0)


def test_three_dimensional_input_and_a_whole_image_window():
    model = build("espcn_x3")
    x = torch.rand(1, 23, 19)
    got = tiled(model, x, tile=64, quiet=True)  # one window: the whole image
    assert got.shape == (1, 69, 57)
    T.assert_close(got, whole(model, x[None])[0], REL)


# --- files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".zarr", ".tif"])
def test_restore_file_of_an_upsampler_equals_whole_image(tmp_path, suffix):
    model = build("edsr_x2")
    pixels = np.random.default_rng(torch.initial_seed()).random((43, 37, 3), dtype=np.float32)
    source, target = tmp_path / "in.npy", tmp_path / f"out{suffix}"
    np.save(source, pixels)
    run = restore_file(model, source, target, tile=2 * 8 + 7, quiet=True)
    assert (run.height, run.width, run.scale) == (43, 37, 2) and run.tiles > 4
    want = whole(model, torch.from_numpy(pixels).permute(2, 0, 1)[None])[0].permute(1, 2, 0)
    with imageio.open_image(target) as written:
        assert (written.height, written.width, written.channels) == (86, 74, 3)
        got = torch.from_numpy(written.read(slice(0, 86), slice(0, 74)).astype(np.float32))
    T.assert_close(got, want, REL)


def test_restore_luminance_at_x3_repeats_chroma_and_alpha(tmp_path):
    """An RGBA image and a 1-channel x3 model: Y is upsampled by the model, chroma and alpha
    repeated 3 x 3, tile by tile exactly as on the whole image."""
    model = build("fsrcnn_x3")
    pixels = np.random.default_rng(torch.initial_seed()).random((31, 26, 4), dtype=np.float32)
    source, target = tmp_path / "in.npy", tmp_path / "out.zarr"
    np.save(source, pixels)
    with imageio.open_image(source) as reader:
        assert reader.alpha  # 4 channels: RGB and alpha
        job = prepare_restore(model, reader, target, tile=19, quiet=True)
        assert job.scale == 3 and len(job.tiles) > 2
        job.run()
        channels = job.channels
    y = whole(model, torch.from_numpy(channels.model_input(pixels))[None])[0].numpy()
    want = channels.image_output(y, pixels.repeat(3, axis=0).repeat(3, axis=1))
    with imageio.open_image(target) as written:
        got = written.read(slice(0, 93), slice(0, 78))
    np.testing.assert_allclose(got, want, atol=REL * np.abs(want).max(), rtol=0)


def test_the_target_is_made_at_the_output_size(tmp_path):
    model = build("espcn_x3")
    source = tmp_path / "in.npy"
    np.save(source, np.zeros((10, 12), np.float32))
    with imageio.open_image(source) as reader:
        job = prepare_restore(model, reader, tmp_path / "out.npy", tile=16, quiet=True)
        assert job.scale == 3
        run = job.run()
    assert np.load(tmp_path / "out.npy").shape[:2] == (30, 36) and run.scale == 3


# --- what cannot be tiled exactly is refused, with the reason -----------------------------

@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
@pytest.mark.parametrize("name,trim", [("srcnn", 6), ("srcnn_955", 8)])
def test_unpadded_srcnn_tiles_exactly(name, trim, fused):
    """Cores keep only what the whole image has output for (``trim`` in from each border) and
    land ``trim`` pixels up and left; odd sizes whose last piece is thinner than the halo."""
    r = rng()
    model = T.randomize_(create_model(name, n1=8, n2=4)).eval()
    model = redkern.fuse(model) if fused else model
    tile, h = odd_case(trim, r)
    _, w = odd_case(trim, r, tile)
    tiles = plan_tiles(h, w, tile, trim, 1, trim)
    assert_windows_are_tight(tiles, trim)
    cores = torch.zeros(h - 2 * trim, w - 2 * trim, dtype=torch.int64)
    for t in tiles:
        cores[t.out_core] += 1
    assert bool((cores == 1).all())  # the output covered exactly once
    x = torch.rand(r.choice((1, 2)), 1, h, w)
    want = whole(model, x)
    assert want.shape[2:] == (h - 2 * trim, w - 2 * trim)
    T.assert_close(tiled(model, x, tile=tile, batch=r.randint(1, 3), quiet=True), want, REL)


def test_restore_file_of_an_unpadded_srcnn_writes_the_smaller_image(tmp_path):
    model = T.randomize_(create_model("srcnn", n1=8, n2=4)).eval()
    pixels = np.random.default_rng(torch.initial_seed()).random((41, 30, 3), dtype=np.float32)
    np.save(tmp_path / "in.npy", pixels)
    run = restore_file(model, tmp_path / "in.npy", tmp_path / "out.npy", tile=20, quiet=True)
    assert run.output_size == (29, 18) and run.trim == 6 and run.tiles > 4
    got = np.load(tmp_path / "out.npy")
    assert got.shape == (29, 18, 3)
    y = imageio.ChannelPlan(3, False, 1, np.dtype(np.float32))  # the luminance the model restores
    luma = torch.from_numpy(y.model_input(pixels))[None]
    want = y.image_output(whole(model, luma)[0].numpy(), pixels[6:-6, 6:-6])
    np.testing.assert_allclose(got, want, rtol=0, atol=REL * np.abs(want).max())


def test_a_halo_below_the_trim_and_a_too_small_image_are_refused():
    model = create_model("srcnn", n1=8, n2=4)
    with pytest.raises(ValueError, match="halo 5 is smaller than the model's receptive field radius 6"):
        tiled(model, torch.rand(1, 1, 40, 40), tile=30, halo=5, quiet=True)
    with pytest.raises(ValueError, match=r"a 12x40 image leaves no output: the network drops 6 pixels"):
        tiled(model, torch.rand(1, 1, 12, 40), tile=30, quiet=True)


def test_a_transposed_conv_without_output_padding_is_refused():
    model = create_model("fsrcnn", d=8, s=4, m=2)
    model.deconv.output_padding = (0, 0)  # out = 3 in - 2
    with pytest.raises(ValueError, match="FSRCNN cannot be tiled exactly: its output is 94x94 for a 32x32 input, "
                                         "not 96x96"):
        tiled(model, torch.rand(1, 1, 40, 40), tile=30, quiet=True)


class Stretch(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.up = nn.Upsample(scale_factor=factor)

    def forward(self, x):
        return self.up(self.conv(x))


def test_unequal_and_fractional_scales_are_refused():
    with pytest.raises(ValueError, match="Stretch cannot be tiled exactly: the output has 2 rows per input row but "
                                         "1 columns"):
        tiled(Stretch((2, 1)), torch.rand(1, 1, 20, 20), tile=10, quiet=True)
    down_up = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.PixelShuffle(2))
    with pytest.raises(ValueError, match="Sequential cannot be tiled exactly: .* 1/2 x 1/2 of the input's resolution"):
        tiled(down_up, torch.rand(1, 1, 20, 20), tile=10, quiet=True)


def test_nearest_upsampling_tiles_exactly():
    model = Stretch(2).eval()
    assert redkern.plan(model).geometry().reach == ((1, 1), (1, 1))
    x = torch.rand(1, 1, 21, 17)
    T.assert_close(tiled(model, x, tile=7, quiet=True), whole(model, x), REL)


class Unplanned(nn.Module):
    """A x2 upsampler whose scale the planner does not model (``F.interpolate``)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        return nn.functional.interpolate(self.conv(x), scale_factor=2)


def test_an_unknown_scale_is_caught_on_the_first_tile():
    with pytest.raises(ValueError, match="pass halo="):
        tiled(Unplanned(), torch.rand(1, 1, 20, 20), tile=10, quiet=True)
    # 20 px in windows of at most 10 with a halo of 1: three of 8
    with pytest.raises(ValueError, match=r"Unplanned turned a tile batch of shape \(1, 1, 8, 8\) into "
                                         r"\(1, 1, 16, 16\); tiling needs outputs of 8x8 pixels"):
        tiled(Unplanned(), torch.rand(1, 1, 20, 20), tile=10, halo=1, quiet=True)


def test_peak_bytes_count_the_upsampled_maps():
    """The working set of one window, as the executor checks it, grows with the scale."""
    plan = redkern.plan(build("edsr_x3"))
    small, _ = plan.peak_bytes((1, 3, 20, 20), 4)
    large, _ = plan.peak_bytes((1, 3, 40, 40), 4)
    assert large == 4 * small
    # the x3 shuffle's output: 8 features at 60x60, and the tail conv's 3 channels beside it
    assert small >= (8 + 3) * 60 * 60 * 4
