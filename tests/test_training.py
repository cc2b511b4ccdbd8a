"""Training: degradations do what they say, the data stream is reproducible, a few steps
learn, and a checkpoint resumes exactly where an uninterrupted run would be."""

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from redkern import degradations as deg
from redkern import imageio
from redkern.datasets import load_images
from redkern.degradations import dihedral, dihedral_inverse
from redkern.training import PatchStream, TrainConfig, build_model, lr_at, train
from redkern.weights import load_checkpoint


def sample(size=256) -> torch.Tensor:
    """The bundled 256x256 grayscale photograph as ``[1, 1, H, W]`` in [0, 1]."""
    pixels = imageio.read_image(imageio.sample_path())
    return torch.from_numpy(imageio.to_float(pixels)).permute(2, 0, 1)[None, :1, :size, :size].contiguous()


@pytest.fixture
def tiny_data(tmp_path):
    """Three 96x96 training crops and one 64x64 validation crop of the sample, as PNGs."""
    pixels = imageio.read_image(imageio.sample_path())[..., 0]
    for i, (r, c) in enumerate([(0, 0), (0, 150), (150, 0)]):
        (tmp_path / "train").mkdir(exist_ok=True)
        Image.fromarray(pixels[r:r + 96, c:c + 96]).save(tmp_path / "train" / f"t{i}.png")
    (tmp_path / "val").mkdir()
    Image.fromarray(pixels[160:224, 160:224]).save(tmp_path / "val" / "v.png")
    return tmp_path


def tiny_config(data, out, **kw) -> TrainConfig:
    base = dict(task="denoise", levels="25", data=str(data), out=str(out), depth=4, features=8, patch=24,
                batch=8, steps=6, lr=1e-3, warmup=2, seed=3, device="cpu", model="reference",
                val_every=3, ckpt_every=100, progress=False)
    base.update(kw)
    return TrainConfig(**base)


# --- degradations --------------------------------------------------------------------------

def test_gaussian_noise_has_the_sigma_asked_for():
    x = torch.full((3, 1, 200, 200), 0.5)
    y = deg.add_gaussian_noise(x, np.array([5.0, 25.0, 50.0]), np.random.default_rng(0))
    measured = ((y - x) * 255).std(dim=(1, 2, 3))
    assert torch.allclose(measured, torch.tensor([5.0, 25.0, 50.0]), rtol=0.02)
    assert ((y - x) * 255).mean().abs() < 0.3
    assert y.max() > 1 and y.min() < 0  # not clipped: the usual protocol


def test_noise_is_reproducible_from_the_seed():
    x = torch.zeros(1, 1, 8, 8)
    a = deg.add_gaussian_noise(x, 10, np.random.default_rng(7))
    b = deg.add_gaussian_noise(x, 10, np.random.default_rng(7))
    assert torch.equal(a, b)


def test_jpeg_quality_shows_in_file_size_and_error():
    x = sample(128)
    pixels = (x[0, 0] * 255).round().to(torch.uint8).numpy()
    sizes = [len(deg.jpeg_bytes(pixels, q)) for q in (10, 20, 40, 90)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] / 3
    errors = [(deg.jpeg_roundtrip(x, q) - x).abs().mean().item() for q in (10, 40, 90)]
    assert errors[0] > errors[1] > errors[2]
    # the roundtrip is exactly Pillow's decode of Pillow's encode
    with Image.open(io.BytesIO(deg.jpeg_bytes(pixels, 10))) as im:
        decoded = torch.from_numpy(np.asarray(im).astype(np.float32) / 255)
    assert torch.equal(deg.jpeg_roundtrip(x, 10)[0, 0], decoded)


