"""pyae.config, pyae.checkpoint and pyae.training: the config, checkpoints (atomic, validated), bitwise resume, interrupts,
and the classic result that a linear autoencoder finds the principal subspace."""

import fractions
import math
import os

import pytest
import torch

import pyae
from pyae import checkpoint as checkpoint_module
from pyae.checkpoint import (
    CHECKPOINT_VERSION,
    best_checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from pyae.config import TrainConfig, build_model, build_optimizer, resolve_device
from pyae import training
from pyae.data import load_mnist
from pyae.training import train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    """300 real training digits, all classes (the embedded set is sorted by class)."""
    images, _ = load_mnist()
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:300]
    return images[keep]


def tiny(**overrides):
    options = dict(n_hidden=16, loss="cross_entropy", epochs=3, batch_size=32, lr=0.01, device="cpu", seed=3)
    options.update(overrides)
    return TrainConfig(**options)


def no_temp_files(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("n_hidden", 0, ValueError),
        ("n_hidden", 2.5, TypeError),
        ("epochs", 0, ValueError),
        ("batch_size", -1, ValueError),
        ("lr", 0.0, ValueError),
        ("lr", float("nan"), ValueError),
        ("lr", "0.1", TypeError),
        ("momentum", 1.0, ValueError),
        ("optimizer", "rmsprop", ValueError),
        ("seed", -1, ValueError),
        ("seed", True, TypeError),
        ("dtype", "int32", ValueError),
        ("device", "tpu", ValueError),
        ("decoder_activation", "relu", ValueError),
        ("loss", "l1", ValueError),
        ("noise", "salt", ValueError),
        ("weight_decay", -0.1, ValueError),
        ("sparsity_weight", -1.0, ValueError),
        ("contractive_weight", float("inf"), ValueError),
        ("tied_weights", "yes", TypeError),
        ("cuda_graph", 1, TypeError),
        ("fused_backward", "no", TypeError),
        ("mixed_precision", "float8", ValueError),
        ("val_fraction", 1.0, ValueError),
        ("early_stopping", 0, ValueError),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value, error):
    with pytest.raises(error, match=field):
        TrainConfig(**{field: value})


def test_config_cross_field_rules():
    with pytest.raises(ValueError, match="noise_level"):
        TrainConfig(noise="mask", noise_level=1.5)
    with pytest.raises(ValueError, match="noise_level"):
        TrainConfig(noise_level=0.3)  # no noise kind
    with pytest.raises(ValueError, match="sparsity_target"):
        TrainConfig(sparsity_weight=0.5)
    with pytest.raises(ValueError, match="cross_entropy"):
        TrainConfig(loss="cross_entropy", decoder_activation="linear")


def test_mixed_precision_rules():
    with pytest.raises(ValueError, match="mixed_precision='bfloat16' needs dtype='float32'"):
        TrainConfig(mixed_precision="bfloat16", dtype="float64")
    with pytest.raises(ValueError, match="mixed_precision='float16'"):
        TrainConfig(mixed_precision="float16", cuda_graph=True, device="cuda")
    assert TrainConfig(mixed_precision="bfloat16", cuda_graph=True, device="cuda").mixed_precision == "bfloat16"


