"""The fused training step (pyae.optim.SGD.autoencoder_step): the weight matrices' gradient
products accumulated straight into the momentum buffers. Its two building blocks (the encoder
backward's fused pass alone, the SGD update with the gradient already in the buffer) against
the operators they come from, and whole steps against the ordinary three calls."""

import contextlib
import copy
import warnings

import pytest
import torch
from torch.library import opcheck
from torch.optim.optimizer import register_optimizer_step_pre_hook

import pyae
from helpers import DTYPES, TOLERANCES, assert_close, make_inputs
from pyae import ops

# -------------------------------------------------------------------------------------------
# sigmoid_encoder_preactivation_backward: sigmoid_encoder_backward without its products.


def _upstream(batch, hidden_units, dtype, device, which):
    generator = torch.Generator().manual_seed(3)
    grads = dict(
        hidden=torch.randn(batch, hidden_units, generator=generator, dtype=torch.float64),
        mean=torch.randn(hidden_units, generator=generator, dtype=torch.float64),
        contractive=torch.tensor(0.7, dtype=torch.float64),
    )
    return [grads[name].to(device=device, dtype=dtype) if name in which else None
            for name in ("hidden", "mean", "contractive")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("which", [("hidden", "mean", "contractive"), ("hidden",), ("mean", "contractive"),
                                   ("contractive",)])
def test_preactivation_backward_is_the_encoder_backward_without_products(device, dtype, which):
    x, weight, bias = make_inputs(7, 5, 6, dtype=dtype, device=device)
    norms = ops.squared_row_norms(weight)
    hidden = ops.sigmoid_encoder(x, weight, bias, norms).hidden
    grad_hidden, grad_mean, grad_contractive = _upstream(7, 6, dtype, device, which)
    full = torch.ops.pyae.sigmoid_encoder_backward(grad_hidden, grad_mean, grad_contractive, x, weight, hidden,
                                                   norms, True, [True, True, True, True])
    delta, grad_bias, grad_norms = ops.sigmoid_encoder_preactivation_backward(
        grad_hidden, grad_mean, grad_contractive, hidden, norms)
    assert delta.shape == hidden.shape and grad_bias.shape == (6,) and grad_norms.dtype == norms.dtype
    # The same fused pass: the products made from delta are the encoder backward's.
    assert_close(delta @ weight, full[0], dtype)
    assert_close(delta.t() @ x, full[1], dtype)
    assert torch.equal(grad_bias, full[2])
    assert torch.equal(grad_norms, full[3])


def test_preactivation_backward_reads_a_broadcast_grad_hidden_as_one_row(device):
    x, weight, bias = make_inputs(5, 4, 3, device=device)
    norms = ops.squared_row_norms(weight)
    hidden = ops.sigmoid_encoder(x, weight, bias, norms).hidden
    row = torch.randn(3, dtype=torch.float64, device=device)
    broadcast = ops.sigmoid_encoder_preactivation_backward(row.expand(5, 3), None, None, hidden, norms)
    materialized = ops.sigmoid_encoder_preactivation_backward(row.expand(5, 3).contiguous(), None, None, hidden, norms)
    for a, b in zip(broadcast, materialized):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_preactivation_backward_without_norms_has_no_norms_gradient(device):
    x, weight, bias = make_inputs(4, 3, 5, device=device)
    hidden = ops.sigmoid_encoder(x, weight, bias).hidden
    grad_hidden = torch.ones_like(hidden)
    delta, grad_bias, grad_norms = ops.sigmoid_encoder_preactivation_backward(grad_hidden, None, None, hidden, None)
    torch.testing.assert_close(delta, hidden * (1 - hidden), rtol=1e-14, atol=0)
    assert grad_norms.shape == (0,)


def test_preactivation_backward_refuses_bad_input(device):
    x, weight, bias = make_inputs(4, 3, 5, device=device)
    hidden = ops.sigmoid_encoder(x, weight, bias).hidden
    contractive = torch.tensor(1.0, dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match="needs squared_row_norms"):
        ops.sigmoid_encoder_preactivation_backward(None, None, contractive, hidden, None)
    with pytest.raises(ValueError, match=r"squared_row_norms must have shape \(5,\)"):
        ops.sigmoid_encoder_preactivation_backward(None, None, contractive, hidden, torch.ones(4, dtype=torch.float64,
                                                                                                device=device))
    with pytest.raises(ValueError, match="grad_hidden must have hidden's shape"):
        ops.sigmoid_encoder_preactivation_backward(torch.ones(4, 4, dtype=torch.float64, device=device), None, None,
                                                   hidden, None)
    with pytest.raises(TypeError, match="grad_mean_activation has dtype"):
        ops.sigmoid_encoder_preactivation_backward(None, torch.ones(5, device=device), None, hidden, None)
    # Not differentiable: a call that would be differentiated again is refused, not wrong.
    with pytest.raises(RuntimeError, match="not differentiable"):
        ops.sigmoid_encoder_preactivation_backward(torch.ones_like(hidden).requires_grad_(True), None, None, hidden,
                                                   None)


def test_preactivation_backward_opcheck(device):
    x, weight, bias = make_inputs(4, 3, 5, device=device)
    norms = ops.squared_row_norms(weight)
    hidden = ops.sigmoid_encoder(x, weight, bias, norms).hidden
    grad_hidden, grad_mean, grad_contractive = _upstream(4, 5, torch.float64, device, ("hidden", "mean",
                                                                                          "contractive"))
    for args in ((grad_hidden, grad_mean, grad_contractive, hidden, norms), (grad_hidden, None, None, hidden, None)):
        opcheck(torch.ops.pyae.sigmoid_encoder_preactivation_backward.default, args,
                test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# -------------------------------------------------------------------------------------------
# sgd_update_ with the gradient already in the momentum buffers.


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("first_step", [False, True])
@pytest.mark.parametrize("dampening", [0.0, 0.3])
@pytest.mark.parametrize("by_rows", [True, False])
def test_update_with_the_gradient_in_the_buffer(device, dtype, first_step, dampening, by_rows):
    generator = torch.Generator().manual_seed(1)
    make = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64).to(device, dtype)  # noqa: E731
    p, g, buf = make(6, 4), make(6, 4), make(6, 4)
    row_grads = make(6).to(ops._accumulation_dtype(dtype))
    momentum, lr, decay = 0.9, 0.05, 0.01
    hyper = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=False, first_step=first_step)
    # by_rows: a row decay and the norms (the per-row kernels); else the flat kernels.
    rows = [row_grads] if by_rows else []
    p_ref, buf_ref, norms_ref = p.clone(), buf.clone(), torch.empty(6, device=device, dtype=row_grads.dtype)
    ops.sgd_update_([p_ref], [g], [buf_ref], rows, [decay], [norms_ref] if by_rows else [], **hyper)
    # What a fused step's products leave in the buffer: momentum * buf + (1 - dampening) * g,
    # or g on the first step.
    filled = g.clone() if first_step else buf * momentum + (1 - dampening) * g
    norms = torch.empty_like(norms_ref)
    ops.sgd_update_([p], [], [filled], rows, [decay], [norms] if by_rows else [], **hyper)
    assert_close(filled, buf_ref, dtype)
    assert_close(p, p_ref, dtype)
    if by_rows:
        assert_close(norms, norms_ref, dtype)
        # The norms are those of the written weight, bit for bit.
        assert torch.equal(norms, ops.squared_row_norms(p))


