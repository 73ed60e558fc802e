"""The CUDA checks a reviewer runs first, at the sizes where kernels break: determinism across
pointer alignments and repeated runs, float64 agreement with the CPU at large shapes, the
forward finalize's ticket under stress (eager and in a CUDA graph), two streams at once, and
tensors of more than 2^31 elements. Marked gpu_stress: benchmarks/gpu_check.sh runs them in a
stage of their own (they need a GPU with about 40 GB free and take a minute or two)."""

import pytest
import torch

import reference
from helpers import make_inputs, needs_cuda
from pyae import ops

pytestmark = [needs_cuda, pytest.mark.gpu_stress]


def misaligned_copy(t):
    """t's values in a tensor whose data starts one element past an aligned address, so the
    kernels take their scalar (non-vector) paths."""
    buffer = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    return buffer[1:].view(t.shape).copy_(t)


def encoder_step(x, weight, b, upstream):
    hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, b)
    return (hidden, mean_activation, contractive, *ops.sigmoid_encoder_backward(*upstream, x, weight, hidden))


def upstream_for(x, weight, seed=0):
    generator = torch.Generator(device=x.device).manual_seed(seed)
    shapes = [(x.shape[0], weight.shape[0]), (weight.shape[0],), ()]
    return [torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype) for shape in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(4099, 784, 1000), (1, 784, 4096), (100000, 7, 3), (37, 19, 333)])
def test_aligned_misaligned_and_repeated_runs_are_bitwise_equal(dtype, shape):
    x, weight, b = make_inputs(*shape, dtype=dtype, device="cuda", seed=50)
    upstream = upstream_for(x, weight)
    first = encoder_step(x, weight, b, upstream)
    again = encoder_step(x, weight, b, upstream)
    shifted = encoder_step(misaligned_copy(x), misaligned_copy(weight), misaligned_copy(b),
                           [misaligned_copy(u) for u in upstream])
    for a, r, s in zip(first, again, shifted):
        assert torch.equal(a, r)
        assert torch.equal(a, s)


@pytest.mark.parametrize("shape", [(4099, 784, 1000), (1, 784, 4096), (100000, 7, 3)])
def test_float64_matches_the_cpu_at_large_shapes(shape):
    x, weight, b = make_inputs(*shape, seed=51)
    upstream = upstream_for(x, weight)
    on_cpu = encoder_step(x, weight, b, upstream)
    on_cuda = encoder_step(x.cuda(), weight.cuda(), b.cuda(), [u.cuda() for u in upstream])
    for got, wanted in zip(on_cuda, on_cpu):
        scale = wanted.abs().max().item() if wanted.numel() else 0.0
        torch.testing.assert_close(got.cpu(), wanted, rtol=1e-12, atol=1e-12 * max(scale, 1.0))


def test_bfloat16_with_hidden_units_near_one_agrees_with_the_cpu():
    # Pre-activations around 6: h rounds to 1 - 2^-8 or 1 in bfloat16, where summing the
    # unrounded h would change d^2 by a factor of about 2.5.
    generator = torch.Generator().manual_seed(52)
    x = torch.rand(512, 64, generator=generator)
    weight = torch.full((300, 64), 6.0 / 32.0) + torch.randn(300, 64, generator=generator) * 0.01
    x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
    on_cpu = ops.sigmoid_encoder(x, weight, None)
    on_cuda = ops.sigmoid_encoder(x.cuda(), weight.cuda(), None)
    for got, wanted in zip(on_cuda, on_cpu):
        torch.testing.assert_close(got.cpu().double(), wanted.double(), rtol=2e-2, atol=1e-3)


def test_finalize_ticket_under_stress_eager_and_in_a_graph():
    # k = 1,000,003 hidden units: 62,501 finalize blocks race for the ticket that elects the
    # block adding their terms. The contractive term must be the same bits every time.
    x, weight, b = make_inputs(8, 16, 1_000_003, dtype=torch.float32, device="cuda", seed=53)
    expected = reference.sigmoid_encoder(x, weight, b)[2]
    first = ops.sigmoid_encoder(x, weight, b).contractive
    torch.testing.assert_close(first.double(), expected, rtol=1e-5, atol=0)
    for _ in range(200):
        assert torch.equal(ops.sigmoid_encoder(x, weight, b).contractive, first)

    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.sigmoid_encoder(static_x, weight, b)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ops.sigmoid_encoder(static_x, weight, b).contractive
    inputs = [x, x.flip(0)]
    eager = [ops.sigmoid_encoder(t, weight, b).contractive.clone() for t in inputs]
    for replay in range(200):
        static_x.copy_(inputs[replay % 2])
        graph.replay()
        assert torch.equal(captured, eager[replay % 2])


