"""pyae.experiments.deep: the quick run writes a complete, consistent set of results (the
selection on the training digits less the validation digits, then the refit on all of them for
the selected number of epochs), and the `pyae experiment deep` command runs it."""

import json
import re

import pytest
import torch

pytest.importorskip("matplotlib")

from helpers import run_quick  # noqa: E402
from pyae import cli  # noqa: E402
from pyae.experiments import deep  # noqa: E402
from pyae.experiments.deep import QUICK_SETTINGS, ROWS, TUNING, _split_data, format_table, run_experiment  # noqa: E402
from pyae.stacked import finetune, pretrain  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The quick run's ``(out, results, calls)``: ``calls`` records every pretraining and
    fine-tuning, in order, with the examples it trained on and its budget."""
    calls = []

    def spy_pretrain(stack, images, configs, **kwargs):
        calls.append({"kind": "pretrain", "images": images.clone(), "validation": kwargs.get("validation"),
                      "epochs": [c.epochs for c in configs]})
        return pretrain(stack, images, configs, **kwargs)

    def spy_finetune(classifier, images, labels, **kwargs):
        history = finetune(classifier, images, labels, **kwargs)
        calls.append({"kind": "finetune", "images": images.clone(), "validation": kwargs.get("validation"),
                      "epochs": kwargs["epochs"], "patience": kwargs.get("patience"),
                      "epochs_run": len(history["epoch"]), "layers": list(classifier.stack.layer_sizes)})
        return history

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deep, "pretrain", spy_pretrain)
        patch.setattr(deep, "finetune", spy_finetune)
        out, results = run_quick(run_experiment, tmp_path_factory.mktemp("deep"))
    return out, results, calls


def test_results_json(quick_run):
    out, results, _ = quick_run
    stored = json.loads((out / "results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    settings = stored["settings"]
    assert settings["complete"] and settings["quick"] and settings["cpu_threads"] == 1 and settings["device"] == "cpu"
    assert (settings["n_train"], settings["n_validation"], settings["n_refit"], settings["n_test"]) == (
        800, 200, 1000, 1000)
    assert list(stored["rows"]) == list(ROWS)
    sizes = QUICK_SETTINGS["layer_sizes"]
    assert stored["rows"]["stacked_pretrained"]["layer_sizes"] == sizes
    assert stored["rows"]["stacked_random_init"]["layer_sizes"] == sizes
    assert stored["rows"]["single_layer_pretrained"]["layer_sizes"] == sizes[:1]
    for name, row in stored["rows"].items():
        for key in ("val_accuracy", "test_accuracy", "train_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
        assert 1 <= row["best_epoch"] <= row["epochs_run"] <= QUICK_SETTINGS["finetune"]["epochs"]
        assert row["finetune_seconds"] > 0.0
        assert len(row["val_accuracy_per_epoch"]) == row["epochs_run"]
        assert row["val_accuracy_per_epoch"][row["best_epoch"] - 1] == row["val_accuracy"]
        assert 0.0 <= row["selection_train_accuracy"] <= 1.0
        assert row["refit_epochs"] == row["best_epoch"]
        assert row["refit_finetune_seconds"] > 0.0
        assert stored["stages"][f"refit_{name}"]["seconds"] == row["refit_finetune_seconds"]
    assert stored["rows"]["stacked_random_init"]["pretrain_seconds"] == 0.0
    assert stored["rows"]["stacked_random_init"]["refit_pretrain_seconds"] == 0.0
    for stage, n_examples, row_key in (("pretrain", 800, "pretrain_seconds"),
                                       ("refit_pretrain", 1000, "refit_pretrain_seconds")):
        layers = stored["stages"][stage]["layers"]
        assert stored["stages"][stage]["n_examples"] == n_examples
        assert len(layers) == len(sizes)
        assert all(layer["epochs"] == QUICK_SETTINGS["pretrain"]["epochs"] for layer in layers)
        assert stored["rows"]["single_layer_pretrained"][row_key] == layers[0]["seconds"]
        assert stored["rows"]["stacked_pretrained"][row_key] == stored["stages"][stage]["seconds"]
    assert set(stored["goal"]) == {"beats_random_init_test", "beats_random_init_validation", "beats_single_layer_test",
                                   "beats_single_layer_validation", "reaches_target_test"}
    assert stored["tuning"] == TUNING
    search = stored["single_layer_search"]
    assert search == deep._single_layer_search()
    if search is not None:
        assert 0.0 < search["validation_accuracy"] <= 1.0
    assert not list(out.glob(".*.tmp"))


def test_the_refit_trains_on_all_the_training_digits_for_the_selected_epochs(quick_run):
    _, results, calls = quick_run
    (train_x, _), (val_x, val_y), _ = _split_data(QUICK_SETTINGS, 0)
    every = torch.cat([train_x, val_x])
    # Selection: one pretraining and one fine-tuning per row on the training digits less the
    # validation digits; then the refit: the same on all of them.
    assert [c["kind"] for c in calls] == ["pretrain", *["finetune"] * len(ROWS)] * 2
    selection, refit = calls[:1 + len(ROWS)], calls[1 + len(ROWS):]
    for call in selection:
        assert torch.equal(call["images"], train_x)
        assert call["validation"] is not None
    assert torch.equal(selection[0]["validation"], val_x)
    for call in selection[1:]:
        assert torch.equal(call["validation"][0], val_x) and torch.equal(call["validation"][1], val_y)
        assert call["epochs"] == QUICK_SETTINGS["finetune"]["epochs"]
        assert call["patience"] == QUICK_SETTINGS["finetune"]["patience"]
    for call in refit:
        assert call["images"].shape[0] == QUICK_SETTINGS["train_examples"]
        assert torch.equal(torch.unique(call["images"], dim=0), torch.unique(every, dim=0))  # the validation digits too
        assert call["validation"] is None
    assert refit[0]["epochs"] == [QUICK_SETTINGS["pretrain"]["epochs"]] * len(QUICK_SETTINGS["layer_sizes"])
    for name, call in zip(ROWS, refit[1:]):
        row = results["rows"][name]
        assert call["layers"] == row["layer_sizes"]
        assert call["patience"] is None
        assert call["epochs"] == call["epochs_run"] == row["best_epoch"]


def test_report_and_pictures(quick_run):
    out, results, _ = quick_run
    report = (out / "report.md").read_text()
    assert "smoke run" in report and format_table(results) in report
    assert "Refit" in report and "pyae experiment mnist" in report
    for png in ("filters_layer1.png", "unit_filters_layer2.png", "finetuned_filters_layer1.png",
                "validation_accuracy.png"):
        assert (out / png).stat().st_size > 0
        assert f"({png})" in report
    # Every statement of the goal has a verdict: three on the test digits, two on the validation digits.
    assert len(re.findall(r"\b(holds|does not hold)\b", report)) == 5


def test_the_validation_digits_are_held_out_of_training():
    (train_x, _), (val_x, _), (test_x, _) = _split_data(QUICK_SETTINGS, 0)
    assert train_x.shape[0] + val_x.shape[0] == QUICK_SETTINGS["train_examples"]
    together = torch.cat([train_x, val_x])
    assert torch.unique(together, dim=0).shape[0] == together.shape[0]
    assert test_x.shape[0] == QUICK_SETTINGS["test_examples"]


def test_tuning_record_backs_the_defaults():
    """The default settings are the tuning candidate with the best validation accuracy."""
    best = max((c for c in TUNING if c["row"] == "stacked_pretrained"), key=lambda c: c["val_accuracy"])
    assert best["layer_sizes"] == deep.DEFAULT_SETTINGS["layer_sizes"]
    assert best["noise_levels"] == deep.DEFAULT_SETTINGS["noise_levels"]
    assert best["finetune_lr"] == deep.DEFAULT_SETTINGS["finetune"]["lr"]
    assert best["pretrain_epochs"] == deep.DEFAULT_SETTINGS["pretrain"]["epochs"]


def test_the_command_runs_the_deep_experiment(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake_run(out_dir, **kwargs):
        seen.update(kwargs)
        return {"rows": {name: {"layer_sizes": [4], "val_accuracy": 0.5, "test_accuracy": 0.5, "train_accuracy": 0.5,
                                "best_epoch": 1, "epochs_run": 1, "pretrain_seconds": 0.0, "finetune_seconds": 0.1}
                         for name in ROWS}}

    monkeypatch.setattr(deep, "run_experiment", fake_run)
    code = cli.main(["experiment", "deep", "--out", str(tmp_path / "e"), "--quick", "--device", "cpu", "--threads",
                     "1", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert seen == dict(quick=True, device="cpu", seed=0, progress=False, num_threads=1)
    assert "stacked_pretrained" in out


def test_the_single_layer_search_record(tmp_path):
    assert deep._single_layer_search(tmp_path / "missing.json") is None
    lines = deep._single_layer_lines(None, QUICK_SETTINGS, {"val_accuracy": 0.5})
    assert "not available" in lines[0] and "pyae experiment mnist" in lines[0]
    record = {"settings": {"n_train": 4000, "n_validation": 1000, "train_examples": None, "seed": 0},
              "selected": {"a": {"n_hidden": 10, "epochs": 2, "options": {}, "validation_accuracy": 0.9},
                           "b": {"n_hidden": 20, "epochs": 3, "options": {"tied_weights": True},
                                 "validation_accuracy": 0.95}}}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    best = deep._single_layer_search(path)
    assert best["model"] == "b" and best["validation_accuracy"] == 0.95 and best["n_hidden"] == 20
    text = deep._single_layer_lines(best, {**deep.DEFAULT_SETTINGS, "seed": 0}, {"val_accuracy": 0.96})[0]
    assert "95.00%" in text and "96.00%" in text and "the same validation digits" in text
