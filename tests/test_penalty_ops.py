"""The penalty operators (KL sparsity, weight decay) against the float64 reference,
gradcheck and opcheck."""

import pytest
import torch

import reference
from pyae import ops

# float32: a few ulps over sums of up to a few thousand O(1) terms. float16 / bfloat16: the
# input is rounded to the dtype and the terms are added in float, so the result carries the
# input's rounding (the gradient -rho/r + (1-rho)/(1-r) amplifies it most near r = 0).
TOLERANCES = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-3),
}
DTYPES = list(TOLERANCES)
# Sizes around the CUDA kernel's 256 threads per block, and the empty case.
SIZES = [0, 1, 7, 256, 1000, 3001]


def mean_activations(size, *, dtype=torch.float64, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(size, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    return values.to(device=device, dtype=dtype)


def reference_gradient(mean_activation, target):
    """The reference's gradient in float64 (the clamp bounds those of mean_activation's dtype)."""
    rho_hat = mean_activation.detach().double().requires_grad_()
    eps_dtype = mean_activation.dtype
    (grad,) = torch.autograd.grad(reference.kl_sparsity(rho_hat, target, eps_dtype=eps_dtype), rho_hat)
    return grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_matches_reference(device, dtype, size):
    rho_hat = mean_activations(size, dtype=dtype, device=device).requires_grad_()
    value = ops.kl_sparsity(rho_hat, 0.05)
    assert value.shape == () and value.dtype == dtype and value.device.type == torch.device(device).type
    expected = reference.kl_sparsity(rho_hat.detach(), 0.05)
    torch.testing.assert_close(value.double().cpu(), expected.cpu(), **TOLERANCES[dtype])
    (grad,) = torch.autograd.grad(value * 1.5, rho_hat)
    assert grad.dtype == dtype and grad.shape == rho_hat.shape
    torch.testing.assert_close(grad.double().cpu(), 1.5 * reference_gradient(rho_hat, 0.05).cpu(),
                               **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_clamp_at_zero_and_one(device, dtype):
    # Inside, at and beyond both bounds [eps, 1 - eps]: the penalty is that of the clamped
    # value; the gradient is the formula's on the closed interval and 0 beyond it.
    eps = torch.finfo(dtype).eps
    rho_hat = torch.tensor([0.0, eps, 0.3, 1.0 - eps, 1.0], dtype=dtype, device=device, requires_grad=True)
    value = ops.kl_sparsity(rho_hat, 0.05)
    (grad,) = torch.autograd.grad(value, rho_hat)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    torch.testing.assert_close(value.double().cpu(), reference.kl_sparsity(rho_hat.detach(), 0.05).cpu(),
                               **TOLERANCES[dtype])
    r = rho_hat.detach().double().cpu()
    slope = -0.05 / r + 0.95 / (1 - r)
    wanted = torch.where((r >= eps) & (r <= 1 - eps), slope, torch.zeros_like(r))
    assert grad[0].item() == 0.0 and grad[4].item() == 0.0
    torch.testing.assert_close(grad.double().cpu(), wanted, **TOLERANCES[dtype])


def test_nan_propagates(device):
    rho_hat = torch.tensor([0.2, float("nan")], dtype=torch.float32, device=device)
    assert torch.isnan(ops.kl_sparsity(rho_hat, 0.05))


def test_non_contiguous_and_multidimensional_input(device):
    rho_hat = mean_activations(24, device=device).reshape(4, 6).t()  # (6, 4), not contiguous
    torch.testing.assert_close(ops.kl_sparsity(rho_hat, 0.2), reference.kl_sparsity(rho_hat, 0.2))


@pytest.mark.parametrize("target", [0.001, 0.05, 0.5, 0.999])
def test_gradcheck(device, target):
    rho_hat = mean_activations(9, device=device, seed=2).requires_grad_()
    torch.autograd.gradcheck(lambda r: ops.kl_sparsity(r, target), (rho_hat,))


def test_opcheck(device):
    rho_hat = mean_activations(9, device=device, seed=3)
    for requires_grad in (False, True):
        torch.library.opcheck(torch.ops.pyae.kl_sparsity.default, (rho_hat.clone().requires_grad_(requires_grad), 0.05))
    grad = torch.tensor(0.7, dtype=rho_hat.dtype, device=device)
    torch.library.opcheck(torch.ops.pyae.kl_sparsity_backward.default, (grad, rho_hat, 0.05))


def test_compiles_fullgraph(device):
    rho_hat = mean_activations(50, device=device, dtype=torch.float32, seed=4).requires_grad_()
    compiled = torch.compile(lambda r: 0.1 * ops.kl_sparsity(r, 0.05), fullgraph=True, backend="aot_eager")
    value = compiled(rho_hat)
    (grad,) = torch.autograd.grad(value, rho_hat)
    torch.testing.assert_close(value, 0.1 * ops.kl_sparsity(rho_hat, 0.05))
    torch.testing.assert_close(grad, 0.1 * reference_gradient(rho_hat, 0.05).float())


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: ops.kl_sparsity(torch.tensor([1, 0]), 0.1), TypeError, "mean_activation must be a floating-point"),
        (lambda: ops.kl_sparsity(torch.tensor([0.5]), 0.0), ValueError, "target must lie in"),
        (lambda: ops.kl_sparsity(torch.tensor([0.5]), 1.5), ValueError, "target must lie in"),
        (lambda: ops.kl_sparsity_backward(torch.ones(2), torch.tensor([0.5, 0.2]), 0.1), ValueError,
         "grad must be a scalar"),
        (lambda: ops.kl_sparsity_backward(torch.tensor(1.0, dtype=torch.float64), torch.tensor([0.5]), 0.1),
         TypeError, "grad has dtype"),
    ],
)
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