def test_jpeg_takes_colour_and_one_quality_per_sample():
    x = torch.rand(2, 3, 16, 24)
    y = deg.jpeg_roundtrip(x, np.array([10, 90]))
    assert y.shape == x.shape
    assert (y[0] - x[0]).abs().mean() > (y[1] - x[1]).abs().mean()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_input_is_bicubic_down_then_up_on_the_8bit_grid(scale):
    x = deg.modcrop(sample(100), scale)
    assert x.shape[-1] % scale == 0 and x.shape[-1] > 100 - scale
    y = deg.bicubic_degrade(x, scale)
    assert y.shape == x.shape
    small = deg.bicubic_resize(x, (x.shape[-2] // scale, x.shape[-1] // scale))
    assert small.shape[-2:] == (x.shape[-2] // scale, x.shape[-1] // scale)
    expect = deg.quantize(deg.bicubic_resize(deg.quantize(small), x.shape[-2:]))
    assert torch.equal(y, expect)
    assert torch.equal(torch.round(y * 255), y * 255)
    flat = torch.full((1, 1, 12, 12), 0.4)  # a constant image survives (up to 8-bit rounding)
    assert (deg.bicubic_degrade(flat, scale) - 0.4).abs().max() <= 0.5 / 255 + 1e-7


def test_sr_blurs_more_at_larger_scales_and_rejects_odd_sizes():
    x = deg.modcrop(sample(120), 12)
    errors = [(deg.bicubic_degrade(x, s) - x).pow(2).mean().item() for s in (2, 3, 4)]
    assert errors[0] < errors[1] < errors[2]
    with pytest.raises(ValueError, match="modcrop"):
        deg.bicubic_degrade(torch.zeros(1, 1, 10, 10), 3)
    mixed = deg.Degradation("sr", "2,3,4").apply(x.expand(3, 1, -1, -1), np.array([2, 3, 4]), None)
    for i, s in enumerate((2, 3, 4)):
        assert torch.equal(mixed[i:i + 1], deg.bicubic_degrade(x, s))


def test_levels_parse_as_the_command_line_writes_them():
    assert deg.parse_levels("denoise", "0-50") == (0.0, 50.0)
    assert deg.parse_levels("denoise", "25") == (25.0, 25.0)
    assert deg.parse_levels("sr", "2,3,4") == (2, 3, 4) == deg.parse_levels("sr", "2-4")
    assert deg.parse_levels("jpeg", "10-40") == tuple(range(10, 41))
    with pytest.raises(ValueError, match="quality"):
        deg.parse_levels("jpeg", "ten")
    d = deg.Degradation("denoise", "0-50")
    s = d.sample(np.random.default_rng(0), 1000)
    assert 0 <= s.min() < 2 and 48 < s.max() <= 50
    assert set(deg.Degradation("sr").sample(np.random.default_rng(0), 100)) == {2, 3, 4}


# --- data ----------------------------------------------------------------------------------

def test_dihedral_transforms_are_the_8_symmetries_and_invert():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        seen.add(tuple(y.flatten().tolist()) + tuple(y.shape))
        assert torch.equal(dihedral_inverse(y, k), x)
        assert np.array_equal(dihedral_inverse(dihedral(x.numpy(), k), k), x.numpy())
    assert len(seen) == 8


@pytest.mark.parametrize("task", ["denoise", "sr", "jpeg"])
def test_patch_stream_is_reproducible_and_worker_independent(tiny_data, task):
    images = [px for _, px in load_images(tiny_data / "train")]
    stream = PatchStream(images, deg.Degradation(task), patch=20, batch=4, seed=1)
    a, clean = stream.make_batch(5)
    assert a.shape == clean.shape == (4, 1, 20, 20) and a.dtype == torch.float32
    assert torch.equal(a, stream.make_batch(5)[0]) and not torch.equal(a, stream.make_batch(6)[0])
    assert (a - clean).abs().mean() > 1e-3  # degraded
    if task == "denoise":
        return
    loader = torch.utils.data.DataLoader(PatchStream(images, deg.Degradation(task), 20, 4, 1, start=2),
                                         batch_size=None, num_workers=2)
    got = [b for _, b in zip(range(3), loader)]
    for i, (d, c) in enumerate(got):
        want_d, want_c = stream.make_batch(2 + i)
        assert torch.equal(d, want_d) and torch.equal(c, want_c)


def test_rgb_folder_feeds_a_one_channel_model_its_luminance(tmp_path):
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    [(name, y)] = load_images(tmp_path, channels=1)
    assert name == "c" and y.shape == (40, 50, 1) and y.dtype == np.uint8
    want = np.rint(imageio.rgb_to_ycbcr(rgb / 255.0)[..., :1] * 255)
    assert np.abs(y.astype(int) - want).max() <= 1
    [(_, same)] = load_images(tmp_path, channels=3)
    assert np.array_equal(same, rgb)


# --- the loop ------------------------------------------------------------------------------

def test_untrained_model_is_the_identity():
    model = build_model(4, 1, 8)
    x = torch.rand(1, 1, 10, 10)
    assert torch.equal(model(x), x)


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = TrainConfig(lr=1e-3, warmup=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5e-4)
    assert lr_at(110, cfg) == pytest.approx(0, abs=1e-12)
    assert lr_at(50, TrainConfig(lr=1e-4, warmup=0, schedule="constant")) == 1e-4


def test_a_few_steps_lower_the_loss(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "run.pt", steps=60, lr=3e-3, warmup=5, val_every=30)
    images = [px for _, px in load_images(tiny_data / "train")]
    held_out = PatchStream(images, deg.Degradation("denoise", "25"), 24, 32, seed=99).make_batch(0)

    def loss(model):
        with torch.no_grad():
            return torch.nn.functional.mse_loss(model(held_out[0]), held_out[1]).item()

    before = loss(build_model(4, 1, 8))  # the identity: the noise's own MSE, (25/255)^2
    assert before == pytest.approx((25 / 255) ** 2, rel=0.1)
    result = train(cfg)
    model = build_model(4, 1, 8)
    model.load_state_dict(result["model"])
    assert loss(model) < 0.8 * before
    vals = [h for h in result["history"] if "val_psnr" in h]
    assert vals and vals[-1]["val_psnr"] > vals[-1]["input_psnr"] + 0.5


def test_checkpoint_round_trips_and_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    whole = train(tiny_config(tiny_data, tmp_path / "whole.pt", task="jpeg", levels="10-40"))
    half = train(tiny_config(tiny_data, tmp_path / "split.pt", task="jpeg", levels="10-40", stop_at=3))
    saved = load_checkpoint(tmp_path / "split.pt")
    assert saved["step"] == 3 and not saved["finished"]
    for k, v in half["model"].items():
        assert torch.equal(saved["model"][k], v)
    assert saved["config"]["steps"] == 6 and saved["config"]["task"] == "jpeg"

    resumed = train(tiny_config(tiny_data, tmp_path / "split.pt", task="jpeg", levels="10-40"))
    assert resumed["step"] == whole["step"] == 6 and resumed["finished"]
    for k, v in whole["model"].items():
        assert torch.equal(resumed["model"][k], v), k
    for a, b in zip(whole["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_resume_refuses_a_different_model(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path / "r.pt", stop_at=1))
    with pytest.raises(ValueError, match="another --out"):
        train(tiny_config(tiny_data, tmp_path / "r.pt", features=16))


def test_training_runs_on_the_fused_model_where_the_cpu_kernels_are_built(tiny_data, tmp_path):
    from redkern.backends import status

    if not status()["cpu"]["available"]:
        pytest.skip("the CPU extension is not built here")
    fused = train(tiny_config(tiny_data, tmp_path / "f.pt", model="fused", steps=3))
    ref = train(tiny_config(tiny_data, tmp_path / "r.pt", model="reference", steps=3))
    assert fused["model_kind"] == "fused"
    for k, v in ref["model"].items():
        assert torch.allclose(fused["model"][k], v, atol=1e-5), k


def test_command_line_trains_and_resumes(tiny_data, tmp_path, capsys):
    from redkern.training import main

    argv = ["--task", "sr", "--levels", "2", "--data", str(tiny_data), "--out", str(tmp_path / "c.pt"),
            "--depth", "2", "--features", "4", "--patch", "16", "--batch", "2", "--steps", "4",
            "--device", "cpu", "--model", "reference", "--no-progress", "--stop-at", "2"]
    assert main(argv) == 0
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 2
    assert main(argv[:-2]) == 0
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 4
    assert '"step": 4' in capsys.readouterr().out


def test_init_starts_from_other_weights_and_a_resume_keeps_them(tiny_data, tmp_path):
    """A fine-tune's first step starts from --init's weights (not the zeroed last layer), the
    history says where they came from, and a resumed run neither reloads nor forgets them."""
    donor = train(tiny_config(tiny_data, tmp_path / "donor.pt", steps=4))
    cfg = tiny_config(tiny_data, tmp_path / "tuned.pt", task="jpeg", levels="10", init=str(tmp_path / "donor.pt"),
                      steps=4, lr=1e-12, warmup=1)  # a rate that moves nothing: the weights stay the donor's
    tuned = train(dataclasses.replace(cfg, stop_at=2))
    for k, v in donor["model"].items():
        assert torch.allclose(tuned["model"][k], v, rtol=0, atol=1e-9), k
    assert tuned["history"][0] == {"step": 0, "event": "init", "from": str(tmp_path / "donor.pt"),
                                   "task": "denoise", "levels": "25"}
    (tmp_path / "donor.pt").unlink()  # a resume must not need it
    resumed = train(cfg)
    assert resumed["step"] == 4 and resumed["config"]["init"] == str(tmp_path / "donor.pt")
    assert sum(h.get("event") == "init" for h in resumed["history"]) == 1


def test_init_from_a_shipped_task_and_its_errors(tiny_data, tmp_path):
    import redkern
    from redkern.validation import UsageError
    from redkern.weights import WeightsError

    shipped = redkern.pretrained("denoise").state_dict()
    cfg = tiny_config(tiny_data, tmp_path / "s.pt", init="denoise", depth=30, features=64, patch=16, batch=1,
                      steps=1, lr=1e-12, warmup=1)
    got = train(cfg)["model"]
    for k, v in shipped.items():
        assert torch.allclose(got[k], v, rtol=0, atol=1e-6), k
    with pytest.raises(WeightsError, match=r"RED30-64 with 1 channel\(s\), but this run trains a RED4-8"):
        train(tiny_config(tiny_data, tmp_path / "m.pt", init="denoise"))
    assert not (tmp_path / "m.pt").exists()
    with pytest.raises(WeightsError, match="--init deblurr: no pretrained weights for task 'deblurr'; choose one of"):
        train(tiny_config(tiny_data, tmp_path / "d.pt", init="deblurr"))
    from redkern.training import main
    with pytest.raises(UsageError, match="no such file"):
        main(["--task", "denoise", "--data", str(tiny_data), "--out", str(tmp_path / "c.pt"), "--init",
              str(tmp_path / "missing.pt"), "--device", "cpu", "--no-progress"])
