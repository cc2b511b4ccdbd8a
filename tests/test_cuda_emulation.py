"""The CUDA C++ kernels (csrc/cuda), run on the CPU through our CUDA emulation (csrc/cuda_emu).

``redkern._cuda_emu`` is the kernel source that nvcc builds into ``redkern._cuda``, compiled
by the host compiler against csrc/cuda_emu/cuda_emu.h: blocks run one after another, the
threads of a block concurrently (one host thread each) with a real barrier, shared memory
poisoned with NaN before every block, and wmma warp-collective calls checked lane by lane.
Every check compares with the reference PyTorch ops on fresh random inputs, into outputs
poisoned with NaN and fenced by guard zones. Planted bugs (a missing barrier, a shifted
halo, unzeroed padding channels) must make the same checks fail.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import redkern
from redkern import ops
from redkern.backends import cuda as cuda_backend
from redkern.backends.common import BackendUnavailable, Epilogue

try:
    from redkern import _cuda_emu as emu
except ImportError as e:  # always built (CMakeLists.txt): its absence is a broken build
    raise ImportError(f"redkern._cuda_emu is missing; rebuild the package ({e})") from e

ROOT = Path(__file__).resolve().parents[1]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Outputs are computed in fp32 and rounded once; the reference runs in fp32 on the same
# (rounded) inputs, so fp16/bf16 differ by about one rounding of the output.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5),
       torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
OPS = ("conv_relu", "deconv_relu", "deconv_relu_skip", "deconv_residual")


# --- helpers -------------------------------------------------------------------------------

def make_case(op, n, cin, cout, h, w, dtype):
    """Random inputs of one op, in `dtype`; weight scaled so outputs are O(1)."""
    transposed = op != "conv_relu"
    x = torch.randn(n, cin, h, w)
    shape = (cin, cout, 3, 3) if transposed else (cout, cin, 3, 3)
    weight = torch.randn(shape) / math.sqrt(9 * cin)
    bias = torch.randn(cout) * 0.5
    extra = torch.randn(n, cout, h, w) if op in ("deconv_relu_skip", "deconv_residual") else None
    cast = (lambda t: t.to(dtype) if t is not None else None)
    return cast(x), cast(weight), cast(bias), cast(extra)


def reference(op, x, weight, bias, extra):
    """The reference op in fp32 on the (already rounded) inputs."""
    f = (lambda t: t.float() if t is not None else None)
    if op == "conv_relu":
        return ops.reference_conv_relu(f(x), f(weight), f(bias))
    if op == "deconv_residual":
        return ops.reference_deconv_residual(f(x), f(weight), f(bias), f(extra))
    return ops.reference_deconv_relu(f(x), f(weight), f(bias), f(extra))


def epilogue_of(op):
    return {"conv_relu": Epilogue.RELU, "deconv_relu": Epilogue.RELU,
            "deconv_relu_skip": Epilogue.RELU_ADD_RELU,
            "deconv_residual": Epilogue.ADD_RESIDUAL}[op]


GUARD = 64  # elements of NaN on each side of the output, which must stay NaN


def run_emulated(op, x, weight, bias, extra, **options):
    """The emulated kernel's NHWC output, written into a NaN-poisoned, guarded buffer."""
    n, _, h, w = x.shape
    cout = bias.shape[0]
    numel = n * cout * h * w
    buf = torch.full((numel + 2 * GUARD,), float("nan"), dtype=x.dtype)
    out = buf[GUARD:GUARD + numel].view(n, h, w, cout).permute(0, 3, 1, 2)
    y = cuda_backend.launch_conv3x3(emu, x, weight, bias, extra, transposed=op != "conv_relu",
                                    epilogue=epilogue_of(op), out=out, **options)
    assert y.data_ptr() == out.data_ptr()
    assert buf[:GUARD].isnan().all() and buf[-GUARD:].isnan().all(), "wrote outside the output"
    return y


def check(op, n, cin, cout, h, w, dtype, **options):
    x, weight, bias, extra = make_case(op, n, cin, cout, h, w, dtype)
    y = run_emulated(op, x, weight, bias, extra, **options)
    assert not y.isnan().any(), f"{int(y.isnan().sum())} output elements unwritten (NaN)"
    torch.testing.assert_close(y.float(), reference(op, x, weight, bias, extra), **TOL[dtype])


# --- the kernels against the reference ------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64)])
def test_matches_reference(op, cin, cout, dtype):
    check(op, 2, cin, cout, 17, 9, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (7, 5), (9, 17)])
