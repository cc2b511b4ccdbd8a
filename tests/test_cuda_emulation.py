"""The CUDA C++ kernels (csrc/cuda), run on the CPU through our CUDA emulation (csrc/cuda_emu).

``redkern._cuda_emu`` is the kernel source that nvcc builds into ``redkern._cuda``, compiled
by the host compiler against csrc/cuda_emu/cuda_emu.h: blocks run one after another, the
threads of a block concurrently (one host thread each) with a real barrier, shared memory
poisoned with NaN before every block, and wmma warp-collective calls checked lane by lane.

Layers come from ``redkern.testing`` (``layer_case``, every epilogue of ``EPILOGUES``) and
are compared with its float64 ``reference``, written into outputs poisoned with NaN and
fenced by guard zones. Both kernel families (3x3 padding 1, 1x1 padding 0), transposed or
not, in fp32/fp16/bf16. Planted bugs (a missing barrier, a shifted halo, unzeroed padding
channels, one slope for every channel) must make the same checks fail. Kernel sizes this
backend does not run must be refused with ``BackendUnavailable`` naming the layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redkern
from redkern import testing as T
from redkern.backends import cuda as cuda_backend
from redkern.backends.common import BackendUnavailable, is_channels_last
from redkern.epilogue import Act, Residual

try:
    from redkern import _cuda_emu as emu
except ImportError as e:  # always built (CMakeLists.txt): its absence is a broken build
    raise ImportError(f"redkern._cuda_emu is missing; rebuild the package ({e})") from e

ROOT = Path(__file__).resolve().parents[1]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNELS = (3, 1)  # the kernel sizes this backend runs (3x3 padding 1, 1x1 padding 0)
EPILOGUE_NAMES = tuple(T.EPILOGUES)


# --- helpers -------------------------------------------------------------------------------

def make_case(n, cin, cout, h, w, *, kernel=3, padding=None, transposed=False, epilogue="relu",
              dtype=torch.float32, seed=None) -> T.LayerCase:
    """``testing.layer_case`` with a generator seeded from the arguments (reproducible)."""
    key = seed if seed is not None else zlib.crc32(repr((n, cin, cout, h, w, kernel, padding,
                                                          transposed, epilogue, dtype)).encode())
    return T.layer_case(n, cin, cout, h, w, kernel=kernel, padding=padding, transposed=transposed,
                        epilogue=epilogue, dtype=dtype, generator=torch.Generator().manual_seed(key))


GUARD = 64  # elements of NaN on each side of the output, which must stay NaN


def run_emulated(case: T.LayerCase, **options) -> torch.Tensor:
    """The emulated kernel's NHWC output, written into a NaN-poisoned, guarded buffer."""
    n, cout, oh, ow = case.out_shape
    numel = n * cout * oh * ow
    buf = torch.full((numel + 2 * GUARD,), float("nan"), dtype=case.x.dtype)
    out = buf[GUARD:GUARD + numel].view(n, oh, ow, cout).permute(0, 3, 1, 2)
    y = cuda_backend.launch_conv2d(emu, *case.tensors, **case.options, out=out, **options)
    assert y.data_ptr() == out.data_ptr()
    assert buf[:GUARD].isnan().all() and buf[-GUARD:].isnan().all(), "wrote outside the output"
    return y


def check(case: T.LayerCase, **options) -> torch.Tensor:
    """Every output element written (no NaN left) and within the dtype's tolerance."""
    got = run_emulated(case, **options)
    T.assert_close(got, T.reference(case), T.TOLERANCE[case.x.dtype])
    return got


def pick(seq, *key):
    """A fixed element of ``seq`` for this parameter combination: spreads the epilogues (or
    layouts) over the shape cases without multiplying the test count."""
    return seq[zlib.crc32(repr(key).encode()) % len(seq)]


# --- the kernels against the reference ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_every_epilogue(epilogue, kernel, dtype):
    """Every act/residual/act2 combination, conv and transposed, odd channel counts."""
    for transposed in (False, True):
        check(make_case(2, 5, 7, 5, 9, kernel=kernel, transposed=transposed, epilogue=epilogue,
                        dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64)])
def test_matches_reference(cin, cout, kernel, dtype):
    epilogue = pick(EPILOGUE_NAMES, cin, cout, kernel, dtype)
    check(make_case(2, cin, cout, 17, 9, kernel=kernel, transposed=cin == cout,
                    epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (7, 5), (9, 17)])
