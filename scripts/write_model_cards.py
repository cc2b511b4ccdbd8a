#!/usr/bin/env python3
"""Write the model card beside each shipped weights file, from what the weights store and
the tables that `redkern eval` printed.

    python scripts/write_model_cards.py EVAL_DIR

EVAL_DIR holds the `redkern eval` outputs: TASK_main.md (the headline level, with
--ensemble) and TASK_other.md (other levels), as written by the commands in each card.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from redkern import pretrained
from redkern.degradations import Degradation

TRAIN_IMAGES = ("skimage.data: coffee, chelsea, brick, grass, gravel, moon, immunohistochemistry, "
                "motorcycle (left view); pywt.data: aero, ascent; wallpapers (halved): BytheWater, "
                "ColdRipple, DarkestHour, EveningGlow, FallenLeaf, Grey, OneStandsOut, summer_1am")
VAL_IMAGES = ("skimage camera (512x512), skimage astronaut (Y, 512x512), 512x512 centre crops of "
              "the Path and ColorfulCups wallpapers (Y, halved first)")
# task: (headline level, its eval flags, the peer the gain is measured against, the bar)
HEADLINE = {"denoise": ("25", "--level 25 --ensemble", "BM3D", "0.3 dB over BM3D at sigma 25"),
            "sr": ("2", "--level 2 --ensemble", "bicubic", "1.5 dB over bicubic at x2"),
            "jpeg": ("10", "--level 10 --ensemble", "the decoded JPEG", "1.0 dB over the decoded JPEG at quality 10"),
            "deblur": ("2", "--level 2", "Richardson-Lucy",
                       "1 dB over the best of Richardson-Lucy, Wiener and the blurred input at blur sigma 2 "
                       "(Richardson-Lucy is the best of the three there)"),
            "inpaint": ("10", "--level 10", "biharmonic",
                        "within 1 dB of biharmonic inpainting given the true text mask, at 10% text")}
OTHER = {"denoise": "15,50", "sr": "3,4", "jpeg": "20,40", "deblur": "1,3", "inpaint": "5,20"}
BAR_DB = {"denoise": 0.3, "sr": 1.5, "jpeg": 1.0, "deblur": 1.0, "inpaint": -1.0}
WHAT = {"denoise": "Gaussian denoising", "sr": "single-image super-resolution", "jpeg": "JPEG deblocking",
        "deblur": "Gaussian deblurring", "inpaint": "removal of text drawn over the image (blind inpainting)"}
NOTES = {"denoise": "- On the cameraman it trails BM3D (-0.31 dB at sigma 25, -0.87 dB at sigma 15): large smooth\n"
                    "  areas, where BM3D is strongest, are rare in the 18 training images (our reading, not tested).\n",
         "deblur": "- It trails Richardson-Lucy (told the true kernel, at its best iteration count) by 0.10 dB on\n"
                   "  the mean at blur sigma 1, and on Picture_1A at every level; its SSIM is the higher at sigma 1 and 2.\n",
         "inpaint": "- Blind: it must find the text as well as fill it in, and stays about 5 dB below biharmonic\n"
                    "  inpainting told the true mask at every coverage; no mask-given mode exists.\n"}
SIZE_NOTE = {"denoise": "the noisy image itself; no sigma is needed (one blind model)",
             "sr": "the low-resolution image bicubic-enlarged to the target size "
                   "(`redkern.pretrained.upscale_input`)",
             "jpeg": "the decoded JPEG; no quality is needed (one blind model)",
             "deblur": "the blurred image itself; neither the kernel nor the noise level is needed (one blind "
                       "model)",
             "inpaint": "the image with the text on it; no mask is needed (blind, as in the paper)"}


def photos_run(cfg: dict) -> bool:
    """Trained on `redkern.photos`' catalog (redkern/data/SOURCES.md), not prepare_data's 18 images."""
    return Path(cfg["data"]).name.startswith("redkern-photos")


def data_section(cfg: dict, d: Degradation) -> str:
    if photos_run(cfg):
        from redkern import photos

        val = ", ".join(photos.VALIDATION)
        source = (f"- `redkern.photos` (offline: Debian wallpaper packages, scikit-image, PyWavelets; "
                  f"redkern/data/SOURCES.md lists\n  every image, its package and licence): 41 training "
                  f"images, 37.5 Mpixel of 8-bit grayscale/Y.\n"
                  f"- Validation, never trained on (the fixed split `redkern.photos.VALIDATION`): {val}\n"
                  f"  (512x512 centre crops; the whole image for camera and astronaut).\n")
    else:
        source = (f"- `scripts/prepare_data.py` (offline sources only): 18 training images, 10.8 Mpixel of\n"
                  f"  8-bit grayscale/Y: {TRAIN_IMAGES}.\n"
                  f"- Validation, never trained on (fixed split): {VAL_IMAGES}.\n")
    return (source + f"- Patches {cfg['patch']}x{cfg['patch']}, a random one of the 8 flips/rotations each, degraded on the\n"
            f"  fly with {d.describe()} (one level per patch), batch {cfg['batch']}.")


def training_section(task: str, tr: dict, cfg: dict, level: str) -> str:
    if not cfg.get("init"):  # the three models trained together on an H100
        workers = cfg["workers"]
        return f"""- {tr['steps']:,} Adam steps (MSE), peak learning rate {cfg['lr']:g} with {cfg['warmup']} warm-up steps and a
  cosine decay to 0 (the paper's constant 1e-4 is meant for far longer runs), seed {cfg['seed']}.
- {tr['elapsed_s']:.0f} s on one {tr['device']} (torch {tr['torch']}), **shared** with the two other
  shipped models trained at the same time (`scripts/train_shipped.sh`): the reference model
  (cuDNN), bf16 autocast, channels_last, {workers} data-loader workers.
- The step count was set by `--time-budget 490` (it measures the speed and fits the cosine
  schedule to the budget, re-measuring until halfway). To repeat the run without a budget:

```bash
python scripts/prepare_data.py --install
python -m redkern.training --task {task} --levels {cfg['levels']} --data .data/redkern-gray --out runs/{task}.pt \\
    --device cuda --amp bf16 --depth 30 --features 64 --patch 50 --batch 64 --lr {cfg['lr']:g} \\
    --schedule cosine --warmup {cfg['warmup']} --steps {tr['steps']} --seed {cfg['seed']} --workers {workers}
python scripts/export_weights.py runs/{task}.pt
```

  With a fixed `--steps` the schedule's early learning rates differ from the budgeted run's by
  under 0.2% (the budget's step estimate moved by a few percent before it settled), and cuDNN
  is not bit-reproducible, so expect the numbers below to within a few hundredths of a dB.
- Validation during training (bf16, level {level}): {tr['final_val_psnr']:.2f} dB against
  {tr['final_val_input_psnr']:.2f} dB for the degraded input."""
    noise = f" --noise {cfg['noise']}" if cfg.get("noise") else ""
    curve = "\n".join(f"| {step:,} | {secs / 60:.0f} | {val:.2f} |" for step, secs, val in tr["curve"])
    return f"""- Fine-tuned from the shipped denoiser (`--init {cfg['init']}`, RED30 denoise): {tr['steps']:,} Adam steps (MSE),
  peak learning rate {cfg['lr']:g} with {cfg['warmup']} warm-up steps and a cosine decay to 0, seed {cfg['seed']}.
- {tr['elapsed_s']:.0f} s on the {tr['device']} (torch {tr['torch']}), fp32, the fused model (redkern's own
  CPU forward and backward kernels). A second model trained at the same time on the VM's other core
  (`scripts/train_cpu_finetunes.sh`). No GPU was available.
- The step count was set by `--time-budget {cfg['time_budget']:.0f}`. To repeat the run without a budget
  (the CPU run repeats bit for bit at a fixed `--steps` and thread count):

```bash
python -m redkern.photos .data/redkern-photos
OMP_NUM_THREADS=1 python -m redkern.training --task {task} --levels {cfg['levels']}{noise} --init {cfg['init']} \\
    --data .data/redkern-photos --out runs/{task}.pt --device cpu --depth 30 --features 64 --patch {cfg['patch']} \\
    --batch {cfg['batch']} --lr {cfg['lr']:g} --schedule cosine --warmup {cfg['warmup']} --steps {tr['steps']} \\
    --seed {cfg['seed']} --val-every {cfg['val_every']}
python scripts/export_weights.py runs/{task}.pt
```

- The learning curve (validation mean PSNR at level {level} during training, fp32; the degraded input
  {tr['final_val_input_psnr']:.2f} dB):

| step | minutes | validation PSNR (dB) |
| --- | --- | --- |
{curve}"""


def limits_section(task: str, tr: dict, cfg: dict, d: Degradation) -> str:
    if photos_run(cfg):
        head = (f"- Trained for {tr['elapsed_s'] / 60:.0f} minutes on one CPU core with a cosine schedule fitted to that budget,\n"
                "  not for days on a GPU as the paper's models were; the curve above flattened as the rate decayed,\n"
                "  so what a longer run would give is not measured. The validation set is 8 images, not a\n"
                "  benchmark; its numbers are not comparable with published ones.\n")
    else:
        head = ("- Trained for minutes on 18 images, not for days on BSD's 300: expect less than the paper's\n"
                "  RED30 on standard benchmarks. The validation set is 4 images, not a benchmark; its numbers\n"
                "  are not comparable with published ones.\n")
    return (head + f"- Grayscale/Y only. Levels outside {d.describe()} work less well "
            f"(`redkern.pretrained.check_level` warns).\n{NOTES.get(task, '')}")


def card(task: str, eval_dir: Path) -> str:
    meta = pretrained.info(task)
    tr, cfg = meta["training"], meta["training"]["config"]
    model = pretrained.load(task)
    params = sum(p.numel() for p in model.parameters())
    d = Degradation(task, meta["levels"], noise=cfg.get("noise"))
    level, eval_flags, baseline, bar = HEADLINE[task]
    val_dir = ".data/redkern-photos/val" if photos_run(cfg) else ".data/redkern-gray/val"
    main_table = (eval_dir / f"{task}_main.md").read_text().strip()
    gains = dict(re.findall(r"(RED30(?: x8)?) - [^:]+: ([+-][0-9.]+) dB", main_table))
    verdict = "; ".join(f"{name} {float(g):+.2f} dB: {'met' if float(g) >= BAR_DB[task] else 'missed'}"
                        for name, g in gains.items())
    other = eval_dir / f"{task}_other.md"
    other_table = other.read_text().strip() if other.exists() else "(not run)"
    return f"""# RED30 {task}: `{pretrained.FILES[task]}`

**What it does**: {WHAT[task]}
of grayscale images (or the Y channel of colour images: `redkern restore` keeps the chroma),
trained on {d.describe()}. Input: {SIZE_NOTE[task]}.

```python
import redkern
model = redkern.pretrained("{task}")              # reference model, float32, eval mode
model = redkern.pretrained("{task}", fused=True)  # same weights, fused kernels
```

## Model
- RED30 (15 conv + 15 deconv, 3x3, 7 skips, global residual), 64 features, 1 channel:
  {params:,} parameters, stored in float16 ({pretrained.path(task).stat().st_size / 1e6:.1f} MB), loaded as float32.
  float16 storage moves outputs by at most ~0.1 on the 0-255 scale (scripts/export_weights.py measures it).
- {'Its weights start from the shipped denoiser' if cfg.get('init') else 'The last layer starts at zero, so the untrained network is the identity'}.

## Data
{data_section(cfg, d)}

## Training
{training_section(task, tr, cfg, level)}

## Validation (CPU, float32, this file's float16 weights)
PSNR on [0, 255] of outputs rounded to 8 bits, no border cropped; SSIM with Wang et al.'s
Gaussian window; scikit-image's metrics. The bar set for this model: {bar}.
**Result on the mean**: {verdict}.

```bash
redkern eval --task {task} {eval_flags} --data {val_dir}
```

{main_table}

```bash
redkern eval --task {task} --level {OTHER[task]} --data {val_dir}
```

{other_table}

## Limits
{limits_section(task, tr, cfg, d)}"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--tasks", nargs="+", help="only these (default: every shipped task)")
    args = parser.parse_args(argv)
    for task in args.tasks or pretrained.available():
        out = pretrained.WEIGHTS_DIR / f"red30_{task}.md"
        out.write_text(card(task, args.eval_dir))
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
