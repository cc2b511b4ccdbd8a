"""The one executor of layer plans (``redkern.plan``), three ways through the same steps.

- ``"ops"``: every fused step is one ``torch.ops.redkern.conv2d_fused`` call (``conv2d_fused_train``
  where autograd needs more than the output: ``redkern.ops.fused_conv``). For autograd,
  tracing, ``torch.compile(fullgraph=True)`` and fake/meta tensors, which only the custom op's
  fake implementation and gradients understand.
- ``"kernels"``: eager inference (no gradient needed). The backend's kernel is called directly
  with its output in a feature map from a ``BufferPool``: no op dispatch, and on the CPU the maps
  of the previous call of the same shape are reused (a fresh 256 MiB map costs a page fault per
  4 KiB the kernel first writes: a third of RED30's time at 1024x1024). A map goes back to the
  pool after the last step that reads it (``Plan.last_uses``).
- ``"torch"``: plain PyTorch (``F.conv2d`` and the epilogue's reference), every transposed
  convolution as the equivalent ``F.conv2d``: the plan's semantics, and the conv-only form the
  ONNX Runtime and OpenVINO peers are exported from (``as_module``).

PyTorch steps (``TorchStep``) run as PyTorch runs them in every mode. A fused step whose
BatchNorm is in training mode runs its original modules (batch statistics cannot be folded).
Which backend runs each fused step is resolved once per device and dtype (``LayerBackends``):
``"auto"`` takes the device's preferred backend that can run the layer and, where none can, runs
the layer in PyTorch and says so in the plan report; a named backend that cannot run a layer
raises ``BackendUnavailable`` naming the layer.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import backends as _backends
from . import strips
from .backends.common import BackendUnavailable, SourceStamp, conv_weight, is_channels_last, to_nhwc
from .epilogue import apply_epilogue, kernel_slopes, output_size
from .layer_plan import ConvStep, Plan, TorchStep, substitute
from .ops import fused_conv
from .validation import WorkingSetTooLarge

__all__ = ["run", "needs_ops", "BufferPool", "LayerBackends", "Pairing", "as_module", "MODES"]

MODES = ("ops", "kernels", "torch")
PREFERRED = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}


def needs_ops(inputs, parameters) -> bool:
    """True when a call must go through the custom ops: autograd, tracing, compiling, or
    fake/meta tensors, which only the ops' fake implementations understand."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    tensors = [t for t in inputs if isinstance(t, Tensor)]
    if any(t.device.type == "meta" or type(t) is not torch.Tensor for t in tensors):
        return True
    if torch.is_grad_enabled() and (any(t.requires_grad for t in tensors) or any(p.requires_grad for p in parameters)):
        return True
    return False


# --- which backend runs each layer ---------------------------------------------------------------

