"""Checkpoints in the public ports' layouts load into the zoo and compute what the port computes.

Each port's module is re-created here with the layer names and forward of its source (KAIR
``models/network_dncnn.py``, ``models/network_msrresnet.py``; BasicSR ``archs/edsr_arch.py``,
``archs/srresnet_arch.py``; yjn870/FSRCNN-pytorch ``models.py``), filled with random weights and
saved the way the port saves; the zoo model loaded from that file must give the port module's
output on a random odd-sized input, reference and fused.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import redkern
from redkern import testing as T
from redkern.networks import checkpoints as C
from redkern.weights import WeightsError

# --- the ports' modules, as their sources build them (keys come from real modules) ---------

class KairDnCNN(nn.Module):
    """KAIR DnCNN: ``B.sequential`` flattens conv/BN/ReLU into ``model.N``; every conv has a
    bias; BN eps 1e-4. ``act_mode='R'`` is the merged-BN variant of the released models."""

    def __init__(self, in_nc=1, nc=64, nb=17, act_mode="BR"):
        super().__init__()
        layers = [nn.Conv2d(in_nc, nc, 3, 1, 1, bias=True), nn.ReLU(inplace=True)]
        for _ in range(nb - 2):
            layers.append(nn.Conv2d(nc, nc, 3, 1, 1, bias=True))
            if "B" in act_mode:
                layers.append(nn.BatchNorm2d(nc, momentum=0.9, eps=1e-04, affine=True))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(nc, in_nc, 3, 1, 1, bias=True))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return x - self.model(x)


class ResidualBlockNoBN(nn.Module):  # BasicSR arch_util / KAIR ResidualBlock_noBN
    def __init__(self, nc, res_scale=1.0):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(nc, nc, 3, 1, 1), nn.Conv2d(nc, nc, 3, 1, 1)
        self.relu, self.res_scale = nn.ReLU(inplace=True), res_scale

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class BasicsrEDSR(nn.Module):
    def __init__(self, num_feat=64, num_block=16, upscale=4, res_scale=1, img_range=255.0,
                 rgb_mean=(0.4488, 0.4371, 0.4040)):
        super().__init__()
        self.img_range, self.mean = img_range, torch.Tensor(rgb_mean).view(1, 3, 1, 1)
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        m = []
        if upscale & (upscale - 1) == 0:
            for _ in range(int(math.log2(upscale))):
                m += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        else:
            m += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        self.upsample = nn.Sequential(*m)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x):
        x = (x - self.mean) * self.img_range
        x = self.conv_first(x)
        res = self.conv_after_body(self.body(x))
        res += x
        return self.conv_last(self.upsample(res)) / self.img_range + self.mean


class BasicsrMSRResNet(nn.Module):
    trunk, hr = "body", "conv_hr"  # KAIR MSRResNet1: recon_trunk, HRconv

    def __init__(self, num_in_ch=3, num_feat=64, num_block=16, upscale=4):
        super().__init__()
        self.upscale = upscale
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        setattr(self, self.trunk, nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)]))
        if upscale in (2, 3):
            self.upconv1 = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        setattr(self, self.hr, nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_last = nn.Conv2d(num_feat, num_in_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

    def forward(self, x):
        out = getattr(self, self.trunk)(self.lrelu(self.conv_first(x)))
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.upscale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(getattr(self, self.hr)(out)))
        out += F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return out


class KairMSRResNet1(BasicsrMSRResNet):
    trunk, hr = "recon_trunk", "HRconv"


class Yjn870FSRCNN(nn.Module):
    def __init__(self, scale_factor, num_channels=1, d=56, s=12, m=4):
        super().__init__()
        self.first_part = nn.Sequential(nn.Conv2d(num_channels, d, 5, padding=2), nn.PReLU(d))
        mid = [nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        self.mid_part = nn.Sequential(*mid, nn.Conv2d(s, d, 1), nn.PReLU(d))
        self.last_part = nn.ConvTranspose2d(d, num_channels, 9, stride=scale_factor, padding=4,
                                            output_padding=scale_factor - 1)

    def forward(self, x):
        return self.last_part(self.mid_part(self.first_part(x)))


def filled(module: nn.Module) -> nn.Module:
    """Fresh random weights, biases, BN statistics and PReLU slopes: every term of the mapping counts."""
    T.randomize_(module)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
    return module.eval()


# (registered name, port module, load options, input channels); sizes small, shapes odd
CASES = {
    "kair_dncnn_br": ("dncnn_s", lambda: KairDnCNN(1, 16, 17, "BR"), {}, 1, "kair"),
    "kair_dncnn_merged_bn_color": ("dncnn_b", lambda: KairDnCNN(3, 8, 20, "R"), {}, 3, "kair"),
    "basicsr_edsr_x2": ("edsr_baseline", lambda: BasicsrEDSR(16, 3, 2), {"n_blocks": 3, "features": 16}, 3, "basicsr"),
    "basicsr_edsr_x3": ("edsr_baseline", lambda: BasicsrEDSR(8, 2, 3), {"n_blocks": 2, "features": 8}, 3, "basicsr"),
    "basicsr_edsr_x4_res_scale": ("edsr", lambda: BasicsrEDSR(8, 2, 4, res_scale=0.1),
                                  {"n_blocks": 2, "features": 8}, 3, "basicsr"),
    "basicsr_msrresnet_x4": ("msrresnet", lambda: BasicsrMSRResNet(3, 16, 3, 4), {}, 3, "basicsr"),
    "basicsr_msrresnet_x3_gray": ("msrresnet", lambda: BasicsrMSRResNet(1, 8, 2, 3), {}, 1, "basicsr"),
    "kair_msrresnet1_x2": ("msrresnet", lambda: KairMSRResNet1(3, 8, 2, 2), {}, 3, "kair"),
    "yjn870_fsrcnn_x2": ("fsrcnn", lambda: Yjn870FSRCNN(2, 1, 16, 6, 3), {"scale": 2}, 1, "yjn870"),
    "yjn870_fsrcnn_x4": ("fsrcnn", lambda: Yjn870FSRCNN(4, 1, 12, 5, 1), {"scale": 4}, 1, "yjn870"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_ports_checkpoint_computes_what_the_port_computes(case, tmp_path):
    name, build, options, channels, layout = CASES[case]
    port = filled(build())
    path = tmp_path / "port.pth"
    torch.save(port.state_dict(), path)
    model = C.model_from_checkpoint(name, path, **options)
    assert model.checkpoint_layout == layout and not model.training
    x = torch.rand(2, channels, 11, 9)
    with torch.no_grad():
        want = port(x.clone()).double()
        T.assert_close(model(x), want, 1e-5)
        T.assert_close(redkern.fuse(model)(x), want, 1e-4)


def test_the_configuration_is_read_off_the_shapes(tmp_path):
    found = C.read_checkpoint("dncnn_b", filled(KairDnCNN(3, 8, 20, "R")).state_dict())
    assert found.layout == "kair"
    assert found.config == {"depth": 20, "features": 8, "channels": 3, "batchnorm": False, "bias": True}
    found = C.read_checkpoint("msrresnet", {"params": KairMSRResNet1(1, 8, 5, 4).state_dict()})
    assert (found.layout, found.config) == ("kair", {"scale": 4, "n_blocks": 5, "features": 8, "channels": 1})
    found = C.read_checkpoint("edsr", BasicsrEDSR(8, 3, 3).state_dict())
    assert found.config == {"n_blocks": 3, "features": 8, "scale": 3}
    found = C.read_checkpoint("fsrcnn", Yjn870FSRCNN(3, 1, 10, 4, 2).state_dict())
    assert found.config == {"d": 10, "s": 4, "m": 2, "channels": 1}


@pytest.mark.parametrize("name", C.known_names())
def test_each_models_own_state_dict_is_the_redkern_layout(name):
    if name == "edsr":
        pytest.skip("40M parameters; edsr_baseline is the same class")
    model = redkern.create_model(name)
    found = C.read_checkpoint(name, model.state_dict())
    assert found.layout in ("redkern", "basicsr")  # msrresnet's names are BasicSR's
    fixed = C._network_of_name(name).names[name]
    assert {k: found.config[k] for k in fixed} == fixed  # what a name fixes is what it builds
    assert C.load_state_dict(redkern.create_model(name), model.state_dict()) == found.layout


def test_wrappers_and_dataparallel_prefixes_come_off(tmp_path):
    port = filled(BasicsrMSRResNet(3, 8, 2, 2))
    ema = filled(BasicsrMSRResNet(3, 8, 2, 2))
    sd = {"module." + k: v for k, v in ema.state_dict().items()}
    torch.save({"params": port.state_dict(), "params_ema": sd}, tmp_path / "net_g.pth")
    model = C.model_from_checkpoint("msrresnet", tmp_path / "net_g.pth")
    x = torch.rand(1, 3, 7, 5)
    with torch.no_grad():
        T.assert_close(model(x), ema(x.clone()).double(), 1e-5)  # the EMA weights are preferred


def test_a_partial_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    sd = KairDnCNN(1, 8, 17, "BR").state_dict()
    for k in ("model.47.weight", "model.47.bias", "model.6.running_var"):
        del sd[k]
    sd["model.99.weight"] = torch.zeros(1)
    model = redkern.create_model("dncnn_s", features=8, bias=True)
    with pytest.raises(WeightsError) as e:
        C.load_state_dict(model, sd)
    msg = str(e.value)
    assert "\n" not in msg and "kair layout" in msg
    assert "missing model.6.running_var, model.47.weight, model.47.bias" in msg and "unexpected model.99.weight" in msg


def test_a_shape_mismatch_gives_both_shapes_and_what_the_file_holds():
    sd = KairDnCNN(1, 16, 17, "BR").state_dict()
    with pytest.raises(WeightsError, match=r"model\.0\.weight is \[16, 1, 3, 3\] in the file, \[8, 1, 3, 3\] "
                       r"in the model.*features=16"):
        C.load_state_dict(redkern.create_model("dncnn_s", features=8, bias=True), sd)
    many = KairDnCNN(1, 8, 20, "BR").state_dict()
    with pytest.raises(WeightsError, match=r"unexpected model\.48\.weight, .* and \d+ more"):
        C.load_state_dict(redkern.create_model("dncnn_s", features=8, bias=True), many)


def test_a_name_means_its_configuration():
    sd = KairDnCNN(1, 8, 20, "BR").state_dict()
    with pytest.raises(WeightsError, match=r"depth=20, but depth=17 is what dncnn_s means \(use dncnn_b\)"):
        C.model_from_checkpoint("dncnn_s", sd)
    assert len(C.model_from_checkpoint("dncnn_s", sd, depth=20).dncnn) == 2 + 18 * 3 + 1
    with pytest.raises(WeightsError, match="features=8, but features=16 was asked for"):
        C.model_from_checkpoint("dncnn_b", sd, features=16)
    with pytest.raises(WeightsError, match=r"n_blocks=2, but n_blocks=16 is what edsr_baseline means"):
        C.model_from_checkpoint("edsr_baseline", BasicsrEDSR(8, 2, 2).state_dict())


def test_another_networks_checkpoint_says_which_it_looks_like(tmp_path):
    with pytest.raises(WeightsError, match=r"not a dncnn checkpoint.*looks like a basicsr edsr checkpoint"):
        C.model_from_checkpoint("dncnn_s", BasicsrEDSR(8, 2, 2).state_dict())
    with pytest.raises(WeightsError, match=r"looks like a kair msrresnet checkpoint \(msrresnet\)"):
        C.load_state_dict(redkern.create_model("vdsr", depth=3), KairMSRResNet1(3, 8, 1, 4).state_dict())
    msrresnet0 = {"model.0.weight": torch.zeros(8, 3, 3, 3), "model.1.sub.0.res.0.weight": torch.zeros(8, 8, 3, 3)}
    with pytest.raises(WeightsError, match="KAIR MSRResNet0"):
        C.model_from_checkpoint("srresnet", msrresnet0)


def test_files_that_are_no_state_dict_and_unknown_layouts(tmp_path):
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="x.pth: not a state_dict"):
        C.model_from_checkpoint("vdsr", tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="no such file"):
        C.model_from_checkpoint("vdsr", tmp_path / "none.pth")
    with pytest.raises(WeightsError, match=r"no 'basicsr' layout for dncnn; known: redkern, kair"):
        C.read_checkpoint("dncnn_s", KairDnCNN(1, 8, 5).state_dict(), layout="basicsr")
    with pytest.raises(ValueError, match="unknown model 'dncnn'.*registered"):
        C.read_checkpoint("dncnn", {})


def test_a_fused_model_loads_and_tiles_with_its_plans_radius():
    sd = filled(KairDnCNN(1, 8, 6, "BR")).state_dict()
    fused = redkern.fuse(redkern.create_model("dncnn_s", depth=6, features=8, bias=True).eval())
    assert C.load_state_dict(fused, sd) == "kair"
    assert fused.receptive_field_radius == 6
    port = KairDnCNN(1, 8, 6, "BR")
    port.load_state_dict(sd)
    x = torch.rand(1, 1, 29, 23)
    with torch.no_grad():
        T.assert_close(redkern.tiled(fused, x, tile=17), port.eval()(x).double(), 1e-4)