@pytest.mark.parametrize("cin,cout", [(1, 64), (64, 64), (64, 3), (3, 64)])
def test_odd_sizes(h, w, cin, cout, dtype):
    op = OPS[(h + w + cin + cout) % len(OPS)]  # every op meets several shapes
    check(op, 1 if h * w < 10 else 2, cin, cout, h, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,cin,cout,h,w", [
    (1, 128, 64, 9, 16),   # several input-channel chunks
    (1, 64, 128, 8, 17),   # two output-channel blocks
    (2, 5, 7, 6, 11),      # channel counts no vector or tile divides
    (1, 8, 24, 10, 3),     # vector loads with zero-padded channels
    (1, 20, 33, 4, 33),    # a partial last chunk, a partial last channel block
    (3, 16, 16, 33, 40),   # many tiles in both directions
])
def test_channel_and_tile_edges(n, cin, cout, h, w, dtype):
    for op in ("conv_relu", "deconv_relu_skip"):
        check(op, n, cin, cout, h, w, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", OPS)
def test_serialized_schedule(op, dtype):
    """One thread at a time from barrier to barrier, order reversed at each barrier."""
    check(op, 2, 64, 64, 9, 17, dtype, schedule="serialized")
    check(op, 1, 3, 16, 5, 7, dtype, schedule="serialized")


def test_channels_last_input_and_skip_with_negative_values():
    x, weight, bias, _ = make_case("deconv_relu", 2, 16, 32, 6, 10, torch.float32)
    skip = torch.randn(2, 32, 6, 10).contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    y = run_emulated("deconv_relu_skip", x, weight, bias, skip)
    torch.testing.assert_close(y, ops.reference_deconv_relu(x, weight, bias, skip), **TOL[torch.float32])


def test_nan_input_propagates():
    """A NaN in the input reaches the outputs it touches (ReLU must not hide it)."""
    x, weight, bias, _ = make_case("conv_relu", 1, 16, 16, 8, 8, torch.float32)
    x[0, 3, 4, 4] = float("nan")
    y = run_emulated("conv_relu", x, weight, bias, None)
    ref = reference("conv_relu", x, weight, bias, None)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().sum() == 9 * 16
    torch.testing.assert_close(y, ref, equal_nan=True, **TOL[torch.float32])


def test_weight_packed_once_and_again_after_update():
    x, weight, bias, _ = make_case("conv_relu", 1, 16, 16, 5, 5, torch.float32)
    shape = emu.packed_weight_shape(emu.DTYPE_CODES["float32"], 16, 16)
    key = (id(weight), (emu.__name__, False, torch.float32, shape))
    run_emulated("conv_relu", x, weight, bias, None)
    packed = cuda_backend._weights._entries[key][3]
    run_emulated("conv_relu", x, weight, bias, None)
    assert cuda_backend._weights._entries[key][3] is packed  # prepared once
    with torch.no_grad():
        weight.mul_(-1.0)  # an in-place update (an optimizer step) must be seen
    y = run_emulated("conv_relu", x, weight, bias, None)
    torch.testing.assert_close(y, reference("conv_relu", x, weight, bias, None), **TOL[torch.float32])


def test_packed_weight_layout():
    w = torch.randn(5, 3, 3, 3)  # ConvTranspose2d [cin=5, cout=3]
    packed = cuda_backend.pack_weight(w, True, 16, 16)
    assert packed.shape == (9, 16, 16)
    conv = w.transpose(0, 1).flip(2, 3)  # [cout, cin, ky, kx]
    for ky in range(3):
        for kx in range(3):
            assert torch.equal(packed[ky * 3 + kx, :5, :3], conv[:, :, ky, kx].t())
    assert not packed[:, 5:].any() and not packed[:, :, 3:].any()


# --- planted bugs: the checks above must catch them ---------------------------------------

PLANTED = [
    # (bug, cin, cout, dtype): a configuration in which the bug has an effect
    ("skip_load_barrier", 64, 64, torch.float32),
    ("skip_load_barrier", 64, 64, torch.float16),
    ("skip_reuse_barrier", 64, 64, torch.float32),   # needs several input-channel chunks
    ("skip_reuse_barrier", 3, 64, torch.bfloat16),   # wmma: the epilogue reuses the tiles
    ("halo_shift", 64, 64, torch.float16),
    ("halo_shift", 3, 16, torch.float32),
    ("no_channel_zero_fill", 3, 64, torch.float16),  # needs cin below the chunk
    ("no_channel_zero_fill", 1, 8, torch.float32),
]


def test_every_planted_bug_is_exercised():
    assert sorted(emu.PLANTED_BUGS) == sorted({b for b, *_ in PLANTED})


@pytest.mark.parametrize("schedule", ["concurrent", "serialized"])
@pytest.mark.parametrize("bug,cin,cout,dtype", PLANTED, ids=lambda v: str(v))
def test_planted_bug_is_caught(bug, cin, cout, dtype, schedule):
    x, weight, bias, extra = make_case("deconv_relu_skip", 1, cin, cout, 9, 17, dtype)
    ref = reference("deconv_relu_skip", x, weight, bias, extra)
    good = run_emulated("deconv_relu_skip", x, weight, bias, extra, schedule=schedule)
    torch.testing.assert_close(good.float(), ref, **TOL[dtype])
    # The serialized schedule is deterministic; the concurrent one interleaves differently
    # each time, and must catch the bug every time.
    for attempt in range(1 if schedule == "serialized" else 3):
        bad = run_emulated("deconv_relu_skip", x, weight, bias, extra, schedule=schedule,
                           planted_bug=bug)
        with pytest.raises(AssertionError):
            torch.testing.assert_close(bad.float(), ref, **TOL[dtype])


# --- property-based: random shapes, layouts, value ranges, schedules -------------------------

def _layout(t, layout):
    """The same values as ``t`` in NCHW, channels_last or a strided (every-other-column) view."""
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.zeros(*t.shape[:3], 2 * t.shape[3], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t


@settings(max_examples=int(os.environ.get("REDKERN_FUZZ_EXAMPLES", 40)), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from(OPS), n=st.integers(1, 2), cin=st.integers(1, 40),
       cout=st.integers(1, 72), h=st.integers(1, 12), w=st.integers(1, 12),
       dtype=st.sampled_from(DTYPES), layout=st.sampled_from(["nchw", "channels_last", "strided"]),
       scale=st.sampled_from([1e-3, 1.0, 1e2]), schedule=st.sampled_from(["concurrent", "serialized"]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_against_reference(op, n, cin, cout, h, w, dtype, layout, scale, schedule, seed):
    """Any shape, memory format and value range: every output element written, and right."""
    torch.manual_seed(seed)
    x, weight, bias, extra = make_case(op, n, cin, cout, h, w, torch.float32)
    # Scale before rounding so the reference sees exactly the kernel's inputs.
    x, bias = (x * scale).to(dtype), (bias * scale).to(dtype)
    weight = weight.to(dtype)
    extra = (extra * scale).to(dtype) if extra is not None else None
    want = reference(op, x, weight, bias, extra)
    x = _layout(x, layout)
    extra = _layout(extra, layout) if extra is not None else None
    got = run_emulated(op, x, weight, bias, extra, schedule=schedule)
    assert not got.isnan().any(), f"{int(got.isnan().sum())} output elements unwritten (NaN)"
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), want, rtol=tol["rtol"], atol=tol["atol"] * scale)


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

def test_bad_arguments_are_rejected_before_launch():
    x, weight, bias, extra = make_case("deconv_relu_skip", 1, 4, 4, 3, 3, torch.float32)
    with pytest.raises(ValueError, match="skip/residual has 24 elements, the kernel needs 36"):
        run_emulated("deconv_relu_skip", x, weight, bias, extra[:, :, :, :2])
    with pytest.raises(ValueError, match="schedule"):
        run_emulated("conv_relu", x, weight, bias, None, schedule="random")
    with pytest.raises(ValueError, match="unknown planted bug"):
        run_emulated("conv_relu", x, weight, bias, None, planted_bug="typo")
    with pytest.raises(TypeError, match="float64"):
        run_emulated("conv_relu", x.double(), weight.double(), bias.double(), None)
    dt = emu.DTYPE_CODES["float32"]
    y = torch.empty(36)
    with pytest.raises(ValueError, match="n, h, w, cin and cout must all be >= 1"):
        emu.conv3x3(x.data_ptr(), 36, weight.data_ptr(), 1, bias.data_ptr(), 4, 0, 0,
                    y.data_ptr(), 36, 1, 0, 3, 4, 4, dt, 0)
    with pytest.raises(ValueError, match="packed weight has 144 elements"):
        emu.conv3x3(x.data_ptr(), 36, weight.data_ptr(), 144, bias.data_ptr(), 4, 0, 0,
                    y.data_ptr(), 36, 1, 3, 3, 4, 4, dt, 0)
    with pytest.raises(ValueError, match="must not alias"):
        packed = cuda_backend.pack_weight(weight, False, *emu.packed_weight_shape(dt, 4, 4)[1:])
        emu.conv3x3(x.data_ptr(), 36, packed.data_ptr(), packed.numel(), bias.data_ptr(), 4, 0, 0,
                    x.data_ptr(), 36, 1, 3, 3, 4, 4, dt, 0)


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
    assert emu.packed_weight_shape(1, 3, 64) == _cuda.packed_weight_shape(1, 3, 64)


def test_cuda_backend_refuses_cpu_tensors():
    x, weight, bias, _ = make_case("conv_relu", 1, 3, 8, 4, 4, torch.float32)
    with pytest.raises(BackendUnavailable, match="CUDA tensors only"):
        ops.conv_relu(x, weight, bias, "cuda")


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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_check_ptxas_passes_and_catches_local_memory():
    ok = subprocess.run([sys.executable, str(CHECK_PTXAS)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "conv3x3_wmma_f16<bn=64,ck=32>" in ok.stdout and "sm_80" in ok.stdout and "sm_90" in ok.stdout
    # Device-debug code keeps locals on the stack: the check must fail on it.
    bad = subprocess.run([sys.executable, str(CHECK_PTXAS), "--archs", "90", "--nvcc-flag=-G"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "stack frame in local memory" in bad.stdout, bad.stdout
