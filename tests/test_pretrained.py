"""The shipped weights: they load into both models, agree, restore, and `redkern restore --task` uses them."""

import numpy as np
import pytest
import torch
from PIL import Image

import redkern
from redkern import imageio, pretrained
from redkern.degradations import add_gaussian_noise, bicubic_degrade, blur_degrade, jpeg_roundtrip, text_overlay

TASKS = ("denoise", "sr", "jpeg", "deblur", "inpaint")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    a8, b8 = (torch.round(t.clamp(0, 1) * 255) for t in (a, b))
    return float(10 * torch.log10(255 ** 2 / ((a8 - b8) ** 2).mean()))


@pytest.fixture(scope="module")
def clean():
    """A 96x96 crop of the bundled photograph (the cameraman: a validation image, never trained on)."""
    pixels = imageio.read_image(imageio.sample_path())
    return torch.from_numpy(imageio.to_float(pixels)).permute(2, 0, 1)[None, :1, 40:136, 80:176].contiguous()


def test_all_five_ship_with_their_config_and_card():
    assert pretrained.available() == list(TASKS)
    for task in TASKS:
        meta = pretrained.info(task)
        assert meta["task"] == task and (meta["depth"], meta["features"], meta["channels"]) == (30, 64, 1)
        assert meta["training"]["steps"] > 1000 and meta["training"]["device"]
        assert (pretrained.WEIGHTS_DIR / f"red30_{task}.md").exists()
        state = torch.load(pretrained.path(task), weights_only=True)["state_dict"]
        assert all(v.dtype == torch.float16 for v in state.values())


@pytest.mark.parametrize("task", TASKS)
def test_reference_and_fused_models_give_the_same_output(task, clean):
    ref = redkern.pretrained(task)  # the module is callable
    assert isinstance(ref, redkern.REDNet) and not ref.training and ref.task == task
    assert all(not p.requires_grad for p in ref.parameters())
    try:
        fused = pretrained.load(task, fused=True)
        with torch.no_grad():
            y_fused = fused(clean)
    except redkern.BackendUnavailable as e:
        pytest.skip(f"no fused CPU backend here: {e}")
    assert isinstance(fused, redkern.FusedREDNet)
    with torch.no_grad():
        torch.testing.assert_close(y_fused, ref(clean), rtol=1e-4, atol=1e-4)


def test_each_model_restores_what_it_was_trained_for(clean):
    """On a crop none of them was trained on, each model improves on its own degradation by a
    margin far outside what a wrong or untrained model gives (the identity gains 0 dB)."""
    rng = np.random.default_rng(0)
    degraded = {"denoise": add_gaussian_noise(clean, 25, rng), "sr": bicubic_degrade(clean, 2),
                "jpeg": jpeg_roundtrip(clean, 10), "deblur": blur_degrade(clean, 2.0, 1.0, rng),
                "inpaint": text_overlay(clean, 10, rng)[0]}
    with torch.no_grad():
        gains = {task: psnr(pretrained.load(task)(x), clean) - psnr(x, clean) for task, x in degraded.items()}
    assert gains["denoise"] > 6, gains
    assert gains["sr"] > 1, gains
    assert gains["jpeg"] > 0.5, gains
    assert gains["deblur"] > 1, gains
    assert gains["inpaint"] > 5, gains


def test_levels_outside_training_warn():
    with pytest.warns(UserWarning, match="sigma 70"):
        pretrained.check_level("denoise", 70)
    with pytest.warns(UserWarning, match="scale 5"):
        pretrained.check_level("sr", 5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.check_level("jpeg", 25)
        pretrained.check_level(pretrained.load("sr"), 3)


def test_unknown_task_says_what_exists():
    with pytest.raises(ValueError, match="no pretrained weights for task 'deblurr'; choose one of .*'deblur'"):
        pretrained.path("deblurr")


def test_export_round_trips_a_training_checkpoint(tmp_path):
    from redkern.training import build_model
    from redkern.weights import CHECKPOINT_FORMAT

    model = build_model(4, 1, 8)
    torch.nn.init.normal_(model.deconv_2.weight, std=0.1)
    ckpt = {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": {}, "step": 7,
            "history": [{"step": 7, "val_psnr": 30.0, "input_psnr": 20.0}], "elapsed_s": 1.5, "device": "cpu",
            "model_kind": "reference", "finished": True, "torch": torch.__version__,
            "config": {"task": "jpeg", "levels": "10-40", "depth": 4, "features": 8, "channels": 1}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    pretrained.export(tmp_path / "ckpt.pt", tmp_path / "w.pt")
    full, half = pretrained.load(tmp_path / "ckpt.pt"), pretrained.load(tmp_path / "w.pt")
    assert half.task == "jpeg" and half.info["training"]["steps"] == 7
    x = torch.rand(1, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(half(x), full(x), rtol=0, atol=2e-3)


def test_upscale_input_matches_the_training_degradation(clean):
    small = torch.nn.functional.interpolate(clean, scale_factor=0.5, mode="bicubic", antialias=True)
    up = pretrained.upscale_input(small, 2)
    assert up.shape == clean.shape
    assert torch.equal(up, torch.round(up * 255) / 255)


def test_restore_command_uses_the_shipped_weights(tmp_path, clean):
    from redkern.cli import main

    rng = np.random.default_rng(1)
    noisy = add_gaussian_noise(clean, 25, rng)
    Image.fromarray(np.rint(noisy[0, 0].clamp(0, 1).numpy() * 255).astype(np.uint8)).save(tmp_path / "in.png")
    code = main(["restore", "--task", "denoise", "--sigma", "25", "--backend", "reference", "--quiet",
                 str(tmp_path / "in.png"), str(tmp_path / "out.png")])
    assert code == 0
    out = torch.from_numpy(np.asarray(Image.open(tmp_path / "out.png")).astype(np.float32) / 255)
    noisy8 = torch.from_numpy(np.asarray(Image.open(tmp_path / "in.png")).astype(np.float32) / 255)
    assert psnr(out, clean[0, 0]) > psnr(noisy8, clean[0, 0]) + 6


@pytest.mark.parametrize("task", ["nonexistent", "", None])
def test_an_unknown_task_names_the_available_ones(task):
    with pytest.raises(ValueError, match=r"choose one of \('denoise', 'sr', 'jpeg', 'deblur', 'inpaint'\)"):
        redkern.pretrained(task)