class LayerBackends:
    """Per fused step, the backend module that runs it on a device and dtype, or ``None`` where
    it runs in PyTorch (``"auto"`` only), with the reason; resolved once per (device, dtype)."""

    def __init__(self, plan: Plan, backend: str, pair_layers: bool | None = None):
        if backend not in _backends.BACKEND_NAMES:
            raise ValueError(f"unknown backend {backend!r}; choose one of {_backends.BACKEND_NAMES}")
        self.plan, self.backend = plan, backend
        self.pair_layers = pair_layers_default() if pair_layers is None else bool(pair_layers)
        self._cache: dict = {}
        self.checked_signatures: set = set()  # inputs whose working set was found to fit
        self._lock = threading.Lock()

    def for_call(self, device: torch.device, dtype: torch.dtype) -> dict[int, tuple]:
        """``{step index: (backend name, module, algorithm label)}``; the module is ``None``
        (with the reason as the label) where the step runs in PyTorch."""
        key = (device.type, device.index, dtype)
        hit = self._cache.get(key)
        if hit is None:
            with self._lock:
                hit = self._cache.get(key) or self._resolve(device, dtype)
                self._cache[key] = hit
        return hit

    def pairs_for(self, device: torch.device, dtype: torch.dtype) -> "Pairing":
        """Which consecutive fused steps run as one two-layer kernel launch on ``device`` in
        ``dtype`` (``Pairing``), resolved once per (device, dtype, ``pair_layers``, which
        BatchNorms are in training mode)."""
        training = tuple(i for i, s in enumerate(self.plan.steps)
                         if isinstance(s, ConvStep) and s.folds_batchnorm_in_training)
        key = ("pairs", device.type, device.index, dtype, self.pair_layers, training)
        hit = self._cache.get(key)
        if hit is None:
            chosen = self.for_call(device, dtype)
            with self._lock:
                hit = self._cache.get(key) or _pairing(self.plan, chosen, dtype, self.pair_layers)
                self._cache[key] = hit
        return hit

    def _resolve(self, device: torch.device, dtype: torch.dtype) -> dict[int, tuple]:
        names = PREFERRED.get(device.type, ()) if self.backend == "auto" else (self.backend,)
        if self.backend == "auto" and not names:
            raise BackendUnavailable(f"redkern has no kernels for device type {device.type!r} (supported: cpu, cuda)")
        usable = []
        for name in names:
            mod = _backends._load(name)
            try:
                mod.check_can_run(device)
            except BackendUnavailable as e:
                if self.backend != "auto":
                    raise
                why = str(e)
                continue
            usable.append((name, mod))
        if not usable:
            raise BackendUnavailable(f"no backend can run on {device}: {why}")
        _check_dtype(usable, dtype)
        chosen = {}
        for i, step in enumerate(self.plan.steps):
            if not isinstance(step, ConvStep):
                continue
            reasons = []
            for name, mod in usable:
                try:
                    label = mod.algorithm(step.in_channels, step.out_channels, step.kernel, step.padding,
                                          step.transposed, dtype)
                except BackendUnavailable as e:
                    reasons.append(f"{name}: {e}")
                    continue
                chosen[i] = (name, mod, label)
                break
            else:
                if self.backend != "auto":
                    raise BackendUnavailable(f"{step.name} ({step.describe()}, {step.in_channels} -> "
                                             f"{step.out_channels}): {'; '.join(reasons)}")
                chosen[i] = ("pytorch", None, "; ".join(reasons))
        return chosen


PAIR_LAYERS_ENV = "REDKERN_PAIR_LAYERS"


