"""The network zoo: every registered model's parameter count, its default build running, and
``redkern.fuse`` of a small configuration equal to the module (CPU fp32, batch 2, odd sizes)."""

import collections

import pytest
import torch
from torch import nn

import redkern
from redkern import testing as T

pytestmark = pytest.mark.usefixtures("poisoned_empty")

# name -> parameters of create_model(name) (all of them, frozen mean shifts included), and the
# trainable ones where the paper's/docstring's number counts those
PARAMS = {
    "vdsr": 665_921, "dncnn_s": 556_096, "dncnn_b": 667_072, "srcnn": 8_129, "srcnn_955": 57_281,
    "espcn": 22_729, "fsrcnn": 12_809, "edsr_baseline": 1_369_883, "edsr": 40_729_627,
    "srresnet": 1_549_462, "msrresnet": 1_517_571, "red10": 296_641, "red20": 665_921, "red30": 1_035_201,
    "drrn": 310_659, "drrn_b1u9": 302_467,
    "drcn": 1_775_121,
    "memnet": 695_497,
    "lapsrn": 871_586,
    "srdensenet": 3_175_681,
    "mdsr": 7_954_011,
    "srn_deblur": 8_061_411,
}
TRAINABLE = {"edsr_baseline": 1_369_859, "edsr": 40_729_603,
             "mdsr": 7_953_987,
             }

# name -> (small options, input channels, output size from (h, w), what stays in PyTorch)
SMALL = {
    "vdsr": (dict(depth=5, features=16), 1, lambda h, w: (h, w), []),
    "dncnn_s": (dict(depth=5, features=16), 1, lambda h, w: (h, w), []),
    "dncnn_b": (dict(depth=6, features=16), 1, lambda h, w: (h, w), []),
    "srcnn": (dict(n1=16, n2=8), 1, lambda h, w: (h - 12, w - 12), []),
    "srcnn_955": (dict(n1=16, n2=8, padding="same"), 1, lambda h, w: (h, w), []),
    "espcn": (dict(n1=16, n2=8), 1, lambda h, w: (3 * h, 3 * w), ["pixel rearrangement"]),
    "fsrcnn": (dict(d=16, s=6, m=2), 1, lambda h, w: (3 * h, 3 * w), ["PyTorch: stride (3, 3)"]),
    "edsr_baseline": (dict(n_blocks=2, features=16), 3, lambda h, w: (2 * h, 2 * w), ["pixel rearrangement"]),
    "edsr": (dict(n_blocks=2, features=16, scale=3), 3, lambda h, w: (3 * h, 3 * w), ["pixel rearrangement"]),
    "srresnet": (dict(n_blocks=2, features=16), 3, lambda h, w: (4 * h, 4 * w), ["pixel rearrangement"]),
    "msrresnet": (dict(n_blocks=2, features=16), 3, lambda h, w: (4 * h, 4 * w), ["F.interpolate"]),
    "red10": (dict(features=16), 1, lambda h, w: (h, w), []),
    "red20": (dict(features=16), 1, lambda h, w: (h, w), []),
    "red30": (dict(features=8), 1, lambda h, w: (h, w), []),
    "drrn": (dict(units=3, features=16), 1, lambda h, w: (h, w), ["BatchNorm not directly after a convolution"]),
    "drrn_b1u9": (dict(blocks=2, units=2, features=16), 1, lambda h, w: (h, w), ["BatchNorm2d"]),
    "drcn": (dict(recursions=3, features=16), 1, lambda h, w: (h, w), []),
    "memnet": (dict(blocks=2, units=2, features=8), 1, lambda h, w: (h, w), ["torch.cat"]),
    "lapsrn": (dict(depth=2, features=8), 1, lambda h, w: (4 * h, 4 * w), ["PyTorch: stride (2, 2)"]),
    "srdensenet": (dict(blocks=2, layers=3, growth=4, bottleneck=8), 1, lambda h, w: (4 * h, 4 * w), ["torch.cat", "PyTorch: stride (2, 2)"]),
    "mdsr": (dict(n_blocks=2, features=8), 3, lambda h, w: (2 * h, 2 * w), ["pixel rearrangement"]),
    "srn_deblur": (dict(features=4), 3, lambda h, w: (h, w), ["PyTorch: stride (2, 2)", "torch.cat", "F.interpolate"]),
}


