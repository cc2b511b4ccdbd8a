"""The reference RED-Net against an independent construction, its wiring and its reach."""

import pytest
import torch
import torch.nn.functional as F

import redkern
from redkern.testing import kaiming_init_ as kaiming  # He-normal: the signal survives 30 layers

# The released RED30 skip pairs (decoder layer <- encoder layer), written out by hand.
RED30_SKIPS = {1: 14, 3: 12, 5: 10, 7: 8, 9: 6, 11: 4, 13: 2}
RED20_SKIPS = {2: 8, 4: 6, 6: 4, 8: 2}


def independent_forward(model, x, skips):
    """RED-Net written out with plain F.conv2d, deconvs as flipped, transposed convolutions."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    n = model.depth // 2
    h = x.double()
    enc = []
    for i in range(1, n + 1):
        h = F.relu(F.conv2d(h, sd[f"conv_{i}.weight"], sd[f"conv_{i}.bias"], padding=1))
        enc.append(h)
    for j in range(1, n + 1):
        w = sd[f"deconv_{j}.weight"].transpose(0, 1).flip(2, 3)
        h = F.conv2d(h, w, sd[f"deconv_{j}.bias"], padding=1)
        if j == n:
            break
        h = F.relu(h)
        if j in skips:
            h = F.relu(h + enc[skips[j] - 1])
    return h + x.double()


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("ctor,depth,skips", [
    (redkern.RED10, 10, {}), (redkern.RED20, 20, RED20_SKIPS), (redkern.RED30, 30, RED30_SKIPS)])
@pytest.mark.parametrize("shape,features", [((1, 1, 37, 53), 64), ((2, 3, 20, 31), 64),
                                            ((1, 1, 11, 9), 128), ((1, 3, 7, 5), 128)])
def test_reference_matches_independent_construction(ctor, depth, skips, shape, features):
    model = kaiming(ctor(channels=shape[1], features=features)).double()
    x = torch.rand(shape, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        want = independent_forward(model, x, skips)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert rel_err(out, want) <= 1e-6
    # and in float32, as users run it
    model32 = model.float()
    with torch.no_grad():
        assert rel_err(model32(x.float()), want) <= 1e-5


def test_skip_pairs_are_the_released_ones():
    assert redkern.RED30().skips == RED30_SKIPS
    assert redkern.RED20().skips == RED20_SKIPS
    assert redkern.RED10().skips == {}


@pytest.mark.parametrize("ctor,skips", [(redkern.RED30, RED30_SKIPS), (redkern.RED20, RED20_SKIPS)])
def test_miswired_skip_changes_the_output(ctor, skips):
    """The forward really uses each pair: rewiring any one skip changes the result."""
    model = kaiming(ctor(channels=1, features=8).double())
    x = torch.rand(1, 1, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        # compare the predicted residual, which the skips shape, not the input added back
        got = model(x) - x
        assert rel_err(got, independent_forward(model, x, skips) - x) <= 1e-9
        for j, i in skips.items():
            wrong = dict(skips)
            wrong[j] = i - 2 if i > 2 else i + 2
            assert rel_err(got, independent_forward(model, x, wrong) - x) > 1e-3, (j, i)


def test_state_dict_names_are_stable():
    keys = list(redkern.RED30().state_dict())
    assert keys[:2] == ["conv_1.weight", "conv_1.bias"]
    assert keys[-2:] == ["deconv_15.weight", "deconv_15.bias"]
    assert len(keys) == 60
    sd = redkern.RED30(channels=3, features=128).state_dict()
    assert sd["conv_1.weight"].shape == (128, 3, 3, 3)
    assert sd["deconv_1.weight"].shape == (128, 128, 3, 3)   # ConvTranspose2d: [Cin, Cout, 3, 3]
    assert sd["deconv_15.weight"].shape == (128, 3, 3, 3)


def test_parameter_count():
    assert sum(p.numel() for p in redkern.RED30().parameters()) == 1_035_201


@pytest.mark.parametrize("ctor,radius", [(redkern.RED10, 10), (redkern.RED20, 20), (redkern.RED30, 30)])
def test_receptive_field_radius_by_impulse_response(ctor, radius):
    """A change at one pixel moves outputs exactly `radius` pixels away and none further."""
    model = ctor(channels=1, features=8).double()
    for m in model.modules():  # positive weights, so no ReLU can hide the impulse's reach
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.uniform_(m.weight, 0.01, 0.1)
            torch.nn.init.uniform_(m.bias, 0.0, 0.01)
    assert model.receptive_field_radius == radius
    size = 2 * radius + 11
    c = size // 2
    x = torch.rand(1, 1, size, size, dtype=torch.float64)
    x2 = x.clone()
    x2[0, 0, c, c] += 1.0
    with torch.no_grad():
        changed = (model(x2) - model(x)).abs()[0, 0] > 0
    ys, xs = torch.nonzero(changed, as_tuple=True)
    assert (ys - c).abs().max().item() == radius
    assert (xs - c).abs().max().item() == radius


def test_bad_constructor_arguments_are_named():
    with pytest.raises(ValueError, match="depth"):
        redkern.REDNet(depth=7)
    with pytest.raises(ValueError, match="channels"):
        redkern.REDNet(channels=0)
    with pytest.raises(ValueError, match="backend"):
        redkern.RED10(backend="triton")  # a backend without fused=True


@pytest.mark.parametrize("bad,match", [
    (torch.rand(1, 37, 53), "4-D"),
    (torch.rand(1, 3, 8, 8), "channel"),
    (torch.randint(0, 255, (1, 1, 8, 8)), "floating"),
    (torch.rand(0, 1, 8, 8), "empty"),
    (torch.rand(1, 1, 8, 8, dtype=torch.float64), "dtype"),
])
def test_bad_input_is_named(bad, match):
    for fused in (False, True):
        with pytest.raises((ValueError, TypeError), match=match):
            redkern.RED10(fused=fused)(bad)
