"""The autoencoder modules: wiring, regularizers, noise, validation and torch.compile."""

import math

import pytest
import torch
import torch.nn.functional as F

import pyae
import reference


def clone_model(model, **changes):
    """A model of the same class and parameters with some constructor options changed."""
    options = dict(
        tied_weights=model.tied_weights, decoder_activation=model.decoder_activation, loss=model.loss,
        weight_decay=model.weight_decay, noise=model.noise, noise_level=model.noise_level,
        sparsity_target=model.sparsity_target, sparsity_weight=model.sparsity_weight,
        contractive_weight=model.contractive_weight, dtype=model.encoder.weight.dtype,
    )
    options.update(changes)
    twin = pyae.Autoencoder(model.n_inputs, model.n_hidden, **options)
    twin.load_state_dict(model.state_dict())
    return twin


# Every term on: the model of the two hand-written comparisons below.
ALL_TERMS = dict(loss="cross_entropy", weight_decay=0.01, sparsity_target=0.2, sparsity_weight=0.5,
                 contractive_weight=0.3, dtype=torch.float64)


def hand_written(model, encoder_input, x):
    """(loss, terms, hidden, logits) of an ALL_TERMS model written with torch ops from docs/design.md,
    encoding encoder_input and reconstructing x."""
    W, b = model.encoder.weight, model.encoder.bias
    h, rho_hat, contractive = reference.sigmoid_encoder(encoder_input, W, b)
    logits = F.linear(h, model.decoder.weight, model.decoder.bias)
    reconstruction = -(x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(1).mean()
    decay = 0.5 * (W.pow(2).sum() + model.decoder.weight.pow(2).sum())
    kl = (0.2 * torch.log(0.2 / rho_hat) + 0.8 * torch.log(0.8 / (1 - rho_hat))).sum()
    loss = reconstruction + 0.01 * decay + 0.5 * kl + 0.3 * contractive
    terms = {"reconstruction": reconstruction, "weight_decay": decay, "sparsity": kl, "contractive": contractive}
    return loss, terms, h, logits


def test_forward_matches_hand_written_model(device):
    torch.manual_seed(0)
    model = pyae.Autoencoder(12, 7, device=device, **ALL_TERMS)
    x = torch.rand(9, 12, dtype=torch.float64, device=device)
    out = model(x)
    expected, terms, h, logits = hand_written(model, x, x)

    assert isinstance(out, pyae.AutoencoderOutput)
    assert set(out.terms) == set(terms)
    for name, value in terms.items():
        torch.testing.assert_close(out.terms[name], value)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.reconstruction, torch.sigmoid(logits))
    torch.testing.assert_close(out.hidden, h)

    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    for got, wanted in zip(grads, expected_grads):
        torch.testing.assert_close(got, wanted)


def test_terms_present_only_when_enabled():
    x = torch.rand(4, 6)
    assert set(pyae.Autoencoder(6, 3)(x).terms) == {"reconstruction"}
    assert set(pyae.SparseAutoencoder(6, 3)(x).terms) == {"reconstruction", "sparsity"}
    assert set(pyae.ContractiveAutoencoder(6, 3)(x).terms) == {"reconstruction", "contractive"}
    assert set(pyae.Autoencoder(6, 3, weight_decay=0.1)(x).terms) == {"reconstruction", "weight_decay"}
    # A target alone monitors the KL divergence without weighting it into the loss.
    out = pyae.Autoencoder(6, 3, sparsity_target=0.1)(x)
    torch.testing.assert_close(out.loss, out.terms["reconstruction"])
    assert "sparsity" in out.terms


def test_tied_weights_share_one_parameter():
    model = pyae.Autoencoder(8, 5, tied_weights=True)
    names = [name for name, _ in model.named_parameters()]
    assert sorted(names) == ["decoder_bias", "encoder.bias", "encoder.weight"]
    assert model.decoder_weight.data_ptr() == model.encoder.weight.data_ptr()
    assert model.decoder_weight.shape == (8, 5)
    x = torch.rand(3, 8, dtype=torch.float64)
    model = model.double()
    out = model(x)
    out.loss.backward()
    # The shared weight's gradient holds both the encoder's and the decoder's contributions.
    W, b, c = model.encoder.weight, model.encoder.bias, model.decoder_bias
    W_ = W.detach().clone().requires_grad_()
    expected = ((torch.sigmoid(F.linear(torch.sigmoid(F.linear(x, W_, b.detach())), W_.t(), c.detach())) - x) ** 2
                ).sum(1).mean()
    expected.backward()
    torch.testing.assert_close(W.grad, W_.grad)


