"""The ``redkern`` command line (also ``python -m redkern``).

    redkern demo                                  # denoise the bundled sample: PSNR and speed
    redkern restore noisy.png clean.png --weights red30.pt
    redkern restore scan.tif out.tif --tile 1024 --device cuda --batch 4
    redkern restore noisy.png clean.png --model dncnn_b --weights dncnn_gray_blind.pth   # KAIR's file
    redkern info                                  # version, backends, CPU features, devices, zoo models

``--task denoise|sr|jpeg|deblur|inpaint`` uses the weights that ship with the package
(redkern.pretrained); ``redkern train`` makes your own (``--weights FILE`` runs them).
With neither ``--task`` nor ``--weights`` the model has random weights (seeded, so runs
repeat): that shows speed, not restoration, and the command says so.

Exit codes: 0 done; 1 failed while running; 2 bad arguments (including a backend that cannot
run here or weights that do not fit the model); 3 the input cannot be read (missing,
unsupported format, damaged); 4 the output cannot be written (exists without
``--overwrite``, directory missing or read-only, format cannot hold the pixels);
130 interrupted (Ctrl-C); 143 terminated (SIGTERM). A run that does not finish leaves no
output and no temporary file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import signal
import sys
import time
import warnings

from .validation import UsageError  # arguments that cannot work: exit code 2

EXIT_FAILED, EXIT_USAGE, EXIT_INPUT, EXIT_OUTPUT, EXIT_INTERRUPTED = 1, 2, 3, 4, 130
DEPTHS = {"red10": 10, "red20": 20, "red30": 30}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logger = logging.getLogger("redkern")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("redkern: %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        with _sigterm_as_exit():
            return args.run(args)
    except UsageError as e:
        return _fail(EXIT_USAGE, str(e))
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted: no output was written and no temporary file is left")
    except SystemExit as e:
        if e.code == 128 + signal.SIGTERM:
            return _fail(e.code, "terminated: no output was written and no temporary file is left")
        raise
    except Exception as e:
        from .backends.common import BackendUnavailable
        from .imageio import ImageError

        if isinstance(e, ImageError):
            return _fail(EXIT_INPUT if e.reading else EXIT_OUTPUT, _cli_words(str(e)))
        from .validation import NonFiniteInput

        if isinstance(e, NonFiniteInput):  # a tile's [n, c, y, x]: the pixel is not where the tile is
            return _fail(EXIT_INPUT, f"{getattr(args, 'input', 'the input')}: holds NaN or inf pixel values, which "
                         "the fused kernels would spread beyond their reach; replace them first (or run "
                         "--backend reference, which propagates them as PyTorch does)")
        if isinstance(e, BackendUnavailable):
            return _fail(EXIT_USAGE, f"{e} (--backend reference runs the plain PyTorch model)")
        return _fail(EXIT_FAILED, f"failed: {type(e).__name__}: {e}")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _fail(code: int, message: str) -> int:
    print(f"redkern: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM unwinds like Ctrl-C, so temporary files are removed on the way out."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- arguments ----------------------------------------------------------------------------

def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from .degradations import TASKS  # the --task choices: every task ships weights

    parser = argparse.ArgumentParser(prog="redkern", description="RED-Net image restoration with "
                                     "fused 3x3 convolution kernels.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    m = model.add_argument_group("model")
    m.add_argument("--model", metavar="NAME", help="the network: red10, red20, red30 (default: from --weights, "
                   "else red30) or a zoo model (" + ", ".join(_zoo_names()) + "; redkern info "
                   "lists them all)")
    m.add_argument("--weights", metavar="FILE", help="a RED-Net state_dict (torch.save), or with --model NAME "
                   "a checkpoint of that network in redkern's, KAIR's or BasicSR's layout; "
                   "without it the weights are random (a demo of speed, not of restoration)")
    m.add_argument("--task", choices=TASKS, help="use the shipped RED30 "
                   "weights for this task (redkern.pretrained); sr takes the image already bicubic-enlarged, "
                   "deblur the blurred image, inpaint the image with text on it (no mask)")
    m.add_argument("--channels", type=_positive, help="model channels: 1 (grayscale, or the Y of colour "
                   "images) or 3 (RGB) (default: from --weights, else 1; zoo models: their own default)")
    m.add_argument("--features", type=_positive, help="feature maps per layer (default: from --weights, else 64; "
                   "zoo models: their own default)")
    m.add_argument("--backend", default="auto", choices=["auto", "cpu", "triton", "cuda", "reference"],
                   help="fused kernels to use; 'reference' runs the plain PyTorch model (default: auto)")
    m.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if present, else cpu)")
    m.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="model precision (default: float32)")
    t = model.add_argument_group("tiling")
    t.add_argument("--tile", type=_positive, help="largest window fed to the model, halo included (default: sized "
                   "from the memory available, and said; 512 with --scheduler)")
    t.add_argument("--halo", type=_non_negative, help="context around each tile (default: the receptive "
                   "field radius, which makes tiling exact)")
    t.add_argument("--allow-inexact", action="store_true", help="accept a halo below the radius")
    t.add_argument("--batch", type=_positive, default=1, help="tiles per model call (default: 1)")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bar or notes")

    restore = commands.add_parser("restore", parents=[model], help="restore an image file",
                                  description="Restore INPUT into OUTPUT tile by tile. Formats: .png .jpg "
                                  ".jpeg .tif .tiff .btf .tf8 .npy .zarr; .npy, TIFF and .zarr never need "
                                  "the whole image in memory.")
    restore.add_argument("input", metavar="INPUT", help="the image to restore (any size; see the formats above)")
    lv = restore.add_mutually_exclusive_group()  # with --task: checked against the trained range
    lv.add_argument("--sigma", type=float, help="with --task denoise: the input's noise level (0-255 scale). "
                    "The shipped denoiser is blind: this is checked against what it was trained on "
                    "(0-50), not given to it")
    lv.add_argument("--scale", type=int, help="with --task sr: the factor the input was bicubic-enlarged by "
                    "(checked against the trained 2-4)")
    lv.add_argument("--quality", type=int, help="with --task jpeg: the input's JPEG quality (checked against "
                    "the trained 10-40)")
    lv.add_argument("--blur", type=float, help="with --task deblur: the input's Gaussian blur sigma in pixels "
                    "(checked against the trained 1-3; redkern eval calls it --level)")
    restore.add_argument("output", metavar="OUTPUT", help="where the restored image goes (written when "
                         "complete; the format follows the suffix)")
    restore.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it is a file or a zarr "
                         "store redkern wrote (never a directory of anything else, never INPUT)")
    restore.add_argument("--out-dtype", default="same", choices=["same", "uint8", "uint16", "float32", "float64"],
                         help="OUTPUT pixel type (default: the same as INPUT)")
    d = restore.add_argument_group("on a Dask cluster (pip install 'redkern[distributed]'; OUTPUT must be .zarr)")
    d.add_argument("--scheduler", metavar="ADDRESS", help="run one task per output chunk on the Dask scheduler "
                   "at ADDRESS (tcp://host:8786), or on local:N, N worker processes started and stopped here")
    d.add_argument("--chunk", type=_positive, help="output zarr chunk, in pixels: a multiple of the tile core "
                   "(--tile minus twice the halo) (default: the multiple nearest 1024)")
    d.add_argument("--resume", action="store_true", help="finish an OUTPUT an interrupted --scheduler run left, "
                   "computing only the chunks not marked done (refused if the weights or settings differ)")
    d.add_argument("--threads", type=_positive, help="torch threads per task on each worker (default: the "
                   "worker's cores per task slot; local:N: this machine's cores / N)")
    d.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the scheduler to answer (default: 10)")
    restore.set_defaults(run=_restore)

    demo = commands.add_parser("demo", parents=[model], help="run the model on the bundled sample image",
                               description="Add Gaussian noise to the bundled 256x256 sample, restore it "
                               "(with the shipped denoiser unless --task or --weights says otherwise), "
                               "and report what ran, how fast, and the PSNR before and after.")
    demo.add_argument("--sigma", type=float, default=25.0, help="noise level on the 0-255 scale (default: 25)")
    demo.add_argument("--output", metavar="FILE", help="also write the restored sample here")
    demo.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    demo.set_defaults(run=_demo)

    info = commands.add_parser("info", help="version, backends, CPU features, devices")
    info.set_defaults(run=_info)

    from . import evaluation, training
    training.add_arguments(commands.add_parser("train", help="train a RED-Net on a folder of images",
                                               description=training.__doc__.split("\n\n")[0])
                           ).set_defaults(run=training.main)
    evaluation.add_arguments(commands.add_parser("eval", help="PSNR/SSIM of a model against the "
                                                 "classical baseline", description=evaluation.__doc__.split("\n\n")[0])
                             ).set_defaults(run=evaluation.main)
    return parser


# --- the model ----------------------------------------------------------------------------

LEVEL_OPTIONS = {"sigma": "denoise", "scale": "sr", "quality": "jpeg", "blur": "deblur"}


def _check_levels(args) -> None:
    """--sigma/--scale/--quality: only with their task, and only values some model can mean
    (before anything is read); a note when the shipped model was not trained on them."""
    from . import pretrained

    for option, task in LEVEL_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if args.task != task:
            where = f"--task {args.task}" if args.task else "no --task"
            raise UsageError(f"--{option} describes the input of --task {task}, and means nothing with {where}")
        problem = pretrained.level_problem(task, value)
        if problem:
            raise UsageError(f"--{option} {value:g}: {problem}")


def _level_notes(args) -> None:
    from . import pretrained

    for option, task in LEVEL_OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None and args.task == task and not args.quiet:
            note = pretrained.level_note(task, value)
            if note:
                print(f"redkern: note: {note}", file=sys.stderr)


def _device(args):
    import torch

    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {args.device}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: no CUDA device is available here")
    return device


def _build_model(args):
    """``(model, description)`` from the model options: the weights file is the only thing
    read, and the backend, dtype and device are checked together, once."""
    import torch

    import redkern
    from .degradations import TASKS
    from .weights import WeightsError, read

    if args.model is not None and args.model not in DEPTHS:
        return _build_zoo_model(args)
    from .networks.checkpoints import load_state_dict

    depth, channels, features, state = DEPTHS.get(args.model), args.channels, args.features, None
    if args.task:
        from . import pretrained

        if args.weights:
            raise UsageError("--task loads the shipped weights; give --task or --weights, not both")
        args.weights = str(pretrained.path(args.task))
    if args.weights:
        try:
            found = read(args.weights)
        except WeightsError as e:
            raise UsageError(f"--weights {e}") from None
        state = found["state_dict"]
        for name, value in (("depth", depth), ("features", features), ("channels", channels)):
            if value is not None and value != found[name]:
                raise UsageError(f"--weights {args.weights} has {name} {found[name]}, but {value} was asked for")
        depth, channels, features = found["depth"], found["channels"], found["features"]
    depth, channels, features = depth or 30, channels or 1, features or 64
    device, dtype = _device(args), getattr(torch, args.dtype)

    torch.manual_seed(0)  # random weights repeat from run to run
    if args.backend == "reference":
        model = redkern.REDNet(depth, channels, features)
    else:
        model = redkern.FusedREDNet(depth, channels, features, backend=args.backend)
    if state is not None:
        try:
            load_state_dict(model, {k: v.float() for k, v in state.items()})
        except WeightsError as e:
            raise UsageError(f"--weights {args.weights} does not fit RED{depth}: {e}") from None
    else:
        print(f"redkern: note: no --weights or --task given, so RED{depth} has RANDOM weights (seed 0): "
              f"the output shows speed, not restoration (use --task {'|'.join(TASKS)} for the shipped "
              "weights)", file=sys.stderr)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if args.backend == "reference":
        kind = "reference PyTorch"
    else:
        try:  # resolved here once; the model keeps the answer for every tile
            layers = model.backends_for(device, dtype)
        except TypeError as e:
            raise UsageError(f"--dtype {args.dtype}: {e}; --backend reference runs any dtype") from None
        kind = "fused, backend " + ", ".join(sorted({b for b, _ in layers.values()}))
    weights = f"weights {os.path.basename(args.weights)}" if state is not None else "random weights"
    return model, (f"RED{depth} ({channels} channel{'s' if channels > 1 else ''}, {features} features, "
                   f"{kind}, {args.dtype} on {device}, {weights})")


def _zoo_names() -> list[str]:
    """The registered models other than RED-Net's (``--model NAME``)."""
    from .networks import list_models

    return [n for n in list_models() if n not in DEPTHS]


