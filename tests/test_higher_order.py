"""Higher-order autograd: every operator's gradient is itself differentiable, and second
derivatives (double backward, Hessian-vector products, gradient penalties) equal those of the
plain-torch float64 references, through the operators and through the modules."""

import pytest
import torch

import pyae
import reference
from helpers import make_inputs
from pyae import ops
from test_modules import ALL_TERMS, hand_written

gradgradcheck = torch.autograd.gradgradcheck


def seed_tensor(value, device):
    return torch.tensor(value, dtype=torch.int64, device=device)


# --------------------------------------------------------------------------------------
# gradgradcheck of every forward operator (float64, every output)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("output", ["hidden", "mean_activation", "contractive", "all"])
def test_encoder_gradgradcheck(device, bias, output):
    x, weight, b = make_inputs(4, 3, 5, device=device, bias=bias, seed=20)
    inputs = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    pick = {"hidden": 0, "mean_activation": 1, "contractive": 2}

    def encoder(*args):
        outputs = ops.sigmoid_encoder(*args)
        return outputs if output == "all" else outputs[pick[output]]

    gradgradcheck(encoder, inputs)


def test_masked_encoder_gradgradcheck(device):
    x, weight, b = make_inputs(4, 6, 5, device=device, seed=21)
    inputs = [t.requires_grad_() for t in (x, weight, b)]
    gradgradcheck(lambda *args: ops.masked_sigmoid_encoder(*args, 0.4, seed_tensor(3, device)), inputs)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_reconstruction_loss_gradgradcheck(device, loss):
    generator = torch.Generator().manual_seed(22)
    logits = (torch.randn(5, 4, generator=generator, dtype=torch.float64) * 2).to(device).requires_grad_()
    target = torch.rand(5, 4, generator=generator, dtype=torch.float64).to(device)
    gradgradcheck(lambda z: ops.sigmoid_reconstruction_loss(z, target, loss), [logits])


def test_kl_sparsity_gradgradcheck(device):
    rho_hat = torch.tensor([0.02, 0.3, 0.5, 0.9], dtype=torch.float64, device=device, requires_grad=True)
    gradgradcheck(lambda r: ops.kl_sparsity(r, 0.1), [rho_hat])


def test_weight_decay_gradgradcheck(device):
    generator = torch.Generator().manual_seed(23)
    weights = [torch.randn(3, 4, generator=generator, dtype=torch.float64).to(device).requires_grad_(),
               torch.randn(4, 3, generator=generator, dtype=torch.float64).to(device).requires_grad_()]
    gradgradcheck(lambda *w: ops.weight_decay(w), weights)


def test_mask_noise_gradgradcheck(device):
    x = torch.rand(6, 7, dtype=torch.float64, device=device, requires_grad=True)
    gradgradcheck(lambda t: ops.mask_noise(t, 0.3, seed_tensor(5, device)), [x])


# --------------------------------------------------------------------------------------
# The backward operators, called directly, are differentiable in every input: their
# analytical gradient (the differentiable formulas) against finite differences of the fused
# kernel.


def test_encoder_backward_operator_gradcheck(device):
    x, weight, b = make_inputs(4, 3, 5, device=device, seed=24)
    hidden = ops.sigmoid_encoder(x, weight, b).hidden
    generator = torch.Generator().manual_seed(25)
    upstream = [torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
                for shape in [(4, 5), (5,), ()]]
    inputs = [t.clone().requires_grad_() for t in (*upstream, x, weight, hidden)]
    torch.autograd.gradcheck(lambda *args: ops.sigmoid_encoder_backward(*args), inputs)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_reconstruction_backward_operator_gradcheck(device, loss):
    generator = torch.Generator().manual_seed(26)
    reconstruction = torch.rand(4, 3, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    target = torch.rand(4, 3, generator=generator, dtype=torch.float64).to(device)
    grad_reconstruction = torch.randn(4, 3, generator=generator, dtype=torch.float64).to(device).requires_grad_()
    grad_loss = torch.tensor(0.7, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(
        lambda g, gl, r: ops.sigmoid_reconstruction_loss_backward(g, gl, r, target, loss),
        [grad_reconstruction, grad_loss, reconstruction],
    )


def test_kl_backward_operator_gradcheck(device):
    rho_hat = torch.tensor([0.02, 0.3, 0.5, 0.9], dtype=torch.float64, device=device, requires_grad=True)
    grad = torch.tensor(1.3, dtype=torch.float64, device=device, requires_grad=True)
    torch.autograd.gradcheck(lambda g, r: ops.kl_sparsity_backward(g, r, 0.1), [grad, rho_hat])


def test_kl_second_derivative_is_zero_outside_the_clamp(device):
    # Outside [eps, 1 - eps] the first derivative is 0 (kernel_math.h): so is the second,
    # with no NaN from the formula's poles at 0 and 1.
    rho_hat = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64, device=device, requires_grad=True)
    (grad,) = torch.autograd.grad(ops.kl_sparsity(rho_hat, 0.1), rho_hat, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), rho_hat)
    assert second[0] == 0 and second[1] == 0
    torch.testing.assert_close(second[2], torch.tensor(0.1 / 0.25 + 0.9 / 0.25, dtype=torch.float64, device=device))


