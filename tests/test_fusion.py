"""``redkern.fuse(m)`` equals ``m``: hand-made networks covering every fold, on every backend here.

Each network (``redkern.testing.FUSE_MODULES``) is fused for each backend that runs on this
machine (``testing.backends_here()``: the CPU kernels; Triton under its interpreter; the CUDA C++
kernels under our host emulation) and compared with the module itself on fresh random inputs of
odd sizes, batch 2. ``torch.empty`` is NaN-filled for these tests, so a feature map a kernel
fails to write fails the comparison.
"""


import copy
import pytest
import torch
from torch import nn

import redkern
from redkern import testing as T
from redkern.backends import _load as load_backend
from redkern.backends.common import BackendUnavailable
from redkern.fusion import FusedForward
from redkern.layer_plan import ConvStep

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # conftest.py: torch.empty is NaN-filled
BACKENDS = T.backends_here()
SLOW_BACKENDS = {"triton", "cuda_emu"}  # interpreted / emulated: small images only


def in_channels(m: nn.Module) -> int:
    return next(x for x in m.modules() if isinstance(x, nn.modules.conv._ConvNd)).in_channels


def tolerance(m: nn.Module) -> float:
    return 1e-4 if any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) else 1e-5


def refused_layers(backend: str, module: nn.Module) -> list[str]:
    """The fused layers ``backend`` cannot run (the CUDA C++ kernels are 3x3 and 1x1 only)."""
    mod = load_backend(backend)
    names = []
    for s in redkern.plan(module).conv_steps:
        try:
            mod.algorithm(s.in_channels, s.out_channels, s.kernel, s.padding, s.transposed, torch.float32)
        except BackendUnavailable:
            names.append(s.name)
    return names


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(T.FUSE_MODULES))
def test_fuse_equals_the_module(name, backend):
    m = T.randomize_(T.FUSE_MODULES[name]()).eval()
    fused = redkern.fuse(m, backend=backend if backend != "cpu" else "auto")
    h, w = (11, 9) if backend in SLOW_BACKENDS else (23, 19)
    if "valid" in name:
        h, w = h + 16, w + 16  # unpadded layers shrink the image
    x = torch.randn(2, in_channels(m), h, w)
    refused = refused_layers(backend, m)
    if refused:  # a named backend that cannot run a layer says which, and runs nothing
        with pytest.raises(BackendUnavailable, match=rf"^{refused[0]} \("):
            with torch.no_grad():
                fused(x)
        return
    with torch.no_grad():
        want = m(x).double()
        got = fused(x)
    T.assert_close(got, want, tolerance(m))
    assert list(fused.state_dict()) == list(m.state_dict())
    assert all(a is b for a, b in zip(fused.parameters(), m.parameters()))  # shared, not copied
    report = redkern.explain(fused)
    for step in fused.plan.conv_steps:
        assert step.name in report


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_red_networks_equal_the_reference(backend):
    for ctor in (redkern.RED10, redkern.RED20, redkern.RED30):
        ref = T.kaiming_init_(ctor(channels=3, features=8 if backend in SLOW_BACKENDS else 32)).eval()
        fused = redkern.fuse(ref, backend=backend)
        x = torch.rand(2, 3, 7, 9)
        with torch.no_grad():
            T.assert_close(fused(x), ref(x).double(), 1e-5)


def test_the_report_says_where_each_layer_runs_and_what_stays_in_pytorch():
    m = T.randomize_(T.FUSE_MODULES["fsrcnn_strided"]()).eval()
    text = redkern.explain(redkern.fuse(m))
    assert "cpu:" in text and "PyTorch: stride (2, 2)" in text
    assert "prelu(conv + b)" in text and "1 -> 12" in text


