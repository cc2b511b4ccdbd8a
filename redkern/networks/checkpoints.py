"""Checkpoints in the layouts of the public ports (KAIR, BasicSR, ...) loaded into the zoo.

    from redkern.networks import checkpoints
    model = checkpoints.model_from_checkpoint("dncnn_b", "dncnn_gray_blind.pth")  # KAIR's file
    layout = checkpoints.load_state_dict(model, "net_g_latest.pth")   # into a model you built
    checkpoints.read_checkpoint("edsr_baseline", "EDSR_Mx2.pth").config     # what the file holds

A file's keys say which port wrote it: each network has one table of layouts below, a layout
being a list of rules ``(key in the file, key in redkern)`` written as templates (``{i}`` an
index, ``{i+2}`` that index plus 2, ``{p}`` the parameter name, ``{n}`` a count read off the
file). ``layout="auto"`` takes the layout whose rules cover every key of the file. The
configuration (depth, width, blocks, scale, channels, BatchNorm...) is read off the tensors'
shapes, so ``model_from_checkpoint`` builds the network the file holds; the registered name
fixes what the name means (``dncnn_s`` is 17 layers, ``edsr_baseline`` 16 blocks x 64), and a
file that disagrees is refused unless you pass that option yourself. What a file cannot say
(FSRCNN's scale: the deconvolution's stride; EDSR's ``res_scale``) comes from the name and
your options. ``load_state_dict`` maps, checks every key and shape, and loads strictly.

Files are read by ``redkern.weights.load_file`` (``torch.load(weights_only=True)``). Wrappers
are taken off: ``params_ema`` (preferred, BasicSR's EMA weights), ``params``, ``state_dict``,
``model``; so is a ``module.`` prefix (``nn.DataParallel``). Anything that does not fit raises
``WeightsError`` with one line naming missing and unexpected keys and shape mismatches, and,
when the file is another network's checkpoint, which one it looks like.

Layouts covered (read from the ports' sources):

- ``dncnn``: redkern's (= cszn/DnCNN's PyTorch port, ``dncnn.N``); KAIR ``models/network_dncnn.py``
  ``DnCNN`` (``model.N``), both with BatchNorm (``act_mode='BR'``, biases on every conv) and
  with the BatchNorms merged (``act_mode='R'``: KAIR's released ``dncnn_*.pth``).
- ``msrresnet``: BasicSR ``basicsr/archs/srresnet_arch.py`` ``MSRResNet`` (redkern's names);
  KAIR ``models/network_msrresnet.py`` ``MSRResNet1`` (``recon_trunk``, ``HRconv``).
- ``edsr``: redkern's (= the authors' EDSR-PyTorch); BasicSR ``basicsr/archs/edsr_arch.py``
  (its ``img_range`` 255 is folded into the first and last convolutions; its mean is the
  default DIV2K mean, which is not in the file).
- ``fsrcnn``: yjn870/FSRCNN-pytorch ``models.py`` (``first_part``, ``mid_part``, ``last_part``);
  KAIR has no FSRCNN.
- ``srresnet``, ``vdsr``, ``srcnn``, ``espcn``, ``red``: redkern's own layout. KAIR's
  ``MSRResNet0`` is a third network (no BN, ReLU, nearest-neighbour upconvs, a conv + ReLU
  before the last conv): no zoo model matches it, and the error says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..weights import WeightsError, load_file
from ._registry import create_model, list_models
from .dncnn import DnCNN
from .edsr import EDSR
from .espcn import ESPCN
from .fsrcnn import FSRCNN
from .msrresnet import MSRResNet
from .srcnn import SRCNN
from .srresnet import SRResNet
from .vdsr import VDSR

__all__ = [
    "LAYOUTS",
    "NETWORKS",
    "Checkpoint",
    "WeightsError",
    "load_state_dict",
    "model_from_checkpoint",
    "read_checkpoint",
]

LAYOUTS = ("redkern", "kair", "basicsr", "yjn870")
WRAPPERS = ("params_ema", "params", "state_dict", "model")  # taken off in this order of preference


# --- key templates ------------------------------------------------------------------------

_FIELD = re.compile(r"\{(\w+)([+-]\d+)?\}")
_INTS = {"i", "j", "k"}


class _Template:
    """``"mid_part.{i}.{p}"``: matches a key, binding ``i`` (digits, minus any offset written
    as ``{i+2}``) and ``p`` (a parameter name); ``fill`` writes the key back."""

    def __init__(self, text: str):
        self.text, self.fields, regex, pos = text, [], "", 0
        for m in _FIELD.finditer(text):
            regex += re.escape(text[pos:m.start()]) + (r"(\d+)" if m[1] in _INTS else r"([A-Za-z_]+)")
            self.fields.append((m[1], int(m[2] or 0)))
            pos = m.end()
        self.regex = re.compile(regex + re.escape(text[pos:]))

    def match(self, key: str) -> dict | None:
        m = self.regex.fullmatch(key)
        if m is None:
            return None
        values: dict = {}
        for (name, offset), text in zip(self.fields, m.groups()):
            value = int(text) - offset if name in _INTS else text
            if (name in _INTS and value < 0) or values.get(name, value) != value:
                return None
            values[name] = value
        return values

    def fill(self, values: dict) -> str:
        return _FIELD.sub(lambda m: str(values[m[1]] + int(m[2] or 0)) if m[1] in _INTS else values[m[1]],
                          self.text)


# --- the tables ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """One port's key layout for one network.

    ``rules``: ``(file key template, redkern key template)``, first match wins (both ways).
    ``counts``: ``{"n": template}``: ``{n}`` in the rules is the number of distinct ``{i}``
    the file's keys give that template. ``transforms``: redkern key -> ``fn(tensor, model)``
    for what the port computes differently (a scale folded in). ``constants``: redkern keys
    the file does not hold, kept from the model (frozen mean shifts)."""

    name: str
    source: str
    rules: tuple[tuple[str, str], ...]
    counts: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, Callable] = field(default_factory=dict)
    constants: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # "redkern" where a port's names are redkern's own


def _same(name: str, source: str, *templates: str, aliases: tuple[str, ...] = ()) -> Layout:
    """A layout whose keys are redkern's."""
    return Layout(name, source, tuple((t, t) for t in templates), aliases=aliases)


