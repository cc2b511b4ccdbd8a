"""The paper's deblurring and inpainting tasks: the degradations follow their definitions, the
classical peers run and help where they should, the pairs repeat from their seed, and training,
evaluation and the command line take both tasks."""

import numpy as np
import pytest
import torch
from PIL import Image

from redkern import pretrained
from redkern.datasets import validation_pairs
from redkern.degradations import (Degradation, blur_degrade, gaussian_blur, gaussian_psf, gaussian_taps,
                                  parse_levels, quantize, text_overlay)
from redkern.evaluation import (best_richardson_lucy, biharmonic_inpaint, evaluate, metrics,
                                richardson_lucy_deblur, to_uint8, wiener_deblur)

ndimage = pytest.importorskip("scipy.ndimage")
skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture
def seed():
    """Fresh each run: conftest's seed (REDKERN_TEST_SEED replays a failure)."""
    return torch.initial_seed()


@pytest.fixture
def rng(seed):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def photo():
    """Two 96x96 crops of scikit-image's cameraman (detail: coat, tripod, camera), ``[1, 1, H, W]``."""
    cam = skimage_data.camera()
    return [("coat", cam[100:196, 150:246]), ("tripod", cam[300:396, 200:296])]


def as_images(crops):
    return [(name, px[..., None]) for name, px in crops]


# --- deblur --------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [1, 2, 3])
def test_blur_kernel_has_six_sigma_plus_one_taps(sigma):
    taps = gaussian_taps(sigma)
    assert taps.shape == (6 * sigma + 1,)
    assert taps.sum() == pytest.approx(1, abs=1e-12) and np.allclose(taps, taps[::-1])
    t = np.arange(-3 * sigma, 3 * sigma + 1)
    np.testing.assert_allclose(taps / taps[3 * sigma], np.exp(-t ** 2 / (2 * sigma ** 2)), rtol=1e-12)
    assert gaussian_psf(sigma).shape == (6 * sigma + 1,) * 2


def test_blur_is_the_psf_convolved_with_reflected_borders(rng, seed):
    x = torch.from_numpy(rng.random((2, 3, 40, 33), dtype=np.float32))
    sigma = float(rng.uniform(1, 3))
    got = gaussian_blur(x, sigma).numpy()
    psf = gaussian_psf(sigma)
    for n in range(2):
        for c in range(3):  # scipy's "mirror" is numpy's "reflect": the edge pixel is not repeated
            want = ndimage.convolve(x[n, c].double().numpy(), psf, mode="mirror")
            np.testing.assert_allclose(got[n, c], want, atol=2e-6, err_msg=f"seed {seed}")


def test_per_sample_blur_levels_blur_each_image_by_its_own(rng):
    x = torch.from_numpy(rng.random((3, 1, 30, 30), dtype=np.float32))
    sigmas = [1.0, 2.5, 3.0]
    got = gaussian_blur(x, sigmas)
    for i, s in enumerate(sigmas):
        torch.testing.assert_close(got[i:i + 1], gaussian_blur(x[i:i + 1], s))


def test_deblur_input_is_blur_plus_noise_rounded_to_8_bits(rng, seed):
    x = quantize(torch.from_numpy(rng.random((1, 1, 256, 256), dtype=np.float32)))
    seed = int(rng.integers(1 << 30))
    clean_blur = blur_degrade(x, 2, 0, np.random.default_rng(seed))
    torch.testing.assert_close(clean_blur, quantize(gaussian_blur(x, 2)), rtol=0, atol=0)
    noisy = blur_degrade(x, 2, 2, np.random.default_rng(seed))
    assert torch.equal(noisy, quantize(noisy))
    # std of the residual: noise 2 plus rounding's 1/sqrt(12), on 65k pixels (within 3%)
    residual = (noisy - gaussian_blur(x, 2)) * 255
    assert float(residual.std()) == pytest.approx(np.sqrt(4 + 1 / 12), rel=0.03), seed


