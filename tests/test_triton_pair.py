"""The two-layer Triton kernel (kernels/conv2d_pair.py) and the plan's pairing, against the reference.

As in test_triton_interpreter.py: the root conftest.py sets TRITON_INTERPRET=1 before triton
is imported on machines without a GPU, so the kernel code runs through numpy here and natively
on a GPU machine; ``test_pair_kernel_compiles_for_gpus`` compiles it to sm_80/sm_90 machine code
(``tl.gather`` included) on any machine.

The reference of a pair is the float64 reference of each layer (``redkern.testing``), the first
layer's output rounded to the activations' dtype as the kernel rounds its on-chip tile (as a
stored map would be). Every output is NaN-poisoned before the call, so an element the kernel
fails to write (a tile border, the last partial tile) fails the check. Images are small and
odd-sized, spanning several tiles of the grid shapes used.
"""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import redkern
from redkern import testing as T
from redkern.backends.common import BackendUnavailable

tb, DEVICE = T.triton_or_skip()  # skips the module without a Triton backend

from redkern import executor  # noqa: E402
from redkern.kernels.configs import PairTile  # noqa: E402

INTERPRETED = tb._kernels.INTERPRETED
FP32, FP16 = torch.float32, torch.float16
NAMES = list(T.EPILOGUES)
# Grid shapes: the interpreter's default (6x14 output tiles), the smallest (2x2 tiles, 16 rows),
# a tall and a square one.
TILES = [None, PairTile(4, 4, 64, 4, 1), PairTile(16, 4, 32, 4, 1), PairTile(8, 8, 16, 4, 1)]


@dataclasses.dataclass
class Pair:
    first: T.LayerCase
    second: T.LayerCase

    @property
    def x(self):
        return self.first.x

    def specs(self) -> tuple[dict, dict]:
        return tuple(dict(zip(("weight", "bias", "extra"), c.tensors[1:]), **c.options)
                     for c in (self.first, self.second))

    def reference(self) -> torch.Tensor:
        mid = T.reference(self.first).to(self.x.dtype)  # rounded as the kernel's on-chip tile
        return T.reference(dataclasses.replace(self.second, x=mid.to(self.x.device)))


def pair(n=2, cin=5, cmid=7, cout=6, h=9, w=13, *, epilogues=("relu", "relu"), transposed=(False, False),
         dtype=FP32) -> Pair:
    a = T.layer_case(n, cin, cmid, h, w, kernel=3, transposed=transposed[0], epilogue=epilogues[0],
                     dtype=dtype, device=DEVICE)
    b = T.layer_case(n, cmid, cout, h, w, kernel=3, transposed=transposed[1], epilogue=epilogues[1],
                     dtype=dtype, device=DEVICE)
    return Pair(a, b)


def run(p: Pair, tile=None, tol=None) -> torch.Tensor:
    """``p`` through the backend's pair kernel into a NaN-poisoned NHWC output, checked."""
    out = T.poisoned_nhwc(p.second.out_shape, p.x.dtype, DEVICE)
    if tile is None:
        y = tb.conv2d_pair(p.x, *p.specs(), out=out)
    else:  # the kernel's own launcher, with a grid shape of the test's choosing
        y = tb._pair_kernels.conv3x3_pair_nhwc(tb.to_nhwc(p.x), *_layers(p), out=out, tile=tile)
    assert y is out and y.stride(1) == 1
    T.assert_close(y, p.reference(), tol or 2 * T.TOLERANCE[p.x.dtype])
    return y


def _layers(p: Pair):
    layers = []
    for spec in p.specs():
        _, _, w, b = tb._prepared_layer(p.x, spec["weight"].shape[0 if spec["transposed"] else 1], spec["weight"],
                                        spec["bias"], transposed=spec["transposed"], padding=spec["padding"],
                                        epilogue=spec["epilogue"])
        extra = tb.to_nhwc(spec["extra"]) if spec["extra"] is not None else None
        layers.append(tb._pair_kernels.PairLayer(w, b, extra, spec["epilogue"], spec["slopes"], spec["slopes2"]))
    return layers


# --- the kernel ---------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(len(NAMES)), ids=NAMES)
def test_every_epilogue_on_both_layers(k):
    """Each epilogue as the first layer's and as the second's (its partner another epilogue),
    conv and deconv, fp32 and fp16 in turn."""
    dtype = FP16 if k % 2 else FP32
    for epilogues, transposed in (((NAMES[k], NAMES[(k + 5) % len(NAMES)]), (k % 3 == 0, True)),
                                  ((NAMES[(k + 7) % len(NAMES)], NAMES[k]), (True, k % 3 == 1))):
        run(pair(2, 5, 7, 6, 9, 13, epilogues=epilogues, transposed=transposed, dtype=dtype))