@dataclass(frozen=True)
class Network:
    """A zoo family: its class, its registered names and what each name fixes, its layouts,
    and ``config(state)``: constructor options read off a state_dict in redkern's keys."""

    family: str
    cls: type | None  # None: redkern.REDNet (imported late: models imports the networks)
    names: dict[str, dict]
    layouts: tuple[Layout, ...]
    config: Callable[[dict], dict]


def _indices(state: dict, template: str) -> list[int]:
    t = _Template(template)
    return sorted({m["i"] for m in map(t.match, state) if m is not None})


def _weight(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"no {key}")
    return state[key]


def _dncnn_config(state: dict) -> dict:
    convs = [i for i in _indices(state, "dncnn.{i}.weight") if state[f"dncnn.{i}.weight"].dim() == 4]
    if len(convs) < 2:
        raise ValueError("fewer than 2 convolutions")
    first, last = state[f"dncnn.{convs[0]}.weight"], convs[-1]
    return {"depth": len(convs), "features": int(first.shape[0]), "channels": int(first.shape[1]),
            "batchnorm": any(k.endswith(".running_mean") for k in state),
            "bias": f"dncnn.{last}.bias" in state}


def _edsr_config(state: dict) -> dict:
    features = int(_weight(state, "head.0.weight").shape[0])
    ups = _indices(state, "tail.0.{i}.weight")
    out = int(_weight(state, f"tail.0.{ups[0]}.weight").shape[0]) if ups else 0
    scale = 3 if len(ups) == 1 and out == 9 * features else 2 ** len(ups)
    return {"n_blocks": len(_indices(state, "body.{i}.body.0.weight")), "features": features, "scale": scale}


def _msrresnet_config(state: dict) -> dict:
    first = _weight(state, "conv_first.weight")
    features = int(first.shape[0])
    up = int(_weight(state, "upconv1.weight").shape[0]) // features
    return {"scale": 4 if "upconv2.weight" in state else {4: 2, 9: 3}.get(up, up),
            "n_blocks": len(_indices(state, "body.{i}.conv1.weight")), "features": features,
            "channels": int(first.shape[1])}


