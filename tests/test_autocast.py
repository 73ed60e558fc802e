"""Mixed precision: every operator and every module variant under torch.autocast (CPU float16
and bfloat16 always; CUDA float16 and bfloat16 on a GPU). The encoders run in the autocast
dtype, the reconstruction loss, the KL penalty and weight decay in float32; the results match
the float32 run within the low dtype's tolerance, and float32 parameters get float32
gradients (csrc/autocast.cpp)."""

import pytest
import torch

import pyae
from helpers import TOLERANCES, make_inputs, needs_cuda
from pyae import ops

AUTOCAST = [
    ("cpu", torch.bfloat16),
    ("cpu", torch.float16),
    pytest.param("cuda", torch.bfloat16, marks=needs_cuda),
    pytest.param("cuda", torch.float16, marks=needs_cuda),
]


def close(got, wanted, dtype, *, scale=None):
    """Within the low dtype's tolerance, relative to the largest entry for sums of many terms."""
    tolerance = TOLERANCES[dtype]
    scale = wanted.abs().max().item() if scale is None and wanted.numel() else (scale or 0.0)
    torch.testing.assert_close(got.double(), wanted.double(), rtol=tolerance["rtol"],
                               atol=tolerance["atol"] + tolerance["rtol"] * scale)


def float32_inputs(device, seed=40):
    x, weight, b = make_inputs(33, 20, 17, dtype=torch.float32, device=device, seed=seed)
    return [t.requires_grad_() for t in (x, weight, b)]


@pytest.mark.parametrize("device_type, dtype", AUTOCAST)
@pytest.mark.parametrize("masked", [False, True])
def test_encoder_runs_in_the_autocast_dtype(device_type, dtype, masked):
    inputs = float32_inputs(device_type)
    seed = torch.tensor(7, dtype=torch.int64, device=device_type)
    encode = (lambda *a: ops.masked_sigmoid_encoder(*a, 0.3, seed)) if masked else ops.sigmoid_encoder
    with torch.autocast(device_type, dtype=dtype):
        outputs = encode(*inputs)
    assert all(out.dtype == dtype for out in outputs)
    upstream = [torch.ones_like(out) for out in outputs]
    grads = torch.autograd.grad(outputs, inputs, upstream)
    assert all(g.dtype == torch.float32 for g in grads)

    # The float32 run on the same inputs rounded to the low dtype (the casts autocast made).
    rounded = [t.detach().to(dtype).float().requires_grad_() for t in inputs]
    expected = encode(*rounded)
    expected_grads = torch.autograd.grad(expected, rounded, [u.float() for u in upstream])
    for got, wanted in zip(outputs, expected):
        close(got, wanted, dtype)
    for got, wanted in zip(grads, expected_grads):
        close(got, wanted, dtype)