def pair_layers_default() -> bool:
    """Whether eager inference pairs layers by default: on, unless ``REDKERN_PAIR_LAYERS=0``."""
    return os.environ.get(PAIR_LAYERS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Pairing:
    """Consecutive fused steps run two to a kernel launch (eager inference, ``"kernels"`` mode).

    ``first``: ``{i: label}`` for each pair of steps ``i``, ``i + 1`` run by the backend's
    ``conv2d_pair`` (step ``i``'s output kept on chip, never stored); ``why_not``: ``{i: reason}``
    for each other step on a backend that pairs layers, why it runs on its own."""

    first: dict
    why_not: dict


# The backends with a two-layer kernel (``conv2d_pair``, ``pair_algorithm``).
PAIRING_BACKENDS = ("triton",)


def _pairing(plan: Plan, chosen: dict, dtype: torch.dtype, enabled: bool) -> Pairing:
    """Pair the plan's steps greedily, first to last: a step pairs with the next when the plan
    allows it (``Plan.pair_problem``), both run on the same pairing backend and that backend's
    ``pair_algorithm`` takes the two layers."""
    first, why_not = {}, {}
    pairing = [i for i, c in chosen.items() if c[0] in PAIRING_BACKENDS and c[1] is not None]
    if not enabled:
        return Pairing({}, {i: f"pairing is off (pair_layers=False or {PAIR_LAYERS_ENV}=0)" for i in pairing})
    steps, i = plan.steps, 0
    while i < len(steps):
        if i not in pairing:
            i += 1
            continue
        why = plan.pair_problem(i)
        if why is None:
            nxt = chosen.get(i + 1)
            if nxt is None or nxt[0] != chosen[i][0] or nxt[1] is None:
                why = f"{steps[i + 1].name} runs on {'PyTorch' if nxt is None or nxt[1] is None else nxt[0]}"
        if why is None:
            a, b = steps[i], steps[i + 1]
            try:
                first[i] = chosen[i][1].pair_algorithm(
                    (a.in_channels, a.out_channels, a.kernel, a.padding, a.transposed),
                    (b.in_channels, b.out_channels, b.kernel, b.padding, b.transposed), dtype)
                i += 2
                continue
            except BackendUnavailable as e:
                why = str(e)
        why_not[i] = why
        i += 1
    return Pairing(first, why_not)


@torch._dynamo.assume_constant_result  # resolved once, outside any graph: a constant to the compiler
def backend_names(layers: "LayerBackends", device_type: str, device_index, dtype) -> tuple[str, ...]:
    """Per step of ``layers.plan``, the backend name that runs it (``"pytorch"`` where none
    does; ``""`` for PyTorch steps), for ``LayerBackends.for_call``'s choice."""
    chosen = layers.for_call(torch.device(device_type, device_index), dtype)
    return tuple(chosen[i][0] if i in chosen else "" for i in range(len(layers.plan.steps)))


def _check_dtype(usable, dtype):
    """A dtype no backend here takes is an error for the whole model, never a quiet fallback."""
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating input tensor, got {dtype}; convert images with x.float() / 255 first")
    errors = []
    for name, _ in usable:
        try:
            return _backends.check_dtype(name, dtype)
        except TypeError as e:
            errors.append(str(e))
    raise TypeError("; ".join(errors))


# --- effective weights of a step -----------------------------------------------------------------

def _step_weights(step: ConvStep, dtype: torch.dtype, cached: bool) -> tuple[Tensor, Tensor]:
    """``(weight, bias)`` with BatchNorm and the bias scale folded in; a zero bias where the
    layer has none. ``cached``: reuse the folded tensors while no source changed (inference;
    ``SourceStamp``: an optimizer step, a load or a ``.data`` edit is seen)."""
    w, b = step.conv.weight, step.conv.bias
    if w.dtype != dtype:
        raise TypeError(f"{step.name}: the weight is {w.dtype}, the input {dtype}; convert the whole model "
                        "with .to(dtype)")
    if step.bn is None and step.bias_scale == 1 and b is not None:
        return w, b
    if not cached:
        return _fold(step)
    sources = [t for t in (w, b, *(_bn_tensors(step.bn) if step.bn is not None else ())) if t is not None]
    try:
        for t in sources:
            t._version
    except RuntimeError:  # inference tensors keep no version counter: fold every call
        return _fold(step)
    hit = step.__dict__.get("_folded")
    if hit is None or not hit[0].matches(sources):
        hit = step.__dict__["_folded"] = (SourceStamp(sources), tuple(t.detach() for t in _fold(step)))
    return hit[1]


def _bn_tensors(bn):
    return [t for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None]


def _fold(step: ConvStep):
    w, b = step.weights()
    if b is None:
        b = torch.zeros(step.out_channels, dtype=w.dtype, device=w.device)
    return w, b


# --- running a plan ------------------------------------------------------------------------------

def run(plan: Plan, root: nn.Module, inputs: tuple, *, backend: str = "auto", mode: str | None = None,
        layers: LayerBackends | None = None, pool: "BufferPool | None" = None):
    """Run ``plan`` (made from ``root``) on ``inputs``; returns the module's output structure.

    ``mode``: one of ``MODES``, by default ``"ops"`` where ``needs_ops`` says so, else
    ``"kernels"``. ``layers``: the per-layer backends (made from ``backend`` if not given);
    ``pool``: feature maps kept between ``"kernels"`` calls.
    """
    if mode is None:
        mode = "ops" if needs_ops(inputs, root.parameters()) else "kernels"
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(inputs) != len(plan.inputs):
        raise TypeError(f"{plan.root}.forward takes {len(plan.inputs)} input(s), got {len(inputs)}")
    env = dict(zip(plan.inputs, inputs))
    first = next((t for t in inputs if isinstance(t, Tensor)), None)
    if mode == "torch":
        for step in plan.steps:
            env[step.dst] = _run_torch_step(step, env, root) if isinstance(step, TorchStep) else _conv_torch(step, env)
        return substitute(plan.output, env)
    if layers is None:
        layers = LayerBackends(plan, backend)
    # Backends are resolved at the first fused step, so that the plan's own input checks (which
    # come first) name a bad input before a backend names its dtype.
    if mode == "ops":
        return _run_ops(plan, root, env, lambda: backend_names(layers, first.device.type, first.device.index,
                                                               first.dtype), first)
    return _run_kernels(plan, root, env, lambda: layers.for_call(first.device, first.dtype), first, pool, layers)


def _run_torch_step(step: TorchStep, env, root):
    if step.kind == "get_attr":
        return root.get_parameter(step.target) if _is_parameter(root, step.target) else _fetch(root, step.target)
    args, kwargs = substitute(step.args, env), substitute(step.kwargs, env)
    if step.kind == "call_method":
        return getattr(args[0], step.target)(*args[1:], **kwargs)
    return step.target(*args, **kwargs)


def _is_parameter(root, path):
    owner, _, name = path.rpartition(".")
    return name in (root.get_submodule(owner) if owner else root)._parameters


def _fetch(root, path):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _conv_unfused(step: ConvStep, env):
    """The step as its original modules run: the only exact way with a training-mode BatchNorm."""
    y = step.conv(env[step.src])
    if step.bn is not None:
        y = step.bn(y)
    extra = env[step.extra] if step.extra is not None else None
    return apply_epilogue(y, None, extra, step.epilogue, step.act_weight, step.act2_weight)


def _conv_torch(step: ConvStep, env):
    """The step in plain PyTorch, every convolution a ``F.conv2d``."""
    if step.folds_batchnorm_in_training:
        return _conv_unfused(step, env)
    x = env[step.src]
    w, b = step.weights()
    (kh, kw), (ph, pw) = step.kernel, step.padding
    if step.transposed:  # the equivalent convolution: window flipped, channels swapped
        w, ph, pw = conv_weight(w, True), kh - 1 - ph, kw - 1 - pw
    conv = F.conv2d(x, w.to(x.dtype), None, padding=(ph, pw))
    extra = env[step.extra] if step.extra is not None else None
    return apply_epilogue(conv, None if b is None else b.to(x.dtype), extra, step.epilogue,
                          step.act_weight, step.act2_weight)


def _inputs_to_nhwc(plan: Plan, env, runs_kernel) -> None:
    """The module's inputs that our kernels read, made NHWC once rather than by every layer
    that reads them (``runs_kernel(i)``: step ``i`` runs one of our kernels)."""
    read = {v for i, s in enumerate(plan.steps) if runs_kernel(i) for v in s.reads}
    for v in read & set(plan.inputs):
        if isinstance(env[v], Tensor) and env[v].dim() == 4:
            env[v] = to_nhwc(env[v])


def _to_input_format(y, like: Tensor | None):
    if isinstance(y, Tensor) and y.dim() == 4 and like is not None and not is_channels_last(like):
        return y.contiguous()
    return y


def _autocast_dtype(first) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs convolutions in on ``first``'s device, or None when it is off."""
    if not isinstance(first, Tensor) or not first.is_floating_point():
        return None
    device = first.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def _run_ops(plan: Plan, root, env, resolve, first):
    produced_by_kernel = set()
    names = None
    # Under torch.autocast the fused steps run in its dtype, as PyTorch's convolutions would: their
    # inputs and (folded) weights are cast, the gradients flow back to the float32 parameters.
    cast = _autocast_dtype(first)
    for i, step in enumerate(plan.steps):
        if isinstance(step, TorchStep):
            env[step.dst] = _run_torch_step(step, env, root)
            continue
        if names is None:
            names = resolve()
            _inputs_to_nhwc(plan, env, lambda i: names[i] not in ("", "pytorch"))
        name = names[i]
        if name == "pytorch" or step.folds_batchnorm_in_training:
            env[step.dst] = _conv_unfused(step, env)
            continue
        x = env[step.src]
        w, b = _step_weights(step, x.dtype if cast is None else step.conv.weight.dtype, cached=False)
        extra = env[step.extra] if step.extra is not None else None
        if cast is not None:
            x, w, b, extra = (t.to(cast) if t is not None and t.dtype != cast else t for t in (x, w, b, extra))
        env[step.dst] = fused_conv(x, w, b, extra, step.act_weight, step.act2_weight, step.transposed,
                                   step.padding, step.epilogue, name)
        produced_by_kernel.add(step.dst)
    results = {v: _to_input_format(env[v], first) for v in plan.output_values if v in produced_by_kernel}
    return substitute(plan.output, {**env, **results})


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (the kernel's MemAvailable on a Linux CPU,
    the free plus cached-but-unused memory on CUDA), or None where that is not known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_working_set(plan: Plan, x: Tensor, need: tuple[int, int | None] | None = None) -> None:
    """Raise ``WorkingSetTooLarge`` when the feature maps a whole-image call holds at once would
    not fit in the memory left, before any of them is allocated (the kernel's OOM killer gives
    no message). ``need``: ``(bytes, maps)`` where the call is not run whole (row strips: maps
    ``None``), else ``plan.peak_bytes``."""
    need, maps = need or plan.peak_bytes(tuple(x.shape), x.element_size())
    free = available_memory(x.device)
    if free is not None and need > free:
        held = f"{maps} maps" if maps is not None else "row strips of the maps and the output"
        raise WorkingSetTooLarge(
            f"{plan.root} on a {tuple(x.shape)} {str(x.dtype).removeprefix('torch.')} input needs about "
            f"{need / 2**30:.1f} GiB of feature maps at once ({held}), and {free / 2**30:.1f} GiB are "
            f"available on {x.device}: restore it tile by tile, redkern.tiled(model, x, tile=1024) "
            "(the redkern restore command tiles already)")


def _run_kernels(plan: Plan, root, env, resolve, first, pool, layers):
    pooled = pool is not None and first.device.type == "cpu"  # CUDA's caching allocator already reuses memory
    signature = tuple((tuple(t.shape), t.dtype, t.device) if isinstance(t, Tensor) else None
                      for t in (env[v] for v in plan.inputs))
    chosen = None
    maps = _CallMaps(pool.take(signature) if pooled else {})
    dying: dict[int, list[int]] = {}
    for v, i in plan.last_uses().items():
        if v not in plan.inputs:
            dying.setdefault(i, []).append(v)
    pairs = {}
    for i, step in enumerate(plan.steps):
        if isinstance(step, ConvStep) and chosen is None:
            resolved = resolve() if strips.use_strips(plan, first) else None
            if resolved is not None and _strips_can_run(plan, resolved, i):
                out = _run_strips(plan, env, first, resolved, layers, signature, maps.free)
                if pooled:
                    pool.put(signature, maps.free)
                return out
            chosen = _first_fused_step(plan, first, signature, resolve, layers)
            pairs = layers.pairs_for(first.device, first.dtype).first
            _inputs_to_nhwc(plan, env, lambda i: i in chosen and chosen[i][1] is not None)
        if i - 1 in pairs:
            pass  # run with step i - 1
        elif i in pairs:
            second = plan.steps[i + 1]
            x = env[step.src]
            out = maps.new(second.dst, (x.shape[0], second.out_channels, x.shape[2], x.shape[3]), x.dtype, x.device)
            chosen[i][1].conv2d_pair(x, _kernel_args(step, env, x), _kernel_args(second, env, x), out=out)
            env[second.dst] = out
        elif isinstance(step, TorchStep):
            env[step.dst] = _run_torch_step(step, env, root)
            maps.adopt(step.dst, env[step.dst])
        elif chosen[i][1] is None or step.folds_batchnorm_in_training:
            env[step.dst] = _conv_unfused(step, env)
            maps.adopt(step.dst, env[step.dst])
        else:
            x = env[step.src]
            (kh, kw), (ph, pw) = step.kernel, step.padding
            shape = (x.shape[0], step.out_channels, output_size(x.shape[2], kh, ph, step.transposed),
                     output_size(x.shape[3], kw, pw, step.transposed))
            out = maps.new(step.dst, shape, x.dtype, x.device)
            args = _kernel_args(step, env, x)
            chosen[i][1].conv2d(x, args.pop("weight"), args.pop("bias"), args.pop("extra"), **args, out=out)
            env[step.dst] = out
        for v in dying.get(i, ()):
            maps.release(v)
            env.pop(v, None)
    results = {}
    for v in plan.output_values:
        if maps.holds(v):  # made in a pooled map: converted (a copy), or the caller keeps the map
            results[v] = _to_input_format(env[v], first)
            if results[v] is env[v]:
                maps.hand_over(v)
    out = substitute(plan.output, {**env, **results})
    for v in plan.output_values:
        maps.release(v)
    if pooled:
        pool.put(signature, maps.free)
    return out


def _kernel_args(step: ConvStep, env, x: Tensor) -> dict:
    """A fused step's arguments to a backend's ``conv2d`` (all by name; the input ``x`` aside)."""
    return dict(_layer_args(step, x), extra=env[step.extra] if step.extra is not None else None)


def _layer_args(step: ConvStep, x: Tensor) -> dict:
    """``_kernel_args`` but the extra: what stays the same for every call of the step on ``x``'s
    dtype and device."""
    w, b = _step_weights(step, x.dtype, cached=True)
    e = step.epilogue
    return dict(weight=w, bias=b, transposed=step.transposed, padding=step.padding, epilogue=e,
                slopes=kernel_slopes(e.act, e.slope, step.act_weight, step.out_channels, x.device),
                slopes2=kernel_slopes(e.act2, e.slope2, step.act2_weight, step.out_channels, x.device))


def _strips_can_run(plan: Plan, chosen: dict, start: int) -> bool:
    """Every fused step from ``start`` on runs on the CPU kernels (none left to PyTorch, no
    BatchNorm in training mode)."""
    return all(chosen[i][0] == "cpu" and chosen[i][1] is not None and not plan.steps[i].folds_batchnorm_in_training
               for i in range(start, len(plan.steps)))


def _run_strips(plan: Plan, env, first: Tensor, chosen: dict, layers: "LayerBackends", signature, free: dict):
    """The rest of the plan in row strips (``redkern.strips``): only a few rows of each map are
    held, so the working set checked is the strips' windows and the output; the windows' buffers
    come from and go back to ``free`` (the call's pooled maps)."""
    if signature not in layers.checked_signatures:
        n, _, h, w = first.shape
        out_bytes = n * plan.steps[-1].out_channels * h * w * first.element_size()
        check_working_set(plan, first, need=(strips.strip_peak_bytes(plan, tuple(first.shape), first.element_size())
                                             + out_bytes, None))
        layers.checked_signatures.add(signature)
    y = strips.run_strips(plan, env[plan.inputs[0]], chosen, _layer_args, free)
    return substitute(plan.output, {plan.steps[-1].dst: _to_input_format(y, first)})


def _first_fused_step(plan, first, signature, resolve, layers):
    """At a call's first fused step: the per-layer backends, and the working-set check (once
    per input signature)."""
    chosen = resolve()
    if signature not in layers.checked_signatures:
        check_working_set(plan, first)
        layers.checked_signatures.add(signature)
    return chosen


class _CallMaps:
    """The pooled feature maps of one inference call, and which live values view each of them:
    a map is free again once no live value views it (a PyTorch step may return a view)."""

    def __init__(self, free: dict):
        self.free = free                      # (shape, dtype, device) -> [maps]
        self._maps: dict[int, Tensor] = {}    # storage address -> map in use
        self._views: dict[int, int] = {}      # storage address -> live values viewing it
        self._of: dict[int, list[int]] = {}   # value -> storage addresses it views
        self._kept: set[int] = set()          # maps handed to the caller

    def new(self, value: int, shape, dtype, device) -> Tensor:
        stack = self.free.get((shape, dtype, device))
        if stack:
            m = stack.pop()
        else:
            n, c, h, w = shape  # dense NHWC, stride(1) == 1 even for one channel
            m = torch.empty((n, h, w, c), dtype=dtype, device=device).permute(0, 3, 1, 2)
        key = _storage_key(m)
        self._maps[key], self._views[key], self._of[value] = m, 1, [key]
        return m

    def adopt(self, value: int, result) -> None:
        for t in _tensors(result):
            key = _storage_key(t)
            if key in self._maps:
                self._of.setdefault(value, []).append(key)
                self._views[key] += 1

    def holds(self, value: int) -> bool:
        return value in self._of

    def hand_over(self, value: int) -> None:
        self._kept.update(self._of.get(value, ()))

    def release(self, value: int) -> None:
        for key in self._of.pop(value, ()):
            self._views[key] -= 1
            if self._views[key] == 0 and key not in self._kept:
                m = self._maps.pop(key)
                self.free.setdefault((tuple(m.shape), m.dtype, m.device), []).append(m)


def _tensors(value):
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def _storage_key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


class BufferPool:
    """Feature maps kept between inference calls, for the most recent input signature only.

    ``take`` hands a call the whole free list for its signature (a concurrent call of the same
    signature finds none and allocates its own, so no two calls share a map); ``put`` gives it
    back afterwards, replacing whatever another signature left. Not part of a model's state:
    models drop it when pickled or copied.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._key, self._maps = None, {}

    def take(self, key) -> dict:
        with self._lock:
            if key != self._key:
                return {}
            maps, self._maps = self._maps, {}
            return maps

    def put(self, key, maps: dict) -> None:
        with self._lock:
            self._key, self._maps = key, maps

    def clear(self) -> None:
        with self._lock:
            self._key, self._maps = None, {}

    def nbytes(self) -> int:
        with self._lock:
            return sum(m.untyped_storage().nbytes() for stack in self._maps.values() for m in stack)


class _PlanModule(nn.Module):
    """A plan run in ``"torch"`` mode as a module (for ``torch.onnx.export`` and OpenVINO)."""

    def __init__(self, root: nn.Module, plan: Plan):
        super().__init__()
        self.root = root
        self.plan = plan

    def forward(self, *inputs):
        return run(self.plan, self.root, inputs, mode="torch")


def as_module(plan: Plan, root: nn.Module) -> nn.Module:
    """The plan as a module of plain PyTorch operations, transposed stride-1 convolutions as
    ``F.conv2d``: the conv-only form ONNX Runtime and OpenVINO run fastest."""
    return _PlanModule(root, plan).eval()