# --------------------------------------------------------------------------------------
# Weight decay


def weights_for(shapes, *, dtype=torch.float64, device="cpu", seed=0):
    # nn.Linear's scale (1 / sqrt(fan_in)): ||W||^2 about the row count, within float16's range.
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=generator, dtype=torch.float64) / shape[1] ** 0.5).to(device=device,
                                                                                                 dtype=dtype)
            for shape in shapes]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [[(3, 4)], [(1000, 784), (784, 1000)], [(5, 2), (2, 5)]])
def test_weight_decay_matches_reference(device, dtype, shapes):
    weights = [w.requires_grad_() for w in weights_for(shapes, dtype=dtype, device=device)]
    value = ops.weight_decay(weights)
    assert value.shape == () and value.dtype == dtype
    expected = 0.5 * sum((w.detach().double() ** 2).sum() for w in weights)
    # The sum of up to 1.6M squares: relative rounding grows like sqrt(count) ulps.
    torch.testing.assert_close(value.double().cpu(), expected.cpu(), rtol=4 * TOLERANCES[dtype]["rtol"], atol=0)
    grads = torch.autograd.grad(value * 3.0, weights)
    for grad, weight in zip(grads, weights):
        assert grad.dtype == dtype and grad.shape == weight.shape
        torch.testing.assert_close(grad, 3.0 * weight.detach(), **TOLERANCES[dtype])


def test_weight_decay_of_a_transposed_view(device):
    weight = weights_for([(4, 6)], device=device)[0].requires_grad_()
    value = ops.weight_decay([weight.t()])
    (grad,) = torch.autograd.grad(value, weight)
    torch.testing.assert_close(value, 0.5 * (weight.detach() ** 2).sum())
    torch.testing.assert_close(grad, weight.detach())


def test_weight_decay_gradcheck_and_opcheck(device):
    weights = [w.requires_grad_() for w in weights_for([(3, 4), (4, 3)], device=device, seed=1)]
    torch.autograd.gradcheck(lambda a, b: ops.weight_decay([a, b]), weights)
    frozen = [weights[0], weights[1].detach()]  # a weight that needs no gradient gets none
    (grad,) = torch.autograd.grad(ops.weight_decay(frozen), [weights[0]])
    torch.testing.assert_close(grad, weights[0].detach())
    for requires_grad in (False, True):
        torch.library.opcheck(torch.ops.pyae.weight_decay.default,
                              ([w.detach().clone().requires_grad_(requires_grad) for w in weights],))
    grad = torch.tensor(0.5, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.pyae.weight_decay_backward.default, (grad, [w.detach() for w in weights]))


def test_weight_decay_compiles_fullgraph(device):
    weights = [w.requires_grad_() for w in weights_for([(6, 5), (5, 6)], dtype=torch.float32, device=device)]
    compiled = torch.compile(lambda a, b: 1e-3 * ops.weight_decay([a, b]), fullgraph=True, backend="aot_eager")
    value = compiled(*weights)
    torch.testing.assert_close(value, 1e-3 * ops.weight_decay(weights))
    for grad, weight in zip(torch.autograd.grad(value, weights), weights):
        torch.testing.assert_close(grad, 1e-3 * weight.detach())


@pytest.mark.parametrize(
    "weights, error, message",
    [
        ([], ValueError, "at least one weight"),
        ([torch.ones(2, 2, dtype=torch.long)], TypeError, r"weights\[0\] must be a floating-point"),
        ([torch.ones(2, 2), torch.ones(2, 2, dtype=torch.float64)], TypeError, r"weights\[1\] has dtype"),
    ],
)
def test_weight_decay_bad_input_raises(weights, error, message):
    with pytest.raises(error, match=message):
        ops.weight_decay(weights)
