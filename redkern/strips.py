"""Row-strip inference on the CPU: a whole image through every layer, a strip of rows at a time.

A plan whose every step is a fused convolution that keeps the image's size (3x3 with padding 1,
5x5 with padding 2...: RED-Net, VDSR, DnCNN) needs, for rows ``[a, b)`` of a layer's output,
only rows ``[a - r, b + r)`` of its input (``r``: the layer's vertical radius). So instead of
holding every feature map whole (RED30 on a 4096x4096 image: 9 maps of 4.3 GB at once, far
more than fits, so the image had to be cut into overlapping windows), each map keeps only the
rows its readers still need (a ``_RowWindow``), and the layers take turns: the input gives
``strip`` rows, each layer then makes every row its inputs allow, ``r`` rows behind the layer it
reads. A map read by several layers (a skip) holds the rows its furthest-behind reader still
needs and the strip being made; a map read by one layer only needs its strip from the write to
that read, so such maps borrow strip buffers from one shared set and keep just ``2 r`` rows
between strips. RED30 at 4096 wide holds about 1.4 GB in all. Every kernel call covers a strip
of about 256K pixels, a 512x512 image's worth (``STRIP_PIXELS``). Nothing is computed twice: the result equals whole-image inference to float rounding (the Winograd
tiles start at each strip's first row instead of the image's).

The kernels get vertical padding 0 (``_strip_padding``) on the strip and its neighbour rows;
the image's own zero padding above and below is zero rows kept at the window's ends.

``strip_problem(plan)`` says why a plan cannot run this way (``None`` when it can); the executor
(``"kernels"`` mode on the CPU) runs an input this way when ``use_strips`` says so.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .layer_plan import ConvStep, Plan, Ref

__all__ = ["strip_problem", "strip_rows", "first_conv", "use_strips", "strips_mode", "describe", "run_strips", "strip_peak_bytes", "STRIPS_ENV",
           "STRIP_PIXELS", "MEMORY_SAVING"]

STRIPS_ENV = "REDKERN_CPU_STRIPS"  # auto (default) | on | off
# Pixels per kernel call: about a 512x512 image. Each call costs ~0.1 ms of Python and more in
# the kernel's start and finish; RED30 at 1024x1024 measured 1.06x the whole image's time with
# strips of 64K pixels and 0.94x with 256K (Ice Lake Xeon, alternating runs).
STRIP_PIXELS = 1 << 18
MEMORY_SAVING = 2  # auto: strips where the whole maps would take more than this times their windows


def strip_problem(plan: Plan) -> str | None:
    """Why ``plan`` cannot run in row strips, or ``None`` when it can: one 4-D input; every step
    a fused convolution of stride 1, dilation 1 and one group that keeps the image's size (odd
    window, padding half of it, as a convolution); one output value, the last step's, read by
    no step."""
    if len(plan.inputs) != 1 or len(plan.example_shapes[0]) != 4:
        return "it takes more than one input" if len(plan.inputs) != 1 else "its input is not [N, C, H, W]"
    start = first_conv(plan)
    if start is None:
        return "it has no fused convolutions"
    convs = plan.steps[start:]
    for step in plan.steps[:start]:  # input checks and parameter reads, run as PyTorch runs them
        if any(step.dst in s.reads for s in convs) or step.dst in plan.output_values:
            return f"{step.name} runs in PyTorch"
    for step in convs:
        if not isinstance(step, ConvStep):
            return f"{step.name} runs in PyTorch"
        conv = step.conv
        if tuple(conv.stride) != (1, 1) or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
            return f"{step.name} has a stride, dilation or groups"
        (kh, kw) = step.kernel
        if kh % 2 == 0 or kw % 2 == 0 or step.radius() != ((kh - 1) // 2, (kw - 1) // 2) \
                or _conv_padding(step) != step.radius():
            return f"{step.name} ({step.describe()}) changes the image's size"
    out = plan.output
    last = plan.steps[-1].dst
    if not (isinstance(out, Ref) and out.value == last):
        return "its output is not its last step's"
    if any(last in s.reads for s in plan.steps):
        return "its output is read by a step"
    return None


def first_conv(plan: Plan) -> int | None:
    """The index of the plan's first fused convolution: the steps before it run as before; the
    row strips start there."""
    return next((i for i, s in enumerate(plan.steps) if isinstance(s, ConvStep)), None)


def _conv_padding(step: ConvStep) -> tuple[int, int]:
    (kh, kw), (ph, pw) = step.kernel, step.padding
    return (kh - 1 - ph, kw - 1 - pw) if step.transposed else (ph, pw)


def _strip_padding(step: ConvStep) -> tuple[int, int]:
    """The step's padding argument with none along the rows (as a convolution: a transposed
    step's ``kh - 1``), its column padding kept."""
    kh, _ = step.kernel
    return (kh - 1 if step.transposed else 0, step.padding[1])


