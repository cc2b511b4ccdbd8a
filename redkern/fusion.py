"""``redkern.fuse(module)``: the same module, its convolutions run by the fused kernels.

    fast = redkern.fuse(model)              # same parameters (shared), same state_dict keys
    fast(x)                                 # equals model(x) to float rounding
    print(redkern.explain(fast))            # per layer: backend, algorithm, what was fused

The module's ``forward`` is traced once into a layer plan (``redkern.plan``); the fused module
runs that plan with the one executor (``redkern.executor``). Everything that is not a fusable
convolution runs as PyTorch runs it, and the report says so. A module whose ``forward`` does not
trace whole (Python control flow on values, NumPy on shapes...) keeps its own ``forward`` and
is fused part by part: each child that traces is fused, each that does not is descended into,
and ``explain`` shows where tracing stopped and why.

The fused module is an instance of a subclass of the module's own class, sharing its
submodules and parameters: ``isinstance`` checks, attributes and methods still work, and
``load_state_dict``, ``.to()``, ``.eval()`` and hooks act on the shared parameters. Its plan,
per-layer backends and pooled feature maps are not state: pickling, ``copy.deepcopy`` and
``torch.save`` drop them, and the copy makes its own (and is fused again on loading).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import backends as _backends
from .executor import BufferPool, LayerBackends, needs_ops, run
from .graphs import GraphReplay, eligible as graph_eligible
from .validation import check_finite
from .layer_plan import RUNTIME_ATTRIBUTES, Plan, PlanError, own_containers, plan as make_plan, reference_view

__all__ = ["fuse", "FusedForward", "is_fused"]

# plan, backends and pooled maps (never pickled); the backend asked for; the NaN/inf policy
_RUNTIME, _BACKEND, _NONFINITE = RUNTIME_ATTRIBUTES
NONFINITE_POLICIES = ("raise", "propagate")
_UNTRACED = "_redkern_untraced"  # why a partly fused module's own forward did not trace


class _Runtime:
    def __init__(self, plan: Plan, backend: str):
        self.plan = plan
        self.layers = LayerBackends(plan, backend)
        self.pool = BufferPool()
        self.graphs: GraphReplay | None = None  # set while cuda_graphs is on


class FusedForward:
    """Mixin: ``forward`` runs the plan of the reference class's ``forward`` (the class this
    one derives from, ``_redkern_reference_class``) through the executor."""

    _redkern_reference_class: type
    _redkern_dynamic = False  # a class made by fuse(), which pickle cannot find by name

    @property
    def backend(self) -> str:
        """The backend asked for: ``"auto"`` or a name from ``redkern.backends()``."""
        return self.__dict__.get(_BACKEND, "auto")

    @property
    def nonfinite(self) -> str:
        """``"raise"`` (the default): inputs holding NaN or inf are refused with
        ``NonFiniteInput`` (one cheap pass over each input per call), because the fused kernels
        would spread them further than PyTorch does. ``"propagate"``: let them through; every
        output PyTorch would make NaN is NaN here too, and some more: a Winograd layer computes
        4x4 outputs from one 6x6 input window, so a NaN reaches up to 3 more pixels on a side
        per such layer. Not checked while compiling or tracing."""
        return self.__dict__.get(_NONFINITE, "raise")

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        if value not in NONFINITE_POLICIES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {value!r}")
        self.__dict__[_NONFINITE] = value

    @property
    def pair_layers(self) -> bool:
        """Whether eager inference runs consecutive layers two to a kernel launch where the
        backend can (Triton: 3x3 layers with padding 1, the first's output kept on chip;
        ``redkern.explain`` says which). On by default, off with ``REDKERN_PAIR_LAYERS=0``;
        set it to compare. Autograd and ``torch.compile`` always run one layer per op."""
        return self._redkern_runtime_state().layers.pair_layers

    @pair_layers.setter
    def pair_layers(self, value: bool) -> None:
        self._redkern_runtime_state().layers.pair_layers = bool(value)

    @property
    def cuda_graphs(self) -> bool:
        """Whether eager inference on CUDA inputs replays one captured CUDA graph of the whole
        call (``redkern.graphs``): captured at the first call of an input shape, again whenever
        the shapes, dtype, device, weights, ``pair_layers`` or a module's training mode change;
        outputs are copies. Off by
        default; ignored for CPU inputs, autograd and ``torch.compile``."""
        return self._redkern_runtime_state().graphs is not None

    @cuda_graphs.setter
    def cuda_graphs(self, value: bool) -> None:
        rt = self._redkern_runtime_state()
        rt.graphs = (rt.graphs or GraphReplay()) if value else None

    def forward(self, *inputs):
        rt = self._redkern_runtime_state()
        if self.nonfinite == "raise" and not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            check_finite(inputs, f"{type(self).__name__}.forward")
        graphs = rt.graphs
        if graphs is not None and graph_eligible(inputs) and not needs_ops(inputs, self.parameters()):
            tensors = [*self.parameters(), *self.buffers()]
            return graphs(lambda *xs: run(rt.plan, self, xs, backend=self.backend, layers=rt.layers,
                                          mode="kernels"),
                          inputs, tensors, extra_key=(rt.layers.pair_layers, *(m.training for m in self.modules())))
        return run(rt.plan, self, inputs, backend=self.backend, layers=rt.layers, pool=rt.pool)

    @property
    def plan(self) -> Plan:
        """The layer plan this module runs (``print`` it to see every step)."""
        return self._redkern_runtime_state().plan

    @property
    def receptive_field_radius(self) -> int | None:
        """Input pixels an output pixel depends on in any direction, read off the plan
        (``Plan.receptive_field_radius``; ``None`` where a step's reach is unknown): the halo
        that makes tiled inference exact, for any fused network."""
        return self._redkern_runtime_state().plan.receptive_field_radius()

    def backends_for(self, device, dtype) -> dict[str, tuple[str, str]]:
        """Per fused layer, ``(backend, algorithm)`` on ``device`` in ``dtype``: resolved once
        and kept for every later call (``backend`` ``"pytorch"`` where ``"auto"`` found none
        that runs the layer, the reason as the algorithm). Raises ``BackendUnavailable`` or
        ``TypeError`` (a dtype no backend here takes) now rather than mid-image."""
        rt = self._redkern_runtime_state()
        chosen = rt.layers.for_call(torch.device(device), dtype)
        return {rt.plan.steps[i].name: (name, label) for i, (name, _, label) in chosen.items()}

    def release_buffers(self) -> None:
        """Free the feature maps kept from the last inference call (and its CUDA graph)."""
        rt = self.__dict__.get(_RUNTIME)
        if rt is not None:
            rt.pool.clear()
            if rt.graphs is not None:
                rt.graphs.clear()

    def _redkern_runtime_state(self) -> _Runtime:
        rt = self.__dict__.get(_RUNTIME)
        if rt is None:  # first call, or a copy restored by pickle or deepcopy
            rt = self.__dict__.setdefault(_RUNTIME, _Runtime(make_plan(reference_view(self)), self.backend))
        return rt

    def __setstate__(self, state):
        super().__setstate__(state)
        self._redkern_runtime_state()  # now, not inside a first call that may be being compiled

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop(_RUNTIME, None)
        return state

    def __reduce_ex__(self, protocol):
        if type(self)._redkern_dynamic:
            return (_fuse_again, (reference_view(self, detach=True), self.backend, self.nonfinite))
        return super().__reduce_ex__(protocol)


def _fuse_again(module: nn.Module, backend: str, nonfinite: str = "raise") -> nn.Module:
    return fuse(module, backend=backend, nonfinite=nonfinite)


_CLASSES: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    if issubclass(cls, FusedForward):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Fused{cls.__name__}", (FusedForward, cls),
                             {"__module__": cls.__module__, "_redkern_reference_class": cls,
                              "_redkern_dynamic": True,
                              "__doc__": f"{cls.__name__} run through redkern's fused kernels (redkern.fuse)."})
    return _CLASSES[cls]


def is_fused(module: nn.Module) -> bool:
    """Whether ``module`` (or, for a partly fused one, any part of it) runs fused kernels."""
    return any(isinstance(m, FusedForward) for m in module.modules())


def fuse(module: nn.Module, *, backend: str = "auto", example_inputs=None, nonfinite: str = "raise") -> nn.Module:
    """``module`` with its convolutions run by redkern's fused kernels (see the module docstring).

    ``backend``: ``"auto"`` (per layer, the device's preferred backend that can run it, else
    PyTorch, as the report says) or a name from ``redkern.backends()`` (every fused layer on
    it, or ``BackendUnavailable`` naming the layer it cannot run). ``example_inputs``: as for
    ``redkern.plan``. ``nonfinite``: what to do with NaN/inf inputs (``FusedForward.nonfinite``).
    Returns a new module sharing ``module``'s parameters; ``module`` itself is left as it was.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"fuse: nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"fuse: expected an nn.Module, got {type(module).__name__}")
    if backend not in _backends.BACKEND_NAMES:
        raise ValueError(f"fuse: unknown backend {backend!r}; choose one of {_backends.BACKEND_NAMES}")
    if isinstance(module, FusedForward):
        module = reference_view(module, detach=True)
    try:
        plan = make_plan(module, example_inputs)
    except PlanError as e:
        return _fuse_parts(module, backend, str(e), nonfinite)
    fused = copy.copy(module)
    own_containers(fused)
    fused.__class__ = _fused_class(type(module))
    fused.__dict__[_BACKEND] = backend
    fused.__dict__[_NONFINITE] = nonfinite
    fused.__dict__[_RUNTIME] = _Runtime(plan, backend)
    return fused


def _fuse_parts(module: nn.Module, backend: str, why: str, nonfinite: str) -> nn.Module:
    """``module`` with its own forward, each child that holds a convolution fused."""
    whole = copy.copy(module)
    own_containers(whole)
    whole.__dict__[_UNTRACED] = why
    for name, child in module.named_children():
        if any(isinstance(m, nn.modules.conv._ConvNd) for m in child.modules()):
            whole._modules[name] = fuse(child, backend=backend, nonfinite=nonfinite)
    return whole


def untraced_reason(module: nn.Module) -> str | None:
    """Why ``fuse`` had to fuse this module part by part, or None."""
    return module.__dict__.get(_UNTRACED)

