"""CUDA-only checks: CPU/CUDA agreement, determinism, CUDA graphs, half-precision ranges, a
second GPU. The device-parametrized tests of test_encoder_ops.py and test_modules.py cover the
rest of the CUDA side (reference, gradcheck, opcheck) wherever a GPU is present."""

import pytest
import torch

import pyae
import reference
from helpers import CUDA_AVAILABLE, TOLERANCES, make_inputs
from pyae import ops

pytestmark = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build")

# Shapes at and around the MNIST sizes, with ragged edges (k not a multiple of the vector
# width, B not a multiple of the row chunk) and one where the vector loads are off.
CUDA_SHAPES = [(256, 784, 1000), (4096, 784, 1000), (37, 19, 333), (5, 3, 1001)]


def upstream_gradients(x, weight, seed=0):
    """Upstream gradients of (hidden, mean_activation, contractive), drawn on the CPU so that
    every device sees the same ones, then moved to x's device and dtype."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(x.shape[0], weight.shape[0]), (weight.shape[0],), ()]
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(x) for shape in shapes]


def run_op_and_backward(x, weight, b, upstream):
    hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, b)
    grads = ops.sigmoid_encoder_backward(*upstream, x, weight, hidden)
    return (hidden, mean_activation, contractive, *grads)


def assert_agree(got, wanted, dtype):
    # Gradients sum up to B or k products: compare relative to the largest entry.
    scale = wanted.abs().max().item() if wanted.numel() else 0.0
    torch.testing.assert_close(got.cpu().double(), wanted.double(), rtol=TOLERANCES[dtype]["rtol"],
                               atol=TOLERANCES[dtype]["atol"] + TOLERANCES[dtype]["rtol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cpu_and_cuda_agree(dtype, shape):
    # Both backends sum the same rounded h (the half types round h to the dtype before the
    # statistics, forward and backward alike).
    x, weight, b = make_inputs(*shape, dtype=dtype, seed=11)
    upstream = upstream_gradients(x, weight)
    on_cpu = run_op_and_backward(x, weight, b, upstream)
    on_cuda = run_op_and_backward(x.cuda(), weight.cuda(), b.cuda(), [u.cuda() for u in upstream])
    for got, wanted in zip(on_cuda, on_cpu):
        assert_agree(got, wanted, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_cpu_and_cuda_agree_on_the_reconstruction_loss(dtype, loss):
    generator = torch.Generator().manual_seed(17)
    logits = (torch.randn(300, 785, generator=generator, dtype=torch.float64) * 4).to(dtype)
    target = torch.rand(300, 785, generator=generator, dtype=torch.float64).to(dtype)
    grad_reconstruction = torch.randn(300, 785, generator=generator, dtype=torch.float64).to(dtype)
    grad_loss = torch.tensor(0.8, dtype=dtype)

    def run(device):
        reconstruction, value = ops.sigmoid_reconstruction_loss(logits.to(device), target.to(device), loss)
        grad = ops.sigmoid_reconstruction_loss_backward(grad_reconstruction.to(device), grad_loss.to(device),
                                                        reconstruction, target.to(device), loss)
        return reconstruction, value, grad

    for got, wanted in zip(run("cuda"), run("cpu")):
        assert_agree(got, wanted, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cpu_and_cuda_agree_on_the_kl_penalty(dtype):
    generator = torch.Generator().manual_seed(18)
    rho_hat = (torch.rand(1000, generator=generator, dtype=torch.float64) * 0.98 + 0.01).to(dtype)
    rho_hat[:3] = torch.tensor([0.0, 1.0, 0.5])
    grad = torch.tensor(1.5, dtype=dtype)
    for device_result, cpu_result in zip(
        (ops.kl_sparsity(rho_hat.cuda(), 0.05), ops.kl_sparsity_backward(grad.cuda(), rho_hat.cuda(), 0.05)),
        (ops.kl_sparsity(rho_hat, 0.05), ops.kl_sparsity_backward(grad, rho_hat, 0.05)),
    ):
        assert_agree(device_result, cpu_result, dtype)


def test_cross_entropy_target_outside_the_unit_interval_gives_nan_on_cuda():
    # No host synchronization to raise (the CPU raises a ValueError): the loss is NaN.
    logits = torch.zeros(4, 5, device="cuda")
    target = torch.full((4, 5), 0.5, device="cuda")
    assert torch.isfinite(ops.sigmoid_reconstruction_loss(logits, target, "cross_entropy").loss)
    target[2, 3] = 1.5
    assert torch.isnan(ops.sigmoid_reconstruction_loss(logits, target, "cross_entropy").loss)
    assert torch.isfinite(ops.sigmoid_reconstruction_loss(logits, target, "mse").loss)  # squared error takes any


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_gradients_match_reference_on_cuda(dtype, shape):
    x, weight, b = make_inputs(*shape, dtype=dtype, device="cuda", seed=12)
    inputs = [t.requires_grad_() for t in (x, weight, b)]
    outputs = ops.sigmoid_encoder(*inputs)
    expected = reference.sigmoid_encoder(*inputs)
    generator = torch.Generator(device="cuda").manual_seed(13)
    upstream = [torch.randn(out.shape, generator=generator, device="cuda", dtype=torch.float64) for out in outputs]
    grads = torch.autograd.grad(outputs, inputs, [u.to(dtype) for u in upstream])
    # The reference sees the same rounded upstream gradients, in float64.
    expected_grads = torch.autograd.grad(expected, inputs, [u.to(dtype).double() for u in upstream])
    for got, wanted in zip(grads, expected_grads):
        assert got.dtype == dtype and torch.isfinite(got).all()
        # A gradient sums B (or n) products: its absolute error grows with the sum's size,
        # so compare relative to the largest entry.
        scale = wanted.abs().max().item()
        torch.testing.assert_close(got.double(), wanted.double(), rtol=TOLERANCES[dtype]["rtol"],
                                   atol=TOLERANCES[dtype]["rtol"] * scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_is_deterministic(dtype, shape):
    x, weight, b = make_inputs(*shape, dtype=dtype, device="cuda", seed=14)
    upstream = upstream_gradients(x, weight)
    first = run_op_and_backward(x, weight, b, upstream)
    for _ in range(3):
        again = run_op_and_backward(x, weight, b, upstream)
        for got, wanted in zip(again, first):
            assert torch.equal(got, wanted)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_saturation_stays_finite(dtype):
    # Pre-activations near the top of float16's range (65504) and beyond bfloat16's usual use.
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0]], device="cuda", dtype=dtype)
    weight = torch.tensor([[30000.0, 0.0], [-30000.0, 0.0], [0.0, 1.0]], device="cuda", dtype=dtype)
    inputs = [t.requires_grad_() for t in (x, weight, torch.zeros(3, device="cuda", dtype=dtype))]
    hidden, mean_activation, contractive = ops.sigmoid_encoder(*inputs)
    (hidden.sum() + mean_activation.sum() + contractive).backward()
    for t in (hidden, mean_activation, contractive, *(i.grad for i in inputs)):
        assert torch.isfinite(t).all()
    assert hidden[:, 0].eq(1).all() and hidden[:, 1].eq(0).all()


def test_cuda_graph_capture_and_replay():
    x, weight, b = make_inputs(256, 784, 1000, dtype=torch.float32, device="cuda", seed=15)
    # Everything the captured work reads is on the device before the capture: a host-to-device
    # copy is not allowed while a stream captures.
    upstream = upstream_gradients(x, weight)
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run_op_and_backward(static_x, weight, b, upstream)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run_op_and_backward(static_x, weight, b, upstream)
    static_x.copy_(x * 0.5)
    graph.replay()
    expected = run_op_and_backward(x * 0.5, weight, b, upstream)
    for got, wanted in zip(captured, expected):
        torch.testing.assert_close(got, wanted)


def test_reduce_overhead_compile_matches_eager():
    torch.manual_seed(0)
    model = pyae.Autoencoder(784, 256, loss="cross_entropy", sparsity_target=0.05, sparsity_weight=0.1,
                             contractive_weight=0.1, device="cuda")
    x = torch.rand(128, 784, device="cuda")
    eager = model(x)
    eager_grads = torch.autograd.grad(eager.loss, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # the first calls record, later ones replay the CUDA graph
        out = compiled(x)
        grads = torch.autograd.grad(out.loss, list(model.parameters()))
    torch.testing.assert_close(out.loss, eager.loss)
    for got, wanted in zip(grads, eager_grads):
        torch.testing.assert_close(got, wanted)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_tensors_on_second_gpu():
    x, weight, b = make_inputs(64, 30, 50, dtype=torch.float32, device="cuda:1", seed=16)
    outputs = run_op_and_backward(x, weight, b, upstream_gradients(x, weight))
    assert all(t.device == torch.device("cuda:1") for t in outputs)
    expected = reference.sigmoid_encoder(x, weight, b)
    for got, wanted in zip(outputs[:3], expected):
        torch.testing.assert_close(got.double(), wanted, **TOLERANCES[torch.float32])
