"""The functional API: penalties, losses and corruptions."""

import math

import pytest
import torch

import reference
from pyae import functional as PF


def kl_reference(rho_hat, target):
    return sum(target * math.log(target / r) + (1 - target) * math.log((1 - target) / (1 - r)) for r in rho_hat)


def test_kl_sparsity_matches_formula_and_gradient():
    rho_hat = torch.tensor([0.01, 0.2, 0.5, 0.93], dtype=torch.float64, requires_grad=True)
    target = 0.1
    value = PF.kl_sparsity(rho_hat, target)
    torch.testing.assert_close(value.item(), kl_reference(rho_hat.tolist(), target))
    (grad,) = torch.autograd.grad(value, rho_hat)
    # The lecture's derivative: -rho / rho_hat + (1 - rho) / (1 - rho_hat).
    torch.testing.assert_close(grad, -target / rho_hat.detach() + (1 - target) / (1 - rho_hat.detach()))


def test_kl_sparsity_is_zero_with_zero_gradient_at_target():
    rho_hat = torch.full((5,), 0.05, dtype=torch.float64, requires_grad=True)
    value = PF.kl_sparsity(rho_hat, 0.05)
    (grad,) = torch.autograd.grad(value, rho_hat)
    assert value.item() == pytest.approx(0.0, abs=1e-15)
    assert torch.allclose(grad, torch.zeros_like(grad), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_kl_sparsity_finite_at_exact_zero_and_one(dtype):
    rho_hat = torch.tensor([0.0, 1.0, 0.3], dtype=dtype, requires_grad=True)
    value = PF.kl_sparsity(rho_hat, 0.05)
    (grad,) = torch.autograd.grad(value, rho_hat)
    assert torch.isfinite(value) and value > 0
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_kl_sparsity_rejects_targets_outside_open_interval(target):
    with pytest.raises(ValueError, match="target must lie in"):
        PF.kl_sparsity(torch.tensor([0.5]), target)


def test_kl_sparsity_rejects_non_numbers():
    with pytest.raises(TypeError, match="target must be a real number"):
        PF.kl_sparsity(torch.tensor([0.5]), "0.1")
    with pytest.raises(TypeError, match="mean_activation must be a floating-point"):
        PF.kl_sparsity(torch.tensor([1, 0]), 0.1)


def test_weight_decay_gradient_is_weight():
    weights = [torch.randn(4, 3, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    value = PF.weight_decay(weights)
    torch.testing.assert_close(value, 0.5 * sum((w * w).sum() for w in weights))
    grads = torch.autograd.grad(value, weights)
    for grad, weight in zip(grads, weights):
        torch.testing.assert_close(grad, weight.detach())
    with pytest.raises(ValueError, match="at least one"):
        PF.weight_decay([])
    with pytest.raises(TypeError, match="weights must be a list or tuple"):
        PF.weight_decay(weights[0])


def test_reconstruction_losses_sum_features_and_average_batch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    target = torch.rand(6, 5, dtype=torch.float64, generator=generator)
    xhat = torch.sigmoid(logits)
    expected_mse = ((xhat - target) ** 2).sum(1).mean()
    expected_ce = -(target * xhat.log() + (1 - target) * (1 - xhat).log()).sum(1).mean()
    torch.testing.assert_close(PF.reconstruction_loss(xhat, target, "mse"), expected_mse)
    torch.testing.assert_close(PF.sigmoid_reconstruction_loss(logits, target, "mse").loss, expected_mse)
    torch.testing.assert_close(PF.reconstruction_loss(xhat, target, "cross_entropy"), expected_ce)
    torch.testing.assert_close(PF.sigmoid_reconstruction_loss(logits, target, "cross_entropy").loss,
                               expected_ce)


def test_cross_entropy_from_logits_is_stable_when_saturated():
    logits = torch.tensor([[200.0, -200.0]], requires_grad=True)
    value = PF.sigmoid_reconstruction_loss(logits, torch.tensor([[0.0, 1.0]]), "cross_entropy").loss
    value.backward()
    assert value.item() == pytest.approx(400.0)
    assert torch.isfinite(logits.grad).all()


def test_reconstruction_loss_errors():
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match="'mse', 'cross_entropy'"):
        PF.reconstruction_loss(x, x, "l1")
    with pytest.raises(ValueError, match="one shape"):
        PF.reconstruction_loss(x, x[:, :3])
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        PF.sigmoid_reconstruction_loss(x, x * 2, "cross_entropy")
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        PF.reconstruction_loss(x, x - 1, "cross_entropy")
    with pytest.raises(TypeError, match="target must be a floating-point"):
        PF.reconstruction_loss(x, x.long())


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 1.0])
def test_mask_noise_zeroes_about_a_fraction_q(q):
    x = torch.rand(200, 500) + 0.5  # no zeros of its own
    corrupted = PF.mask_noise(x, q, generator=torch.Generator().manual_seed(0))
    fraction = (corrupted == 0).double().mean().item()
    # 100,000 Bernoulli(q) draws: the standard deviation of the fraction is <= 0.0016.
    assert fraction == pytest.approx(q, abs=0.01)
    kept = corrupted != 0
    assert torch.equal(corrupted[kept], x[kept])  # no rescaling of what is kept