def input_size(m: nn.Module, h: int, w: int) -> tuple[int, int]:
    """(h, w) rounded up to the sizes the model takes (SRN-DeblurNet: multiples of 16)."""
    k = getattr(m, "size_multiple", 1)
    return -(-h // k) * k, -(-w // k) * k


def test_every_registered_model_is_tested():
    assert set(redkern.list_models()) == set(PARAMS) == set(SMALL)
    assert redkern.list_models("edsr*") == ["edsr", "edsr_baseline"]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_default_configuration_parameter_count(name):
    m = redkern.create_model(name)
    assert sum(p.numel() for p in m.parameters()) == PARAMS[name]
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert trainable == TRAINABLE.get(name, PARAMS[name])
    doc = (redkern.networks._registry._MODELS[name].__doc__ or "")
    assert f"{TRAINABLE.get(name, PARAMS[name]):,}" in doc  # the docstring states the same number


@pytest.mark.parametrize("name", sorted(set(PARAMS) - {"edsr", "red30"}))
def test_default_configuration_runs(name):
    _, channels, size, _ = SMALL[name]
    m = redkern.create_model(name).eval()
    h, w = input_size(m, *((21, 19) if name.startswith("srcnn") else (6, 5)))
    with torch.no_grad():
        y = m(torch.rand(1, channels, h, w))
    shrink = {"srcnn": 12, "srcnn_955": 16}.get(name)  # the paper's unpadded convolutions
    assert tuple(y.shape) == (1, channels, *((h - shrink, w - shrink) if shrink else size(h, w)))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_fused_equals_the_module(name):
    options, channels, size, in_pytorch = SMALL[name]
    m = T.randomize_(redkern.create_model(name, **options)).eval()
    fused = redkern.fuse(m)
    h, w = input_size(m, *((23, 19) if name.startswith("srcnn") else (11, 9)))
    x = torch.randn(2, channels, h, w)
    _, calls = T.conv_calls(m, x)
    with torch.no_grad():
        got = fused(x)
    assert tuple(got.shape) == (2, channels, *size(h, w))
    bn = any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    T.assert_like_pytorch(got, m, x, 1e-4 if bn else 1e-5)
    assert list(fused.state_dict()) == list(m.state_dict())
    text = redkern.explain(fused)
    for what in in_pytorch:
        assert what in text
    # every stride-1 convolution call is one fused step (a shared conv once per call, as
    # SRN-DeblurNet's per scale; MDSR's unselected scales' branches do not run); the strided
    # ones (FSRCNN's deconvolution, LapSRN's, SRN-DeblurNet's...) stay in PyTorch. As multisets:
    # the plan may order independent branches (MemNet's per-block reconstructions) otherwise.
    def count(convs):
        return collections.Counter(id(c) for c in convs)

    assert count(s.conv for s in fused.plan.conv_steps) == count(c for c in calls if tuple(c.stride) == (1, 1))


def test_create_model_fused_and_options():
    fused = redkern.create_model("vdsr", fused=True, depth=4, features=8)
    assert redkern.is_fused(fused) and len(fused.plan.conv_steps) == 4
    with pytest.raises(ValueError, match="fused model only"):
        redkern.create_model("vdsr", backend="cpu")
    with pytest.raises(ValueError, match=r"unknown model 'vdrs' \(did you mean vdsr\?\).*dncnn_b"):
        redkern.create_model("vdrs")
    assert isinstance(redkern.RED30(), redkern.REDNet)  # the old constructors still work


def test_srcnn_padding_option():
    assert redkern.create_model("srcnn").conv1.padding == (0, 0)
    assert redkern.create_model("srcnn", padding="same").conv3.padding == (2, 2)
    with pytest.raises(ValueError, match="valid"):
        redkern.create_model("srcnn", padding="full")


def test_srresnet_prelu_before_the_shuffle_is_the_papers_order():
    up = T.randomize_(redkern.networks.srresnet.UpsampleBlock(4)).eval()
    x = torch.randn(2, 4, 5, 3)
    with torch.no_grad():
        T.assert_close(up(x), up.prelu(up.shuffle(up.conv(x))).double(), 1e-6)


def test_edsr_follows_the_authors_layer_names_and_frozen_mean_shift():
    m = redkern.create_model("edsr_baseline", n_blocks=2, scale=4)
    keys = list(m.state_dict())
    assert keys[:4] == ["sub_mean.weight", "sub_mean.bias", "head.0.weight", "head.0.bias"]
    assert {"body.0.body.0.weight", "body.1.body.2.bias", "body.2.weight", "tail.0.0.weight",
            "tail.0.2.weight", "tail.1.weight", "add_mean.bias"} <= set(keys)
    assert not any(p.requires_grad for p in m.sub_mean.parameters())
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():  # the two mean shifts cancel: subtract then add the same mean
        T.assert_close(m.add_mean(m.sub_mean(x)), x.double(), 1e-6)


@pytest.mark.parametrize("backend", T.backends_here())
@pytest.mark.parametrize("name", sorted(SMALL))
def test_fused_on_each_backend_equals_the_module(name, backend):
    """Every layer on one named backend, or ``BackendUnavailable`` naming a layer it cannot run."""
    options, channels, size, _ = SMALL[name]
    m = T.randomize_(redkern.create_model(name, **options)).eval()
    h, w = input_size(m, *((23, 19) if name.startswith("srcnn") else (7, 5)))
    x = torch.randn(2, channels, h, w)
    try:
        fused = redkern.fuse(m, backend=backend)
        with torch.no_grad():
            got = fused(x)
    except redkern.BackendUnavailable as e:
        assert backend in str(e) and "not a" in str(e)  # names the layer and what the backend runs
        kernels = {c.kernel_size for c in m.modules() if isinstance(c, nn.Conv2d)}
        assert kernels - {(1, 1), (3, 3)}, f"{backend} refused a network of 1x1 and 3x3 convs only: {e}"
        return
    bn = any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    T.assert_like_pytorch(got, m, x, 1e-4 if bn else 1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_tiled_equals_the_whole_image(name):
    """Every network tiles exactly with the halo its plan gives, upsamplers and unpadded ones
    too (windows of about twice the radius, so most pixels sit in some tile's halo); a network
    that cannot be tiled says why."""
    options, channels, _, _ = SMALL[name]
    m = T.randomize_(redkern.create_model(name, **options)).eval()
    if name == "srn_deblur":  # it works at 1/2 and 1/4 of the input's resolution
        with pytest.raises(ValueError, match="SRNDeblurNet cannot be tiled exactly: .* 1/2 x 1/2"):
            redkern.tiling.receptive_field(m)
        return
    field = redkern.tiling.receptive_field(m)
    h, w = input_size(m, 3 * field.radius + 7, 2 * field.radius + 9)
    x = torch.randn(2, channels, h, w)
    tile = 2 * field.radius + 6
    tiles = redkern.tiling.plan_tiles(h, w, tile, field.radius, field.scale, field.trim)
    assert len(tiles) >= 4
    with torch.no_grad():
        want = m(x)
    got = redkern.tiled(m, x, tile=tile, batch=2, quiet=True)
    T.assert_close(got, want.double(), 1e-5)