@pytest.mark.parametrize("tile", TILES, ids=lambda t: "default" if t is None else f"{t.grid_h}x{t.grid_w}")
@pytest.mark.parametrize("n,h,w", [(1, 1, 1), (2, 1, 9), (1, 7, 1), (2, 11, 17), (1, 6, 14)])
def test_tiles_and_odd_sizes(n, h, w, tile):
    """Images smaller than a tile, one pixel high or wide, and spanning several tiles with a
    partial last one, for each grid shape: every pixel written once, right."""
    run(pair(n, 3, 16, 5, h, w, epilogues=("prelu_then_leaky", "relu_add_relu"), transposed=(True, False)), tile)


@pytest.mark.parametrize("cin,cmid,cout", [(1, 64, 64), (64, 64, 1), (70, 16, 3), (2, 128, 17), (64, 5, 128)],
                         ids=lambda v: str(v))
def test_channel_counts(cin, cmid, cout):
    """RED's end layers (1 -> 64, 64 -> 1), Cin past one reduction block, mid and out channels
    up to the limit of 128, counts off every block size."""
    run(pair(1, cin, cmid, cout, 7, 9, epilogues=("relu", "add_residual"), transposed=(False, True)))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 2), cin=st.sampled_from([1, 3, 16, 20]), cmid=st.sampled_from([1, 4, 16, 33]),
       cout=st.sampled_from([1, 2, 16, 19]), h=st.integers(1, 13), w=st.integers(1, 13),
       e1=st.sampled_from(NAMES), e2=st.sampled_from(NAMES), t1=st.booleans(), t2=st.booleans(),
       fp16=st.booleans(), tile=st.sampled_from(TILES))
def test_pair_any_shape(n, cin, cmid, cout, h, w, e1, e2, t1, t2, fp16, tile):
    run(pair(n, cin, cmid, cout, h, w, epilogues=(e1, e2), transposed=(t1, t2), dtype=FP16 if fp16 else FP32), tile)


def test_matches_two_single_layer_launches():
    """The pair equals conv2d run twice (its stored map in between) within one rounding."""
    p = pair(2, 8, 16, 8, 10, 15, epilogues=("tanh_then_prelu", "scaled_residual"), dtype=FP16)
    y = run(p)
    a, b = p.specs()
    mid = tb.conv2d(p.x, a.pop("weight"), a.pop("bias"), a.pop("extra"), **a)
    twice = tb.conv2d(mid, b.pop("weight"), b.pop("bias"), b.pop("extra"), **b)
    T.assert_close(y, twice.double(), 2 * T.TOLERANCE[FP16])


@pytest.mark.parametrize("dtype", [FP32, FP16], ids=["fp32", "fp16"])
def test_nan_propagates_as_two_layers_would(dtype):
    """A NaN in x, and one in the first layer's extra, reach exactly the outputs the reference's
    two layers make NaN (never the whole tile through masked channels or the halo)."""
    p = pair(1, 3, 5, 4, 9, 16, epilogues=("relu_add_relu", "leaky_relu"), dtype=dtype)
    p.first.x[0, 1, 2, 3] = float("nan")
    p.first.extra[0, 4, 7, 12] = float("nan")
    out = T.poisoned_nhwc(p.second.out_shape, dtype, DEVICE)
    y = tb.conv2d_pair(p.x, *p.specs(), out=out).cpu()
    want = p.reference()
    nan = want.isnan()
    assert nan.any() and not nan.all()
    assert torch.equal(y.isnan(), nan), "NaN where the reference has none, or a NaN lost"
    T.assert_close(torch.where(nan, 0, y.double()), torch.where(nan, 0, want), 2 * T.TOLERANCE[dtype])


def test_layouts_and_allocated_output():
    """x and extras in NCHW (converted), the output allocated dense NHWC when not given."""
    p = pair(2, 4, 6, 3, 5, 8, epilogues=("relu", "relu_add_relu"), transposed=(True, True))
    y = tb.conv2d_pair(p.x.contiguous(), *p.specs())
    assert y.stride(1) == 1 and tuple(y.shape) == p.second.out_shape
    T.assert_close(y, p.reference(), 2 * T.TOLERANCE[FP32])