def test_gaussian_noise_statistics():
    x = torch.zeros(400, 500, dtype=torch.float64)
    noisy = PF.gaussian_noise(x, 2.0, generator=torch.Generator().manual_seed(0))
    assert noisy.mean().item() == pytest.approx(0.0, abs=0.02)
    assert noisy.std().item() == pytest.approx(2.0, rel=0.01)
    assert torch.equal(PF.gaussian_noise(x, 0.0), x)


def test_noise_is_reproducible_with_a_generator():
    x = torch.rand(10, 10)
    for corrupt, level in ((PF.mask_noise, 0.3), (PF.gaussian_noise, 0.5)):
        first = corrupt(x, level, generator=torch.Generator().manual_seed(3))
        second = corrupt(x, level, generator=torch.Generator().manual_seed(3))
        assert torch.equal(first, second)


def test_noise_argument_errors():
    x = torch.rand(2, 3)
    for q in (-0.1, 1.1, float("nan")):
        with pytest.raises(ValueError, match=r"q must lie in \[0, 1\]"):
            PF.mask_noise(x, q)
    for std in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="std must be a finite number >= 0"):
            PF.gaussian_noise(x, std)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        PF.mask_noise(x.long(), 0.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        PF.gaussian_noise(x, 1.0, generator=3)


def test_functional_encoders_are_the_ops():
    # Every output of the encoder, and the masked encoder as the encoder of the masked input
    # drawn from the same generator state, gradients included.
    x, weight, bias = torch.rand(30, 9, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64), None
    for b in (bias, torch.randn(6, dtype=torch.float64)):
        for got, wanted in zip(PF.sigmoid_encoder(x, weight, b), reference.sigmoid_encoder(x, weight, b)):
            torch.testing.assert_close(got, wanted)
    x.requires_grad_()
    weight.requires_grad_()
    masked = PF.masked_sigmoid_encoder(x, weight, None, 0.4, generator=torch.Generator().manual_seed(5))
    corrupted = PF.mask_noise(x, 0.4, generator=torch.Generator().manual_seed(5))
    expected = reference.sigmoid_encoder(corrupted, weight)
    for got, wanted in zip(masked, expected):
        torch.testing.assert_close(got, wanted)
    upstream = [torch.rand_like(t) for t in masked]
    for got, wanted in zip(torch.autograd.grad(masked, [x, weight], upstream),
                           torch.autograd.grad(expected, [x, weight], upstream)):
        torch.testing.assert_close(got, wanted)
