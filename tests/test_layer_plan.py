"""The layer plan: what it reads off a module, and that running it is running the module.

Plans are checked in the executor's ``"torch"`` mode (plain PyTorch, every convolution a
``F.conv2d``), so these tests hold whatever kernels are built; tests/test_fuse.py runs the same
modules through the kernels.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import redkern
from redkern import testing as T
from redkern.epilogue import Act, Residual
from redkern.executor import as_module, run
from redkern.layer_plan import PlanError

RED30_SKIPS = {1: 14, 3: 12, 5: 10, 7: 8, 9: 6, 11: 4, 13: 2}  # the released pairs, by hand


def torch_mode(module, x):
    with torch.no_grad():
        return run(redkern.plan(module), module, (x,), mode="torch")


# --- RED-Net's plan, from its definition --------------------------------------------------------

@pytest.mark.parametrize("depth", [10, 20, 30])
def test_red_plan_has_one_fused_step_per_layer_with_the_paper_epilogues(depth):
    model = redkern.REDNet(depth, features=8)
    plan = redkern.plan(model)
    convs = plan.conv_steps
    n = depth // 2
    assert [s.name for s in convs] == [f"conv_{i}" for i in range(1, n + 1)] + [f"deconv_{j}" for j in range(1, n + 1)]
    assert all(s.conv is getattr(model, s.name) for s in convs)  # the module's own layers, not copies
    assert all(s.epilogue == redkern.Epilogue(act=Act.RELU) for s in convs[:n])
    skips = RED30_SKIPS if depth == 30 else model.skips
    for j, step in enumerate(convs[n:2 * n - 1], start=1):
        if j in skips:
            assert step.epilogue.residual == Residual.AFTER_ACT and step.epilogue.act2 == Act.RELU
            assert plan.names[step.extra] == f"conv_{skips[j]}"
        else:
            assert step.epilogue == redkern.Epilogue(act=Act.RELU) and step.extra is None
    last = convs[-1]
    assert last.epilogue == redkern.Epilogue(residual=Residual.BEFORE_ACT) and last.extra == plan.inputs[0]
    assert [s.reason for s in plan.torch_steps] in (["a parameter or buffer read directly", "input check"],)
    assert plan.receptive_field_radius() == depth == model.receptive_field_radius


def test_red30_flops_are_two_per_multiply_add():
    model = redkern.RED30()
    per_pixel = 2 * 9 * (1 * 64 + 28 * 64 * 64 + 64 * 1)
    assert redkern.plan(model).flops((2, 1, 37, 53)) == per_pixel * 2 * 37 * 53


def test_lifetimes_free_every_map_after_its_last_reader():
    plan = redkern.plan(redkern.REDNet(30, features=4))
    last = plan.last_uses()
    by_name = {plan.names[s.dst]: i for i, s in enumerate(plan.steps)}
    # conv_14 is read by deconv_1 only (its skip); conv_1 only by conv_2; the input lives to the end.
    assert last[plan.steps[by_name["conv_14"]].dst] == by_name["deconv_1"]
    assert last[plan.steps[by_name["conv_1"]].dst] == by_name["conv_2"]
    assert last[plan.inputs[0]] == by_name["deconv_15"]
    assert last[plan.output_values[0]] == len(plan.steps)


@pytest.mark.parametrize("depth", [10, 30])
def test_red_plan_run_in_torch_mode_is_the_reference(depth):
    model = T.kaiming_init_(redkern.REDNet(depth, channels=3, features=16))
    x = torch.rand(2, 3, 13, 19)
    with torch.no_grad():
        T.assert_close(torch_mode(model, x), model(x).double(), 1e-5)


def test_the_conv_only_export_has_no_transposed_convolution(monkeypatch):
    model = T.kaiming_init_(redkern.REDNet(10, features=8)).eval()
    exported = as_module(redkern.plan(model), model)
    calls = []
    real = F.conv_transpose2d
    monkeypatch.setattr(F, "conv_transpose2d", lambda *a, **k: calls.append(a) or real(*a, **k))
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        y = exported(x)
    assert not calls
    monkeypatch.undo()
    with torch.no_grad():
        T.assert_close(y, model(x).double(), 1e-5)


# --- the patterns it folds, on hand-made modules -------------------------------------------------

class Folds(nn.Module):
    """Every pattern the planner folds into an epilogue, and a few it must not."""

    def __init__(self, c=6):
        super().__init__()
        self.a = nn.Conv2d(2, c, 5, padding=2)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.PReLU(c)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.c = nn.ConvTranspose2d(c, c, 3, padding=1)
        self.d = nn.Conv2d(c, c, 1)
        self.e = nn.Conv2d(c, c, 9, padding=4, bias=False)
        self.f = nn.Conv2d(c, 2, 3, padding=1)
        self.leaky = nn.LeakyReLU(0.3)

    def forward(self, x):
        h = self.act(self.bn(self.a(x)))                 # conv + BN + PReLU
        r = h - 0.5 * self.b(h)                          # scaled, subtracted from an earlier value
        r = self.leaky(F.relu(self.c(r)) + h)            # act, residual, act2
        r = torch.tanh(self.d(r) / 4)                    # 1x1, divided, tanh
        r = h - self.e(r)                                # no bias: DnCNN's residual
        return self.f(r) + x                             # the global residual


def test_every_fold_is_found_and_named():
    m = Folds()
    plan = redkern.plan(m)
    s = {step.name: step for step in plan.conv_steps}
    assert s["a"].bn is m.bn and s["a"].epilogue.act == Act.PRELU and s["a"].act_module is m.act
    assert s["b"].epilogue.alpha == -0.5 and s["b"].bias_scale == -0.5 and s["b"].epilogue.residual == Residual.BEFORE_ACT
    assert s["c"].epilogue == redkern.Epilogue(act=Act.RELU, residual=Residual.AFTER_ACT, act2=Act.LEAKY_RELU, slope2=0.3)
    assert s["d"].epilogue.act == Act.TANH and s["d"].epilogue.alpha == 0.25
    assert s["e"].epilogue.alpha == -1 and s["e"].conv.bias is None
    assert s["f"].extra == plan.inputs[0]
    assert not [t for t in plan.torch_steps if t.reason not in ("input check",)]


def test_folded_module_runs_as_the_module():
    m = T.randomize_(Folds()).eval()
    x = torch.randn(3, 2, 11, 14)
    with torch.no_grad():
        T.assert_close(torch_mode(m, x), m(x).double(), 1e-5)


class NotFoldable(nn.Module):
    """Convolutions the fused kernels do not run, and additions they must not take."""

    def __init__(self):
        super().__init__()
        self.strided = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.dilated = nn.Conv2d(4, 4, 3, dilation=2, padding=2)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.reflect = nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.broadcast = nn.Conv2d(4, 4, 3, padding=1)
        self.bias = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        h = self.reflect(self.grouped(self.dilated(self.strided(x))))
        y = self.shared(h)
        z = F.relu(y) + y        # y has two users: its ReLU may not be folded
        return self.broadcast(z) + self.bias  # a broadcast addition is not an epilogue


def test_what_cannot_be_fused_stays_in_pytorch_with_the_reason():
    m = NotFoldable()
    plan = redkern.plan(m)
    reasons = {s.name: s.reason for s in plan.torch_steps}
    assert "stride (2, 2)" in reasons["strided"] and "dilation" in reasons["dilated"]
    assert "groups=2" in reasons["grouped"] and "padding_mode='reflect'" in reasons["reflect"]
    steps = {s.name: s for s in plan.conv_steps}
    assert steps["shared"].epilogue == redkern.Epilogue() and steps["broadcast"].epilogue == redkern.Epilogue()
    x = torch.randn(2, 3, 16, 18)
    with torch.no_grad():
        T.assert_close(torch_mode(m, x), m(x).double(), 1e-5)
    text = str(plan)
    assert "PyTorch: stride (2, 2)" in text and "PyTorch: groups=2" in text


def test_a_mutation_between_a_conv_and_its_add_stops_the_fold():
    class Mutates(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            x.mul_(2)  # eager reads x before this line; a step run at the add would not
            return y + x

    plan = redkern.plan(Mutates())
    assert plan.conv_steps[0].epilogue.residual == Residual.NONE


def test_an_untraceable_forward_is_a_plan_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(PlanError, match="does not trace"):
        redkern.plan(Branchy())


# --- the receptive field, against the impulse response ------------------------------------------

class RandomNet(nn.Module):
    """A random DAG of "same" convolutions (kernel 1, 3, 5, 9) with random additions of
    earlier values, leaky activations (no dead units) and a pixel shuffle now and then."""

    def __init__(self, rng: random.Random, channels=3):
        super().__init__()
        self.layers = nn.ModuleList()
        self.wiring = []
        scales = [1]  # the resolution of each value; additions join values of one resolution
        for i in range(rng.randint(2, 7)):
            k = rng.choice([1, 3, 5, 9])
            shuffle = scales[-1] == 1 and rng.random() < 0.2
            self.layers.append(nn.Conv2d(channels, channels * (4 if shuffle else 1), k, padding=k // 2))
            scale = scales[-1] * (2 if shuffle else 1)
            same = [j for j in range(i + 1) if scales[j] == scale]
            skip = rng.choice(same) if same and not shuffle and rng.random() < 0.5 else None
            self.wiring.append((skip, shuffle))
            scales.append(scale)

    def forward(self, x):
        values = [x]
        for conv, (skip, shuffle) in zip(self.layers, self.wiring):
            h = F.leaky_relu(conv(values[-1]), 0.2)
            if shuffle:
                h = F.pixel_shuffle(h, 2)
            elif skip is not None:
                h = h + values[skip]
            values.append(h)
        return values[-1]


def impulse_radius(model, size=71, channels=3) -> int:
    """How far from the centre an input pixel still moves the output's centre pixel(s)."""
    x = torch.rand(1, channels, size, size, dtype=torch.float64, requires_grad=True)
    y = model(x)
    c = y.shape[2] // 2
    y[..., c, c].sum().backward()
    hit = (x.grad.abs().sum((0, 1)) > 0).nonzero()
    centre = c * size // y.shape[2]
    return int((hit - centre).abs().max())


