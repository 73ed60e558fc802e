"""The whole objective in one operator (pyae.ops.autoencoder_loss, pyae.functional.autoencoder_loss):
against the float64 reference and its parts, gradcheck and gradgradcheck, opcheck, autocast,
bad input, and the module's use of it."""

import pytest
import torch

import pyae
import reference
from helpers import DTYPES, TOLERANCES, make_inputs
from pyae import functional as PF
from pyae import ops

# Each configuration: (name, keyword arguments of ops.autoencoder_loss beyond the tensors).
CONFIGS = [
    ("plain", dict(loss="mse")),
    ("all terms", dict(loss="cross_entropy", contractive_weight=0.3, sparsity_target=0.1, sparsity_weight=0.7,
                       weight_decay=0.05)),
    ("masked", dict(loss="cross_entropy", contractive_weight=0.3, sparsity_target=0.1, sparsity_weight=0.7,
                    noise_level=0.3)),
    ("norms given", dict(loss="mse", contractive_weight=0.5, sparsity_target=0.2, sparsity_weight=0.0,
                         squared_row_norms=True)),
    ("no biases", dict(loss="cross_entropy", contractive_weight=0.3, biases=False, weight_decay=0.1)),
]


def make_arguments(config, *, dtype=torch.float64, device="cpu", batch=6, features=7, hidden=5, seed=0):
    """(tensors, keywords) of one call: tensors are (x, encoder_weight, encoder_bias,
    decoder_weight, decoder_bias) plus what the configuration needs."""
    keywords = dict(config)
    biases = keywords.pop("biases", True)
    x, encoder_weight, encoder_bias = make_inputs(batch, features, hidden, dtype=dtype, device=device, bias=biases,
                                                  seed=seed)
    _, decoder_weight_t, decoder_bias = make_inputs(batch, hidden, features, dtype=dtype, device=device, bias=biases,
                                                    seed=seed + 1)
    decoder_weight = decoder_weight_t.contiguous()
    if keywords.pop("squared_row_norms", False):
        keywords["squared_row_norms"] = ops.squared_row_norms(encoder_weight) * 1.3  # any positive values
    if keywords.get("noise_level", 0.0) > 0.0:
        keywords["seed"] = torch.tensor(1234, dtype=torch.int64, device=device)
    if keywords.get("weight_decay", 0.0) > 0.0:
        keywords["weight_decay_term"] = torch.tensor(0.8, dtype=dtype, device=device)
    return [x, encoder_weight, encoder_bias, decoder_weight, decoder_bias], keywords


def call(tensors, keywords):
    x = tensors[0]
    return ops.autoencoder_loss(x, x, *tensors[1:], **keywords)


def reference_objective(tensors, keywords):
    """The seven outputs in float64 with plain torch ops, from docs/design.md."""
    x, encoder_weight, encoder_bias, decoder_weight, decoder_bias = [
        None if t is None else t.double() for t in tensors]
    encoder_input = x
    if "seed" in keywords:
        mask = ops.mask_noise(torch.ones_like(tensors[0]), keywords["noise_level"], keywords["seed"]).double()
        encoder_input = x * mask
    hidden, mean_activation, contractive = reference.sigmoid_encoder(encoder_input, encoder_weight, encoder_bias)
    norms = keywords.get("squared_row_norms")
    if norms is not None:
        d = hidden * (1 - hidden)
        contractive = (d * d * norms.double()).sum(1).mean()
    logits = hidden @ decoder_weight.T + (0 if decoder_bias is None else decoder_bias)
    reconstruction, reconstruction_term = reference.sigmoid_reconstruction_loss(logits, x, keywords["loss"])
    loss = reconstruction_term
    if keywords.get("weight_decay", 0.0) > 0.0:
        loss = loss + keywords["weight_decay"] * keywords["weight_decay_term"].double()
    sparsity = torch.empty(0, dtype=torch.float64, device=x.device)
    if keywords.get("sparsity_target") is not None:
        sparsity = reference.kl_sparsity(mean_activation, keywords["sparsity_target"], eps_dtype=tensors[0].dtype)
        loss = loss + keywords.get("sparsity_weight", 0.0) * sparsity
    loss = loss + keywords.get("contractive_weight", 0.0) * contractive
    return loss, reconstruction, hidden, mean_activation, reconstruction_term, sparsity, contractive


