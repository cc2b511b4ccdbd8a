"""LapSRN, SRDenseNet, MDSR and SRN-DeblurNet: parameter counts derived by hand from the papers'
architectures, layer shapes, output sizes, ``redkern.fuse`` equal to the module on every backend
here (fresh random inputs, batch 2, odd sizes where the network allows), what the report says
stays in PyTorch, state_dict round trips, MDSR's scale branches and SRN's scale recurrence."""

import pytest
import torch
from torch import nn

import redkern
from redkern import testing as T
from redkern.backends import _load as load_backend
from redkern.backends.common import BackendUnavailable
from redkern.networks.edsr import EDSR
from redkern.networks.lapsrn import LapSRN, bilinear_kernel
from redkern.networks.mdsr import MDSR
from redkern.networks.srdensenet import SRDenseNet
from redkern.networks.srn_deblur import SRNDeblurNet

pytestmark = pytest.mark.usefixtures("poisoned_empty")

BACKENDS = T.backends_here()
SLOW_BACKENDS = {"triton", "cuda_emu"}


def n_params(m: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)


def conv(cin, cout, k, bias=True):
    """Parameters of one k x k convolution (or transposed convolution)."""
    return cin * cout * k * k + (cout if bias else 0)


# --- parameter counts, by hand ------------------------------------------------------------------

def test_lapsrn_parameter_count():
    # input conv 1 -> 64 3x3: 576 + 64 = 640
    # per level: 10 x (64*64*9 + 64) = 369,280; feature deconv 64*64*16 + 64 = 65,600;
    #   residual conv 64*9 + 1 = 577; image deconv 1*1*16, no bias = 16: 435,473
    # x2: 640 + 435,473 = 436,113; x4: 640 + 2 x 435,473 = 871,586; x8: 1,307,059
    level = 10 * conv(64, 64, 3) + conv(64, 64, 4) + conv(64, 1, 3) + conv(1, 1, 4, bias=False)
    assert level == 435_473
    for scale, levels, want in ((2, 1, 436_113), (4, 2, 871_586), (8, 3, 1_307_059)):
        assert conv(1, 64, 3) + levels * level == want
        assert n_params(redkern.create_model("lapsrn", scale=scale)) == want
    assert "871,586 parameters" in redkern.networks.lapsrn.lapsrn.__doc__


def test_srdensenet_parameter_count():
    # low level 1 -> 128 3x3: 1,152 + 128 = 1,280
    # dense layer j (0..7) of a block: (128 + 16 j) -> 16 3x3: sum_j (128 + 16 j) = 1,472 input maps,
    #   1,472 * 16 * 9 = 211,968 weights + 8 * 16 biases = 212,096 per block; 8 blocks 1,696,768
    # bottleneck (128 + 8 * 128 = 1,152) -> 256 1x1: 294,912 + 256 = 295,168
    # 2 deconvs 256 -> 256 3x3: 2 * (589,824 + 256) = 1,180,160; reconstruction 256 -> 1 3x3: 2,305
    # total 1,280 + 1,696,768 + 295,168 + 1,180,160 + 2,305 = 3,175,681
    block = sum(conv(128 + 16 * j, 16, 3) for j in range(8))
    assert block == 212_096
    total = conv(1, 128, 3) + 8 * block + conv(1152, 256, 1) + 2 * conv(256, 256, 3) + conv(256, 1, 3)
    assert total == 3_175_681 == n_params(redkern.create_model("srdensenet"))
    # the public port's 4x4 deconvolutions: 2 * 256 * 256 * (16 - 9) = 917,504 more
    assert n_params(redkern.create_model("srdensenet", deconv_kernel=4)) == total + 917_504 == 4_093_185


