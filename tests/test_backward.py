"""The fused ops' backward on our own kernels: the CPU weight-gradient kernels (csrc/cpu/wgrad.h)
against ``aten.convolution_backward`` in float64 on every ISA this CPU runs, both algorithms and
dtypes; the ops' gradients through ``conv2d_fused_train`` for every epilogue; what the forward
keeps for the backward against what PyTorch keeps.

Inputs are fresh random numbers every run (conftest.py prints the seed of a failure); kernel
outputs go into NaN-filled buffers, so an element a kernel skips fails the test.
"""

from __future__ import annotations

import pytest
import torch

from redkern import _C
from redkern import ops
from redkern import testing as T
from redkern.backends import cpu
from redkern.training import build_model

A = _C.Algorithm
ISAS = _C.supported_isas()
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# (cin, cout, kernel, padding, transposed): RED-Net's first, middle and last layers, channel
# counts that are not multiples of any vector width, other windows, non-square ones.
LAYERS = [(1, 64, 3, 1, False), (64, 64, 3, 1, False), (64, 64, 3, 1, True), (64, 1, 3, 1, True),
          (5, 7, 3, 1, False), (17, 33, 1, 0, False), (3, 20, 5, 2, True), (20, 18, (3, 5), (0, 4), False),
          (9, 40, 9, 4, False), (128, 128, 3, 1, False), (33, 2, 3, 0, True)]


def _ids(layer):
    cin, cout, k, p, t = layer
    return f"{cin}-{cout}-k{k}-p{p}{'-t' if t else ''}"


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _tensors(n, cin, cout, kernel, padding, transposed, h, w, dtype):
    """x, grad (fresh random, rounded to dtype) and the module's weight shape."""
    kh, kw = _pair(kernel)
    ph, pw = _pair(padding)
    oh = h + kh - 1 - 2 * ph if transposed else h + 2 * ph - kh + 1
    ow = w + kw - 1 - 2 * pw if transposed else w + 2 * pw - kw + 1
    x = torch.randn(n, cin, h, w).to(dtype)
    g = torch.randn(n, cout, oh, ow).to(dtype)
    shape = (cin, cout, kh, kw) if transposed else (cout, cin, kh, kw)
    return x, g, shape, (ph, pw)


def _reference(x, g, shape, padding, transposed):
    """``aten.convolution_backward``'s weight and bias gradients in float64."""
    w = torch.zeros(shape, dtype=torch.float64)
    cout = shape[1] if transposed else shape[0]
    _, gw, gb = torch.ops.aten.convolution_backward(g.double(), x.double(), w, [cout], [1, 1], list(padding),
                                                    [1, 1], transposed, [0, 0], 1, [False, True, True])
    return gw, gb


def _kernel(x, g, shape, padding, transposed, algorithm, isa, threads=None):
    """The binding called directly, into NaN-filled outputs, as the equivalent convolution."""
    n, cin, h, w = x.shape
    kh, kw = shape[2:]
    cout = shape[1] if transposed else shape[0]
    _, _, cph, cpw = cpu.conv_geometry((kh, kw), padding, transposed)
    xh, gh = x.permute(0, 2, 3, 1).contiguous(), g.permute(0, 2, 3, 1).contiguous()
    dw = torch.full((cout, cin, kh, kw), float("nan"))
    db = torch.full((cout,), float("nan"))
    _C.conv2d_weight_grad(xh.data_ptr(), xh.numel(), gh.data_ptr(), gh.numel(), dw.data_ptr(), dw.numel(),
                          db.data_ptr(), db.numel(), n, h, w, cin, cout, kh, kw, cph, cpw,
                          _C.DType.bfloat16 if x.dtype == torch.bfloat16 else _C.DType.float32, algorithm,
                          threads or torch.get_num_threads(), isa)
    if transposed:
        dw = dw.flip(2, 3).transpose(0, 1)
    return dw, db


def _algorithms(cin, cout, kernel, padding, transposed):
    kh, kw, ph, pw = cpu.conv_geometry(_pair(kernel), _pair(padding), transposed)
    return [A.direct] + ([A.winograd4x4] if (kh, kw, ph, pw) == (3, 3, 1, 1) else [])