def test_fuse_keeps_training_and_gradients_right():
    m = T.randomize_(T.FUSE_MODULES["srresnet_like"]())
    fused = redkern.fuse(m)
    x = torch.randn(2, 3, 9, 8)
    exact = copy.deepcopy(m).double().train()
    m.train(), fused.train()
    ref_out = m(x)
    exact(x.double()).square().sum().backward()
    ref_grads = [p.grad for p in exact.parameters()]
    # BatchNorm in training mode cannot be folded: those steps run their modules, and say so.
    assert any(s.folds_batchnorm_in_training for s in fused.plan.conv_steps)
    assert "BatchNorm in training mode" in redkern.explain(fused)
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
        bn.reset_running_stats()
    out = fused(x)
    T.assert_close(out, ref_out.double(), 1e-4)
    out.square().sum().backward()
    # A one-element PReLU slope's gradient is one sum whose terms cancel: fp32 rounding shows
    # against its own size (4e-4 at one seed, 8e-5 for PyTorch's fp32), so no scale is taken
    # under a tenth of the model's largest gradient (a wrong gradient is off by far more).
    largest = max(g.abs().max().item() for g in ref_grads)
    for p, g in zip(m.parameters(), ref_grads):
        T.assert_close(p.grad, g, 1e-4, scale=max(g.abs().max().item(), 0.1 * largest))


def test_an_untraceable_forward_is_fused_part_by_part():
    class Toolbox(nn.Module):
        """Shapes through NumPy and control flow on values, as toolbox models often have."""

        def __init__(self):
            super().__init__()
            self.encoder = T.FUSE_MODULES["dncnn_like"]()
            self.refine = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))

        def forward(self, x):
            import numpy as np
            pad = int(np.ceil(x.shape[-1] / 4) * 4 - x.shape[-1])
            y = self.encoder(torch.nn.functional.pad(x, (0, pad)))[..., :x.shape[-1]]
            return self.refine(y) if y.abs().max() > 0 else y

    m = T.randomize_(Toolbox()).eval()
    fused = redkern.fuse(m)
    assert not isinstance(fused, FusedForward)
    assert redkern.is_fused(fused) and type(fused) is Toolbox
    x = torch.randn(1, 1, 13, 15)
    with torch.no_grad():
        T.assert_close(fused(x), m(x).double(), 1e-4)
    text = redkern.explain(fused)
    assert "runs its own forward in PyTorch" in text and "does not trace" in text
    assert "encoder" in text and "refine" in text


@pytest.mark.parametrize("how", T.COPY_WAYS)
def test_fused_modules_copy_and_pickle_after_running(how):
    m = T.randomize_(T.FUSE_MODULES["edsr_like"]()).eval()
    fused = redkern.fuse(m)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = fused(x)
    other = T.copied(fused, how)
    assert type(other).__name__ == type(fused).__name__ and redkern.is_fused(other)
    assert all(a is not b for a, b in zip(other.parameters(), fused.parameters()))
    with torch.no_grad():
        assert torch.equal(other(x), want)
        next(other.parameters()).add_(1)  # the copy is its own: the original is unchanged
        assert torch.equal(fused(x), want)


def test_a_named_backend_that_cannot_run_a_layer_names_it():
    if "cuda_emu" not in BACKENDS:
        pytest.skip("the CUDA emulation is not built here")
    m = T.FUSE_MODULES["srcnn_915"]().eval()
    with pytest.raises(BackendUnavailable, match="conv1 .*9x9"):
        with torch.no_grad():
            redkern.fuse(m, backend="cuda_emu")(torch.randn(1, 1, 12, 12))


def test_conv_steps_read_their_modules_live():
    m = T.randomize_(T.FUSE_MODULES["dncnn_like"]()).eval()
    fused = redkern.fuse(m)
    x = torch.randn(1, 1, 10, 10)
    with torch.no_grad():
        first = fused(x)
        for p in m.parameters():
            p.mul_(0.5)
        T.assert_close(fused(x), m(x).double(), 1e-4)
        assert not torch.allclose(fused(x), first)
    assert all(isinstance(s, ConvStep) for s in fused.plan.conv_steps)