def _srresnet_config(state: dict) -> dict:
    head = _weight(state, "head.weight")
    return {"scale": 2 ** len(_indices(state, "upsample.{i}.conv.weight")),
            "n_blocks": len(_indices(state, "body.{i}.conv1.weight")), "features": int(head.shape[0]),
            "channels": int(head.shape[1])}


def _fsrcnn_config(state: dict) -> dict:
    convs = [i for i in _indices(state, "features.{i}.weight") if state[f"features.{i}.weight"].dim() == 4]
    if len(convs) < 3:
        raise ValueError("fewer than 3 convolutions before the deconvolution")
    first = state[f"features.{convs[0]}.weight"]
    return {"d": int(first.shape[0]), "s": int(state[f"features.{convs[1]}.weight"].shape[0]),
            "m": len(convs) - 3, "channels": int(first.shape[1])}


def _vdsr_config(state: dict) -> dict:
    first = _weight(state, "input.weight")
    return {"depth": 2 + len(_indices(state, "body.{i}.weight")), "features": int(first.shape[0]),
            "channels": int(first.shape[1])}


def _srcnn_config(state: dict) -> dict:
    return {"channels": int(_weight(state, "conv1.weight").shape[1])}


def _espcn_config(state: dict) -> dict:
    channels = int(_weight(state, "conv1.weight").shape[1])
    return {"channels": channels, "scale": round((int(_weight(state, "conv3.weight").shape[0]) / channels) ** 0.5)}


def _red_config(state: dict) -> dict:
    from ..models import REDNet

    return REDNet.config_from_state_dict(state)


def _times_img_range(t, model):  # BasicSR EDSR multiplies its input by img_range = 255
    return t * (255.0 / model.rgb_range)


def _over_img_range(t, model):  # ... and divides its output by it
    return t * (model.rgb_range / 255.0)


def _red_class():
    from ..models import REDNet

    return REDNet


_BASICSR = "XPixelGroup/BasicSR"
_KAIR = "cszn/KAIR"