def strip_rows(width: int) -> int:
    """Rows per strip for an image ``width`` wide: about ``STRIP_PIXELS`` pixels, a multiple of
    12 (both Winograd tiles' heights, 4 and 6) where that is at least 12, else of 4."""
    rows = STRIP_PIXELS / width
    if rows >= 12:
        return 12 * round(rows / 12)
    return max(4, 4 * round(rows / 4))


def use_strips(plan: Plan, x: Tensor) -> bool:
    """Whether the executor runs ``x`` through ``plan`` in row strips: ``REDKERN_CPU_STRIPS``
    ``on`` (wherever ``strip_problem`` allows), ``off``, or ``auto`` (the default): where the
    whole maps would take more than ``MEMORY_SAVING`` times the strips' windows (RED30 from
    about 1500x1500 up), since at equal memory the whole image runs as fast or faster."""
    mode = strips_mode()
    if mode == "off" or x.dim() != 4 or x.device.type != "cpu":
        return False
    # Decided once per plan, mode and input shape (it walks the plan: ~1 ms, a call's worth at 64x64).
    cache = plan.__dict__.setdefault("_strips_choices", {})
    key = (mode, tuple(x.shape), x.element_size())
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = strip_problem(plan) is None and (mode == "on" or _saves_memory(plan, key[1], key[2]))
    return cache[key]


def _saves_memory(plan: Plan, shape, itemsize: int) -> bool:
    whole, _ = plan.peak_bytes(shape, itemsize)
    return whole > MEMORY_SAVING * strip_peak_bytes(plan, shape, itemsize)


def strips_mode() -> str:
    """``REDKERN_CPU_STRIPS``: auto (unset or empty), on or off; anything else raises."""
    mode = os.environ.get(STRIPS_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"{STRIPS_ENV}={mode!r}: choose auto, on or off")
    return mode


def describe(plan: Plan) -> str:
    """The plan report's line on the CPU schedule: whole maps, or row strips and from when."""
    problem = strip_problem(plan)
    if problem is not None:
        return f"CPU schedule: whole feature maps (not row strips: {problem})"
    mode = strips_mode()
    if mode == "off":
        return f"CPU schedule: whole feature maps ({STRIPS_ENV}=off)"
    strip = f"row strips of about {STRIP_PIXELS} pixels"
    if mode == "on":
        return f"CPU schedule: {strip} ({STRIPS_ENV}=on)"
    return (f"CPU schedule: {strip} where whole feature maps would take over {MEMORY_SAVING}x their "
            f"memory, whole maps below ({STRIPS_ENV}=auto)")


class _RowWindow:
    """Rows ``[lo, hi)`` of one image's feature map, stored NHWC as ``[rows, W, C]``; rows
    ``-pad .. -1`` and ``H .. H + pad - 1`` are the zero padding its readers see. Rows before
    ``keep`` are no longer needed and are dropped when room is wanted.

    A map read by one layer only (``bodies`` given) needs its strip's rows just from the write
    to that read: afterwards ``lend`` keeps the few rows the next read needs in ``carry`` and
    hands the buffer back to ``bodies``, shared by all such maps, so that RED30 holds two
    strips of them at a time, not one per layer."""

    def __init__(self, width: int, channels: int, dtype, pad: int, capacity: int, alloc, bodies=None):
        self.pad, self.lo, self.hi, self.keep = pad, -pad, -pad, -pad
        self.alloc, self.bodies = alloc, bodies
        self.spent: list[Tensor] = []  # buffers outgrown, for the caller to reuse
        self.carried = 0  # rows [lo, lo + carried) are in carry while the buffer is lent
        if bodies is None:
            self.buf, self.carry = alloc((max(capacity, 2 * pad + 1), width, channels), dtype), None
            if pad:
                self.append(pad).zero_()
        else:  # no body until the first strip is written: the top padding waits in carry
            self.buf, self.carry = None, alloc((4 * pad + 1, width, channels), dtype)
            self.carry[:pad] = 0
            self.carried, self.hi = pad, 0

    def append(self, n: int) -> Tensor:
        """The next ``n`` rows ``[hi, hi + n)`` as an NHWC ``[1, C, n, W]`` view, to be written."""
        self._borrow()
        if self.hi + n - self.lo > self.buf.shape[0]:
            self._make_room(n)
        start = self.hi - self.lo
        self.hi += n
        return _nchw_view(self.buf[start:start + n])

    def rows(self, a: int, b: int) -> Tensor:
        """Rows ``[a, b)`` as an NHWC ``[1, C, b - a, W]`` view."""
        assert self.lo <= a and b <= self.hi, (a, b, self.lo, self.hi)
        self._borrow()
        return _nchw_view(self.buf[a - self.lo:b - self.lo])

    def _borrow(self) -> None:
        if self.buf is None:  # lent: a body again, the carried rows at its front
            self.buf = self.bodies.take()
            self.buf[:self.carried] = self.carry[:self.carried]

    def lend(self) -> None:
        """After a read: the rows still needed to ``carry``, the buffer back to the bodies (a map
        read by one layer; kept where more rows are still needed than ``carry`` holds)."""
        live = self.hi - self.keep
        if self.bodies is None or self.buf is None or live > self.carry.shape[0]:
            return
        self.carry[:live] = self.buf[self.keep - self.lo:self.hi - self.lo]
        self.bodies.give(self.buf)
        self.buf, self.lo, self.carried = None, self.keep, live

    def _make_room(self, n: int) -> None:
        kept, shift = self.hi - self.keep, self.keep - self.lo
        if kept + n > self.buf.shape[0]:  # a reader lags further than the window holds
            grown = self.alloc((2 * (kept + n),) + tuple(self.buf.shape[1:]), self.buf.dtype)
            grown[:kept] = self.buf[shift:shift + kept]
            self.spent.append(self.buf)
            self.buf = grown
        else:  # move the kept rows to the front, in pieces whose source and target do not overlap
            for i in range(0, kept, max(shift, 1)):
                j = min(kept, i + shift)
                self.buf[i:j] = self.buf[i + shift:j + shift]
        self.lo = self.keep

    def buffers(self) -> list[Tensor]:
        return [t for t in (self.buf, self.carry, *self.spent) if t is not None]


