"""The masking noise operator: its Philox words, its statistics, determinism, gradient,
gradcheck and opcheck."""

import math

import pytest
import torch

from helpers import CUDA_AVAILABLE
from pyae import functional as PF
from pyae import ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Philox4x32-10's first word for key 0 and counter 0 (Random123's known-answer vector):
# element 0 of a mask drawn with seed 0.
FIRST_WORD_OF_SEED_0 = 0x6627E8D5


def seed(value, device="cpu"):
    return torch.tensor(value, dtype=torch.int64, device=device)


def test_known_answer_of_the_philox_word(device):
    x = torch.ones(1, device=device)
    kept = ops.mask_noise(x, (FIRST_WORD_OF_SEED_0 - 1) / 2**32, seed(0, device))
    dropped = ops.mask_noise(x, (FIRST_WORD_OF_SEED_0 + 1) / 2**32, seed(0, device))
    assert kept.item() == 1.0 and dropped.item() == 0.0


@pytest.mark.parametrize("q", [0.1, 0.25, 0.5, 0.9])
def test_drops_a_fraction_q_independently(device, q):
    rows, columns = 2000, 500
    x = torch.ones(rows, columns, device=device)
    keep = (ops.mask_noise(x, q, seed(1234, device)) != 0).double().cpu()
    count = keep.numel()
    # Overall fraction, within 5 standard deviations of a Binomial(count, q).
    assert abs((1 - keep.mean().item()) - q) < 5 * math.sqrt(q * (1 - q) / count)
    # No row or column far off (6 standard deviations over 2,500 groups).
    for fractions, size in ((1 - keep.mean(1), columns), (1 - keep.mean(0), rows)):
        assert (fractions - q).abs().max().item() < 6 * math.sqrt(q * (1 - q) / size)
    # Neighbours (along a row, and across rows) are uncorrelated.
    centred = keep - keep.mean()
    for a, b in ((centred[:, 1:], centred[:, :-1]), (centred[1:], centred[:-1])):
        correlation = (a * b).mean() / (centred.var() + 1e-12)
        assert abs(correlation.item()) < 5 / math.sqrt(a.numel())


@pytest.mark.parametrize("dtype", DTYPES)
def test_keeps_values_exactly_and_the_mask_depends_on_seed_and_index_only(device, dtype):
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(37, 53, generator=generator) + 0.5).to(device=device, dtype=dtype)
    out = ops.mask_noise(x, 0.3, seed(99, device))
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous()
    keep = out != 0
    assert torch.equal(out[keep], x[keep])
    reference_mask = ops.mask_noise(torch.ones(37, 53), 0.3, seed(99)) != 0  # float32, CPU
    assert torch.equal(keep.cpu(), reference_mask)
    assert torch.equal(ops.mask_noise(x, 0.3, seed(99, device)), out)  # the same seed, the same mask
    assert not torch.equal(ops.mask_noise(x, 0.3, seed(100, device)) != 0, keep)


def test_non_contiguous_input_uses_logical_indices(device):
    x = torch.rand(40, 30, device=device) + 0.5
    transposed = x.t()  # (30, 40), not contiguous
    out = ops.mask_noise(transposed, 0.5, seed(7, device))
    assert torch.equal(out, ops.mask_noise(transposed.contiguous(), 0.5, seed(7, device)))


def test_q_zero_keeps_all_and_q_one_drops_all(device):
    x = torch.rand(9, 11, device=device) + 0.5
    assert torch.equal(ops.mask_noise(x, 0.0, seed(3, device)), x)
    assert torch.equal(ops.mask_noise(x, 1.0, seed(3, device)), torch.zeros_like(x))


def test_gradient_goes_through_the_same_mask(device):
    x = (torch.rand(20, 30, device=device, dtype=torch.float64) + 0.5).requires_grad_()
    out = ops.mask_noise(x, 0.4, seed(5, device))
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    torch.testing.assert_close(grad, upstream * (out != 0))
    small = x[:4, :5].detach().clone().requires_grad_()
    torch.autograd.gradcheck(lambda t: ops.mask_noise(t, 0.4, seed(5, device)), (small,))


def test_opcheck(device):
    x = torch.rand(6, 7, device=device, dtype=torch.float64)
    for requires_grad in (False, True):
        torch.library.opcheck(torch.ops.pyae.mask_noise.default, (x.clone().requires_grad_(requires_grad), 0.3,
                                                                  seed(11, device)))


