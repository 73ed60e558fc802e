"""pyae.experiment: the quick run writes a complete, consistent set of results."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from pyae.config import TrainConfig  # noqa: E402
from pyae.data import load_mnist  # noqa: E402
import pyae  # noqa: E402
import reference  # noqa: E402
from pyae.experiment import (  # noqa: E402
    MODELS, QUICK_SETTINGS, _encode_statistics, _fit_and_score, _prepare, build_pipeline, format_table, run_experiment,
)
from pyae.sklearn import AutoencoderTransformer  # noqa: E402
from pyae.training import train  # noqa: E402

AUTOENCODERS = list(MODELS)
NAMES = ["raw", *AUTOENCODERS]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    threads = torch.get_num_threads()
    results = run_experiment(out, quick=True, device="cpu", progress=False, num_threads=1)
    assert torch.get_num_threads() == threads  # restored
    return out, results


def test_results_json(quick_run):
    out, results = quick_run
    stored = json.loads((out / "results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    assert list(stored["models"]) == NAMES
    assert all(name.startswith(("raw", "vanilla", "denoising", "sparse", "contractive")) for name in NAMES)
    settings = stored["settings"]
    assert settings["quick"] is True and settings["seed"] == 0 and settings["device"] == "cpu"
    assert settings["complete"] is True and settings["cpu_threads"] == 1
    assert settings["n_train"] == 1000 and settings["n_test"] == 2000
    for name, entry in stored["models"].items():
        for key in ("test_accuracy", "train_accuracy"):
            assert 0.0 <= entry[key] <= 1.0, (name, key)
        assert entry["train_seconds"] >= 0.0
        if name == "raw":
            assert entry["mean_squared_jacobian_norm"] is None and entry["mean_activation"] is None
            assert entry["test_accuracy"] > 0.8  # pixels already separate digits well
            continue
        assert entry["mean_squared_jacobian_norm"] > 0.0
        assert 0.0 < entry["mean_activation"] < 1.0
        assert entry["config"]["n_hidden"] == settings["n_hidden"]
        for option, value in MODELS[name].items():
            assert entry["config"][option] == value
    # 10 classes: every model is well above chance even in a smoke run.
    assert min(e["test_accuracy"] for e in stored["models"].values()) > 0.2
    assert not list(out.glob(".*.tmp"))


def test_pictures_and_report(quick_run):
    out, results = quick_run
    for name in AUTOENCODERS:
        assert (out / f"filters_{name}.png").stat().st_size > 0
    for name, options in MODELS.items():
        picture = out / f"reconstructions_{name}.png"
        assert picture.exists() == (options.get("noise") is not None)
    assert (out / "kl_penalty.png").stat().st_size > 0
    assert (out / "training_loss.png").stat().st_size > 0

    report = (out / "report.md").read_text()
    assert "smoke run" in report
    for name in NAMES:
        assert f"| {name} " in report
    for png in out.glob("*.png"):
        assert f"({png.name})" in report, png.name
    assert format_table(results) in report


def test_statistics_mean_what_they_say(quick_run):
    _, results = quick_run
    models = results["models"]
    # The sparse model's target (0.05) pulls its mean activation below the vanilla one's, and
    # the contractive penalty gives the least sensitive encoder of all.
    assert models["sparse"]["mean_activation"] < models["vanilla"]["mean_activation"]
    jacobians = {name: entry["mean_squared_jacobian_norm"] for name, entry in models.items() if name != "raw"}
    assert min(jacobians, key=jacobians.get) == "contractive", jacobians


def test_encode_statistics_are_the_definitions():
    # In chunks that do not divide the examples: the mean squared Jacobian norm (by jacrev)
    # and the mean activation of the whole set, and the hidden codes.
    torch.manual_seed(0)
    model = pyae.Autoencoder(12, 7, dtype=torch.float64)
    images = torch.rand(23, 12, dtype=torch.float64)
    hidden, jacobian, activation = _encode_statistics(model, images, chunk=10)
    weight, bias = model.encoder.weight.detach(), model.encoder.bias.detach()
    expected_hidden, expected_activation, _ = reference.sigmoid_encoder(images, weight, bias)
    torch.testing.assert_close(hidden, expected_hidden.float())
    torch.testing.assert_close(activation, expected_activation)
    assert jacobian == pytest.approx(reference.contractive_by_jacobian(images, weight, bias).item(), rel=1e-12)


def test_format_table_plain():
    results = {"models": {"raw": {"test_accuracy": 0.5, "train_accuracy": 1.0}}}
    table = format_table(results, markdown=False)
    assert "50.00%" in table and "|" not in table and "Jacobian" in table


def test_quick_subsets_are_the_seeds_draws(tmp_path):
    # A seed's results depend on these rows: the training subset, then the test subset, both
    # drawn from one generator seeded with the run's seed and kept in the data's order.
    setup = _prepare(tmp_path / "out", quick=True, device="cpu", data_root=None, seed=3, progress=False)
    generator = torch.Generator().manual_seed(3)
    for split, x, y in (("train", setup.train_x, setup.train_y), ("test", setup.test_x, setup.test_y)):
        images, labels = load_mnist(None, split)
        keep = torch.randperm(images.shape[0], generator=generator)[:QUICK_SETTINGS[f"{split}_examples"]]
        keep = keep.sort().values
        # numpy arrays, what the pipelines take
        assert isinstance(x, np.ndarray) and x.dtype == np.float32 and isinstance(y, np.ndarray)
        assert np.array_equal(x, images[keep].numpy()) and np.array_equal(y, labels[keep].numpy())
    assert np.array_equal(setup.test_on_device.numpy(), setup.test_x) and (tmp_path / "out").is_dir()


def test_each_row_is_an_autoencoder_transformer_pipeline():
    # The features step of a row is pyae.sklearn.AutoencoderTransformer in a Pipeline with the
    # classifier; fitted as the experiment fits it on a few hundred digits, it classifies well
    # above chance and its model is the one pyae.training.train makes of the same config,
    # bitwise (on the CPU).
    settings = QUICK_SETTINGS  # 100 units, 5 epochs
    name = "denoising_mask_0.25"
    pipeline = build_pipeline(name, settings, seed=3)
    assert isinstance(pipeline, Pipeline) and list(pipeline.named_steps) == ["features", "classifier"]
    features, classifier = pipeline.named_steps["features"], pipeline.named_steps["classifier"]
    assert isinstance(features, AutoencoderTransformer) and isinstance(classifier, LogisticRegression)
    assert (classifier.C, classifier.max_iter, classifier.random_state) == (1.0, 200, 3)

    images, labels = load_mnist()  # sorted by class: draw digits of every class
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:600]
    x, y = images[keep].numpy(), labels[keep].numpy()
    scores = _fit_and_score(pipeline, x[:400], y[:400], x[400:], y[400:])
    assert scores["test_accuracy"] > 0.5  # chance: 0.1
    assert scores["test_accuracy"] == pipeline.score(x[400:], y[400:])

    shared = {k: settings[k] for k in ("n_hidden", "loss", "tied_weights", "epochs", "batch_size", "optimizer",
                                       "lr", "momentum")}
    config = TrainConfig(**shared, decoder_activation=settings["decoder"], **MODELS[name], seed=3, device="cpu")
    assert features.config_ == config
    model, history = train(config, torch.from_numpy(x[:400]), progress=False)
    assert features.history_["loss"] == history["loss"]
    test = torch.from_numpy(x[400:])
    with torch.no_grad():
        assert torch.equal(features.model_.encode(test), model.encode(test))
    assert np.array_equal(features.transform(x[400:]), model.encode(test).detach().numpy())

    # The options: a scaler step when the settings standardize; the raw pixels have no features.
    standardized = {**settings, "classifier": {**settings["classifier"], "standardize": True}}
    steps = build_pipeline("sparse", standardized, seed=0).named_steps
    assert list(steps) == ["features", "scaler", "classifier"] and isinstance(steps["scaler"], StandardScaler)
    assert list(build_pipeline("raw", settings).named_steps) == ["classifier"]
    with pytest.raises(ValueError, match="model must be"):
        build_pipeline("nonsense", settings)