def test_mdsr_parameter_count():
    # head 3 -> 64 3x3: 1,792
    # per scale 2 ResBlocks of two 5x5 64 -> 64 convs: 4 * (102,400 + 64) = 409,856; 3 scales 1,229,568
    # body 80 ResBlocks of two 3x3 convs + one 3x3: 161 * 36,928 = 5,945,408
    # upsamplers: x2 64 -> 256 3x3 147,712; x3 64 -> 576 3x3 332,352; x4 2 x 147,712 = 295,424
    # tail 64 -> 3 3x3: 1,731; total 7,953,987 trainable (the paper's 8.0M), + 2 x 12 frozen mean shift
    pre = 3 * 4 * conv(64, 64, 5)
    body = 161 * conv(64, 64, 3)
    ups = conv(64, 256, 3) + conv(64, 576, 3) + 2 * conv(64, 256, 3)
    total = conv(3, 64, 3) + pre + body + ups + conv(64, 3, 3)
    assert (pre, body, ups, total) == (1_229_568, 5_945_408, 775_488, 7_953_987)
    m = redkern.create_model("mdsr")
    assert n_params(m, trainable=True) == total and n_params(m) == total + 24
    assert len(m.body) == 81 and m.scales == (2, 3, 4)


def test_srn_deblur_parameter_count():
    # ResBlock at c: two 5x5 c -> c convs. Per width, 3 encoder + 3 decoder blocks:
    #   32: 6 * 2 * 25,632 = 307,584; 64: 6 * 2 * 102,464 = 1,229,568; 128: 6 * 2 * 409,728 = 4,916,736
    # enc1_1 6 -> 32 5x5 4,832; enc2_1 32 -> 64 5x5 51,264; enc3_1 64 -> 128 5x5 204,928
    # ConvLSTM 3x3 (128 + 128) -> 4 * 128: 1,179,648 + 512 = 1,180,160
    # dec2_4 128 -> 64 4x4 131,136; dec1_4 64 -> 32 4x4 32,800; dec1_0 32 -> 3 5x5 2,403
    # total 8,061,411
    blocks = sum(6 * 2 * conv(c, c, 5) for c in (32, 64, 128))
    assert blocks == 307_584 + 1_229_568 + 4_916_736
    total = (blocks + conv(6, 32, 5) + conv(32, 64, 5) + conv(64, 128, 5) + conv(256, 512, 3)
             + conv(128, 64, 4) + conv(64, 32, 4) + conv(32, 3, 5))
    assert total == 8_061_411 == n_params(redkern.create_model("srn_deblur"))


# --- layers as the papers have them ---------------------------------------------------------------

def test_lapsrn_layers():
    m = redkern.create_model("lapsrn")
    assert m.scale == 4 and len(m.levels) == 2 and m.input_conv.in_channels == 1
    for level in m.levels:
        assert len(level.convs) == 10
        assert all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in level.convs)
        assert (level.upconv.kernel_size, level.upconv.stride, level.upconv.padding) == ((4, 4), (2, 2), (1, 1))
        assert level.img_up.bias is None and level.residual.out_channels == 1
        T.assert_close(level.img_up.weight[0, 0], bilinear_kernel(4).double(), 0)
    assert [len(redkern.create_model("lapsrn", scale=s).levels) for s in (2, 8)] == [1, 3]
    with pytest.raises(ValueError, match="2, 4 or 8"):
        LapSRN(scale=3)
    # the bilinear image upsampler keeps a constant image constant away from the border
    up = m.levels[0].img_up
    with torch.no_grad():
        y = up(torch.full((1, 1, 5, 7), 0.7))
    T.assert_close(y[..., 1:-1, 1:-1], torch.full((1, 1, 8, 12), 0.7, dtype=torch.float64), 1e-6)


def test_srdensenet_layers():
    m = redkern.create_model("srdensenet")
    assert m.lowlevel.out_channels == 128 and len(m.blocks) == 8
    for block in m.blocks:
        assert [c.in_channels for c in block.convs] == [128 + 16 * j for j in range(8)]
        assert all(c.out_channels == 16 and c.kernel_size == (3, 3) for c in block.convs)
    assert (m.bottleneck.in_channels, m.bottleneck.out_channels, m.bottleneck.kernel_size) == (1152, 256, (1, 1))
    assert len(m.deconvs) == 2
    assert all((d.kernel_size, d.stride, d.out_channels) == ((3, 3), (2, 2), 256) for d in m.deconvs)
    assert (m.reconstruction.in_channels, m.reconstruction.out_channels) == (256, 1)


