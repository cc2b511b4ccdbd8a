"""The ``redkern`` command line, end to end on real files."""

import os
import shutil
import signal
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import redkern
from redkern import cli, imageio
from redkern.tiling import restore_file


def run(*args, timeout=180):
    # cwd outside the checkout: `python -m` puts cwd first on sys.path, and the source tree's
    # redkern/ (without the built extension) must not shadow the installed package.
    return subprocess.run([sys.executable, "-m", "redkern", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=tempfile.gettempdir())


@pytest.fixture
def rng():
    return np.random.default_rng(torch.initial_seed())


@pytest.fixture
def photo(tmp_path, rng):
    """An RGB PNG of odd size: smooth gradients plus noise."""
    h, w = 67, 91
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([xx, yy, 1 - xx * yy], -1) * 0.8 + rng.normal(0, 0.05, (h, w, 3))
    path = tmp_path / "photo.png"
    imageio.write_image(path, imageio.from_float(base.astype(np.float32), np.uint8))
    return path


@pytest.fixture
def weights(tmp_path):
    model = redkern.RED10(features=8)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path / "red10.pt"
    torch.save(model.state_dict(), path)
    return path


def test_restore_end_to_end(tmp_path, photo, weights):
    out = tmp_path / "out.png"
    done = run("restore", photo, out, "--weights", weights, "--tile", 40, "--batch", 3, "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: 67x91" in done.stdout and "MP/s" in done.stdout
    assert "RANDOM" not in done.stderr
    # The same model in this process: the command ran what it said, and kept the image's type.
    model = redkern.RED10(features=8, fused=True).eval()
    model.load_state_dict(torch.load(weights))
    restore_file(model, photo, tmp_path / "here.png", tile=40, quiet=True)
    got, want = imageio.read_image(out), imageio.read_image(tmp_path / "here.png")
    assert got.dtype == np.uint8 and got.shape == (67, 91, 3)
    assert np.abs(got.astype(int) - want).max() <= 1  # thread counts may differ: float rounding
    assert not np.array_equal(got, imageio.read_image(photo))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here.png", "out.png", "photo.png", "red10.pt"]


def test_restore_says_when_weights_are_random(tmp_path, rng):
    src = tmp_path / "in.npy"
    np.save(src, rng.random((30, 41), dtype=np.float32))
    done = run("restore", src, tmp_path / "out.tif", "--model", "red10", "--features", 4, "--backend", "reference")
    assert done.returncode == 0, done.stderr
    assert "RANDOM weights" in done.stderr
    assert "restoring 1 channel" in done.stderr and "reference PyTorch" in done.stderr
    out = imageio.read_image(tmp_path / "out.tif")
    assert out.dtype == np.float32 and out.shape == (30, 41, 1) and np.isfinite(out).all()


def test_restore_without_a_tile_sizes_the_window_from_memory_and_says_so(tmp_path, rng):
    src = tmp_path / "in.npy"
    np.save(src, rng.random((30, 41), dtype=np.float32))
    done = run("restore", src, tmp_path / "out.tif", "--model", "red10", "--features", 4)
    assert done.returncode == 0, done.stderr
    assert "chosen from" in done.stderr and "GiB available on cpu" in done.stderr
    assert "1 tile of 30x41" in done.stdout  # an image that fits is one window: whole-image inference


def test_info_through_the_console_script():
    script = Path(sys.executable).with_name("redkern")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "redkern"]
    done = subprocess.run([*command, "info"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"redkern {redkern.__version__}")
    for name in redkern.backends():
        assert f"  {name} " in done.stdout
    assert f"torch capability {torch.backends.cpu.get_cpu_capability()}" in done.stdout
    assert "cuda" in done.stdout and ".zarr" in done.stdout


def test_demo_reports_what_ran_and_how_fast(tmp_path):
    out = tmp_path / "demo.png"
    done = run("demo", "--model", "red10", "--features", 8, "--tile", 100, "--output", out)
    assert done.returncode == 0, done.stderr
    assert "RED10 (1 channel, 8 features, fused" in done.stdout and "camera.png" in done.stdout
    assert "9 tiles of 99x99 (halo 10)" in done.stdout  # 256 px: 3 windows of at most 100
    assert " MP/s" in done.stdout and "PSNR" in done.stdout and "random weights" in done.stdout
    assert imageio.read_image(out).shape == (256, 256, 1)


# --- errors: a clear line and a distinct exit code, in process for speed ------------------

def main(capsys, *args):
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_input_errors_exit_3(tmp_path, capsys, photo):
    code, err = main(capsys, "restore", tmp_path / "missing.png", tmp_path / "o.png")
    assert code == 3 and "missing.png: no such file" in err
    (tmp_path / "a.webp").write_bytes(b"RIFF")
    code, err = main(capsys, "restore", tmp_path / "a.webp", tmp_path / "o.png")
    assert code == 3 and "unsupported image format '.webp'" in err
    (tmp_path / "bad.tif").write_bytes(b"this is no tiff")
    code, err = main(capsys, "restore", tmp_path / "bad.tif", tmp_path / "o.tif")
    assert code == 3 and "bad.tif: cannot read it as tiff" in err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "o.tif").exists()


def test_output_errors_exit_4(tmp_path, capsys, photo):
    model = ["--model", "red10", "--features", "4", "--quiet"]
    (tmp_path / "o.png").write_bytes(b"keep me")
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", *model)
    assert code == 4 and "exists" in err and "--overwrite" in err
    assert (tmp_path / "o.png").read_bytes() == b"keep me"
    code, err = main(capsys, "restore", photo, tmp_path / "nodir" / "o.png", *model)
    assert code == 4 and "does not exist" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png" / "x.png", *model)
    assert code == 4 and "not a directory" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.gif", *model)
    assert code == 4 and "redkern writes" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.jpg", "--out-dtype", "uint16", *model)
    assert code == 4 and "JPEG" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--overwrite", *model)
    assert code == 0, err
    assert imageio.read_image(tmp_path / "o.png").shape == (67, 91, 3)


def test_argument_errors_exit_2(tmp_path, capsys, photo, weights):
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--weights", tmp_path / "none.pt")
    assert code == 2 and "none.pt: no such file" in err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--weights", tmp_path / "junk.pt")
    assert code == 2 and "junk.pt: not a RED-Net state_dict: not a file torch.save wrote" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--weights", weights, "--model", "red20")
    assert code == 2 and "has depth 10, but 20 was asked for" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--features", "4", "--device", "cuda")
    assert code == 2 and "CUDA" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "red10", "--features", "4",
                     "--tile", "15")
    assert code == 2 and "tile > 2 * halo = 20" in err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "red10", "--features", "4",
                     "--halo", "9")
    assert code == 2 and "smaller than the model's receptive field radius 10" in err and "--allow-inexact" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["restore", str(photo), str(tmp_path / "o.png"), "--tile", "0"])
    assert e.value.code == 2
    assert not (tmp_path / "o.png").exists()