def test_fused_backward_training_matches_the_three_calls(digits):
    # Every term on, float64: the fused step (products into the momentum buffers) and
    # zero_grad/backward/step train the same model up to rounding.
    config = tiny(dtype="float64", noise="mask", noise_level=0.25, weight_decay=1e-4, sparsity_target=0.1,
                  sparsity_weight=0.1, contractive_weight=0.1)
    fused_model, fused = train(config, digits, progress=False)
    model, history = train(config.replace(fused_backward=False), digits, progress=False)
    assert fused_model.encoder.weight.grad is None and model.encoder.weight.grad is not None
    for name in ("loss", "reconstruction", "weight_decay", "sparsity", "contractive"):
        torch.testing.assert_close(torch.tensor(fused[name]), torch.tensor(history[name]), rtol=1e-9, atol=1e-12)
    for a, b in zip(fused_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mixed_precision", ["bfloat16", "float16"])
def test_mixed_precision_training_tracks_float32(digits, mixed_precision):
    # Every term on: the epoch's losses are float32 values within the low dtype's rounding of
    # the float32 run's, and the parameters stay float32. (One epoch: over several, a strong
    # sparsity push amplifies rounding differences into different trajectories.)
    config = tiny(epochs=1, noise="mask", noise_level=0.25, weight_decay=1e-4, sparsity_target=0.1,
                  sparsity_weight=0.1, contractive_weight=0.1)
    _, reference = train(config, digits, progress=False)
    model, history = train(config.replace(mixed_precision=mixed_precision), digits, progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for name in ("loss", "reconstruction", "weight_decay", "sparsity", "contractive"):
        torch.testing.assert_close(torch.tensor(history[name]), torch.tensor(reference[name]), rtol=1e-2, atol=1e-4)


def test_mixed_precision_resume_is_bitwise_equal(tmp_path, digits):
    config = tiny(epochs=3, mixed_precision="bfloat16")
    _, straight = train(config, digits, progress=False)
    path = tmp_path / "checkpoint.pt"
    train(config.replace(epochs=1), digits, checkpoint_path=path, progress=False)
    _, resumed = train(config, digits, checkpoint_path=path, resume=True, progress=False)
    assert resumed["loss"] == straight["loss"]


def test_validation_fraction_is_held_out_and_measured(digits):
    config = tiny(epochs=2, val_fraction=0.2, noise="mask", noise_level=0.3, contractive_weight=0.1)
    seen = []
    model, history = train(config, digits, progress=False, callback=lambda epoch, step, out: seen.append(out))
    # 60 of the 300 digits are held out: 240 train in batches of 32, 8 steps per epoch.
    assert len(seen) == 2 * 8
    for name in ("loss", "reconstruction", "contractive"):
        assert len(history[f"val_{name}"]) == 2 and all(math.isfinite(v) for v in history[f"val_{name}"])
    # The held-out loss is the model's eval-mode loss on those digits (no corruption).
    order = torch.randperm(300, generator=torch.Generator().manual_seed(config.seed))
    held_out = digits[order[:60].sort().values]
    with torch.no_grad():
        expected = model(held_out).loss.item()
    assert history["val_loss"][-1] == pytest.approx(expected, rel=1e-5)
    # Without a fraction, the run is exactly what it was.
    _, plain = train(tiny(epochs=1), digits, progress=False)
    assert "val_loss" not in plain


def test_validation_set_and_early_stopping_keep_the_best_checkpoint(tmp_path, digits):
    # Uniform noise as the held-out set: a model that learns digits gets worse at it, so the
    # held-out loss rises after the first epoch and patience 2 stops the run after epoch 3.
    noise = torch.rand(50, digits.shape[1], generator=torch.Generator().manual_seed(1))
    path = tmp_path / "checkpoint.pt"
    config = tiny(epochs=10, early_stopping=2)
    _, history = train(config, digits, validation=noise, checkpoint_path=path, progress=False)
    assert history["epoch"] == [1, 2, 3]
    best = history["val_loss"].index(min(history["val_loss"])) + 1
    assert best == 1
    assert load_checkpoint(best_checkpoint_path(path)).epoch == best
    assert load_checkpoint(path).epoch == 3
    # Resuming a run that stopped early trains no further; a larger patience continues it.
    _, again = train(config, digits, validation=noise, checkpoint_path=path, resume=True, progress=False)
    assert again["epoch"] == [1, 2, 3]
    _, longer = train(config.replace(early_stopping=3), digits, validation=noise, checkpoint_path=path, resume=True,
                      progress=False)
    assert longer["epoch"] == [1, 2, 3, 4]


@pytest.mark.parametrize("val_fraction", [0.0, 0.25])
def test_large_data_is_gathered_batch_by_batch_with_the_same_result(digits, monkeypatch, val_fraction):
    # Above the size limit the examples stay where they are (a memory-mapped file is never
    # copied whole) and each batch gathers its rows: the same batches, the same bits.
    config = tiny(epochs=2, val_fraction=val_fraction, noise="mask", noise_level=0.2)
    expected_model, expected = train(config, digits, progress=False)
    monkeypatch.setattr(training, "_ON_DEVICE_BYTES", 0)
    model, history = train(config, digits, progress=False)
    assert history["loss"] == expected["loss"] and history.get("val_loss") == expected.get("val_loss")
    for got, wanted in zip(model.parameters(), expected_model.parameters()):
        assert torch.equal(got, wanted)


def test_validation_errors(digits):
    with pytest.raises(ValueError, match="early_stopping needs validation data"):
        train(tiny(early_stopping=2), digits, progress=False)
    with pytest.raises(ValueError, match="not both"):
        train(tiny(val_fraction=0.1), digits, validation=digits[:5], progress=False)
    with pytest.raises(ValueError, match="validation has 3 features"):
        train(tiny(), digits, validation=digits[:5, :3], progress=False)
    with pytest.raises(ValueError, match=r"validation in \[0, 1\]"):
        train(tiny(), digits, validation=digits[:5] * 2, progress=False)
    with pytest.raises(ValueError, match="leaves no validation examples"):
        train(tiny(val_fraction=0.001), digits[:10], progress=False)


def test_cuda_graph_needs_a_cuda_device(digits):
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        TrainConfig(cuda_graph=True, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
            train(tiny(device="auto", cuda_graph=True), digits, progress=False)
    # An older checkpoint's config (no cuda_graph field) still loads, with it off.
    stored = tiny().to_dict()
    del stored["cuda_graph"]
    assert TrainConfig.from_dict(stored).cuda_graph is False


@pytest.mark.skipif(not torch.cuda.is_available() or not pyae.has_cuda_kernels(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cuda_graph_training_matches_eager_training(digits, optimizer):
    # Every term and the masking noise's generator included; the last batch of each epoch is
    # smaller (300 = 4 x 64 + 44), so two graph shapes are used.
    config = tiny(device="cuda", batch_size=64, epochs=5, noise="mask", noise_level=0.25, weight_decay=1e-4,
                  sparsity_target=0.1, sparsity_weight=0.1, contractive_weight=0.1, optimizer=optimizer)
    eager_model, eager = train(config, digits, progress=False)
    graph_model, graph = train(config.replace(cuda_graph=True), digits, progress=False)
    for name in ("loss", "reconstruction", "weight_decay", "sparsity", "contractive"):
        torch.testing.assert_close(graph[name], eager[name], rtol=1e-4, atol=1e-5)
    for got, wanted in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(got, wanted, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() or not pyae.has_cuda_kernels(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mixed_precision", ["bfloat16", "float16"])
def test_mixed_precision_on_cuda_tracks_float32(digits, mixed_precision):
    config = tiny(device="cuda", batch_size=64, epochs=2, noise="mask", noise_level=0.25, sparsity_target=0.1,
                  sparsity_weight=0.1, contractive_weight=0.1)
    _, reference = train(config, digits, progress=False)
    _, history = train(config.replace(mixed_precision=mixed_precision), digits, progress=False)
    torch.testing.assert_close(torch.tensor(history["loss"][:1]), torch.tensor(reference["loss"][:1]), rtol=1e-2,
                               atol=1e-3)
    if mixed_precision == "bfloat16":  # bfloat16 goes with CUDA graphs (no gradient scaler)
        _, graph = train(config.replace(mixed_precision="bfloat16", cuda_graph=True), digits, progress=False)
        torch.testing.assert_close(graph["loss"], history["loss"], rtol=1e-3, atol=1e-4)


def test_config_round_trips_through_a_dict():
    config = TrainConfig(n_hidden=7, noise="gaussian", noise_level=1, sparsity_target=0.1, optimizer="adam",
                         dtype=torch.float64)
    assert config.dtype == "float64" and config.noise_level == 1.0
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="bogus"):
        TrainConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b = build_model(tiny(), 784), build_model(tiny(), 784)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.encoder.weight, b.encoder.weight)
    assert not torch.equal(a.encoder.weight, build_model(tiny(seed=4), 784).encoder.weight)
    assert isinstance(a, pyae.Autoencoder) and a.loss == "cross_entropy"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ------------------------------------------------------------------------ checkpoints


def test_checkpoint_round_trip(tmp_path, digits):
    path = tmp_path / "run" / "checkpoint.pt"
    config = tiny(epochs=2, noise="mask", noise_level=0.25, optimizer="adam")
    model, history = train(config, digits, checkpoint_path=path, progress=False, extra={"note": "hi"})
    ckpt = load_checkpoint(path)
    assert ckpt.version == CHECKPOINT_VERSION and ckpt.epoch == 2 and ckpt.config == config
    assert ckpt.n_inputs == 784 and ckpt.extra == {"note": "hi"}
    assert ckpt.history["loss"] == pytest.approx(history["loss"])
    assert {"torch", "shuffle", "noise"} <= set(ckpt.rng_state)
    assert all(ckpt.rng_state[k].dtype == torch.uint8 for k in ("torch", "shuffle", "noise"))
    for name, value in model.state_dict().items():
        assert torch.equal(ckpt.model_state[name], value), name
    assert ckpt.optimizer_state["state"], "Adam's moments are stored"
    restored = model_from_checkpoint(path)
    assert not restored.training
    for a, b in zip(restored.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert history["epoch"] == [1, 2] and len(history["seconds"]) == 2
    assert set(history) == {"epoch", "loss", "reconstruction", "seconds"}
    assert no_temp_files(path.parent)


def _save(path, model, epoch, config):
    optimizer = build_optimizer(config, model)
    rng = {"torch": torch.get_rng_state(), "shuffle": torch.Generator().get_state(),
           "noise": torch.Generator().get_state()}
    return save_checkpoint(path, model=model, optimizer=optimizer, epoch=epoch, config=config, rng_state=rng)


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = tiny()
    path = tmp_path / "checkpoint.pt"
    _save(path, build_model(config, 784), 1, config)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        _save(path, build_model(tiny(seed=9), 784), 2, config)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path).epoch == 1
    assert no_temp_files(tmp_path)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    config = tiny()
    path = tmp_path / "checkpoint.pt"
    _save(path, build_model(config, 784), 1, config)
    real_save = torch.save

    def save_half_then_interrupt(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", save_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        _save(path, build_model(config, 784), 2, config)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_checkpoint(path).epoch == 1
    assert no_temp_files(tmp_path)


def test_truncated_and_corrupt_checkpoints_are_refused(tmp_path):
    config = tiny()
    good = tmp_path / "good.pt"
    _save(good, build_model(config, 784), 1, config)
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "garbage.pt": os.urandom(4096),
        "text.pt": b"this is not a checkpoint\n",
        "flipped.pt": data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:],
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match="not a (readable|valid) pyae checkpoint") as info:
            load_checkpoint(path)
        assert str(path) in str(info.value), name


def test_foreign_and_inconsistent_files_are_refused(tmp_path):
    foreign = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), foreign)
    with pytest.raises(ValueError, match="'format'") as info:
        load_checkpoint(foreign)
    assert str(foreign) in str(info.value)

    config = tiny()
    good = tmp_path / "good.pt"
    _save(good, build_model(config, 784), 1, config)
    payload = torch.load(good, weights_only=True)
    for mutate, message in [
        (lambda p: p.pop("model"), "missing key 'model'"),
        (lambda p: p.pop("rng_state"), "missing key 'rng_state'"),
        (lambda p: p.update(version=CHECKPOINT_VERSION + 1), "version"),
        (lambda p: p.update(epoch="one"), "'epoch'"),
        (lambda p: p["config"].update(lr=-1.0), "lr"),
        (lambda p: p["rng_state"].pop("noise"), "noise"),
        (lambda p: p.update(n_inputs=100), "encoder.weight"),
    ]:
        broken = {**payload, "config": dict(payload["config"]), "rng_state": dict(payload["rng_state"])}
        mutate(broken)
        path = tmp_path / "broken.pt"
        torch.save(broken, path)
        with pytest.raises(ValueError, match=message):
            load_checkpoint(path)

    # Arbitrary objects are never unpickled (weights_only=True).
    evil = tmp_path / "evil.pt"
    torch.save({**payload, "extra": {"obj": fractions.Fraction(1, 3)}}, evil)
    with pytest.raises(ValueError, match="not a readable pyae checkpoint"):
        load_checkpoint(evil)

    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="directory"):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- resume


RESUME_CONFIGS = [
    tiny(noise="mask", noise_level=0.3),
    tiny(noise="gaussian", noise_level=0.2, sparsity_target=0.1, sparsity_weight=0.1, contractive_weight=0.05,
         optimizer="adam", lr=1e-3, weight_decay=1e-3, tied_weights=True, batch_size=50),
]


@pytest.mark.parametrize("config", RESUME_CONFIGS, ids=["sgd-mask", "adam-everything"])
def test_stop_and_resume_is_bitwise_equal_to_a_straight_run(tmp_path, digits, config):
    straight, straight_history = train(config, digits, progress=False)

    path = tmp_path / "checkpoint.pt"
    train(config.replace(epochs=1), digits, checkpoint_path=path, progress=False)
    assert load_checkpoint(path).epoch == 1
    # Something else uses the global RNG between the two processes' lives.
    torch.rand(1000)
    resumed, history = train(config, digits, checkpoint_path=path, resume=True, progress=False)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert history["loss"] == straight_history["loss"]
    assert history["epoch"] == [1, 2, 3]
    assert load_checkpoint(path).epoch == 3


def test_keyboard_interrupt_mid_epoch_keeps_the_last_checkpoint(tmp_path, digits):
    config = RESUME_CONFIGS[0]
    path = tmp_path / "checkpoint.pt"
    seen = []

    def interrupt(epoch, step, output):
        seen.append((epoch, step))
        assert isinstance(output, pyae.AutoencoderOutput)
        if epoch == 2 and step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, digits, checkpoint_path=path, progress=False, callback=interrupt)
    assert seen[0] == (1, 0) and seen[-1] == (2, 3)
    ckpt = load_checkpoint(path)
    assert ckpt.epoch == 1 and len(ckpt.history["loss"]) == 1
    assert no_temp_files(tmp_path)

    # The lost half epoch is redone exactly: the result equals an uninterrupted run.
    resumed, _ = train(config, digits, checkpoint_path=path, resume=True, progress=False)
    straight, _ = train(config, digits, progress=False)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(a, b)