NETWORKS: tuple[Network, ...] = (
    Network("dncnn", DnCNN, {"dncnn_s": {"depth": 17}, "dncnn_b": {"depth": 20}}, (
        _same("redkern", "redkern / cszn/DnCNN dncnn_pytorch", "dncnn.{i}.{p}"),
        Layout("kair", f"{_KAIR} models/network_dncnn.py DnCNN", (("model.{i}.{p}", "dncnn.{i}.{p}"),)),
    ), _dncnn_config),
    Network("msrresnet", MSRResNet, {"msrresnet": {}}, (
        _same("basicsr", f"{_BASICSR} basicsr/archs/srresnet_arch.py MSRResNet (redkern's names)",
              "conv_first.{p}", "body.{i}.conv1.{p}", "body.{i}.conv2.{p}", "upconv1.{p}", "upconv2.{p}",
              "conv_hr.{p}", "conv_last.{p}", aliases=("redkern",)),
        Layout("kair", f"{_KAIR} models/network_msrresnet.py MSRResNet1", (
            ("conv_first.{p}", "conv_first.{p}"), ("recon_trunk.{i}.conv1.{p}", "body.{i}.conv1.{p}"),
            ("recon_trunk.{i}.conv2.{p}", "body.{i}.conv2.{p}"), ("upconv1.{p}", "upconv1.{p}"),
            ("upconv2.{p}", "upconv2.{p}"), ("HRconv.{p}", "conv_hr.{p}"), ("conv_last.{p}", "conv_last.{p}"))),
    ), _msrresnet_config),
    Network("edsr", EDSR, {"edsr_baseline": {"n_blocks": 16, "features": 64},
                           "edsr": {"n_blocks": 32, "features": 256}}, (
        _same("redkern", "redkern / sanghyun-son/EDSR-PyTorch model/edsr.py", "sub_mean.{p}", "head.0.{p}",
              "body.{i}.body.{j}.{p}", "body.{i}.{p}", "tail.0.{i}.{p}", "tail.1.{p}", "add_mean.{p}"),
        Layout("basicsr", f"{_BASICSR} basicsr/archs/edsr_arch.py EDSR", (
            ("conv_first.{p}", "head.0.{p}"), ("body.{i}.conv1.{p}", "body.{i}.body.0.{p}"),
            ("body.{i}.conv2.{p}", "body.{i}.body.2.{p}"), ("conv_after_body.{p}", "body.{n}.{p}"),
            ("upsample.{i}.{p}", "tail.0.{i}.{p}"), ("conv_last.{p}", "tail.1.{p}")),
            counts={"n": "body.{i}.conv1.weight"},
            transforms={"head.0.weight": _times_img_range, "tail.1.weight": _over_img_range,
                        "tail.1.bias": _over_img_range},
            constants=("sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias")),
    ), _edsr_config),
    Network("fsrcnn", FSRCNN, {"fsrcnn": {}}, (
        _same("redkern", "redkern", "features.{i}.{p}", "deconv.{p}"),
        Layout("yjn870", "yjn870/FSRCNN-pytorch models.py FSRCNN", (
            ("first_part.0.{p}", "features.0.{p}"), ("first_part.1.{p}", "features.1.{p}"),
            ("mid_part.{i}.{p}", "features.{i+2}.{p}"), ("last_part.{p}", "deconv.{p}"))),
    ), _fsrcnn_config),
    Network("srresnet", SRResNet, {"srresnet": {}}, (
        _same("redkern", "redkern", "head.{p}", "head_prelu.{p}", "body.{i}.conv1.{p}", "body.{i}.bn1.{p}",
              "body.{i}.prelu.{p}", "body.{i}.conv2.{p}", "body.{i}.bn2.{p}", "body_conv.{p}", "body_bn.{p}",
              "upsample.{i}.conv.{p}", "upsample.{i}.prelu.{p}", "tail.{p}"),
    ), _srresnet_config),
    Network("vdsr", VDSR, {"vdsr": {}}, (
        _same("redkern", "redkern", "input.{p}", "body.{i}.{p}", "output.{p}"),), _vdsr_config),
    Network("srcnn", SRCNN, {"srcnn": {}, "srcnn_955": {}}, (
        _same("redkern", "redkern", "conv1.{p}", "conv2.{p}", "conv3.{p}"),), _srcnn_config),
    Network("espcn", ESPCN, {"espcn": {}}, (
        _same("redkern", "redkern", "conv1.{p}", "conv2.{p}", "conv3.{p}"),), _espcn_config),
    Network("red", None, {"red10": {"depth": 10}, "red20": {"depth": 20}, "red30": {"depth": 30}}, (
        _same("redkern", "redkern", "conv_{i}.{p}", "deconv_{i}.{p}"),), _red_config),
)

# checkpoints of networks the zoo does not hold: a key that says which
_MSRRESNET0 = (f"a KAIR MSRResNet0 ({_KAIR} models/network_msrresnet.py), a network redkern's zoo does not "
               "have (msrresnet is KAIR's MSRResNet1)")
FOREIGN = (("model.1.sub.0.res.0.weight", _MSRRESNET0),)


def _network_of_name(name: str) -> Network:
    for net in NETWORKS:
        if name in net.names:
            return net
    create_model(name)  # raises the registry's error for unknown names
    raise WeightsError(f"{name}: no checkpoint layouts are known for this model")


def _network_of_model(model: nn.Module) -> Network:
    from ..models import REDNet

    for net in NETWORKS:
        if isinstance(model, net.cls or REDNet):
            return net
    raise WeightsError(f"{type(model).__name__}: not a zoo network; checkpoint layouts are known for "
                       f"{', '.join(n.family for n in NETWORKS)}")


# --- reading and mapping --------------------------------------------------------------------