# --------------------------------------------------------------------------------------
# Second derivatives against the plain-torch references (what gradient penalties and
# Hessian-vector products compute).


def hessian_vector_products(function, inputs, vectors):
    """d/d inputs of <d function / d inputs, vectors>, with function returning a scalar."""
    grads = torch.autograd.grad(function(*inputs), inputs, create_graph=True)
    inner = sum((g * v).sum() for g, v in zip(grads, vectors))
    return torch.autograd.grad(inner, inputs)


@pytest.mark.parametrize("term", ["hidden", "mean_activation", "contractive"])
def test_encoder_hessian_vector_products_match_reference(device, term):
    x, weight, b = make_inputs(9, 7, 6, device=device, seed=27)
    inputs = [t.requires_grad_() for t in (x, weight, b)]
    generator = torch.Generator().manual_seed(28)
    vectors = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(device) for t in inputs]
    upstream = {"hidden": torch.randn(9, 6, generator=generator, dtype=torch.float64).to(device),
                "mean_activation": torch.randn(6, generator=generator, dtype=torch.float64).to(device),
                "contractive": torch.tensor(1.0, dtype=torch.float64, device=device)}
    index = {"hidden": 0, "mean_activation": 1, "contractive": 2}[term]

    def loss(encoder):
        return lambda *args: (encoder(*args)[index] * upstream[term]).sum()

    got = hessian_vector_products(loss(ops.sigmoid_encoder), inputs, vectors)
    wanted = hessian_vector_products(loss(reference.sigmoid_encoder), inputs, vectors)
    for g, w in zip(got, wanted):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_reconstruction_loss_hessian_matches_reference(device, loss):
    generator = torch.Generator().manual_seed(29)
    logits = (torch.randn(6, 5, generator=generator, dtype=torch.float64) * 2).to(device).requires_grad_()
    target = torch.rand(6, 5, generator=generator, dtype=torch.float64).to(device)
    vector = torch.randn(6, 5, generator=generator, dtype=torch.float64).to(device)
    got = hessian_vector_products(lambda z: ops.sigmoid_reconstruction_loss(z, target, loss).loss,
                                  [logits], [vector])
    wanted = hessian_vector_products(lambda z: reference.sigmoid_reconstruction_loss(z, target, loss)[1],
                                     [logits], [vector])
    torch.testing.assert_close(got[0], wanted[0], rtol=1e-10, atol=1e-12)


def test_kl_hessian_matches_reference(device):
    rho_hat = torch.tensor([0.02, 0.3, 0.5, 0.9], dtype=torch.float64, device=device, requires_grad=True)
    vector = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64, device=device)
    got = hessian_vector_products(lambda r: ops.kl_sparsity(r, 0.1), [rho_hat], [vector])
    wanted = hessian_vector_products(lambda r: reference.kl_sparsity(r, 0.1), [rho_hat], [vector])
    torch.testing.assert_close(got[0], wanted[0], rtol=1e-10, atol=1e-12)


