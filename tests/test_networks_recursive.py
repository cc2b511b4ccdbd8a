"""The recursive networks of the zoo, DRRN, DRCN and MemNet: parameter counts derived by hand,
weights shared where the papers share them, each module equal to a plain functional statement
of its paper's equations, and ``redkern.fuse`` equal to the module on every backend here
(CPU fp32, batch 2, odd sizes), with what stays in PyTorch and the receptive field checked."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import redkern
from redkern import testing as T

pytestmark = pytest.mark.usefixtures("poisoned_empty")  # conftest.py: torch.empty is NaN-filled

# Triton runs here only under its interpreter: far too slow for 50-layer plans; skipped.
BACKENDS = [b for b in T.backends_here() if b != "triton"]
SLOW_BACKENDS = {"cuda_emu"}  # the CUDA C++ kernels under host emulation: tiny shapes only


def conv3(cin, cout, bias=True):  # parameters of a 3x3 conv
    return 9 * cin * cout + (cout if bias else 0)


def conv1(cin, cout):  # of a 1x1 conv with bias
    return cin * cout + cout


def bn(c):  # of a BatchNorm2d: weight and bias (running statistics are buffers)
    return 2 * c


# --- parameter counts, by hand -------------------------------------------------------------------

# DRRN_BxUy, 128 wide, 1 channel: input BN(1) + conv 1->128, two shared convs 128->128, per unit
# two BN(128), output BN(128) + conv 128->1.
#   B1U25: 2 + 1,280 + 2 * 147,584 + 25 * 512 + 256 + 1,153 = 310,659
#   B1U9:  2 + 1,280 + 2 * 147,584 +  9 * 512 + 256 + 1,153 = 302,467
# conv weights alone: 1,152 + 2 * 147,456 + 1,152 = 297,216 (the paper's "297K", any U).
def drrn_params(units, f=128):
    return bn(1) + conv3(1, f) + 2 * conv3(f, f) + units * 2 * bn(f) + bn(f) + conv3(f, 1)


# DRCN, 256 wide, 16 recursions: embedding 1->256 (2,560) and 256->256 (590,080), the recursive
# conv (590,080), reconstruction 256->256 (590,080) and 256->1 (2,305), 16 ensemble weights:
#   2,560 + 3 * 590,080 + 2,305 + 16 = 1,775,121; conv weights alone 1,774,080.
def drcn_params(d=16, f=256):
    return conv3(1, f) + 3 * conv3(f, f) + conv3(f, 1) + d


# MemNet M6R6, 64 wide: feature BN(1) + conv 1->64 (2 + 640); block m = 1..6: two shared convs
# (2 * 36,928), 6 units x two BN(64) (1,536), gate BN((6+m)*64) + 1x1 conv (6+m)*64 -> 64;
# 6 reconstruction BN(64) (768), the shared reconstruction conv 64->1 (577), 6 output weights.
#   642 + 6 * (73,856 + 1,536) + 128 * 57 + (4,096 * 57 + 6 * 64) + 768 + 577 + 6
#   = 642 + 452,352 + 7,296 + 233,856 + 768 + 577 + 6 = 695,497
# conv weights alone: 576 + 6 * 73,728 + 4,096 * 57 + 576 = 676,992 (the paper's "677K").
def memnet_params(m=6, r=6, f=64):
    blocks = sum(2 * conv3(f, f) + r * 2 * bn(f) + bn((r + i) * f) + conv1((r + i) * f, f) for i in range(1, m + 1))
    return bn(1) + conv3(1, f) + blocks + m * bn(f) + conv3(f, 1) + m


def n_params(m, only_conv_weights=False):
    return sum(p.numel() for p in m.parameters() if not only_conv_weights or p.dim() == 4)


@pytest.mark.parametrize("name, want, conv_weights", [
    ("drrn", 310_659, 297_216), ("drrn_b1u9", 302_467, 297_216),
    ("drcn", 1_775_121, 1_774_080), ("memnet", 695_497, 676_992)])
def test_default_parameter_counts_equal_the_hand_derivation(name, want, conv_weights):
    hand = {"drrn": drrn_params(25), "drrn_b1u9": drrn_params(9), "drcn": drcn_params(),
            "memnet": memnet_params()}[name]
    assert hand == want
    m = redkern.create_model(name)
    assert n_params(m) == want and n_params(m, only_conv_weights=True) == conv_weights
    assert f"{want:,}" in redkern.networks._registry._MODELS[name].__doc__
    # one copy of each shared weight: the state_dict holds as many conv weights as conv modules
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert sum(k.endswith("weight") and v.dim() == 4 for k, v in m.state_dict().items()) == len(convs)


def test_drrn_port_variant_has_exactly_the_papers_297k():
    m = redkern.create_model("drrn", batchnorm=False, bias=False)
    assert n_params(m) == 297_216
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())


def test_memnet_single_supervised_variant():
    m = redkern.create_model("memnet", multi_supervised=False)
    # one reconstruction BatchNorm instead of six, no output weights
    assert n_params(m) == memnet_params() - 5 * bn(64) - 6
    assert not hasattr(m, "weights")


# --- the structure of the default builds, read off their plans (traced, nothing computed) -------

@pytest.mark.parametrize("name, conv_calls, conv_modules, radius", [
    # DRRN: 1 + 2U + 1 conv layers on one path; 4 conv modules (input, two shared, output)
    ("drrn", 52, 4, 52), ("drrn_b1u9", 20, 4, 20),
    # DRCN: 2 embedding + 16 x (recursive conv + 2 reconstruction) = 50 calls of 5 modules; the
    # longest path is 2 + 16 + 2 = 20 layers: the paper's 41 x 41 receptive field
    ("drcn", 50, 5, 20),
    # MemNet: 1 + 6 x (12 + 1 gate) + 6 reconstructions = 85 calls (80 layers deep) of
    # 1 + 6 x 3 + 1 = 20 modules; the 1x1 gates add no reach: 1 + 6 x 12 + 1 = 74
    ("memnet", 85, 20, 74),
])
def test_default_build_layers_and_receptive_field(name, conv_calls, conv_modules, radius):
    m = redkern.create_model(name).eval()
    plan = redkern.plan(m)
    steps = plan.conv_steps
    assert len(steps) == conv_calls
    assert len({id(s.conv) for s in steps}) == conv_modules == sum(isinstance(c, nn.Conv2d) for c in m.modules())
    assert plan.receptive_field_radius() == radius
    assert all(s.kernel in ((3, 3), (1, 1)) and s.padding == (s.kernel[0] // 2,) * 2 for s in steps)


def shared_uses(m, plan):
    """conv module -> how many plan steps call it."""
    uses = {}
    for s in plan.conv_steps:
        uses[s.conv] = uses.get(s.conv, 0) + 1
    return uses


def test_drrn_shares_its_two_convs_among_the_units_of_a_block():
    m = redkern.create_model("drrn", blocks=2, units=3, features=8)
    uses = shared_uses(m, redkern.plan(m))
    for block in m.blocks:
        assert uses[block.conv1] == uses[block.conv2] == 3 and uses[block.input] == 1
        assert len({id(b) for b in block.norms1}) == 3  # each unit its own BatchNorms
    assert m.blocks[0].conv1.weight is not m.blocks[1].conv1.weight  # blocks do not share
    assert m.blocks[0].input.in_channels == 1 and m.blocks[1].input.in_channels == 8
    assert uses[m.output] == 1


def test_drcn_applies_one_conv_recursively_and_one_reconstruction_net():
    m = redkern.create_model("drcn", recursions=5, features=8)
    uses = shared_uses(m, redkern.plan(m))
    assert uses[m.inference] == uses[m.reconstruct1] == uses[m.reconstruct2] == 5
    assert uses[m.embed1] == uses[m.embed2] == 1
    assert m.weights.shape == (5,)


def test_memnet_shares_convs_within_a_block_and_the_reconstruction_across_blocks():
    m = redkern.create_model("memnet", blocks=3, units=4, features=8)
    uses = shared_uses(m, redkern.plan(m))
    for i, block in enumerate(m.blocks, start=1):
        assert uses[block.conv1] == uses[block.conv2] == 4 and uses[block.gate] == 1
        assert block.gate.in_channels == (4 + i) * 8 and block.gate.kernel_size == (1, 1)
    assert uses[m.reconstruction] == 3 and len(m.reconstruction_norms) == 3


# --- the modules against their papers' equations, written out here ------------------------------

def _bn(norm, x):  # eval-mode BatchNorm in float64
    if isinstance(norm, nn.Identity):
        return x
    mean, var, weight, bias = (t.double() for t in (norm.running_mean, norm.running_var, norm.weight, norm.bias))
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, norm.eps)


def _conv(c, x):
    return F.conv2d(x.double(), c.weight.double(), None if c.bias is None else c.bias.double(), padding=c.padding)


def _pre(norm, c, x):  # pre-activation: conv(relu(bn(x)))
    return _conv(c, F.relu(_bn(norm, x)))


def drrn_equations(m, x):
    """The paper: H0 = f_in(x); H_u = F(H_{u-1}, W) + H0 with W shared; y = f_out(H_U) + x."""
    h = x.double()
    for blk in m.blocks:
        h0 = _pre(blk.norm, blk.input, h)
        h = h0
        for n1, n2 in zip(blk.norms1, blk.norms2):
            h = _pre(n2, blk.conv2, _pre(n1, blk.conv1, h)) + h0
    return _pre(m.output_norm, m.output, h) + x.double()


def drcn_equations(m, x):
    x = x.double()
    h = F.relu(_conv(m.embed2, F.relu(_conv(m.embed1, x))))
    out = 0
    for d in range(m.recursions):
        h = F.relu(_conv(m.inference, h))
        out = out + m.weights[d].double() * (_conv(m.reconstruct2, F.relu(_conv(m.reconstruct1, h))) + x)
    return out


def memnet_equations(m, x):
    """B_m^r = F(B_m^{r-1}) + B_m^{r-1} (B_m^0 = B_{m-1}); B_m = gate([B_0..B_{m-1}, B_m^1..B_m^R]);
    y = sum_m w_m (f_rec(B_m) + x)."""
    x = x.double()
    memories = [_pre(m.feature_norm, m.feature, x)]
    for blk in m.blocks:
        h, short = memories[-1], []
        for n1, n2 in zip(blk.norms1, blk.norms2):
            h = _pre(n2, blk.conv2, _pre(n1, blk.conv1, h)) + h
            short.append(h)
        memories.append(_pre(blk.gate_norm, blk.gate, torch.cat(memories + short, 1)))
    ys = [_pre(n, m.reconstruction, b) + x for n, b in zip(m.reconstruction_norms, memories[-len(m.reconstruction_norms):])]
    if not m.multi_supervised:
        return ys[0]
    return sum(w.double() * y for w, y in zip(m.weights, ys))


EQUATIONS = {"drrn": drrn_equations, "drcn": drcn_equations, "memnet": memnet_equations}

# name, small options, what the explanation must say stays in PyTorch, how many operations do
CASES = {
    # per block: BN + ReLU before its input conv and before each unit; BN + ReLU before the output
    "drrn_b2u2": ("drrn", {"blocks": 2, "units": 2, "features": 16}, ["BatchNorm2d", "BatchNorm not directly after"],
                  lambda o: o["blocks"] * (2 + 2 * o["units"]) + 2),
    # the port: only relu(x) and relu(H0) (H0 is read by every unit's add) are left
    "drrn_port": ("drrn", {"units": 3, "features": 16, "batchnorm": False, "bias": False}, ["F.relu"], lambda o: 2),
    # the weighted sum: D weight reads, D products, D - 1 sums; every conv fused with its ReLU / + x
    "drcn": ("drcn", {"recursions": 3, "features": 16}, ["getitem", "*"], lambda o: 3 * o["recursions"] - 1),
    # feature BN + ReLU; per block 2R (unit BN + ReLU) + cat + gate BN + ReLU; the reconstruction
    # BN + ReLU of every block but the last (whose gate output only it reads: folded into the
    # gate); the weighted sum 3M - 1
    "memnet": ("memnet", {"blocks": 2, "units": 2, "features": 8}, ["torch.cat", "BatchNorm not directly after"],
               lambda o: 2 + o["blocks"] * (2 * o["units"] + 3) + 2 * (o["blocks"] - 1) + 3 * o["blocks"] - 1),
    "memnet_single": ("memnet", {"blocks": 2, "units": 3, "features": 8, "multi_supervised": False}, ["torch.cat"],
                      lambda o: 2 + o["blocks"] * (2 * o["units"] + 3)),
}


def small(case):
    name, options, _, _ = CASES[case]
    return T.randomize_(redkern.create_model(name, **options)).eval()


def tolerance(m):
    return 1e-4 if any(isinstance(b, nn.BatchNorm2d) for b in m.modules()) else 1e-5


@pytest.mark.parametrize("case", sorted(CASES))
def test_module_equals_the_papers_equations(case):
    m = small(case)
    x = torch.randn(2, 1, 11, 9)
    with torch.no_grad():
        T.assert_close(m(x), EQUATIONS[CASES[case][0]](m, x), 1e-5)


def test_drrn_units_add_the_blocks_first_output_not_their_input():
    """The multi-path local residual (every unit adds H0) against the chain a ResNet would make
    (each unit adds its own input): different functions, so the equation test can tell."""
    m = small("drrn_b2u2")
    x = torch.randn(2, 1, 7, 5)
    blk = m.blocks[0]
    with torch.no_grad():
        h0 = blk.input(F.relu(blk.norm(x)))
        chain = h0
        for n1, n2 in zip(blk.norms1, blk.norms2):
            chain = blk.conv2(F.relu(n2(blk.conv1(F.relu(n1(chain)))))) + chain
        assert T.max_rel_error(chain, blk(x)) > 1e-3


# --- fused == module, on every backend here ------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_equals_the_module(case, backend):
    name, options, in_pytorch, left = CASES[case]
    slow = backend in SLOW_BACKENDS
    if slow:  # emulated CUDA: 8 maps, 7 x 5 images
        options = {**options, "features": 8}
    m = T.randomize_(redkern.create_model(name, **options)).eval()
    fused = redkern.fuse(m, backend=backend if backend != "cpu" else "auto")
    h, w = (7, 5) if slow else (11, 9)
    x = torch.randn(2, 1, h, w)
    with torch.no_grad():
        want = m(x).double()
        got = fused(x)
    T.assert_close(got, want, tolerance(m))
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    plan = fused.plan
    assert {id(s.conv) for s in plan.conv_steps} == {id(c) for c in convs}  # every conv is fused
    text = redkern.explain(fused)
    loud = [s for s in plan.torch_steps if s.reason not in ("input check", "a parameter or buffer read directly")]
    assert f"{len(plan.conv_steps)} fused convolutions, {len(loud)} operations left to PyTorch" in text
    assert len(loud) == left(options)
    assert not any(isinstance(s.target, nn.Conv2d) for s in plan.torch_steps)
    for what in in_pytorch:
        assert what in text
    if not slow:
        assert plan.receptive_field_radius() == radius(name, options)


def radius(name, o):
    """The longest path of 3x3 layers (the 1x1 gates add nothing)."""
    if name == "drrn":
        return o.get("blocks", 1) * (1 + 2 * o["units"]) + 1
    if name == "drcn":
        return 2 + o["recursions"] + 2
    return 1 + o["blocks"] * 2 * o["units"] + 1


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_round_trip_between_fused_and_reference(case):
    ref = small(case)
    fused = redkern.fuse(redkern.create_model(CASES[case][0], **CASES[case][1]).eval())
    x = torch.randn(2, 1, 9, 7)
    with torch.no_grad():
        before = fused(x)
        fused.load_state_dict(ref.state_dict())  # a fresh fused model takes the reference's weights
        got, want = fused(x), ref(x).double()
        assert T.max_rel_error(before, want) > 1e-3  # it did change something
        T.assert_close(got, want, tolerance(ref))
        assert list(fused.state_dict()) == list(ref.state_dict())
        back = redkern.create_model(CASES[case][0], **CASES[case][1]).eval()
        back.load_state_dict(fused.state_dict())  # and back
        T.assert_close(back(x), want, 1e-6)


def test_drrn_b1u9_default_width_fuses():
    """One full-width configuration (128 maps, 9 units) on a small image: BatchNorm folded into
    the shared convs at the paper's width."""
    m = T.randomize_(redkern.create_model("drrn_b1u9")).eval()
    fused = redkern.fuse(m)
    x = torch.randn(2, 1, 7, 5)
    with torch.no_grad():
        T.assert_close(fused(x), m(x).double(), 1e-4)
    assert len(fused.plan.conv_steps) == 20 and fused.plan.receptive_field_radius() == 20