def differentiable(tensors, keywords):
    """The tensors and keywords with every floating input but x requiring grad."""
    tensors = [tensors[0]] + [None if t is None else t.detach().clone().requires_grad_() for t in tensors[1:]]
    keywords = {key: value.detach().clone().requires_grad_() if key in ("squared_row_norms", "weight_decay_term")
                else value for key, value in keywords.items()}
    leaves = [t for t in tensors[1:] if t is not None]
    leaves += [keywords[key] for key in ("squared_row_norms", "weight_decay_term") if key in keywords]
    return tensors, keywords, leaves


# --------------------------------------------------------------------------------------
# Values and first-order gradients against the float64 reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, config", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_matches_reference(device, dtype, name, config):
    tensors, keywords = make_arguments(config, dtype=dtype, device=device)
    tensors, keywords, leaves = differentiable(tensors, keywords)
    outputs = call(tensors, keywords)
    expected = reference_objective(tensors, keywords)
    # The reference's inputs are the low-precision values; its rounding is float64's. The fused
    # result rounds every intermediate to dtype, which the tolerances bound.
    for got, want in zip(outputs, expected):
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.double().cpu(), want.cpu(), **TOLERANCES[dtype])
    grads = torch.autograd.grad(outputs.loss, leaves)
    expected_grads = torch.autograd.grad(expected[0], leaves)
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got.double().cpu(), want.double().cpu(), **TOLERANCES[dtype])


