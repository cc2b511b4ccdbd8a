"""Exact tiled restoration on a Dask cluster: one task per output chunk.

    import redkern.distributed as rd
    with rd.connect("tcp://scheduler:8786") as client:         # or "local:4", or a Client
        rd.restore("in.zarr", "out.zarr", "red30.pt", client=client)
    rd.restore("in.zarr", "out.zarr", model, resume=True)       # client=None: in this process

    y = rd.restored(dask.array.from_zarr("in.zarr"), model)     # lazy, for graphs of your own

    redkern restore in.zarr out.zarr --weights red30.pt --scheduler tcp://scheduler:8786
    redkern restore in.zarr out.zarr --task denoise --scheduler local:2 --resume

**The grid.** Tile cores lie on a regular lattice of ``core = tile - 2 * halo`` pixels from the
image's top-left corner; each tile's window is its core grown by ``halo`` on every side and
clipped at the true border (never padded: the model sees the zero padding it sees on the
whole image). The grid is ``plan_grid(height, width, tile, halo)``; it does not depend on the
chunking, so every chunking gives the same bytes, and the single-process engine run on the same
grid (``tiling.prepare_restore(...)`` with its ``tiles`` replaced by ``plan_grid``) gives them
too. Against whole-image inference the result is equal to float rounding, as for any tiling.
(``redkern restore`` without ``--scheduler`` uses ``tiling.plan_tiles``, whose windows are all
of one size, the smallest that covers: equal to this one to float rounding, not bit for bit.)

**Chunks and tasks.** The output zarr's chunks are multiples of the core (``chunk``, chosen
near 1024 px by default; a user's own output array whose chunks are not multiples is refused,
``MisalignedChunks``), so every tile core lies in exactly one chunk. One task per output chunk
reads the windows of its cores (the chunk plus ``halo``, clipped at the border) straight from
the source, runs the model tile by tile, and writes its one chunk: no two tasks write the same
chunk, and nothing is rechunked. zarr writes each chunk file whole (a temporary renamed into
place), so a task killed mid-write leaves the chunk as it was; a task rerun writes the same bytes.

**The model** travels as a ``ModelSpec`` (architecture, state dict, backend, device, dtype and
a sha256 of the weights), sent once to each worker, never a live model; each worker process
builds it once and keeps it (``loaded_models``), keyed by that hash, device, dtype and backend.
Each task sets ``torch.set_num_threads(threads)``.

**Resume.** The output is written in place (so that an interrupted run can go on) with
attributes: ``written_by: redkern``, ``redkern_complete`` (true only once every chunk is
written), ``redkern_fingerprint`` (a hash of ``redkern_run``: the weights' hash, model,
backend, dtype, grid, chunking, input and output types) and ``redkern_done`` (a hex bitmap of
finished chunks, row-major, kept by the client as tasks finish). ``resume=True`` recomputes only
chunks not marked done, and refuses (``ResumeMismatch``) an output begun with other weights or
settings. ``redkern.imageio`` refuses to read an output that is not complete.

**Test hook.** With ``REDKERN_DISTRIBUTED_TEST_HOOKS=DIR`` in a worker's environment, the task
of chunk ``(i, j)`` looks for ``DIR/crash-i-j`` (renames it to ``crash-i-j.done``, so only the
first attempt, then ``os._exit(3)``: a worker dying mid-run) and ``DIR/fail-i-j`` (raises
``RuntimeError`` while it exists: an interrupted run), after computing and before writing.

Dask (``pip install "redkern[distributed]"``) is imported only when needed: without it this
module imports, ``restore(client=None)`` works, and the rest raises ``DistributedUnavailable``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import pickle
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from .tiling import Tile, resolve_halo, tile_overhead

log = logging.getLogger("redkern")

__all__ = ["restore", "restored", "connect", "plan_grid", "chunk_tiles", "aligned_chunks", "check_chunks",
           "default_chunk", "model_spec", "ModelSpec", "DistributedRun", "status", "loaded_models",
           "DistributedUnavailable", "SchedulerUnreachable", "MisalignedChunks", "ResumeMismatch",
           "TEST_HOOKS_ENV"]

TEST_HOOKS_ENV = "REDKERN_DISTRIBUTED_TEST_HOOKS"
DEFAULT_CHUNK = 1024  # pixels: the default chunk is the multiple of the core nearest this
_DONE_FLUSH_S = 1.0  # the client rewrites the done bitmap at most this often (and at the end)


class DistributedUnavailable(ImportError):
    """dask.distributed is not installed (it is an optional extra)."""


class SchedulerUnreachable(OSError):
    """No Dask scheduler answered at the address given."""


class MisalignedChunks(ValueError):
    """Output chunks that are not multiples of the tile core: tasks could not write them safely."""


class ResumeMismatch(ValueError):
    """``resume`` into an output begun with other weights or settings."""


def _require_distributed():
    try:
        import distributed
    except ImportError as e:
        raise DistributedUnavailable(
            "running on a Dask cluster needs dask.distributed, which is not installed: "
            "pip install 'redkern[distributed]'") from e
    return distributed


# --- the grid -----------------------------------------------------------------------------

def _core(tile: int, halo: int) -> int:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 1:
        raise ValueError(f"tile must be an int >= 1, got {tile!r}")
    core = tile - 2 * halo
    if core < 1:
        raise ValueError(f"a tile of {tile} pixels leaves no core inside a halo of {halo} on each side; "
                         f"use tile > 2 * halo = {2 * halo}")
    return core


def _axis(start: int, stop: int, length: int, core: int, halo: int):
    """``(window_start, window_stop, core_start, core_stop)`` of the lattice cores in [start, stop)."""
    return [(max(c - halo, 0), min(c + core + halo, length), c, min(c + core, length))
            for c in range(start, stop, core)]


def plan_grid(height: int, width: int, tile: int, halo: int) -> list[Tile]:
    """The chunk-aligned grid: cores on a lattice of ``tile - 2 * halo`` pixels, each window its
    core plus ``halo`` on every side, clipped at the border; row by row (``tiling.Tile``)."""
    return chunk_tiles(slice(0, height), slice(0, width), height, width, tile, halo)


def chunk_tiles(rows: slice, cols: slice, height: int, width: int, tile: int, halo: int) -> list[Tile]:
    """The tiles of ``plan_grid`` whose cores lie in the region ``rows x cols``, which must start
    on the core lattice (a chunk of an aligned output)."""
    core = _core(tile, halo)
    if rows.start % core or cols.start % core:
        raise MisalignedChunks(f"region {rows.start}:{rows.stop} x {cols.start}:{cols.stop} does not start on "
                               f"the {core}-pixel core lattice")
    return [Tile((slice(wy0, wy1), slice(wx0, wx1)), (slice(cy0, cy1), slice(cx0, cx1)))
            for wy0, wy1, cy0, cy1 in _axis(rows.start, min(rows.stop, height), height, core, halo)
            for wx0, wx1, cx0, cx1 in _axis(cols.start, min(cols.stop, width), width, core, halo)]


def default_chunk(tile: int, halo: int, height: int, width: int) -> int:
    """The multiple of the core nearest ``DEFAULT_CHUNK`` pixels (no larger than the image needs)."""
    core = _core(tile, halo)
    chunk = core * max(1, round(DEFAULT_CHUNK / core))
    return min(chunk, core * math.ceil(max(height, width) / core))


def check_chunks(chunks, tile: int, halo: int, height: int, width: int) -> None:
    """``MisalignedChunks`` unless the row and column chunks are multiples of the tile core
    (``tile - 2 * halo``) or cover their whole axis: else a core would straddle two chunks."""
    core = _core(tile, halo)
    bad = [(name, c) for name, c, n in (("rows", chunks[0], height), ("cols", chunks[1], width))
           if c % core and c < n]
    if bad:
        name, c = bad[0]
        near = sorted({core * max(1, c // core), core * (c // core + 1)})
        raise MisalignedChunks(
            f"output chunks {tuple(chunks)}: {name} {c} is not a multiple of the tile core {core} (tile {tile} "
            f"- 2 x halo {halo}), so a tile's core would straddle two chunks and two tasks would write "
            f"one chunk; use chunks of {' or '.join(map(str, near))} pixels, or a tile whose core divides "
            f"{c} (e.g. tile {c + 2 * halo})")


def aligned_chunks(length: int, chunk: int, halo: int) -> tuple[int, ...]:
    """One axis of ``restored``'s blocks: ``chunk`` pixels each, a last one shorter than ``halo``
    merged into the one before (``map_overlap`` needs every block at least ``halo`` long)."""
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    if len(sizes) > 1 and sizes[-1] < halo:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    return tuple(sizes)


# --- the model, described ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A picklable description of a model: what a worker needs to build it, never the model.

    ``kind``: ``"rednet"`` (``config`` = depth, channels, features, skips; ``state`` its
    state dict) or ``"module"`` (``state`` = the pickled CPU module, fused or not). ``fused``,
    ``backend``: as ``FusedREDNet``; ``device``: ``"cpu"``, ``"cuda"`` (the worker's own GPU),
    ``"auto"`` (cuda if the worker has one); ``dtype``: a torch dtype name. ``digest``: sha256
    of the weights (the key of every worker's model cache).
    """

    kind: str
    config: dict
    state: object = dataclasses.field(repr=False)
    digest: str
    fused: bool = True
    backend: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    receptive_field_radius: int | None = None

    @property
    def key(self) -> tuple:
        return (self.digest, self.kind, self.fused, self.backend, self.device, self.dtype)

    def __dask_tokenize__(self):
        return self.key

    def build(self) -> torch.nn.Module:
        """The model, on ``device`` in ``dtype``, eval mode, no gradients."""
        device = _resolve_device(self.device)
        if self.kind == "rednet":
            from .fused import FusedREDNet
            from .models import REDNet

            c = self.config
            model = (FusedREDNet(c["depth"], c["channels"], c["features"], c.get("skips"), backend=self.backend)
                     if self.fused else REDNet(c["depth"], c["channels"], c["features"], c.get("skips")))
            model.load_state_dict({k: v.float() for k, v in self.state.items()})
        else:
            model = pickle.loads(self.state)
        return model.to(device=device, dtype=getattr(torch, self.dtype)).eval().requires_grad_(False)


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _digest_state(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_spec(model_or_weights, *, fused: bool = True, backend: str | None = None, device: str | None = None,
               dtype: str | None = None) -> ModelSpec:
    """A ``ModelSpec`` for a RED-Net (``REDNet``/``FusedREDNet``), any other module (pickled: it
    must be picklable, as fused modules are), a weights/checkpoint file, a shipped task name
    (``"denoise"``, ``"sr"``, ``"jpeg"``) or a ``ModelSpec`` (returned, with any of ``backend``,
    ``device``, ``dtype`` given replaced). A model's own device, dtype and backend are kept unless
    given."""
    from .fusion import FusedForward, is_fused
    from .models import REDNet

    if isinstance(model_or_weights, ModelSpec):
        given = {k: v for k, v in (("backend", backend), ("device", device), ("dtype", dtype)) if v is not None}
        return dataclasses.replace(model_or_weights, **given)
    if isinstance(model_or_weights, torch.nn.Module):
        model = model_or_weights
        params = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
        own_device = str(params[0].device.type) if params else "cpu"
        own_dtype = str(params[0].dtype).removeprefix("torch.") if params else "float32"
        if isinstance(model, REDNet):
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            config = {"depth": model.depth, "channels": model.channels, "features": model.features,
                      "skips": bool(model.skips)}
            return ModelSpec("rednet", config, state, _digest_state(state),
                             fused=isinstance(model, FusedForward),
                             backend=backend or getattr(model, "backend", "auto"), device=device or own_device,
                             dtype=dtype or own_dtype, receptive_field_radius=model.receptive_field_radius)
        cpu = copy.deepcopy(model).cpu()
        try:
            blob = pickle.dumps(cpu)
        except Exception as e:
            raise TypeError(f"{type(model).__name__} cannot be pickled ({e}), so it cannot be sent to "
                            "workers; pass its weights and a RED-Net, or make it picklable") from e
        from .tiling import receptive_field

        field = receptive_field(model)  # a ValueError names a network that tiles cannot reproduce
        if field.trim:
            raise ValueError(f"{type(model).__name__} drops {field.trim} pixels at every border (unpadded "
                             "convolutions): the distributed runner writes output chunks at the input's size, "
                             "so it runs with redkern.restore_file (redkern restore without --scheduler)")
        if field.scale != 1:
            raise ValueError(f"{type(model).__name__} enlarges the image {field.scale}x: the distributed "
                             "runner writes output chunks at the input's size, so upsampling networks run "
                             "with redkern.restore_file (redkern restore without --scheduler)")
        radius = field.radius
        state = model.state_dict()
        return ModelSpec("module", {"class": type(model).__qualname__}, blob,
                         hashlib.sha256(_digest_state(state).encode() + type(model).__qualname__.encode()).hexdigest(),
                         fused=is_fused(model), backend=backend or "auto", device=device or own_device,
                         dtype=dtype or own_dtype, receptive_field_radius=None if radius is None else int(radius))
    if isinstance(model_or_weights, (str, os.PathLike)):
        from . import pretrained

        data = pretrained._read(model_or_weights)
        state = {k: v.float() for k, v in data["state_dict"].items()}
        config = {"depth": data["depth"], "channels": data["channels"], "features": data["features"]}
        from .models import REDNet as _R

        radius = _R(config["depth"], config["channels"], 1).receptive_field_radius
        return ModelSpec("rednet", config, state, _digest_state(state), fused=fused, backend=backend or "auto",
                         device=device or "cpu", dtype=dtype or "float32", receptive_field_radius=radius)
    raise TypeError(f"expected a model, a weights file, a task name or a ModelSpec, got "
                    f"{type(model_or_weights).__name__}")


class _Radius:
    """What ``resolve_halo`` reads: a receptive field radius (``None``: unknown)."""

    def __init__(self, radius):
        if radius is not None:
            self.receptive_field_radius = radius


# --- one worker process: its models ------------------------------------------------------

_MODELS: dict[tuple, torch.nn.Module] = {}
_LOADS: dict[tuple, int] = {}
_MODELS_LOCK = threading.Lock()


def _model_for(spec: ModelSpec) -> torch.nn.Module:
    with _MODELS_LOCK:
        model = _MODELS.get(spec.key)
        if model is None:
            model = _MODELS[spec.key] = spec.build()
            _LOADS[spec.key] = _LOADS.get(spec.key, 0) + 1
        return model


def loaded_models() -> dict[str, int]:
    """In this process: how many times each model (by weights digest) was built (1 when cached)."""
    with _MODELS_LOCK:
        return {key[0]: n for key, n in _LOADS.items()}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on macOS or Windows
        return os.cpu_count() or 1


def _set_threads(threads: int | None, by_host: dict | None = None) -> int:
    """``torch.set_num_threads``: ``threads``, else this host's share in ``by_host`` (its cores
    over every task slot of the workers on it), else in a Dask worker its cores per task slot;
    outside a worker without either, the caller's setting is left alone. Returns the count."""
    if threads is None:
        with contextlib.suppress(ImportError, ValueError):
            from distributed import get_worker

            worker = get_worker()
            threads = (by_host or {}).get(_host_of(worker.address)) or max(1, _cores() // max(1, worker.state.nthreads))
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _host_of(address: str) -> str:
    return address.split("://")[-1].rsplit(":", 1)[0]


def _threads_by_host(client) -> dict[str, int]:
    """Per host: its cores over the task slots of all its workers (so co-located workers share)."""
    workers = _workers(client)
    cores = client.run(_cores)
    slots, have = {}, {}
    for address, info in workers.items():
        host = _host_of(address)
        slots[host] = slots.get(host, 0) + int(info.get("nthreads", 1))
        have[host] = cores.get(address, have.get(host, 1))
    return {host: max(1, have[host] // max(1, n)) for host, n in slots.items()}


def _workers(client) -> dict:
    """Every worker's info (``scheduler_info`` lists only the first 5 unless asked for all)."""
    import inspect

    everyone = {"n_workers": -1} if "n_workers" in inspect.signature(client.scheduler_info).parameters else {}
    return client.scheduler_info(**everyone).get("workers", {})


# --- the work of one chunk ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Source:
    """Where the input pixels are: an image path (any format ``redkern.imageio`` reads; read
    region by region for .zarr, .npy and TIFF) or an array (a zarr array: picklable)."""

    path: str | None
    array: object
    height: int
    width: int
    channels: int
    dtype: str
    alpha: bool

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        if self.path is not None:
            from . import imageio

            with imageio.open_image(self.path) as reader:
                return reader.read(rows, cols)
        block = np.asarray(self.array[rows, cols])
        block = block if block.ndim == 3 else block[..., None]
        return block.astype(block.dtype.newbyteorder("="), copy=False)


def _source(src) -> _Source:
    from . import imageio

    if isinstance(src, (str, os.PathLike)):
        with imageio.open_image(src) as reader:
            return _Source(str(Path(src).resolve()), None, reader.height, reader.width, reader.channels,
                           str(reader.dtype), reader.alpha)
    shape = tuple(getattr(src, "shape", ()))
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > 4):
        raise ValueError(f"expected an image path or an array [height, width(, channels <= 4)], got "
                         f"{type(src).__name__} of shape {shape}")
    channels = 1 if len(shape) == 2 else shape[2]
    dtype = np.dtype(src.dtype)
    if dtype not in imageio.PIXEL_DTYPES:
        raise ValueError(f"unsupported pixel type {dtype}; redkern reads uint8, uint16, float32 and float64")
    return _Source(None, src, shape[0], shape[1], channels, str(dtype.newbyteorder("=")), channels in (2, 4))


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a chunk task needs, sent once to each worker."""

    source: _Source
    target: object  # the output store's path, or a zarr array
    spec: ModelSpec
    tile: int
    halo: int
    chunk: int
    model_channels: int
    out_dtype: str
    threads: int | None
    threads_by_host: dict | None = None

    @property
    def height(self):
        return self.source.height

    @property
    def width(self):
        return self.source.width

    @property
    def grid(self) -> tuple[int, int]:
        return (math.ceil(self.height / self.chunk), math.ceil(self.width / self.chunk))

    def region(self, i: int, j: int) -> tuple[slice, slice]:
        c = self.chunk
        return slice(i * c, min((i + 1) * c, self.height)), slice(j * c, min((j + 1) * c, self.width))


def _restore_region(job, model, pixels: np.ndarray, origin: tuple[int, int], tiles: list[Tile],
                    rows: slice, cols: slice) -> np.ndarray:
    """The restored pixels of ``rows x cols`` (the union of ``tiles``' cores) from ``pixels``, the
    input region at ``origin`` holding every window. Each tile goes through the same steps as in
    the single-process engine (``tiling``): ``ChannelPlan.model_input``, the model on its device
    and dtype, back to the input's, crop, ``ChannelPlan.image_output``."""
    from . import imageio

    plan = imageio.ChannelPlan(job.source.channels, job.source.alpha, job.model_channels, job.out_dtype)
    out = np.empty((rows.stop - rows.start, cols.stop - cols.start, job.source.channels), job.out_dtype)
    device, dtype = next(((t.device, t.dtype) for t in (*model.parameters(), *model.buffers())
                          if t.is_floating_point()), (torch.device("cpu"), None))
    oy, ox = origin
    for tile in tiles:
        (wr, wc), (cr, cc) = tile.window, tile.core
        window = pixels[wr.start - oy:wr.stop - oy, wc.start - ox:wc.stop - ox]
        x = torch.from_numpy(plan.model_input(window))[None]
        with torch.no_grad():
            y = model(x.to(device, dtype or x.dtype))
        if y.shape != (1, job.model_channels, *x.shape[2:]):
            raise ValueError(f"the model turned a tile of shape {tuple(x.shape)} into {tuple(y.shape)}; "
                             "tiling needs outputs of the input's size")
        y = y.to(x.device, x.dtype)
        crow, ccol = tile.crop
        values = y[0, :, crow, ccol].numpy()
        out[cr.start - rows.start:cr.stop - rows.start, cc.start - cols.start:cc.stop - cols.start] = \
            plan.image_output(values, window[crow, ccol])
    return out


def _test_hooks(i: int, j: int) -> None:
    """The test hook of the module docstring (nothing unless ``TEST_HOOKS_ENV`` is set)."""
    folder = os.environ.get(TEST_HOOKS_ENV)
    if not folder:
        return
    crash = Path(folder, f"crash-{i}-{j}")
    try:
        os.rename(crash, crash.with_name(crash.name + ".done"))  # the first attempt claims it
    except OSError:
        pass
    else:
        os._exit(3)
    if Path(folder, f"fail-{i}-{j}").exists():
        raise RuntimeError(f"test hook: chunk ({i}, {j}) fails")


def _open_target(target, mode="r+"):
    if isinstance(target, str):
        import zarr

        return zarr.open_array(target, mode=mode)
    return target


def _run_chunk(job: _Job, i: int, j: int) -> dict:
    """Restore chunk ``(i, j)`` of ``job``'s output: read, compute, write. Returns what it did."""
    start = time.perf_counter()
    threads = _set_threads(job.threads, job.threads_by_host)
    model = _model_for(job.spec)
    rows, cols = job.region(i, j)
    tiles = chunk_tiles(rows, cols, job.height, job.width, job.tile, job.halo)
    r0, r1 = min(t.window[0].start for t in tiles), max(t.window[0].stop for t in tiles)
    c0, c1 = min(t.window[1].start for t in tiles), max(t.window[1].stop for t in tiles)
    pixels = job.source.read(slice(r0, r1), slice(c0, c1))
    out = _restore_region(job, model, pixels, (r0, c0), tiles, rows, cols)
    _test_hooks(i, j)
    array = _open_target(job.target)
    array[rows, cols] = out if array.ndim == 3 else out[..., 0]
    return {"chunk": (i, j), "pid": os.getpid(), "host": socket.gethostname(), "tiles": len(tiles),
            "pixels": out.shape[0] * out.shape[1], "loads": _LOADS.get(job.spec.key, 0),
            "threads": threads, "seconds": time.perf_counter() - start}


# --- the output store: created, checked, marked --------------------------------------------

def _settings(job: _Job, allow_inexact: bool) -> dict:
    from . import __version__

    spec = job.spec
    return {"redkern": __version__, "weights_sha256": spec.digest, "model": {"kind": spec.kind, **{
        k: v for k, v in spec.config.items()}, "fused": spec.fused}, "backend": spec.backend,
        "device": spec.device, "dtype": spec.dtype, "tile": job.tile, "halo": job.halo, "chunk": job.chunk,
        "allow_inexact": bool(allow_inexact), "grid": "lattice-v1",
        "input": {"path": job.source.path, "shape": [job.height, job.width, job.source.channels],
                  "dtype": job.source.dtype, "alpha": job.source.alpha},
        "output": {"dtype": job.out_dtype}}


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def _differences(old: dict, new: dict, prefix="") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            short = (lambda v: v[:12] + "..." if isinstance(v, str) and len(v) > 16 else v)
            out.append(f"{prefix}{key} {short(a)!r} then, {short(b)!r} now")
    return out


def _done_set(attrs, total: int) -> set[int]:
    bits = int(attrs.get("redkern_done") or "0", 16)
    return {k for k in range(total) if bits >> k & 1}


def _done_hex(done: set[int]) -> str:
    return format(sum(1 << k for k in done), "x")


def status(output) -> dict | None:
    """A distributed output's state (a path or zarr array): ``complete``, ``chunks_done``,
    ``chunks_total``, ``done`` (row-major chunk indices), ``fingerprint``, ``settings``;
    ``None`` for anything else (a store redkern did not write this way, or none)."""
    try:
        array = _open_target(str(output), "r") if isinstance(output, (str, os.PathLike)) else output
        attrs = dict(array.attrs)
    except Exception:  # noqa: BLE001 - not an array zarr can open: not ours
        return None
    if "redkern_fingerprint" not in attrs:
        return None
    rows, cols = attrs.get("redkern_chunks", (0, 0))
    done = _done_set(attrs, rows * cols)
    return {"complete": bool(attrs.get("redkern_complete")), "chunks_done": len(done), "chunks_total": rows * cols,
            "done": sorted(done), "fingerprint": attrs["redkern_fingerprint"], "settings": attrs.get("redkern_run")}


def _remove_partials(path: Path) -> None:
    """zarr's ``*.partial`` temporaries left by a process killed mid-write (an unfinished output only)."""
    for p in path.rglob("*.partial"):
        with contextlib.suppress(OSError):
            p.unlink()


class _Output:
    """The output array and its done marks (kept by the client, the only writer of attributes)."""

    def __init__(self, array, total: int, done: set[int], created: Path | None):
        self.array, self.total, self.done, self.created = array, total, set(done), created
        self._flushed, self._dirty = time.monotonic(), False

    def mark(self, k: int) -> None:
        self.done.add(k)
        self._dirty = True
        if time.monotonic() - self._flushed >= _DONE_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            self.array.attrs.update({"redkern_done": _done_hex(self.done)})
            self._dirty = False
        self._flushed = time.monotonic()

    def complete(self) -> None:
        self.array.attrs.update({"redkern_done": _done_hex(self.done), "redkern_complete": True})


def _prepare_output(target, job: _Job, settings: dict, *, overwrite: bool, resume: bool,
                    source_path) -> tuple[_Output, bool]:
    """The output, created or reopened; ``(output, resumed)``. Raises ``OutputExists``,
    ``ResumeMismatch``, ``MisalignedChunks`` or ``UnsupportedFormat`` before writing anything."""
    import zarr

    from . import imageio

    fingerprint = _fingerprint(settings)
    rows, cols = job.grid
    attrs = {**imageio.ZARR_WRITER_ATTRIBUTE, "redkern_complete": False, "redkern_fingerprint": fingerprint,
             "redkern_run": settings, "redkern_chunks": [rows, cols], "redkern_done": ""}
    channels = job.source.channels
    shape = (job.height, job.width) + ((channels,) if channels > 1 else ())
    chunks = (job.chunk, job.chunk) + ((channels,) if channels > 1 else ())

    def reopen(array):
        old = dict(array.attrs)
        if old.get("redkern_fingerprint") != fingerprint:
            if "redkern_fingerprint" not in old:
                raise ResumeMismatch(f"{target}: was not written by a distributed redkern run, so there is "
                                     "nothing to resume; pass overwrite (--overwrite) to replace it")
            why = "; ".join(_differences(old.get("redkern_run") or {}, settings)) or "fingerprints differ"
            raise ResumeMismatch(f"{target}: was begun with other weights or settings ({why}); resume continues "
                                 "only the same run: pass overwrite (--overwrite) to start over")
        return _Output(array, rows * cols, _done_set(old, rows * cols), None)

    if not isinstance(target, (str, os.PathLike)):  # a zarr array of the user's
        if tuple(target.shape) != shape or np.dtype(target.dtype) != np.dtype(job.out_dtype):
            raise ValueError(f"the output array is {tuple(target.shape)} {target.dtype}; this restore writes "
                             f"{shape} {job.out_dtype}")
        check_chunks(tuple(target.chunks), job.tile, job.halo, job.height, job.width)
        if channels > 1 and target.chunks[2] != channels:
            raise MisalignedChunks(f"output chunks {tuple(target.chunks)} split the {channels} channels; "
                                   "keep each pixel's channels in one chunk")
        if resume and "redkern_fingerprint" in dict(target.attrs):
            return reopen(target), True
        target.attrs.update(attrs)
        return _Output(target, rows * cols, set(), None), False

    path = Path(target)
    if resume and path.is_dir() and status(path) is not None:
        imageio.check_target(path, True, source=source_path)
        _remove_partials(path)
        return reopen(zarr.open_array(str(path), mode="r+")), True
    if path.is_dir() and status(path) is not None and not status(path)["complete"]:
        _remove_partials(path)  # so that an unfinished output counts as redkern's for overwrite
    imageio.check_target(path, overwrite, source=source_path)
    if path.exists() or path.is_symlink():
        imageio._remove(path)  # checked: a file, or a zarr store redkern wrote
    array = zarr.open_array(str(path), mode="w-", shape=shape, chunks=chunks, dtype=job.out_dtype)
    array.attrs.update(attrs)
    return _Output(array, rows * cols, set(), path), False


# --- running ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DistributedRun:
    """What ``restore`` did: image, grid, chunks computed (``results``: one dict per task:
    chunk, pid, host, tiles, pixels, loads, threads, seconds) and how fast."""

    height: int
    width: int
    tile: int
    halo: int
    chunk: int
    tiles: int
    chunks_total: int
    chunks_computed: int
    resumed: bool
    workers: int
    seconds: float
    results: list = dataclasses.field(repr=False, default_factory=list)

    @property
    def megapixels(self) -> float:
        return sum(r["pixels"] for r in self.results) / 1e6

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("inf")

    @property
    def work(self) -> float:
        """Pixels the model computes over pixels kept (halo recompute), over the whole grid."""
        return tile_overhead(plan_grid(self.height, self.width, self.tile, self.halo), self.height, self.width)


@contextlib.contextmanager
def connect(scheduler, *, timeout: float = 10.0, threads: int | None = None):
    """A ``distributed.Client`` for ``scheduler``: ``"tcp://host:8786"`` (any address Dask takes),
    ``"local:N"`` (a ``LocalCluster`` of N worker processes, one task at a time each, started here
    and stopped on exit), or a ``Client`` (yielded as it is, left open). Raises
    ``SchedulerUnreachable`` when nothing answers within ``timeout`` seconds, ``ValueError`` for a
    malformed address, ``DistributedUnavailable`` without dask."""
    distributed = _require_distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
        return
    if not isinstance(scheduler, str) or not scheduler:
        raise ValueError(f"scheduler must be an address (tcp://host:8786), local:N or a Client, got {scheduler!r}")
    if scheduler.startswith("local:"):
        n = scheduler[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"scheduler {scheduler!r}: local:N needs N >= 1 worker processes, e.g. local:4")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Port 8787 is already in use" and the like
            cluster = distributed.LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if "://" not in scheduler and scheduler.count(":") != 1:
        raise ValueError(f"scheduler {scheduler!r}: expected tcp://host:port (or host:port, or local:N)")
    try:
        client = distributed.Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise SchedulerUnreachable(f"cannot reach a Dask scheduler at {scheduler} within {timeout:g} s "
                                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); is "
                                   "`dask scheduler` running there, and the address right?") from None
    with client:
        yield client


def _local_threads(scheduler: str) -> int | None:
    if isinstance(scheduler, str) and scheduler.startswith("local:") and scheduler[6:].isdigit():
        return max(1, _cores() // max(1, int(scheduler[6:])))
    return None


def restore(src, dst, model_or_weights, *, client=None, tile: int = 512, halo: int | None = None,
            chunk: int | None = None, allow_inexact: bool = False, overwrite: bool = False, resume: bool = False,
            out_dtype=None, threads: int | None = None, backend: str | None = None, device: str | None = None,
            dtype: str | None = None, quiet: bool = False, timeout: float = 10.0) -> DistributedRun:
    """Restore the image ``src`` into the zarr store ``dst``, one task per output chunk.

    ``src``: an image path (.zarr, or any format ``redkern.imageio`` reads; .zarr, .npy and TIFF
    are read window by window) or a zarr array; every worker must see it. ``dst``: a ``.zarr``
    path (created with chunks of ``chunk`` pixels, default ``default_chunk``) or a zarr array of
    the right shape and dtype whose chunks are multiples of the core (else ``MisalignedChunks``).
    ``model_or_weights``: see ``model_spec`` (``backend``, ``device``, ``dtype`` as there).
    ``client``: a ``distributed.Client``, an address or ``"local:N"`` (see ``connect``), or
    ``None`` to run the same tasks here, one after another. ``tile``, ``halo``,
    ``allow_inexact``, ``out_dtype``: as ``tiling.restore_file`` (see the module docstring for
    the grid); ``threads``: torch threads per task (default: the worker's cores per task slot;
    for ``local:N``, this machine's cores / N). ``overwrite``: replace a file or a zarr store
    redkern wrote; ``resume``: go on with an unfinished output of the same run (see the module
    docstring). ``quiet``: no progress bar (there is none when stderr is not a terminal).
    """
    from . import imageio

    if resume and overwrite:
        raise ValueError("resume continues an output and overwrite replaces it: pass one of them")
    source = _source(src)
    spec = model_spec(model_or_weights, backend=backend, device=device, dtype=dtype)
    halo = resolve_halo(_Radius(spec.receptive_field_radius), halo, allow_inexact)
    _core(tile, halo)
    model_channels = spec.config.get("channels", source.channels - int(source.alpha))
    out_dtype = np.dtype(source.dtype if out_dtype is None else out_dtype)
    imageio.ChannelPlan(source.channels, source.alpha, model_channels, out_dtype)  # raises on a mismatch
    if isinstance(dst, (str, os.PathLike)):
        if imageio.format_of(dst, reading=False) != "zarr":
            raise imageio.UnsupportedFormat(f"{dst}: a distributed run writes its output chunk by chunk from "
                                            "many processes: it must be a .zarr store", path=dst, reading=False)
        imageio.check_output(dst, source.height, source.width, source.channels, out_dtype, alpha=source.alpha,
                             overwrite=True, source=source.path)
        if chunk is None:
            chunk = default_chunk(tile, halo, source.height, source.width)
        check_chunks((chunk, chunk), tile, halo, source.height, source.width)
    else:
        check_chunks(tuple(dst.chunks), tile, halo, source.height, source.width)
        chunk = int(dst.chunks[0])
        if dst.chunks[1] != chunk:
            raise MisalignedChunks(f"output chunks {tuple(dst.chunks)}: redkern writes square chunks, rows = cols")
    threads = threads or (_local_threads(client) if isinstance(client, str) else None)
    job = _Job(source, None, spec, tile, halo, chunk, model_channels, str(out_dtype), threads)
    settings = _settings(job, allow_inexact)
    runner = contextlib.nullcontext(None) if client is None else connect(client, timeout=timeout)
    with runner as dask_client:  # connected (or failed) before the output exists
        output, resumed = _prepare_output(dst, job, settings, overwrite=overwrite, resume=resume,
                                          source_path=source.path)
        target = str(dst) if isinstance(dst, (str, os.PathLike)) else dst
        job = dataclasses.replace(job, target=target)
        try:
            return _execute(job, output, dask_client, resumed, quiet)
        except BaseException:
            output.flush()
            if output.created is not None and not output.done:
                imageio._remove(output.created)  # nothing finished: nothing to resume
            elif output.created is not None or resumed:
                log.warning("%s: unfinished (%d of %d chunks written); finish it with resume=True (--resume)",
                            dst, len(output.done), output.total)
            raise


def _execute(job: _Job, output: _Output, client, resumed: bool, quiet: bool) -> DistributedRun:
    from .progress import progress_bar

    rows, cols = job.grid
    todo = [(i, j) for i in range(rows) for j in range(cols) if i * cols + j not in output.done]
    bar = progress_bar(total=len(todo), unit="chunk", desc="redkern", disable=quiet)
    start, pixels, results = time.perf_counter(), 0, []

    def finished(result):
        nonlocal pixels
        i, j = result["chunk"]
        output.mark(i * cols + j)
        results.append(result)
        pixels += result["pixels"]
        bar.set_postfix_str(f"{pixels / 1e6 / max(time.perf_counter() - start, 1e-9):.2f} MP/s", refresh=False)
        bar.update(1)

    workers = 1
    try:
        if client is None:
            for i, j in todo:
                finished(_run_chunk(job, i, j))
        else:
            from distributed import as_completed

            workers = len(_workers(client)) or 1
            if job.threads is None:
                job = dataclasses.replace(job, threads_by_host=_threads_by_host(client))
            shared = client.scatter(job, broadcast=True, hash=False)
            run = uuid.uuid4().hex[:8]
            futures = [client.submit(_run_chunk, shared, i, j, key=f"redkern-chunk-{run}-{i}-{j}", pure=False,
                                     priority=-(i * cols + j)) for i, j in todo]
            try:
                for future in as_completed(futures):
                    finished(future.result())
            finally:
                client.cancel(futures)
        output.complete()
    finally:
        bar.close()
    tiles = len(plan_grid(job.height, job.width, job.tile, job.halo))
    return DistributedRun(job.height, job.width, job.tile, job.halo, job.chunk, tiles, rows * cols, len(results),
                          resumed, workers, time.perf_counter() - start, results)


# --- lazily, for graphs of one's own ---------------------------------------------------------

def restored(x, model_or_weights, *, tile: int = 512, halo: int | None = None, chunk: int | None = None,
             allow_inexact: bool = False, out_dtype=None, alpha: bool | None = None, threads: int | None = None,
             backend: str | None = None, device: str | None = None, dtype: str | None = None):
    """The restored image as a lazy dask array (``dask.array.map_overlap(depth=halo,
    boundary="none")``): pixels ``[height, width(, channels)]`` in, the same shape out, in
    ``out_dtype`` (the input's by default). ``x``: a dask array, or a zarr path or array (read
    with ``dask.array.from_zarr`` in the blocks below, so no rechunk step). Blocks are ``chunk``
    pixels (a multiple of the core, ``default_chunk`` by default) with a last one shorter than
    the halo merged into its neighbour (``aligned_chunks``; rechunk before ``to_zarr``); a dask
    array of other chunks is rechunked to them. The grid, and so every output byte, is that of
    ``restore``. The model description goes with every task: keep the graph to a few hundred
    blocks, or use ``restore``, which sends it once per worker."""
    import dask.array as da

    from . import imageio

    if not isinstance(x, da.Array):
        x = da.from_zarr(str(x)) if isinstance(x, (str, os.PathLike)) else da.from_array(x, chunks=x.chunks)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected pixels [height, width(, channels)], got shape {x.shape}")
    height, width = x.shape[:2]
    channels = 1 if x.ndim == 2 else x.shape[2]
    alpha = channels in (2, 4) if alpha is None else alpha
    spec = model_spec(model_or_weights, backend=backend, device=device, dtype=dtype)
    halo = resolve_halo(_Radius(spec.receptive_field_radius), halo, allow_inexact)
    chunk = chunk or default_chunk(tile, halo, height, width)
    check_chunks((chunk, chunk), tile, halo, height, width)
    model_channels = spec.config.get("channels", channels - int(alpha))
    out_dtype = np.dtype(x.dtype if out_dtype is None else out_dtype)
    imageio.ChannelPlan(channels, alpha, model_channels, out_dtype)
    blocks = (aligned_chunks(height, chunk, halo), aligned_chunks(width, chunk, halo)) + \
        (((channels,),) if x.ndim == 3 else ())
    if x.chunks != blocks:
        x = x.rechunk(blocks)
    source = _Source(None, None, height, width, channels, str(np.dtype(x.dtype)), alpha)
    job = _Job(source, None, spec, tile, halo, chunk, model_channels, str(out_dtype), threads)
    depth = {0: halo if len(blocks[0]) > 1 else 0, 1: halo if len(blocks[1]) > 1 else 0}
    if x.ndim == 3:
        depth[2] = 0
    starts = [np.cumsum((0,) + b[:-1]) for b in blocks[:2]]
    name = f"redkern-restored-{_fingerprint(_settings(job, allow_inexact))[:16]}"
    return da.map_overlap(_restore_block, x, depth=depth, boundary="none", trim=False, dtype=out_dtype,
                          meta=np.empty((0,) * x.ndim, out_dtype), name=name, job=job, blocks=blocks,
                          starts=starts, depth_=depth)


def _restore_block(block: np.ndarray, *, job: _Job, blocks, starts, depth_, block_info=None) -> np.ndarray:
    i, j = block_info[None]["chunk-location"][:2]
    r0, c0 = int(starts[0][i]), int(starts[1][j])
    rows, cols = slice(r0, r0 + blocks[0][i]), slice(c0, c0 + blocks[1][j])
    origin = (r0 - (depth_[0] if i > 0 else 0), c0 - (depth_[1] if j > 0 else 0))
    _set_threads(job.threads)
    pixels = block if block.ndim == 3 else block[..., None]
    out = _restore_region(job, _model_for(job.spec), np.asarray(pixels), origin,
                          chunk_tiles(rows, cols, job.height, job.width, job.tile, job.halo), rows, cols)
    return out if block.ndim == 3 else out[..., 0]