def test_a_three_channel_model_on_a_grayscale_image_is_refused(tmp_path, capsys):
    imageio.write_image(tmp_path / "g.png", np.zeros((9, 9), np.uint8))
    code, err = main(capsys, "restore", tmp_path / "g.png", tmp_path / "o.png", "--channels", "3",
                     "--model", "red10", "--features", "4")
    assert code == 2 and "3-channel model cannot restore an image with 1 colour channel" in err
    assert not (tmp_path / "o.png").exists()


# --- nothing lost: what --overwrite may replace, and never the input -----------------------

def snapshot(root: Path) -> dict:
    """Every file and directory under ``root`` (``root`` itself if a file), with file bytes."""
    if root.is_file():
        return {".": root.read_bytes()}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


def a_tree(root: Path) -> Path:
    """A directory of a user's things: files and a subfolder."""
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("precious")
    (root / "sub" / "holiday.png").write_bytes(b"\x89PNG not really")
    return root


SMALL = ["--model", "red10", "--features", "4", "--quiet"]


@pytest.mark.parametrize("name", ["photos.png", "data.npy", "res.zarr", "scan.tif"])
def test_overwrite_refuses_a_directory_that_redkern_did_not_write(tmp_path, capsys, photo, name):
    target = a_tree(tmp_path / name)
    before, source = snapshot(target), photo.read_bytes()
    code, err = main(capsys, "restore", photo, target, "--overwrite", *SMALL)
    assert code == cli.EXIT_OUTPUT, err
    assert "not a zarr store written by redkern" in err and "nothing was touched" in err
    assert snapshot(target) == before and photo.read_bytes() == source
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photo.png", name])


