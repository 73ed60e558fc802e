"""pyae.TrainStep: the same update as the hand-written step, and clear errors."""

import pytest
import torch

import pyae


def make_model(device="cpu", seed=0):
    torch.manual_seed(seed)
    return pyae.Autoencoder(20, 8, loss="cross_entropy", contractive_weight=0.1, sparsity_target=0.1,
                            sparsity_weight=0.1, device=device)


def test_eager_step_matches_hand_written_step():
    reference, model = make_model(), make_model()
    optimizer_ref = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    step = pyae.TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    assert not step.capture  # a CPU model is never captured
    x = torch.rand(6, 20)
    for _ in range(3):
        optimizer_ref.zero_grad()
        expected = reference(x).loss
        expected.backward()
        optimizer_ref.step()
        loss = step(x)
        assert not loss.requires_grad
        torch.testing.assert_close(loss, expected.detach())
    for got, wanted in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, wanted)


@pytest.mark.parametrize("mixed_precision", ["bfloat16", "float16"])
def test_mixed_precision_step_matches_autocast_by_hand(mixed_precision):
    reference, model = make_model(), make_model()
    optimizer_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    step = pyae.TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), mixed_precision=mixed_precision)
    assert (step.grad_scaler is not None) == (mixed_precision == "float16")
    x = torch.rand(6, 20)
    dtype = getattr(torch, mixed_precision)
    for _ in range(3):
        optimizer_ref.zero_grad()
        with torch.autocast("cpu", dtype=dtype):
            expected = reference(x).loss
        expected.backward()
        optimizer_ref.step()
        loss = step(x)
        assert loss.dtype == torch.float32
        # The scaler multiplies the loss by a power of two and divides the gradients by it:
        # the same update up to the rounding of the low dtype's backward.
        torch.testing.assert_close(loss, expected.detach(), rtol=1e-2, atol=1e-3)
    for got, wanted in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, wanted, rtol=1e-2, atol=1e-3)


def test_argument_errors():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pyae.TrainStep(lambda x: x, optimizer)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        pyae.TrainStep(model, "sgd")
    with pytest.raises(ValueError, match="capture must be"):
        pyae.TrainStep(model, optimizer, capture="yes")
    with pytest.raises(ValueError, match="warmup_steps must be"):
        pyae.TrainStep(model, optimizer, warmup_steps=0)
    with pytest.raises(ValueError, match="needs a model on a CUDA device"):
        pyae.TrainStep(model, optimizer, capture=True)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        pyae.TrainStep(model, optimizer, mixed_precision="float8")
    with pytest.raises(ValueError, match="does not go with mixed_precision='float16'"):
        pyae.TrainStep(model, optimizer, capture=True, mixed_precision="float16")


@pytest.mark.skipif(not torch.cuda.is_available() or not pyae.has_cuda_kernels(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("optimizer_name", ["sgd", "adam"])
def test_captured_step_matches_eager_step(optimizer_name):
    def optimizer_for(model):
        if optimizer_name == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)

    eager_model, graph_model = make_model("cuda"), make_model("cuda")
    eager = pyae.TrainStep(eager_model, optimizer_for(eager_model), capture=False)
    captured = pyae.TrainStep(graph_model, optimizer_for(graph_model), capture=True, warmup_steps=2)
    generator = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.rand(16, 20, device="cuda", generator=generator) for _ in range(6)]
    batches.append(torch.rand(5, 20, device="cuda", generator=generator))  # a smaller last batch
    for x in batches:
        torch.testing.assert_close(captured(x), eager(x))
    assert len(captured._captured) == 1  # the 16-row shape; the 5-row one is still warming up
    for got, wanted in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(got, wanted)

    with pytest.raises(ValueError, match="capturable=True"):
        pyae.TrainStep(graph_model, torch.optim.Adam(graph_model.parameters()), capture=True)


def make_denoising_model(device="cpu", seed=0):
    torch.manual_seed(seed)
    return pyae.Autoencoder(20, 8, loss="cross_entropy", noise="mask", noise_level=0.3, contractive_weight=0.1,
                            device=device)


def test_generator_drives_the_noise_and_last_output_is_the_step():
    models = [make_denoising_model(), make_denoising_model()]
    steps = [pyae.TrainStep(m, torch.optim.SGD(m.parameters(), lr=0.1),
                            generator=torch.Generator().manual_seed(5)) for m in models]
    x = torch.rand(6, 20)
    losses = [[step(x) for _ in range(3)] for step in steps]
    for first, second in zip(*losses):
        assert torch.equal(first, second)  # the same generator seed: the same noise and steps
    assert not torch.equal(losses[0][0], losses[0][1])  # fresh noise every step
    output = steps[0].last_output
    assert isinstance(output, pyae.AutoencoderOutput) and torch.equal(output.loss.detach(), losses[0][-1])
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        pyae.TrainStep(models[0], torch.optim.SGD(models[0].parameters(), lr=0.1), generator=3)


@pytest.mark.skipif(not torch.cuda.is_available() or not pyae.has_cuda_kernels(), reason="needs a CUDA GPU")
def test_captured_step_with_a_generator_matches_eager_noise():
    # Registered with the graph, the generator advances on every replay exactly as eager
    # steps advance it: the same masks, the same updates.
    eager_model, graph_model = make_denoising_model("cuda"), make_denoising_model("cuda")
    eager = pyae.TrainStep(eager_model, torch.optim.SGD(eager_model.parameters(), lr=0.05), capture=False,
                           generator=torch.Generator(device="cuda").manual_seed(3))
    captured = pyae.TrainStep(graph_model, torch.optim.SGD(graph_model.parameters(), lr=0.05), capture=True,
                              warmup_steps=1, generator=torch.Generator(device="cuda").manual_seed(3))
    x = torch.rand(16, 20, device="cuda")
    for _ in range(5):
        torch.testing.assert_close(captured(x), eager(x))
    for got, wanted in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(got, wanted)