def test_update_without_grads_needs_plain_momentum(device):
    p, buf = torch.zeros(3, 2, device=device), torch.zeros(3, 2, device=device)
    for momentum, nesterov in ((0.0, False), (0.9, True)):
        with pytest.raises(ValueError, match="without grads"):
            ops.sgd_update_([p], [], [buf], [], [0.0], [], lr=0.1, momentum=momentum, dampening=0.0,
                            nesterov=nesterov, first_step=False)
    with pytest.raises(ValueError, match="grads must hold one entry per parameter"):
        ops.sgd_update_([p, p.clone()], [p], [buf, buf.clone()], [], [0.0, 0.0], [], lr=0.1, momentum=0.9,
                        dampening=0.0, nesterov=False, first_step=False)


# -------------------------------------------------------------------------------------------
# Whole steps: autoencoder_step against zero_grad, forward, backward and step.

CONFIGURATIONS = {
    "plain": dict(),
    "contractive_sparse": dict(contractive_weight=0.3, sparsity_target=0.1, sparsity_weight=0.2),
    "tied": dict(tied_weights=True, contractive_weight=0.2, sparsity_target=0.1, sparsity_weight=0.1),
    "masking": dict(noise="mask", noise_level=0.3, contractive_weight=0.1),
    "gaussian_squared": dict(noise="gaussian", noise_level=0.2, loss="mse", sparsity_target=0.2,
                             sparsity_weight=0.1),
    "everything": dict(noise="mask", noise_level=0.25, weight_decay=0.01, contractive_weight=0.1,
                       sparsity_target=0.05, sparsity_weight=0.1),
    "tied_weight_decay": dict(tied_weights=True, weight_decay=0.02, noise="mask", noise_level=0.2),
    "zero_sparsity_weight": dict(sparsity_target=0.1, sparsity_weight=0.0, contractive_weight=0.1),
}


