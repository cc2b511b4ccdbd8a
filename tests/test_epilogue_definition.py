"""One definition of the epilogue: redkern/epilogue.def, which every copy must agree with.

C++ and CUDA C++ include the file (csrc/common/epilogue.h), Python reads it, Triton takes
Python's values; each compiled module exports the codes it was built with. A test fails when
any of them disagrees, or when a source file spells the codes out instead of including them.
"""

import re
from pathlib import Path

import pytest
import torch

import redkern
from redkern.epilogue import ADD_RESIDUAL, DEFINITION, RELU, RELU_ADD_RELU, Act, Epilogue, Residual

ROOT = Path(__file__).resolve().parent.parent


def definition() -> tuple[dict, dict]:
    text = DEFINITION.read_text()
    acts = {n: int(c) for n, c in re.findall(r"^REDKERN_ACT\((\w+),\s*(\d+)\)", text, re.M)}
    residuals = {n: int(c) for n, c in re.findall(r"^REDKERN_RESIDUAL\((\w+),\s*(\d+)\)", text, re.M)}
    return acts, residuals


def test_python_reads_the_definition():
    acts, residuals = definition()
    assert {a.name: int(a) for a in Act} == acts and {r.name: int(r) for r in Residual} == residuals
    assert len(set(acts.values())) == len(acts) and len(set(residuals.values())) == len(residuals)


@pytest.mark.parametrize("module", ["_C", "_cuda_emu", "_cuda"])
def test_every_native_build_compiled_the_same_codes(module):
    import importlib

    try:
        native = importlib.import_module(f"redkern.{module}")
    except ImportError as e:
        pytest.skip(f"redkern.{module} is not built here: {e}")
    acts, residuals = definition()
    assert dict(native.ACT_CODES) == acts and dict(native.RESIDUAL_CODES) == residuals


def test_triton_takes_pythons_codes():
    conv2d = pytest.importorskip("redkern.kernels.conv2d", reason="triton is not installed")
    for act in Act:
        assert int(getattr(conv2d, f"_{act.name}")) == int(act)


def test_no_source_spells_the_codes_out():
    """Only the .def file holds the numbers: C++ enums come from its macros, Python from parsing it."""
    sources = [p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu")]
    sources += [p for p in (ROOT / "kernels").rglob("*.py")]
    names = [a.name for a in Act] + [r.name for r in Residual]
    spelled = re.compile(r"\b(k?(?:%s))\s*=\s*\d" % "|".join(names))
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources for m in spelled.finditer(p.read_text())]
    assert not offenders, offenders


def test_the_red_net_epilogues_are_instances_of_the_template():
    assert RELU == Epilogue(act=Act.RELU)
    assert RELU_ADD_RELU.formula("conv", "skip") == "relu(relu(conv + b) + skip)"
    assert ADD_RESIDUAL.formula("conv", "x") == "conv + b + x"
    assert Epilogue(alpha=0.1, residual=Residual.BEFORE_ACT).formula("conv", "x") == "0.1 * conv + b + x"
    with pytest.raises(ValueError, match="act2=RELU applies after the residual join"):
        Epilogue(act2=Act.RELU)
    with pytest.raises(ValueError, match="alpha must be a finite number"):
        Epilogue(alpha=float("nan"))
    for e in redkern.testing.EPILOGUES.values():
        assert Epilogue.decode(*e.encode()) == e


def test_the_reference_is_the_formula():
    """apply_epilogue against the formula written out, on values with NaN kept out."""
    from redkern.epilogue import apply_epilogue

    conv, extra = torch.randn(2, 3, 4, 5, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64).view(1, 3, 1, 1)
    w = torch.rand(3, dtype=torch.float64)
    e = Epilogue(act=Act.PRELU, alpha=0.5, residual=Residual.AFTER_ACT, beta=-2.0, act2=Act.LEAKY_RELU, slope2=0.3)
    v = 0.5 * conv + b
    v = torch.where(v > 0, v, w.view(1, 3, 1, 1) * v) - 2 * extra
    want = torch.where(v > 0, v, 0.3 * v)
    assert torch.allclose(apply_epilogue(conv, b.view(3), extra, e, act_weight=w), want, rtol=0, atol=1e-12)