def test_rejects_bad_arguments():
    p = pair(1, 4, 6, 5, 5, 5, epilogues=("prelu", "add_residual"))
    a, b = p.specs()

    def call(first=None, second=None, **kw):
        return tb.conv2d_pair(kw.pop("x", p.x), {**a, **(first or {})}, {**b, **(second or {})}, **kw)

    call()
    with pytest.raises(ValueError, match="the second layer's input has 6 channels"):
        call(second={"weight": torch.randn(5, 7, 3, 3, device=DEVICE)})
    with pytest.raises(ValueError, match="the first layer's window is 5x5 .* 3x3 layers with padding 1"):
        call(first={"weight": torch.randn(6, 4, 5, 5, device=DEVICE), "padding": (2, 2)})
    with pytest.raises(ValueError, match="the second layer's window is 3x3 with padding \\(0, 0\\)"):
        call(second={"padding": (0, 0)})
    with pytest.raises(ValueError, match="the second layer's extra must be a dense NHWC"):
        call(second={"extra": torch.randn(1, 5, 4, 5, device=DEVICE)})
    with pytest.raises(ValueError, match="the second layer's the epilogue .* needs an extra"):
        call(second={"extra": None})
    with pytest.raises(ValueError, match="the first layer's slopes: the epilogue's PRELU needs"):
        call(first={"slopes": None})
    with pytest.raises(TypeError, match="the first layer's epilogue must be a redkern.epilogue.Epilogue"):
        call(first={"epilogue": 1})
    with pytest.raises(ValueError, match="the first layer's weight is torch.float16"):
        call(first={"weight": a["weight"].half()})
    with pytest.raises(ValueError, match="the second layer's 129 output channels: the pair kernel takes 1..128"):
        call(second={"weight": torch.randn(129, 6, 3, 3, device=DEVICE), "bias": torch.zeros(129, device=DEVICE),
                     "extra": torch.randn(1, 129, 5, 5, device=DEVICE)})
    extra = tb.to_nhwc(b["extra"])
    with pytest.raises(ValueError, match="overlap"):
        call(second={"extra": extra}, out=extra)
    with pytest.raises(ValueError, match="out must be a dense NHWC"):
        call(out=torch.empty(1, 5, 5, 5, device=DEVICE))
    with pytest.raises(TypeError, match="float64"):
        call(x=p.x.double())


def test_pair_algorithm_labels_and_limits():
    ok = (64, 64, (3, 3), (1, 1), False)
    assert "pair" in tb.pair_algorithm(ok, (64, 1, (3, 3), (1, 1), True), FP32)
    with pytest.raises(BackendUnavailable, match="conv 5x5 with padding \\(2, 2\\); pairs are of 3x3"):
        tb.pair_algorithm(ok, (64, 64, (5, 5), (2, 2), False), FP32)
    with pytest.raises(BackendUnavailable, match="deconv 3x3 with padding \\(0, 0\\)"):
        tb.pair_algorithm((3, 64, (3, 3), (0, 0), True), ok, FP16)
    with pytest.raises(BackendUnavailable, match="256 output channels; pairs keep at most 128"):
        tb.pair_algorithm((3, 256, (3, 3), (1, 1), False), (256, 3, (3, 3), (1, 1), False), FP32)
    with pytest.raises(BackendUnavailable, match="64 outputs are not the second's 32 inputs"):
        tb.pair_algorithm(ok, (32, 64, (3, 3), (1, 1), False), FP32)
    with pytest.raises(BackendUnavailable, match="float64"):
        tb.pair_algorithm(ok, ok, torch.float64)


@pytest.mark.skipif(INTERPRETED, reason="bfloat16: Triton's interpreter cannot do bf16 arithmetic; bf16 pairs "
                                        "run on a GPU only")
@pytest.mark.parametrize("epilogues", [("relu", "relu_add_relu"), ("prelu_then_leaky", "add_residual")])
def test_bf16_pair_matches_reference(epilogues):
    run(pair(2, 64, 64, 64, 37, 29, epilogues=epilogues, transposed=(True, True), dtype=torch.bfloat16),
        tol=2 * T.TOLERANCE[torch.bfloat16])


# --- the plan pairs layers, the executor runs the pairs --------------------------------------------

def _pair_calls(monkeypatch) -> list:
    calls = []
    real = tb.conv2d_pair
    monkeypatch.setattr(tb, "conv2d_pair", lambda x, a, b, **kw: calls.append(x.shape) or real(x, a, b, **kw))
    return calls


