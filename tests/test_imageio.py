"""Image files: every format and pixel type round-trips; restore_file keeps type, chroma, alpha."""

import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch

import redkern
from redkern import imageio
from redkern.imageio import (ChannelPlan, OutputExists, OutputNotWritable, UnreadableImage, UnsupportedFormat,
                             create_image, from_float, open_image, read_image, to_float, write_image)
from redkern.tiling import restore_file


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())  # conftest prints the seed on failure


def random_pixels(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def odd_shape(rng, channels, low=1):
    return (int(rng.integers(low, 80)) * 2 + 1, int(rng.integers(low, 80)) * 2 + 1, channels)


# --- pixel values -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_every_integer_value_survives_float_and_back(dtype):
    values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    assert np.array_equal(from_float(to_float(values), dtype), values)


def test_float_to_integer_clips_and_rounds():
    v = np.array([-0.3, 0.0, 0.49 / 255, 0.51 / 255, 1.5 / 255, 2.5 / 255, 254.6 / 255, 1.0, 7.0], np.float32)
    assert from_float(v, np.uint8).tolist() == [0, 0, 0, 1, 2, 2, 255, 255, 255]  # half to even
    assert from_float(np.array([0.5, 1.2], np.float32), np.uint16).tolist() == [32768, 65535]


def test_float_outputs_are_not_clipped_and_nan_has_no_integer_value():
    v = np.array([-0.5, 1.5, np.nan], np.float32)
    out = from_float(v, np.float32)
    assert out[:2].tolist() == [-0.5, 1.5] and np.isnan(out[2])
    with pytest.raises(ValueError, match="NaN"):
        from_float(v, np.uint8)


def test_ycbcr_is_matlabs_and_inverts(rng):
    ycc = imageio.rgb_to_ycbcr(np.array([[0.0, 0, 0], [1, 1, 1]]))
    np.testing.assert_allclose(ycc * 255, [[16, 128, 128], [235, 128, 128]], atol=1e-9)
    rgb = rng.random((50, 3)).astype(np.float32)
    np.testing.assert_allclose(imageio.ycbcr_to_rgb(imageio.rgb_to_ycbcr(rgb)), rgb, atol=1e-6)


# --- formats ------------------------------------------------------------------------------

LOSSLESS = [(".png", "uint8", c) for c in (1, 2, 3, 4)] + [(".png", "uint16", 1)] + \
    [(s, d, c) for s in (".tif", ".btf", ".npy", ".zarr") for d in ("uint8", "uint16", "float32") for c in (1, 3, 4)] + \
    [(".npy", "float64", 2), (".tiff", "float64", 1)]


@pytest.mark.parametrize("suffix,dtype,channels", LOSSLESS)
def test_lossless_round_trip(tmp_path, rng, suffix, dtype, channels):
    pixels = random_pixels(rng, odd_shape(rng, channels), dtype)
    path = tmp_path / f"image{suffix}"
    write_image(path, pixels)
    with open_image(path) as image:
        assert (image.height, image.width, image.channels, image.dtype) == (*pixels.shape, pixels.dtype)
        assert image.alpha == (channels in (2, 4))
        r, c = slice(1, pixels.shape[0] - 1), slice(2, pixels.shape[1])  # a region, not just the whole
        assert np.array_equal(image.read(r, c), pixels[r, c])
    assert np.array_equal(read_image(path), pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_close(tmp_path, rng, channels):
    h, w, _ = odd_shape(rng, channels)
    smooth = np.linspace(0, 1, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    pixels = from_float(np.broadcast_to(smooth, (h, w, channels)).astype(np.float32), np.uint8)
    write_image(tmp_path / "a.jpg", pixels)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == pixels.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - pixels).mean() < 1.5


def test_bigtiff_by_suffix_and_by_request(tmp_path, rng):
    pixels = random_pixels(rng, (33, 17, 1), np.uint16)
    write_image(tmp_path / "a.btf", pixels)
    write_image(tmp_path / "b.tif", pixels, bigtiff=True)
    write_image(tmp_path / "c.tif", pixels)
    assert [tifffile.TiffFile(tmp_path / n).is_bigtiff for n in ("a.btf", "b.tif", "c.tif")] == [True, True, False]
    assert open_image(tmp_path / "b.tif").bigtiff


@pytest.mark.parametrize("kwargs", [dict(tile=(16, 16), compression="zlib"), dict(compression="zlib", rowsperstrip=8),
                                    dict(planarconfig="separate"), dict(byteorder=">"), dict(predictor=True,
                                                                                             compression="zlib")])
def test_tiffs_from_elsewhere_read_by_region(tmp_path, rng, kwargs):
    pixels = random_pixels(rng, (75, 61, 3), np.uint16)
    stored = pixels.transpose(2, 0, 1) if kwargs.get("planarconfig") == "separate" else pixels  # [C, H, W]
    tifffile.imwrite(tmp_path / "a.tif", stored, photometric="rgb", **kwargs)
    with open_image(tmp_path / "a.tif") as image:
        assert (image.height, image.width, image.channels) == pixels.shape
        assert np.array_equal(image.read(slice(10, 47), slice(3, 60)), pixels[10:47, 3:60])


def test_compressed_tiff_without_zarr_is_decoded_whole(tmp_path, rng, monkeypatch):
    pixels = random_pixels(rng, (40, 52, 1), np.float32)
    tifffile.imwrite(tmp_path / "a.tif", pixels[..., 0], compression="zlib")
    monkeypatch.setattr(imageio, "_zarr", lambda: None)
    assert np.array_equal(read_image(tmp_path / "a.tif"), pixels)
    with pytest.raises(UnsupportedFormat, match="zarr is not installed"):
        write_image(tmp_path / "a.zarr", pixels)


def test_fortran_order_and_big_endian_npy(tmp_path, rng):
    pixels = random_pixels(rng, (21, 34, 3), np.float32)
    np.save(tmp_path / "f.npy", np.asfortranarray(pixels))
    np.save(tmp_path / "b.npy", pixels.astype(">f4"))
    for name in ("f.npy", "b.npy"):
        back = read_image(tmp_path / name)
        assert back.dtype == np.float32 and back.dtype.isnative and np.array_equal(back, pixels), name


def _png_rgb16(path, pixels):
    """A 16-bit RGB PNG, written by hand (Pillow cannot write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_colour_png_is_refused_not_truncated(tmp_path, rng):
    _png_rgb16(tmp_path / "a.png", random_pixels(rng, (5, 7, 3), np.uint16))
    with pytest.raises(UnsupportedFormat, match="16-bit colour PNG") as e:
        open_image(tmp_path / "a.png")
    assert e.value.reading


def test_missing_unsupported_and_damaged_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_image(tmp_path / "nothing.png")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(UnsupportedFormat, match="unsupported image format '.gif'"):
        open_image(tmp_path / "a.gif")
    for name, data in (("bad.png", b"not a png"), ("bad.tif", b"II*\0garbage"), ("bad.npy", b"\x93NUMPY..."),
                       ("bad.jpg", b"\xff\xd8\xff")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnreadableImage, match=name) as e:
            open_image(tmp_path / name)
        assert e.value.reading
    np.save(tmp_path / "int.npy", np.zeros((4, 4), np.int16))
    with pytest.raises(UnsupportedFormat, match="int16"):
        open_image(tmp_path / "int.npy")
    np.save(tmp_path / "5d.npy", np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(UnsupportedFormat, match="shape"):
        open_image(tmp_path / "5d.npy")


def test_outputs_that_cannot_be_written(tmp_path):
    pixels = np.zeros((4, 4), np.uint8)
    (tmp_path / "there.png").write_bytes(b"old")
    with pytest.raises(OutputExists, match="exists"):
        write_image(tmp_path / "there.png", pixels)
    assert (tmp_path / "there.png").read_bytes() == b"old"
    write_image(tmp_path / "there.png", pixels, overwrite=True)
    assert np.array_equal(read_image(tmp_path / "there.png")[..., 0], pixels)
    with pytest.raises(OutputNotWritable, match="does not exist"):
        write_image(tmp_path / "no" / "dir.png", pixels)
    with pytest.raises(OutputNotWritable, match="not a directory"):
        write_image(tmp_path / "there.png" / "x.png", pixels)
    with pytest.raises(UnsupportedFormat, match="JPEG") as e:
        write_image(tmp_path / "a.jpg", pixels.astype(np.uint16))
    assert not e.value.reading
    with pytest.raises(UnsupportedFormat, match="PNG"):
        write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(UnsupportedFormat, match="'.bmp'"):
        write_image(tmp_path / "a.bmp", pixels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.png"]


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".png", ".zarr"])
def test_an_image_abandoned_midway_leaves_nothing(tmp_path, suffix):
    target = tmp_path / f"out{suffix}"
    with pytest.raises(KeyboardInterrupt):
        with create_image(target, 20, 30, 1, np.uint8) as out:
            out.write(slice(0, 10), slice(0, 30), np.ones((10, 30, 1), np.uint8))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_zarr_directory_is_replaced_whole(tmp_path, rng):
    target = tmp_path / "out.zarr"
    write_image(target, random_pixels(rng, (40, 40, 3), np.uint8))
    new = random_pixels(rng, (9, 11), np.uint16)
    write_image(target, new, overwrite=True)
    assert np.array_equal(read_image(target)[..., 0], new)
    assert [p.name for p in tmp_path.iterdir()] == ["out.zarr"]


# --- restore_file: types, chroma and alpha ------------------------------------------------

def identity_red(channels):
    """A RED model that returns its input exactly: all weights zero, so net(x) = 0."""
    model = redkern.REDNet(depth=2, channels=channels, features=4)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    return model.eval()


class AddToAll(torch.nn.Module):
    """y = x + shift: a 0-radius stand-in for a model that changes values."""

    receptive_field_radius = 0

    def __init__(self, channels, shift):
        super().__init__()
        self.channels, self.shift = channels, shift

    def forward(self, x):
        return x + self.shift


IDENTITY_CASES = [(".png", "uint8", 1), (".png", "uint8", 3), (".png", "uint16", 1), (".png", "uint8", 4),
                  (".tif", "uint16", 3), (".tif", "float32", 1), (".btf", "uint8", 2), (".npy", "float32", 3),
                  (".npy", "uint16", 1), (".zarr", "uint8", 3), (".zarr", "float32", 1), (".tif", "float32", 3)]


@pytest.mark.parametrize("suffix,dtype,channels,model_channels",
                         [(*case, m) for case in IDENTITY_CASES for m in (1, 3) if m == 1 or case[2] in (3, 4)])
def test_restoring_with_an_identity_model_gives_back_the_same_pixels(tmp_path, rng, suffix, dtype, channels,
                                                                     model_channels):
    colour = channels - (channels in (2, 4))
    pixels = random_pixels(rng, odd_shape(rng, channels, low=12), dtype)  # larger than a tile
    source, target = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    write_image(source, pixels)
    run = restore_file(identity_red(model_channels), source, target, tile=24, batch=2, quiet=True)
    back = read_image(target)
    assert back.dtype == pixels.dtype and back.shape == pixels.shape
    if model_channels == colour or np.dtype(dtype).kind != "f":
        assert np.array_equal(back, pixels)  # luma of integer pixels rounds back exactly
    else:
        np.testing.assert_allclose(back, pixels, atol=1e-5)
    assert run.tiles > 1 and (run.height, run.width) == pixels.shape[:2]


def test_a_colour_image_and_a_one_channel_model_change_only_the_luminance(tmp_path, rng):
    pixels = rng.uniform(0.2, 0.7, (37, 45, 3)).astype(np.float32)
    write_image(tmp_path / "in.tif", pixels)
    restore_file(AddToAll(1, 0.1), tmp_path / "in.tif", tmp_path / "out.tif", tile=16, quiet=True)
    before, after = imageio.rgb_to_ycbcr(pixels), imageio.rgb_to_ycbcr(read_image(tmp_path / "out.tif"))
    np.testing.assert_allclose(after[..., 0], before[..., 0] + 0.1, atol=1e-5)
    np.testing.assert_allclose(after[..., 1:], before[..., 1:], atol=1e-5)


@pytest.mark.parametrize("channels,model_channels", [(4, 3), (4, 1), (2, 1)])
def test_alpha_passes_through_untouched(tmp_path, rng, channels, model_channels):
    pixels = random_pixels(rng, odd_shape(rng, channels), np.uint8)
    write_image(tmp_path / "in.png", pixels)
    restore_file(AddToAll(model_channels, 0.25), tmp_path / "in.png", tmp_path / "out.png", tile=32, quiet=True)
    back = read_image(tmp_path / "out.png")
    assert np.array_equal(back[..., -1], pixels[..., -1])
    assert not np.array_equal(back[..., :-1], pixels[..., :-1])


def test_output_pixel_type_can_differ(tmp_path, rng):
    pixels = random_pixels(rng, (29, 31, 1), np.uint16)
    write_image(tmp_path / "in.tif", pixels)
    restore_file(identity_red(1), tmp_path / "in.tif", tmp_path / "f.npy", out_dtype="float32", tile=16, quiet=True)
    restore_file(identity_red(1), tmp_path / "in.tif", tmp_path / "b.png", out_dtype="uint8", tile=16, quiet=True)
    np.testing.assert_allclose(read_image(tmp_path / "f.npy"), pixels / 65535, atol=1e-7)
    assert np.array_equal(read_image(tmp_path / "b.png"), np.rint(pixels / 65535 * 255).astype(np.uint8))


def test_a_model_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="a 3-channel model cannot restore an image with 1 colour channel"):
        ChannelPlan(1, False, 3, np.uint8)
    with pytest.raises(ValueError, match="plus alpha"):
        ChannelPlan(4, True, 2, np.uint8)


def test_the_bundled_sample_is_a_small_natural_image():
    path = imageio.sample_path()
    assert path.stat().st_size < 200_000
    pixels = read_image(path)
    assert pixels.shape == (256, 256, 1) and pixels.dtype == np.uint8
    assert pixels.std() > 30  # a photograph, not a flat test card