def _build_zoo_model(args):
    """``(model, description)`` for ``--model NAME`` of the zoo (``redkern.create_model``),
    its weights from ``--weights`` in any known layout (``networks.checkpoints``)."""
    import torch

    import redkern
    from .networks import checkpoints, create_model
    from .weights import WeightsError

    name = args.model
    if name not in redkern.list_models():
        raise UsageError(f"--model {name}: unknown; registered: {', '.join(redkern.list_models())}")
    if args.task:
        raise UsageError(f"--task uses the shipped RED30 weights; --model {name} takes --weights FILE")
    options = {k: v for k, v in (("channels", args.channels), ("features", args.features)) if v is not None}
    torch.manual_seed(0)  # random weights repeat from run to run
    try:
        if args.weights:
            model = checkpoints.model_from_checkpoint(name, args.weights, **options)
            weights = f"weights {os.path.basename(args.weights)} ({model.checkpoint_layout} layout)"
        else:
            model = create_model(name, **options)
            weights = "random weights"
    except WeightsError as e:
        raise UsageError(f"--weights {e}") from None
    except TypeError as e:  # an option the network does not take
        raise UsageError(f"--model {name}: {', '.join('--' + k for k in options)} does not apply ({e})") from None
    except ValueError as e:
        raise UsageError(f"--model {name}: {e}") from None
    _check_tileable(model, name)
    if not args.weights:
        print(f"redkern: note: no --weights given, so {name} has RANDOM weights (seed 0): the output shows "
              "speed, not restoration", file=sys.stderr)
    device, dtype = _device(args), getattr(torch, args.dtype)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if not hasattr(model, "channels"):  # what tiling feeds it: the first convolution's input channels
        model.channels = next(m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)).in_channels
    if args.backend == "reference":
        model.receptive_field_radius = redkern.plan(model).receptive_field_radius()  # the halo tiling needs
        kind = "reference PyTorch"
    else:
        model = redkern.fuse(model, backend=args.backend)
        try:
            layers = model.backends_for(device, dtype)
        except TypeError as e:
            raise UsageError(f"--dtype {args.dtype}: {e}; --backend reference runs any dtype") from None
        kind = "fused, backend " + ", ".join(sorted({b for b, _ in layers.values()}))
    return model, f"{name} ({model.channels} channel{'s' if model.channels > 1 else ''}, {kind}, " \
                  f"{args.dtype} on {device}, {weights})"