def test_weight_decay_is_applied_by_the_optimizer():
    # build_optimizer gives pyae's fused optimizer the model: it applies the weight decay to
    # the weight matrices and marks the model, so the loss's term carries no gradient; with the
    # contractive penalty the squared row norms get a group of their own.
    for config in (tiny(weight_decay=0.01), tiny(weight_decay=0.01, tied_weights=True), tiny(),
                   tiny(weight_decay=0.01, contractive_weight=0.1)):
        model = build_model(config, 784)
        optimizer = build_optimizer(config, model)
        assert isinstance(optimizer, pyae.optim.SGD) and optimizer.autoencoder is model
        assert model.optimizer_applies_weight_decay == (config.weight_decay > 0)
        assert optimizer.param_groups[0]["params"] == list(model.parameters())
        assert optimizer.param_groups[0]["weight_decay"] == 0
        norms_groups = [g for g in optimizer.param_groups if g.get(pyae.optim.NORMS_GROUP)]
        assert len(norms_groups) == (1 if config.contractive_weight > 0 else 0)
        assert optimizer._extra_decay == {id(w): config.weight_decay for w in model.weight_matrices()
                                          if config.weight_decay > 0}


def test_the_trained_model_has_its_weight_decay_gradient_back(digits):
    # train() had the optimizer apply the weight decay; the model it returns is a plain one again,
    # whose loss.backward() gives the whole gradient, lambda * W included.
    model, _ = train(tiny(weight_decay=0.05, epochs=1), digits, progress=False)
    assert model.optimizer_applies_weight_decay is False
    model.train()
    assert model(digits[:8]).terms["weight_decay"].requires_grad


