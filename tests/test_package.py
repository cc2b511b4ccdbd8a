"""The installed package: its native extension imports and backends() tells the truth."""

import importlib
import os
import shutil

import redkern


def test_extension_imports_and_reports_its_isa():
    from redkern import _C

    assert _C.selected_isa() in {"generic", "avx2", "avx512"}
    assert redkern.backends()["cpu"]["available"]
    assert _C.selected_isa() in redkern.backends()["cpu"]["detail"]


def test_cuda_status_matches_what_was_built():
    from redkern import _C

    status = redkern.backends()["cuda"]
    if _C.cuda_status.startswith("built"):
        importlib.import_module("redkern._cuda")  # must import even without a GPU
    else:
        assert not status["available"]
        assert importlib.util.find_spec("redkern._cuda") is None
    if not _has_cuda():
        assert not status["available"]
        assert status["detail"]  # says why


def test_triton_status_matches_the_environment():
    status = redkern.backends()["triton"]
    triton_installed = importlib.util.find_spec("triton") is not None
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if not triton_installed:
        assert not status["available"]
    elif _has_cuda():
        assert status["available"] and "cuda" in status["devices"]
    else:
        assert status["available"] == interpreting
        if interpreting:
            assert status["devices"] == ["cpu"]
    assert status["detail"]


def test_every_backend_explains_itself():
    for name, status in redkern.backends().items():
        assert set(status) >= {"available", "devices", "detail"}, name
        assert isinstance(status["detail"], str) and status["detail"], name


def _has_cuda():
    import torch

    return torch.cuda.is_available()


def test_nvcc_presence_and_build_agree():
    """Where nvcc is on PATH and REDKERN_CUDA was not 0, the CUDA C++ kernels were built."""
    from redkern import _C

    if shutil.which("nvcc") and os.environ.get("REDKERN_CUDA", "auto") not in ("0", "OFF", "off"):
        assert _C.cuda_status.startswith("built"), _C.cuda_status


def test_every_subpackage_is_listed_for_installation():
    """A wheel holds only the packages pyproject.toml lists: a new subpackage left out imports
    here (in the source tree) and fails in every installed copy."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"redkern"} | {f"redkern.{p.parent.name}" for p in (root / "redkern").glob("*/__init__.py")}
    found |= {"redkern.kernels"} if (root / "kernels" / "__init__.py").exists() else set()
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