def _check_tileable(model, name: str) -> None:
    """Tiles must reproduce whole-image inference: a network whose output is not exactly
    ``scale`` times its input (SRCNN's unpadded convolutions trim the border) is refused here,
    with the reason its layer plan gives (``redkern.tiling.receptive_field``)."""
    from .tiling import receptive_field

    try:
        receptive_field(model)
    except ValueError as e:
        raise UsageError(f"--model {name}: {e}") from None


# --- commands -----------------------------------------------------------------------------

MAX_TILE_OVERHEAD = 4.0  # the CLI refuses windows whose halos cost more than this x whole-image compute
DISTRIBUTED_TILE = 512  # --scheduler's window without --tile: chunks are multiples of its core


def _restore(args) -> int:
    from . import imageio
    from .tiling import prepare_restore

    if args.scheduler or args.resume or args.chunk or args.threads:
        return _restore_distributed(args)
    _check_levels(args)
    fmt = imageio.check_output_path(args.output, args.overwrite, source=args.input)  # cheap checks first
    model, description = _build_model(args)
    _level_notes(args)
    out_dtype = None if args.out_dtype == "same" else args.out_dtype
    with imageio.open_image(args.input) as reader:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the halo note is printed below, in our words
                job = prepare_restore(model, reader, args.output, tile=args.tile, halo=args.halo,
                                      batch=args.batch, allow_inexact=args.allow_inexact,
                                      overwrite=args.overwrite, out_dtype=out_dtype, quiet=args.quiet,
                                      max_overhead=MAX_TILE_OVERHEAD, path_checked=fmt)
        except ValueError as e:
            raise UsageError(_cli_words(str(e))) from e
        logging.getLogger("redkern").info("model: %s", description)
        run = job.run()
    oh, ow = run.output_size
    size = f"{run.height}x{run.width}" + ("" if (oh, ow) == (run.height, run.width) else f" -> {oh}x{ow}" + (
        f" (x{run.scale})" if run.scale != 1 else f" (unpadded: {run.trim} px less at every border)"))
    if run.tile_choice:
        logging.getLogger("redkern").info("%s", run.tile_choice)
    print(f"wrote {args.output}: {size}, {_tiles(run.tiles, run.tile_shape, run.halo)}, "
          f"{run.megapixels:.3g} MP in {run.seconds:.2f} s ({run.megapixels_per_second:.3g} MP/s) on {run.device}")
    return 0