@pytest.mark.parametrize("layout", ["one group", "weight matrices and the rest"])
def test_a_run_checkpointed_by_torch_optimizers_resumes(tmp_path, digits, layout):
    # Earlier pyae stored torch.optim.SGD's state: one group of every parameter (0.1.0), or
    # the weight matrices with weight decay and then the rest. Such a checkpoint resumes into
    # pyae.optim's groups and ends where the straight run ends (the same gradients, added in
    # another order: equal up to rounding, not bitwise).
    config = tiny(weight_decay=0.05, momentum=0.9, contractive_weight=0.1)
    straight, _ = train(config, digits, progress=False)
    path = tmp_path / "checkpoint.pt"
    train(config.replace(epochs=1), digits, checkpoint_path=path, progress=False)
    payload = torch.load(path, weights_only=True)
    stored = payload["optimizer"]
    model = build_model(config, 784)
    parameters = list(model.parameters())
    if layout == "one group":
        order, groups = parameters, [len(parameters)]
    else:
        matrices = list(model.weight_matrices())
        order = matrices + [p for p in parameters if all(p is not m for m in matrices)]
        groups = [len(matrices), len(parameters) - len(matrices)]
    old_of = {id(p): i for i, p in enumerate(parameters)}  # pyae.optim's group 0 is the model's order
    state = {new: stored["state"][old_of[id(p)]] for new, p in enumerate(order) if old_of[id(p)] in stored["state"]}
    hyper = {k: v for k, v in stored["param_groups"][0].items() if k != "params"}
    param_groups, start = [], 0
    for index, size in enumerate(groups):
        decay = 0.05 if layout != "one group" and index == 0 else 0.0
        param_groups.append({**hyper, "params": list(range(start, start + size)), "weight_decay": decay})
        start += size
    payload["optimizer"] = {"state": state, "param_groups": param_groups}
    torch.save(payload, path)
    resumed, history = train(config, digits, checkpoint_path=path, resume=True, progress=False)
    assert history["epoch"] == [1, 2, 3]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_resume_on_another_device_type_continues_deterministically(tmp_path, digits):
    config = RESUME_CONFIGS[0]
    path = tmp_path / "checkpoint.pt"
    train(config.replace(epochs=1), digits, checkpoint_path=path, progress=False)
    payload = torch.load(path, weights_only=True)
    payload["rng_state"]["device_type"] = "cuda"  # as if written on a GPU
    payload["rng_state"]["shuffle"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state size
    torch.save(payload, path)
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())

    with pytest.warns(RuntimeWarning, match="reproducible"):
        a, _ = train(config, digits, checkpoint_path=path, resume=True, progress=False)
    with pytest.warns(RuntimeWarning):
        b, _ = train(config, digits, checkpoint_path=copy, resume=True, progress=False)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_resume_refuses_a_different_run(tmp_path, digits):
    path = tmp_path / "checkpoint.pt"
    train(tiny(epochs=1), digits, checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="lr=0.5"):
        train(tiny(lr=0.5), digits, checkpoint_path=path, resume=True, progress=False)
    with pytest.raises(ValueError, match="inputs"):
        train(tiny(), digits[:, :100], checkpoint_path=path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError):
        train(tiny(), digits, checkpoint_path=tmp_path / "none.pt", resume=True, progress=False)
    with pytest.raises(ValueError, match="checkpoint_path"):
        train(tiny(), digits, resume=True, progress=False)
    # Nothing left to do: the stored model comes back unchanged.
    model, history = train(tiny(epochs=1), digits, checkpoint_path=path, resume=True, progress=False)
    assert history["epoch"] == [1]


