"""`redkern eval`: its table's numbers are scikit-image's on the same images, recomputed here."""

import numpy as np
import pytest
import torch
from PIL import Image

from redkern import imageio
from redkern.evaluation import evaluate, main, metrics, run_model, to_uint8
from redkern.datasets import load_images, validation_pairs
from redkern.degradations import dihedral, dihedral_inverse
from redkern.training import build_model

skimage_metrics = pytest.importorskip("skimage.metrics")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    pixels = imageio.read_image(imageio.sample_path())[..., 0]
    Image.fromarray(pixels[10:58, 20:80]).save(folder / "a.png")
    Image.fromarray(pixels[120:168, 100:148]).save(folder / "b.png")
    return folder


def small_model():
    torch.manual_seed(0)
    model = build_model(4, 1, 8)
    torch.nn.init.normal_(model.deconv_2.weight, std=0.05)  # not the identity
    return model.eval()


@pytest.mark.parametrize("task,level", [("sr", 2), ("jpeg", 10), ("denoise", 25)])
def test_table_numbers_match_a_direct_computation(images, task, level):
    model = small_model()
    data = load_images(images)
    result = evaluate(model, data, task, level, ensemble=True, baseline=False, name="M")
    assert list(result.rows) == ["a", "b"]
    for (name, degraded, clean), row in zip(validation_pairs(data, task, level), result.rows.values()):
        ref = np.rint(clean[0, 0].numpy() * 255).astype(np.uint8)
        with torch.no_grad():
            out = model(degraded)
            ens = sum(dihedral_inverse(model(dihedral(degraded, k)), k) for k in range(8)) / 8
        for column, got in (("M", out), ("M x8", ens), (result.columns[0], degraded)):
            u8 = np.rint(got[0, 0].clamp(0, 1).numpy() * 255).astype(np.uint8)
            psnr = skimage_metrics.peak_signal_noise_ratio(ref, u8, data_range=255)
            ssim = skimage_metrics.structural_similarity(ref, u8, data_range=255, gaussian_weights=True,
                                                         sigma=1.5, use_sample_covariance=False)
            assert row[column][0] == pytest.approx(psnr, abs=1e-3), (name, column)
            assert row[column][1] == pytest.approx(ssim, abs=1e-4), (name, column)
    table = result.markdown()
    mean = np.mean([r["M"][0] for r in result.rows.values()])
    assert f"**{mean:.2f}**" in table and "| a |" in table and "M x8" in table


def test_denoising_is_compared_with_bm3d(images):
    pytest.importorskip("bm3d")
    from redkern.evaluation import bm3d_denoise

    data = load_images(images)
    result = evaluate(small_model(), data, "denoise", 25, baseline=True, name="M")
    assert result.columns == ["noisy", "BM3D", "M"]
    for (name, degraded, clean), row in zip(validation_pairs(data, "denoise", 25), result.rows.values()):
        direct = metrics(to_uint8(clean), to_uint8(bm3d_denoise(degraded, 25)))
        # the bm3d binary does not repeat bit for bit: a pixel or two may round the other way
        assert row["BM3D"] == pytest.approx(direct, abs=1e-3)
        assert row["BM3D"][0] > row["noisy"][0] + 4  # BM3D really denoised
    assert "Mean PSNR gain: M - BM3D" in result.markdown()


def test_ensemble_of_a_symmetric_model_is_the_plain_output():
    model = build_model(4, 1, 8)  # the identity commutes with every flip and rotation
    x = torch.rand(1, 1, 12, 16)
    torch.testing.assert_close(run_model(model, x, ensemble=True), run_model(model, x))


def test_eval_command_prints_a_table_for_a_checkpoint(images, tmp_path, capsys):
    from redkern.training import TrainConfig, train

    (tmp_path / "data" / "train").mkdir(parents=True)
    Image.fromarray(imageio.read_image(imageio.sample_path())[:64, :64, 0]).save(tmp_path / "data" / "train" / "t.png")
    train(TrainConfig(task="sr", levels="2", data=str(tmp_path / "data"), out=str(tmp_path / "c.pt"), depth=2,
                      features=4, patch=16, batch=2, steps=2, device="cpu", model="reference", progress=False))
    assert main(["--task", "sr", "--level", "2,4", "--data", str(images), "--weights", str(tmp_path / "c.pt")]) == 0
    out = capsys.readouterr().out
    assert "sr, x2: PSNR (dB) / SSIM | bicubic | RED2 |" in out and "sr, x4" in out
    assert "Mean PSNR gain: RED2 - bicubic" in out


def test_eval_figures_are_crops_of_what_was_scored_and_a_psnr_plot(images, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from redkern.training import TrainConfig, train, curves_path

    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir(parents=True)
    sample = imageio.read_image(imageio.sample_path())[..., 0]
    Image.fromarray(sample[:64, :64]).save(tmp_path / "data" / "train" / "t.png")
    Image.fromarray(sample[64:112, 64:112]).save(tmp_path / "data" / "val" / "v.png")
    ckpt = tmp_path / "c.pt"
    train(TrainConfig(task="jpeg", levels="10", data=str(tmp_path / "data"), out=str(ckpt), depth=2, features=4,
                      patch=16, batch=2, steps=4, val_every=2, device="cpu", model="reference", progress=False))
    curves = curves_path(ckpt)
    assert curves.exists() and imageio.read_image(curves).shape[2] == 3  # drawn beside the checkpoint
    figures = tmp_path / "figures"
    assert main(["--task", "jpeg", "--level", "10,30", "--data", str(images), "--weights", str(ckpt),
                 "--figures", str(figures)]) == 0
    names = sorted(p.name for p in figures.iterdir())
    assert names == ["a_jpeg_quality10.png", "a_jpeg_quality30.png", "b_jpeg_quality10.png",
                     "b_jpeg_quality30.png", "jpeg_psnr.png"]
    crop = imageio.read_image(figures / "a_jpeg_quality10.png")
    # three panels (JPEG: the input and its classical peer at once | RED2 | clean) of the 48-pixel image
    assert crop.shape[1] == 3 * 48 + 2 * 6 and crop.shape[0] == 48 + 18
    clean = imageio.read_image(images / "a.png")[..., 0]
    from redkern.figures import busiest_crop
    rows, cols = busiest_crop(clean, 128)
    assert np.array_equal(crop[18:, -48:, 0], clean[rows, cols])  # the last panel is the clean image itself


def test_eval_figures_need_matplotlib(images, tmp_path, monkeypatch):
    from redkern import figures
    from redkern.validation import UsageError

    monkeypatch.setattr(figures, "plotting_available", lambda: False)
    with pytest.raises(UsageError, match=r"--figures: matplotlib is not installed \(pip install 'redkern\[figures\]'\)"):
        main(["--task", "jpeg", "--level", "10", "--data", str(images), "--figures", str(tmp_path / "f")])
    assert not (tmp_path / "f").exists()