def test_cpu_mask_does_not_depend_on_thread_count():
    x = torch.ones(300, 700)
    threads = torch.get_num_threads()
    masks = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            masks.append(ops.mask_noise(x, 0.25, seed(42)))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(m, masks[0]) for m in masks)


@pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build")
def test_cpu_and_cuda_draw_the_same_mask():
    x = torch.rand(123, 77) + 0.5
    on_cpu = ops.mask_noise(x, 0.35, seed(2024))
    on_cuda = ops.mask_noise(x.cuda(), 0.35, seed(2024, "cuda"))
    assert torch.equal(on_cuda.cpu(), on_cpu)


def test_functional_mask_noise_is_reproducible_with_a_generator():
    x = torch.rand(50, 60) + 0.5
    first = PF.mask_noise(x, 0.3, generator=torch.Generator().manual_seed(8))
    again = PF.mask_noise(x, 0.3, generator=torch.Generator().manual_seed(8))
    other = PF.mask_noise(x, 0.3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, again) and not torch.equal(first, other)


# --------------------------------------------------------------------------------------
# The masked encoder: the encoder of mask_noise(x), without keeping the corrupted input.


def encoder_inputs(device, bias=True):
    generator = torch.Generator().manual_seed(6)
    x = torch.rand(11, 9, generator=generator, dtype=torch.float64)
    weight = torch.randn(5, 9, generator=generator, dtype=torch.float64) / 3
    b = torch.randn(5, generator=generator, dtype=torch.float64) if bias else None
    return [None if t is None else t.to(device).requires_grad_() for t in (x, weight, b)]


@pytest.mark.parametrize("bias", [True, False])
def test_masked_encoder_equals_encoder_of_masked_input(device, bias):
    x, weight, b = encoder_inputs(device, bias)
    inputs = [t for t in (x, weight, b) if t is not None]
    got = ops.masked_sigmoid_encoder(x, weight, b, 0.3, seed(21, device))
    expected = ops.sigmoid_encoder(ops.mask_noise(x, 0.3, seed(21, device)), weight, b)
    upstream = [torch.randn_like(t) for t in expected]
    for actual, wanted in zip(got, expected):
        torch.testing.assert_close(actual, wanted)
    got_grads = torch.autograd.grad(got, inputs, upstream)
    for actual, wanted in zip(got_grads, torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(actual, wanted)
    with torch.no_grad():  # the composite kernel, without autograd
        for actual, wanted in zip(ops.masked_sigmoid_encoder(x, weight, b, 0.3, seed(21, device)), expected):
            torch.testing.assert_close(actual, wanted)
    torch.autograd.gradcheck(lambda *args: ops.masked_sigmoid_encoder(*args[:2], args[2] if bias else None, 0.3,
                                                                      seed(21, device)),
                             (x, weight, b if bias else None))


def test_masked_encoder_keeps_no_corrupted_input(device):
    x, weight, b = encoder_inputs(device)
    x = x.detach()  # the data: only the parameters need gradients
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        hidden, _, contractive = ops.masked_sigmoid_encoder(x, weight, b, 0.5, seed(3, device))
    input_shaped = [t for t in saved if t.shape == x.shape]
    assert len(input_shaped) == 1 and input_shaped[0].data_ptr() == x.data_ptr()  # the clean x itself
    (hidden.sum() + contractive).backward()
    assert weight.grad is not None and b.grad is not None


def test_masked_encoder_opcheck(device):
    x, weight, b = (t.detach() for t in encoder_inputs(device))
    for requires_grad in (False, True):
        args = [t.clone().requires_grad_(requires_grad) for t in (x, weight, b)]
        torch.library.opcheck(torch.ops.pyae.masked_sigmoid_encoder.default, (*args, 0.4, seed(9, device)))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: ops.mask_noise(torch.ones(3, dtype=torch.long), 0.1, seed(0)), TypeError,
         "x must be a floating-point"),
        (lambda: ops.mask_noise(torch.ones(3), 1.5, seed(0)), ValueError, r"q must lie in \[0, 1\]"),
        (lambda: ops.mask_noise(torch.ones(3), -0.1, seed(0)), ValueError, r"q must lie in \[0, 1\]"),
        (lambda: ops.mask_noise(torch.ones(3), 0.1, torch.tensor(0.0)), TypeError, "seed must be an int64"),
        (lambda: ops.mask_noise(torch.ones(3), 0.1, torch.zeros(2, dtype=torch.long)), ValueError,
         "seed must hold one value"),
    ],
)
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()