def test_srn_deblur_layers():
    m = redkern.create_model("srn_deblur")
    convs = {n: c for n, c in m.named_modules() if isinstance(c, nn.modules.conv._ConvNd)}
    strided = sorted(n for n, c in convs.items() if c.stride != (1, 1))
    assert strided == ["dec1_4", "dec2_4", "enc2_1", "enc3_1"]
    assert all(isinstance(convs[n], nn.ConvTranspose2d) and convs[n].kernel_size == (4, 4) for n in ("dec1_4", "dec2_4"))
    assert (m.enc1_1.in_channels, m.enc2_1.out_channels, m.enc3_1.out_channels) == (6, 64, 128)
    assert all(c.kernel_size == (5, 5) for n, c in convs.items() if n not in ("dec1_4", "dec2_4", "convlstm.conv"))
    assert sum(isinstance(b, redkern.networks.srn_deblur.ResBlock) for b in m.modules()) == 18
    lstm = m.convlstm.conv
    assert (lstm.in_channels, lstm.out_channels, lstm.kernel_size) == (256, 512, (3, 3))


def test_mdsr_keys_are_the_authors():
    m = MDSR(n_blocks=2, features=8)
    keys = list(m.state_dict())
    assert keys[:4] == ["sub_mean.weight", "sub_mean.bias", "head.0.weight", "head.0.bias"]
    assert {"pre_process.0.0.body.0.weight", "pre_process.2.1.body.2.bias", "body.0.body.0.weight",
            "body.1.body.2.weight", "body.2.weight", "upsample.0.0.weight", "upsample.1.0.weight",
            "upsample.2.2.weight", "tail.0.weight", "add_mean.bias"} <= set(keys)
    assert m.pre_process[0][0].body[0].kernel_size == (5, 5)
    assert m.upsample[1][0].out_channels == 9 * 8  # x3: one conv to 9 x features, pixel shuffle 3
    assert not any(p.requires_grad for p in m.add_mean.parameters())


# --- output sizes ----------------------------------------------------------------------------------

def test_output_sizes():
    x = torch.randn(1, 1, 5, 7)
    with torch.no_grad():
        for s in (2, 4, 8):
            assert redkern.create_model("lapsrn", scale=s, depth=1, features=4)(x).shape == (1, 1, 5 * s, 7 * s)
            assert redkern.create_model("srdensenet", scale=s, blocks=1, layers=2, growth=2,
                                        bottleneck=4)(x).shape == (1, 1, 5 * s, 7 * s)
        levels = LapSRN(scale=8, depth=1, features=4, return_all_levels=True)(x)
        assert [tuple(y.shape[-2:]) for y in levels] == [(10, 14), (20, 28), (40, 56)]
        m = MDSR(n_blocks=1, features=4)
        for s in (2, 3, 4):
            m.set_scale(s)
            assert m(torch.randn(1, 3, 5, 7)).shape == (1, 3, 5 * s, 7 * s)
        srn = SRNDeblurNet(features=4, return_all_scales=True)
        outs = srn(torch.randn(2, 3, 32, 48))
        assert [tuple(y.shape) for y in outs] == [(2, 3, 8, 12), (2, 3, 16, 24), (2, 3, 32, 48)]


@pytest.mark.parametrize("fused", [False, True])
def test_srn_deblur_refuses_sizes_its_scales_cannot_take(fused):
    m = SRNDeblurNet(features=4).eval()
    m = redkern.fuse(m) if fused else m
    assert m.size_multiple == 16 and SRNDeblurNet(levels=2).size_multiple == 8
    for h, w in ((17, 32), (32, 40), (8, 16)):
        with pytest.raises(ValueError, match=rf"multiples of 16.*got {h}x{w}"), torch.no_grad():
            m(torch.randn(1, 3, h, w))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        m(torch.randn(1, 1, 16, 16))


# --- fused equals the module, on every backend here ---------------------------------------------