def _few(items, n: int = 4) -> str:
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _unwrap(data, source) -> dict:
    for _ in range(3):
        if isinstance(data, dict) and not all(isinstance(v, torch.Tensor) for v in data.values()):
            inner = next((data[k] for k in WRAPPERS if isinstance(data.get(k), dict)), None)
            if inner is None:
                break
            data = inner
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        what = f"a {type(data).__name__}" if not isinstance(data, dict) else \
            f"a dict of {_few(map(str, data), 4) or 'nothing'}"
        raise WeightsError(f"{source}: not a state_dict ({what}, not a dict of tensors under "
                           f"{', '.join(WRAPPERS)} or at the top)")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def _state(state_dict_or_path) -> tuple[dict, str]:
    if isinstance(state_dict_or_path, (str, Path)):
        return _unwrap(load_file(state_dict_or_path), state_dict_or_path), str(state_dict_or_path)
    return _unwrap(state_dict_or_path, "state_dict"), "state_dict"


def _rules(layout: Layout, keys) -> list[tuple[_Template, _Template]]:
    counts = {}
    for name, template in layout.counts.items():
        t = _Template(template)
        counts[name] = len({m["i"] for m in map(t.match, keys) if m is not None})
    resolve = lambda text: re.sub(r"\{(\w+)\}", lambda m: str(counts[m[1]]) if m[1] in counts else m[0], text)
    return [(_Template(resolve(f)), _Template(resolve(o))) for f, o in layout.rules]


def _map(layout: Layout, keys) -> tuple[dict[str, str], list[str]]:
    """``({file key: redkern key}, [file keys no rule takes])``."""
    rules, mapped, unmatched = _rules(layout, keys), {}, []
    for key in keys:
        for theirs, ours in rules:
            values = theirs.match(key)
            if values is not None:
                mapped[key] = ours.fill(values)
                break
        else:
            unmatched.append(key)
    return mapped, unmatched


def _file_key(layout: Layout, keys, ours: str) -> str:
    """The key a file in ``layout`` holds ``ours`` under (``ours`` if no rule writes it)."""
    for theirs, mine in _rules(layout, keys):
        values = mine.match(ours)
        if values is not None:
            return theirs.fill(values)
    return ours


def _looks_like(state: dict, besides: Network | None) -> str:
    for key, what in FOREIGN:
        if key in state:
            return f"; it looks like {what}"
    for net in NETWORKS:
        if net is besides:
            continue
        for layout in net.layouts:
            mapped, unmatched = _map(layout, state)
            if unmatched:
                continue
            try:
                net.config({mapped[k]: v for k, v in state.items()})
            except (ValueError, KeyError, IndexError):
                continue
            return f"; it looks like a {layout.name} {net.family} checkpoint ({', '.join(net.names)})"
    return ""


def _choose(net: Network, state: dict, layout: str, source: str) -> tuple[Layout, dict[str, str]]:
    if layout != "auto":
        chosen = [lay for lay in net.layouts if layout == lay.name or layout in lay.aliases]
        if not chosen:
            raise WeightsError(f"{source}: no {layout!r} layout for {net.family}; known: "
                               f"{', '.join(lay.name for lay in net.layouts)}")
        candidates = chosen
    else:
        candidates = list(net.layouts)
    scored = []
    for lay in candidates:
        mapped, unmatched = _map(lay, state)
        if not unmatched:
            return lay, mapped
        scored.append((len(mapped), lay, mapped, unmatched))
    _, lay, mapped, unmatched = max(scored, key=lambda s: s[0])
    where = lay.name if layout != "auto" else f"{' or '.join(c.name for c in candidates)}"
    raise WeightsError(f"{source}: not a {net.family} checkpoint in the {where} layout: unexpected keys "
                       f"{_few(unmatched)}" + _looks_like(state, net))


@dataclass
class Checkpoint:
    """What a checkpoint file holds: the network family, the layout found, the configuration
    read off its shapes (constructor options), and the state_dict in the file's own keys."""

    family: str
    layout: str
    source: str
    config: dict
    state: dict = field(repr=False)


def read_checkpoint(name: str, state_dict_or_path, layout: str = "auto") -> Checkpoint:
    """The checkpoint for the zoo model ``name`` (``redkern.list_models()``): which layout,
    and the configuration it holds. Raises ``WeightsError`` when it is not one."""
    net = _network_of_name(name)
    state, source = _state(state_dict_or_path)
    lay, mapped = _choose(net, state, layout, source)
    try:
        config = net.config({mapped[k]: v for k, v in state.items()})
    except (ValueError, KeyError, IndexError) as e:
        raise WeightsError(f"{source}: an incomplete {net.family} checkpoint ({lay.name} layout): {e}") from None
    return Checkpoint(net.family, lay.name, source, config, state)


