"""Deep networks from stacked denoising autoencoders: does greedy layer-wise pretraining help?

On the embedded MNIST split (5,000 training digits, the official 10,000 test digits), each
row is trained in two stages, the usual select-then-refit protocol (like scikit-learn's
``GridSearchCV(refit=True)``):

1. **Selection.** A random 1,000 of the training digits (drawn with ``seed``) are held out
   for validation; the row is pretrained and fine-tuned on the other 4,000
   (:data:`DEFAULT_SETTINGS`'s ``"finetune"``: SGD, the most epochs, early stopping on the
   validation accuracy). Its best epoch ``E`` and that epoch's validation accuracy are kept.
   The validation digits chose ``E`` and, in earlier tuning runs (:data:`TUNING`), every
   hyperparameter.
2. **Refit.** The row is trained again from the same initial weights on all 5,000 training
   digits, the validation digits included: pretraining with the same settings, then
   fine-tuning for exactly ``E`` epochs (no early stopping: no validation digits are left).
   That model, and only it, is scored on the test digits, once per row.

The rows, fine-tuned with the same budget:

* ``stacked_pretrained``: a stacked denoising autoencoder (:class:`pyae.StackedAutoencoder`),
  pretrained layer by layer (:func:`pyae.pretrain`), then fine-tuned with a softmax layer on
  top (:func:`pyae.finetune`);
* ``stacked_random_init``: the same network from its random initialization (PyTorch's
  ``nn.Linear`` default, the weights pretraining would have replaced), fine-tuned alike;
* ``single_layer_pretrained``: the single-layer reference, a 1-layer stack made of the first
  pretrained layer (a denoising autoencoder), fine-tuned alike. (Not the logistic regression
  on frozen features of ``pyae experiment mnist``: this run trains and reports only its own
  rows. The report cites the validation accuracy of that experiment's best single-layer model
  from its search record, ``mnist_selection.json``, and points to its report for the test
  accuracy.)

The test digits never enter a choice. :func:`run_experiment` writes ``results.json``
(atomically, after every stage), ``report.md`` and pictures; ``pyae experiment deep`` is its
command-line face. It needs matplotlib (``pip install 'pyae[experiment]'``). The refit about
doubles the cost of the selection alone (a few minutes on one or two CPU cores).

Tuning (:data:`TUNING`): the candidates tried, with their validation accuracy; the default
settings are the best of them by validation accuracy alone.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

import pyae
from pyae._typing import PathLike
from pyae.config import resolve_device
from pyae.data import load_mnist, random_subset, split_rows
from pyae.experiments._common import log, require, torch_threads, write_text
from pyae.stacked import StackedAutoencoder, StackedClassifier, finetune, layer_configs, pretrain

__all__ = ["DEFAULT_SETTINGS", "QUICK_SETTINGS", "ROWS", "TUNING", "run_experiment", "format_table"]

#: The default run: chosen by validation accuracy among :data:`TUNING`'s candidates, and
#: sized to take a few minutes on one CPU core.
DEFAULT_SETTINGS: Dict[str, Any] = {
    "layer_sizes": [1000, 1000],
    "noise": "mask",
    "noise_levels": [0.4, 0.4],
    "loss": "cross_entropy",
    "pretrain": {"epochs": 20, "batch_size": 20, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9},
    "finetune": {"epochs": 80, "batch_size": 20, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9, "patience": 15,
                 "monitor": "accuracy"},
    # Per-row changes to "finetune", each chosen by validation accuracy (see TUNING).
    "row_finetune": {},
    "n_validation": 1000,
    "train_examples": None,  # None: all the training digits (before the validation split)
    "test_examples": None,
}

#: A smoke run of seconds: small layers, a few epochs, data subsets.
QUICK_SETTINGS: Dict[str, Any] = {
    **DEFAULT_SETTINGS,
    "layer_sizes": [64, 32],
    "pretrain": {**DEFAULT_SETTINGS["pretrain"], "epochs": 2},
    "finetune": {**DEFAULT_SETTINGS["finetune"], "epochs": 10, "patience": 3},
    "n_validation": 200,
    "train_examples": 1000,
    "test_examples": 1000,
}

#: The rows, in order.
ROWS = ("stacked_pretrained", "stacked_random_init", "single_layer_pretrained")

#: The hyperparameter candidates tried, in the order they were run (seed 0, the default split:
#: 4,000 training and 1,000 validation digits, one CPU thread; SGD with momentum 0.9 and batch
#: 20 in both stages, masking noise, cross-entropy reconstruction, pretraining lr 0.01;
#: fine-tuning for at most 80 epochs with patience 15 on the validation accuracy).
#: ``val_accuracy`` is the best epoch's validation accuracy (``best_epoch``); no test digit
#: was scored for any of them. The ``stacked_pretrained`` candidates chose the architecture,
#: the noise and the pretraining length (best: two layers of 1000 units, masking 0.4, 20
#: epochs, fine-tuning lr 0.1); the ``stacked_random_init`` ones chose that row's fine-tuning lr
#: (best: 0.1, the shared default; 0.3 diverged). One seed: differences of a few tenths of a
#: point between candidates are within what another seed could change. The last two candidates
#: (``layer_options``: every layer with tied weights, one contractive with weight 1.0 and no
#: noise, one denoising with masking 0.4) fell short of the untied default.
TUNING: List[Dict[str, Any]] = [
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "noise_levels": [0.25, 0.25],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.959, "best_epoch": 13},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "noise_levels": [0.25, 0.25],
     "pretrain_epochs": 20, "finetune_lr": 0.03, "val_accuracy": 0.958, "best_epoch": 16},
    {"row": "stacked_random_init", "layer_sizes": [1000, 1000], "finetune_lr": 0.1, "val_accuracy": 0.934,
     "best_epoch": 70},
    {"row": "stacked_random_init", "layer_sizes": [1000, 1000], "finetune_lr": 0.3, "val_accuracy": 0.116,
     "best_epoch": 21},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000, 1000], "noise_levels": [0.1, 0.2, 0.3],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.958, "best_epoch": 8},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "noise_levels": [0.4, 0.4],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.965, "best_epoch": 17},
    {"row": "stacked_pretrained", "layer_sizes": [500, 500], "noise_levels": [0.25, 0.25],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.953, "best_epoch": 8},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "noise_levels": [0.25, 0.25],
     "pretrain_epochs": 40, "finetune_lr": 0.1, "val_accuracy": 0.960, "best_epoch": 5},
    {"row": "stacked_pretrained", "layer_sizes": [2000, 1000], "noise_levels": [0.25, 0.25],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.960, "best_epoch": 13},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "noise_levels": [0.5, 0.5],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.961, "best_epoch": 8},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "noise_levels": [0.6, 0.6],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.962, "best_epoch": 17},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000, 1000], "noise_levels": [0.4, 0.4, 0.4],
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.962, "best_epoch": 27},
    {"row": "stacked_random_init", "layer_sizes": [1000, 1000], "finetune_lr": 0.03, "val_accuracy": 0.918,
     "best_epoch": 42},
    # Tied-weight layers (the single-layer search's winners used tied weights); two torch threads.
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000],
     "layer_options": {"tied_weights": True, "contractive_weight": 1.0, "noise": None},
     "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.963, "best_epoch": 17},
    {"row": "stacked_pretrained", "layer_sizes": [1000, 1000], "layer_options": {"tied_weights": True},
     "noise_levels": [0.4, 0.4], "pretrain_epochs": 20, "finetune_lr": 0.1, "val_accuracy": 0.961,
     "best_epoch": 8},
]

_FILTER_UNITS = 100
_TILE_SHAPE = (28, 28)


def run_experiment(
    out_dir: PathLike,
    *,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Pretrain, fine-tune and compare the three rows; write ``results.json``, ``report.md``
    and the pictures into ``out_dir``.

    Files: ``results.json`` (atomically, after every stage), ``report.md``,
    ``filters_layer1.png`` (the first pretrained layer's filters), ``unit_filters_layer<L>.png``
    (the top pretrained layer's units in input space, :meth:`pyae.StackedAutoencoder.unit_filters`),
    ``finetuned_filters_layer1.png`` (the first layer after fine-tuning), all three of the refit's
    networks, and ``validation_accuracy.png`` (every row's validation accuracy per epoch, in the
    selection).

    Args:
        out_dir: the output directory (created).
        quick: a smoke run (:data:`QUICK_SETTINGS`, seconds); its numbers say nothing about the methods.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: seeds the validation split (and the quick run's subsets), the initial weights, the
            pretraining (shuffling, noise) and the fine-tuning's shuffling.
        progress: report progress on stderr.
        num_threads: torch's intra-op CPU threads for the run (restored afterwards); None leaves
            torch's setting, except for ``quick`` runs (one thread).

    Returns:
        The content of ``results.json``: ``{"settings": {...}, "tuning": [...], "stages": {...},
        "rows": {...}, "goal": {...}, "single_layer_search": {...} or None}``. Each row has, from
        the selection (trained on ``settings["n_train"]`` digits): ``val_accuracy`` (its best
        epoch's), ``best_epoch``, ``epochs_run``, ``stopped_early``, ``val_accuracy_per_epoch``,
        ``selection_train_accuracy``, ``pretrain_seconds`` (the pretraining of its layers; 0 from
        random initialization) and ``finetune_seconds``; from the refit (trained on all
        ``settings["n_refit"]`` training digits for ``best_epoch`` epochs): ``test_accuracy``,
        ``train_accuracy`` (on those digits), ``refit_epochs``, ``refit_pretrain_seconds`` and
        ``refit_finetune_seconds``; and ``layer_sizes``, ``pretrained``, ``finetune``.
        ``"stages"`` holds each stage's seconds (``pretrain``, ``finetune_<row>``,
        ``refit_pretrain``, ``refit_<row>``), with the pretraining's losses per layer; ``"goal"``
        the issue's statements tested on this run; ``"single_layer_search"`` the best model of
        ``pyae experiment selection``'s record (validation only), None without the record.
    """
    require(("matplotlib",), "the deep experiment")
    with torch_threads(num_threads, default=1 if quick else None):
        return _run(out_dir, quick=quick, device=device, seed=seed, progress=progress)


