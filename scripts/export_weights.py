#!/usr/bin/env python3
"""Turn training checkpoints into the shipped weights (float16 + config + training summary).

    python scripts/export_weights.py runs/denoise.pt runs/sr.pt runs/jpeg.pt

writes ``redkern/weights/red30_TASK.pt`` for each (``--out-dir`` to change) and prints how far
the float16 copy's outputs are from the float32 checkpoint's on a random image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from redkern import pretrained


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out-dir", type=Path, default=pretrained.WEIGHTS_DIR)
    args = parser.parse_args(argv)
    for ckpt in args.checkpoints:
        data = pretrained.info(ckpt)
        out = args.out_dir / f"red{data['depth']}_{data['task']}.pt"
        pretrained.export(ckpt, out)
        full, half = pretrained.load(ckpt), pretrained.load(out)
        x = torch.rand(1, data["channels"], 128, 128, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (full(x) - half(x)).abs().max().item()
        print(f"{ckpt} -> {out} ({out.stat().st_size / 1e6:.1f} MB); float16 vs float32 output: "
              f"max |diff| {diff:.2e} ({diff * 255:.3f} on the 0-255 scale)")


if __name__ == "__main__":
    main()