def test_training_step_hessian_vector_product_matches_hand_written_model(device):
    # The whole model with every term: its Hessian-vector product in the parameters, and a
    # gradient penalty on the input, equal the hand-written plain-torch model's.
    torch.manual_seed(30)
    model = pyae.Autoencoder(8, 5, device=device, **ALL_TERMS)
    x = torch.rand(6, 8, dtype=torch.float64, device=device)
    params = list(model.parameters())
    vectors = [torch.randn_like(p) for p in params]
    got = hessian_vector_products(lambda *_: model(x).loss, params, vectors)
    wanted = hessian_vector_products(lambda *_: hand_written(model, x, x)[0], params, vectors)
    for g, w in zip(got, wanted):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)

    x_in = x.clone().requires_grad_()

    def input_gradient_penalty(loss_of):
        (grad_x,) = torch.autograd.grad(loss_of(x_in), x_in, create_graph=True)
        return torch.autograd.grad(grad_x.pow(2).sum(), params)

    got = input_gradient_penalty(lambda inp: model(inp).loss)
    # The hand-written model encodes x_in and reconstructs it, as the module does.
    wanted = input_gradient_penalty(lambda inp: hand_written(model, inp, inp)[0])
    for g, w in zip(got, wanted):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_denoising_double_backward_goes_through_the_same_mask(device):
    # d^2/dx dW of the masked encoder equals that of the plain encoder of mask_noise(x).
    x, weight, b = make_inputs(5, 6, 4, device=device, seed=31)
    seed = seed_tensor(17, device)
    inputs = [t.requires_grad_() for t in (x, weight, b)]
    vectors = [torch.randn_like(t) for t in inputs]
    loss = lambda encode: lambda *args: (encode(*args).contractive + encode(*args).hidden.pow(2).sum())  # noqa: E731
    got = hessian_vector_products(loss(lambda *a: ops.masked_sigmoid_encoder(*a, 0.5, seed)), inputs, vectors)
    wanted = hessian_vector_products(
        loss(lambda xx, w, bb: reference_encoder_output(ops.mask_noise(xx, 0.5, seed), w, bb)), inputs, vectors)
    for g, w in zip(got, wanted):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def reference_encoder_output(x, weight, bias):
    return ops.EncoderOutput(*reference.sigmoid_encoder(x, weight, bias))


def test_first_order_backward_stays_on_the_fused_kernels(device):
    # Without create_graph nothing is recorded: the gradients carry no graph, and they equal
    # the fused kernel's bits (the differentiable formulas run only when asked for).
    x, weight, b = make_inputs(7, 5, 4, device=device, seed=32)
    inputs = [t.requires_grad_() for t in (x, weight, b)]
    outputs = ops.sigmoid_encoder(*inputs)
    upstream = [torch.ones_like(o) for o in outputs]
    grads = torch.autograd.grad(outputs, inputs, upstream)
    assert all(g.grad_fn is None for g in grads)
    direct = ops.sigmoid_encoder_backward(*upstream, x.detach(), weight.detach(), outputs.hidden.detach())
    for g, d in zip(grads, direct):
        assert torch.equal(g, d)
    # With create_graph, the same values from the differentiable formulas.
    outputs = ops.sigmoid_encoder(*inputs)
    graph_grads = torch.autograd.grad(outputs, inputs, upstream, create_graph=True)
    assert all(g.grad_fn is not None for g in graph_grads)
    for g, d in zip(graph_grads, direct):
        torch.testing.assert_close(g, d, rtol=1e-12, atol=1e-14)


def test_reconstruction_double_backward_refuses_target_gradient(device):
    logits = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.rand(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    out = ops.sigmoid_reconstruction_loss(logits, target, "cross_entropy")
    with pytest.raises(RuntimeError, match="treats its target as data"):
        torch.autograd.grad(out.loss, [logits, target], create_graph=True)


def test_functional_reconstruction_with_target_gradient_is_twice_differentiable(device):
    # The functional API routes targets that need a gradient to torch ops, which are
    # differentiable at any order.
    logits = torch.randn(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.rand(3, 4, dtype=torch.float64, device=device, requires_grad=True)
    loss = pyae.functional.sigmoid_reconstruction_loss(logits, target, "cross_entropy").loss
    (grad_target,) = torch.autograd.grad(loss, target, create_graph=True)
    (second,) = torch.autograd.grad(grad_target.sum(), logits)
    torch.testing.assert_close(second, -torch.ones_like(logits) / 3)