# --- restore on a Dask cluster (--scheduler): redkern.distributed ----------------------------

def _restore_distributed(args) -> int:
    """``restore --scheduler``: the model is built here (so every option is checked as without
    --scheduler) and sent to the workers as a description (weights + config), never itself."""
    from . import distributed, imageio

    if not args.scheduler:
        given = [f"--{n}" for n in ("resume", "chunk", "threads") if getattr(args, n)]
        raise UsageError(f"{', '.join(given)} belong to a --scheduler run (add --scheduler local:N or an address)")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues OUTPUT and --overwrite replaces it: give one of them")
    if args.batch != 1:
        raise UsageError("--batch is not used with --scheduler (each task runs its chunk's tiles one by one)")
    _check_levels(args)
    try:
        distributed._require_distributed()
    except distributed.DistributedUnavailable as e:
        raise UsageError(str(e).replace("running on a Dask cluster", "--scheduler")) from None
    if imageio.format_of(args.output, reading=False) != "zarr":
        raise UsageError(f"--scheduler writes OUTPUT chunk by chunk from many processes: it must be a .zarr "
                         f"store, not {args.output}")
    imageio.check_output_path(args.output, overwrite=args.overwrite or args.resume, source=args.input)
    device, dtype = args.device, args.dtype
    if device != "cpu":  # the workers' device, which this machine need not have: build here on the CPU
        args.device, args.dtype = "cpu", "float32"
    try:
        model, description = _build_model(args)
    finally:
        args.device, args.dtype = device, dtype
    _level_notes(args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the halo note is the library's; the CLI's words say enough
            run = distributed.restore(args.input, args.output, model, client=args.scheduler,
                                      tile=args.tile or DISTRIBUTED_TILE,
                                      halo=args.halo, chunk=args.chunk, allow_inexact=args.allow_inexact,
                                      overwrite=args.overwrite, resume=args.resume,
                                      out_dtype=None if args.out_dtype == "same" else args.out_dtype,
                                      threads=args.threads, device=device, dtype=dtype, quiet=args.quiet,
                                      timeout=args.scheduler_timeout)
    except distributed.SchedulerUnreachable as e:
        return _fail(EXIT_FAILED, f"--scheduler {args.scheduler}: {e}; no output was written")
    except (distributed.ResumeMismatch, distributed.MisalignedChunks) as e:
        return _fail(EXIT_OUTPUT, _cli_words(str(e)))
    except ValueError as e:
        if isinstance(e, imageio.ImageError):
            raise
        raise UsageError(_cli_words(str(e))) from e
    logging.getLogger("redkern").info("model: %s", description)
    done = (f"{run.chunks_computed} of {run.chunks_total} chunks computed"
            + (" (resumed)" if run.resumed else ""))
    print(f"wrote {args.output}: {run.height}x{run.width}, {run.tiles} tiles (core {run.tile - 2 * run.halo}, "
          f"halo {run.halo}) in chunks of {run.chunk}, {done} on {run.workers} worker(s), "
          f"{run.megapixels:.3g} MP in {run.seconds:.2f} s ({run.megapixels_per_second:.3g} MP/s)")
    return 0


def _cli_words(message: str) -> str:
    """A Python-API message in the command line's words."""
    return (message.replace("pass allow_inexact=True (--allow-inexact)", "pass --allow-inexact")
            .replace("pass overwrite=True (--overwrite)", "pass --overwrite")
            .replace("pass overwrite (--overwrite)", "pass --overwrite")
            .replace("resume=True (--resume)", "--resume"))


def _check_fit(args, model, height: int, width: int):
    """The halo and tiles the options ask for, or a UsageError saying why they cannot work."""
    from .tiling import default_tile, plan_tiles, resolve_halo, smallest_window, tile_overhead

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the run itself warns about an inexact halo
            halo = resolve_halo(model, args.halo, args.allow_inexact)
        if args.tile is None:
            args.tile, choice = default_tile(model, height, width, halo=halo, batch=args.batch)
            logging.getLogger("redkern").info("%s", choice)
        tiles = plan_tiles(height, width, args.tile, halo)
    except ValueError as e:
        raise UsageError(_cli_words(str(e))) from e
    if tile_overhead(tiles, height, width) > MAX_TILE_OVERHEAD:
        raise UsageError(f"--tile {args.tile} with a halo of {halo} px computes "
                         f"{tile_overhead(tiles, height, width):.1f}x the pixels it keeps; the smallest "
                         f"sensible window is {smallest_window(height, width, halo, MAX_TILE_OVERHEAD)} px")
    return halo, tiles


def _tiles(count: int, shape, halo: int) -> str:
    return f"{count} tile{'s' if count > 1 else ''} of {shape[0]}x{shape[1]} (halo {halo})"


def _psnr(x, reference) -> float:
    import math

    mse = float(((x - reference) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


def _demo(args) -> int:
    import torch

    from . import imageio
    from .tiling import tiled

    from . import pretrained

    problem = pretrained.level_problem("denoise", args.sigma)
    if problem:
        raise UsageError(f"--sigma {args.sigma:g}: {problem}")
    if args.output:
        imageio.check_output_path(args.output, args.overwrite)
    if args.task is None and not args.weights and args.model is None and args.features is None \
            and args.channels is None:
        args.task = "denoise"  # the demo restores with the shipped denoiser unless told otherwise
    model, description = _build_model(args)
    sample = imageio.sample_path()
    pixels = imageio.read_image(sample)
    clean = torch.from_numpy(imageio.to_float(pixels)).permute(2, 0, 1)[None]
    clean = clean.expand(1, model.channels, *clean.shape[2:]).contiguous()
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = clean + args.sigma / 255 * noise
    halo, tiles = _check_fit(args, model, clean.shape[2], clean.shape[3])
    # One small call first: the first call prepares (packs) the weights; time the steady state.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiled(model, noisy[..., :32, :32], tile=args.tile, halo=halo, allow_inexact=True, quiet=True)
    start = time.perf_counter()
    restored = tiled(model, noisy, tile=args.tile, halo=halo, batch=args.batch,
                     allow_inexact=args.allow_inexact, quiet=args.quiet)
    seconds = time.perf_counter() - start
    megapixels = clean.shape[2] * clean.shape[3] / 1e6
    shape = (tiles[0].window[0].stop - tiles[0].window[0].start, tiles[0].window[1].stop - tiles[0].window[1].start)
    print(f"redkern demo: {description}")
    print(f"  input: {sample.name}, bundled, {clean.shape[2]}x{clean.shape[3]}, with Gaussian noise "
          f"(sigma {args.sigma:g} of 255)")
    print(f"  ran {_tiles(len(tiles), shape, halo)}: {megapixels:.3g} MP in {seconds:.3f} s, "
          f"{megapixels / seconds:.3g} MP/s")
    restored = restored.float().clamp(0, 1)
    note = " (random weights: this shows speed, not quality; pass --weights)" if not args.weights else ""
    print(f"  PSNR against the clean sample: noisy {_psnr(noisy.clamp(0, 1), clean):.2f} dB, "
          f"restored {_psnr(restored, clean):.2f} dB{note}")
    if args.output:
        values = restored[0].permute(1, 2, 0).numpy()
        imageio.write_image(args.output, imageio.from_float(values, "uint8"), overwrite=args.overwrite)
        print(f"  wrote {args.output}")
    return 0


def _info(args) -> int:
    import numpy
    import torch

    import redkern

    print(f"redkern {redkern.__version__} (python {platform.python_version()}, torch {torch.__version__}, "
          f"numpy {numpy.__version__})")
    print("backends:")
    for name, status in redkern.backends().items():
        print(f"  {name:7} {'available' if status['available'] else 'unavailable':11} {status['detail']}")
        print(f"  {'':7} {'':11} backward: {status['backward']}")
    bf16 = ""
    try:
        from . import _C
        from .backends import cpu

        isa = _C.selected_isa()
        bf16 = (f"; fp32 3x3 layers: {cpu.algorithm(64, 64, 3, 1, False, torch.float32)}"
                f"; bf16 3x3 layers: {cpu.algorithm(64, 64, 3, 1, False, torch.bfloat16)}")
        if _C.bf16_dot_supported():
            bf16 += f" (vdpbf16ps measured at {_C.bf16_dot_speedup():.2f}x the FMA's multiply-adds)"
    except (ImportError, AttributeError, ValueError) as e:
        isa = f"unknown ({e})"
    print(f"cpu: {platform.machine()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} "
          f"threads, torch capability {torch.backends.cpu.get_cpu_capability()}, redkern._C ISA {isa}{bf16}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
    else:
        why = "torch built without CUDA" if torch.version.cuda is None else "no CUDA device visible"
        print(f"cuda: none ({why})")
    print(f"image formats: {_formats()}")
    print(f"models: {', '.join(redkern.list_models())} (redkern restore --model NAME --weights FILE; "
          "KAIR, BasicSR and redkern checkpoint layouts)")
    return 0


def _formats() -> str:
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    zarr = version("zarr")
    return (f".png .jpg .jpeg (Pillow {version('pillow')}), .tif .tiff .btf .tf8 (tifffile "
            f"{version('tifffile')}), .npy, " + (f".zarr (zarr {zarr})" if zarr else
                                                 ".zarr unavailable (pip install 'redkern[zarr]')"))