def test_overwrite_refuses_zarr_stores_redkern_did_not_write_or_that_hold_more(tmp_path, capsys, photo):
    zarr = pytest.importorskip("zarr")
    foreign = tmp_path / "foreign.zarr"  # a real zarr array, but someone else's
    zarr.open_array(str(foreign), mode="w", shape=(4, 4), dtype="u1")[:] = 7
    ours = tmp_path / "ours.zarr"
    assert main(capsys, "restore", photo, ours, *SMALL)[0] == 0
    assert imageio.written_by_redkern(ours) and not imageio.written_by_redkern(foreign)
    (ours / "c" / "README").write_text("a file someone put in the store")
    for target in (foreign, ours):
        before = snapshot(target)
        code, err = main(capsys, "restore", photo, target, "--overwrite", *SMALL)
        assert code == cli.EXIT_OUTPUT and "not a zarr store written by redkern" in err, err
        assert snapshot(target) == before


def test_overwrite_replaces_a_file_and_a_zarr_store_redkern_wrote(tmp_path, capsys, photo):
    pytest.importorskip("zarr")
    store = tmp_path / "out.zarr"
    assert main(capsys, "restore", photo, store, *SMALL)[0] == 0
    first = snapshot(store)
    code, err = main(capsys, "restore", photo, store, "--overwrite", "--out-dtype", "float32", *SMALL)
    assert code == 0, err
    assert snapshot(store) != first and imageio.read_image(store).dtype == np.float32
    (tmp_path / "out.png").write_bytes(b"old")
    assert main(capsys, "restore", photo, tmp_path / "out.png", "--overwrite", *SMALL)[0] == 0
    assert imageio.read_image(tmp_path / "out.png").shape == (67, 91, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "out.zarr", "photo.png"]