def _twins(config, device, dtype, optimizer_options=None, seed=0):
    torch.manual_seed(seed)
    model = pyae.Autoencoder(9, 7, **config).to(device=device, dtype=dtype)
    twin = copy.deepcopy(model)
    options = dict(lr=0.1, momentum=0.9, **(optimizer_options or {}))
    return (model, pyae.optim.SGD(model.parameters(), autoencoder=model, **options),
            twin, pyae.optim.SGD(twin.parameters(), autoencoder=twin, **options))


def _ordinary_step(model, optimizer, x, generator):
    optimizer.zero_grad(set_to_none=True)
    output = model(x, generator=generator)
    output.loss.backward()
    optimizer.step()
    return output


def _assert_takes_the_three_calls(model, optimizer, twin, twin_optimizer, x, reason):
    """autoencoder_step refuses to fuse, saying ``reason``, and steps as the three calls do."""
    assert reason in optimizer.fused_step_refusal(x)
    optimizer.autoencoder_step(x)
    _ordinary_step(twin, twin_optimizer, x, None)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def _batches(device, dtype, count=4):
    generator = torch.Generator().manual_seed(5)
    return [torch.rand(6, 9, generator=generator, dtype=torch.float64).to(device, dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [*CONFIGURATIONS, "eval_mode"])
def test_fused_step_matches_the_ordinary_step(device, dtype, name):
    config = CONFIGURATIONS["everything"] if name == "eval_mode" else CONFIGURATIONS[name]
    fused, fused_optimizer, ordinary, ordinary_optimizer = _twins(config, device, dtype)
    if name == "eval_mode":  # no noise, the same steps otherwise
        fused.eval()
        ordinary.eval()
    assert fused_optimizer.fused_step_refusal(_batches(device, dtype, 1)[0]) is None
    fused_noise = torch.Generator(device=device).manual_seed(11)
    ordinary_noise = torch.Generator(device=device).manual_seed(11)
    tolerance = TOLERANCES[dtype]
    for x in _batches(device, dtype):
        fused_output = fused_optimizer.autoencoder_step(x, generator=fused_noise)
        ordinary_output = _ordinary_step(ordinary, ordinary_optimizer, x, ordinary_noise)
        torch.testing.assert_close(fused_output.loss, ordinary_output.loss.detach(), **tolerance)
        for term, value in ordinary_output.terms.items():
            torch.testing.assert_close(fused_output.terms[term], value.detach(), **tolerance)
        assert fused_output.loss.grad_fn is None
    for (name_, a), b in zip(fused.named_parameters(), ordinary.parameters()):
        torch.testing.assert_close(a, b.detach(), **tolerance, msg=name_)
        torch.testing.assert_close(fused_optimizer.state[a]["momentum_buffer"],
                                   ordinary_optimizer.state[b]["momentum_buffer"], **tolerance, msg=name_)
    for a, b in zip(fused_optimizer._tracked.norms, ordinary_optimizer._tracked.norms):
        torch.testing.assert_close(a.detach(), b.detach(), **tolerance)
    # The weight matrices never got a gradient tensor; the biases did.
    assert all(w.grad is None for w in fused.weight_matrices())
    assert fused.encoder.bias.grad is not None


@pytest.mark.parametrize("bias_options", [dict(momentum=0.5, weight_decay=0.03), dict(momentum=0.0),
                                          dict(nesterov=True)])
def test_fused_step_with_dampening_and_parameter_groups(device, bias_options):
    config = dict(contractive_weight=0.1, weight_decay=0.01, sparsity_target=0.1, sparsity_weight=0.1)
    torch.manual_seed(0)
    fused = pyae.Autoencoder(9, 7, **config).to(device=device, dtype=torch.float64)
    ordinary = copy.deepcopy(fused)

    def optimizer_of(model):
        weights = list(model.weight_matrices())
        biases = [model.encoder.bias, model.decoder.bias]
        return pyae.optim.SGD([{"params": weights, "lr": 0.05, "dampening": 0.2},
                               {"params": biases, **bias_options}],
                              lr=0.1, momentum=0.9, autoencoder=model)

    fused_optimizer, ordinary_optimizer = optimizer_of(fused), optimizer_of(ordinary)
    for x in _batches(device, torch.float64):
        assert fused_optimizer.fused_step_refusal(x) is None
        fused_optimizer.autoencoder_step(x)
        _ordinary_step(ordinary, ordinary_optimizer, x, None)
    assert all(w.grad is None for w in fused.weight_matrices())
    for a, b in zip(fused.parameters(), ordinary.parameters()):
        torch.testing.assert_close(a, b.detach(), **TOLERANCES[torch.float64])
        buffer = fused_optimizer.state[a].get("momentum_buffer")
        expected = ordinary_optimizer.state[b].get("momentum_buffer")
        assert (buffer is None) == (expected is None)
        if buffer is not None:
            torch.testing.assert_close(buffer, expected, **TOLERANCES[torch.float64])


def _halve_grad(parameter):
    parameter.grad.mul_(0.5)


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("case", ["adam", "nesterov", "no_momentum", "linear_decoder", "hook", "x_requires_grad",
                                  "frozen_bias", "bias_hook", "post_accumulate_hook", "backward_hook", "step_pre_hook",
                                  "step_post_hook", "global_forward_hook", "global_step_pre_hook", "anomaly",
                                  "weight_decay_set_later"])
def test_fused_step_falls_back_to_the_ordinary_step(device, case):
    config = dict(contractive_weight=0.1, decoder_activation="linear", loss="mse") \
        if case == "linear_decoder" else dict(contractive_weight=0.1)
    torch.manual_seed(0)
    model = pyae.Autoencoder(9, 7, **config).to(device=device, dtype=torch.float64)
    twin = copy.deepcopy(model)
    options = dict(nesterov=True) if case == "nesterov" else dict(momentum=0.0) if case == "no_momentum" else {}

    def optimizer_of(m):
        if case == "adam":
            return pyae.optim.Adam(m.parameters(), lr=0.01, autoencoder=m)
        return pyae.optim.SGD(m.parameters(), lr=0.1, **{"momentum": 0.9, **options}, autoencoder=m)

    optimizer, twin_optimizer = optimizer_of(model), optimizer_of(twin)
    calls = []
    if case == "hook":
        model.register_forward_hook(lambda *args: calls.append(1))
    for m, o in ((model, optimizer), (twin, twin_optimizer)):
        if case == "frozen_bias":
            m.decoder.bias.requires_grad_(False)
        if case == "bias_hook":
            m.encoder.bias.register_hook(lambda grad: grad * 0.5)
        if case == "post_accumulate_hook":
            m.encoder.weight.register_post_accumulate_grad_hook(_halve_grad)
        if case == "backward_hook":
            m.register_full_backward_pre_hook(lambda module, grad_output: None)
        if case == "step_pre_hook":
            o.register_step_pre_hook(lambda *args: None)
        if case == "step_post_hook":
            o.register_step_post_hook(lambda *args: None)
        if case == "weight_decay_set_later":  # after the optimizer took the model's (none)
            m.weight_decay = 0.5
    handles = []
    if case == "global_forward_hook":
        handles.append(torch.nn.modules.module.register_module_forward_hook(lambda *args: None))
    if case == "global_step_pre_hook":
        handles.append(register_optimizer_step_pre_hook(lambda *args: None))
    try:
        with torch.autograd.detect_anomaly(check_nan=False) if case == "anomaly" else contextlib.nullcontext():
            for x in _batches(device, torch.float64, 2):
                x = x.requires_grad_(True) if case == "x_requires_grad" else x
                assert optimizer.fused_step_refusal(x) is not None
                output = optimizer.autoencoder_step(x)
                expected = _ordinary_step(twin, twin_optimizer, x, None)
                assert torch.equal(output.loss.detach(), expected.loss.detach())
    finally:
        for handle in handles:
            handle.remove()
    # The ordinary step, exactly: the gradients exist and every number is the same.
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b) and (a.grad is not None or not a.requires_grad)
    assert len(calls) == (2 if case == "hook" else 0)