class _Bodies:
    """The strip buffers that maps read by one layer borrow (``_RowWindow.lend``)."""

    def __init__(self, shape, dtype, alloc):
        self.shape, self.dtype, self.alloc = shape, dtype, alloc
        self.spare: list[Tensor] = []

    def take(self) -> Tensor:
        return self.spare.pop() if self.spare else self.alloc(self.shape, self.dtype)

    def give(self, buf: Tensor) -> None:
        self.spare.append(buf)


def _empty(shape, dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype)


def _nchw_view(rows: Tensor) -> Tensor:
    return rows.unsqueeze(0).permute(0, 3, 1, 2)


def _readers(plan: Plan) -> dict[int, list[tuple[int, int]]]:
    """``{value: [(step index, rows it reads above and below a row it makes)]}``: 0 for an
    extra, the step's vertical radius for its input."""
    found: dict[int, list[tuple[int, int]]] = {}
    start = first_conv(plan)
    for i in range(start, len(plan.steps)):
        step = plan.steps[i]
        found.setdefault(step.src, []).append((i, step.radius()[0]))
        if step.extra is not None:
            found.setdefault(step.extra, []).append((i, 0))
    return found


def _channels(plan: Plan, input_channels: int) -> dict[int, int]:
    """Each value's channel count: the input's, and every step's output."""
    return {plan.inputs[0]: input_channels, **{st.dst: st.out_channels for st in plan.steps[first_conv(plan):]}}


def _read_once(plan: Plan, readers: dict) -> set[int]:
    """The maps one layer reads, as its input, and nothing else: they may share bodies."""
    return {v for v, rs in readers.items() if v != plan.inputs[0] and len(rs) == 1
            and plan.steps[rs[0][0]].src == v and plan.steps[rs[0][0]].extra != v}


def _lags(plan: Plan) -> dict[int, int]:
    """Rows each value's last made row lies behind the input's in the steady state: a step's
    output lags its input by the step's radius, and its extra by nothing."""
    lag = {plan.inputs[0]: 0}
    for step in plan.steps[first_conv(plan):]:
        lag[step.dst] = max(lag[step.src] + step.radius()[0], lag[step.extra] if step.extra is not None else 0)
    return lag


def _window_rows(plan: Plan, strip: int) -> dict[int, int]:
    """Rows each read value's window holds in the steady state: the rows its furthest-behind
    reader still reads, the strip being made, and its padding."""
    lag = _lags(plan)
    rows = {}
    for v, rs in _readers(plan).items():
        behind = max(lag[plan.steps[i].dst] - lag[v] + r for i, r in rs)
        rows[v] = behind + strip + 2 * max(r for _, r in rs)
    return rows


def strip_peak_bytes(plan: Plan, input_shape, itemsize: int) -> int:
    """About the most memory a row-strip run's feature-map windows hold for an input of
    ``input_shape`` (one image at a time; the whole output not counted): twice each steady
    state for the maps read by several layers, and for those read once a few carried rows
    each and three shared strip bodies (one written, one read, one spare)."""
    _, c, h, w = input_shape
    start = first_conv(plan)
    channels = _channels(plan, c)
    s = strip_rows(w)
    rows = _window_rows(plan, s)
    lone = _read_once(plan, _readers(plan))
    pad = max(st.radius()[0] for st in plan.steps[start:])
    held = sum(2 * min(n, h + 2) * w * channels[v] for v, n in rows.items() if v not in lone)
    held += sum((4 * pad + 1) * w * channels[v] for v in lone)
    held += 3 * max((channels[v] for v in lone), default=0) * (s + 4 * pad + 4) * w
    return held * itemsize