def _split_data(settings: Mapping[str, Any], seed: int):
    """(train, validation, test) pairs of (images, labels): the training digits (a subset in a
    quick run) split at random into training and validation digits, both drawn with ``seed``."""
    train_x, train_y = load_mnist(None, "train")
    test_x, test_y = load_mnist(None, "test")
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = random_subset(settings["train_examples"], train_x, train_y, generator=generator)
    test_x, test_y = random_subset(settings["test_examples"], test_x, test_y, generator=generator)
    kept, held_out = split_rows(train_x.shape[0], settings["n_validation"],
                                generator=torch.Generator().manual_seed(seed))
    return (train_x[kept], train_y[kept]), (train_x[held_out], train_y[held_out]), (test_x, test_y)


def _new_stack(settings: Mapping[str, Any], seed: int, device: torch.device) -> StackedAutoencoder:
    """The stack with its seeded random initial weights (the global RNG is left as it was)."""
    options = [{"noise": settings["noise"], "noise_level": level, "loss": settings["loss"]}
               for level in settings["noise_levels"]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        stack = StackedAutoencoder(784, settings["layer_sizes"], options)
    return stack.to(device)


def _pretrained(initial: StackedAutoencoder, settings: Mapping[str, Any], images, validation, seed: int,
                device: torch.device, progress: bool):
    """A copy of ``initial`` pretrained layer by layer on ``images`` (``validation``, or None,
    only measures each layer's held-out reconstruction), and the stage's record: its seconds,
    its number of examples and each layer's time and losses."""
    stack = copy.deepcopy(initial)
    configs = layer_configs(stack, **settings["pretrain"], seed=seed, device=str(device))
    started = time.perf_counter()
    histories = pretrain(stack, images, configs, validation=validation, progress=progress)
    layers = []
    for h in histories:
        layer = {"seconds": float(sum(h["seconds"])), "epochs": len(h["epoch"]), "final_loss": h["loss"][-1],
                 "final_reconstruction": h["reconstruction"][-1]}
        if h.get("val_reconstruction"):
            layer["final_val_reconstruction"] = h["val_reconstruction"][-1]
        layers.append(layer)
    stage = {"seconds": time.perf_counter() - started, "n_examples": int(images.shape[0]), "layers": layers}
    log(progress, "    " + "; ".join(f"layer {k + 1}: {layer['seconds']:.1f}s" for k, layer in enumerate(layers)))
    return stack, stage


def _row_starts(stack: StackedAutoencoder, initial: StackedAutoencoder, stage: Mapping[str, Any],
                device: torch.device):
    """Each row's starting network (a fresh copy) and the seconds of the pretraining it used."""
    single = StackedAutoencoder(784, stack.layer_sizes[:1], stack.layer_options()[:1]).to(device)
    single.layers[0].load_state_dict(stack.layers[0].state_dict())
    return {
        "stacked_pretrained": (copy.deepcopy(stack), stage["seconds"]),
        "stacked_random_init": (copy.deepcopy(initial), 0.0),
        "single_layer_pretrained": (single, stage["layers"][0]["seconds"]),
    }


def _run(out_dir, *, quick, device, seed, progress) -> Dict[str, Any]:
    from pyae import viz

    started = time.perf_counter()
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = copy.deepcopy(QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    torch_device = resolve_device(device)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = _split_data(settings, seed)
    # The refit's training set: every training digit, the validation digits included.
    all_x, all_y = torch.cat([train_x, val_x]), torch.cat([train_y, val_y])
    record: Dict[str, Any] = {
        "settings": {
            **settings, "quick": quick, "seed": seed, "device": str(torch_device),
            "data": "embedded MNIST subset", "n_train": int(train_x.shape[0]), "n_validation": int(val_x.shape[0]),
            "n_refit": int(all_x.shape[0]), "n_test": int(test_x.shape[0]), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "pyae": pyae.__version__, "complete": False,
        },
        "tuning": copy.deepcopy(TUNING),
        "stages": {},
        "rows": {},
    }

    def save() -> None:
        write_text(out / "results.json", json.dumps(record, indent=2) + "\n")

    n_steps = 2 + 2 * len(ROWS)
    initial = _new_stack(settings, seed, torch_device)

    # ---------------------------------------- selection: train on n_train, choose on n_validation
    log(progress, f"[1/{n_steps}] selection: pretraining {initial.n_layers} layers {settings['layer_sizes']} on "
                  f"{train_x.shape[0]} digits")
    stack, stage = _pretrained(initial, settings, train_x, val_x, seed, torch_device, progress)
    record["stages"]["pretrain"] = stage
    save()
    starts = _row_starts(stack, initial, stage, torch_device)
    curves: Dict[str, List[float]] = {}
    for index, name in enumerate(ROWS, start=2):
        start, pretrain_seconds = starts[name]
        options = {**settings["finetune"], **settings["row_finetune"].get(name, {})}
        log(progress, f"[{index}/{n_steps}] selection: fine-tuning {name} {[784, *start.layer_sizes, 10]} on "
                      f"{train_x.shape[0]} digits, lr {options['lr']:g}")
        classifier = StackedClassifier(start)
        stage_started = time.perf_counter()
        history = finetune(classifier, train_x, train_y, validation=(val_x, val_y), seed=seed, progress=progress,
                           **options)
        seconds = time.perf_counter() - stage_started
        best = history["best_epoch"]
        record["rows"][name] = {
            "layer_sizes": list(start.layer_sizes),
            "pretrained": name != "stacked_random_init",
            "val_accuracy": history["val_accuracy"][best - 1],
            "selection_train_accuracy": classifier.accuracy(train_x, train_y),
            "best_epoch": best,
            "epochs_run": len(history["epoch"]),
            "stopped_early": history["stopped_early"],
            "pretrain_seconds": pretrain_seconds,
            "finetune_seconds": seconds,
            "finetune": options,
            "val_accuracy_per_epoch": history["val_accuracy"],
        }
        curves[name] = history["val_accuracy"]
        log(progress, f"    validation {100 * record['rows'][name]['val_accuracy']:.2f}% (epoch {best} of "
                      f"{len(history['epoch'])}); {seconds:.1f}s")
        record["stages"][f"finetune_{name}"] = {"seconds": seconds}
        save()
    viz.save_line_plot({name: [100 * v for v in values] for name, values in curves.items()},
                       out / "validation_accuracy.png", ylabel="validation accuracy (%)",
                       title="Fine-tuning: validation accuracy per epoch")

    # ------------------- refit: the same settings from scratch on all n_refit digits, then test
    index = len(ROWS) + 2
    log(progress, f"[{index}/{n_steps}] refit: pretraining {initial.n_layers} layers on {all_x.shape[0]} digits")
    stack, stage = _pretrained(initial, settings, all_x, None, seed, torch_device, progress)
    record["stages"]["refit_pretrain"] = stage
    save()
    units = min(_FILTER_UNITS, stack.layer_sizes[0])
    viz.save_filter_grid(stack.filters()[:units], out / "filters_layer1.png", rows=10, cols=10,
                         title=f"layer 1 after pretraining: the first {units} filters")
    top = stack.n_layers
    units_top = min(_FILTER_UNITS, stack.layer_sizes[-1])
    viz.save_filter_grid(stack.unit_filters(top - 1)[:units_top], out / f"unit_filters_layer{top}.png", rows=10,
                         cols=10, title=f"layer {top} after pretraining: first {units_top} units, W{top}...W1 rows")
    starts = _row_starts(stack, initial, stage, torch_device)
    for index, name in enumerate(ROWS, start=index + 1):
        start, pretrain_seconds = starts[name]
        row = record["rows"][name]
        # Exactly the selected number of epochs; no validation digits are left to stop early on.
        options = {**row["finetune"], "epochs": row["best_epoch"], "patience": None}
        log(progress, f"[{index}/{n_steps}] refit: fine-tuning {name} on {all_x.shape[0]} digits for "
                      f"{options['epochs']} epochs")
        classifier = StackedClassifier(start)
        stage_started = time.perf_counter()
        history = finetune(classifier, all_x, all_y, seed=seed, progress=progress, **options)
        seconds = time.perf_counter() - stage_started
        row.update({
            "test_accuracy": classifier.accuracy(test_x, test_y),
            "train_accuracy": classifier.accuracy(all_x, all_y),
            "refit_epochs": len(history["epoch"]),
            "refit_pretrain_seconds": pretrain_seconds,
            "refit_finetune_seconds": seconds,
        })
        log(progress, f"    test {100 * row['test_accuracy']:.2f}%; {seconds:.1f}s")
        record["stages"][f"refit_{name}"] = {"seconds": seconds}
        save()
        if name == "stacked_pretrained":
            viz.save_filter_grid(classifier.stack.filters()[:units], out / "finetuned_filters_layer1.png", rows=10,
                                 cols=10, title=f"layer 1 after fine-tuning: the first {units} filters")

    record["goal"] = _goal(record["rows"])
    record["single_layer_search"] = _single_layer_search()
    record["settings"]["total_seconds"] = time.perf_counter() - started
    record["settings"]["complete"] = True
    save()
    write_text(out / "report.md", _report(record))
    log(progress, f"done in {record['settings']['total_seconds']:.0f}s; wrote {out / 'results.json'}")
    return record


#: The issue's target test accuracy for the fine-tuned stack.
TARGET_TEST_ACCURACY = 0.965


def _goal(rows: Mapping[str, Any]) -> Dict[str, bool]:
    """The issue's statements, each tested on this run's test accuracies (and, for the
    comparisons, on the validation accuracies too)."""
    deep, random, single = (rows[name] for name in ROWS)
    return {
        "beats_random_init_test": deep["test_accuracy"] > random["test_accuracy"],
        "beats_random_init_validation": deep["val_accuracy"] > random["val_accuracy"],
        "beats_single_layer_test": deep["test_accuracy"] > single["test_accuracy"],
        "beats_single_layer_validation": deep["val_accuracy"] > single["val_accuracy"],
        "reaches_target_test": deep["test_accuracy"] >= TARGET_TEST_ACCURACY,
    }


#: The record of the single-layer search behind ``pyae experiment mnist``'s models (see
#: :data:`pyae.experiments.selection.SELECTED_RECORD`); its validation numbers are cited in the report.
SINGLE_LAYER_SEARCH = Path(__file__).with_name("mnist_selection.json")


def _single_layer_search(path: Path = SINGLE_LAYER_SEARCH) -> Optional[Dict[str, Any]]:
    """The best selected model of the single-layer search (``pyae experiment selection``), by
    validation accuracy, with that search's split; None when its record is missing or unreadable."""
    try:
        stored = json.loads(path.read_text())
        selected = stored["selected"]
        name = max(selected, key=lambda model: selected[model]["validation_accuracy"])
        settings = stored["settings"]
        return {"model": name, **copy.deepcopy(selected[name]), "n_train": settings["n_train"],
                "n_validation": settings["n_validation"], "train_examples": settings["train_examples"],
                "seed": settings["seed"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------- report


def format_table(results: Mapping[str, Any], *, markdown: bool = True) -> str:
    """One row per network: its layers; the selection's validation accuracy and the epoch it
    kept (of those run); the refit model's test accuracy and its accuracy on the digits it was
    trained on; the seconds of the selection's and of the refit's pretraining and fine-tuning."""
    header = ["row", "layers", "val. acc.", "best epoch / run", "test acc. (refit)", "train acc. (refit)",
              "pretrain s", "finetune s", "refit pretrain s", "refit finetune s"]
    rows = []
    pct = lambda entry, key: f"{100 * entry[key]:.2f}%" if key in entry else "-"  # noqa: E731
    sec = lambda entry, key: f"{entry[key]:.1f}" if key in entry else "-"  # noqa: E731
    for name, entry in results["rows"].items():
        rows.append([
            name,
            "-".join(map(str, [784, *entry["layer_sizes"], 10])),
            pct(entry, "val_accuracy"),
            f"{entry['best_epoch']} / {entry['epochs_run']}",
            pct(entry, "test_accuracy"),
            pct(entry, "train_accuracy"),
            sec(entry, "pretrain_seconds"),
            sec(entry, "finetune_seconds"),
            sec(entry, "refit_pretrain_seconds"),
            sec(entry, "refit_finetune_seconds"),
        ])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        padded = [str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded)

    lines = [line(header)]
    if markdown:
        lines.append("|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":"
                                    for i, w in enumerate(widths)) + "|")
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def _first_epoch_above(row: Mapping[str, Any], level: float) -> str:
    """The first epoch whose validation accuracy reached ``level``, as text ("none" if none did)."""
    for epoch, value in enumerate(row["val_accuracy_per_epoch"], start=1):
        if value >= level:
            return f"epoch {epoch}"
    return f"none of its {len(row['val_accuracy_per_epoch'])} epochs"


def _single_layer_lines(search: Optional[Mapping[str, Any]], s: Mapping[str, Any],
                        deep: Mapping[str, Any]) -> List[str]:
    """The report's paragraph on ``pyae experiment mnist``'s best single-layer model: its
    validation accuracy from the search record when there is one; its test accuracy is in
    that experiment's report, not measured here."""
    where = ("Its test accuracy is not measured by this run: see the report of `pyae experiment mnist` (frozen "
             "single-layer features and a logistic regression, trained on all the training digits), whose best row "
             "is the one to compare with this run's `stacked_pretrained` test accuracy.")
    if search is None:
        return ["**The MNIST comparison's best single-layer model** (`pyae experiment mnist`): its search record "
                "(`pyae/experiments/mnist_selection.json`) is not available here. " + where, ""]
    same_split = (search["seed"] == s["seed"] and search["n_validation"] == s["n_validation"]
                  and search["train_examples"] is None and s["train_examples"] is None)
    options = ", ".join(f"{k}={v}" for k, v in search["options"].items()) or "default options"
    split = ("the same validation digits as this run's selection" if same_split
             else "a validation split other than this run's, so the numbers are not directly comparable")
    return [
        f"**The MNIST comparison's best single-layer model** (`pyae experiment mnist`, chosen by "
        f"`pyae experiment selection`, recorded in `pyae/experiments/mnist_selection.json`): `{search['model']}` "
        f"with {search['n_hidden']} units, {search['epochs']} epochs ({options}), validation accuracy "
        f"{100 * search['validation_accuracy']:.2f}% (trained on {search['n_train']} digits, validated on "
        f"{search['n_validation']}: {split}); this run's `stacked_pretrained` validation accuracy is "
        f"{100 * deep['val_accuracy']:.2f}%. " + where,
        "",
    ]


def _verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def _report(record: Mapping[str, Any]) -> str:
    s, rows, goal, stages = record["settings"], record["rows"], record["goal"], record["stages"]
    deep, random, single = (rows[name] for name in ROWS)
    pre, fine = s["pretrain"], s["finetune"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = [
        "# pyae experiment deep: stacked denoising autoencoders, pretrained and fine-tuned",
        "",
        f"Data: the {s['n_refit']} {s['data']} training digits and {s['n_test']} test digits. Two stages. "
        f"**Selection**: {s['n_validation']} of the training digits, drawn at random with seed {s['seed']}, are "
        f"held out for validation; every row is pretrained and fine-tuned on the other {s['n_train']}, and its "
        "best fine-tuning epoch on the validation digits (early stopping) is kept: that epoch's validation accuracy "
        "is the table's `val. acc.`, the epoch its `best epoch`. **Refit** (select, then refit): each row is "
        f"trained again from the same initial weights on all {s['n_refit']} training digits, the validation digits "
        "included: the same pretraining settings, then fine-tuning for exactly the selected number of epochs (no "
        "early stopping: no validation digits are left). That refit model is the one scored on the test digits, "
        "once per row (`test acc.`); `train acc.` is its accuracy on the digits it was trained on. The "
        "hyperparameters and the epochs were chosen on the validation digits only; no test digit entered a choice.",
        "",
        f"Pretraining: each layer a denoising autoencoder ({s['noise']} noise, levels "
        f"{', '.join(f'{q:g}' for q in s['noise_levels'])} bottom up; {s['loss']} reconstruction), trained on the "
        f"clean codes of the layers below for {pre['epochs']} epochs ({pre['optimizer']}, lr {pre['lr']:g}, momentum "
        f"{pre['momentum']:g}, batch {pre['batch_size']}). Fine-tuning: a softmax layer on top, the whole network "
        f"trained on the labels ({fine['optimizer']}, lr {fine['lr']:g}, momentum {fine['momentum']:g}, batch "
        f"{fine['batch_size']}); in the selection for at most {fine['epochs']} epochs, stopping after "
        f"{fine['patience']} epochs without a better validation {fine['monitor']} and keeping the best epoch's "
        "weights; in the refit for the selected number of epochs.",
        "",
        "Rows: `stacked_pretrained` is the pretrained stack fine-tuned; `stacked_random_init` the same network "
        "fine-tuned from its random initial weights (PyTorch's nn.Linear default), with the same budget and early "
        "stopping; `single_layer_pretrained` the single-layer reference: the first pretrained layer alone (one "
        "denoising autoencoder) with a softmax layer, fine-tuned alike (in the refit, the refit's first layer).",
        "",
        format_table(record),
        "",
        f"Device: {s['device']}, {s['cpu_threads']} CPU thread(s); total time {s.get('total_seconds', 0):.0f}s "
        f"(selection pretraining {stages['pretrain']['seconds']:.0f}s, refit pretraining "
        f"{stages['refit_pretrain']['seconds']:.0f}s). `pretrain s` is the selection's pretraining of the row's "
        "layers (the single-layer row's is the first layer's), `finetune s` its fine-tuning, validation included; "
        "`refit pretrain s` and `refit finetune s` the same for the refit.",
        "",
    ]
    if s["quick"]:
        lines += ["**This is a `--quick` smoke run** (small layers, few epochs, data subsets): the numbers and "
                  "pictures check that the pipeline works and say nothing about the methods.", ""]
    lines += [
        "## The issue's goal, measured in this run",
        "",
        f"1. **The fine-tuned stack beats the same network from random initialization**: test "
        f"{pct(deep['test_accuracy'])} vs {pct(random['test_accuracy'])}, "
        f"{_verdict(goal['beats_random_init_test'])} (validation {pct(deep['val_accuracy'])} vs "
        f"{pct(random['val_accuracy'])}, {_verdict(goal['beats_random_init_validation'])}).",
        f"2. **The fine-tuned stack beats the single-layer reference**: test {pct(deep['test_accuracy'])} vs "
        f"{pct(single['test_accuracy'])}, {_verdict(goal['beats_single_layer_test'])} (validation "
        f"{pct(deep['val_accuracy'])} vs {pct(single['val_accuracy'])}, "
        f"{_verdict(goal['beats_single_layer_validation'])}).",
        f"3. **The fine-tuned stack reaches {100 * TARGET_TEST_ACCURACY:.1f}% test accuracy**: "
        f"{pct(deep['test_accuracy'])}, {_verdict(goal['reaches_target_test'])}.",
        "",
        f"This run has one seed and one split (on {s['n_test']} test digits one digit is "
        f"{100 / max(s['n_test'], 1):.2f} points); it does not measure how much the numbers move with either. "
        "Each row's validation accuracy is that of its best epoch, and the settings were the best of several "
        "candidates on the same validation digits, so it is an optimistic estimate; the test accuracy is not.",
        "",
        "Fine-tuning speed: the first epoch with at least 50% validation accuracy was "
        + ", ".join(f"{_first_epoch_above(rows[name], 0.5)} for `{name}`" for name in ROWS)
        + " (see the curves below).",
        "",
        *_single_layer_lines(record.get("single_layer_search"), s, deep),
        "The settings were chosen by validation accuracy alone among the candidates listed in "
        "`pyae.experiments.deep.TUNING` (measured by earlier tuning runs, also copied to results.json's "
        "`tuning`); no test digit entered that choice.",
        "",
    ]
    lines += [
        "## Pictures",
        "",
        "The pictures show the refit's networks (trained on all the training digits), except the validation "
        "curves, which are the selection's.",
        "",
        "The first layer's filters after pretraining (each tile W_l / ||W_l||, scaled to [0, 1]):",
        "",
        "![first-layer filters](filters_layer1.png)",
        "",
        f"Layer {len(s['layer_sizes'])}'s units after pretraining, in input space: the rows of the product of the "
        "encoder weights down to the pixels, each scaled to unit norm (`StackedAutoencoder.unit_filters`, a linear "
        "sketch that ignores where the sigmoids saturate):",
        "",
        f"![unit filters](unit_filters_layer{len(s['layer_sizes'])}.png)",
        "",
        "The first layer's filters after fine-tuning:",
        "",
        "![fine-tuned filters](finetuned_filters_layer1.png)",
        "",
        "The selection's validation accuracy per fine-tuning epoch:",
        "",
        "![validation accuracy](validation_accuracy.png)",
        "",
    ]
    return "\n".join(lines)