@pytest.mark.parametrize("alias", ["same", "dotdot", "symlink", "hardlink"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_the_input_is_never_the_output(tmp_path, capsys, rng, alias, overwrite):
    src = tmp_path / "ok.npy"
    np.save(src, rng.random((20, 30), dtype=np.float32))
    (tmp_path / "sub").mkdir()
    out = {"same": src, "dotdot": tmp_path / "sub" / ".." / "ok.npy", "symlink": tmp_path / "link.npy",
           "hardlink": tmp_path / "hard.npy"}[alias]
    if alias == "symlink":
        out.symlink_to(src)
    elif alias == "hardlink":
        os.link(src, out)
    before = src.read_bytes()
    code, err = main(capsys, "restore", src, out, *SMALL, *(["--overwrite"] if overwrite else []))
    assert code == cli.EXIT_OUTPUT, err
    assert f"{out}: is the input {src} itself" in err and "--overwrite" not in err
    assert src.read_bytes() == before and out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_temporaries_of_a_killed_run_are_found_and_removed_by_the_next(tmp_path, rng):
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, rng.random((600, 600), dtype=np.float32))
    before = src.read_bytes()
    child = subprocess.Popen([sys.executable, "-m", "redkern", "restore", str(src), str(out), "--model", "red30",
                              "--features", "32", "--backend", "reference", "--tile", "128", "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 120
    while not (parts := [p for p in tmp_path.iterdir() if p.name.endswith(".part")]):
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    child.kill()  # SIGKILL: no handler runs, the temporary stays
    child.wait(timeout=60)
    assert parts[0].exists() and parts[0].name.startswith(f".out.npy.{child.pid}-")
    assert imageio.stale_temporaries(out) == parts
    # Another output's stale temporary in the same folder is not this run's business.
    other = tmp_path / f".other.npy.{child.pid}-0123abcd.part"
    other.write_bytes(b"x")
    done = run("restore", src, out, "--model", "red10", "--features", "4", "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"removed {parts[0]}" in done.stderr and f"process {child.pid} is gone" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "in.npy", "out.npy"]
    assert src.read_bytes() == before and imageio.read_image(out).shape == (600, 600, 1)


def test_temporaries_of_a_running_process_are_left_alone(tmp_path):
    live = tmp_path / f".out.npy.{os.getppid()}-0123abcd.part"
    live.write_bytes(b"in use")
    assert imageio.stale_temporaries(tmp_path / "out.npy") == []
    assert imageio.remove_stale_temporaries(tmp_path / "out.npy") == [] and live.exists()


# --- a full disk, a locked directory ---------------------------------------------------------

def _file_size_limit(nbytes):
    """For a child process: files may not grow past ``nbytes``. Writes past it fail with EFBIG
    (Python ignores SIGXFSZ), through the same paths a full disk's ENOSPC takes."""
    def apply():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")
@pytest.mark.parametrize("suffix", [".npy", ".tif", ".png", ".zarr"])
def test_running_out_of_space_is_an_output_error_and_leaves_nothing(tmp_path, rng, suffix):
    src = tmp_path / "in.npy"
    np.save(src, rng.random((300, 300), dtype=np.float32))
    before = src.read_bytes()
    out = tmp_path / f"out{suffix}"
    args = [sys.executable, "-m", "redkern", "restore", str(src), str(out), "--model", "red10",
            "--features", "4", "--backend", "reference", "--tile", "128", "--quiet"]
    if suffix in (".png",):
        args += ["--out-dtype", "uint8"]
    child = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=tempfile.gettempdir(),
                           preexec_fn=_file_size_limit(64 * 1024))
    assert child.returncode == cli.EXIT_OUTPUT, child.stderr
    assert f"{out}: " in child.stderr and "File too large" in child.stderr, child.stderr
    assert "Traceback" not in child.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
    assert src.read_bytes() == before


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_a_directory_without_write_permission_is_refused_before_work():
    """Run in a forked child; as root (who may write anywhere) the child first drops to an
    unprivileged user, so the directory's permissions apply."""
    base = Path(tempfile.mkdtemp(prefix="redkern-perm-"))
    locked = base / "locked"
    try:
        base.chmod(0o755)
        src = base / "in.npy"
        np.save(src, np.zeros((40, 40), np.float32))
        src.chmod(0o644)
        locked.mkdir()
        locked.chmod(0o555)
        err_path = base / "stderr.txt"
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 99
            try:
                sys.stderr = open(err_path, "w")
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                code = cli.main(["restore", str(src), str(locked / "out.npy"), "--model", "red10",
                                 "--features", "4", "--quiet"])
            finally:
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        err = err_path.read_text()
        assert os.waitstatus_to_exitcode(status) == cli.EXIT_OUTPUT, err
        assert f"no permission to write in {locked}" in err, err
        assert list(locked.iterdir()) == []
    finally:
        if locked.exists():
            locked.chmod(0o755)
        shutil.rmtree(base)


# --- interrupts -----------------------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_mid_run_leaves_no_output_and_no_temporary(tmp_path, rng, sig, code, word):
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    np.save(src, rng.random((600, 600), dtype=np.float32))
    child = subprocess.Popen([sys.executable, "-m", "redkern", "restore", str(src), str(out), "--model", "red30",
                              "--features", "32", "--backend", "reference", "--tile", "128"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # A shell's background job (CI's, say) ignores SIGINT, and so would
                             # the child: give it the default a terminal's Ctrl-C meets.
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part") for p in tmp_path.iterdir()):  # the run has started
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err
    assert f"{word}: no output was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_python_dash_m_and_the_console_script_agree():
    script = shutil.which("redkern", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the console script is not installed next to this interpreter")
    a = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    b = run("--help")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and "restore" in a.stdout
    assert os.access(script, os.X_OK)


# --- bad input refused early, in the command line's words ---------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--task", "denoise", "--sigma", "-1"], "--sigma -1: sigma -1.0 is not a number in [0.0, 255.0]"),
    (["--task", "denoise", "--sigma", "1000"], "--sigma 1000: sigma 1000.0 is not"),
    (["--task", "denoise", "--sigma", "nan"], "--sigma nan: sigma nan is not"),
    (["--task", "sr", "--scale", "0"], "--scale 0: scale 0 is not an integer in [2, 16]"),
    (["--task", "jpeg", "--quality", "500"], "--quality 500: quality 500 is not an integer in [1, 100]"),
    (["--task", "sr", "--sigma", "25"], "--sigma describes the input of --task denoise, and means nothing with --task sr"),
    (["--sigma", "25"], "--sigma describes the input of --task denoise, and means nothing with no --task"),
])
def test_levels_no_model_can_mean_are_refused_before_anything_is_read(tmp_path, capsys, args, message):
    missing = tmp_path / "not-there.png"  # never opened: the arguments are refused first
    code, err = main(capsys, "restore", missing, tmp_path / "o.png", *args)
    assert code == cli.EXIT_USAGE and message in err, err
    assert "not-there.png" not in err


def test_levels_outside_the_trained_range_get_one_line_in_our_words(tmp_path, capsys, photo):
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--task", "sr", "--scale", "7")
    assert code == 0, err
    assert "redkern: note: the sr model was trained on" in err and "scale 7 is outside" in err
    assert "UserWarning" not in err and ".py:" not in err


def test_a_window_that_is_nearly_all_halo_is_refused_with_the_smallest_sensible_one(tmp_path, capsys, rng):
    src = tmp_path / "in.npy"
    np.save(src, rng.random((128, 128), dtype=np.float32))
    code, err = main(capsys, "restore", src, tmp_path / "o.npy", "--model", "red30", "--features", "4", "--tile", "61")
    assert code == cli.EXIT_USAGE and "computes" in err and "the smallest sensible window is" in err, err
    smallest = int(err.rsplit("is ", 1)[1].split()[0])
    from redkern.tiling import plan_tiles, tile_overhead
    assert tile_overhead(plan_tiles(128, 128, smallest, 30), 128, 128) <= cli.MAX_TILE_OVERHEAD
    assert tile_overhead(plan_tiles(128, 128, smallest - 1, 30), 128, 128) > cli.MAX_TILE_OVERHEAD
    assert main(capsys, "restore", src, tmp_path / "o.npy", "--model", "red30", "--features", "4", "--quiet",
                "--tile", str(smallest))[0] == 0


def test_a_dtype_the_kernels_do_not_take_is_refused_before_the_input_is_opened(tmp_path, capsys):
    code, err = main(capsys, "restore", tmp_path / "not-there.png", tmp_path / "o.png", "--dtype", "float16",
                     "--features", "4")
    assert code == cli.EXIT_USAGE, err
    assert "--dtype float16: the CPU kernels take float32, bfloat16" in err and "--backend reference" in err


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_truncated_tiff_is_an_input_error_naming_the_file(tmp_path, capsys, rng, compression):
    import tifffile

    full = tmp_path / "full.tif"
    tifffile.imwrite(full, (rng.random((200, 200)) * 255).astype(np.uint8), compression=compression, rowsperstrip=16)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    code, err = main(capsys, "restore", cut, tmp_path / "o.tif", "--model", "red10", "--features", "4", "--quiet")
    assert code == cli.EXIT_INPUT and f"{cut}: truncated or corrupt" in err, err
    assert not (tmp_path / "o.tif").exists()


def test_npy_files_that_are_not_numeric_arrays(tmp_path, capsys):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "garbled.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00{garbage" + b" " * 100)
    for name in ("objects.npy", "garbled.npy"):
        code, err = main(capsys, "restore", tmp_path / name, tmp_path / "o.npy", "--model", "red10", "--features", "4")
        assert code == cli.EXIT_INPUT and f"{name}: not a numeric .npy array" in err, err
        assert "allow_pickle" not in err


def test_weights_that_are_not_a_state_dict_get_one_line(tmp_path, capsys, photo):
    torch.save(redkern.RED10(features=4), tmp_path / "whole.pt")
    for path, says in ((photo, "not a file torch.save wrote"),
                       (tmp_path / "whole.pt", "it holds a pickled Python object (redkern.models.REDNet)")):
        code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--weights", path)
        assert code == cli.EXIT_USAGE and f"not a RED-Net state_dict: {says}" in err, err
        assert err.count("\n") == 1 and "weights_only" not in err


@pytest.mark.parametrize("args,code,says", [
    (["--task", "denoise", "--level", "-5"], 2, "--level -5: sigma '-5' is not a number in"),
    (["--task", "denoise", "--level", "abc"], 2, "--level abc: sigma must be a number"),
    (["--task", "jpeg", "--level", "10,500"], 2, "--level 500"),
    (["--task", "denoise", "--level", "25", "--data", "/nonexistent/folder"], 3, "no such image folder"),
])
def test_eval_uses_the_restore_exit_codes(capsys, args, code, says):
    if "--data" not in args:
        args = args + ["--data", "/nonexistent/folder"]
    got, err = main(capsys, "eval", *args, "--no-baseline")
    assert got == code and says in err, err


def test_help_describes_every_argument_in_command_line_words():
    text = subprocess.run([sys.executable, "-m", "redkern", "restore", "--help"], capture_output=True, text=True,
                          cwd=tempfile.gettempdir()).stdout
    import re
    assert re.search(r"INPUT\s+the image to restore", text) and re.search(r"OUTPUT\s+where the restored image goes", text)
    assert "blind" in text  # --sigma says what it does with the level


def test_messages_use_command_line_words(tmp_path, capsys, photo):
    (tmp_path / "o.png").write_bytes(b"x")
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--features", "4")
    assert code == cli.EXIT_OUTPUT and "pass --overwrite" in err and "overwrite=True" not in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pseudo-terminals")
def test_the_progress_bar_shows_on_a_pseudo_terminal_without_a_window_size(tmp_path, rng):
    import pty

    src = tmp_path / "in.npy"
    np.save(src, rng.random((300, 300), dtype=np.float32))
    master, slave = pty.openpty()  # a fresh pty reports 0 x 0, as `script` fed from a pipe does
    child = subprocess.Popen([sys.executable, "-m", "redkern", "restore", str(src), str(tmp_path / "o.npy"),
                              "--model", "red10", "--features", "4", "--tile", "128"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=tempfile.gettempdir())
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    child.wait(timeout=120)
    os.close(master)
    assert child.returncode == 0, seen
    assert b"9/9 [" in seen and b"tile/s" in seen, seen[-500:]


# --- zoo models: --model NAME --weights FILE in the public ports' layouts --------------------

def _fresh(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", ["vdsr", "dncnn_s"])
def test_restore_a_zoo_model_from_its_checkpoint_equals_whole_image_inference(tmp_path, capsys, rng, name):
    if name == "vdsr":  # BasicSR-style wrapping and a DataParallel prefix around redkern's keys
        model = _fresh(redkern.create_model("vdsr", depth=5, features=8))
        saved = {"params": {"module." + k: v for k, v in model.state_dict().items()}}
    else:  # KAIR's released DnCNN: BatchNorms merged, model.N keys, a bias on every conv
        model = _fresh(redkern.create_model("dncnn_s", features=8, batchnorm=False, bias=True))
        saved = {k.replace("dncnn.", "model."): v for k, v in model.state_dict().items()}
    torch.save(saved, tmp_path / "w.pth")
    image = rng.random((41, 37), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    code, err = main(capsys, "restore", tmp_path / "in.npy", tmp_path / "out.npy", "--model", name,
                     "--weights", tmp_path / "w.pth", "--tile", 40)
    assert code == 0, err
    assert f"model: {name} (1 channel, fused" in err and ("kair layout" if name == "dncnn_s" else "redkern layout") in err
    with torch.no_grad():
        want = model(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), want, atol=1e-4)


def test_a_zoo_checkpoint_that_does_not_fit_is_one_line_naming_keys(tmp_path, capsys, photo):
    model = redkern.create_model("vdsr", depth=4, features=8)
    state = model.state_dict()
    del state["output.bias"]
    torch.save(state, tmp_path / "w.pth")
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "vdsr", "--weights", tmp_path / "w.pth")
    assert code == cli.EXIT_USAGE and "missing output.bias" in err and err.count("\n") == 1, err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "vdsr", "--features", "16",
                     "--weights", tmp_path / "w.pth")
    assert code == cli.EXIT_USAGE and "features=8, but features=16 was asked for" in err, err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "dncnn_s", "--weights", tmp_path / "w.pth")
    assert code == cli.EXIT_USAGE and "unexpected keys input.weight" in err and "vdsr" in err, err
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "vdrs")
    assert code == cli.EXIT_USAGE and "unknown; registered: dncnn_b" in err
    assert not (tmp_path / "o.png").exists()


def test_restore_with_an_upsampler_equals_whole_image_inference(tmp_path, capsys, rng):
    """ESPCN x3 from a redkern checkpoint: tiles of the input, each window's output written at
    three times its core; the whole file equals one forward of the module."""
    model = _fresh(redkern.create_model("espcn"))
    torch.save(model.state_dict(), tmp_path / "w.pth")
    image = rng.random((45, 38), dtype=np.float32)
    np.save(tmp_path / "in.npy", image)
    code = cli.main(["restore", str(tmp_path / "in.npy"), str(tmp_path / "out.npy"), "--model", "espcn",
                     "--weights", str(tmp_path / "w.pth"), "--tile", "20"])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert "45x38 -> 135x114 (x3), 12 tiles of 18x18 (halo 4)" in said.out, said.out  # at most 20
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (135, 114)
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():  # the same kernels on the whole image; the module to its rounding
        whole = redkern.fuse(model)(x)[0, 0].numpy()
        want = model.double()(x.double())[0, 0].numpy()
    np.testing.assert_allclose(out, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_a_network_tiles_cannot_reproduce_is_refused_with_the_plans_reason(tmp_path, capsys, photo):
    code, err = main(capsys, "restore", photo, tmp_path / "o.png", "--model", "srn_deblur")
    assert code == cli.EXIT_USAGE and "--model srn_deblur: SRNDeblurNet cannot be tiled exactly" in err, err
    assert "1/2 x 1/2 of the input's resolution" in err
    assert not (tmp_path / "o.png").exists()
    assert cli.main(["info"]) == 0 and "models: dncnn_b, dncnn_s, drcn, drrn" in capsys.readouterr().out