@pytest.mark.parametrize("seed", range(12))
def test_receptive_field_is_the_impulse_response(seed):
    rng = random.Random(seed)
    model = RandomNet(rng).double()
    for p in model.parameters():
        nn.init.uniform_(p, 0.1, 1.0)  # positive weights: no cancellation hides a dependency
    plan = redkern.plan(model, example_inputs=torch.empty(1, 3, 32, 32, dtype=torch.float64))
    radius = plan.receptive_field_radius()
    assert radius is not None
    measured = impulse_radius(model)
    # A pixel shuffle places an output pixel at a sub-pixel of its input: one pixel of slack.
    shuffled = any(s for _, s in model.wiring)
    assert measured <= radius <= measured + (1 if shuffled else 0), (radius, measured, str(plan))


def test_receptive_field_of_a_deconvolution_stack():
    model = nn.Sequential(nn.Conv2d(1, 2, 5, padding=2), nn.ConvTranspose2d(2, 2, 9, padding=4),
                          nn.Conv2d(2, 1, 3, padding=1)).double()
    for p in model.parameters():
        nn.init.uniform_(p, 0.1, 1.0)
    assert redkern.plan(model).receptive_field_radius() == impulse_radius(model, channels=1) == 2 + 4 + 1


def test_a_conv_subclass_with_the_stock_forward_is_planned_as_a_conv():
    class MeanShift(nn.Conv2d):  # as EDSR's code defines it: fixed weights, nn.Conv2d's forward
        def __init__(self):
            super().__init__(3, 3, 1)
            self.requires_grad_(False)

    model = nn.Sequential(MeanShift(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    plan = redkern.plan(model)
    assert [s.name for s in plan.conv_steps] == ["0", "1"] and plan.conv_steps[1].epilogue.act == Act.RELU
    x = torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        T.assert_close(torch_mode(model, x), model(x).double(), 1e-5)
