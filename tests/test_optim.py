"""pyae.optim: the fused SGD and Adam against torch's, and the autoencoder's weight-side terms
(the contractive penalty's chain rule through the squared row norms, weight decay) moved into
the update, against the same training with whole gradients and torch's optimizers."""

import copy

import pytest
import torch
from torch.library import opcheck

import pyae
from helpers import DTYPES, TOLERANCES, assert_close, make_inputs
from pyae import ops

# -------------------------------------------------------------------------------------------
# The encoder with its squared row norms as an input.


def test_given_norms_match_the_encoder_and_move_the_gradient(device):
    x, weight, bias = make_inputs(6, 5, 4, device=device)
    weight.requires_grad_(True)
    full = ops.sigmoid_encoder(x, weight, bias)
    (full.hidden.sum() + full.contractive * 3 + full.mean_activation.square().sum()).backward()
    grad_full = weight.grad.clone()
    weight.grad = None

    norms = ops.squared_row_norms(weight.detach()).requires_grad_(True)
    torch.testing.assert_close(norms, weight.detach().square().sum(1), rtol=1e-12, atol=0)
    given = ops.sigmoid_encoder(x, weight, bias, norms)
    for a, b in zip(given, full):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    (given.hidden.sum() + given.contractive * 3 + given.mean_activation.square().sum()).backward()
    # The chain rule through c = ||W_l||^2: the two gradients add up to the whole one.
    torch.testing.assert_close(weight.grad + 2 * norms.grad.unsqueeze(1) * weight.detach(), grad_full,
                               rtol=1e-10, atol=1e-12)
    assert norms.grad.abs().sum() > 0


@pytest.mark.parametrize("masked", [False, True])
def test_given_norms_gradcheck_and_gradgradcheck(device, masked):
    x, weight, bias = make_inputs(4, 3, 5, device=device)
    norms = weight.square().sum(1) * 1.3  # any c: it is an input of its own
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, weight, bias, norms))
    seed = torch.tensor(7, device=device)

    def encoder(x, weight, bias, norms):
        if masked:
            return ops.masked_sigmoid_encoder(x, weight, bias, 0.3, seed, norms)
        return ops.sigmoid_encoder(x, weight, bias, norms)

    torch.autograd.gradcheck(encoder, inputs)
    torch.autograd.gradgradcheck(encoder, inputs)


def test_given_norms_refused_when_wrong(device):
    x, weight, bias = make_inputs(3, 4, 5, device=device)
    with pytest.raises(TypeError, match="squared_row_norms must have dtype"):
        ops.sigmoid_encoder(x.float(), weight.float(), bias.float(), torch.ones(5, device=device, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"squared_row_norms must have shape \(5,\)"):
        ops.sigmoid_encoder(x, weight, bias, torch.ones(4, device=device, dtype=torch.float64))


def test_opcheck_new_and_changed_operators(device):
    x, weight, bias = make_inputs(4, 3, 5, device=device, dtype=torch.float32)
    norms = ops.squared_row_norms(weight)
    opcheck(torch.ops.pyae.squared_row_norms.default, (weight,))
    opcheck(torch.ops.pyae.sigmoid_encoder.default,
            (x.requires_grad_(), weight.requires_grad_(), bias, norms.clone().requires_grad_()))
    params = [weight.detach().clone(), bias.detach().clone()]
    grads = [torch.randn_like(p) for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    opcheck(torch.ops.pyae.sgd_update_.default,
            (params, grads, buffers, [torch.randn(5, device=device), None], [0.1, 0.0],
             [torch.empty(5, device=device), torch.empty(0, device=device)], 0.1, 0.9, 0.0, False, False),
            test_utils=("test_schema", "test_faketensor"))
    steps = [torch.ones((), device=device) for _ in params]
    opcheck(torch.ops.pyae.adam_update_.default,
            (params, grads, [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], steps,
             [], [0.0, 0.0], [], 0.01, 0.9, 0.999, 1e-8),
            test_utils=("test_schema", "test_faketensor"))


# -------------------------------------------------------------------------------------------
# The fused updates against torch's optimizers.


def _params(device, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (6,), (3, 2, 2)]
    return [torch.randn(*s, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
            .requires_grad_(True) for s in shapes]


def _run(optimizer_class, params, steps, seed=1, **kwargs):
    optimizer = optimizer_class(params, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p)
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
])
def test_sgd_matches_torch(device, dtype, settings):
    ours, theirs = _params(device, dtype), _params(device, dtype)
    fused = _run(pyae.optim.SGD, ours, 4, **settings)
    _run(torch.optim.SGD, theirs, 4, **settings)
    for a, b in zip(ours, theirs):
        assert_close(a.detach(), b.detach(), dtype)
    if settings.get("momentum"):
        reference = torch.optim.SGD(theirs, **settings)
        reference.load_state_dict(fused.state_dict())  # the same state layout both ways
        fused.load_state_dict(reference.state_dict())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("settings", [dict(lr=0.01), dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)])