def load_state_dict(model: nn.Module, state_dict_or_path, layout: str = "auto") -> str:
    """Load a checkpoint (a file, or a state_dict in any known layout) into the zoo ``model``:
    detect the layout (``"auto"``; or name it: ``"redkern"``, ``"kair"``, ``"basicsr"``,
    ``"yjn870"``), map the keys, check every key and shape, and load strictly. Returns the
    layout's name. Raises ``WeightsError`` (one line: the missing and unexpected keys in the
    file's names, shape mismatches with both shapes, the configuration the file holds)."""
    state, source = _state(state_dict_or_path)
    return _load(model, state, source, layout)


def _load(model: nn.Module, state: dict, source: str, layout: str) -> str:
    net = _network_of_model(model)
    lay, mapped = _choose(net, state, layout, source)
    own = model.state_dict()
    ours = {mapped[k]: v for k, v in state.items()}
    unexpected = [k for k in state if mapped[k] not in own]
    optional = set(lay.constants) | {k for k in own if k.endswith("num_batches_tracked")}
    missing = [_file_key(lay, state, k) for k in own if k not in ours and k not in optional]
    shapes = [f"{k} is {list(state[k].shape)} in the file, {list(own[mapped[k]].shape)} in the model"
              for k in state if mapped[k] in own and state[k].shape != own[mapped[k]].shape]
    if missing or unexpected or shapes:
        problems = ([f"missing {_few(missing)}"] if missing else []) + \
            ([f"unexpected {_few(unexpected)}"] if unexpected else []) + ([f"shape {_few(shapes, 2)}"] if shapes else [])
        try:
            holds = net.config(ours)
            holds = " (the file holds " + ", ".join(f"{k}={v}" for k, v in holds.items()) + ")"
        except (ValueError, KeyError, IndexError):
            holds = ""
        raise WeightsError(f"{source}: does not fit this {type(model).__name__} ({lay.name} layout): "
                           + "; ".join(problems) + holds)
    with torch.no_grad():
        ours = {k: lay.transforms[k](v, model) if k in lay.transforms else v for k, v in ours.items()}
    ours.update({k: own[k] for k in optional if k not in ours})
    model.load_state_dict(ours, strict=True)
    return lay.name


def model_from_checkpoint(name: str, state_dict_or_path, *, layout: str = "auto", fused: bool = False,
                          backend: str = "auto", **options) -> nn.Module:
    """``create_model(name, ...)`` in the configuration the checkpoint holds, its weights
    loaded (``load_state_dict``), in eval mode. ``options`` override the name's defaults; one
    the file contradicts raises ``WeightsError``, as does a file that contradicts what the name
    fixes (``dncnn_s`` with a 20-layer file: use ``dncnn_b``, or pass ``depth=20``).
    ``fused=True``: ``redkern.fuse`` of it. The layout found is ``model.checkpoint_layout``."""
    found = read_checkpoint(name, state_dict_or_path, layout)
    fixed = _network_of_name(name).names[name]
    for key, value in found.config.items():
        want = options.get(key, fixed.get(key))
        if want is not None and want != value:
            said = "was asked for" if key in options else f"is what {name} means"
            other = [n for n, f in _network_of_name(name).names.items() if f.get(key) == value]
            hint = f" (use {other[0]})" if other and key not in options else ""
            raise WeightsError(f"{found.source}: holds a {found.family} with {key}={value}, but {key}={want} "
                               f"{said}{hint}")
    built = {k: v for k, v in found.config.items() if k not in fixed} | options
    model = create_model(name, **built)
    model.checkpoint_layout = _load(model, found.state, found.source, found.layout)
    model.eval()
    if fused:
        from ..fusion import fuse

        return fuse(model, backend=backend)
    return model


def known_names() -> list[str]:
    """The registered models with checkpoint layouts."""
    return [n for n in list_models() if any(n in net.names for net in NETWORKS)]