def test_two_side_streams_run_the_encoder_at_once():
    x, weight, b = make_inputs(2048, 784, 1000, dtype=torch.float32, device="cuda", seed=54)
    upstream = upstream_for(x, weight)
    expected = encoder_step(x, weight, b, upstream)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for stream in streams:
        stream.wait_stream(torch.cuda.current_stream())
    results = []
    for _ in range(10):
        for stream in streams:
            with torch.cuda.stream(stream):
                results.append(encoder_step(x, weight, b, upstream))
    for stream in streams:
        torch.cuda.current_stream().wait_stream(stream)
    for result in results:
        for got, wanted in zip(result, expected):
            assert torch.equal(got, wanted)


# --------------------------------------------------------------------------------------
# More than 2^31 elements: 64-bit indexing everywhere.


def test_float16_encoder_beyond_two_to_the_31_elements():
    B, n, k = 65_536, 8, 32_800  # B * k = 2,149,580,800 > 2^31
    generator = torch.Generator(device="cuda").manual_seed(55)
    x = torch.rand(B, n, generator=generator, device="cuda", dtype=torch.float16)
    weight = torch.randn(k, n, generator=generator, device="cuda", dtype=torch.float16) * 0.3
    hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, None)
    # The last rows and columns against a float64 reference of just those.
    tail_rows, tail_cols = slice(B - 3, B), slice(k - 5, k)
    expected_tail = torch.sigmoid(x[tail_rows].double() @ weight[tail_cols].double().T)
    torch.testing.assert_close(hidden[tail_rows, tail_cols].double(), expected_tail, rtol=2e-3, atol=2e-3)
    expected_mean = torch.sigmoid(x.double() @ weight[tail_cols].double().T).mean(0)
    torch.testing.assert_close(mean_activation[tail_cols].double(), expected_mean, rtol=2e-3, atol=2e-3)
    assert torch.isfinite(contractive)
    del hidden


def test_bfloat16_reconstruction_loss_beyond_two_to_the_31_elements():
    B, n = 2**21 + 2**10, 1024  # B * n = 2^31 + 2^20
    logits = torch.zeros(B, n, device="cuda", dtype=torch.bfloat16)
    target = torch.zeros(B, n, device="cuda", dtype=torch.bfloat16)
    logits[-1, -1] = 4.0
    target[-1, -1] = 1.0
    reconstruction, loss = ops.sigmoid_reconstruction_loss(logits, target, False)
    assert reconstruction[-1, -1].item() == pytest.approx(torch.sigmoid(torch.tensor(4.0)).item(), rel=1e-2)
    # Squared error: every element but the last contributes 0.25; the last (sigmoid(4) - 1)^2.
    expected = ((B * n - 1) * 0.25 + (torch.sigmoid(torch.tensor(4.0, dtype=torch.float64)).item() - 1) ** 2) / B
    assert loss.item() == pytest.approx(expected, rel=1e-2)
    grad = ops.sigmoid_reconstruction_loss_backward(None, torch.ones((), device="cuda", dtype=torch.bfloat16),
                                                    reconstruction, target, False)
    assert grad[-1, -1].item() != 0 and grad[-1, -1].item() != grad[0, 0].item()


def philox4x32_first_word(seed, subsequence):
    """Philox4x32-10's first output word for the key `seed` and the counter {0, 0, subsequence},
    in Python (kernel_math.h's philox4x32)."""
    mask = 0xFFFFFFFF
    c0, c1, c2, c3 = 0, 0, subsequence & mask, (subsequence >> 32) & mask
    k0, k1 = seed & mask, (seed >> 32) & mask
    for _ in range(10):
        p0 = 0xD2511F53 * c0
        p1 = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & mask, p1 & mask, ((p0 >> 32) ^ c3 ^ k1) & mask, p0 & mask
        k0, k1 = (k0 + 0x9E3779B9) & mask, (k1 + 0xBB67AE85) & mask
    return c0


def test_mask_noise_beyond_two_to_the_32_elements():
    numel, q, seed = 2**32 + 5, 0.5, 123456789
    x = torch.ones(numel, device="cuda", dtype=torch.float16)
    masked = ops.mask_noise(x, q, torch.tensor(seed, device="cuda"))
    threshold = round(q * 2**32)
    for index in [0, 1, 2**31, 2**32 - 1, 2**32, numel - 2, numel - 1]:
        kept = philox4x32_first_word(seed, index) >= threshold
        assert masked[index].item() == (1.0 if kept else 0.0), index