# name -> (small module, input channels, (h, w) on fast / slow backends, what the report says stays in PyTorch)
SMALL = {
    "lapsrn": (lambda: LapSRN(scale=4, depth=2, features=8), 1, ((13, 11), (5, 7)),
               ["PyTorch: stride (2, 2)", "leaky_relu(conv + b, 0.2)"]),
    "lapsrn_x8": (lambda: LapSRN(scale=8, depth=1, features=6, return_all_levels=True), 1, ((7, 9), (3, 5)),
                  ["PyTorch: stride (2, 2)"]),
    "srdensenet": (lambda: SRDenseNet(blocks=3, layers=3, growth=4, bottleneck=8), 1, ((13, 11), (5, 7)),
                   ["torch.cat", "ConvTranspose2d", "PyTorch: stride (2, 2)"]),
    "srdensenet_port": (lambda: SRDenseNet(blocks=2, layers=2, growth=3, bottleneck=5, deconv_kernel=4), 1,
                        ((9, 11), (5, 3)), ["torch.cat", "PyTorch: stride (2, 2)"]),
    "mdsr_x3": (lambda: MDSR(n_blocks=2, features=8, scale=3), 3, ((13, 11), (5, 7)),
                ["pixel rearrangement"]),
    "mdsr_x4": (lambda: MDSR(n_blocks=1, features=6, scale=4), 3, ((9, 13), (3, 5)), ["pixel rearrangement"]),
    "srn_deblur": (lambda: SRNDeblurNet(features=4), 3, ((32, 48), (16, 16)),
                   ["PyTorch: stride (2, 2)", "torch.cat", "F.interpolate", "torch.sigmoid", "torch.tanh"]),
    "srn_deblur_2": (lambda: SRNDeblurNet(levels=2, features=3, lstm_kernel=5), 3, ((24, 40), (8, 8)),
                     ["PyTorch: stride (2, 2)", "torch.sigmoid"]),
}


def refused_layers(backend: str, fused: nn.Module) -> list[str]:
    """The fused layers ``backend`` cannot run (the CUDA C++ kernels are 3x3 and 1x1 only)."""
    mod = load_backend(backend)
    names = []
    for s in fused.plan.conv_steps:
        try:
            mod.algorithm(s.in_channels, s.out_channels, s.kernel, s.padding, s.transposed, torch.float32)
        except BackendUnavailable:
            names.append(s.name)
    return names


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_fused_equals_the_module(name, backend):
    make, channels, sizes, in_pytorch = SMALL[name]
    m = T.randomize_(make()).eval()
    fused = redkern.fuse(m, backend=backend)
    h, w = sizes[backend in SLOW_BACKENDS]
    x = torch.randn(2, channels, h, w)
    refused = refused_layers(backend, fused)
    if refused:  # a named backend that cannot run a layer (a 5x5 one) says which, and runs nothing
        assert backend != "cpu" and all(s.kernel not in ((1, 1), (3, 3)) for s in fused.plan.conv_steps
                                        if s.name in refused)
        with pytest.raises(BackendUnavailable, match=rf"^{refused[0]} \("), torch.no_grad():
            fused(x)
        return
    _, calls = T.conv_calls(m, x)
    with torch.no_grad():
        got = fused(x)
    T.assert_like_pytorch(got, m, x, 1e-5)  # none of these networks has BatchNorm
    # every stride-1 convolution call is one fused step; the strided ones stay in PyTorch
    stride1 = [c for c in calls if c.stride == (1, 1)]
    assert [s.conv for s in fused.plan.conv_steps] == stride1
    assert list(fused.state_dict()) == list(m.state_dict())
    text = redkern.explain(fused)
    assert f"{len(stride1)} fused convolutions" in text
    assert text.count("PyTorch: stride (2, 2)") == len(calls) - len(stride1)  # one row per strided call
    for what in in_pytorch:
        assert what in text


def test_srn_deblur_shares_its_weights_across_scales():
    m = T.randomize_(SRNDeblurNet(features=4)).eval()
    _, calls = T.conv_calls(m, torch.randn(1, 3, 16, 32))
    convs = [c for c in m.modules() if isinstance(c, nn.modules.conv._ConvNd)]
    assert len(calls) == 3 * len(convs)  # the whole encoder-decoder once per scale
    assert all(calls.count(c) == 3 for c in convs)
    assert sum(c.stride == (1, 1) for c in convs) == 39  # 1 + 18 + 1 (ConvLSTM) + 18 + 1 per scale


