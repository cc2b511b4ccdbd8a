"""Image files in and out, region by region where the format allows it.

Readers hand out pixels as numpy arrays ``[rows, cols, channels]`` in the file's own dtype
(uint8, uint16, float32 or float64, native byte order); writers take the same.

=========================  ======================================  ==================================
format (suffix)            reading                                 writing
=========================  ======================================  ==================================
``.npy``                   maps of only the rows a region spans    the same, space reserved up front
``.tif .tiff .btf .tf8``   uncompressed: as ``.npy``; compressed   uncompressed, as ``.npy``; BigTIFF
                           or tiled: chunk by chunk through zarr   for ``.btf``/``.tf8``, over 4 GB,
                           (decoded whole without zarr)            or when the input was BigTIFF
``.zarr`` (a directory)    chunk by chunk                          chunk by chunk
``.png .jpg .jpeg``        decoded whole (Pillow)                  encoded whole (Pillow)
=========================  ======================================  ==================================

Integer pixels mean ``[0, 1]`` scaled by 255 or 65535 (``to_float``/``from_float``); float
pixels are taken as they are. Without metadata (``.npy``, ``.zarr``) a 2- or 4-channel
image's last channel is taken to be alpha.

Nothing reaches the target path until it is complete: ``create_image`` fills a temporary
file (or directory) beside it and ``os.replace``-s it into place on success; on any error or
interrupt the temporary is removed and the target is left as it was. A write that fails (a
full disk, a file-size limit) raises ``OutputNotWritable`` naming the target and the cause.

What may be replaced (``overwrite=True``): a file, or a zarr store that redkern wrote (its
attributes say so and it holds nothing but zarr's own files). Never a directory of anything
else, and never the input (``source=``: the same path, a symlink or a hard link to it).

A process killed outright (SIGKILL, a power cut) cannot remove its temporary. Temporaries are
named ``.TARGET.PID-XXXXXXXX.part`` (and ``.old`` for a replaced zarr store moved aside), so
``stale_temporaries(target)`` finds those whose process is gone, and the next
``create_image`` of the same target removes them and logs each one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import mmap
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np

__all__ = ["open_image", "create_image", "read_image", "write_image", "sample_path",
           "check_target", "check_output", "check_output_path", "stale_temporaries", "remove_stale_temporaries", "to_float", "from_float",
           "rgb_to_ycbcr", "ycbcr_to_rgb", "ChannelPlan",
           "ImageError", "ImageNotFound", "UnsupportedFormat", "UnreadableImage",
           "OutputExists", "OutputIsInput", "OutputNotWritable", "written_by_redkern", "SUFFIXES"]

SUFFIXES = {".npy": "npy", ".tif": "tiff", ".tiff": "tiff", ".btf": "tiff", ".tf8": "tiff",
            ".zarr": "zarr", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
BIGTIFF_SUFFIXES = (".btf", ".tf8")
PIXEL_DTYPES = tuple(np.dtype(t) for t in ("uint8", "uint16", "float32", "float64"))
INTEGER_MAX = {np.dtype("uint8"): 255, np.dtype("uint16"): 65535}
ZARR_CHUNK = 512
# Written into every zarr store redkern creates: what lets --overwrite recognise one.
ZARR_WRITER_ATTRIBUTE = {"written_by": "redkern"}
log = logging.getLogger("redkern")


# --- errors: each says which file and what to do ------------------------------------------

class ImageError(Exception):
    """An image cannot be read (``reading=True``) or written; the message says why."""

    def __init__(self, message: str, *, path, reading: bool):
        super().__init__(message)
        self.path = Path(path)
        self.reading = reading


class ImageNotFound(ImageError, FileNotFoundError):
    """The input image does not exist."""


class UnsupportedFormat(ImageError):
    """No reader or writer handles this suffix, pixel type or channel count."""


class UnreadableImage(ImageError):
    """The file exists but cannot be decoded as the image its suffix promises."""


class TruncatedImage(ValueError):
    """Raised by pixel storage when a file is shorter than its header says (``open_image``
    turns it into an ``UnreadableImage`` naming the file)."""


class OutputExists(ImageError, FileExistsError):
    """The target exists and overwriting was not asked for."""


class OutputIsInput(OutputExists):
    """The target is the input image itself (by name, symlink or hard link): always refused."""


class OutputNotWritable(ImageError):
    """The target's directory is missing, not a directory, or not writable."""