def test_red30_runs_as_fifteen_pairs(monkeypatch):
    """Every RED30 layer in a pair (the odd-even encoder layers, conv_15 with deconv_1, then the
    decoder's), skips and the global residual fused into them; the report names each pair."""
    calls = _pair_calls(monkeypatch)
    ref = redkern.RED30(features=16).to(DEVICE)
    fused = redkern.RED30(features=16, fused=True, backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    pairs = fused._redkern_runtime_state().layers.pairs_for(DEVICE, FP32)
    names = [s.name for s in fused.plan.steps]
    assert [(names[i], names[i + 1]) for i in pairs.first] == (
        [(f"conv_{i}", f"conv_{i + 1}") for i in range(1, 14, 2)] + [("conv_15", "deconv_1")]
        + [(f"deconv_{j}", f"deconv_{j + 1}") for j in range(2, 15, 2)])
    assert pairs.why_not == {}
    x = torch.rand(1, 1, 9, 11, device=DEVICE)
    with torch.no_grad():
        y, r = fused(x), ref.double()(x.double())
    assert len(calls) == 15
    T.assert_close(y - x, r - x.double(), 1e-5)  # the residual alone, so x cannot hide an error
    text = redkern.explain(fused)
    assert text.count("paired with") == 15 and "paired with deconv_1" in text and "in conv_15's launch" in text


def test_switching_pairing_off_runs_one_layer_per_launch(monkeypatch):
    calls = _pair_calls(monkeypatch)
    ref = redkern.RED10(features=8).to(DEVICE)
    fused = redkern.RED10(features=8, fused=True, backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.rand(2, 1, 7, 10, device=DEVICE)
    with torch.no_grad():
        paired = fused(x)
        assert len(calls) == 5 and fused.pair_layers
        fused.pair_layers = False
        single = fused(x)
    assert len(calls) == 5
    assert "not paired: pairing is off" in redkern.explain(fused)
    T.assert_close(paired - x, single.double() - x.double(), 2e-6)
    monkeypatch.setenv(executor.PAIR_LAYERS_ENV, "0")
    assert not redkern.RED10(features=8, fused=True, backend="triton").pair_layers


@pytest.mark.parametrize("name", ["every_epilogue", "edsr_like", "dncnn_like", "srresnet_like", "wide_1x1_128"])
def test_fused_networks_pair_what_they_can(name, monkeypatch):
    """Networks of any shape through redkern.fuse: the pairs run, every other Triton layer is
    named with the reason it runs alone, and the result is the module's."""
    calls = _pair_calls(monkeypatch)
    model = T.randomize_(T.FUSE_MODULES[name]()).eval().to(DEVICE)
    fast = redkern.fuse(model, backend="triton")
    x = torch.randn(1, model.c0.in_channels if name == "every_epilogue" else
                    next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels, 7, 9,
                    device=DEVICE)
    with torch.no_grad():
        y = fast(x)
    T.assert_like_pytorch(y, model, x, 1e-5)
    pairs = fast._redkern_runtime_state().layers.pairs_for(DEVICE, FP32)
    assert len(calls) == len(pairs.first)
    text = redkern.explain(fast)
    assert text.count("paired with") == len(pairs.first)
    assert text.count("not paired: ") == len(pairs.why_not)
    expected = {"every_epilogue": 1, "edsr_like": 3, "dncnn_like": 2, "srresnet_like": 3, "wide_1x1_128": 0}
    assert len(pairs.first) == expected[name], text


def test_a_batchnorm_switched_to_training_unpairs_its_layers(monkeypatch):
    """Pairs fold eval-mode BatchNorms; after .train() those layers run their modules again."""
    calls = _pair_calls(monkeypatch)
    model = T.randomize_(T.FUSE_MODULES["dncnn_like"]()).eval().to(DEVICE)
    fast = redkern.fuse(model, backend="triton")
    x = torch.randn(1, 1, 6, 9, device=DEVICE)
    with torch.no_grad():
        fast(x)
    assert len(calls) == 2
    model.train()
    pairs = fast._redkern_runtime_state().layers.pairs_for(DEVICE, FP32)
    assert pairs.first == {} and "BatchNorm is in training mode" in pairs.why_not[0]
    with torch.no_grad():
        fast(x)
    assert len(calls) == 2


def test_what_stops_a_pair_is_named():
    """Plan.pair_problem: a map read again later, a map the next layer also adds, a step in
    PyTorch between, a 5x5 layer, the last layer."""
    model = T.EveryEpilogue()
    plan = redkern.plan(model)
    steps = {s.name: i for i, s in enumerate(plan.steps)}
    assert "c0 is also read by c2" in plan.pair_problem(steps["c0"])
    assert plan.pair_problem(steps["c5"]) is None
    assert plan.pair_problem(steps["c7"]) == "the last step"
    pairs = executor.LayerBackends(plan, "triton").pairs_for(DEVICE, FP32)
    assert "deconv 5x5 with padding (2, 2); pairs are of 3x3 layers with padding 1" in pairs.why_not[steps["c4"]]
    edsr = redkern.plan(T.FUSE_MODULES["edsr_like"]())
    up = next(i for i, s in enumerate(edsr.steps) if s.name == "up")
    assert edsr.pair_problem(up) == "the next step (shuffle) runs in PyTorch"

    class AddsItsInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h

    p = redkern.plan(AddsItsInput())
    assert "also read by b (as its extra)" in p.pair_problem(0)


# --- machine code, without a GPU ----------------------------------------------------------------

_COMPILE = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from redkern.kernels import conv2d_pair as k
    from redkern.kernels.configs import PAIR_GPU_TILES
    from redkern.epilogue import Act, Residual

    fn = k._conv3x3_pair_kernel
    assert not k.INTERPRETED
    SLOPED = (Act.LEAKY_RELU, Act.PRELU)

    def compile_for(cc, dtype, cin, cmid, cout, first, second, tile, wide=False):
        tile, taps_per_step = k.fit_pair_tile(tile, cin, cmid)
        p, none = "*" + dtype, "constexpr"
        sig = {}
        for n, (act, residual, act2) in (("1", first), ("2", second)):
            sig.update({f"w{n}_ptr": p, f"bias{n}_ptr": "*fp32", f"extra{n}_ptr": p if residual else none,
                        f"slope{n}_ptr": "*fp32" if act in SLOPED else none,
                        f"slope{n}b_ptr": "*fp32" if act2 in SLOPED else none})
        sig = dict(x_ptr=p, **{n: sig[n] for n in ("w1_ptr", "bias1_ptr", "extra1_ptr", "slope1_ptr", "slope1b_ptr",
                                                   "w2_ptr", "bias2_ptr", "extra2_ptr", "slope2_ptr", "slope2b_ptr")},
                   out_ptr=p, alpha1="fp32", beta1="fp32", alpha2="fp32", beta2="fp32", H="i32", W="i32")
        const = {n: None for n, t in sig.items() if t == none}
        const.update(CIN=cin, CMID=cmid, COUT=cout, ACT1=int(first[0]), RESIDUAL1=int(first[1]), ACT1B=int(first[2]),
                     ACT2=int(second[0]), RESIDUAL2=int(second[1]), ACT2B=int(second[2]), INPUT_PRECISION="ieee",
                     WIDE_INDEX=wide, CMID_P=k._padded(cmid), COUT_P=k._padded(cout), **k._meta(tile, taps_per_step))
        sig.update({n: "constexpr" for n in const})
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(n),): v for n, v in const.items()})
        binary = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                options=dict(num_warps=tile.num_warps, num_stages=tile.num_stages))
        assert binary.asm["cubin"], "no machine code"

    A, R, T = Act, Residual, PAIR_GPU_TILES
    RELU, SKIP = (A.RELU, R.NONE, A.IDENTITY), (A.RELU, R.AFTER_ACT, A.RELU)
    compile_for(90, "fp16", 64, 64, 64, RELU, SKIP, T[0])                                  # RED's decoder pair
    compile_for(90, "bf16", 64, 64, 1, SKIP, (A.IDENTITY, R.BEFORE_ACT, A.IDENTITY), T[2])  # RED's last pair
    compile_for(80, "fp32", 1, 16, 5, (A.PRELU, R.NONE, A.IDENTITY), (A.TANH, R.AFTER_ACT, A.LEAKY_RELU), T[4])
    compile_for(90, "fp16", 64, 64, 64, RELU, RELU, T[1], wide=True)                       # 64-bit offsets
    print("compiled")
""")


def test_pair_kernel_compiles_for_gpus(compile_offline):
    """Triton compiles the pair kernel (tl.gather and all) to sm_90/sm_80 cubins on any machine."""
    compile_offline(_COMPILE)
