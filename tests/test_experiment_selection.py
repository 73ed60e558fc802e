"""pyae.experiments.selection: the MNIST comparison's settings come from validation digits only."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from helpers import run_quick  # noqa: E402
from pyae.data import load_mnist  # noqa: E402
from pyae.experiments import mnist, selection  # noqa: E402
from pyae.experiments.selection import _settings, _splits, run_experiment, select  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(run_experiment, tmp_path_factory.mktemp("selection"))


def test_quick_run_scores_every_candidate(quick_run):
    out, results = quick_run
    stored = json.loads((out / "results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    settings = stored["settings"]
    assert settings["complete"] and settings["quick"] and settings["n_validation"] == 200
    assert settings["n_train"] == 600 and settings["epochs"] == [1, 2]
    assert [c["model"] for c in stored["candidates"]] == list(selection.SEARCH_SPACE)
    for candidate in stored["candidates"]:
        assert set(candidate["validation_accuracy"]) == {"1", "2"}
        assert all(0.0 <= a <= 1.0 for a in candidate["validation_accuracy"].values())
    assert set(stored["selected"]) == set(selection.SEARCH_SPACE)
    assert not list((out / "checkpoints").iterdir())  # each candidate's checkpoint goes once it is scored
    report = (out / "report.md").read_text()
    assert "smoke run" in report and "No test digit was read" in report
    assert (out / "validation_accuracy.png").stat().st_size > 0 and "(validation_accuracy.png)" in report
    for model in selection.SEARCH_SPACE:
        assert f"| {model} " in report


def test_select_takes_the_best_validation_accuracy_and_breaks_ties_cheaply():
    record = {
        "candidates_order": ["a", "b"],
        "candidates": [
            {"model": "a", "options": {"x": 1}, "n_hidden": 20, "validation_accuracy": {"10": 0.90, "20": 0.95}},
            {"model": "a", "options": {"x": 2}, "n_hidden": 10, "validation_accuracy": {"10": 0.93, "20": 0.95}},
            {"model": "b", "options": {}, "n_hidden": 10, "validation_accuracy": {"10": 0.80, "20": 0.80}},
        ],
    }
    chosen = select(record)
    # a: 0.95 twice; the smaller model wins. b: a tie across epochs; the shorter run wins.
    assert chosen["a"] == {"n_hidden": 10, "epochs": 20, "options": {"x": 2}, "validation_accuracy": 0.95}
    assert chosen["b"] == {"n_hidden": 10, "epochs": 10, "options": {}, "validation_accuracy": 0.80}
    assert list(chosen) == ["a", "b"]


def test_an_interrupted_search_continues_where_it_stopped(quick_run, tmp_path):
    # A search cut short (the last candidate scored after 1 epoch only, the one before not at
    # all) finishes on rerun with the same numbers as the search that never stopped, and the
    # candidates it had already scored are not trained again.
    out, results = quick_run
    partial = tmp_path / "partial"
    partial.mkdir()
    record = json.loads((out / "results.json").read_text())
    record["candidates"][-1]["validation_accuracy"].pop("2")
    record["candidates"].pop(-2)
    record["settings"]["complete"] = False
    (partial / "results.json").write_text(json.dumps(record))
    resumed = run_experiment(partial, quick=True, device="cpu", progress=False, num_threads=1)
    by_key = lambda r: {(c["model"], json.dumps(c["options"]), c["n_hidden"]): c for c in r["candidates"]}  # noqa: E731
    before, after = by_key(results), by_key(resumed)
    assert before.keys() == after.keys()
    for key, candidate in before.items():
        assert after[key]["validation_accuracy"] == candidate["validation_accuracy"], key
    kept = record["candidates"][:-1]
    for candidate in kept:  # not retrained: the same recorded training time
        key = (candidate["model"], json.dumps(candidate["options"]), candidate["n_hidden"])
        assert after[key]["train_seconds"] == candidate["train_seconds"]
    assert resumed["selected"] == results["selected"]


def test_another_search_in_the_output_directory_is_refused(quick_run, tmp_path):
    out, _ = quick_run
    shutil.copy(out / "results.json", tmp_path / "results.json")
    with pytest.raises(ValueError, match="another search"):
        run_experiment(tmp_path, quick=True, device="cpu", progress=False, num_threads=1, seed=1)
    (tmp_path / "results.json").write_text(json.dumps({"settings": {}, "models": {}}))
    with pytest.raises(ValueError, match="another search"):
        run_experiment(tmp_path, quick=True, device="cpu", progress=False, num_threads=1)


def test_the_validation_digits_are_training_digits_held_out():
    # The default split: 1,000 of the 5,000 training digits, the rest trains; together they are
    # the training split exactly (no test digit anywhere).
    settings = _settings(False, 0, None)
    train_x, train_y, val_x, val_y = _splits(settings, None)
    assert val_x.shape[0] == selection.VALIDATION_EXAMPLES and train_x.shape[0] == 5000 - selection.VALIDATION_EXAMPLES
    images, labels = load_mnist(None, "train")
    rows = lambda x: sorted(map(bytes, np.ascontiguousarray(x)))  # noqa: E731
    assert rows(np.concatenate([train_x, val_x])) == rows(images.numpy())
    assert not set(map(bytes, train_x)) & set(map(bytes, val_x))
    assert sorted(np.concatenate([train_y, val_y]).tolist()) == sorted(labels.tolist())
    assert len(set(val_y.tolist())) == 10  # a random draw, not the first digits (sorted by class)


def test_the_comparisons_settings_are_the_packaged_searchs_selection():
    # MODELS cites the packaged record of `pyae experiment selection`: that record is the search
    # this code defines (the same grid, split and shared settings, complete), and MODELS holds
    # exactly what it selected.
    record = selection.load_selected()
    s = record["settings"]
    assert s["complete"] and not s["quick"] and s["seed"] == 0 and s["data"] == "embedded MNIST subset"
    assert s["search_space"] == selection.SEARCH_SPACE
    assert s["n_hidden"] == list(selection.N_HIDDEN) and s["epochs"] == list(selection.EPOCHS)
    assert s["n_validation"] == selection.VALIDATION_EXAMPLES
    for key, value in mnist.DEFAULT_SETTINGS.items():
        if key not in ("train_examples", "test_examples"):
            assert s[key] == value, key
    expected = len(selection.N_HIDDEN) * sum(len(c) for c in selection.SEARCH_SPACE.values())
    assert len(record["candidates"]) == expected
    assert all(len(c["validation_accuracy"]) == len(selection.EPOCHS) for c in record["candidates"])
    assert record["selected"] == select(record)
    for model, choice in select(record).items():
        assert mnist.MODELS[model] == {"n_hidden": choice["n_hidden"], "epochs": choice["epochs"], **choice["options"]}
    assert list(mnist.MODELS) == list(selection.SEARCH_SPACE)