def test_srn_deblur_runs_coarse_to_fine_with_the_lstm_state():
    m = T.randomize_(SRNDeblurNet(levels=2, features=4)).eval()
    x = torch.randn(2, 3, 16, 24)
    resize = redkern.networks.srn_deblur._resize
    with torch.no_grad():
        coarse, (c, h) = m.scale_step(resize(x, 0.5), resize(x, 0.5), None)
        fine, _ = m.scale_step(x, resize(coarse, 2.0), (resize(c, 2.0), resize(h, 2.0)))
        fine_no_state, _ = m.scale_step(x, resize(coarse, 2.0), None)
        got = SRNDeblurNet.forward(m, x)
    T.assert_close(got, fine.double(), 1e-6)
    assert T.max_rel_error(fine_no_state, fine) > 1e-5  # the carried state matters (0 if it were dropped)


# --- state dicts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lapsrn", "srdensenet", "mdsr_x3", "srn_deblur_2"])
def test_state_dict_round_trip(name):
    make, channels, sizes, _ = SMALL[name]
    a, b = T.randomize_(make()).eval(), make().eval()
    x = torch.randn(2, channels, *sizes[0])
    with torch.no_grad():
        assert T.max_rel_error(as_list(b(x))[-1], as_list(a(x))[-1]) > 1e-3  # different weights first
    b.load_state_dict(a.state_dict())
    fused = redkern.fuse(make().eval())
    fused.load_state_dict(a.state_dict())  # a fused model loads the reference's state_dict
    with torch.no_grad():
        want = as_list(a(x))
        for g in (as_list(b(x)), as_list(fused(x))):
            for gi, wi in zip(g, want):
                T.assert_close(gi, wi.double(), 1e-5)


# --- MDSR's scales ----------------------------------------------------------------------------------

def test_mdsr_without_pre_processing_is_edsr_with_the_scales_upsampler():
    # MDSR = EDSR plus per-scale branches: with no pre-processing blocks, scale s runs EDSR x s
    m = T.randomize_(MDSR(n_blocks=2, features=8, pre_blocks=0)).eval()
    x = torch.rand(2, 3, 7, 5)
    for i, s in enumerate(m.scales):
        edsr = EDSR(scale=s, n_blocks=2, features=8).eval()
        state = {}
        for k, v in m.state_dict().items():
            if k.startswith("upsample."):
                if k.startswith(f"upsample.{i}."):
                    state["tail.0." + k.split(".", 2)[2]] = v
            elif k.startswith("tail.0."):
                state["tail.1." + k[len("tail.0."):]] = v
            else:
                state[k] = v
        edsr.load_state_dict(state)
        m.set_scale(s)
        with torch.no_grad():
            T.assert_close(m(x), edsr(x).double(), 1e-6)


def test_mdsr_runs_only_the_selected_scales_branches():
    m = T.randomize_(MDSR(n_blocks=1, features=6)).eval()
    x = torch.randn(1, 3, 5, 7)
    for i, s in enumerate(m.scales):
        m.set_scale(s)
        assert m.scale == s and m.scale_idx == i
        _, calls = T.conv_calls(m, x)
        ran = set(map(id, calls))
        for j in range(len(m.scales)):
            branch = [c for c in (*m.pre_process[j].modules(), *m.upsample[j].modules()) if isinstance(c, nn.Conv2d)]
            assert all((id(c) in ran) == (j == i) for c in branch)
        shared = [c for c in (*m.head.modules(), *m.body.modules(), *m.tail.modules()) if isinstance(c, nn.Conv2d)]
        assert all(id(c) in ran for c in shared)
    with pytest.raises(ValueError, match=r"scales \(2, 3, 4\), got 8"):
        m.set_scale(8)
    assert MDSR(n_blocks=1, features=4, scale=4).scale == 4


def test_fused_mdsr_follows_set_scale():
    m = T.randomize_(MDSR(n_blocks=1, features=6, scale=2)).eval()
    fused = redkern.fuse(m)
    x = torch.randn(2, 3, 7, 5)
    for s in (3, 4, 2):
        m.set_scale(s)
        fused.set_scale(s)  # drops the plan traced for the previous scale
        with torch.no_grad():
            got = fused(x)
            want = m(x)
        assert got.shape == (2, 3, 7 * s, 5 * s)
        T.assert_close(got, want.double(), 1e-5)
        assert any(st.name.startswith(f"upsample.{m.scales.index(s)}.") for st in fused.plan.conv_steps)