def format_of(path, *, reading: bool) -> str:
    """The format name (``"npy"``, ``"tiff"``, ``"zarr"``, ``"png"``, ``"jpeg"``) of ``path``."""
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = " ".join(sorted(SUFFIXES))
        raise UnsupportedFormat(f"{path}: unsupported image format {path.suffix or '(no suffix)'!r}; "
                                f"redkern {'reads' if reading else 'writes'} {known}",
                                path=path, reading=reading)
    return fmt


# --- pixel values -------------------------------------------------------------------------

def to_float(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32: uint8 / 255, uint16 / 65535, floats as they are."""
    scale = INTEGER_MAX.get(pixels.dtype)
    if scale is None:
        return pixels.astype(np.float32, copy=False)
    return pixels.astype(np.float32) * np.float32(1 / scale)


def from_float(values: np.ndarray, dtype) -> np.ndarray:
    """Float values as pixels of ``dtype``: integers get ``round(clip(v, 0, 1) * max)``
    (round half to even), floats are cast unclipped.

    Raises ``ValueError`` when an integer output would receive NaN, which has no pixel value.
    """
    dtype = np.dtype(dtype)
    scale = INTEGER_MAX.get(dtype)
    if scale is None:
        return values.astype(dtype, copy=False)
    if np.isnan(values).any():
        raise ValueError(f"the model produced NaN, which has no {dtype} pixel value; "
                         "nothing was written (check the weights and the input)")
    return np.rint(np.clip(values, 0, 1) * scale).astype(dtype)


# ITU-R BT.601 "studio swing", as MATLAB's rgb2ycbcr, which the paper's Y channel comes from:
# Y in [16, 235] / 255, Cb and Cr in [16, 240] / 255 for RGB in [0, 1].
_YCBCR = np.array([[65.481, 128.553, 24.966],
                   [-37.797, -74.203, 112.0],
                   [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = np.array([16, 128, 128]) / 255
_RGB = np.linalg.inv(_YCBCR)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` float RGB in [0, 1] -> YCbCr on the same [0, 1] scale (BT.601, as MATLAB),
    in ``rgb``'s dtype."""
    return rgb @ _YCBCR.T.astype(rgb.dtype) + _YCBCR_OFFSET.astype(rgb.dtype)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_ycbcr``."""
    return (ycc - _YCBCR_OFFSET.astype(ycc.dtype)) @ _RGB.T.astype(ycc.dtype)


class ChannelPlan:
    """How an image's channels feed a model with ``model_channels`` channels, and come back.

    - colour channels equal to the model's: fed as they are;
    - an RGB image and a 1-channel model: the model restores the luminance (Y of YCbCr), as
      the paper did, and the chroma (Cb, Cr) is kept;
    - alpha (the last of 2 or 4 channels) never reaches the model and passes through.

    ``model_input`` turns pixels ``[h, w, C]`` into float32 ``[model_channels, h, w]``;
    ``image_output`` turns model values back into ``out_dtype`` pixels, taking chroma and
    alpha from the input pixels of the same region.
    """

    def __init__(self, image_channels: int, alpha: bool, model_channels: int, out_dtype):
        colour = image_channels - int(alpha)
        if model_channels == colour:
            self.luma = False
        elif model_channels == 1 and colour == 3:
            self.luma = True
        else:
            raise ValueError(f"a {model_channels}-channel model cannot restore an image with "
                             f"{colour} colour channel(s){' plus alpha' if alpha else ''}; "
                             f"use a {colour}-channel model" + (" or a 1-channel one" if colour == 3 else ""))
        self.colour, self.alpha, self.out_dtype = colour, alpha, np.dtype(out_dtype)

    def describe(self) -> str:
        what = ("the luminance (Y of YCbCr; chroma kept)" if self.luma
                else f"{self.colour} channel{'s' if self.colour > 1 else ''}")
        return what + (", alpha passed through" if self.alpha else "")

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        values = to_float(pixels[..., :self.colour])
        if self.luma:
            values = rgb_to_ycbcr(values)[..., :1]
        return np.ascontiguousarray(values.transpose(2, 0, 1))

    def image_output(self, values: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        values = values.transpose(1, 2, 0)
        if self.luma:
            ycc = rgb_to_ycbcr(to_float(pixels[..., :3]))
            ycc[..., :1] = values
            values = ycbcr_to_rgb(ycc)
        out = from_float(values, self.out_dtype)
        if self.alpha:
            alpha = pixels[..., -1:]
            if alpha.dtype != self.out_dtype:
                alpha = from_float(to_float(alpha), self.out_dtype)
            out = np.concatenate([out, alpha], axis=-1)
        return out


# --- pixel storage: one small class per way of holding pixels -----------------------------

def _region(shape, rows: slice, cols: slice) -> tuple[slice, slice]:
    r0, r1, rs = rows.indices(shape[0])
    c0, c1, cs = cols.indices(shape[1])
    if rs != 1 or cs != 1 or r1 <= r0 or c1 <= c0:
        raise ValueError(f"expected a non-empty region with step 1, got rows {rows}, cols {cols}")
    return slice(r0, r1), slice(c0, c1)


class _MappedPixels:
    """A C-order ``[rows, cols, channels]`` array at ``offset`` in a file, accessed through
    short-lived memory maps of only the rows a region spans: the process never maps (so never
    counts as resident) more than one region's rows at a time."""

    def __init__(self, path, offset: int, shape, dtype, *, writable: bool = False):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._offset, self._writable = offset, writable
        self._row_items = self.shape[1] * self.shape[2]
        self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        need = offset + math.prod(self.shape) * self.dtype.itemsize
        if not writable and os.fstat(self._fd).st_size < need:
            have = os.fstat(self._fd).st_size
            os.close(self._fd)
            raise TruncatedImage(f"truncated or corrupt: its pixels need {need} bytes, the file has {have}")
        if writable and hasattr(os, "posix_fallocate"):  # not on macOS or Windows
            # Reserve the blocks now: a full disk raises ENOSPC here, before any compute,
            # instead of a SIGBUS from a write through the map of a sparse file.
            try:
                os.posix_fallocate(self._fd, 0, offset + math.prod(self.shape) * self.dtype.itemsize)
            except BaseException:
                os.close(self._fd)
                raise

    def _map(self, rows: slice):
        """The map of ``rows`` and where in it their first byte lies (maps start page-aligned)."""
        start = self._offset + rows.start * self._row_items * self.dtype.itemsize
        base = start - start % mmap.ALLOCATIONGRANULARITY
        length = start - base + (rows.stop - rows.start) * self._row_items * self.dtype.itemsize
        access = mmap.ACCESS_WRITE if self._writable else mmap.ACCESS_READ
        return mmap.mmap(self._fd, length, offset=base, access=access), start - base

    def _band(self, m, skip, rows):
        count = (rows.stop - rows.start) * self._row_items
        return np.frombuffer(m, self.dtype, count, skip).reshape(-1, *self.shape[1:])

    def read(self, rows, cols):
        rows, cols = _region(self.shape, rows, cols)
        m, skip = self._map(rows)
        try:  # every view of the map is gone before it closes
            return self._band(m, skip, rows)[:, cols].astype(self.dtype.newbyteorder("="))
        finally:
            m.close()

    def write(self, rows, cols, block):
        rows, cols = _region(self.shape, rows, cols)
        m, skip = self._map(rows)
        try:
            self._band(m, skip, rows)[:, cols] = block
        finally:
            m.close()

    def finish(self):
        if self._writable:
            os.fsync(self._fd)  # on disk before the rename makes it visible

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _ArrayPixels:
    """Pixels in anything sliceable ``[rows, cols(, channels)]``: a numpy array, a zarr array."""

    def __init__(self, array, *, channels_first: bool = False, on_close=None):
        self.array, self._channels_first, self._on_close = array, channels_first, on_close
        shape = tuple(array.shape)
        if channels_first:
            shape = shape[1:] + shape[:1]
        self.shape = shape if len(shape) == 3 else shape + (1,)
        self.dtype = np.dtype(array.dtype)

    def read(self, rows, cols):
        rows, cols = _region(self.shape, rows, cols)
        if self._channels_first:
            return np.moveaxis(np.asarray(self.array[:, rows, cols]), 0, -1).astype(self.dtype.newbyteorder("="))
        block = np.asarray(self.array[rows, cols])
        return (block if block.ndim == 3 else block[..., None]).astype(self.dtype.newbyteorder("="))

    def write(self, rows, cols, block):
        rows, cols = _region(self.shape, rows, cols)
        self.array[rows, cols] = block if self.array.ndim == 3 else block[..., 0]

    def finish(self):
        pass

    def close(self):
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


# --- reading ------------------------------------------------------------------------------

class ImageReader:
    """An open image: ``height``, ``width``, ``channels``, ``dtype``, ``alpha`` (the last
    channel is alpha), ``bigtiff``, and ``read(rows, cols)`` -> ``[h, w, channels]`` pixels."""

    def __init__(self, path, pixels, fmt: str, *, alpha: bool | None = None, bigtiff: bool = False):
        self.path, self.format, self._pixels = Path(path), fmt, pixels
        self.height, self.width, self.channels = pixels.shape
        self.dtype = pixels.dtype.newbyteorder("=")
        self.alpha = self.channels in (2, 4) if alpha is None else alpha
        self.bigtiff = bigtiff

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        try:
            return self._pixels.read(rows, cols)
        except (ValueError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:  # a codec's error for damaged data (zlib, LZW, JPEG...)
            raise UnreadableImage(f"{self.path}: truncated or corrupt: rows {rows.start}-{rows.stop} cannot be "
                                  f"decoded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                                  path=self.path, reading=True) from e

    def close(self):
        self._pixels.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"ImageReader({str(self.path)!r}, {self.height}x{self.width}x{self.channels} "
                f"{self.dtype}, {self.format}{', alpha' if self.alpha else ''})")


def open_image(path) -> ImageReader:
    """Open an image for reading region by region (see the module docstring for how each
    format is read). Raises ``ImageNotFound``, ``UnsupportedFormat`` or ``UnreadableImage``."""
    path = Path(path)
    if not path.exists():
        raise ImageNotFound(f"{path}: no such file", path=path, reading=True)
    fmt = format_of(path, reading=True)
    if fmt != "zarr" and path.is_dir():
        raise UnreadableImage(f"{path}: is a directory, not a {fmt} file", path=path, reading=True)
    try:
        reader = _OPENERS[fmt](path)
    except TruncatedImage as e:
        raise UnreadableImage(f"{path}: {e}", path=path, reading=True) from e
    except (ImageError, MemoryError):
        raise
    except Exception as e:  # each library has its own errors for a damaged file
        raise UnreadableImage(f"{path}: cannot read it as {fmt}: {e}", path=path, reading=True) from e
    if reader.dtype not in PIXEL_DTYPES:
        reader.close()
        raise UnsupportedFormat(f"{path}: unsupported pixel type {reader.dtype}; redkern reads "
                                "uint8, uint16, float32 and float64", path=path, reading=True)
    return reader


def _hwc_shape(path, shape) -> tuple[int, int, int]:
    if len(shape) == 2:
        return (*shape, 1)
    if len(shape) == 3 and shape[2] <= 4:
        return tuple(shape)
    raise UnsupportedFormat(f"{path}: expected an image array [height, width] or [height, width, "
                            f"channels <= 4], got shape {tuple(shape)}", path=path, reading=True)


def _npy_header(path):
    """``(shape, fortran_order, dtype)`` of a .npy file, or an error in our words."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
    except (ValueError, EOFError, SyntaxError) as e:
        raise UnreadableImage(f"{path}: not a numeric .npy array: its header cannot be read "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                              path=path, reading=True) from None
    if dtype.hasobject:
        raise UnsupportedFormat(f"{path}: not a numeric .npy array: it holds Python objects "
                                f"(dtype {dtype}); redkern reads uint8, uint16, float32 and float64 pixels",
                                path=path, reading=True)
    return shape, fortran, dtype


def _open_npy(path) -> ImageReader:
    _npy_header(path)
    header = np.load(path, mmap_mode="r")  # maps without touching pixels; only the header is read
    shape, dtype, offset = _hwc_shape(path, header.shape), header.dtype, header.offset
    c_order = header.flags.c_contiguous
    del header
    if not c_order:  # Fortran order: rows are not contiguous, fall back to a whole-file map
        return ImageReader(path, _ArrayPixels(np.load(path, mmap_mode="r")), "npy")
    return ImageReader(path, _MappedPixels(path, offset, shape, dtype), "npy")


def _open_tiff(path) -> ImageReader:
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        page = tif.pages[0]
        alpha = bool(page.extrasamples) and int(page.extrasamples[-1]) in (1, 2)  # assoc/unassoc
        separate = page.planarconfig == 2 and page.samplesperpixel > 1
        shape = _hwc_shape(path, page.shape[1:] + page.shape[:1] if separate else page.shape)
        stored_as_is = (page.is_contiguous and page.fillorder == 1 and page.predictor == 1
                        and not page.is_subsampled)
        if stored_as_is and not separate:
            offset, dtype = page.dataoffsets[0], np.dtype(tif.byteorder + page.dtype.char)
            pixels = _MappedPixels(path, offset, shape, dtype)
            tif.close()
        else:
            pixels = _tiff_chunks(page, tif, separate)
        return ImageReader(path, pixels, "tiff", alpha=alpha and shape[2] > 1, bigtiff=tif.is_bigtiff)
    except BaseException:
        tif.close()
        raise


def _tiff_chunks(page, tif, separate: bool):
    """A compressed or tiled TIFF page, decoded chunk by chunk through zarr where it can be."""
    store = None
    if _zarr() is not None:
        try:
            store = page.aszarr()
            array = _zarr().open_array(store, mode="r")
        except Exception:  # a zarr that this tifffile cannot serve: decode the page whole
            if store is not None:
                store.close()
            store = None
    if store is None:
        pixels = _ArrayPixels(page.asarray(), channels_first=separate)
        tif.close()
        return pixels

    def close():
        store.close()
        tif.close()

    return _ArrayPixels(array, channels_first=separate, on_close=close)


def _open_zarr(path) -> ImageReader:
    zarr = _require_zarr(path, reading=True)
    array = zarr.open_array(str(path), mode="r")
    _hwc_shape(path, array.shape)
    attrs = dict(array.attrs)
    if attrs.get("written_by") == ZARR_WRITER_ATTRIBUTE["written_by"] and attrs.get("redkern_complete") is False:
        # a distributed run (redkern.distributed) writes in place and marks the store complete at the end
        raise UnreadableImage(f"{path}: an unfinished redkern output (a distributed run stopped before every "
                              "chunk was written); finish it with `redkern restore ... --resume`, or remove it",
                              path=path, reading=True)
    return ImageReader(path, _ArrayPixels(array), "zarr")


def _open_pillow(path) -> ImageReader:
    from PIL import Image

    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise UnsupportedFormat(f"{path}: too large for Pillow ({e}); convert it to .tif, .npy or "
                                ".zarr, which redkern reads tile by tile", path=path, reading=True) from e
    with im:
        if im.mode in ("RGB", "RGBA") and any(";16" in str(t[3]) for t in im.tile):
            raise UnsupportedFormat(f"{path}: 16-bit colour PNG is not supported (Pillow would "
                                    "drop it to 8 bits); convert it to a 16-bit .tif", path=path, reading=True)
        convert = {"1": "L", "P": "RGBA" if "transparency" in im.info else "RGB", "PA": "RGBA",
                   "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "La": "LA",
                   "RGBa": "RGBA", "RGBX": "RGB"}
        if im.mode in convert:
            im = im.convert(convert[im.mode])
        pixels = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and pixels.min() >= 0 and pixels.max() <= 65535):
        pixels = pixels.astype(np.uint16)
    elif im.mode not in ("L", "LA", "RGB", "RGBA", "F"):
        raise UnsupportedFormat(f"{path}: unsupported Pillow image mode {im.mode!r}", path=path, reading=True)
    return ImageReader(path, _ArrayPixels(pixels), SUFFIXES[path.suffix.lower()],
                       alpha=im.mode in ("LA", "RGBA"))


_OPENERS = {"npy": _open_npy, "tiff": _open_tiff, "zarr": _open_zarr, "png": _open_pillow,
            "jpeg": _open_pillow}


def _zarr():
    try:
        import zarr
    except ImportError:
        return None
    return zarr


def _require_zarr(path, *, reading: bool):
    zarr = _zarr()
    if zarr is None:
        raise UnsupportedFormat(f"{path}: zarr is not installed; pip install 'redkern[zarr]'",
                                path=path, reading=reading)
    return zarr


# --- writing ------------------------------------------------------------------------------

class ImageWriter:
    """A new image being filled: ``write(rows, cols, block)`` with ``block`` ``[h, w, channels]``
    in the image's dtype. Made by ``create_image``, which publishes it when complete."""

    def __init__(self, path, pixels, finish):
        self.path, self._pixels, self._finish = Path(path), pixels, finish
        self.height, self.width, self.channels = pixels.shape
        self.dtype = pixels.dtype

    def write(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.dtype != self.dtype or block.ndim != 3 or block.shape[2] != self.channels:
            raise ValueError(f"expected a [h, w, {self.channels}] {self.dtype} block, "
                             f"got {block.shape} {block.dtype}")
        try:
            self._pixels.write(rows, cols, block)
        except OSError as e:
            raise _write_failed(self.path, e) from e


def _write_failed(path: Path, error: OSError) -> "OutputNotWritable":
    return OutputNotWritable(f"{path}: writing it failed: {error.strerror or error}; "
                             "nothing was written there", path=path, reading=False)


def writable_dtype(fmt: str, dtype, channels: int, alpha: bool) -> str | None:
    """``None`` when ``fmt`` can store these pixels, else why not (one phrase)."""
    dtype = np.dtype(dtype)
    if dtype not in PIXEL_DTYPES:
        return f"pixel type {dtype} (use uint8, uint16, float32 or float64)"
    if fmt == "png" and not (dtype == np.uint8 or (dtype == np.uint16 and channels == 1)):
        return (f"{dtype} pixels with {channels} channel(s) "
                "(PNG here: 8-bit with 1-4 channels, 16-bit grayscale)")
    if fmt == "jpeg" and not (dtype == np.uint8 and channels in (1, 3) and not alpha):
        return f"{dtype} pixels with {channels} channel(s) (JPEG: 8-bit grayscale or RGB, no alpha)"
    if fmt in ("png", "jpeg", "tiff") and not 1 <= channels <= 4:
        return f"{channels} channels (at most 4)"
    return None


@contextlib.contextmanager
def create_image(path, height: int, width: int, channels: int, dtype, *, alpha: bool = False,
                 overwrite: bool = False, bigtiff: bool | None = None, source=None, checked: bool = False):
    """A context manager giving an ``ImageWriter`` for a new ``height x width x channels``
    image at ``path``, published atomically when the block exits cleanly.

    The pixels go to a temporary beside ``path``; on success it is flushed to disk and
    ``os.replace``-d onto ``path``; on an error or interrupt it is removed and the exception
    goes on. ``bigtiff``: ``None`` chooses (``.btf``/``.tf8`` suffix or over 4 GB).
    ``source``: the input image, which ``path`` must not be (``check_target``). ``checked``:
    ``check_output`` already passed for these arguments (the target is checked again, as
    always, just before it is replaced). Stale temporaries of earlier runs to ``path`` whose
    process is gone are removed first.
    Raises ``UnsupportedFormat``, ``OutputExists`` or ``OutputNotWritable`` before any
    pixel is written.
    """
    path = Path(path)
    dtype = np.dtype(dtype)
    fmt = format_of(path, reading=False) if checked else check_output(
        path, height, width, channels, dtype, alpha=alpha, overwrite=overwrite, source=source)
    if fmt == "tiff" and bigtiff is None:
        bigtiff = path.suffix.lower() in BIGTIFF_SUFFIXES
    remove_stale_temporaries(path)
    temp = _temporary(path, "part")
    pixels = None
    try:
        try:
            pixels, finish = _CREATORS[fmt](temp, (height, width, channels), dtype, alpha, bigtiff)
        except OSError as e:
            raise OutputNotWritable(f"{path}: cannot create it: {e}", path=path, reading=False) from e
        yield ImageWriter(path, pixels, finish)
        try:
            finish()
        except OSError as e:
            raise _write_failed(path, e) from e
        pixels.close()
        check_target(path, overwrite, source=source)  # again: something may have appeared meanwhile
        _publish(temp, path)
    except BaseException:
        if pixels is not None:
            with contextlib.suppress(Exception):
                pixels.close()
        _remove(temp)
        raise


def check_output_path(path, overwrite: bool = False, source=None) -> str:
    """The checks that need no pixels: the output format (returned) and the target
    (``check_target``); what a command line runs before anything else."""
    fmt = format_of(path, reading=False)
    check_target(path, overwrite, source=source)
    if fmt == "zarr":
        _require_zarr(path, reading=False)
    return fmt


def check_output(path, height: int, width: int, channels: int, dtype, *, alpha: bool = False,
                 overwrite: bool = False, source=None, path_checked: str | None = None) -> str:
    """Every check ``create_image`` makes before it writes: ``check_output_path`` (unless
    ``path_checked`` gives its answer) and whether the format can hold these pixels. Returns
    the format name."""
    path = Path(path)
    fmt = path_checked or check_output_path(path, overwrite, source)
    why = writable_dtype(fmt, np.dtype(dtype), channels, alpha)
    if why:
        raise UnsupportedFormat(f"{path}: {fmt} cannot store {why}; choose another output "
                                "format (.tif, .npy, .zarr) or pixel type", path=path, reading=False)
    return fmt


def check_target(path, overwrite: bool = False, source=None) -> None:
    """Raise ``OutputExists`` or ``OutputNotWritable`` unless a new image can go to ``path``.

    With ``overwrite`` an existing file may be replaced, or a zarr store redkern wrote;
    nothing else (a directory of other things is refused whatever it holds). ``path`` may
    never be ``source`` (the input): not by name, symlink or hard link.
    """
    path = Path(path)
    if source is not None and _same_file(source, path):
        raise OutputIsInput(f"{path}: is the input {source} itself; redkern never writes over its "
                            "input, choose another output path", path=path, reading=False)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExists(f"{path}: exists; pass overwrite=True (--overwrite) to replace it",
                               path=path, reading=False)
        if path.is_dir() and not path.is_symlink() and not written_by_redkern(path):
            raise OutputExists(f"{path}: is a directory that is not a zarr store written by redkern; "
                               "overwrite replaces only files and redkern's own zarr outputs, so "
                               "nothing was touched: choose another output path or remove it yourself",
                               path=path, reading=False)
    folder = path.parent
    if not folder.exists():
        raise OutputNotWritable(f"{path}: directory {folder} does not exist", path=path, reading=False)
    if not folder.is_dir():
        raise OutputNotWritable(f"{path}: {folder} is not a directory", path=path, reading=False)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"{path}: no permission to write in {folder}", path=path, reading=False)


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing (or unreadable): they cannot be one file
        return False


_ZARR_METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}
_ZARR_V2_CHUNK = re.compile(r"\d+(\.\d+)*")


def written_by_redkern(path) -> bool:
    """True for a zarr store redkern wrote: it opens as an array whose attributes name redkern,
    and holds nothing but zarr's metadata and chunk files (v3 ``c/0/1/0``, v2 ``0.1.0``)."""
    path = Path(path)
    zarr = _zarr()
    if zarr is None or not path.is_dir():
        return False
    try:
        attrs = dict(zarr.open_array(str(path), mode="r").attrs)
    except Exception:
        return False
    if any(attrs.get(k) != v for k, v in ZARR_WRITER_ATTRIBUTE.items()):
        return False
    for root, dirs, files in os.walk(path):
        if any(Path(root, d).is_symlink() for d in dirs):
            return False
        for name in files:
            parts = Path(root, name).relative_to(path).parts
            if not (parts[0] in _ZARR_METADATA and len(parts) == 1
                    or parts[0] == "c" and all(p.isdigit() for p in parts[1:]) and len(parts) > 1
                    or len(parts) == 1 and _ZARR_V2_CHUNK.fullmatch(parts[0])):
                return False
    return True


# --- temporaries ----------------------------------------------------------------------------

_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(part|old)")


def _temporary(path: Path, kind: str) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.PID-XXXXXXXX.KIND``."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{kind}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def stale_temporaries(path) -> list[Path]:
    """Temporaries of earlier runs to ``path`` whose process is no longer alive (killed
    outright, or the machine went down); those of running processes are not listed."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    stale = []
    for entry in entries:
        m = _TEMPORARY.fullmatch(entry.name)
        if m and m["name"] == path.name and int(m["pid"]) != os.getpid() and not _process_alive(int(m["pid"])):
            stale.append(entry)
    return sorted(stale)


def remove_stale_temporaries(path) -> list[Path]:
    """Remove ``stale_temporaries(path)``, logging each; returns what was removed."""
    removed = []
    for temp in stale_temporaries(path):
        pid = _TEMPORARY.fullmatch(temp.name)["pid"]
        _remove(temp)
        if not temp.exists():
            removed.append(temp)
            log.warning("removed %s, a temporary left by an earlier run to %s that did not finish "
                        "(its process %s is gone)", temp, Path(path).name, pid)
    return removed


def _publish(temp: Path, path: Path) -> None:
    if path.is_dir() or (temp.is_dir() and path.exists()):
        # os.replace cannot swap a directory for anything: move the old one aside first.
        old = _temporary(path, "old")
        os.replace(path, old)
        os.replace(temp, path)
        _remove(old)
    else:
        os.replace(temp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _stored_shape(shape):
    return shape[:2] if shape[2] == 1 else shape


def _create_npy(temp, shape, dtype, alpha, bigtiff):
    header = np.lib.format.open_memmap(temp, mode="w+", dtype=dtype, shape=_stored_shape(shape))
    offset = header.offset  # sparse so far: _MappedPixels reserves the blocks
    del header
    pixels = _MappedPixels(temp, offset, shape, dtype, writable=True)
    return pixels, pixels.finish


def _create_tiff(temp, shape, dtype, alpha, bigtiff):
    import tifffile

    channels = shape[2]
    extrasamples = (["unassalpha"] if alpha else ["unspecified"]) if channels in (2, 4) else None
    nbytes = shape[0] * shape[1] * channels * dtype.itemsize
    tifffile.imwrite(temp, shape=_stored_shape(shape), dtype=dtype,
                     photometric="rgb" if channels >= 3 else "minisblack", extrasamples=extrasamples,
                     bigtiff=bool(bigtiff) or nbytes > 2**32 - 2**25, metadata=None)
    with tifffile.TiffFile(temp) as tif:
        page = tif.pages[0]
        assert page.is_contiguous, "tifffile wrote a non-contiguous empty image"
        offset = page.dataoffsets[0]
    pixels = _MappedPixels(temp, offset, shape, dtype, writable=True)
    return pixels, pixels.finish


def _create_zarr(temp, shape, dtype, alpha, bigtiff):
    zarr = _zarr()
    chunks = (min(ZARR_CHUNK, shape[0]), min(ZARR_CHUNK, shape[1])) + ((shape[2],) if shape[2] > 1 else ())
    array = zarr.open_array(str(temp), mode="w", shape=_stored_shape(shape), chunks=chunks, dtype=dtype)
    array.attrs.update(ZARR_WRITER_ATTRIBUTE)
    pixels = _ArrayPixels(array)
    return pixels, pixels.finish


def _create_pillow(temp, shape, dtype, alpha, bigtiff, fmt):
    from PIL import Image

    pixels = _ArrayPixels(np.zeros(shape, dtype))  # these formats are encoded in one piece

    def finish():
        array = pixels.array[..., 0] if shape[2] == 1 else pixels.array
        options = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}
        with open(temp, "wb") as f:
            Image.fromarray(array).save(f, format=fmt, **options)
            f.flush()
            os.fsync(f.fileno())

    return pixels, finish


_CREATORS = {"npy": _create_npy, "tiff": _create_tiff, "zarr": _create_zarr,
             "png": functools.partial(_create_pillow, fmt="PNG"),
             "jpeg": functools.partial(_create_pillow, fmt="JPEG")}


# --- whole images -------------------------------------------------------------------------

def read_image(path) -> np.ndarray:
    """The whole image at ``path`` as ``[height, width, channels]`` pixels in its own dtype."""
    with open_image(path) as reader:
        return reader.read(slice(0, reader.height), slice(0, reader.width))


def write_image(path, pixels: np.ndarray, *, alpha: bool | None = None, overwrite: bool = False,
                bigtiff: bool | None = None) -> None:
    """Write ``pixels`` (``[h, w]`` or ``[h, w, channels]``) to ``path`` atomically.
    ``alpha``: whether the last channel is alpha (default: 2 or 4 channels)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3:
        raise ValueError(f"expected [h, w] or [h, w, channels] pixels, got shape {pixels.shape}")
    h, w, c = pixels.shape
    with create_image(path, h, w, c, pixels.dtype, alpha=c in (2, 4) if alpha is None else alpha,
                      overwrite=overwrite, bigtiff=bigtiff) as out:
        out.write(slice(0, h), slice(0, w), pixels)


def sample_path() -> Path:
    """The bundled sample: ``camera.png``, a 256x256 8-bit grayscale crop of the "camera"
    photograph from scikit-image's data (public domain, CC0)."""
    return Path(__file__).with_name("data") / "camera.png"
