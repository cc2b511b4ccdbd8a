"""redkern.REDxx(fused=True) is a drop-in for the reference model."""

import pytest
import torch

import redkern
from redkern.executor import run
from redkern.testing import kaiming_init_ as kaiming_


def pair(ctor, channels, features, **kw):
    ref = kaiming_(ctor(channels=channels, features=features))
    fused = ctor(channels=channels, features=features, fused=True, **kw)
    fused.load_state_dict(ref.state_dict())
    return ref.eval(), fused.eval()


def rel_err(got, want):
    assert torch.isfinite(got).all()
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.mark.parametrize("ctor", [redkern.RED10, redkern.RED20, redkern.RED30])
@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 3, 20, 31), (1, 1, 3, 3), (1, 1, 1, 1), (1, 3, 1, 1)])
@pytest.mark.parametrize("features", [64, 128])
def test_fused_equals_reference(ctor, shape, features):
    if features == 128 and shape[2] * shape[3] > 400 and ctor is not redkern.RED10:
        shape = (shape[0], shape[1], 13, 17)  # keep the 128-feature cases quick
    ref, fused = pair(ctor, shape[1], features)
    x = torch.rand(shape)
    with torch.no_grad():
        want = ref(x)
        got = fused(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert rel_err(got, want) <= 1e-5


def test_memory_format_in_is_memory_format_out():
    ref, fused = pair(redkern.RED10, 3, 16)
    x = torch.rand(2, 3, 9, 14)
    with torch.inference_mode():
        assert fused(x).is_contiguous()
        xc = x.contiguous(memory_format=torch.channels_last)
        out = fused(xc)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(out, ref(x)) <= 1e-5


def test_state_dict_round_trip_both_ways():
    ref, fused = pair(redkern.RED30, 1, 64)
    assert list(ref.state_dict()) == list(fused.state_dict())
    for k, v in fused.state_dict().items():
        assert v.shape == ref.state_dict()[k].shape
    other = redkern.RED30()
    other.load_state_dict(fused.state_dict())
    x = torch.rand(1, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(other(x), ref(x))


def test_weights_changed_in_place_are_seen():
    """The prepared-weight cache must notice load_state_dict and optimizer steps."""
    ref, fused = pair(redkern.RED10, 1, 16)
    x = torch.rand(1, 1, 11, 12)
    with torch.no_grad():
        first = fused(x)
        fresh = kaiming_(redkern.RED10(features=16))
        fused.load_state_dict(fresh.state_dict())
        assert rel_err(fused(x), fresh(x)) <= 1e-5
        assert not torch.allclose(fused(x), first)


def test_inference_mode_and_no_grad():
    ref, fused = pair(redkern.RED10, 1, 16)
    x = torch.rand(1, 1, 8, 9)
    with torch.inference_mode():
        a = fused(x)
    with torch.no_grad():
        b = fused(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("ctor,shape", [(redkern.RED10, (2, 3, 11, 7)), (redkern.RED20, (1, 1, 19, 23)),
                                         (redkern.RED30, (3, 1, 6, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_inference_path_equals_the_op_path(ctor, shape, dtype):
    """Without autograd the model calls the kernels directly, into pooled buffers."""
    _, fused = pair(ctor, shape[1], 24)
    fused = fused.to(dtype)
    x = torch.rand(shape, dtype=dtype)
    with torch.no_grad():
        direct = fused(x)
        via_ops = run(fused.plan, fused, (x,), mode="ops")
    assert direct.grad_fn is None
    assert torch.isfinite(direct).all()
    assert torch.equal(direct, via_ops)


def test_pooled_buffers_never_leak_into_results():
    """Each call's output is its own; shapes can change between calls; release frees."""
    ref, fused = pair(redkern.RED30, 1, 16)
    x1, x2, x3 = torch.rand(1, 1, 17, 13), torch.rand(1, 1, 17, 13), torch.rand(2, 1, 9, 21)
    with torch.inference_mode():
        y1 = fused(x1)
        kept = y1.clone()
        y2 = fused(x2)
        assert torch.equal(y1, kept), "a later call wrote into an earlier result"
        assert y1.untyped_storage().data_ptr() != y2.untyped_storage().data_ptr()
        y3 = fused(x3)
        again = fused(x1)
        for x, y in ((x1, y1), (x2, y2), (x3, y3), (x1, again)):
            assert rel_err(y, ref(x)) <= 1e-5
        pool = fused._redkern_runtime_state().pool
        assert pool.nbytes() > 0, "the buffers of the last call are kept for the next"
        fused.release_buffers()
        assert pool.nbytes() == 0


def test_autograd_goes_through_the_ops():
    _, fused = pair(redkern.RED10, 1, 8)
    x = torch.rand(1, 1, 7, 6)
    y = fused(x)  # parameters require grad and grad mode is on: a graph is built
    assert y.grad_fn is not None
    with torch.no_grad():
        assert fused(x).grad_fn is None
        assert torch.allclose(fused(x), y.detach(), rtol=1e-6, atol=1e-6)


def test_training_gradients_match_reference():
    ref, fused = pair(redkern.RED20, 1, 8)
    ref.train(), fused.train()
    x = torch.rand(2, 1, 9, 8)
    target = torch.rand(2, 1, 9, 8)
    torch.nn.functional.mse_loss(ref(x), target).backward()
    torch.nn.functional.mse_loss(fused(x), target).backward()
    for (name, p), q in zip(ref.named_parameters(), fused.parameters()):
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert ((p.grad - q.grad).abs().max() / scale).item() <= 1e-4, name


def test_torch_compile_fullgraph():
    ref, fused = pair(redkern.RED10, 1, 8)
    compiled = torch.compile(fused, fullgraph=True)
    x = torch.rand(1, 1, 10, 13)
    with torch.no_grad():
        assert rel_err(compiled(x), ref(x)) <= 1e-5


def test_unavailable_backend_is_a_clear_error():
    status = redkern.backends()
    assert set(status) == {"cpu", "triton", "cuda", "cuda_emu"}
    assert status["cpu"]["available"]
    x = torch.rand(1, 1, 5, 5)
    for name in ("cuda",):
        if status[name]["available"] and "cpu" in status[name]["devices"]:
            continue
        model = redkern.RED10(fused=True, backend=name)
        with pytest.raises(redkern.BackendUnavailable):
            model(x)
    with pytest.raises(ValueError, match="unknown backend"):
        redkern.RED10(fused=True, backend="metal")


# --- non-finite inputs, copies, memory --------------------------------------------------------------

@pytest.mark.parametrize("backend", redkern.testing.backends_here())
def test_nan_and_inf_inputs_are_refused_unless_let_through(backend):
    ref, fused = pair(redkern.RED10, 1, 8, backend=backend)
    x = torch.rand(1, 1, 12, 14)
    x[0, 0, 3, 4], x[0, 0, 9, 1] = float("nan"), float("inf")
    with torch.no_grad():
        with pytest.raises(redkern.NonFiniteInput, match=r"2 NaN/inf value\(s\), the first at index \[0, 0, 3, 4\]"):
            fused(x)
        fused.nonfinite = "propagate"
        got, want = fused(x), ref(x)
    bad = ~torch.isfinite(want)
    assert (~torch.isfinite(got[bad])).all(), "a value PyTorch makes non-finite came out finite"
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        fused.nonfinite = "ignore"


@pytest.mark.parametrize("how", redkern.testing.COPY_WAYS)
def test_a_fused_model_copies_and_pickles_after_inference(how):
    _, fused = pair(redkern.RED20, 1, 8)
    x = torch.rand(1, 1, 9, 11)
    with torch.inference_mode():
        want = fused(x)
    other = redkern.testing.copied(fused, how)
    assert type(other) is redkern.FusedREDNet and other.backend == fused.backend
    with torch.inference_mode():
        assert torch.equal(other(x), want)
    fused.release_buffers()
    redkern.testing.copied(fused, how)  # and after releasing


def test_a_whole_image_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    from redkern import executor

    _, fused = pair(redkern.RED30, 1, 64)
    monkeypatch.setattr(executor, "available_memory", lambda device: 64 * 2**20)  # 64 MiB free
    x = torch.rand(1, 1, 512, 512)  # nine 64-channel maps of 64 MiB: ~0.6 GiB
    with torch.inference_mode():
        with pytest.raises(redkern.WorkingSetTooLarge, match=r"needs about 0\.6 GiB .*redkern\.tiled"):
            fused(x)
    assert fused._redkern_runtime_state().pool.nbytes() == 0
    monkeypatch.undo()
    with torch.inference_mode():
        assert fused(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("numel,dtype", [(36864, torch.float32), (7, torch.float32), (5, torch.bfloat16),
                                         (3, torch.float64), (1, torch.bfloat16)])
def test_weight_stamp_sees_a_one_bit_edit_of_any_size(numel, dtype):
    """The CPU content check compares whole words where the size allows and every byte of the
    rest: an in-place edit of one bit in the last element (what .data edits and fused optimizers
    do without a version bump) is seen at every size and dtype; NaN weights still match."""
    from redkern.backends.common import SourceStamp

    w = torch.randn(numel).to(dtype)
    w[0] = float("nan")
    stamp = SourceStamp([w])
    assert stamp.matches([w])
    w.view(torch.uint8)[-1] ^= 1  # the last byte of the last element
    assert not stamp.matches([w])