def run_strips(plan: Plan, x: Tensor, layers: dict[int, tuple], kernel_args, free: dict | None = None) -> Tensor:
    """``plan``'s output for ``x`` ``[N, C, H, W]`` (CPU), one image and one strip of rows at a
    time: a dense NHWC tensor. ``layers``: the executor's per-step ``(backend name, module,
    label)``, every step from ``first_conv`` on a backend with ``conv2d`` (the steps before it
    already run); ``kernel_args(step, x)``: a step's
    arguments to it (weights, epilogue...), ``extra`` left for this schedule to fill. ``free``:
    ``{(shape, dtype, device): [tensors]}`` (a ``BufferPool``'s), the windows' buffers of an earlier call to reuse (fresh
    memory costs a page fault per 4 KiB written), given back there at the end."""
    problem = strip_problem(plan)
    if problem is not None:
        raise ValueError(f"{plan.root} cannot run in row strips: {problem}")
    n, c, h, w = x.shape
    s = strip_rows(w)
    last = plan.steps[-1]
    y = _empty((n, h, w, last.out_channels), x.dtype).permute(0, 3, 1, 2)
    readers = _readers(plan)
    pads = {v: max(r for _, r in rs) for v, rs in readers.items()}
    pads_max = max(pads.values())
    start = first_conv(plan)
    channels = _channels(plan, c)
    capacity = _window_rows(plan, s)
    args = {i: kernel_args(plan.steps[i], x) for i in range(start, len(plan.steps))}
    source = plan.inputs[0]
    free = {} if free is None else free

    def alloc(shape, dtype):
        stack = free.get((shape, dtype, x.device))
        return stack.pop() if stack else _empty(shape, dtype)

    lone = _read_once(plan, readers)
    for b in range(n):
        # Twice the steady state's rows, so that dropping old rows (moving the few kept ones to
        # the front) comes at most once a strip; maps read once share strip-sized bodies.
        bodies = {c: _Bodies((s + 4 * pads_max + 4, w, c), x.dtype, alloc)
                  for c in {channels[v] for v in lone}}
        windows = {v: _RowWindow(w, channels[v], x.dtype, pads[v], min(h + 2 * pads[v], 2 * capacity[v]), alloc,
                                 bodies[channels[v]] if v in lone else None)
                   for v in readers}
        made = dict.fromkeys([*readers, last.dst], 0)  # rows of each value made so far
        reads_from = {(v, i): -pads[v] for v, rs in readers.items() for i, _ in rs}  # each reader's next first row
        while made[last.dst] < h:
            if made[source] < h:  # the input's next strip
                a, e = made[source], min(h, made[source] + s)
                windows[source].append(e - a).copy_(x[b:b + 1, :, a:e, :])
                _made(windows[source], made, source, e, h)
            for i in range(start, len(plan.steps)):
                step = plan.steps[i]
                a, r = made[step.dst], step.radius()[0]
                readable = h + r if made[step.src] >= h else made[step.src]  # past the end: the padding
                e = min(h, readable - r, a + s)
                if step.extra is not None:
                    e = min(e, made[step.extra])
                if e <= a:
                    continue
                call = dict(args[i], padding=_strip_padding(step))
                weight, bias = call.pop("weight"), call.pop("bias")
                extra = windows[step.extra].rows(a, e) if step.extra is not None else None
                out = y[b:b + 1, :, a:e, :] if step is last else windows[step.dst].append(e - a)
                layers[i][1].conv2d(windows[step.src].rows(a - r, e + r), weight, bias, extra, **call, out=out)
                reads_from[step.src, i] = e - r
                if step.extra is not None:
                    reads_from[step.extra, i] = e
                for v in step.reads:
                    windows[v].keep = min(reads_from[v, j] for j, _ in readers[v])
                    windows[v].lend()
                if step is last:
                    made[last.dst] = e
                else:
                    _made(windows[step.dst], made, step.dst, e, h)
        held = [t for window in windows.values() for t in window.buffers()]
        for t in held + [t for body in bodies.values() for t in body.spare]:
            free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)
    return y


def _made(window: _RowWindow, made: dict, value: int, end: int, h: int) -> None:
    """Rows up to ``end`` of ``value`` are made: past the last row, its bottom padding too."""
    made[value] = end
    if end >= h and window.pad:
        window.append(window.pad).zero_()