def test_odd_sizes(h, w, kernel, dtype):
    cin, cout = pick([(1, 64), (64, 3), (3, 64), (13, 33)], h, w, kernel, dtype)
    epilogue = pick(EPILOGUE_NAMES, h, w, kernel, dtype, "odd")
    check(make_case(1 if h * w < 10 else 2, cin, cout, h, w, kernel=kernel,
                    transposed=(h + w) % 2 == 1, epilogue=epilogue, dtype=dtype))


EDGES = {
    3: [
        (1, 128, 64, 9, 16),   # several input-channel chunks
        (1, 64, 128, 8, 17),   # two output-channel blocks
        (2, 5, 7, 6, 11),      # channel counts no vector or tile divides
        (1, 8, 24, 10, 3),     # vector loads with zero-padded channels
        (1, 20, 33, 4, 33),    # a partial last chunk, a partial last channel block
        (3, 16, 16, 33, 40),   # many tiles in both directions
    ],
    1: [
        (1, 136, 64, 9, 16),   # several input-channel chunks, a partial last one
        (1, 64, 128, 8, 17),   # two output-channel blocks
        (2, 5, 7, 6, 11),      # channel counts no vector or tile divides
        (1, 8, 24, 10, 3),     # vector loads with zero-padded channels
        (3, 72, 9, 7, 13),     # 273 pixels: blocks that span images, a partial last block
        (2, 33, 40, 16, 16),   # whole blocks only (4 of 128 pixels)
    ],
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel,n,cin,cout,h,w",
                         [(k, *shape) for k in KERNELS for shape in EDGES[k]])