def test_adam_matches_torch(device, dtype, settings):
    ours, theirs = _params(device, dtype), _params(device, dtype)
    fused = _run(pyae.optim.Adam, ours, 5, **settings)
    reference = _run(torch.optim.Adam, theirs, 5, **settings)
    for a, b in zip(ours, theirs):
        assert_close(a.detach(), b.detach(), dtype)
    # torch's state (its step counts on the CPU) loads and continues the same way.
    torch.optim.Adam(_params(device, dtype), **settings).load_state_dict(fused.state_dict())  # and back
    resumed = pyae.optim.Adam(_params(device, dtype), **settings)
    resumed.load_state_dict(reference.state_dict())
    assert all(s["step"].device == p.device for p, s in zip(resumed.param_groups[0]["params"],
                                                             resumed.state.values()))


def test_update_writes_the_norms_and_applies_the_row_term(device):
    weight = torch.randn(4, 3, dtype=torch.float64, device=device)
    grad, r = torch.randn_like(weight), torch.randn(4, dtype=torch.float64, device=device)
    expected = weight - 0.1 * (grad + 0.01 * weight + 2 * r.unsqueeze(1) * weight)
    norms = torch.empty(4, dtype=torch.float64, device=device)
    ops.sgd_update_([weight], [grad], [], [r], [0.01], [norms], lr=0.1, momentum=0.0, dampening=0.0,
                    nesterov=False, first_step=False)
    torch.testing.assert_close(weight, expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(norms, ops.squared_row_norms(weight))  # the same code, the same bits


def test_update_refuses_bad_lists(device):
    p = torch.zeros(3, 2, device=device)
    kwargs = dict(lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, first_step=False)
    with pytest.raises(ValueError, match="grads must hold one entry per parameter"):
        ops.sgd_update_([p, p.clone()], [p], [], [], [0.0, 0.0], [], **kwargs)
    with pytest.raises(ValueError, match="without grads .* needs momentum > 0"):
        ops.sgd_update_([p], [], [], [], [0.0], [], **kwargs)
    with pytest.raises(ValueError, match=r"grads\[0\] must have the shape"):
        ops.sgd_update_([p], [torch.zeros(2, 3, device=device)], [], [], [0.0], [], **kwargs)
    with pytest.raises(ValueError, match="must be a contiguous"):
        ops.sgd_update_([torch.zeros(2, 3, device=device).t()], [torch.zeros(3, 2, device=device)], [], [], [0.0],
                        [], **kwargs)
    with pytest.raises(ValueError, match="has no rows"):
        ops.sgd_update_([torch.zeros(3, device=device)], [torch.zeros(3, device=device)], [],
                        [torch.zeros(3, device=device)], [0.0], [], **kwargs)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        pyae.optim.SGD([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        pyae.optim.Adam([p], betas=(0.9, 1.0))


# -------------------------------------------------------------------------------------------
# The autoencoder's terms in the update: the same training as with whole gradients.


def _model(device, dtype=torch.float64, **options):
    torch.manual_seed(3)
    return pyae.Autoencoder(7, 5, loss="cross_entropy", device=device, dtype=dtype, **options)


REGULARIZED = [
    dict(contractive_weight=0.5),
    dict(contractive_weight=0.5, weight_decay=0.05, sparsity_target=0.2, sparsity_weight=0.3),
    dict(contractive_weight=0.5, weight_decay=0.05, tied_weights=True),
    dict(contractive_weight=0.5, noise="mask", noise_level=0.3, weight_decay=0.01),
    dict(weight_decay=0.05),
]


def _train(model, optimizer, batches, seed=5):
    generator = torch.Generator(device=batches[0].device).manual_seed(seed)
    losses = []
    for x in batches:
        optimizer.zero_grad()
        output = model(x, generator=generator)
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.detach())
    return losses


@pytest.mark.parametrize("options", REGULARIZED)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_autoencoder_terms_in_the_update_train_as_whole_gradients(device, options, kind):
    batches = [torch.rand(4, 7, dtype=torch.float64, device=device) for _ in range(5)]
    fused_model, plain_model = _model(device, **options), _model(device, **options)
    if kind == "sgd":
        fused = pyae.optim.SGD(fused_model.parameters(), lr=0.3, momentum=0.9, autoencoder=fused_model)
        plain = torch.optim.SGD(plain_model.parameters(), lr=0.3, momentum=0.9)
    else:
        fused = pyae.optim.Adam(fused_model.parameters(), lr=0.05, autoencoder=fused_model)
        plain = torch.optim.Adam(plain_model.parameters(), lr=0.05)
    norms_groups = [g for g in fused.param_groups if g.get(pyae.optim.NORMS_GROUP)]
    fused_losses = _train(fused_model, fused, batches)
    if options.get("contractive_weight"):
        # The encoder was given the norms, and left the contractive term's share on them.
        assert len(norms_groups) == 1 and norms_groups[0]["params"][0].grad is not None
    plain_losses = _train(plain_model, plain, batches)
    torch.testing.assert_close(torch.stack(fused_losses), torch.stack(plain_losses), rtol=1e-10, atol=1e-12)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # The encoder really was given its norms (the contractive term's pass saved), and they are
    # the current weights' norms.
    tracked = fused_model._tracked_norms
    for weight, norms in zip(fused_model.weight_matrices(), tracked.current(fused_model.weight_matrices())):
        torch.testing.assert_close(norms.detach(), weight.detach().square().sum(1), rtol=1e-12, atol=0)


def test_weights_changed_outside_the_optimizer_are_noticed(device):
    model = _model(device, contractive_weight=0.5)
    reference = copy.deepcopy(model)
    assert reference._tracked_norms is None
    optimizer = pyae.optim.SGD(model.parameters(), lr=0.1, autoencoder=model)
    x = torch.rand(3, 7, dtype=torch.float64, device=device)
    with torch.no_grad():
        model.encoder.weight.mul_(2.0)
        reference.encoder.weight.mul_(2.0)
    torch.testing.assert_close(model(x).loss, reference(x).loss, rtol=1e-12, atol=1e-14)
    model.load_state_dict(reference.state_dict())
    torch.testing.assert_close(model(x).terms["contractive"], reference(x).terms["contractive"], rtol=1e-12, atol=0)
    optimizer.detach_autoencoder()
    assert model._tracked_norms is None and not model.optimizer_applies_weight_decay


def test_autoencoder_argument_checks():
    model = _model("cpu", weight_decay=0.1)
    with pytest.raises(TypeError, match="autoencoder must be a pyae.Autoencoder"):
        pyae.optim.SGD(model.parameters(), lr=0.1, autoencoder=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="are not among the optimizer's params"):
        pyae.optim.SGD([model.encoder.weight], lr=0.1, autoencoder=model)
    with pytest.raises(ValueError, match="applies the autoencoder's own weight_decay"):
        pyae.optim.SGD(model.parameter_groups(), lr=0.1, autoencoder=model)


def test_grad_scaler_unscales_the_norms_gradient():
    # The norms sit in a parameter group, so GradScaler unscales their gradient with the others.
    batches = [torch.rand(4, 7, dtype=torch.float64) for _ in range(3)]
    fused_model, plain_model = _model("cpu", contractive_weight=0.5), _model("cpu", contractive_weight=0.5)
    fused = pyae.optim.SGD(fused_model.parameters(), lr=0.3, autoencoder=fused_model)
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.3)
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for x in batches:
            optimizer.zero_grad()
            scaler.scale(model(x).loss).backward()
            scaler.step(optimizer)
            scaler.update()
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_training_with_the_fused_update(dtype):
    # Under autocast the encoder runs in bfloat16 and reads float32 norms of the float32 weight.
    fused_model, plain_model = _model("cpu", torch.float32, contractive_weight=0.5), _model(
        "cpu", torch.float32, contractive_weight=0.5)
    fused = pyae.optim.SGD(fused_model.parameters(), lr=0.1, momentum=0.9, autoencoder=fused_model)
    plain = torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9)
    batches = [torch.rand(8, 7) for _ in range(3)]
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for x in batches:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                loss = model(x).loss
            loss.backward()
            optimizer.step()
    tolerance = TOLERANCES[dtype]
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, **tolerance)


def test_fused_optimizers_are_graph_safe_for_train_step():
    # TrainStep captures a step with pyae.optim (pyae train --cuda-graph builds them): SGD keeps
    # no host-side count, Adam's counts live on the device, the norms are updated in place.
    from pyae.step import _optimizer_is_capturable

    model = _model("cpu", contractive_weight=0.5)
    assert _optimizer_is_capturable(pyae.optim.SGD(model.parameters(), lr=0.1, autoencoder=model))
    assert _optimizer_is_capturable(pyae.optim.Adam(_model("cpu").parameters(), lr=0.1))