def test_deblur_training_draws_blur_and_noise_from_their_ranges(rng):
    d = Degradation("deblur")
    assert (d.levels, d.noise) == ((1.0, 3.0), (0.0, 2.0))
    assert d.describe() == "blur sigma uniform in [1, 3], noise sigma uniform in [0, 2]"
    assert d.margin == 9  # the kernel radius at blur sigma 3
    levels = d.sample(rng, 1000)
    assert levels.min() >= 1 and levels.max() <= 3 and levels.std() > 0.5
    fixed = Degradation("deblur", "2", noise="1")
    assert (fixed.levels, fixed.noise) == ((2.0, 2.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="blur sigma"):
        parse_levels("deblur", "0")
    with pytest.raises(ValueError, match="deblur task"):
        Degradation("denoise", "25", noise="1")


def test_richardson_lucy_and_wiener_beat_the_blurred_input_without_noise(photo, rng, seed):
    pairs = validation_pairs(as_images(photo), "deblur", 2, seed=int(rng.integers(1 << 30)), noise=0)
    for name, blurred, clean in pairs:
        ref = to_uint8(clean)
        base = metrics(ref, to_uint8(blurred))[0]
        rl = metrics(ref, to_uint8(richardson_lucy_deblur(blurred, 2, 30)))[0]
        wiener = metrics(ref, to_uint8(wiener_deblur(blurred, 2, seed=0)))[0]
        assert rl > base + 1.5 and wiener > base + 1, (name, base, rl, wiener, seed)


def test_richardson_lucy_is_told_the_true_kernel(photo):
    """The wrong kernel restores worse: the peer's kernel is the degradation's."""
    (_, blurred, clean), = validation_pairs(as_images(photo[:1]), "deblur", 2, noise=0)
    ref = to_uint8(clean)
    right = metrics(ref, to_uint8(richardson_lucy_deblur(blurred, 2, 30)))[0]
    wrong = metrics(ref, to_uint8(richardson_lucy_deblur(blurred, 3, 30)))[0]
    assert right > wrong + 1


def test_the_best_richardson_lucy_count_is_the_best_mean(photo):
    pairs = validation_pairs(as_images(photo), "deblur", 2, noise=1, masks=True)
    best, means, kept = best_richardson_lucy(pairs, 2, counts=(2, 10, 40))
    assert best == max(means, key=means.get) and set(means) == {2, 10, 40}
    assert means[2] < means[best]  # two iterations barely deblur
    for (out, _), (_, blurred, clean, _) in zip(kept, pairs):
        torch.testing.assert_close(out, richardson_lucy_deblur(blurred, 2, best))


def test_eval_of_deblurring_reports_the_peers_and_the_chosen_count(photo):
    result = evaluate(None, as_images(photo), "deblur", 2)
    assert result.columns == ["blurred", "Richardson-Lucy", "Wiener"] and result.noise == 1.0
    table = result.markdown()
    assert "deblur, blur sigma 2, noise sigma 1" in table and "- Richardson-Lucy: " in table
    count = int(table.split("- Richardson-Lucy: ")[1].split()[0])
    pairs = validation_pairs(as_images(photo), "deblur", 2)
    for (name, blurred, clean), row in zip(pairs, result.rows.values()):
        direct = metrics(to_uint8(clean), to_uint8(richardson_lucy_deblur(blurred, 2, count)))
        assert row["Richardson-Lucy"] == pytest.approx(direct, abs=1e-9), name
        assert row["blurred"] == pytest.approx(metrics(to_uint8(clean), to_uint8(blurred)), abs=1e-9)


def test_deblur_pairs_repeat_from_their_seed(photo, rng):
    seed = int(rng.integers(1 << 30))
    a = validation_pairs(as_images(photo), "deblur", 2.5, seed, noise="0-2")
    b = validation_pairs(as_images(photo), "deblur", 2.5, seed, noise="0-2")
    c = validation_pairs(as_images(photo), "deblur", 2.5, seed + 1, noise="0-2")
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])


# --- inpaint -------------------------------------------------------------------------------

