"""bf16 inference on the shipped weights scores as fp32 does: the guard of the CPU's bf16 engines.

Every bf16 Winograd GEMM engine this CPU runs (``REDKERN_CPU_BF16_GEMM``: the fp32 GEMM on the
widened input, and vdpbf16ps / AMX, which round the transformed input and weights to bf16) must
restore photographs the project has never trained on within 0.05 dB PSNR of the fp32 fused model,
on every image, task and level; the models' outputs are also checked for NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import color, data

from redkern import pretrained
from redkern.backends import cpu
from redkern.evaluation import evaluate

MAX_PSNR_DROP_DB = 0.05
CASES = [("denoise", 25), ("sr", 3), ("jpeg", 10)]


def _engines() -> list[str]:
    """The REDKERN_CPU_BF16_GEMM values this CPU runs with its selected kernels."""
    return list(cpu.bf16_gemm_engines())


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, np.ndarray]]:
    """Three grey 96x128 crops of scikit-image's photographs (none is in the training set)."""
    out = []
    for name, y, x in (("astronaut", 40, 150), ("coffee", 120, 200), ("rocket", 150, 220)):
        img = getattr(data, name)()
        grey = (color.rgb2gray(img) * 255).round().astype(np.uint8)
        out.append((name, grey[y:y + 96, x:x + 128, None]))
    return out


@pytest.mark.parametrize("task,level", CASES)
@pytest.mark.parametrize("engine", _engines())
def test_bf16_psnr_within_0_05_db_of_fp32(engine, task, level, photos, monkeypatch):
    monkeypatch.setenv(cpu.BF16_GEMM_ENV, engine)
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = pretrained.load(task, fused=True, dtype=dtype)
        result = evaluate(model, photos, task, level, baseline=False, seed=3)
        scores[dtype] = {name: row["RED"][0] for name, row in result.rows.items()}
    for name, fp32 in scores[torch.float32].items():
        bf16 = scores[torch.bfloat16][name]
        assert np.isfinite(bf16) and np.isfinite(fp32), f"{name}: a non-finite PSNR"
        assert abs(fp32 - bf16) <= MAX_PSNR_DROP_DB, (
            f"{engine} engine, {task} {level}, {name}: bf16 {bf16:.3f} dB against fp32 {fp32:.3f} dB")
    # RED30's 64->64 layers ran the engine under test.
    want = {"fp32": "winograd F(4x4,3x3)", "dot": "winograd F(4x4,3x3) bf16-dot",
            "amx": "winograd F(4x4,3x3) bf16 AMX"}[engine]
    assert cpu.algorithm(64, 64, 3, 1, False, torch.bfloat16) == want
    assert cpu.algorithm(64, 64, 3, 1, True, torch.bfloat16) == want
