"""The fused sigmoid decoder + reconstruction loss operator against the float64 reference,
gradcheck and opcheck."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference
from pyae import functional as PF
from pyae import ops
from helpers import TOLERANCES

LOSSES = ["cross_entropy", "mse"]
SHAPES = [(1, 1), (3, 7), (130, 600)]


def make_pair(batch, features, *, dtype=torch.float64, device="cpu", scale=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, features, generator=generator, dtype=torch.float64) * scale
    target = torch.rand(batch, features, generator=generator, dtype=torch.float64)
    return logits.to(device=device, dtype=dtype), target.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", list(TOLERANCES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("loss", LOSSES)
def test_forward_matches_reference(device, dtype, shape, loss):
    logits, target = make_pair(*shape, dtype=dtype, device=device)
    reconstruction, value = ops.sigmoid_reconstruction_loss(logits, target, loss)
    expected_reconstruction, expected_value = reference.sigmoid_reconstruction_loss(logits, target, loss)
    assert reconstruction.dtype == value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(reconstruction.double().cpu(), expected_reconstruction.cpu(), **TOLERANCES[dtype])
    torch.testing.assert_close(value.double().cpu(), expected_value.cpu(), **TOLERANCES[dtype])


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("outputs", ["both", "reconstruction", "loss"])
def test_gradcheck(device, loss, outputs):
    logits, target = make_pair(4, 5, device=device, seed=1)
    logits.requires_grad_()

    def function(z):
        reconstruction, value = ops.sigmoid_reconstruction_loss(z, target, loss)
        return {"both": (reconstruction, value), "reconstruction": reconstruction, "loss": value}[outputs]

    torch.autograd.gradcheck(function, (logits,))


@pytest.mark.parametrize("loss", LOSSES)
def test_opcheck(device, loss):
    logits, target = make_pair(6, 5, device=device, seed=2)
    cross_entropy = loss == "cross_entropy"  # the schema's flag
    for requires_grad in (False, True):
        torch.library.opcheck(torch.ops.pyae.sigmoid_reconstruction_loss.default,
                              (logits.clone().requires_grad_(requires_grad), target, cross_entropy))
    reconstruction, _ = ops.sigmoid_reconstruction_loss(logits, target, loss)
    grads = (torch.randn_like(reconstruction), torch.tensor(0.5, dtype=logits.dtype, device=device))
    torch.library.opcheck(torch.ops.pyae.sigmoid_reconstruction_loss_backward.default,
                          (*grads, reconstruction, target, cross_entropy))
    torch.library.opcheck(torch.ops.pyae.sigmoid_reconstruction_loss_backward.default,
                          (None, grads[1], reconstruction, target, cross_entropy))


@pytest.mark.parametrize("loss", LOSSES)
def test_saturated_logits_stay_finite_and_exact(device, loss):
    logits = torch.tensor([[1000.0, -1000.0, 30.0, -30.0]], device=device, requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0]], device=device)
    reconstruction, value = ops.sigmoid_reconstruction_loss(logits, target, loss)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    if loss == "cross_entropy":
        # softplus(1000) - 0 = 1000, softplus(-1000) + 1000 = 1000, and ~1e-13 for the others.
        assert value.item() == pytest.approx(2000.0, rel=1e-6)
        torch.testing.assert_close(logits.grad, (reconstruction - target).detach())


def test_target_gradient_is_refused_by_the_op_and_supported_by_functional():
    logits, target = make_pair(3, 4, seed=3)
    target.requires_grad_()
    _, value = ops.sigmoid_reconstruction_loss(logits.requires_grad_(), target, "cross_entropy")
    with pytest.raises(RuntimeError, match="treats its target as data"):
        value.backward()
    for loss in LOSSES:
        out = PF.sigmoid_reconstruction_loss(logits, target, loss)
        expected = reference.sigmoid_reconstruction_loss(logits, target, loss)[1]
        got = torch.autograd.grad(out.loss, [logits, target])
        wanted = torch.autograd.grad(expected, [logits, target])
        for a, b in zip(got, wanted):
            torch.testing.assert_close(a, b)


BAD = [
    ("integer logits", lambda z, x: (z.long(), x), TypeError, "logits must be a floating-point"),
    ("1-D logits", lambda z, x: (z[0], x[0]), ValueError, "logits must be 2-D"),
    ("empty batch", lambda z, x: (z[:0], x[:0]), ValueError, "at least one row"),
    ("shape mismatch", lambda z, x: (z, x[:, :-1]), ValueError, "target must have logits' shape"),
    ("dtype mismatch", lambda z, x: (z, x.float()), TypeError, "target has dtype"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises(case):
    _, corrupt, error, message = case
    args = corrupt(*make_pair(4, 3))
    with pytest.raises(error, match=message):
        ops.sigmoid_reconstruction_loss(*args, "cross_entropy")
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in args]
        with pytest.raises(error, match=message):
            ops.sigmoid_reconstruction_loss(*fake, "cross_entropy")


@pytest.mark.parametrize("bad_value", [-0.5, 1.25])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cpu_cross_entropy_refuses_targets_outside_unit_interval(dtype, bad_value):
    # Every position of a 130 x 600 batch (several tiles), so each tile's check is exercised.
    logits, target = make_pair(130, 600, dtype=dtype, seed=6)
    for row, column in [(0, 0), (129, 599), (64, 512), (70, 3)]:
        corrupted = target.clone()
        corrupted[row, column] = bad_value
        with pytest.raises(ValueError, match=r"cross_entropy needs targets in \[0, 1\]"):
            ops.sigmoid_reconstruction_loss(logits, corrupted, "cross_entropy")
        with pytest.raises(ValueError, match=r"cross_entropy needs targets in \[0, 1\]"):
            PF.sigmoid_reconstruction_loss(logits, corrupted, "cross_entropy")
        ops.sigmoid_reconstruction_loss(logits, corrupted, "mse")  # squared error takes any target
    edges = target.clone()
    edges[0, :2] = torch.tensor([0.0, 1.0], dtype=dtype)
    ops.sigmoid_reconstruction_loss(logits, edges, "cross_entropy")  # both ends of [0, 1] are valid


def test_cpu_loss_does_not_depend_on_thread_count():
    logits, target = make_pair(300, 700, dtype=torch.float32, seed=4)
    threads = torch.get_num_threads()
    values = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            values.append(ops.sigmoid_reconstruction_loss(logits, target, "cross_entropy").loss)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(v, values[0]) for v in values)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 50), features=st.integers(1, 60), scale=st.sampled_from([0.1, 3.0, 50.0, 5000.0]),
       loss=st.sampled_from(LOSSES), transpose=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_matches_reference(batch, features, scale, loss, transpose, seed):
    logits, target = make_pair(batch, features, scale=scale, seed=seed)
    if transpose:  # column-major inputs
        logits, target = logits.t().contiguous().t(), target.t().contiguous().t()
    logits.requires_grad_()
    reconstruction, value = ops.sigmoid_reconstruction_loss(logits, target, loss)
    expected = reference.sigmoid_reconstruction_loss(logits, target, loss)
    torch.testing.assert_close(reconstruction, expected[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(value, expected[1], rtol=1e-10, atol=1e-12)
    upstream = torch.randn(reconstruction.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    got = torch.autograd.grad((reconstruction * upstream).sum() + value, logits)[0]
    wanted = torch.autograd.grad((expected[0] * upstream).sum() + expected[1], logits)[0]
    assert torch.isfinite(got).all()
    # Loose only against cancellation between the two upstream terms; float32 would be ~1e-7.
    torch.testing.assert_close(got, wanted, rtol=1e-7, atol=1e-9)