def test_fused_step_refuses_a_subclass_with_its_own_forward():
    class Scaled(pyae.Autoencoder):
        def forward(self, x, *, generator=None):
            output = super().forward(x, generator=generator)
            return output._replace(loss=output.loss * 2)

    torch.manual_seed(0)
    model = Scaled(9, 7, contractive_weight=0.1).double()
    twin = copy.deepcopy(model)
    optimizer = pyae.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, autoencoder=model)
    twin_optimizer = pyae.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, autoencoder=twin)
    _assert_takes_the_three_calls(model, optimizer, twin, twin_optimizer, _batches("cpu", torch.float64, 1)[0],
                                  "overrides forward")


def test_fused_step_without_grad_mode_refuses_as_the_ordinary_step_does():
    model, optimizer, _, _ = _twins(CONFIGURATIONS["plain"], "cpu", torch.float32)
    x = _batches("cpu", torch.float32, 1)[0]
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            assert optimizer.fused_step_refusal(x) is not None
            with pytest.raises(RuntimeError):
                optimizer.autoencoder_step(x)
    assert not optimizer.state  # nothing was created or updated


def test_fused_step_under_autocast_takes_the_ordinary_step():
    model, optimizer, twin, twin_optimizer = _twins(CONFIGURATIONS["contractive_sparse"], "cpu", torch.float32)
    x = _batches("cpu", torch.float32, 1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert optimizer.fused_step_refusal(x) is not None
        output = optimizer.autoencoder_step(x)
        expected = _ordinary_step(twin, twin_optimizer, x, None)
    assert torch.equal(output.loss.detach(), expected.loss.detach())


def test_fused_step_after_weights_change_outside_the_optimizer(device):
    fused, fused_optimizer, ordinary, ordinary_optimizer = _twins(CONFIGURATIONS["contractive_sparse"], device,
                                                                  torch.float64)
    batches = _batches(device, torch.float64)
    fused_optimizer.autoencoder_step(batches[0])
    _ordinary_step(ordinary, ordinary_optimizer, batches[0], None)
    with torch.no_grad():  # c is taken afresh after an outside change (the version counter)
        fused.encoder.weight.mul_(0.5)
        ordinary.encoder.weight.mul_(0.5)
    fused_optimizer.autoencoder_step(batches[1])
    _ordinary_step(ordinary, ordinary_optimizer, batches[1], None)
    torch.testing.assert_close(fused.encoder.weight, ordinary.encoder.weight.detach(), **TOLERANCES[torch.float64])


def test_fused_step_is_an_ordinary_step_call_for_schedulers():
    model, optimizer, _, _ = _twins(CONFIGURATIONS["plain"], "cpu", torch.float32)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x = _batches("cpu", torch.float32, 1)[0]
    assert optimizer.fused_step_refusal(x) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "lr_scheduler.step() before optimizer.step()" would raise
        optimizer.autoencoder_step(x)
        scheduler.step()
    assert model.encoder.weight.grad is None  # it did fuse
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_fused_step_refuses_norms_another_optimizer_took(device):
    model, optimizer, twin, twin_optimizer = _twins(CONFIGURATIONS["contractive_sparse"], device, torch.float64)
    pyae.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, autoencoder=model)  # takes the model's norms
    pyae.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9, autoencoder=twin)
    _assert_takes_the_three_calls(model, optimizer, twin, twin_optimizer, _batches(device, torch.float64, 1)[0],
                                  "not this optimizer's")