@pytest.mark.parametrize("coverage", [3, 12, 25])
def test_text_covers_at_least_the_asked_share_and_touches_nothing_else(rng, coverage, seed):
    x = quantize(torch.from_numpy(rng.random((2, 3, 64, 80), dtype=np.float32)))
    y, mask = text_overlay(x, coverage, rng)
    assert y.shape == x.shape and mask.shape == (2, 1, 64, 80) and mask.dtype == torch.bool
    for i in range(2):
        share = float(mask[i].float().mean()) * 100
        assert coverage <= share < coverage + 15, (share, seed)
    assert torch.equal(y * ~mask, x * ~mask)  # outside the text, the photo as it was
    assert float((y != x).any(1, keepdim=True)[mask].float().mean()) > 0.9  # inside, changed
    assert torch.equal(y, quantize(y))


def test_text_is_grey_and_solid_where_it_covers_fully(rng, seed):
    x = torch.zeros(1, 3, 60, 60)
    x[:, 0], x[:, 1], x[:, 2] = 0.2, 0.5, 0.8  # a coloured background: grey text differs from it
    y, mask = text_overlay(x, 30, rng)
    grey = (y[0, 0] == y[0, 1]) & (y[0, 1] == y[0, 2])
    assert grey.sum() > 0.1 * mask.sum(), seed  # glyph interiors: one grey in every channel
    assert not grey[~mask[0, 0]].any()


def test_text_repeats_from_the_seed(rng):
    x = torch.from_numpy(rng.random((1, 1, 48, 48), dtype=np.float32))
    seed = int(rng.integers(1 << 30))
    a, ma = text_overlay(x, 10, np.random.default_rng(seed))
    b, mb = text_overlay(x, 10, np.random.default_rng(seed))
    c, _ = text_overlay(x, 10, np.random.default_rng(seed + 1))
    assert torch.equal(a, b) and torch.equal(ma, mb) and not torch.equal(a, c)


def test_inpaint_levels_and_training_distribution(rng):
    d = Degradation("inpaint")
    assert d.levels == (5.0, 20.0) and d.noise is None and d.margin == 0
    assert d.describe() == "text coverage uniform in [5%, 20%]"
    with pytest.raises(ValueError, match="text coverage"):
        parse_levels("inpaint", "95")
    x = torch.rand(4, 1, 50, 50)
    levels = d.sample(rng, 4)
    y = d.apply(x, levels, np.random.default_rng(0))
    y2, mask = d.degrade(x, levels, np.random.default_rng(0))
    assert torch.equal(y, y2)
    for i in range(4):
        assert float(mask[i].float().mean()) * 100 >= levels[i]


def test_biharmonic_oracle_restores_most_of_the_text(photo, rng, seed):
    pairs = validation_pairs(as_images(photo), "inpaint", 10, seed=int(rng.integers(1 << 30)), masks=True)
    for name, text, clean, mask in pairs:
        ref = to_uint8(clean)
        before, after = metrics(ref, to_uint8(text))[0], metrics(ref, to_uint8(biharmonic_inpaint(text, mask)))[0]
        assert after > before + 5, (name, before, after, seed)
        out = to_uint8(biharmonic_inpaint(text, mask))
        assert np.array_equal(out[~mask[0, 0].numpy()], to_uint8(text)[~mask[0, 0].numpy()])


def test_eval_of_inpainting_compares_the_model_with_the_oracle(photo):
    from redkern.training import build_model

    model = build_model(4, 1, 8).eval()  # the identity: the model's PSNR is the text's
    result = evaluate(model, as_images(photo), "inpaint", 10, name="M")
    assert result.columns == ["text", "biharmonic", "M"]
    for row in result.rows.values():
        assert row["M"] == row["text"] and row["biharmonic"][0] > row["text"][0]
    table = result.markdown()
    assert "inpaint, text 10%" in table and "M - biharmonic:" in table and "oracle" in table