def test_train_checks_its_inputs(digits):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        train(tiny(epochs=1), digits * 2 - 0.5, progress=False)
    with pytest.raises(ValueError, match="2-D"):
        train(tiny(epochs=1), digits[0], progress=False)
    with pytest.raises(TypeError, match="floating"):
        train(tiny(epochs=1), (digits * 255).to(torch.uint8), progress=False)
    with pytest.raises(TypeError, match="TrainConfig"):
        train({"n_hidden": 3}, digits, progress=False)


def test_divergence_is_reported(digits):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(tiny(loss="mse", decoder_activation="linear", lr=1e4, epochs=2), digits, progress=False)


def test_progress_lines_without_tqdm(digits, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    train(tiny(epochs=2, contractive_weight=0.1), digits[:64], progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "contractive" in err
    train(tiny(epochs=1), digits[:64], progress=False)
    assert capsys.readouterr().err == ""


def test_history_has_every_term(digits):
    config = tiny(epochs=2, weight_decay=1e-3, sparsity_target=0.05, sparsity_weight=0.1, contractive_weight=0.1)
    _, history = train(config, digits, progress=False)
    assert set(history) == {"epoch", "loss", "reconstruction", "weight_decay", "sparsity", "contractive", "seconds"}
    assert all(len(v) == 2 for v in history.values())
    assert history["reconstruction"][1] < history["reconstruction"][0]


# -------------------------------------------------------------------------------- PCA


def test_linear_autoencoder_learns_the_principal_subspace():
    """Baldi & Hornik / Bourlard & Kamp: a linear(ized) autoencoder trained with squared
    error spans the top-k principal subspace. pyae's encoder is a sigmoid; on small
    inputs it works in its linear regime (sigmoid(a) ~ 1/2 + a/4), where the result holds."""
    n, k, count = 8, 3, 400
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    spectrum = torch.tensor([3.0, 2.5, 2.0, 0.3, 0.25, 0.2, 0.15, 0.1], dtype=torch.float64)  # gap after 3
    x = (torch.randn(count, n, generator=g, dtype=torch.float64) * spectrum) @ basis.T
    x = 0.1 * (x - x.mean(0))  # centered, and small: the sigmoid's near-linear regime

    # Full batch, so the 300 steps are 300 epochs.
    config = TrainConfig(n_hidden=k, decoder_activation="linear", tied_weights=True, loss="mse", optimizer="adam", lr=0.05,
                         epochs=300, batch_size=count, dtype="float64", device="cpu", seed=1)
    model, _ = train(config, x, progress=False)

    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    top = vh[:k].T  # (n, k): the top-k right singular vectors
    weight = model.encoder.weight.detach().T  # (n, k): spans the learned subspace
    q, _ = torch.linalg.qr(weight)
    learned_projection, principal_projection = q @ q.T, top @ top.T
    distance = torch.linalg.matrix_norm(learned_projection - principal_projection)
    assert distance < 0.03, distance  # a random 3-d subspace of R^8 is at ~2
    # The reconstruction error is close to PCA's (the energy outside the top-k subspace);
    # not equal, since the sigmoid is only nearly linear at this scale.
    pca_error = (x - x @ principal_projection).pow(2).sum(1).mean()
    with torch.no_grad():
        error = model(x).terms["reconstruction"]
    assert pca_error <= error < 1.5 * pca_error