def test_channel_and_tile_edges(kernel, n, cin, cout, h, w, dtype):
    epilogue = pick(EPILOGUE_NAMES, kernel, n, cin, cout, h, w, dtype)
    check(make_case(n, cin, cout, h, w, kernel=kernel, transposed=(cin + cout) % 2 == 1,
                    epilogue=epilogue, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_serialized_schedule(kernel, dtype):
    """One thread at a time from barrier to barrier, order reversed at each barrier."""
    check(make_case(2, 64, 64, 9, 17, kernel=kernel, epilogue="relu_add_relu", dtype=dtype),
          schedule="serialized")
    check(make_case(1, 3, 16, 5, 7, kernel=kernel, transposed=True, epilogue="prelu_then_leaky",
                    dtype=dtype), schedule="serialized")


@pytest.mark.parametrize("kernel", KERNELS)
def test_channels_last_input_and_skip(kernel):
    case = make_case(2, 16, 32, 6, 10, kernel=kernel, transposed=True, epilogue="relu_add_relu")
    case.x = case.x.contiguous(memory_format=torch.channels_last)
    case.extra = case.extra.contiguous(memory_format=torch.channels_last)
    check(case)


@pytest.mark.parametrize("kernel", KERNELS)
def test_bias_none_and_fresh_output(kernel):
    case = make_case(1, 6, 10, 4, 5, kernel=kernel, epilogue="tanh")
    y = cuda_backend.launch_conv2d(emu, case.x, case.weight, None, None, **case.options)
    assert is_channels_last(y) and y.shape == case.out_shape
    case.bias = torch.zeros_like(case.bias)
    T.assert_close(y, T.reference(case), T.TOLERANCE[torch.float32])


def _assert_nan_matches(got, want, tol):
    got, want = got.double(), want.double()
    assert torch.equal(got.isnan(), want.isnan()), (
        f"NaN at {int(got.isnan().sum())} outputs, the reference has {int(want.isnan().sum())}")
    keep = ~want.isnan()
    T.assert_close(got[keep], want[keep], tol)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("epilogue", EPILOGUE_NAMES)
def test_nan_propagates(epilogue, kernel):
    """A NaN in the input reaches exactly the outputs it touches through every activation
    (ReLU, leaky, PReLU, tanh must not hide it), and a NaN in the residual its own output."""
    case = make_case(1, 8, 8, 6, 7, kernel=kernel, epilogue=epilogue)
    case.x[0, 3, 2, 4] = float("nan")
    if case.extra is not None:
        case.extra[0, 5, 4, 1] = float("nan")
    want = T.reference(case)
    touched = 9 * 8 if kernel == 3 else 8
    assert int(want.isnan().sum()) == touched + (case.extra is not None)
    _assert_nan_matches(run_emulated(case), want, T.TOLERANCE[torch.float32])


def test_weight_packed_once_and_again_after_update():
    case = make_case(1, 16, 16, 5, 5)
    shape = emu.packed_weight_shape(emu.DTYPE_CODES["float32"], 3, 16, 16)
    key = (id(case.weight), (emu.__name__, False, torch.float32, shape))
    check(case)
    packed = cuda_backend._weights._entries[key][1]
    check(case)
    assert cuda_backend._weights._entries[key][1] is packed  # prepared once
    with torch.no_grad():
        case.weight.mul_(-1.0)  # an in-place update (an optimizer step) must be seen
    check(case)
    assert cuda_backend._weights._entries[key][1] is not packed


@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_weight_layout(kernel):
    w = torch.randn(5, 3, kernel, kernel)  # ConvTranspose2d [cin=5, cout=3]
    packed = cuda_backend.pack_weight(w, True, 16, 16)
    assert packed.shape == (kernel * kernel, 16, 16)
    conv = w.transpose(0, 1).flip(2, 3)  # [cout, cin, ky, kx]
    for ky in range(kernel):
        for kx in range(kernel):
            assert torch.equal(packed[ky * kernel + kx, :5, :3], conv[:, :, ky, kx].t())
    assert not packed[:, 5:].any() and not packed[:, :, 3:].any()


# --- what the backend runs, and what it refuses ---------------------------------------------

def test_module_agrees_with_python_on_codes_and_kernels():
    assert emu.ACT_CODES == {a.name: a.value for a in Act}
    assert emu.RESIDUAL_CODES == {r.name: r.value for r in Residual}
    assert dict(emu.KERNELS) == cuda_backend.KERNELS


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS)
def test_algorithm_names_the_kernel_that_runs(kernel, dtype):
    label = cuda_backend.algorithm(5, 7, kernel, kernel // 2, False, dtype)
    assert label == cuda_backend.algorithm(5, 7, (kernel, kernel), (kernel // 2,) * 2, True, dtype)
    want = {(3, True): "WMMA implicit GEMM 3x3", (1, True): "WMMA GEMM 1x1",
            (3, False): "fp32 CUDA-core 3x3", (1, False): "fp32 CUDA-core 1x1"}
    assert label == want[kernel, dtype != torch.float32]
    for cin, cout in [(1, 1), (5, 7), (64, 64), (72, 3)]:
        name, smem = emu.kernel_for(emu.DTYPE_CODES[str(dtype).removeprefix("torch.")], kernel, cin, cout)
        assert name.startswith(f"conv{kernel}x{kernel}_") and ("wmma" in name) == (dtype != torch.float32)
        assert 0 < smem <= 227 * 1024


REFUSED = [(k, p, tr) for k, p in T.KERNELS for tr in (False, True)
           if (k - 1 - p if tr else p) != cuda_backend.KERNELS.get(k, -1)]


def test_refused_layers_cover_every_other_kernel_size():
    sizes = {k for k, _, _ in REFUSED}
    assert sizes >= {k for k, _ in T.KERNELS if k not in KERNELS} and {3} <= sizes


@pytest.mark.parametrize("kernel,padding,transposed", REFUSED)
def test_refused_kernel_sizes_name_the_layer(kernel, padding, transposed):
    kind = "ConvTranspose2d" if transposed else "Conv2d"
    layer = f"{kernel}x{kernel} {kind} 4->6 with padding {(padding, padding)}"
    with pytest.raises(BackendUnavailable, match="runs 3x3 convolutions with padding 1 and 1x1 "
                       "with padding 0") as info:
        cuda_backend.algorithm(4, 6, kernel, padding, transposed, torch.float32)
    assert layer in str(info.value)
    if transposed:
        assert f"the convolution with padding {(kernel - 1 - padding,) * 2}" in str(info.value)
    # conv2d refuses the same layer before touching anything.
    case = make_case(1, 4, 6, 9, 9, kernel=kernel, padding=padding, transposed=transposed)
    with pytest.raises(BackendUnavailable, match=layer.replace("(", r"\(").replace(")", r"\)")):
        cuda_backend.launch_conv2d(emu, *case.tensors, **case.options)
    # The module itself refuses it too.
    with pytest.raises(ValueError, match="runs 3x3 convolutions with padding 1 and 1x1 with padding 0"):
        _call_module(kernel=kernel, padding=kernel - 1 - padding if transposed else padding)


def test_non_square_kernels_and_unsupported_dtypes_are_refused():
    with pytest.raises(BackendUnavailable, match=r"not a 1x3 Conv2d 4->6 with padding \(0, 1\)"):
        cuda_backend.algorithm(4, 6, (1, 3), (0, 1), False, torch.float16)
    with pytest.raises(BackendUnavailable, match=r"not a 3x3 Conv2d 4->6 with padding \(1, 0\)"):
        cuda_backend.algorithm(4, 6, 3, (1, 0), False, torch.float16)
    with pytest.raises(BackendUnavailable, match="not float64"):
        cuda_backend.algorithm(4, 6, 3, 1, False, torch.float64)
    case = make_case(1, 4, 4, 3, 3)
    with pytest.raises(BackendUnavailable, match="not float64"):
        run_emulated(case.to(dtype=torch.float64))


# --- planted bugs: the checks above must catch them ---------------------------------------

PLANTED = [
    # (bug, kernel, cin, cout, dtype, epilogue): a configuration in which the bug has an effect
    ("skip_load_barrier", 3, 64, 64, torch.float32, "relu_add_relu"),
    ("skip_load_barrier", 3, 64, 64, torch.float16, "relu_add_relu"),
    ("skip_load_barrier", 1, 64, 64, torch.bfloat16, "relu"),
    ("skip_load_barrier", 1, 20, 24, torch.float32, "add_residual"),
    ("skip_reuse_barrier", 3, 64, 64, torch.float32, "relu_add_relu"),  # several chunks
    ("skip_reuse_barrier", 3, 3, 64, torch.bfloat16, "relu"),   # wmma: the epilogue reuses the tiles
    ("skip_reuse_barrier", 1, 3, 16, torch.float16, "identity"),  # the same, 1x1
    ("skip_reuse_barrier", 1, 64, 16, torch.float32, "tanh"),     # several chunks, 1x1
    ("halo_shift", 3, 64, 64, torch.float16, "relu_add_relu"),
    ("halo_shift", 3, 3, 16, torch.float32, "relu_add_relu"),
    ("halo_shift", 1, 8, 8, torch.float32, "scaled_residual"),
    ("halo_shift", 1, 16, 32, torch.bfloat16, "relu"),
    ("no_channel_zero_fill", 3, 3, 64, torch.float16, "relu_add_relu"),  # cin below the chunk
    ("no_channel_zero_fill", 3, 1, 8, torch.float32, "relu_add_relu"),
    ("no_channel_zero_fill", 1, 3, 16, torch.bfloat16, "identity"),
    ("no_channel_zero_fill", 1, 5, 8, torch.float32, "negated_residual"),
    ("shared_slope", 3, 8, 16, torch.float32, "prelu"),            # per-channel PReLU weights
    ("shared_slope", 1, 8, 24, torch.float16, "prelu_then_leaky"),
    ("shared_slope", 1, 4, 16, torch.bfloat16, "tanh_then_prelu"),  # act2's slopes
]


def test_every_planted_bug_is_exercised():
    assert sorted(emu.PLANTED_BUGS) == sorted({b for b, *_ in PLANTED})
    for kernel in KERNELS:  # and each in both kernel families
        assert {b for b, k, *_ in PLANTED if k == kernel} == set(emu.PLANTED_BUGS)


@pytest.mark.parametrize("schedule", ["concurrent", "serialized"])
@pytest.mark.parametrize("bug,kernel,cin,cout,dtype,epilogue", PLANTED, ids=lambda v: str(v))
def test_planted_bug_is_caught(bug, kernel, cin, cout, dtype, epilogue, schedule):
    case = make_case(1, cin, cout, 9, 17, kernel=kernel, transposed=kernel == 3,
                     epilogue=epilogue, dtype=dtype)
    want, tol = T.reference(case), T.TOLERANCE[dtype]
    T.assert_close(run_emulated(case, schedule=schedule), want, tol)
    # The serialized schedule is deterministic; the concurrent one interleaves differently
    # each time, and must catch the bug every time.
    for attempt in range(1 if schedule == "serialized" else 3):
        bad = run_emulated(case, schedule=schedule, planted_bug=bug)
        with pytest.raises(AssertionError):
            T.assert_close(bad, want, tol)


# --- property-based: random layers, epilogues, layouts, value ranges, schedules --------------

def _layout(t, layout):
    """The same values as ``t`` in NCHW, channels_last or a strided (every-other-column) view."""
    if t is None or layout == "nchw":
        return t
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


@settings(max_examples=int(os.environ.get("REDKERN_FUZZ_EXAMPLES", 40)), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(kernel=st.sampled_from(KERNELS), transposed=st.booleans(),
       epilogue=st.sampled_from(EPILOGUE_NAMES), n=st.integers(1, 2), cin=st.integers(1, 40),
       cout=st.integers(1, 72), h=st.integers(1, 12), w=st.integers(1, 12),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(["nchw", "channels_last", "strided"]),
       scale=st.sampled_from([1e-3, 1.0, 1e2]), schedule=st.sampled_from(["concurrent", "serialized"]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_against_reference(kernel, transposed, epilogue, n, cin, cout, h, w, dtype, layout,
                                scale, schedule, seed):
    """Any layer, epilogue, memory format and value range: every output written, and right."""
    case = make_case(n, cin, cout, h, w, kernel=kernel, transposed=transposed, epilogue=epilogue,
                     seed=seed)
    if Act.TANH in (case.epilogue.act, case.epilogue.act2):
        # tanh's output is O(1) whatever its input, so it cannot carry the error of a large
        # sum relative to its own size (and saturated, it tests nothing).
        scale = min(scale, 1.0)
    # Scale before rounding so the reference sees exactly the kernel's inputs.
    case.x, case.bias = case.x * scale, case.bias * scale
    if case.extra is not None:
        case.extra = case.extra * scale
    case = case.to(dtype=dtype)
    want = T.reference(case)
    case.x, case.extra = _layout(case.x, layout), _layout(case.extra, layout)
    T.assert_close(run_emulated(case, schedule=schedule), want, T.TOLERANCE[dtype])


# --- the emulator itself ---------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["concurrent", "serialized"])
def test_emulator_barrier_is_real(schedule):
    blocks, threads = 3, 128
    out = torch.zeros(blocks * threads, dtype=torch.int32)
    emu.selftest_exchange(out.data_ptr(), blocks, threads, True, schedule)
    t = torch.arange(threads)
    want = torch.cat([b * 1000 + (t + 1) % threads + 1 for b in range(blocks)]).to(torch.int32)
    assert torch.equal(out, want)


def test_emulator_missing_barrier_reads_unwritten_shared_memory():
    """Serialized: thread t runs to its end before t+1 starts, so it reads poison."""
    blocks, threads = 2, 64
    out = torch.zeros(blocks * threads, dtype=torch.int32)
    emu.selftest_exchange(out.data_ptr(), blocks, threads, False, "serialized")
    assert (out.view(blocks, threads)[:, :-1] == -1).all()  # 0xFFFFFFFF poison


@pytest.mark.parametrize("schedule", ["concurrent", "serialized"])
def test_emulator_shared_memory_is_poisoned(schedule):
    out = torch.zeros(96)
    emu.selftest_read_unwritten(out.data_ptr(), 96, schedule)
    assert out.isnan().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("a_col,b_col", [(False, False), (True, False), (False, True), (True, True)])
def test_emulator_wmma_gemm(dtype, a_col, b_col):
    a, b = torch.randn(16, 16).to(dtype), torch.randn(16, 16).to(dtype)
    c, d = torch.randn(16, 16), torch.full((16, 16), float("nan"))
    # The fragments read memory in the layout they are declared with.
    a_mem = a.t().contiguous() if a_col else a
    b_mem = b.t().contiguous() if b_col else b
    emu.selftest_wmma_gemm(emu.DTYPE_CODES[str(dtype).removeprefix("torch.")], a_mem.data_ptr(),
                           b_mem.data_ptr(), c.data_ptr(), d.data_ptr(), a_col, b_col, "concurrent")
    torch.testing.assert_close(d, a.float() @ b.float() + c, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", ["concurrent", "serialized"])
@pytest.mark.parametrize("kind,message", [
    ("divergent_barrier", "divergent code"),
    ("smem_overrun", "past the end of its 256 bytes"),
    ("wmma_lane_pointer", "warp-collective"),
    ("wmma_half_warp", "warp-collective"),
    ("wmma_misaligned", "256-bit aligned"),
    ("bad_config", "invalid configuration"),
])
def test_emulator_reports_faults(kind, message, schedule):
    with pytest.raises(RuntimeError, match=message):
        emu.selftest_fault(kind, schedule)


def _bits(t):
    return t.view(torch.int16).to(torch.int32) & 0xFFFF


@pytest.mark.parametrize("dtype,to_bits,from_bits", [
    (torch.float16, "float_to_half_bits", "half_bits_to_float"),
    (torch.bfloat16, "float_to_bf16_bits", "bf16_bits_to_float"),
], ids=["half", "bfloat16"])
def test_emulator_conversions_are_bit_exact(dtype, to_bits, from_bits):
    # Every 16-bit pattern to float.
    patterns = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    got = torch.empty(65536)
    getattr(emu, from_bits)(patterns.data_ptr(), got.data_ptr(), 65536)
    want = patterns.view(dtype).float()
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~want.isnan()].view(torch.int32), want[~want.isnan()].view(torch.int32))
    # Floats to 16 bits: random bit patterns over the whole range, plus the edges.
    special = torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, -65520.0, 2.0 ** -14,
                            2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -26,
                            1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 3.3895e38, float("inf"),
                            float("-inf"), float("nan")])
    rand = torch.randint(-2 ** 31, 2 ** 31 - 1, (1 << 20,), dtype=torch.int32).view(torch.float32)
    near_half = (torch.randint(0, 1 << 16, (1 << 16,), dtype=torch.int32) << 13
                 | torch.randint(0, 1 << 13, (1 << 16,), dtype=torch.int32)).view(torch.float32)
    src = torch.cat([special, rand, near_half, torch.randn(1 << 16) * 1e-6])
    out = torch.empty(src.numel(), dtype=torch.int16)
    getattr(emu, to_bits)(src.data_ptr(), out.data_ptr(), src.numel())
    ref = src.to(dtype)
    nan = src.isnan()
    assert out.view(dtype)[nan].isnan().all()
    assert torch.equal(_bits(out)[~nan], _bits(ref)[~nan])


# --- arguments, status and the real module --------------------------------------------------

def _call_module(**overrides):
    """``emu.conv2d`` with valid arguments of a 4 -> 4 3x3 float32 layer on 1x3x3 pixels
    (PRELU with a residual after it), then ``overrides``; the buffers live while it runs."""
    x, y, extra = torch.randn(36), torch.empty(36), torch.randn(36)
    packed = torch.zeros(emu.packed_weight_shape(emu.DTYPE_CODES["float32"], 3, 4, 4)).reshape(-1)
    packed1 = torch.zeros(emu.packed_weight_shape(emu.DTYPE_CODES["float32"], 1, 4, 4)).reshape(-1)
    bias, slope = torch.zeros(4), torch.full((4,), 0.25)
    args = dict(x=x.data_ptr(), x_numel=36, weight=packed.data_ptr(), weight_numel=packed.numel(),
                bias=bias.data_ptr(), bias_numel=4, extra=extra.data_ptr(), extra_numel=36,
                slope=slope.data_ptr(), slope_numel=4, slope2=0, slope2_numel=0,
                y=y.data_ptr(), y_numel=36, n=1, h=3, width=3, cin=4, cout=4, kernel=3,
                padding=1, dtype=emu.DTYPE_CODES["float32"], act=int(Act.PRELU),
                residual=int(Residual.AFTER_ACT), act2=int(Act.RELU), alpha=1.0, beta=1.0)
    if overrides.get("kernel") == 1:
        args.update(weight=packed1.data_ptr(), weight_numel=packed1.numel(), padding=0)
    bufs = dict(x=x, y=y, extra=extra)
    args.update({k: v(bufs) if callable(v) else v for k, v in overrides.items()})
    emu.conv2d(**args)
    return y


def test_module_call_is_valid():
    assert not _call_module().isnan().any()
    assert not _call_module(kernel=1).isnan().any()


@pytest.mark.parametrize("overrides,message", [
    (dict(h=0), "n, h, w, cin and cout must all be >= 1"),
    (dict(weight_numel=144), "packed weight has 144 elements, the kernel needs 288"),
    (dict(extra_numel=24), "skip/residual has 24 elements, the kernel needs 36"),
    (dict(extra=0), "null pointer for skip/residual"),
    (dict(slope_numel=0), "slope has 0 elements, the kernel needs 4"),
    (dict(slope=0), "null pointer for slope"),
    (dict(act2=int(Act.PRELU)), "slope2 has 0 elements"),
    (dict(act=9), "unknown activation code 9"),
    (dict(act2=-1), "unknown activation code -1"),
    (dict(residual=3), "unknown residual code 3"),
    (dict(residual=int(Residual.BEFORE_ACT)), "act2 applies after the residual join"),
    (dict(alpha=float("inf")), "alpha and beta must be finite"),
    (dict(beta=1e300), "alpha and beta must be finite"),
    (dict(dtype=3), "unknown dtype code 3"),
    (dict(kernel=5, padding=2), "runs 3x3 convolutions with padding 1 and 1x1 with padding 0"),
    (dict(kernel=3, padding=0), r"got 3x3 with padding 0"),
    (dict(kernel=1, padding=1), r"got 1x1 with padding 1"),
    (dict(y=lambda v: v["x"].data_ptr()), "the output must not overlap the input"),
    (dict(y=lambda v: v["x"].data_ptr() + 8), "the output must not overlap the input"),
    (dict(y=lambda v: v["extra"].data_ptr() - 8), "the output must not overlap the skip/residual"),
    (dict(x=lambda v: v["x"].data_ptr() + 2), "input is not 4-byte aligned"),
])
def test_module_rejects_bad_arguments_before_launch(overrides, message):
    with pytest.raises(ValueError, match=message):
        _call_module(**overrides)


def test_module_ignores_what_the_epilogue_does_not_read():
    # No residual: extra may be absent; no sloped act: slopes may be absent.
    y = _call_module(extra=0, extra_numel=0, slope=0, slope_numel=0, act=int(Act.TANH),
                     residual=int(Residual.NONE), act2=int(Act.IDENTITY))
    assert not y.isnan().any()


def test_backend_rejects_bad_arguments():
    case = make_case(1, 4, 4, 3, 3, transposed=True, epilogue="prelu_then_leaky")

    def run(**changes):
        args = dict(zip(("x", "weight", "bias", "extra"), case.tensors), **case.options)
        args.update(changes)
        return cuda_backend.launch_conv2d(emu, **args)

    with pytest.raises(ValueError, match=r"extra must be \(1, 4, 3, 3\)"):
        run(extra=case.extra[:, :, :, :2])
    with pytest.raises(ValueError, match="needs extra"):
        run(extra=None)
    with pytest.raises(ValueError, match="PRELU needs slopes"):
        run(slopes=None)
    with pytest.raises(ValueError, match="LEAKY_RELU needs slopes2"):
        run(slopes2=None)
    with pytest.raises(ValueError, match="slopes must hold 4"):
        run(slopes=torch.ones(3))
    with pytest.raises(ValueError, match="x has 5 channels"):
        run(x=torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match=r"bias must be \[4\]"):
        run(bias=torch.zeros(5))
    with pytest.raises(ValueError, match="out must be a dense NHWC"):
        run(out=torch.empty(1, 4, 3, 3))  # NCHW
    with pytest.raises(ValueError, match="out must be a dense NHWC"):
        run(out=T.poisoned_nhwc((1, 4, 3, 3), torch.float16))
    with pytest.raises(TypeError, match="redkern.epilogue.Epilogue"):
        run(epilogue=1)
    with pytest.raises(ValueError, match="schedule"):
        run(schedule="random")
    with pytest.raises(ValueError, match="unknown planted bug"):
        run(planted_bug="typo")
    with pytest.raises(ValueError, match="stream=0, device=0"):
        run(stream=5)
    # What the epilogue does not read is not needed.
    plain = make_case(1, 4, 4, 3, 3, epilogue="relu")
    y = cuda_backend.launch_conv2d(emu, plain.x, plain.weight, plain.bias, torch.randn(7),
                                   transposed=False, padding=(1, 1), epilogue=plain.epilogue,
                                   slopes=torch.ones(2), slopes2=torch.ones(2))
    T.assert_close(y, T.reference(plain), T.TOLERANCE[torch.float32])


def test_slopes_are_per_channel():
    """PReLU weights of one value (broadcast by kernel_slopes) and of cout values both work."""
    case = make_case(1, 6, 5, 4, 4, kernel=1, epilogue="prelu")
    case.act_weight = torch.tensor([0.3])
    check(case)
    case.act_weight = torch.linspace(0, 1, 5)
    check(case)


def test_backend_status_is_truthful():
    st = redkern.backends()["cuda"]
    try:
        from redkern import _cuda
    except ImportError:
        assert not st["available"] and st["detail"].startswith("not built"), st
        return
    archs = ", ".join(f"sm_{a}" for a in _cuda.built_archs.split(","))
    assert f"built for {archs}" in st["detail"], st
    count, why = _cuda.device_count()
    if count == 0:
        assert not st["available"] and "no CUDA device" in st["detail"] and why in st["detail"], st
    for kernel in KERNELS:
        assert emu.packed_weight_shape(1, kernel, 3, 64) == _cuda.packed_weight_shape(1, kernel, 3, 64)
    assert (_cuda.KERNELS, _cuda.ACT_CODES, _cuda.RESIDUAL_CODES) == (emu.KERNELS, emu.ACT_CODES,
                                                                        emu.RESIDUAL_CODES)


def test_cuda_backend_refuses_cpu_tensors():
    case = make_case(1, 3, 8, 4, 4)
    with pytest.raises(BackendUnavailable, match="CUDA tensors only"):
        cuda_backend.conv2d(*case.tensors, **case.options)


# --- the nvcc side: register allocation ------------------------------------------------------

CHECK_PTXAS = ROOT / ".ci" / "check_ptxas.py"


def _load_check_ptxas():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_ptxas", CHECK_PTXAS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    return mod


def test_check_ptxas_parses_spills():
    mod = _load_check_ptxas()
    text = """ptxas info    : Compiling entry function '_Z1kv' for 'sm_80'
ptxas info    : Function properties for _Z1kv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 1024 bytes smem, 432 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1jv' for 'sm_90'
ptxas info    : Function properties for _Z1jv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 432 bytes cmem[0]
"""
    k, j = mod.parse_ptxas(text, "x.cu")
    assert (k.arch, k.registers, k.stack, k.spill_stores, k.static_smem) == ("sm_80", 96, 8, 4, 1024)
    assert len(k.problems()) == 2 and j.problems() == []


def test_check_ptxas_names_kernels_as_the_dispatcher_does():
    mod = _load_check_ptxas()
    ns = "void redkern::cuda::standard::"
    assert mod.short_name(ns + "conv3x3_wmma<__half, 64, 32>(redkern::cuda::standard::ConvParams)") \
        == "conv3x3_wmma_f16<bn=64,ck=32>"
    assert mod.short_name(ns + "conv1x1_wmma<__nv_bfloat16, 16, 64>(x)") == "conv1x1_wmma_bf16<bn=16,ck=64>"
    assert mod.short_name(ns + "conv1x1_f32<8, 4>(x)") == "conv1x1_f32<bn=8,ck=4>"
    assert mod.short_name(ns + "conv3x3_f32<64, 16>(x)") == "conv3x3_f32<bn=64,ck=16>"
    # Every kernel the dispatcher can launch is one the check expects to see compiled.
    names = mod.dispatched_kernels()
    assert "conv1x1_wmma_f16<bn=64,ck=64>" in names and "conv3x3_f32<bn=8,ck=4>" in names
    assert len(names) == 2 * (6 + 9) + 8 + 12


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_check_ptxas_passes_and_catches_local_memory():
    ok = subprocess.run([sys.executable, str(CHECK_PTXAS)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in ("conv3x3_wmma_f16<bn=64,ck=32>", "conv1x1_wmma_bf16<bn=64,ck=64>",
                 "conv1x1_f32<bn=64,ck=32>", "sm_80", "sm_90"):
        assert name in ok.stdout, name
    # Device-debug code keeps locals on the stack: the check must fail on it.
    bad = subprocess.run([sys.executable, str(CHECK_PTXAS), "--archs", "90", "--nvcc-flag=-G"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "stack frame in local memory" in bad.stdout, bad.stdout