# --- training and the command line ---------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo):
    root = tmp_path_factory.mktemp("photos")
    for part in ("train", "val"):
        (root / part).mkdir()
    cam = skimage_data.camera()
    Image.fromarray(cam[:160, :160]).save(root / "train" / "a.png")
    Image.fromarray(cam[200:360, 250:410]).save(root / "train" / "b.png")
    Image.fromarray(photo[0][1]).save(root / "val" / "coat.png")
    return root


@pytest.mark.parametrize("task", ["deblur", "inpaint"])
def test_train_command_trains_both_tasks_and_resumes(folder, tmp_path, task, capsys):
    from redkern.cli import main
    from redkern.weights import load_checkpoint

    out = tmp_path / f"{task}.pt"
    args = ["train", "--task", task, "--data", str(folder), "--out", str(out), "--depth", "4", "--features", "8",
            "--steps", "4", "--batch", "2", "--patch", "24", "--val-every", "2", "--warmup", "1",
            "--model", "reference", "--no-progress"]
    assert main(args + ["--stop-at", "2"]) == 0
    assert main(args) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["step"] == 4 and ckpt["config"]["task"] == task
    assert ckpt["config"]["noise"] == ("0-2" if task == "deblur" else None)
    vals = [h for h in ckpt["history"] if "val_psnr" in h]
    assert len(vals) == 2 and all(np.isfinite(h["val_psnr"]) for h in vals)
    model = pretrained.load(out)
    assert model.task == task


def test_patches_for_deblur_are_blurred_from_a_margin(folder):
    from redkern.datasets import load_images
    from redkern.training import PatchStream

    images = [px for _, px in load_images(folder / "train")]
    stream = PatchStream(images, Degradation("deblur", "3", noise="0"), patch=20, batch=3, seed=1)
    assert stream.crop == 20 + 2 * 9
    degraded, clean = stream.make_batch(0)
    assert degraded.shape == clean.shape == (3, 1, 20, 20)
    # the centre of a blurred crop: as if the whole photo had been blurred (no border effect)
    assert float((degraded - clean).abs().mean()) > 0.005


