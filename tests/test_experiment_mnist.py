"""pyae.experiments.mnist: the quick run writes a complete, consistent set of results."""

import copy
import json
import re

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from helpers import run_quick  # noqa: E402
from pyae.config import TrainConfig  # noqa: E402
from pyae.data import load_mnist  # noqa: E402
import pyae  # noqa: E402
import reference  # noqa: E402
from pyae.experiments.mnist import (  # noqa: E402
    MODELS, QUICK_SETTINGS, _encode_statistics, _fit_and_score, _prepare, _report, build_pipeline, format_table,
    run_experiment,
)
from pyae.sklearn import AutoencoderTransformer  # noqa: E402
from pyae.training import train  # noqa: E402

AUTOENCODERS = list(MODELS)
NAMES = ["raw", *AUTOENCODERS]
DENOISING = [name for name, options in MODELS.items() if options.get("noise")]
FILTER_KEYS = ("filter_smoothness", "filter_extent")
VERDICT = r"(holds|does not hold)"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    return run_quick(run_experiment, out)


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
            assert all(entry[key] is None for key in (*FILTER_KEYS, "noise_mean_square"))
            assert entry["test_accuracy"] > 0.8  # pixels already separate digits well
            continue
        assert "filter_roughness" not in entry  # replaced by filter_smoothness
        for key, low, high in (("filter_smoothness", -1.0, 1.0), ("filter_extent", 1.0, 784.0)):
            summary = entry[key]
            q25, q75 = summary["iqr"]
            assert low <= q25 <= summary["median"] <= q75 <= high, (name, key, summary)
        if not MODELS[name].get("noise"):
            assert entry["noise_mean_square"] == 0.0
        assert entry["mean_squared_jacobian_norm"] > 0.0
        assert 0.0 < entry["mean_activation"] < 1.0
        # The quick run's sizes replace every model's; the regularizer is the model's own.
        assert entry["config"]["n_hidden"] == settings["n_hidden"] and entry["config"]["epochs"] == settings["epochs"]
        for option, value in MODELS[name].items():
            if option not in ("n_hidden", "epochs"):
                assert entry["config"][option] == value
    # The noise on one scale: q * mean(x^2) for masking (mean x^2 of digits in [0, 1] is below
    # 1), std^2 for Gaussian noise.
    noise = {name: stored["models"][name]["noise_mean_square"] for name in DENOISING}
    assert 0.0 < noise["denoising_mask_0.25"] < 0.25
    assert noise["denoising_mask_0.5"] == pytest.approx(2 * noise["denoising_mask_0.25"], rel=1e-12)
    assert noise["denoising_gaussian"] == pytest.approx(MODELS["denoising_gaussian"]["noise_level"] ** 2)
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
    assert (out / "selection.png").stat().st_size > 0  # the packaged selection record, drawn
    assert (out / "training_loss.png").stat().st_size > 0

    report = (out / "report.md").read_text()
    assert "smoke run" in report
    # The selection the settings come from, and every model against vanilla, from this run.
    assert "## How the settings were chosen" in report and "mnist_selection.json" in report
    vanilla = results["models"]["vanilla"]["test_accuracy"]
    for name in AUTOENCODERS[1:]:
        assert f"`{name}` {100 * (results['models'][name]['test_accuracy'] - vanilla):+.2f}" in report
    for name in NAMES:
        assert f"| {name} " in report
    for png in out.glob("*.png"):
        assert f"({png.name})" in report, png.name
    assert format_table(results) in report