@pytest.mark.parametrize("name, config", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_equals_its_parts_one_by_one(device, name, config):
    """The same numbers as the operators called one by one, outputs and gradients, for an
    upstream gradient on every output."""
    tensors, keywords = make_arguments(config, dtype=torch.float32, device=device, batch=9, features=11, hidden=6)
    fused_tensors, fused_keywords, fused_leaves = differentiable(tensors, keywords)
    part_tensors, part_keywords, part_leaves = differentiable(tensors, keywords)

    fused = call(fused_tensors, fused_keywords)
    x, encoder_weight, encoder_bias, decoder_weight, decoder_bias = part_tensors
    norms = part_keywords.get("squared_row_norms")
    if "seed" in part_keywords:
        encoded = ops.masked_sigmoid_encoder(x, encoder_weight, encoder_bias, part_keywords["noise_level"],
                                             part_keywords["seed"], norms)
    else:
        encoded = ops.sigmoid_encoder(x, encoder_weight, encoder_bias, norms)
    logits = torch.nn.functional.linear(encoded.hidden, decoder_weight, decoder_bias)
    reconstruction, reconstruction_term = ops.sigmoid_reconstruction_loss(logits, x, part_keywords["loss"])
    loss = reconstruction_term
    if part_keywords.get("weight_decay", 0.0) > 0.0:
        loss = torch.add(loss, part_keywords["weight_decay_term"], alpha=part_keywords["weight_decay"])
    sparsity = torch.empty(0, dtype=x.dtype, device=x.device)
    if part_keywords.get("sparsity_target") is not None:
        sparsity = ops.kl_sparsity(encoded.mean_activation, part_keywords["sparsity_target"])
        if part_keywords.get("sparsity_weight", 0.0):
            loss = torch.add(loss, sparsity, alpha=part_keywords["sparsity_weight"])
    if part_keywords.get("contractive_weight", 0.0):
        loss = torch.add(loss, encoded.contractive, alpha=part_keywords["contractive_weight"])
    parts = (loss, reconstruction, encoded.hidden, encoded.mean_activation, reconstruction_term, sparsity,
             encoded.contractive)
    for got, want in zip(fused, parts):
        assert torch.equal(got, want)

    generator = torch.Generator(device="cpu").manual_seed(5)
    upstream = [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(device) for t in parts]
    used = [i for i, t in enumerate(parts) if t.numel() > 0]
    fused_grads = torch.autograd.grad([fused[i] for i in used], fused_leaves, [upstream[i] for i in used])
    part_grads = torch.autograd.grad([parts[i] for i in used], part_leaves, [upstream[i] for i in used])
    for got, want in zip(fused_grads, part_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------
# gradcheck and gradgradcheck (float64, every output)


@pytest.mark.parametrize("name, config", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_gradcheck_and_gradgradcheck(device, name, config):
    tensors, keywords = make_arguments(config, device=device, batch=4, features=5, hidden=3, seed=3)
    tensors, keywords, leaves = differentiable(tensors, keywords)
    names = [key for key in ("squared_row_norms", "weight_decay_term") if key in keywords]
    present = [i for i, t in enumerate(tensors) if t is not None and i > 0]

    def objective(*inputs):
        args = list(tensors)
        for index, value in zip(present, inputs):
            args[index] = value
        extra = dict(keywords, **dict(zip(names, inputs[len(present):])))
        # The empty sparsity term (no target) has nothing to check.
        return tuple(t for t in call(args, extra) if t.numel() > 0)

    assert torch.autograd.gradcheck(objective, leaves)
    assert torch.autograd.gradgradcheck(objective, leaves)


def test_gradient_of_x(device):
    """x is the encoder's input and also the target; with a target of its own, x gets the
    encoder's gradient (through the mask)."""
    tensors, keywords = make_arguments(CONFIGS[2][1], device=device)
    x = tensors[0].clone().requires_grad_()
    target = tensors[0].clone()

    def objective(x):
        return ops.autoencoder_loss(x, target, *tensors[1:], **keywords).loss

    assert torch.autograd.gradcheck(objective, (x,))
    assert torch.autograd.gradgradcheck(objective, (x,))


def test_target_is_data(device):
    tensors, keywords = make_arguments(CONFIGS[1][1], device=device)
    x = tensors[0].clone().requires_grad_()
    with pytest.raises(RuntimeError, match="treats its target as data"):
        ops.autoencoder_loss(x, x, *tensors[1:], **keywords).loss.backward()
    with pytest.raises(ValueError, match="x requires grad"):
        PF.autoencoder_loss(x, *tensors[1:], loss="mse")
    # An output that does not reach the reconstruction loss asks nothing of the target.
    target = tensors[0].clone().requires_grad_()
    out = ops.autoencoder_loss(tensors[0], target, *tensors[1:], **keywords)
    out.hidden.sum().backward()
    assert target.grad is None


def test_a_term_alone_reaches_only_its_inputs(device):
    """Differentiating the sparsity term alone: the decoder and the weight-decay term get no
    gradient (None, as with the operators one by one), not zeros."""
    tensors, keywords = make_arguments(CONFIGS[1][1], device=device)
    tensors, keywords, leaves = differentiable(tensors, keywords)
    weight_decay_term = PF.weight_decay([tensors[1], tensors[3]])
    keywords["weight_decay_term"] = weight_decay_term
    call(tensors, keywords).sparsity_term.backward()
    assert tensors[1].grad is not None and tensors[2].grad is not None
    assert tensors[3].grad is None and tensors[4].grad is None


# --------------------------------------------------------------------------------------
# Registration, autocast, bad input


@pytest.mark.parametrize("name, config", CONFIGS, ids=[name for name, _ in CONFIGS])
def test_opcheck(device, name, config):
    tensors, keywords = make_arguments(config, device=device, batch=4, features=5, hidden=3, seed=4)
    for requires_grad in (False, True):
        if requires_grad:
            tensors, keywords, _ = differentiable(tensors, keywords)
        x = tensors[0]
        args = (x, x, *tensors[1:], keywords.get("squared_row_norms"), keywords.get("noise_level", 0.0),
                keywords.get("seed"), keywords["loss"] == "cross_entropy", keywords.get("contractive_weight", 0.0),
                keywords.get("sparsity_target"), keywords.get("sparsity_weight", 0.0),
                keywords.get("weight_decay_term"), keywords.get("weight_decay", 0.0))
        torch.library.opcheck(torch.ops.pyae.autoencoder_loss.default, args)


def test_autocast_runs_the_parts_each_by_its_policy():
    """Under CPU autocast the operator is its parts one by one, each cast by its own policy:
    the encoder and the decoder's product in bfloat16, the loss and the penalties in float32."""
    tensors, keywords = make_arguments(CONFIGS[1][1], dtype=torch.float32, batch=8, features=12, hidden=6)
    tensors, keywords, leaves = differentiable(tensors, keywords)
    model = pyae.Autoencoder(12, 6, loss="cross_entropy", contractive_weight=0.3, sparsity_target=0.1,
                             sparsity_weight=0.7)
    with torch.no_grad():
        for parameter, value in zip(model.parameters(), tensors[1:]):
            parameter.copy_(value)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = call(tensors, dict(keywords, weight_decay=0.0, weight_decay_term=None))
        parts = model._forward_by_parts(tensors[0], None, None)
    assert fused.hidden.dtype == torch.bfloat16 and fused.loss.dtype == torch.float32
    assert fused.reconstruction.dtype == torch.float32
    assert torch.equal(fused.loss, parts.loss) and torch.equal(fused.hidden, parts.hidden)
    grads = torch.autograd.grad(fused.loss, leaves[:4])
    part_grads = torch.autograd.grad(parts.loss, list(model.parameters()))
    for got, want in zip(grads, part_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_module_under_autocast_takes_inputs_of_another_dtype():
    """Under autocast the parts cast what they are given: a bfloat16 batch into a float32
    model works as it does operator by operator."""
    torch.manual_seed(3)
    model = pyae.Autoencoder(6, 3, loss="cross_entropy", sparsity_target=0.1, sparsity_weight=0.2,
                             contractive_weight=0.1, weight_decay=0.01)
    x = torch.rand(4, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = model(x)
        parts = model._forward_by_parts(x, None, None)
    assert "AutoencoderLoss" not in fused.loss.grad_fn.name()  # recorded part by part
    assert torch.equal(fused.loss, parts.loss)


BAD_INPUTS = [
    ("target shape", lambda a: a.update(target=a["target"][:, :-1]), ValueError, "target must have x's shape"),
    ("target dtype", lambda a: a.update(target=a["target"].float()), TypeError, "target has dtype"),
    ("encoder_weight shape", lambda a: a.update(encoder_weight=a["encoder_weight"][:, :-1]), ValueError,
     "encoder_weight must be"),
    ("decoder_weight shape", lambda a: a.update(decoder_weight=a["decoder_weight"].t()), ValueError,
     "decoder_weight must be"),
    ("decoder_weight dtype", lambda a: a.update(decoder_weight=a["decoder_weight"].float()), TypeError,
     "decoder_weight has dtype"),
    ("encoder_bias shape", lambda a: a.update(encoder_bias=a["encoder_bias"][:-1]), ValueError,
     "encoder_bias must have shape"),
    ("decoder_bias shape", lambda a: a.update(decoder_bias=a["decoder_bias"][:-1]), ValueError,
     "decoder_bias must have shape"),
    ("noise_level", lambda a: a.update(noise_level=1.5, seed=torch.tensor(1)), ValueError, "noise_level must lie"),
    ("negative weight", lambda a: a.update(contractive_weight=-0.1), ValueError, "contractive_weight must be"),
    ("weight_decay_term shape", lambda a: a.update(weight_decay=0.1, weight_decay_term=torch.ones(2, dtype=torch.float64)),
     ValueError, "weight_decay_term must be a 0-dim"),
    ("decoder_bias dtype", lambda a: a.update(decoder_bias=a["decoder_bias"].float()), TypeError,
     "decoder_bias has dtype"),
    ("sparsity_target", lambda a: a.update(sparsity_target=1.5), ValueError, "sparsity_target must lie in"),
    ("NaN weight", lambda a: a.update(weight_decay=float("nan")), ValueError, "weight_decay must be"),
    ("weight_decay_term dtype", lambda a: a.update(weight_decay=0.1, weight_decay_term=torch.tensor(1.0)), TypeError,
     "weight_decay_term has dtype"),
    ("seed shape", lambda a: a.update(noise_level=0.5, seed=torch.tensor([1, 2])), ValueError,
     "seed must hold one value"),
]


@pytest.mark.parametrize("name, change, error, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_names_the_argument(name, change, error, message):
    """From the kernel and from the fake kernel alike (a traced program fails where an eager
    one would)."""
    tensors, _ = make_arguments(dict(loss="mse"))
    arguments = dict(x=tensors[0], target=tensors[0], encoder_weight=tensors[1], encoder_bias=tensors[2],
                     decoder_weight=tensors[3], decoder_bias=tensors[4])
    change(arguments)
    positional = [arguments.pop(key) for key in ("x", "target", "encoder_weight", "encoder_bias", "decoder_weight",
                                                 "decoder_bias")]
    with pytest.raises(error, match=message):
        ops.autoencoder_loss(*positional, **arguments)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t  # noqa: E731
        with pytest.raises(error, match=message):
            ops.autoencoder_loss(*map(fake, positional), **{key: fake(value) for key, value in arguments.items()})


def test_functional_bad_input_names_the_argument():
    tensors, _ = make_arguments(dict(loss="mse"))
    x, encoder_weight, encoder_bias, decoder_weight, decoder_bias = tensors
    with pytest.raises(TypeError, match="decoder_bias"):
        PF.autoencoder_loss(x, encoder_weight, encoder_bias, decoder_weight, [0.0] * 7)
    with pytest.raises(TypeError, match="decoder_weight .* must have encoder_weight's dtype"):
        PF.autoencoder_loss(x, encoder_weight, encoder_bias, decoder_weight.float(), decoder_bias, weight_decay=0.1)


# --------------------------------------------------------------------------------------
# The functional entry point and the module


def test_functional_matches_the_module():
    torch.manual_seed(0)
    model = pyae.Autoencoder(9, 4, loss="cross_entropy", noise="mask", noise_level=0.2, weight_decay=0.01,
                             sparsity_target=0.1, sparsity_weight=0.5, contractive_weight=0.2, dtype=torch.float64)
    x = torch.rand(5, 9, dtype=torch.float64)
    out = model(x, generator=torch.Generator().manual_seed(7))
    functional = PF.autoencoder_loss(
        x, model.encoder.weight, model.encoder.bias, model.decoder.weight, model.decoder.bias, loss="cross_entropy",
        noise="mask", noise_level=0.2, generator=torch.Generator().manual_seed(7), sparsity_target=0.1,
        sparsity_weight=0.5, contractive_weight=0.2, weight_decay=0.01)
    assert torch.equal(out.loss, functional.loss) and torch.equal(out.hidden, functional.hidden)
    for term in ("reconstruction", "sparsity", "contractive"):
        assert torch.equal(out.terms[term], getattr(functional, f"{term}_term"))


@pytest.mark.parametrize("weight_is_a_view", [False, True])
def test_functional_counts_tied_weights_once(weight_is_a_view):
    weight = torch.randn(6 if weight_is_a_view else 4, 9, dtype=torch.float64)
    if weight_is_a_view:
        weight = weight[2:]
    bias = torch.zeros(9, dtype=torch.float64)
    x = torch.rand(3, 9, dtype=torch.float64)
    tied = PF.autoencoder_loss(x, weight, None, weight.t(), bias, weight_decay=1.0)
    untied = PF.autoencoder_loss(x, weight, None, weight.t().clone(), bias, weight_decay=1.0)
    half_norm = 0.5 * weight.pow(2).sum()
    torch.testing.assert_close(tied.loss - tied.reconstruction_term, half_norm)
    torch.testing.assert_close(untied.loss - untied.reconstruction_term, 2 * half_norm)


@pytest.mark.parametrize("tied_weights", [False, True])
@pytest.mark.parametrize("noise", [None, "mask", "gaussian"])
def test_module_uses_one_node_with_the_same_numbers(tied_weights, noise):
    torch.manual_seed(1)
    model = pyae.Autoencoder(10, 5, tied_weights=tied_weights, loss="cross_entropy", noise=noise,
                             noise_level=0.3 if noise else 0.0, weight_decay=0.02, sparsity_target=0.1,
                             sparsity_weight=0.4, contractive_weight=0.3, dtype=torch.float64)
    x = torch.rand(7, 10, dtype=torch.float64)
    out = model(x, generator=torch.Generator().manual_seed(2))
    assert "AutoencoderLoss" in out.loss.grad_fn.name()
    out.loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    parts = model._forward_by_parts(x, None, torch.Generator().manual_seed(2))
    parts.loss.backward()
    assert torch.equal(out.loss, parts.loss)
    for got, parameter in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(got, parameter.grad, rtol=1e-12, atol=1e-14)


def test_module_takes_the_parts_where_the_operator_does_not_apply():
    x = torch.rand(4, 6, dtype=torch.float64)
    linear = pyae.Autoencoder(6, 3, decoder_activation="linear", dtype=torch.float64)
    assert "AutoencoderLoss" not in linear(x).loss.grad_fn.name()
    sigmoid = pyae.Autoencoder(6, 3, dtype=torch.float64)
    assert "AutoencoderLoss" not in sigmoid(x.clone().requires_grad_()).loss.grad_fn.name()