@pytest.mark.parametrize("tied", [False, True])
def test_weight_decay_adds_exactly_lambda_w(tied):
    torch.manual_seed(1)
    plain = pyae.Autoencoder(10, 6, tied_weights=tied, dtype=torch.float64)
    decayed = clone_model(plain, weight_decay=0.37)
    x = torch.rand(5, 10, dtype=torch.float64)
    grads_plain = dict(zip([n for n, _ in plain.named_parameters()],
                           torch.autograd.grad(plain(x).loss, list(plain.parameters()))))
    grads_decayed = dict(zip([n for n, _ in decayed.named_parameters()],
                             torch.autograd.grad(decayed(x).loss, list(decayed.parameters()))))
    weights = {name for name, p in decayed.named_parameters() if p.dim() == 2}
    assert weights == ({"encoder.weight"} if tied else {"encoder.weight", "decoder.weight"})
    for name, parameter in decayed.named_parameters():
        added = 0.37 * parameter.detach() if name in weights else torch.zeros_like(parameter)
        torch.testing.assert_close(grads_decayed[name] - grads_plain[name], added, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_decay_by_the_optimizer_trains_like_the_loss_term(tied, optimizer):
    # The same model trained twice, float64: the term in the loss (its gradient by autograd), and
    # the optimizer's weight_decay on parameter_groups(). Same losses and terms, the same
    # weights after a few steps, and the weights' .grad without lambda * W in the second.
    torch.manual_seed(2)
    by_loss = pyae.Autoencoder(12, 7, tied_weights=tied, weight_decay=0.3, contractive_weight=0.1, dtype=torch.float64)
    by_optimizer = clone_model(by_loss)
    by_optimizer.optimizer_applies_weight_decay = True
    groups = by_optimizer.parameter_groups()
    assert [len(g["params"]) for g in groups] == ([1, 2] if tied else [2, 2])  # tied: two biases
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]
    make = {"sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
            "adam": lambda p: torch.optim.Adam(p, lr=0.01)}[optimizer]
    first, second = make(by_loss.parameters()), make(groups)
    for step in range(4):
        x = torch.rand(6, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(step))
        outputs = []
        for model, opt in ((by_loss, first), (by_optimizer, second)):
            opt.zero_grad()
            out = model(x)
            out.loss.backward()
            outputs.append(out)
        assert torch.equal(outputs[0].loss, outputs[1].loss)
        assert torch.equal(outputs[0].terms["weight_decay"], outputs[1].terms["weight_decay"])
        assert outputs[1].terms["weight_decay"].grad_fn is None
        for (name, a), b in zip(by_loss.named_parameters(), by_optimizer.parameters()):
            missing = 0.3 * a.detach() if a.dim() == 2 else 0.0
            torch.testing.assert_close(a.grad - missing, b.grad, rtol=1e-12, atol=1e-14, msg=name)
        first.step()
        second.step()
        for a, b in zip(by_loss.parameters(), by_optimizer.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_kl_term_zero_with_zero_gradient_at_target():
    target = 0.05
    model = pyae.SparseAutoencoder(6, 4, sparsity_target=target, sparsity_weight=1.0, dtype=torch.float64)
    with torch.no_grad():
        model.encoder.weight.zero_()
        model.encoder.bias.fill_(math.log(target / (1 - target)))  # every h is exactly the target
    out = model(torch.rand(7, 6, dtype=torch.float64))
    assert out.terms["sparsity"].item() == pytest.approx(0.0, abs=1e-14)
    grads = torch.autograd.grad(out.terms["sparsity"], [model.encoder.weight, model.encoder.bias])
    for grad in grads:
        assert grad.abs().max().item() < 1e-12


def test_masking_noise_in_training_mode_only():
    model = pyae.DenoisingAutoencoder(400, 5, noise="mask", noise_level=0.4)
    x = torch.rand(300, 400) + 0.1
    corrupted = model.corrupt(x, generator=torch.Generator().manual_seed(0))
    assert (corrupted == 0).float().mean().item() == pytest.approx(0.4, abs=0.01)

    model.eval()
    first, second = model(x), model(x)
    torch.testing.assert_close(first.hidden, model.encode(x))
    assert torch.equal(first.loss, second.loss)
    model.train()
    noisy = model(x, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(noisy.hidden, first.hidden)
    # The loss compares the reconstruction of the corrupted input with the clean input.
    torch.testing.assert_close(noisy.terms["reconstruction"], ((noisy.reconstruction - x) ** 2).sum(1).mean())


def test_denoising_step_matches_hand_written_model_on_the_same_corruption(device):
    # Every term on, masking noise: the loss and every gradient equal a hand-written model's
    # evaluated on the corrupted input the step drew (the same generator seed draws it again).
    torch.manual_seed(1)
    model = pyae.Autoencoder(12, 7, noise="mask", noise_level=0.3, device=device, **ALL_TERMS)
    x = torch.rand(9, 12, dtype=torch.float64, device=device)
    out = model(x, generator=torch.Generator(device=device).manual_seed(4))
    corrupted = model.corrupt(x, generator=torch.Generator(device=device).manual_seed(4))
    assert 0 < (corrupted == 0).sum() < corrupted.numel()

    expected, _, h, _ = hand_written(model, corrupted, x)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.hidden, h)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    for got, wanted in zip(grads, torch.autograd.grad(expected, list(model.parameters()))):
        torch.testing.assert_close(got, wanted)


def test_gaussian_noise_model_is_reproducible_with_generator():
    model = pyae.DenoisingAutoencoder(20, 5, noise="gaussian", noise_level=1.0)
    x = torch.rand(8, 20)
    a = model(x, generator=torch.Generator().manual_seed(5)).loss
    b = model(x, generator=torch.Generator().manual_seed(5)).loss
    assert torch.equal(a, b)


def test_encode_filters_and_decode():
    model = pyae.Autoencoder(9, 4, decoder_activation="linear")
    x = torch.rand(3, 9)
    torch.testing.assert_close(model.encode(x), torch.sigmoid(model.encoder(x)))
    filters = model.filters()
    torch.testing.assert_close(filters.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(filters * model.encoder.weight.norm(dim=1, keepdim=True), model.encoder.weight.detach())
    assert not filters.requires_grad
    torch.testing.assert_close(model.decode(model.encode(x)), model.decoder(model.encode(x)))


def test_variants_defaults():
    assert pyae.DenoisingAutoencoder(4, 2).noise == "mask"
    assert pyae.DenoisingAutoencoder(4, 2).noise_level == 0.25
    assert pyae.SparseAutoencoder(4, 2).sparsity_target == 0.05
    assert pyae.ContractiveAutoencoder(4, 2).contractive_weight == 0.1
    assert isinstance(pyae.ContractiveAutoencoder(4, 2, tied_weights=True), pyae.Autoencoder)
    assert "contractive_weight=0.1" in repr(pyae.ContractiveAutoencoder(4, 2))


BAD_CONSTRUCTIONS = [
    (dict(n_inputs=0), ValueError, "n_inputs must be >= 1"),
    (dict(n_hidden=2.5), TypeError, "n_hidden must be an int"),
    (dict(decoder_activation="relu"), ValueError, "decoder_activation must be one of 'sigmoid', 'linear'"),
    (dict(loss="l1"), ValueError, "loss must be one of 'mse', 'cross_entropy'"),
    (dict(noise="salt"), ValueError, "noise must be one of None, 'mask', 'gaussian'"),
    (dict(loss="cross_entropy", decoder_activation="linear"), ValueError, "needs decoder_activation='sigmoid'"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay must be a finite number >= 0"),
    (dict(contractive_weight=float("nan")), ValueError, "contractive_weight must be a finite number >= 0"),
    (dict(sparsity_weight=-0.1, sparsity_target=0.1), ValueError, "sparsity_weight must be"),
    (dict(sparsity_weight=0.5), ValueError, "needs a sparsity_target"),
    (dict(sparsity_target=1.0), ValueError, r"sparsity_target must lie in \(0, 1\)"),
    (dict(sparsity_target=0.0), ValueError, r"sparsity_target must lie in \(0, 1\)"),
    (dict(noise="mask", noise_level=1.5), ValueError, r"noise_level must lie in \[0, 1\]"),
    (dict(noise="gaussian", noise_level=-1.0), ValueError, "noise_level must be a finite number >= 0"),
    (dict(noise_level=0.3), ValueError, "needs noise="),
    (dict(tied_weights="yes"), TypeError, "tied_weights must be a bool"),
    (dict(weight_decay="0.1"), TypeError, "weight_decay must be a real number"),
    (dict(dtype=torch.int32), TypeError, "floating-point dtype"),
]


@pytest.mark.parametrize("case", BAD_CONSTRUCTIONS, ids=[str(c[0]) for c in BAD_CONSTRUCTIONS])
def test_constructor_validation(case):
    options, error, message = case
    n_inputs = options.pop("n_inputs", 4)
    n_hidden = options.pop("n_hidden", 3)
    with pytest.raises(error, match=message):
        pyae.Autoencoder(n_inputs, n_hidden, **options)


def test_call_validation():
    model = pyae.Autoencoder(5, 3)
    with pytest.raises(ValueError, match=r"shape \(batch, 5\) for this model's 5 inputs, got \(2, 4\)"):
        model(torch.rand(2, 4))
    with pytest.raises(ValueError, match="got \\(5,\\)"):
        model(torch.rand(5))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        model(torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model([[0.0] * 5])
    with pytest.raises(TypeError, match="x has dtype|weight has dtype"):
        model(torch.rand(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one row"):
        model(torch.rand(0, 5))
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        pyae.Autoencoder(5, 3, loss="cross_entropy")(torch.rand(2, 5) * 3)


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    model = pyae.Autoencoder(16, 8, loss="cross_entropy", weight_decay=1e-3, sparsity_target=0.1,
                             sparsity_weight=0.2, contractive_weight=0.1, tied_weights=True)
    x = torch.rand(10, 16)
    eager = model(x)
    eager_grads = torch.autograd.grad(eager.loss, list(model.parameters()))

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.testing.assert_close(out.loss, eager.loss)
    for name in eager.terms:
        torch.testing.assert_close(out.terms[name], eager.terms[name])
    for got, wanted in zip(grads, eager_grads):
        torch.testing.assert_close(got, wanted)

    # With corruption noise the step still compiles as one graph.
    noisy = torch.compile(pyae.DenoisingAutoencoder(16, 8, contractive_weight=0.1), fullgraph=True)
    noisy(x).loss.backward()