def claims(report):
    """The numbered statements of the report's claims section, by number."""
    section = report.split("### The lecture's claims, measured in this run", 1)[1].split("![", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^(\d+)\. (.*)$", section, flags=re.M)}


def median(entry, key):
    return entry[key]["median"]


def test_report_states_each_claim_with_this_runs_numbers(quick_run):
    out, results = quick_run
    report = (out / "report.md").read_text()
    assert "roughness" not in report and "What the pictures of this default run show" not in report
    models = results["models"]
    statements = claims(report)
    assert sorted(statements) == [1, 2, 3, 4], statements
    assert "smoother" in statements[1] and "more local" in statements[2]
    # 1 and 2: every denoising model's median next to its verdict against the vanilla model's.
    for number, key, fmt, holds in ((1, "filter_smoothness", ".3f", lambda m, v: m > v),
                                    (2, "filter_extent", ".1f", lambda m, v: m < v)):
        vanilla = median(models["vanilla"], key)
        assert f"vanilla's {vanilla:{fmt}}" in statements[number]
        for name in DENOISING:
            found = re.search(rf"`{re.escape(name)}` (-?[\d.]+), {VERDICT}", statements[number])
            assert found, (name, statements[number])
            assert found.group(1) == format(median(models[name], key), fmt)
            assert found.group(2) == ("holds" if holds(median(models[name], key), vanilla) else "does not hold")
    # 3: the masking models' extents, q = 0.25 -> 0.5.
    low, high = (median(models[n], "filter_extent") for n in ("denoising_mask_0.25", "denoising_mask_0.5"))
    found = re.search(rf"q = 0.25 -> 0.5: ([\d.]+) -> ([\d.]+) pixels, {VERDICT}\.", statements[3])
    assert found, statements[3]
    assert found.groups() == (f"{low:.1f}", f"{high:.1f}", "holds" if high > low else "does not hold")
    # 4: all denoising models ordered by their noise's mean square, their extents in that order.
    ordered = sorted(DENOISING, key=lambda n: models[n]["noise_mean_square"])
    extents = [median(models[n], "filter_extent") for n in ordered]
    assert ", ".join(f"`{n}` ({models[n]['noise_mean_square']:.3g})" for n in ordered) in statements[4]
    found = re.search(rf"in that order: ([\d., ]+) pixels, {VERDICT}\.", statements[4])
    assert found, statements[4]
    assert found.group(1) == ", ".join(f"{e:.1f}" for e in extents)
    increasing = all(b > a for a, b in zip(extents, extents[1:]))
    assert found.group(2) == ("holds" if increasing else "does not hold")


def test_report_verdicts_follow_the_numbers(quick_run):
    # The same run with the medians set so that every claim holds, then so that none does: the
    # report's verdicts follow the numbers, not a fixed text.
    _, results = quick_run
    for holds in (True, False):
        record = copy.deepcopy(results)
        models = record["models"]
        models["vanilla"]["filter_smoothness"]["median"] = 0.5
        models["vanilla"]["filter_extent"]["median"] = 300.0
        for rank, name in enumerate(["denoising_mask_0.25", "denoising_mask_0.5", "denoising_gaussian"]):
            models[name]["filter_smoothness"]["median"] = 0.9 if holds else 0.1
            models[name]["filter_extent"]["median"] = (100.0 + 10 * rank) if holds else (400.0 - 10 * rank)
        statements = claims(_report(record))
        verdicts = [v for text in statements.values() for v in re.findall(VERDICT, text)]
        assert len(verdicts) == 3 + 3 + 1 + 1
        assert set(verdicts) == {"holds" if holds else "does not hold"}


def test_statistics_mean_what_they_say(quick_run):
    _, results = quick_run
    models = results["models"]
    # In the quick run every model has the same size and epochs and vanilla, sparse and
    # contractive all tie their weights: the sparse model's target (0.05) pulls its mean
    # activation below the vanilla one's, and the contractive penalty makes the encoder less
    # sensitive than the vanilla one.
    assert all(MODELS[name].get("tied_weights") for name in ("vanilla", "sparse", "contractive"))
    assert models["sparse"]["mean_activation"] < models["vanilla"]["mean_activation"]
    jacobians = {name: models[name]["mean_squared_jacobian_norm"] for name in ("vanilla", "contractive")}
    assert jacobians["contractive"] < jacobians["vanilla"], jacobians


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
    assert "filter smoothness" in table and "filter extent" in table and table.split()[-1] == "-"
    results["models"]["vanilla"] = {"test_accuracy": 0.5, "train_accuracy": 1.0,
                                    "filter_smoothness": {"median": 0.25, "iqr": [0.125, 0.5]},
                                    "filter_extent": {"median": 100.0, "iqr": [50.0, 150.0]}}
    table = format_table(results)
    assert "| 0.250 [0.125, 0.500] | 100.0 [50.0, 150.0] |" in table


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

    shared = {k: settings[k] for k in ("loss", "tied_weights", "batch_size", "optimizer", "lr", "momentum")}
    options = {**shared, **MODELS[name], "n_hidden": settings["n_hidden"], "epochs": settings["epochs"]}
    config = TrainConfig(**options, decoder_activation=settings["decoder"], seed=3, device="cpu")
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


def test_linear_autoencoder_subspace_is_reported(quick_run):
    out, results = quick_run
    subspace = results["subspace"]
    assert set(subspace["models"]) == {"linear", "nonlinear"}
    for entry in subspace["models"].values():
        angles = entry["angles_degrees"]
        assert len(angles) == subspace["k"] and all(0.0 <= a <= 90.0 for a in angles)
        assert entry["max_degrees"] == max(angles)
    report = (out / "report.md").read_text()
    assert "principal" in report.lower()
    for entry in subspace["models"].values():
        assert f"{entry['max_degrees']:.1f}" in report
