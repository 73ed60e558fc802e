"""CUDA-only checks: CPU/CUDA agreement, determinism, CUDA graphs, half-precision ranges, a
second GPU. The device-parametrized tests of test_ops.py and test_modules.py cover the
rest of the CUDA side (reference, gradcheck, opcheck) wherever a GPU is present."""

import pytest
import torch

import pyae
import reference
from conftest import CUDA_AVAILABLE
from pyae import ops
from test_ops import TOLERANCES, make_inputs

pytestmark = pytest.mark.skipif(not CUDA_AVAILABLE, reason="needs a CUDA GPU and a CUDA build")

# Shapes at and around the MNIST sizes, with ragged edges (k not a multiple of the vector
# width, B not a multiple of the row chunk) and one where the vector loads are off.
CUDA_SHAPES = [(256, 784, 1000), (4096, 784, 1000), (37, 19, 333), (5, 3, 1001)]


def run_op_and_backward(x, weight, b, seed=0):
    """Forward and backward with upstream gradients drawn on the CPU, so that every device
    sees the same ones."""
    hidden, mean_activation, contractive = ops.sigmoid_encoder(x, weight, b)
    generator = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(t.shape, generator=generator, dtype=torch.float64).to(x)
                for t in (hidden, mean_activation, contractive)]
    grads = ops.sigmoid_encoder_backward(*upstream, x, weight, hidden)
    return (hidden, mean_activation, contractive, *grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cpu_and_cuda_agree(dtype, shape):
    x, weight, b = make_inputs(*shape, dtype=dtype, seed=11)
    on_cpu = run_op_and_backward(x, weight, b)
    on_cuda = run_op_and_backward(x.cuda(), weight.cuda(), b.cuda())
    for got, wanted in zip(on_cuda, on_cpu):
        # Gradients sum up to B or k products: compare relative to their largest entry.
        scale = wanted.abs().max().item()
        torch.testing.assert_close(got.cpu(), wanted, rtol=TOLERANCES[dtype]["rtol"],
                                   atol=TOLERANCES[dtype]["atol"] + TOLERANCES[dtype]["rtol"] * scale)


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
    first = run_op_and_backward(x, weight, b)
    for _ in range(3):
        again = run_op_and_backward(x, weight, b)
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
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run_op_and_backward(static_x, weight, b)  # warm-up on the side stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run_op_and_backward(static_x, weight, b)
    static_x.copy_(x * 0.5)
    graph.replay()
    expected = run_op_and_backward(x * 0.5, weight, b)
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
    outputs = run_op_and_backward(x, weight, b)
    assert all(t.device == torch.device("cuda:1") for t in outputs)
    expected = reference.sigmoid_encoder(x, weight, b)
    for got, wanted in zip(outputs[:3], expected):
        torch.testing.assert_close(got.double(), wanted, **TOLERANCES[torch.float32])
