"""pyae.stacked: the stack's encoder, greedy layer-wise pretraining, fine-tuning (gradients against a
float64 reference, bitwise resume), argument errors, and the `pyae stack` commands."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

import pyae
from pyae import cli
from pyae.checkpoint import load_checkpoint
from pyae.data import load_mnist
from pyae.stacked import (
    StackedAutoencoder,
    StackedClassifier,
    finetune,
    layer_configs,
    load_finetune_checkpoint,
    pretrain,
)
from pyae.training import train
from pyae.viz import filter_grid

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = [{"noise": "mask", "noise_level": 0.2, "loss": "cross_entropy"},
           {"noise": "gaussian", "noise_level": 0.1, "loss": "cross_entropy", "tied_weights": True}]


@pytest.fixture(scope="module")
def digits():
    """240 real training digits (all classes) and their labels."""
    images, labels = load_mnist()
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:240].sort().values
    return images[keep], labels[keep]


def make_stack(sizes=(12, 8), options=OPTIONS, seed=0, **kwargs):
    torch.manual_seed(seed)
    return StackedAutoencoder(784, list(sizes), options, **kwargs)


def configs_for(stack, **overrides):
    fields = dict(epochs=2, batch_size=32, lr=0.01, device="cpu", seed=5)
    fields.update(overrides)
    return layer_configs(stack, **fields)


def same_parameters(a, b):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def no_temp_files(directory):
    return [name for name in os.listdir(directory) if name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------ stack


@pytest.mark.parametrize("options", [None, {"noise": "mask", "noise_level": 0.3}, {"tied_weights": True}])
def test_one_layer_stack_encodes_like_the_autoencoder(options):
    stack = StackedAutoencoder(20, [7], options)
    single = pyae.Autoencoder(20, 7, **(options or {}))
    single.load_state_dict(stack.layers[0].state_dict())
    x = torch.rand(9, 20)
    assert torch.equal(stack.encode(x), single.encode(x))
    assert torch.equal(stack(x), single.encode(x))
    assert torch.equal(stack.filters(), single.filters())
    assert torch.equal(stack.unit_filters(0), single.filters())
    assert isinstance(stack.layers, torch.nn.ModuleList) and isinstance(stack.layers[0], pyae.Autoencoder)


def test_stack_layers_depth_and_options():
    stack = make_stack((12, 8, 5), [OPTIONS[0], OPTIONS[1], {}])
    assert stack.layer_sizes == (12, 8, 5) and stack.n_layers == 3 and stack.n_outputs == 5
    assert [(layer.n_inputs, layer.n_hidden) for layer in stack.layers] == [(784, 12), (12, 8), (8, 5)]
    assert stack.layers[0].noise == "mask" and stack.layers[1].noise == "gaussian" and stack.layers[1].tied_weights
    assert stack.layer_options()[0]["noise_level"] == 0.2
    x = torch.rand(4, 784)
    assert stack.encode(x, depth=0) is x
    h1 = stack.layers[0].encode(x)
    assert torch.equal(stack.encode(x, depth=1), h1)
    assert torch.equal(stack.encode(x), stack.layers[2].encode(stack.layers[1].encode(h1)))
    outputs = stack.encoder_outputs(x)
    assert [o.hidden.shape[1] for o in outputs] == [12, 8, 5]
    assert torch.equal(outputs[-1].hidden, stack.encode(x))
    # One dict applies to every layer.
    shared = StackedAutoencoder(784, [6, 4], {"noise": "mask", "noise_level": 0.4})
    assert [layer.noise_level for layer in shared.layers] == [0.4, 0.4]
    double = StackedAutoencoder(784, [6, 4], dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in double.parameters())


def test_unit_filters_are_the_normalized_weight_product():
    stack = make_stack((12, 8, 5), None).double()
    w0, w1, w2 = (layer.encoder.weight.detach() for layer in stack.layers)
    for layer, product in ((1, w1 @ w0), (2, w2 @ w1 @ w0)):
        filters = stack.unit_filters(layer)
        assert filters.shape == (stack.layer_sizes[layer], 784)
        torch.testing.assert_close(filters, product / product.norm(dim=1, keepdim=True))
    # Usable as a filter grid.
    grid = filter_grid(stack.unit_filters(2), rows=1, cols=5)
    assert grid.shape[1] > grid.shape[0]


@pytest.mark.parametrize("call, error, fragment", [
    (lambda: StackedAutoencoder(0, [4]), ValueError, "n_inputs"),
    (lambda: StackedAutoencoder(10, []), ValueError, "layer_sizes"),
    (lambda: StackedAutoencoder(10, 4), TypeError, "layer_sizes"),
    (lambda: StackedAutoencoder(10, [4, 0]), ValueError, "layer_sizes[1]"),
    (lambda: StackedAutoencoder(10, [4, 2.5]), TypeError, "layer_sizes[1]"),
    (lambda: StackedAutoencoder(10, [4, 3], [{}]), ValueError, "layer_options"),
    (lambda: StackedAutoencoder(10, [4], {"noize": "mask"}), ValueError, "noize"),
    (lambda: StackedAutoencoder(10, [4], "mask"), TypeError, "layer_options"),
    (lambda: StackedAutoencoder(10, [4, 3], [{}, 1]), TypeError, "layer_options[1]"),
    (lambda: StackedAutoencoder(10, [4, 3], [{}, {"noise": "mask", "noise_level": 2.0}]), ValueError, "noise_level"),
    (lambda: StackedAutoencoder(10, [4], dtype=torch.int32), TypeError, "dtype"),
    (lambda: StackedAutoencoder(10, [4]).encode(torch.rand(2, 9)), ValueError, "x"),
    (lambda: StackedAutoencoder(10, [4]).encode(torch.rand(2, 10), depth=2), ValueError, "depth"),
    (lambda: StackedAutoencoder(10, [4]).encode(torch.rand(2, 10), depth=-1), ValueError, "depth"),
    (lambda: StackedAutoencoder(10, [4]).unit_filters(1), ValueError, "layer"),
    (lambda: StackedAutoencoder(10, [4]).unit_filters("0"), TypeError, "layer"),
    (lambda: StackedClassifier(pyae.Autoencoder(10, 4)), TypeError, "stack"),
    (lambda: StackedClassifier(StackedAutoencoder(10, [4]), n_classes=1), ValueError, "n_classes"),
    (lambda: layer_configs(StackedAutoencoder(10, [4]), noise="mask"), ValueError, "noise"),
])
def test_bad_stack_arguments_are_named(call, error, fragment):
    with pytest.raises(error, match=None) as info:
        call()
    assert fragment in str(info.value), str(info.value)


# ------------------------------------------------------------------------- pretraining


def test_pretraining_trains_each_layer_on_the_codes_below(digits):
    images, _ = digits
    stack = make_stack()
    configs = configs_for(stack)
    seen = []
    histories = pretrain(stack, images, configs, progress=False,
                         callback=lambda layer, epoch, step, output: seen.append((layer, output.hidden.shape[1])))
    assert len(histories) == 2 and all(h["epoch"] == [1, 2] for h in histories)
    assert {s for s in seen} == {(0, 12), (1, 8)} and seen[0][0] == 0 and seen[-1][0] == 1

    # The same as training layer 0 with train() and layer 1 with train() on layer 0's clean codes.
    first, history0 = train(configs[0], images, progress=False)
    codes = first.encode(images)
    second, history1 = train(configs[1], codes, progress=False)
    same_parameters(stack.layers[0], first)
    same_parameters(stack.layers[1], second)
    assert histories[0]["loss"] == history0["loss"] and histories[1]["loss"] == history1["loss"]
    assert not stack.training


def test_pretraining_with_validation_and_early_stopping(digits, tmp_path):
    images, _ = digits
    stack = make_stack()
    configs = configs_for(stack, epochs=3, early_stopping=1)
    histories = pretrain(stack, images[:200], configs, validation=images[200:], checkpoint_dir=tmp_path,
                         progress=False)
    assert all("val_loss" in h for h in histories)
    assert (tmp_path / "layer0.pt").exists() and (tmp_path / "layer1.best.pt").exists()
    assert load_checkpoint(tmp_path / "layer1.pt").extra["stacked"]["layer"] == 1


@pytest.mark.parametrize("interrupt_at", [(0, 2), (1, 1), (1, 2)])
def test_pretraining_resume_is_bitwise_equal(digits, tmp_path, interrupt_at, device):
    images, _ = digits
    straight = make_stack(device=device)
    straight_histories = pretrain(straight, images, configs_for(straight, epochs=3, device=device), progress=False)
    assert {p.device.type for p in straight.parameters()} == {torch.device(device).type}

    stack = make_stack(seed=1, device=device)  # its initial weights do not matter: train() initializes from the seed

    def interrupt(layer, epoch, step, output):
        if (layer, epoch) == interrupt_at and step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(stack, images, configs_for(stack, epochs=3, device=device), checkpoint_dir=tmp_path, progress=False,
                 callback=interrupt)
    assert no_temp_files(tmp_path)
    layer, epoch = interrupt_at
    if epoch > 1:
        assert load_checkpoint(tmp_path / f"layer{layer}.pt").epoch == epoch - 1
    else:
        assert not (tmp_path / f"layer{layer}.pt").exists()
    torch.rand(100)  # something else draws from the global RNG in between

    seen = []
    resumed = make_stack(seed=2, device=device)
    histories = pretrain(resumed, images, configs_for(resumed, epochs=3, device=device), checkpoint_dir=tmp_path,
                         resume=True,
                         progress=False, callback=lambda layer, epoch, step, output: seen.append((layer, epoch)))
    same_parameters(resumed, straight)
    assert [h["loss"] for h in histories] == [h["loss"] for h in straight_histories]
    # Completed layers are loaded, not trained again; a partly trained one redoes only the lost epoch.
    assert min(seen) == (layer, epoch)


def test_pretraining_refuses_a_stale_layer_checkpoint(digits, tmp_path):
    images, _ = digits
    stack = make_stack()
    pretrain(stack, images, configs_for(stack, epochs=1), checkpoint_dir=tmp_path, progress=False)
    # Layer 0 trains further: layer 1's checkpoint was trained on other codes. Refused in that
    # call, and again in the next one, where layer 0 is loaded complete.
    for _ in range(2):
        with pytest.raises(ValueError, match="layer1.pt"):
            pretrain(stack, images, configs_for(stack, epochs=2), checkpoint_dir=tmp_path, resume=True,
                     progress=False)
    # Other images of the same shape: layer 0's checkpoint is refused.
    with pytest.raises(ValueError, match="layer0.pt.*other inputs"):
        pretrain(stack, images.flip(0), configs_for(stack, epochs=2), checkpoint_dir=tmp_path, resume=True,
                 progress=False)
    # A different configuration is refused, naming the field.
    with pytest.raises(ValueError, match="lr"):
        pretrain(stack, images, configs_for(stack, epochs=1, lr=0.5), checkpoint_dir=tmp_path, resume=True,
                 progress=False)


def test_layer_configs_follow_the_stacks_dtype(digits):
    # A float64 stack pretrains in float64 (not float32 and cast back); a config of another
    # dtype is refused, naming the field.
    images, _ = digits
    stack = StackedAutoencoder(images.shape[1], [6], {"loss": "cross_entropy"}, dtype=torch.float64)
    configs = layer_configs(stack, epochs=1, batch_size=50, device="cpu", seed=0)
    assert configs[0].dtype == "float64"
    pretrain(stack, images.double(), configs, progress=False)
    weight = stack.layers[0].encoder.weight
    assert weight.dtype == torch.float64 and not torch.equal(weight, weight.float().double())
    with pytest.raises(ValueError, match=r"configs\[0\].dtype"):
        pretrain(stack, images.double(), layer_configs(stack, epochs=1, dtype="float32"), progress=False)


def test_pretraining_arguments_are_checked(digits):
    images, _ = digits
    stack = make_stack()
    good = configs_for(stack)
    with pytest.raises(ValueError, match=r"configs\[1\].n_hidden=9 does not match layer_sizes\[1\]=8"):
        pretrain(stack, images, [good[0], good[1].replace(n_hidden=9)], progress=False)
    with pytest.raises(ValueError, match=r"configs\[0\].noise_level"):
        pretrain(stack, images, [good[0].replace(noise_level=0.5), good[1]], progress=False)
    with pytest.raises(ValueError, match="one TrainConfig per layer"):
        pretrain(stack, images, good[:1], progress=False)
    with pytest.raises(TypeError, match="configs"):
        pretrain(stack, images, good[0], progress=False)
    with pytest.raises(TypeError, match=r"configs\[1\]"):
        pretrain(stack, images, [good[0], {}], progress=False)
    with pytest.raises(ValueError, match="images"):
        pretrain(stack, images[:, :100], good, progress=False)
    with pytest.raises(ValueError, match="validation"):
        pretrain(stack, images, good, validation=images[:, :5], progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        pretrain(stack, images, good, resume=True, progress=False)
    with pytest.raises(TypeError, match="stack"):
        pretrain(stack.layers[0], images, good, progress=False)


# ------------------------------------------------------------------------- fine-tuning


def reference_loss(x, y, weights, output_weight, output_bias, contractive_weights):
    """The classifier's loss written out by hand: sigmoid layers, softmax cross-entropy and the
    closed-form contractive penalty of each layer."""
    hidden, loss = x, 0.0
    for (weight, bias), lam in zip(weights, contractive_weights):
        hidden_in = hidden
        hidden = torch.sigmoid(hidden_in @ weight.T + bias)
        slope = hidden * (1 - hidden)
        contractive = (slope.square() * weight.square().sum(1)).sum(1).mean()
        loss = loss + lam * contractive
    logits = hidden @ output_weight.T + output_bias
    return F.cross_entropy(logits, y) + loss


@pytest.mark.parametrize("contractive_weights", [(0.0, 0.0), (0.3, 0.1)])
def test_finetuning_gradients_reach_every_layer_and_match_a_float64_reference(contractive_weights):
    torch.manual_seed(0)
    stack = StackedAutoencoder(9, [6, 5], dtype=torch.float64)
    classifier = StackedClassifier(stack, n_classes=4)
    torch.nn.init.normal_(classifier.output.weight)
    x = torch.rand(7, 9, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    run_loss = pyae.stacked._Finetune(classifier, pyae.stacked._FinetuneSettings(
        epochs=1, batch_size=7, lr=0.1, optimizer="sgd", momentum=0.0, val_fraction=0.0, patience=None,
        monitor="accuracy", contractive_weight=list(contractive_weights), sparsity_weight=[0.0, 0.0],
        sparsity_target=[None, None], seed=0), x, y, None, None, "")._loss
    loss, _, _ = run_loss(x, y)
    parameters = [p for layer in stack.layers for p in (layer.encoder.weight, layer.encoder.bias)]
    parameters += [classifier.output.weight, classifier.output.bias]
    grads = torch.autograd.grad(loss, parameters)
    for grad in grads:
        assert grad.abs().max() > 0
    leaves = [p.detach().clone().requires_grad_(True) for p in parameters]
    expected_loss = reference_loss(x, y, [(leaves[0], leaves[1]), (leaves[2], leaves[3])], leaves[4], leaves[5],
                                   contractive_weights)
    expected = torch.autograd.grad(expected_loss, leaves)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=1e-12)
    for grad, reference in zip(grads, expected):
        torch.testing.assert_close(grad, reference, rtol=1e-10, atol=1e-12)


def test_finetuning_trains_every_layer_and_keeps_the_best_epoch(digits):
    images, labels = digits
    stack = make_stack()
    classifier = StackedClassifier(stack)
    before = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    history = finetune(classifier, images, labels, epochs=6, batch_size=20, lr=0.1, val_fraction=0.25, patience=2,
                       progress=False)
    for name, p in classifier.named_parameters():
        if name.startswith("stack.") and "decoder" in name:
            assert torch.equal(p, before[name]), name  # the decoders take no part
        else:
            assert not torch.equal(p, before[name]), name
    assert history["epoch"] == list(range(1, len(history["epoch"]) + 1))
    for key in ("loss", "cross_entropy", "train_accuracy", "val_loss", "val_accuracy", "seconds"):
        assert len(history[key]) == len(history["epoch"]), key
    best = history["best_epoch"]
    assert history["val_accuracy"][best - 1] == max(history["val_accuracy"])
    # The classifier ends with the best epoch's weights: its validation accuracy is that epoch's.
    _, _, val_x, val_y = pyae.stacked._split(images, labels, 0.25, 0)
    assert classifier.accuracy(val_x, val_y) == history["val_accuracy"][best - 1]
    if history["stopped_early"]:
        assert len(history["epoch"]) - best == 2
    assert classifier.predict(val_x).dtype == torch.int64 and not classifier.training


FINETUNE_RUNS = [
    dict(epochs=4, batch_size=32, lr=0.1, val_fraction=0.25, patience=3),
    dict(epochs=4, batch_size=50, lr=3e-3, optimizer="adam", contractive_weight=[0.1, 0.0], sparsity_weight=0.05,
         sparsity_target=0.1, monitor="loss"),
]


@pytest.mark.parametrize("options", FINETUNE_RUNS, ids=["sgd-validation", "adam-penalties"])
def test_finetuning_resume_is_bitwise_equal(digits, tmp_path, options, device):
    images, labels = digits
    pretrained = make_stack(device=device)
    pretrain(pretrained, images, configs_for(pretrained, epochs=1, device=device), progress=False)

    def classifier():
        stack = make_stack(seed=3, device=device)
        stack.load_state_dict(pretrained.state_dict())
        return StackedClassifier(stack)

    straight = classifier()
    straight_history = finetune(straight, images, labels, progress=False, **options)

    path = tmp_path / "finetune.pt"

    def interrupt(epoch, step, loss):
        if epoch == 3 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(classifier(), images, labels, checkpoint_path=path, progress=False, callback=interrupt, **options)
    assert load_finetune_checkpoint(path)["epoch"] == 2 and no_temp_files(tmp_path)
    torch.rand(100)
    resumed = classifier()
    history = finetune(resumed, images, labels, checkpoint_path=path, resume=True, progress=False, **options)
    same_parameters(resumed, straight)
    assert {k: v for k, v in history.items() if k != "seconds"} == \
        {k: v for k, v in straight_history.items() if k != "seconds"}
    assert load_finetune_checkpoint(path)["epoch"] == 4

    # Resuming a complete run trains nothing more and gives the same classifier.
    again = classifier()
    steps = []
    finetune(again, images, labels, checkpoint_path=path, resume=True, progress=False,
             callback=lambda *a: steps.append(a), **options)
    assert steps == []
    same_parameters(again, straight)


def test_finetuning_resume_refuses_another_run(digits, tmp_path):
    images, labels = digits
    path = tmp_path / "finetune.pt"
    finetune(StackedClassifier(make_stack()), images, labels, epochs=1, checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        finetune(StackedClassifier(make_stack()), images, labels, epochs=2, lr=0.5, checkpoint_path=path,
                 resume=True, progress=False)
    with pytest.raises(ValueError, match="data"):
        finetune(StackedClassifier(make_stack()), images[1:], labels[1:], epochs=2, checkpoint_path=path, resume=True,
                 progress=False)
    with pytest.raises(ValueError, match="classifier"):
        finetune(StackedClassifier(make_stack((12, 7))), images, labels, epochs=2, checkpoint_path=path, resume=True,
                 progress=False)
    with pytest.raises(FileNotFoundError):
        finetune(StackedClassifier(make_stack()), images, labels, checkpoint_path=tmp_path / "none.pt", resume=True,
                 progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_finetune_checkpoint(tmp_path / "junk.pt")


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(epochs=0), ValueError, "epochs"),
    (dict(batch_size=1.5), TypeError, "batch_size"),
    (dict(lr=0.0), ValueError, "lr"),
    (dict(optimizer="rmsprop"), ValueError, "optimizer"),
    (dict(momentum=1.0), ValueError, "momentum"),
    (dict(val_fraction=1.0), ValueError, "val_fraction"),
    (dict(patience=3), ValueError, "patience"),
    (dict(patience=0, val_fraction=0.2), ValueError, "patience"),
    (dict(monitor="f1"), ValueError, "monitor"),
    (dict(contractive_weight=-1.0), ValueError, "contractive_weight"),
    (dict(contractive_weight=[0.1]), ValueError, "contractive_weight"),
    (dict(contractive_weight="0.1"), TypeError, "contractive_weight"),
    (dict(sparsity_weight=0.1), ValueError, "sparsity_weight"),
    (dict(sparsity_weight=0.1, sparsity_target=1.5), ValueError, "sparsity_target"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(resume=True), ValueError, "checkpoint_path"),
    (dict(callback=3), TypeError, "callback"),
    (dict(validation=(torch.rand(5, 784), torch.zeros(5, dtype=torch.int64)), val_fraction=0.2), ValueError,
     "validation"),
    (dict(validation=(torch.rand(5, 784), torch.zeros(4, dtype=torch.int64))), ValueError, "validation labels"),
])
def test_bad_finetuning_arguments_are_named(digits, kwargs, error, fragment):
    images, labels = digits
    with pytest.raises(error) as info:
        finetune(StackedClassifier(make_stack()), images, labels, progress=False, **kwargs)
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("labels, error, fragment", [
    (torch.zeros(240), TypeError, "labels"),
    (torch.zeros(239, dtype=torch.int64), ValueError, "labels"),
    (torch.full((240,), 10), ValueError, "0..9"),
    ([0] * 240, TypeError, "labels"),
])
def test_bad_labels_are_named(digits, labels, error, fragment):
    images, _ = digits
    with pytest.raises(error) as info:
        finetune(StackedClassifier(make_stack()), images, labels, progress=False)
    assert fragment in str(info.value)


# ------------------------------------------------------------------------- the command


def run(capsys, *argv):
    code = cli.main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


TINY_STACK = ["--sizes", "16,8", "--noise-levels", "0.2,0.3", "--limit", "200", "--epochs", "2", "--batch-size",
              "40", "--device", "cpu", "--quiet"]


def test_stack_commands_end_to_end(tmp_path, capsys):
    out = tmp_path / "stack"
    code, stdout, err = run(capsys, "stack", "pretrain", "--out", out, *TINY_STACK)
    assert code == 0, err
    record = json.loads((out / "stack.json").read_text())
    assert record["complete"] and record["layer_sizes"] == [16, 8] and record["n_train"] == 160
    assert [o["noise_level"] for o in record["layer_options"]] == [0.2, 0.3]
    assert load_checkpoint(out / "layer1.pt").config.n_hidden == 8
    assert (out / "filters_layer0.png").exists() and (out / "filters_layer1.png").exists()

    code, _, err = run(capsys, "stack", "pretrain", "--out", out, *TINY_STACK)
    assert code == 2 and "--resume" in err
    code, _, err = run(capsys, "stack", "pretrain", "--out", out, "--resume", "--sizes", "4")
    assert code == 2 and "--sizes" in err and err.count("\n") == 1

    tuned = tmp_path / "tuned"
    code, stdout, err = run(capsys, "stack", "finetune", "--out", tuned, "--pretrained", out, "--epochs", "3",
                            "--patience", "5", "--device", "cpu", "--quiet", "--test")
    assert code == 0, err
    result = json.loads((tuned / "finetune.json").read_text())
    assert result["complete"] and result["history"]["epoch"] == [1, 2, 3]
    assert 0.0 <= result["val_accuracy"] <= 1.0 and 0.0 <= result["test_accuracy"] <= 1.0
    assert "validation accuracy" in stdout and "test accuracy" in stdout
    assert load_finetune_checkpoint(tuned / "finetune.pt")["epoch"] == 3

    # Resuming may run more epochs; the stored settings stay.
    code, _, err = run(capsys, "stack", "finetune", "--out", tuned, "--resume", "--epochs", "4", "--quiet")
    assert code == 0, err
    assert json.loads((tuned / "finetune.json").read_text())["history"]["epoch"] == [1, 2, 3, 4]
    code, _, err = run(capsys, "stack", "finetune", "--out", tuned, "--resume", "--lr", "0.5")
    assert code == 2 and "--lr" in err and "Traceback" not in err

    # The KL penalty kept in fine-tuning needs its target, from the command line.
    sparse = tmp_path / "sparse"
    code, _, err = run(capsys, "stack", "finetune", "--out", sparse, "--pretrained", out, "--epochs", "1",
                       "--sparsity-weight", "0.1", "--quiet")
    assert code == 2 and "--sparsity-weight" in err and err.count("\n") == 1
    code, _, err = run(capsys, "stack", "finetune", "--out", sparse, "--pretrained", out, "--epochs", "1",
                       "--sparsity-weight", "0.1", "--sparsity-target", "0.1", "--quiet")
    assert code == 0, err
    result = json.loads((sparse / "finetune.json").read_text())
    assert result["settings"]["sparsity_target"] == 0.1 and "sparsity" in result["history"]


def test_stack_commands_ctrl_c_and_resume(tmp_path, capsys, monkeypatch):
    from pyae import stacked

    out = tmp_path / "stack dir"
    real_train = stacked.pretrain

    def interrupted_pretrain(*args, **kwargs):
        def interrupt(layer, epoch, step, output):
            if layer == 1 and epoch == 2:
                raise KeyboardInterrupt

        return real_train(*args, callback=interrupt, **kwargs)

    monkeypatch.setattr(stacked, "pretrain", interrupted_pretrain)
    code, _, err = run(capsys, "stack", "pretrain", "--out", out, *TINY_STACK)
    assert code == 130 and "pyae stack pretrain --out" in err and "--resume" in err and "'" in err
    monkeypatch.setattr(stacked, "pretrain", real_train)
    code, _, err = run(capsys, "stack", "finetune", "--out", out)
    assert code == 2 and "not complete" in err
    code, _, err = run(capsys, "stack", "pretrain", "--out", out, "--resume")
    assert code == 0, err
    assert load_checkpoint(out / "layer1.pt").epoch == 2

    real_finetune = stacked.finetune
    monkeypatch.setattr(stacked, "finetune", lambda *a, **k: real_finetune(
        *a, callback=lambda epoch, step, loss: (_ for _ in ()).throw(KeyboardInterrupt) if epoch == 2 else None,
        **k))
    code, _, err = run(capsys, "stack", "finetune", "--out", out, "--epochs", "3", "--quiet")
    assert code == 130 and "pyae stack finetune --out" in err and "--resume" in err
    monkeypatch.setattr(stacked, "finetune", real_finetune)
    code, _, err = run(capsys, "stack", "finetune", "--out", out, "--resume", "--quiet")
    assert code == 0, err
    assert load_finetune_checkpoint(out / "finetune.pt")["epoch"] == 3


@pytest.mark.parametrize("argv, fragments", [
    (["stack"], ["STAGE"]),
    (["stack", "pretrain"], ["--out"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--sizes", "4,x"], ["--sizes"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--sizes", "4,3", "--noise-levels", "0.1,0.2,0.3"], ["--noise-levels"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--noise-levels", "1.5"], ["--noise-levels"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--lr", "0"], ["--lr"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--val-fraction", "1"], ["--val-fraction"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--data", "{tmp}/nowhere"], ["--data"]),
    (["stack", "pretrain", "--out", "{tmp}/s", "--resume"], ["stack.json"]),
    (["stack", "finetune", "--out", "{tmp}/s"], ["stack.json"]),
    (["stack", "finetune", "--out", "{tmp}/s", "--resume"], ["--resume", "finetune.pt"]),
    (["stack", "finetune", "--out", "{tmp}/s", "--data", "{tmp}"], ["--data", "pretrain"]),
])
def test_stack_command_errors_are_one_line(tmp_path, capsys, argv, fragments):
    code, _, err = run(capsys, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyae: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
