"""redkern.distributed: one Dask task per output chunk, exact, resumable, surviving a lost worker.

One LocalCluster of two worker processes (one thread each) serves the whole module; images are
small (150x133, RED10 with 8 features: a halo of 10, tile 64, so a core of 44 and a last chunk
of one column, smaller than the halo).
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import redkern
from redkern import cli, imageio
from redkern import distributed as rd
from redkern.testing import kaiming_init_
from redkern.tiling import InexactTilingWarning, prepare_restore

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

H, W, TILE, CHUNK = 150, 133, 64, 44  # halo 10 (RED10): core 44; chunks 44, 44, 44, 18 x 44, 44, 44, 1
IMPORTED = Path(redkern.__file__).resolve().parents[1]  # the folder holding the redkern package in use


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    return tmp_path_factory.mktemp("hooks")


@pytest.fixture(scope="module")
def client(hooks):
    """Two worker processes that import the redkern these tests import (an installed copy in CI,
    this checkout in a development install) and see the test hooks folder."""
    env = {"PYTHONPATH": os.pathsep.join([str(IMPORTED), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           rd.TEST_HOOKS_ENV: str(hooks)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # spawned workers (and the CLI's local:N below) inherit these
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1234)
    return kaiming_init_(redkern.FusedREDNet(10, 1, 8)).eval()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "in.zarr"
    pixels = np.random.default_rng(0).random((H, W), dtype=np.float32)
    zarr.open_array(str(path), mode="w", shape=(H, W), chunks=(64, 64), dtype="float32")[:] = pixels
    return path


@pytest.fixture(scope="module")
def single_process(model, source, tmp_path_factory):
    """The single-process engine (tiling's own) on the same grid: the bytes every run must match."""
    target = tmp_path_factory.mktemp("ref") / "ref.npy"
    with imageio.open_image(source) as reader:
        job = prepare_restore(model, reader, target, tile=TILE, quiet=True)
        dataclasses.replace(job, tiles=rd.plan_grid(H, W, TILE, job.halo)).run()
    return np.load(target)


def pixels(path):
    return imageio.read_image(path)[..., 0]


# --- the grid, without a cluster -------------------------------------------------------------

@pytest.mark.parametrize("h,w,tile,halo,chunk", [(150, 133, 64, 10, 44), (7, 300, 20, 3, 28), (1, 1, 5, 2, 1)])
def test_chunks_hold_whole_cores_that_cover_every_pixel_once(h, w, tile, halo, chunk):
    covered = np.zeros((h, w), int)
    core = tile - 2 * halo
    for i in range(-(-h // chunk)):
        for j in range(-(-w // chunk)):
            rows, cols = slice(i * chunk, min(h, (i + 1) * chunk)), slice(j * chunk, min(w, (j + 1) * chunk))
            for t in rd.chunk_tiles(rows, cols, h, w, tile, halo):
                (wr, wc), (cr, cc) = t.window, t.core
                assert rows.start <= cr.start < cr.stop <= rows.stop and cols.start <= cc.start < cc.stop <= cols.stop
                for window, c, n in ((wr, cr, h), (wc, cc, w)):  # halo context, clipped at the border
                    assert window.start == max(c.start - halo, 0) and window.stop == min(c.stop + halo, n)
                    assert c.start % core == 0
                covered[cr, cc] += 1
    assert (covered == 1).all()
    assert len(rd.plan_grid(h, w, tile, halo)) == -(-h // core) * -(-w // core)


def test_lazy_blocks_merge_a_last_chunk_shorter_than_the_halo():
    assert rd.aligned_chunks(133, 44, 10) == (44, 44, 45)
    assert rd.aligned_chunks(150, 44, 10) == (44, 44, 44, 18)
    assert rd.aligned_chunks(5, 44, 10) == (5,)


def test_misaligned_output_chunks_are_refused_before_anything_runs(model, source, tmp_path):
    out = zarr.open_array(str(tmp_path / "mine.zarr"), mode="w", shape=(H, W), chunks=(50, 50), dtype="float32")
    with pytest.raises(rd.MisalignedChunks, match=r"rows 50 is not a multiple of the tile core 44 \(tile 64 - 2 x "
                                                  r"halo 10\).*two tasks would write one chunk.*44 or 88"):
        rd.restore(source, out, model, tile=TILE)
    with pytest.raises(rd.MisalignedChunks, match="not a multiple of the tile core 44"):
        rd.restore(source, tmp_path / "out.zarr", model, tile=TILE, chunk=50)
    assert not (tmp_path / "out.zarr").exists() and rd.status(out) is None


def test_a_zoo_network_runs_with_the_radius_its_plan_gives_and_upsamplers_are_refused(source, tmp_path):
    torch.manual_seed(5)
    vdsr = redkern.fuse(kaiming_init_(redkern.create_model("vdsr", depth=4, features=8)).eval())
    assert rd.model_spec(vdsr).receptive_field_radius == 4
    rd.restore(source, tmp_path / "vdsr.zarr", vdsr, tile=TILE, client=None)
    x = torch.from_numpy(np.ascontiguousarray(pixels(source)))[None, None]
    with torch.no_grad():
        want = vdsr(x)[0, 0].numpy()
    got = pixels(tmp_path / "vdsr.zarr")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="ESPCN enlarges the image 3x.*without --scheduler"):
        rd.model_spec(redkern.create_model("espcn"))
    with pytest.raises(ValueError, match="SRCNN drops 6 pixels at every border.*without --scheduler"):
        rd.model_spec(redkern.create_model("srcnn"))


# --- on the cluster ----------------------------------------------------------------------------

def test_distributed_equals_single_process_bit_for_bit(client, model, source, single_process, tmp_path):
    run = rd.restore(source, tmp_path / "out.zarr", model, client=client, tile=TILE, chunk=CHUNK, quiet=True)
    assert (run.chunks_total, run.chunks_computed, run.halo) == (16, 16, 10)
    got = pixels(tmp_path / "out.zarr")
    assert np.array_equal(got, single_process)
    here = rd.restore(source, tmp_path / "here.zarr", model, tile=TILE, chunk=2 * CHUNK, quiet=True)  # no client
    assert here.chunks_total == 4 and np.array_equal(pixels(tmp_path / "here.zarr"), got)
    lazy = client.compute(rd.restored(source, model, tile=TILE, chunk=CHUNK)).result()
    assert np.array_equal(lazy, got)
    with torch.no_grad():
        whole = model(torch.from_numpy(zarr.open_array(str(source))[:])[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5 * np.abs(whole).max())
    status = rd.status(tmp_path / "out.zarr")
    assert status["complete"] and status["chunks_done"] == 16
    assert zarr.open_array(str(tmp_path / "out.zarr")).chunks == (CHUNK, CHUNK)
    assert imageio.written_by_redkern(tmp_path / "out.zarr")  # so --overwrite may replace it


def test_a_halo_one_pixel_short_differs(client, model, source, single_process, tmp_path):
    with pytest.warns(InexactTilingWarning):
        rd.restore(source, tmp_path / "short.zarr", model, client=client, tile=TILE - 2, halo=9,
                   allow_inexact=True, chunk=CHUNK, quiet=True)
    assert not np.array_equal(pixels(tmp_path / "short.zarr"), single_process)
    with pytest.raises(ValueError, match="allow_inexact"):
        rd.restore(source, tmp_path / "refused.zarr", model, client=client, tile=TILE - 2, halo=9, chunk=CHUNK)
    assert not (tmp_path / "refused.zarr").exists()


def test_the_model_is_loaded_once_per_worker_process(client, source, tmp_path):
    torch.manual_seed(7)
    fresh = kaiming_init_(redkern.FusedREDNet(10, 1, 8)).eval()  # weights no worker has seen
    run = rd.restore(source, tmp_path / "out.zarr", fresh, client=client, tile=TILE, chunk=CHUNK, quiet=True)
    assert len(run.results) == 16 and all(r["loads"] == 1 and r["threads"] == 1 for r in run.results)
    digest = rd.model_spec(fresh).digest
    loads = client.run(rd.loaded_models)
    assert len(loads) == 2 and all(per_worker[digest] == 1 for per_worker in loads.values())
    assert len({r["pid"] for r in run.results}) == 2  # both workers took chunks, each built it once


def test_resume_recomputes_only_the_chunks_not_done(client, model, source, single_process, hooks, tmp_path):
    out = tmp_path / "out.zarr"
    (hooks / "fail-2-2").touch()  # chunk (2, 2) fails every time: the run stops unfinished
    try:
        with pytest.raises(RuntimeError, match=r"test hook: chunk \(2, 2\) fails"):
            rd.restore(source, out, model, client=client, tile=TILE, chunk=CHUNK, quiet=True)
    finally:
        (hooks / "fail-2-2").unlink()
    before = rd.status(out)
    assert not before["complete"] and 0 < before["chunks_done"] < 16 and 2 * 4 + 2 not in before["done"]
    with pytest.raises(imageio.UnreadableImage, match="unfinished redkern output.*--resume"):
        imageio.open_image(out)
    with pytest.raises(imageio.OutputExists):  # neither resume nor overwrite: refused
        rd.restore(source, out, model, client=client, tile=TILE, chunk=CHUNK, quiet=True)
    torch.manual_seed(99)
    other = kaiming_init_(redkern.FusedREDNet(10, 1, 8)).eval()
    with pytest.raises(rd.ResumeMismatch, match="other weights or settings.*weights_sha256"):
        rd.restore(source, out, other, client=client, tile=TILE, chunk=CHUNK, resume=True, quiet=True)
    with pytest.raises(rd.ResumeMismatch, match="chunk 44 then, 88 now"):
        rd.restore(source, out, model, client=client, tile=TILE, chunk=2 * CHUNK, resume=True, quiet=True)
    assert rd.status(out)["done"] == before["done"]  # refusals touch nothing

    run = rd.restore(source, out, model, client=client, tile=TILE, chunk=CHUNK, resume=True, quiet=True)
    computed = {i * 4 + j for i, j in (r["chunk"] for r in run.results)}
    assert run.resumed and computed == set(range(16)) - set(before["done"])
    assert run.chunks_computed == 16 - before["chunks_done"]
    assert rd.status(out)["complete"] and np.array_equal(pixels(out), single_process)
    again = rd.restore(source, out, model, client=client, tile=TILE, chunk=CHUNK, resume=True, quiet=True)
    assert again.chunks_computed == 0  # complete: nothing left to do


def test_a_worker_killed_mid_run_changes_nothing(client, model, source, single_process, hooks, tmp_path):
    (hooks / "crash-1-1").touch()  # the first attempt at chunk (1, 1) kills its worker (os._exit)
    pids = set(client.run(os.getpid).values())
    run = rd.restore(source, tmp_path / "out.zarr", model, client=client, tile=TILE, chunk=CHUNK, quiet=True)
    assert (hooks / "crash-1-1.done").exists() and not (hooks / "crash-1-1").exists()
    assert sorted(r["chunk"] for r in run.results) == [(i, j) for i in range(4) for j in range(4)]
    assert np.array_equal(pixels(tmp_path / "out.zarr"), single_process)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the one that died
    assert len(set(client.run(os.getpid).values()) - pids) == 1


# --- the command line ---------------------------------------------------------------------

def test_cli_scheduler_local_2_end_to_end(client, model, source, tmp_path, capsys):
    weights = tmp_path / "red10.pt"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "out.zarr"
    code = cli.main(["restore", str(source), str(out), "--weights", str(weights), "--tile", str(TILE),
                     "--chunk", str(CHUNK), "--scheduler", "local:2", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "16 of 16 chunks computed on 2 worker(s)" in captured.out
    want = rd.restore(source, tmp_path / "here.zarr", weights, tile=TILE, chunk=CHUNK, quiet=True)
    assert want.chunks_computed == 16 and np.array_equal(pixels(out), pixels(tmp_path / "here.zarr"))
    # --resume into it with other settings: refused, output left complete
    code = cli.main(["restore", str(source), str(out), "--weights", str(weights), "--tile", str(TILE + 2),
                     "--halo", "11", "--chunk", str(CHUNK), "--scheduler", client.scheduler.address,
                     "--resume", "-q"])
    assert code == cli.EXIT_OUTPUT and "other weights or settings" in capsys.readouterr().err
    assert rd.status(out)["complete"]


def test_cli_bad_scheduler_address_leaves_no_output(source, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    code = cli.main(["restore", str(source), str(out), "--model", "red10", "--features", "8", "--tile", "64",
                     "--scheduler", "tcp://127.0.0.1:9", "--scheduler-timeout", "1", "-q"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_FAILED and "cannot reach a Dask scheduler at tcp://127.0.0.1:9" in err
    assert "no output was written" in err and list(tmp_path.iterdir()) == []
    for address, words in (("local:0", "local:N needs N >= 1"), ("nonsense", "expected tcp://host:port")):
        assert cli.main(["restore", str(source), str(out), "--model", "red10", "--features", "8",
                         "--scheduler", address, "-q"]) == cli.EXIT_USAGE
        assert words in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    assert cli.main(["restore", str(source), str(tmp_path / "out.tif"), "--scheduler", "local:1", "-q"]) \
        == cli.EXIT_USAGE and "must be a .zarr" in capsys.readouterr().err
    assert cli.main(["restore", str(source), str(out), "--resume", "-q"]) == cli.EXIT_USAGE
    assert "belong to a --scheduler run" in capsys.readouterr().err


def test_without_dask_redkern_imports_and_scheduler_names_the_extra(source, tmp_path, monkeypatch, capsys):
    code = ("import sys; sys.modules['dask'] = sys.modules['distributed'] = None; "
            "import redkern, redkern.distributed, redkern.cli; print('imported')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(IMPORTED)})
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert cli.main(["restore", str(source), str(tmp_path / "o.zarr"), "--scheduler", "local:2", "-q"]) \
        == cli.EXIT_USAGE
    assert "pip install 'redkern[distributed]'" in capsys.readouterr().err
    with pytest.raises(rd.DistributedUnavailable, match=r"redkern\[distributed\]"):
        rd.restore(source, tmp_path / "o.zarr", "denoise", client="local:2")
    assert not (tmp_path / "o.zarr").exists()