def test_autoencoder_step_needs_the_autoencoder_and_checks_x():
    model = pyae.Autoencoder(9, 7)
    with pytest.raises(ValueError, match="autoencoder=model"):
        pyae.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).autoencoder_step(torch.rand(2, 9))
    optimizer = pyae.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, autoencoder=model)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 9\)"):
        optimizer.autoencoder_step(torch.rand(2, 8))


@pytest.mark.parametrize("fused_backward", [True, False])
def test_train_step_takes_the_fused_step(fused_backward):
    model, optimizer, twin, twin_optimizer = _twins(CONFIGURATIONS["everything"], "cpu", torch.float64)
    step = pyae.TrainStep(model, optimizer, capture=False, fused_backward=fused_backward,
                          generator=torch.Generator().manual_seed(2))
    twin_noise = torch.Generator().manual_seed(2)
    for x in _batches("cpu", torch.float64):
        loss = step(x)
        expected = _ordinary_step(twin, twin_optimizer, x, twin_noise)
        torch.testing.assert_close(loss, expected.loss.detach(), **TOLERANCES[torch.float64])
    assert step.fused_backward is fused_backward
    assert (model.encoder.weight.grad is None) is fused_backward
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b.detach(), **TOLERANCES[torch.float64])
    with pytest.raises(TypeError, match="fused_backward must be a bool"):
        pyae.TrainStep(model, optimizer, capture=False, fused_backward=1)


def test_pending_products_become_the_gradient_where_the_group_cannot_take_them():
    # If a weight's group no longer takes the gradient in its buffer when step() runs (here:
    # momentum set to 0 between the fused backward and the update), the products are summed
    # into the gradient itself: the ordinary update, not a crash or a skipped term.
    fused, fused_optimizer, ordinary, ordinary_optimizer = _twins(CONFIGURATIONS["tied"], "cpu", torch.float64)
    x = _batches("cpu", torch.float64, 1)[0]
    fused_optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        fused_optimizer._fused_backward(fused, x, None)
    for group in fused_optimizer.param_groups + ordinary_optimizer.param_groups:
        group["momentum"] = 0.0
    fused_optimizer.step()
    fused_optimizer._pending_products.clear()
    _ordinary_step(ordinary, ordinary_optimizer, x, None)
    for a, b in zip(fused.parameters(), ordinary.parameters()):
        torch.testing.assert_close(a, b.detach(), **TOLERANCES[torch.float64])
    assert "momentum_buffer" not in fused_optimizer.state[fused.encoder.weight]