@pytest.mark.parametrize("device_type, dtype", AUTOCAST)
@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse"])
def test_reconstruction_loss_runs_in_float32(device_type, dtype, loss_name):
    generator = torch.Generator().manual_seed(41)
    logits = (torch.randn(9, 13, generator=generator) * 3).to(device=device_type, dtype=dtype).requires_grad_()
    target = torch.rand(9, 13, generator=generator).to(device_type)  # float32 data, as a loader gives it
    with torch.autocast(device_type, dtype=dtype):
        reconstruction, loss = ops.sigmoid_reconstruction_loss(logits, target, loss_name)
    assert reconstruction.dtype == loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad.dtype == dtype
    expected = ops.sigmoid_reconstruction_loss(logits.detach().float(), target, loss_name)
    torch.testing.assert_close(loss, expected.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(reconstruction, expected.reconstruction)


@pytest.mark.parametrize("device_type, dtype", AUTOCAST)
def test_penalties_run_in_float32(device_type, dtype):
    rho_hat = torch.tensor([0.01, 0.2, 0.6], device=device_type, dtype=dtype, requires_grad=True)
    weights = [torch.randn(4, 3, device=device_type, dtype=dtype, requires_grad=True) for _ in range(2)]
    with torch.autocast(device_type, dtype=dtype):
        kl = ops.kl_sparsity(rho_hat, 0.05)
        decay = ops.weight_decay(weights)
    assert kl.dtype == decay.dtype == torch.float32
    torch.testing.assert_close(kl, ops.kl_sparsity(rho_hat.detach().float(), 0.05))
    torch.testing.assert_close(decay, ops.weight_decay([w.detach().float() for w in weights]))
    grads = torch.autograd.grad(kl + decay, [rho_hat, *weights])
    assert all(g.dtype == dtype for g in grads)


@pytest.mark.parametrize("device_type, dtype", AUTOCAST)
def test_mask_noise_keeps_its_dtype(device_type, dtype):
    seed = torch.tensor(3, dtype=torch.int64, device=device_type)
    for x in (torch.rand(5, 6, device=device_type), torch.rand(5, 6, device=device_type, dtype=dtype)):
        with torch.autocast(device_type, dtype=dtype):
            masked = ops.mask_noise(x, 0.5, seed)
        assert masked.dtype == x.dtype
        assert torch.equal(masked, ops.mask_noise(x, 0.5, seed))


@pytest.mark.parametrize("device_type, dtype", AUTOCAST)
def test_backward_under_autocast_is_the_plain_backward(device_type, dtype):
    # A float32 forward whose backward runs inside an autocast region: the backward operators
    # keep their dtype (their matrix products are not cast), so the gradients are bitwise
    # those of a backward outside it.
    inputs = float32_inputs(device_type, seed=42)
    outputs = ops.sigmoid_encoder(*inputs)
    upstream = [torch.ones_like(out) for out in outputs]
    expected = torch.autograd.grad(outputs, inputs, upstream, retain_graph=True)
    with torch.autocast(device_type, dtype=dtype):
        got = torch.autograd.grad(outputs, inputs, upstream)
    for g, w in zip(got, expected):
        assert g.dtype == torch.float32 and torch.equal(g, w)


def test_float64_is_never_cast():
    x, weight, b = make_inputs(5, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = ops.sigmoid_encoder(x, weight, b)
        loss = ops.sigmoid_reconstruction_loss(x - 0.5, x, "cross_entropy").loss
    assert all(out.dtype == torch.float64 for out in outputs) and loss.dtype == torch.float64


# Every module variant: the loss is float32, every parameter's gradient float32, and both
# match the float32 run.
VARIANTS = {
    "plain": dict(loss="cross_entropy"),
    "tied": dict(loss="cross_entropy", tied_weights=True),
    "linear_mse": dict(decoder_activation="linear", loss="mse"),
    "weight_decay": dict(loss="cross_entropy", weight_decay=0.01),
    "mask": dict(noise="mask", noise_level=0.3, loss="cross_entropy"),
    "gaussian": dict(noise="gaussian", noise_level=0.5),
    "sparse": dict(sparsity_target=0.1, sparsity_weight=0.5, loss="cross_entropy"),
    "contractive": dict(contractive_weight=0.5, loss="cross_entropy"),
    "all": dict(loss="cross_entropy", weight_decay=0.01, noise="mask", noise_level=0.2, sparsity_target=0.1,
                sparsity_weight=0.5, contractive_weight=0.5),
}


@pytest.mark.parametrize("device_type, dtype", AUTOCAST)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_module_variants_train_under_autocast(device_type, dtype, variant):
    torch.manual_seed(43)
    model = pyae.Autoencoder(30, 12, device=device_type, **VARIANTS[variant])
    x = torch.rand(16, 30, device=device_type)
    params = list(model.parameters())

    def step(autocast):
        generator = torch.Generator(device=device_type).manual_seed(44)
        with torch.autocast(device_type, dtype=dtype, enabled=autocast):
            out = model(x, generator=generator)
        return out, torch.autograd.grad(out.loss, params)

    out, grads = step(True)
    expected, expected_grads = step(False)
    assert out.loss.dtype == torch.float32 and out.hidden.dtype == dtype
    assert all(g.dtype == torch.float32 for g in grads)
    close(out.loss, expected.loss, dtype)
    for name, term in out.terms.items():
        close(term, expected.terms[name], dtype)
    for got, wanted in zip(grads, expected_grads):
        close(got, wanted, dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_grad_scaler_steps_like_float32(dtype):
    torch.manual_seed(45)
    model = pyae.Autoencoder(64, 32, loss="cross_entropy", sparsity_target=0.1, sparsity_weight=0.5,
                             contractive_weight=0.5, device="cuda")
    reference_model = pyae.Autoencoder(64, 32, loss="cross_entropy", sparsity_target=0.1, sparsity_weight=0.5,
                                       contractive_weight=0.5, device="cuda")
    reference_model.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference_optimizer = torch.optim.SGD(reference_model.parameters(), lr=0.1)
    # A scale small enough that no step overflows (a skipped step would leave the two runs a
    # step apart): the test is of the scaled gradients reaching the parameters.
    scaler = torch.amp.GradScaler("cuda", init_scale=128.0)
    x = torch.rand(128, 64, device="cuda")
    for _ in range(5):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            loss = model(x).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        reference_optimizer.zero_grad()
        reference_model(x).loss.backward()
        reference_optimizer.step()
    assert scaler.get_scale() == 128.0  # no step was skipped
    for got, wanted in zip(model.parameters(), reference_model.parameters()):
        close(got.detach(), wanted.detach(), dtype)