def _check(got, want, g, what):
    """Weight gradient within 1e-5 of its largest reference value; the bias gradient (a plain
    sum that may cancel) within 1e-5 of the sum of |g| of its channel."""
    gw, gb = got
    rw, rb = want
    assert T.max_rel_error(gw, rw) <= 1e-5, what
    scale = g.double().abs().sum(dim=(0, 2, 3))
    err = ((gb.double() - rb).abs() / scale).max()
    assert err <= 1e-5, f"{what}: bias gradient error {float(err)}"  # NaN fails too


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layer", LAYERS, ids=_ids)
@pytest.mark.parametrize("isa", ISAS)
def test_weight_grad_kernels_match_reference(isa, layer, dtype):
    cin, cout, kernel, padding, transposed = layer
    h, w = (6, 7) if max(cin, cout) >= 128 else (11, 9)
    x, g, shape, padding = _tensors(2, cin, cout, kernel, padding, transposed, h, w, dtype)
    want = _reference(x, g, shape, padding, transposed)
    algos = _algorithms(cin, cout, kernel, padding, transposed)
    for algo in algos:
        _check(_kernel(x, g, shape, padding, transposed, algo, isa), want, g, f"{algo} on {isa}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("h,w", [(1, 1), (4, 4), (5, 9), (13, 2), (30, 17)])
def test_winograd_weight_grad_tile_tails_and_many_blocks(isa, h, w):
    x, g, shape, padding = _tensors(3, 24, 40, 3, 1, False, h, w, torch.float32)
    _check(_kernel(x, g, shape, padding, False, A.winograd4x4, isa), _reference(x, g, shape, padding, False), g,
           f"{h}x{w}")


@pytest.mark.parametrize("algorithm", [A.direct, A.winograd4x4])
@pytest.mark.parametrize("isa", ISAS)
def test_weight_grad_is_deterministic_and_nan_propagates(isa, algorithm):
    x, g, shape, padding = _tensors(2, 16, 24, 3, 1, False, 13, 11, torch.float32)
    first = _kernel(x, g, shape, padding, False, algorithm, isa, threads=2)
    again = _kernel(x, g, shape, padding, False, algorithm, isa, threads=2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    one_thread = _kernel(x, g, shape, padding, False, algorithm, isa, threads=1)
    assert T.max_rel_error(one_thread[0], first[0]) <= 1e-5
    x[1, 3, 6, 5] = float("nan")
    gw, gb = _kernel(x, g, shape, padding, False, algorithm, isa)
    assert gw[:, 3].isnan().all() and not gw[:, 2].isnan().any() and not gb.isnan().any()
    g[0, 7, 2, 2] = float("inf")
    g[0, 7, 2, 3] = -float("inf")
    gw, gb = _kernel(x, g, shape, padding, False, algorithm, isa)
    assert gw[7].isnan().any() and gb[7].isnan() and not gb[6].isnan()


def test_weight_grad_rejects_what_it_cannot_run():
    x, g, shape, padding = _tensors(1, 4, 4, 5, 2, False, 7, 7, torch.float32)
    with pytest.raises(ValueError, match="3x3 kernels with padding"):
        _kernel(x, g, shape, padding, False, A.winograd4x4, ISAS[0])
    with pytest.raises(ValueError, match="direct or the Winograd"):
        _kernel(x, g, shape, padding, False, A.direct_few_cout, ISAS[0])
    with pytest.raises(ValueError, match="gradient has"):
        xh = x.permute(0, 2, 3, 1).contiguous()
        dw = torch.empty(shape)
        _C.conv2d_weight_grad(xh.data_ptr(), xh.numel(), xh.data_ptr(), xh.numel() - 1, dw.data_ptr(), dw.numel(),
                              0, 0, 1, 7, 7, 4, 4, 5, 5, 2, 2, _C.DType.float32, A.direct, 1, "")
    with pytest.raises(ValueError, match="output shape"):
        cpu.conv2d_weight_grad(x, g[:, :, 1:], weight_shape=shape, transposed=False, padding=padding)
    with pytest.raises(ValueError, match="one dtype"):
        cpu.conv2d_weight_grad(x, g.double(), weight_shape=shape, transposed=False, padding=padding)


# --- the ops' gradients ---------------------------------------------------------------------------

def _op_grads(case, op):
    names = ("x", "weight", "bias", "extra", "act_weight", "act2_weight")
    leaves = {n: getattr(case, n).detach().requires_grad_() for n in names if getattr(case, n) is not None}
    c = T.LayerCase(**{**vars(case), **leaves})
    out = op(c)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return out, dict(zip(leaves, torch.autograd.grad((out * probe).sum(), list(leaves.values()))))


def _train_op(c):
    return ops.fused_conv(c.x, c.weight, c.bias, c.extra, c.act_weight, c.act2_weight, c.transposed, c.padding,
                          c.epilogue)


@pytest.mark.parametrize("epilogue", list(T.EPILOGUES))
@pytest.mark.parametrize("kernel,padding,transposed", [(3, 1, False), (3, 1, True), (5, 2, True), (1, 0, False),
                                                       (3, 0, False)])
def test_training_op_gradients_match_reference(epilogue, kernel, padding, transposed):
    case = T.layer_case(2, 17, 20, 7, 9, kernel=kernel, padding=padding, transposed=transposed,
                        epilogue=epilogue)
    want_out, want = _op_grads(case.to(dtype=torch.float64), T.reference)
    out, got = _op_grads(case, _train_op)
    T.assert_close(out, want_out, 1e-5, T.magnitude(case))
    for name in want:
        assert T.max_rel_error(got[name], want[name]) <= 1e-4, name


@pytest.mark.parametrize("epilogue", ["relu_add_relu", "prelu", "prelu_then_leaky", "tanh_then_prelu"])
def test_opcheck_training_op_and_weight_grad(epilogue):
    case = T.layer_case(2, 4, 5, 6, 7, kernel=3, epilogue=epilogue)
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in
            (case.x, case.weight, case.bias, case.extra, case.act_weight, case.act2_weight, case.transposed,
             list(case.padding), *case.epilogue.encode(), "auto")]
    torch.library.opcheck(torch.ops.redkern.conv2d_fused_train, tuple(args))
    g = torch.randn(case.out_shape)
    torch.library.opcheck(torch.ops.redkern.conv2d_weight_grad, (case.x.detach(), g, None, case.weight.detach(), False,
                                                                  [1, 1], "auto"))


def _saved_bytes(model, x) -> int:
    """Bytes of the distinct storages autograd keeps from one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return sum(seen.values())


def test_forward_keeps_no_more_than_pytorch_for_the_backward():
    ref = build_model(10, 1, 16, "reference")
    fused = build_model(10, 1, 16, "fused")
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 24, 24)
    ours, theirs = _saved_bytes(fused, x), _saved_bytes(ref.to(memory_format=torch.channels_last),
                                                       x.contiguous(memory_format=torch.channels_last))
    assert 0 < ours <= theirs, (ours, theirs)


def test_fused_red_net_trains_like_the_reference():
    """Three Adam steps on the same batches: the fused model's weights follow the reference's."""
    torch.manual_seed(0)
    ref = build_model(10, 1, 16, "reference")
    for p in ref.parameters():
        if not p.any():
            p.data.normal_(0, 1e-2)
    fused = build_model(10, 1, 16, "fused")
    fused.load_state_dict(ref.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ref, fused)]
    for _ in range(3):
        clean = torch.rand(3, 1, 19, 23)
        noisy = clean + 0.1 * torch.randn_like(clean)
        for m, opt in zip((ref, fused), opts):
            loss = torch.nn.functional.mse_loss(m(noisy), clean)
            opt.zero_grad()
            loss.backward()
            opt.step()
    want = ref.state_dict()
    for name, p in fused.state_dict().items():
        assert T.max_rel_error(p, want[name]) <= 1e-4, name


def test_backends_say_how_their_backward_runs():
    import redkern

    st = redkern.backends()
    assert st["cpu"]["backward"].startswith("these kernels")
    assert "PyTorch" in st["cuda"]["backward"] and "PyTorch" in st["cuda_emu"]["backward"]


def _train_losses(amp, steps=120):
    torch.manual_seed(0)
    model = build_model(10, 1, 16, "fused")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        clean = torch.rand(4, 1, 24, 24, generator=g)
        noisy = clean + 0.2 * torch.randn(clean.shape, generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            pred = model(noisy)
        assert pred.dtype == (torch.bfloat16 if amp else torch.float32)
        loss = torch.nn.functional.mse_loss(pred.float(), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return torch.tensor(losses)


def test_bf16_training_follows_the_fp32_loss_curve():
    """bf16 activations through our kernels (autocast), fp32 weights, accumulation and Adam: on a
    short denoising run the loss falls as in fp32, within bf16's noise."""
    fp32, bf16 = _train_losses(False), _train_losses(True)
    assert fp32[-10:].mean() < 0.85 * fp32[:5].mean()  # the run learns at all (noise 0.04 -> ~0.03)
    assert torch.isfinite(bf16).all() and bf16[-10:].mean() < 0.85 * bf16[:5].mean()
    gap = (bf16[-10:].mean() - fp32[-10:].mean()).abs() / fp32[-10:].mean()
    assert gap < 0.1, (fp32[-10:].mean(), bf16[-10:].mean())


@pytest.mark.parametrize("change", ["fused adam", "foreach adam", "data edit", "load_state_dict"])
def test_prepared_weights_follow_every_kind_of_update(change):
    """Packed and folded weights are cached between calls; every way a weight changes is seen,
    including the ones that skip the version counter (fused optimizers, ``.data`` edits)."""
    ref = T.randomize_(build_model(6, 1, 8, "reference")).eval()
    fused = build_model(6, 1, 8, "fused").eval()
    fused.load_state_dict(ref.state_dict())
    x = torch.rand(1, 1, 13, 17)
    with torch.no_grad():
        before = fused(x)
    if change.endswith("adam"):
        opt = torch.optim.Adam(fused.parameters(), lr=1e-2, fused=change == "fused adam",
                               foreach=change == "foreach adam" or None)
        torch.nn.functional.mse_loss(fused(x), x * 0.5).backward()
        opt.step()
    elif change == "data edit":
        for p in fused.parameters():
            p.data.mul_(1.5)
    else:
        fused.load_state_dict({k: v * 0.5 for k, v in fused.state_dict().items()})
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        after, want = fused(x), ref(x)
    assert not torch.equal(before, after)
    T.assert_close(after, want, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("isa", ISAS)
def test_relu_masks_in_the_prologue_equal_masking_first(isa, dtype):
    """The Winograd kernels read ReLU's derivative (mask > 0) in their prologue: the same as
    masking the gradient first, for the input's gradient and the weight's; NaN in the mask
    keeps the gradient, as PyTorch's threshold_backward."""
    x, g, shape, padding = _tensors(2, 20, 24, 3, 1, False, 13, 10, dtype)
    mask = torch.randn(g.shape).to(dtype)
    mask[0, 3, 4, 5] = float("nan")
    masked = torch.ops.aten.threshold_backward(g, mask, 0)
    winograds = [a for a in cpu.runnable_algorithms(24, 20, 3, 1, False, dtype, isa) if a in cpu.winograd_algorithms()]
    assert A.winograd4x4 in winograds
    for transposed, w_shape in ((False, shape), (True, (shape[1], shape[0], 3, 3))):
        weight = torch.randn(w_shape)
        for algo in winograds:  # the fp32 GEMM and, on CPUs with them, the bf16 ones
            want = cpu.conv2d(masked, weight, None, transposed=not transposed, padding=1, epilogue=ops.Epilogue(),
                              isa=isa, algorithm=algo)
            got = cpu.conv2d(g, weight, None, transposed=not transposed, padding=1, epilogue=ops.Epilogue(),
                             isa=isa, algorithm=algo, x_mask=mask)
            T.assert_close(got, want, 1e-6 if dtype == torch.float32 else 1e-2)
    want = _kernel(x, masked, shape, padding, False, A.winograd4x4, isa)
    got = cpu.conv2d_weight_grad(x, g, weight_shape=shape, transposed=False, padding=padding, grad_mask=mask,
                                 isa=isa)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    direct = cpu.conv2d_weight_grad(x, g, weight_shape=shape, transposed=False, padding=padding, grad_mask=mask,
                                    algorithm=A.direct, isa=isa)  # no prologue: masked first, the same sums
    assert T.max_rel_error(direct[0], want[0]) <= 1e-5
    with pytest.raises(ValueError, match="with the Winograd algorithms only"):
        xh, mh = g.permute(0, 2, 3, 1).contiguous(), mask.permute(0, 2, 3, 1).contiguous()
        y = torch.empty(2, 13, 10, 20, dtype=dtype)
        packed = torch.zeros(_C.packed_weight_size(24, 20, 3, 3, A.direct))
        b = torch.zeros(20)
        _C.conv2d(xh.data_ptr(), xh.numel(), packed.data_ptr(), packed.numel(), b.data_ptr(), 20, 0, 0,
                  y.data_ptr(), y.numel(), 0, 0, 0, 0, 2, 13, 10, 24, 20, 3, 3, 1, 1, 0, 0, 0, 1.0, 1.0,
                  _C.DType.bfloat16 if dtype == torch.bfloat16 else _C.DType.float32, A.direct, 1, isa,
                  mh.data_ptr(), mh.numel())


def test_opcheck_input_grad_with_and_without_a_mask():
    case = T.layer_case(2, 6, 5, 7, 6, kernel=3, transposed=True)
    g = torch.randn(case.out_shape)
    for mask in (None, torch.randn(case.out_shape)):
        torch.library.opcheck(torch.ops.redkern.conv2d_input_grad, (g, mask, case.weight.detach(), True, [1, 1],
                                                                    0.5, "auto"))