def test_training_refuses_noise_for_other_tasks(folder, tmp_path, capsys):
    from redkern.cli import main

    code = main(["train", "--task", "denoise", "--noise", "1", "--data", str(folder), "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "noise" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["deblur", "inpaint"])
def test_restore_and_eval_use_the_shipped_weights(folder, photo, tmp_path, capsys, task):
    """`redkern restore --task` undoes the degradation of a crop never trained on, and `redkern
    eval --task` scores the shipped model beside the peers."""
    from redkern.cli import main

    clean8 = photo[0][1]
    clean = torch.from_numpy(clean8).float()[None, None] / 255
    rng = np.random.default_rng(3)
    degraded = blur_degrade(clean, 2.0, 1.0, rng) if task == "deblur" else text_overlay(clean, 10, rng)[0]
    Image.fromarray(to_uint8(degraded)).save(tmp_path / "in.png")
    level = ["--blur", "2"] if task == "deblur" else []
    assert main(["restore", "--task", task, *level, "--quiet", str(tmp_path / "in.png"), str(tmp_path / "o.png")]) == 0
    restored = np.asarray(Image.open(tmp_path / "o.png"))
    assert restored.shape == clean8.shape
    before, after = metrics(clean8, to_uint8(degraded))[0], metrics(clean8, restored)[0]
    assert after > before + 1, (before, after)
    capsys.readouterr()
    peers = ["--rl-iterations", "20"] if task == "deblur" else []
    assert main(["eval", "--task", task, "--level", "2", *peers, "--data", str(folder / "val")]) == 0
    out = capsys.readouterr().out
    assert "RED30" in out and ("Richardson-Lucy" if task == "deblur" else "biharmonic") in out


def test_blur_option_belongs_to_deblur(folder, tmp_path, capsys):
    from redkern.cli import main

    code = main(["restore", "--task", "denoise", "--blur", "2", str(folder / "val" / "coat.png"), str(tmp_path / "o.png")])
    assert code == 2 and "--blur describes the input of --task deblur" in capsys.readouterr().err
    code = main(["restore", "--task", "deblur", "--blur", "0", str(folder / "val" / "coat.png"), str(tmp_path / "o.png")])
    assert code == 2 and "blur sigma" in capsys.readouterr().err


def test_eval_command_scores_the_peers_alone(folder, capsys):
    from redkern.cli import main

    assert main(["eval", "--task", "deblur", "--level", "2", "--noise", "0", "--no-model", "--rl-iterations", "20",
                 "--data", str(folder / "val")]) == 0
    out = capsys.readouterr().out
    assert "| blurred | Richardson-Lucy | Wiener |" in out and "noise sigma 0" in out
    assert "Richardson-Lucy: 20 iterations (fixed)" in out
    assert main(["eval", "--task", "inpaint", "--level", "5", "--noise", "1", "--no-model",
                 "--data", str(folder / "val")]) == 2
    assert "--noise" in capsys.readouterr().err


# --- the photo catalog (redkern.photos) ------------------------------------------------------

def test_catalog_names_are_unique_and_the_validation_split_is_in_it():
    from redkern import photos

    names = [s.name for s in photos.SOURCES]
    assert len(names) == len(set(names))
    assert set(photos.VALIDATION) <= set(names)
    # the four images the shipped models were validated on stay in the split, as they were
    assert {"camera": None, "astronaut": None, "Path": 512, "ColorfulCups": 512}.items() <= photos.VALIDATION.items()
    assert all(s.package.split(":")[0] in ("deb", "pip") for s in photos.SOURCES)


def test_catalog_loads_the_pypi_sources_and_never_mixes_the_splits():
    from redkern import photos

    pip_only = [s.name for s in photos.SOURCES if s.package.startswith("pip:scikit-image")]
    train = photos.load("train", 1, names=pip_only)
    val = photos.load("val", 1, names=pip_only)
    assert {n for n, _ in val} == {"camera", "astronaut"}
    assert not {n for n, _ in train} & set(photos.VALIDATION)
    assert all(px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 1 for _, px in train + val)
    rgb = dict(photos.load("train", 3, names=pip_only))
    assert "coffee" in rgb and rgb["coffee"].shape == (400, 600, 3) and "brick" not in rgb  # grayscale left out
    y = dict(train)["coffee"][..., 0]
    assert np.array_equal(y, photos.luminance(skimage_data.coffee()))


def test_a_missing_debian_source_names_its_package(tmp_path, monkeypatch):
    from redkern import photos

    monkeypatch.setenv("REDKERN_PHOTO_ROOTS", str(tmp_path))
    lady = next(s for s in photos.SOURCES if s.name == "LadyBird")
    if photos._find(lady.where) is not None:
        pytest.skip("mate-backgrounds is installed here")
    with pytest.raises(photos.MissingSource, match="apt-get install -y mate-backgrounds"):
        photos.load("val", 1, names=["LadyBird"])
    assert photos.load("val", 1, names=["LadyBird"], missing="skip") == []


def test_a_debian_source_is_found_under_a_root_and_box_reduced(tmp_path, monkeypatch, rng):
    from redkern import photos

    folder = tmp_path / "usr/share/backgrounds/mate/nature"
    folder.mkdir(parents=True)
    pixels = rng.integers(0, 256, (1200, 1800, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "Storm.jpg", quality=95)
    monkeypatch.setenv("REDKERN_PHOTO_ROOTS", str(tmp_path))
    (name, got), = photos.load("train", 3, names=["Storm"])
    with Image.open(folder / "Storm.jpg") as im:  # 1800 px: reduced by max(2, round(1800 / 1600)) = 2
        want = np.asarray(im.convert("RGB")).reshape(600, 2, 900, 2, 3).astype(np.float64).mean((1, 3))
    assert name == "Storm" and got.shape == (600, 900, 3)
    assert np.abs(got.astype(np.float64) - want).max() <= 0.5 + 1e-9
