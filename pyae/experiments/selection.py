"""Model selection for the MNIST comparison, on validation digits only.

:mod:`pyae.experiments.mnist` trains every autoencoder with the settings in its
:data:`~pyae.experiments.mnist.MODELS`. This experiment is where those settings come from:
it carves a validation split out of the 5,000 embedded training digits (never touching the
test digits), trains every candidate of :data:`SEARCH_SPACE` on the rest, and scores each with
the comparison's own classifier (a logistic regression on the hidden representation of the
clean digits, fitted on the training part, scored on the validation part) after each number
of epochs in :data:`EPOCHS`. Each model's selected setting is its candidate with the highest
validation accuracy (ties: fewer hidden units, then fewer epochs, then the earlier candidate).

The procedure, in one place:

- the split: :data:`VALIDATION_EXAMPLES` of the training digits, drawn with the seed;
- the grid: every model's candidates (:data:`SEARCH_SPACE`) times :data:`N_HIDDEN`, each
  trained once to the largest of :data:`EPOCHS` and scored after each of them (a run resumed
  from its own checkpoint, bitwise the run that never stopped);
- everything else as in the comparison (:data:`pyae.experiments.mnist.DEFAULT_SETTINGS`:
  cross-entropy, SGD with momentum, batch 20, the same seed for every model).

The noise levels of the two masking rows are not searched: they are the comparison's probes of
the lecture's claim that the filters widen as the noise grows; their hidden units and epochs
are. ``pyae experiment selection --out DIR`` writes ``results.json`` (after every scored
candidate: an interrupted search, rerun with the same ``--out``, continues where it stopped)
and ``report.md``. The record of the search behind the comparison's defaults ships with the
package (:data:`SELECTED_RECORD`); ``pyae experiment`` cites it in its report.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

import pyae
from pyae._typing import PathLike
from pyae.config import TrainConfig, resolve_device
from pyae.data import load_mnist, random_subset, split_rows
from pyae.experiments._common import log, require, torch_threads, write_text
from pyae.training import train

__all__ = ["REGULARIZERS", "SEARCH_SPACE", "N_HIDDEN", "EPOCHS", "VALIDATION_EXAMPLES", "SELECTED_RECORD", "QUICK_SEARCH",
           "run_experiment", "format_table", "load_selected", "save_picture", "select"]

#: Each model's regularizer settings to try: its noise level, penalty weights.
REGULARIZERS: Dict[str, List[Dict[str, Any]]] = {
    "vanilla": [{}],
    "denoising_mask_0.25": [{"noise": "mask", "noise_level": 0.25}],
    "denoising_mask_0.5": [{"noise": "mask", "noise_level": 0.5}],
    "denoising_gaussian": [{"noise": "gaussian", "noise_level": std} for std in (0.3, 0.5, 0.7, 1.0)],
    "sparse": [{"sparsity_target": 0.05, "sparsity_weight": beta} for beta in (0.1, 0.5, 2.0)],
    "contractive": [{"contractive_weight": weight} for weight in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)],
}

#: Every model's candidates: each of its :data:`REGULARIZERS` with untied and with tied weights
#: (``tied_weights=True``, the decoder is the encoder's transpose: Rifai et al. (2011) tie them
#: for the contractive autoencoder, since untied, the encoder can shrink W, and with it the
#: penalty, while the decoder scales back up; every model gets the same choice). Each is tried
#: with every entry of :data:`N_HIDDEN` and scored after every entry of :data:`EPOCHS`.
SEARCH_SPACE: Dict[str, List[Dict[str, Any]]] = {
    model: [*settings, *({"tied_weights": True, **options} for options in settings)]
    for model, settings in REGULARIZERS.items()
}
N_HIDDEN: Tuple[int, ...] = (1000, 2000)
EPOCHS: Tuple[int, ...] = (10, 20, 30)
VALIDATION_EXAMPLES = 1000

#: The ``--quick`` smoke run: one small candidate per model, a few epochs, subsets of the data.
QUICK_SEARCH: Dict[str, Any] = {
    "n_hidden": (50,),
    "epochs": (1, 2),
    "validation_examples": 200,
    "train_examples": 600,
}

#: The search behind :data:`pyae.experiments.mnist.MODELS`: the ``results.json`` of
#: ``pyae experiment selection`` with the default settings and seed 0, as it ran.
SELECTED_RECORD = Path(__file__).with_name("mnist_selection.json")


def select(record: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Each model's selected setting in a search's record: the candidate and number of epochs
    with the highest validation accuracy (ties: fewer hidden units, fewer epochs, the earlier
    candidate).

    Returns:
        ``{model: {"n_hidden", "epochs", "options", "validation_accuracy"}}`` for every model
        with at least one scored candidate.
    """
    best: Dict[str, Tuple[Tuple, Dict[str, Any]]] = {}
    for index, candidate in enumerate(record["candidates"]):
        for epochs, accuracy in candidate["validation_accuracy"].items():
            key = (-accuracy, candidate["n_hidden"], int(epochs), index)
            model = candidate["model"]
            if model not in best or key < best[model][0]:
                best[model] = (key, {"n_hidden": candidate["n_hidden"], "epochs": int(epochs),
                                     "options": dict(candidate["options"]), "validation_accuracy": accuracy})
    return {model: best[model][1] for model in record["candidates_order"] if model in best}


def load_selected(path: PathLike = SELECTED_RECORD) -> Dict[str, Any]:
    """A search's record (``results.json`` of this experiment); by default the packaged one."""
    with open(os.fspath(path)) as f:
        return json.load(f)


# ------------------------------------------------------------------------------ run


def run_experiment(
    out_dir: PathLike,
    *,
    quick: bool = False,
    device: str = "auto",
    data_root: Optional[PathLike] = None,
    seed: int = 0,
    progress: bool = True,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Run the search and write ``results.json`` and ``report.md`` into ``out_dir``.

    Args:
        out_dir: the output directory (created). If it holds a search with the same settings,
            the search continues: scored candidates are kept (a grid that has grown runs its new
            candidates only), a candidate that was interrupted resumes from its checkpoint
            (``out_dir/checkpoints``).
        quick: a smoke run (:data:`QUICK_SEARCH`: one small size, two epochs, data subsets).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for the autoencoders.
        data_root: a directory of the standard MNIST files; None: the embedded digits. Only
            their training split is read.
        seed: the validation split's draw, and every autoencoder's and classifier's seed.
        progress: report progress on stderr.
        num_threads: torch's intra-op CPU threads (restored afterwards); None leaves torch's
            setting, except for ``quick`` runs, which use one thread.

    Returns:
        The content of ``results.json``: ``{"settings": {...}, "candidates_order": [model
        names], "candidates": [{"model", "options", "n_hidden", "validation_accuracy":
        {epochs: accuracy}, "train_seconds"}, ...], "selected": {model: ...}}`` (see
        :func:`select`).

    Raises:
        ValueError: ``out_dir`` holds a search with other settings.
    """
    require()
    with torch_threads(num_threads, default=1 if quick else None):
        return _run(out_dir, quick=quick, device=device, data_root=data_root, seed=seed, progress=progress)


def _settings(quick: bool, seed: int, data_root: Optional[PathLike]) -> Dict[str, Any]:
    from pyae.experiments.mnist import DEFAULT_SETTINGS

    shared = {k: v for k, v in DEFAULT_SETTINGS.items() if k not in ("train_examples", "test_examples")}
    return {
        **copy.deepcopy(shared),
        "search_space": copy.deepcopy(SEARCH_SPACE),
        "n_hidden": list(QUICK_SEARCH["n_hidden"] if quick else N_HIDDEN),
        "epochs": list(QUICK_SEARCH["epochs"] if quick else EPOCHS),
        "validation_examples": QUICK_SEARCH["validation_examples"] if quick else VALIDATION_EXAMPLES,
        "train_examples": QUICK_SEARCH["train_examples"] if quick else None,
        "quick": quick,
        "seed": seed,
        "data": "embedded MNIST subset" if data_root is None else os.fspath(data_root),
    }


def _run(out_dir, *, quick, device, data_root, seed, progress) -> Dict[str, Any]:
    started = time.perf_counter()
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    settings = _settings(quick, seed, data_root)
    record = _continue_or_start(out / "results.json", settings)
    splits = _splits(settings, data_root)
    record["settings"].update(n_train=int(splits[0].shape[0]), n_validation=int(splits[2].shape[0]),
                              device=str(torch_device), cpu_threads=torch.get_num_threads(),
                              torch=torch.__version__, pyae=pyae.__version__)

    grid = [(model, options, n_hidden) for model, candidates in SEARCH_SPACE.items()
            for n_hidden in settings["n_hidden"] for options in (candidates[:1] if quick else candidates)]
    for number, (model, options, n_hidden) in enumerate(grid, start=1):
        candidate = _candidate_entry(record, model, options, n_hidden)
        if len(candidate["validation_accuracy"]) == len(settings["epochs"]):
            continue
        log(progress, f"[{number}/{len(grid)}] {model} {_describe(options)}, {n_hidden} hidden units")
        _search_candidate(candidate, settings, splits, torch_device, out, record, progress)

    record["selected"] = select(record)
    record["settings"]["complete"] = True
    record["settings"]["total_seconds"] = record["settings"].get("total_seconds", 0.0) + time.perf_counter() - started
    write_text(out / "results.json", json.dumps(record, indent=2) + "\n")
    save_picture(record, out / "validation_accuracy.png")
    write_text(out / "report.md", _report(record))
    log(progress, f"done; wrote {out / 'results.json'}")
    return record


def _continue_or_start(path: Path, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The record of an earlier, same-settings search at ``path``, or a new one."""
    if path.exists():
        with open(path) as f:
            earlier = json.load(f)
        # The grid may grow or shrink (its scored candidates are kept), nothing else may change.
        fixed = [k for k in settings if k != "search_space"]
        stored = {k: earlier.get("settings", {}).get(k) for k in fixed}
        if "candidates" not in earlier or json.loads(json.dumps({k: settings[k] for k in fixed})) != stored:
            raise ValueError(f"{path} holds another search (other settings or another experiment): "
                             "choose another output directory")
        grid = json.loads(json.dumps(settings["search_space"]))
        earlier["candidates"] = [c for c in earlier["candidates"] if c["options"] in grid.get(c["model"], [])]
        earlier["settings"].update(search_space=copy.deepcopy(settings["search_space"]), complete=False)
        earlier["candidates_order"] = list(SEARCH_SPACE)
        return earlier
    return {"settings": copy.deepcopy(dict(settings)), "candidates_order": list(SEARCH_SPACE), "candidates": []}


def _splits(settings: Mapping[str, Any], data_root) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, validation images, validation labels) from the training
    digits only: the validation rows are one seeded draw, the rest (in order) trains."""
    images, labels = load_mnist(data_root, "train")
    generator = torch.Generator().manual_seed(settings["seed"])
    if settings["train_examples"] is not None:
        images, labels = random_subset(settings["train_examples"] + settings["validation_examples"], images, labels,
                                       generator=generator)
    kept, held_out = split_rows(images.shape[0], settings["validation_examples"], generator=generator)
    return images[kept].numpy(), labels[kept].numpy(), images[held_out].numpy(), labels[held_out].numpy()


def _candidate_entry(record: Dict[str, Any], model: str, options: Mapping[str, Any], n_hidden: int) -> Dict[str, Any]:
    for candidate in record["candidates"]:
        if candidate["model"] == model and candidate["options"] == dict(options) and candidate["n_hidden"] == n_hidden:
            return candidate
    candidate = {"model": model, "options": dict(options), "n_hidden": n_hidden, "validation_accuracy": {},
                 "train_seconds": 0.0}
    record["candidates"].append(candidate)
    return candidate


def _search_candidate(candidate, settings, splits, device, out: Path, record, progress) -> None:
    """Train one candidate to each number of epochs in turn (resuming its own checkpoint) and
    score it after each; the record is written after every score."""
    from pyae.experiments.mnist import _fit_and_score as fit_and_score, build_pipeline

    train_x, train_y, val_x, val_y = splits
    images = torch.from_numpy(train_x)
    # Named by what the candidate is, not by its place in the record (a changed grid moves it).
    key = json.dumps([candidate["model"], candidate["options"], candidate["n_hidden"]], sort_keys=True)
    checkpoint = out / "checkpoints" / f"candidate_{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    for epochs in settings["epochs"]:
        if str(epochs) in candidate["validation_accuracy"]:
            continue
        config = _config(settings, candidate, epochs, device)
        model, history = train(config, images, checkpoint_path=checkpoint, resume=checkpoint.exists(), progress=False)
        candidate["train_seconds"] = float(sum(history["seconds"]))
        with torch.no_grad():
            features = [model.encode(torch.from_numpy(x).to(device)).float().cpu().numpy() for x in (train_x, val_x)]
        scores = fit_and_score(build_pipeline("raw", settings, seed=settings["seed"]), features[0], train_y,
                               features[1], val_y)
        candidate["validation_accuracy"][str(epochs)] = scores["test_accuracy"]
        write_text(out / "results.json", json.dumps(record, indent=2) + "\n")
        log(progress, f"    {epochs} epochs: validation accuracy {scores['test_accuracy']:.4f} "
                      f"(trained {candidate['train_seconds']:.0f}s)")
    checkpoint.unlink()


def _config(settings: Mapping[str, Any], candidate: Mapping[str, Any], epochs: int, device) -> TrainConfig:
    """The candidate's run, exactly as the comparison's pipeline would train it."""
    options = {"tied_weights": settings["tied_weights"], **candidate["options"]}
    return TrainConfig(
        n_hidden=candidate["n_hidden"], loss=settings["loss"], decoder_activation=settings["decoder"],
        epochs=epochs, batch_size=settings["batch_size"], optimizer=settings["optimizer"], lr=settings["lr"],
        momentum=settings["momentum"], seed=settings["seed"], device=str(device), **options)


# --------------------------------------------------------------------------- report


def _strength(options: Mapping[str, Any]) -> Tuple[str, Optional[float]]:
    """The regularizer's searched knob of a candidate and its value (None: nothing searched)."""
    for knob in ("noise_level", "sparsity_weight", "contractive_weight"):
        if knob in options and not (knob == "noise_level" and options.get("noise") == "mask"):
            return knob, float(options[knob])
    return "", None


def save_picture(record: Mapping[str, Any], path: PathLike) -> str:
    """One panel per model: each candidate's best validation accuracy (over the epochs)
    against its regularizer's strength, one line per weight tying and size; a model with
    nothing to vary shows its candidates as points. The selected setting is ringed."""
    from pyae.viz import _atomic_savefig, _require_matplotlib

    new_figure = _require_matplotlib()
    models = [m for m in record["candidates_order"] if any(c["model"] == m for c in record["candidates"])]
    selected = select(record)
    cols = 3
    rows = -(-len(models) // cols)
    fig = new_figure(figsize=(4.2 * cols, 3.2 * rows))
    for index, model in enumerate(models):
        ax = fig.add_subplot(rows, cols, index + 1)
        lines: Dict[Tuple[bool, int], List[Tuple[float, float]]] = {}
        knob = ""
        for candidate in (c for c in record["candidates"] if c["model"] == model and c["validation_accuracy"]):
            knob, value = _strength(candidate["options"])
            key = (bool(candidate["options"].get("tied_weights")), candidate["n_hidden"])
            best = 100 * max(candidate["validation_accuracy"].values())
            lines.setdefault(key, []).append((0.0 if value is None else value, best))
        for (tied, units), points in sorted(lines.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=4,
                    linestyle="-" if tied else "--", label=f"{'tied' if tied else 'untied'}, {units} units")
        choice = selected.get(model)
        if choice is not None:
            value = _strength(choice["options"])[1]
            ax.plot([0.0 if value is None else value], [100 * choice["validation_accuracy"]], marker="o",
                    markersize=11, markerfacecolor="none", markeredgecolor="black", linestyle="none",
                    label="selected")
        if knob:
            ax.set_xscale("log")
            ax.set_xlabel(knob)
        else:
            ax.set_xticks([])
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("best validation accuracy, %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Model selection: the best validation accuracy over the epochs of each candidate")
    fig.tight_layout()
    return _atomic_savefig(fig, path)


def _describe(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()) or "no regularizer"


def format_table(results: Mapping[str, Any], *, markdown: bool = True) -> str:
    """Every scored candidate: model, options, hidden units and the validation accuracy after
    each number of epochs; the selected setting of each model marked with ``*``."""
    epochs = [str(e) for e in results["settings"]["epochs"]]
    selected = results.get("selected") or select(results)
    header = ["model", "options", "hidden"] + [f"val. acc. {e} ep." for e in epochs]
    rows = []
    for candidate in results["candidates"]:
        chosen = selected.get(candidate["model"], {})
        cells = []
        for e in epochs:
            accuracy = candidate["validation_accuracy"].get(e)
            mark = ("*" if chosen.get("n_hidden") == candidate["n_hidden"] and chosen.get("options") == candidate["options"]
                    and str(chosen.get("epochs")) == e else "")
            cells.append("-" if accuracy is None else f"{100 * accuracy:.2f}%{mark}")
        rows.append([candidate["model"], _describe(candidate["options"]), str(candidate["n_hidden"])] + cells)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded)

    lines = [line(header)]
    if markdown:
        lines.append("|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
    return "\n".join(lines + [line(r) for r in rows])


def _report(record: Mapping[str, Any]) -> str:
    s = record["settings"]
    selected = record["selected"]
    lines = [
        "# pyae experiment selection: the MNIST comparison's settings, chosen on validation digits",
        "",
        f"{s['n_validation']} of the training digits ({s['data']}) were held out for validation (a draw with seed "
        f"{s['seed']}); every candidate trained on the other {s['n_train']} ({s['loss']} loss, {s['optimizer']} lr "
        f"{s['lr']:g} momentum {s['momentum']:g}, batch {s['batch_size']}, seed {s['seed']}) and was scored by a "
        f"logistic regression (C = {s['classifier']['C']:g}) fitted on its hidden representation of the training part "
        f"and scored on the validation part, after {', '.join(map(str, s['epochs']))} epochs. No test digit was read. "
        f"Each model's selected setting (marked *) is its best validation accuracy; ties go to fewer hidden units, "
        f"then fewer epochs.",
        "",
    ]
    if s["quick"]:
        lines += ["**This is a `--quick` smoke run**: its numbers say nothing about the methods.", ""]
    lines += [format_table(record), "", "![validation accuracy of every candidate](validation_accuracy.png)", "",
              "## Selected", ""]
    for model, choice in selected.items():
        lines.append(f"* `{model}`: {_describe(choice['options'])}, {choice['n_hidden']} hidden units, "
                     f"{choice['epochs']} epochs (validation accuracy {100 * choice['validation_accuracy']:.2f}%)")
    lines += ["", f"Device: {s['device']}, {s['cpu_threads']} CPU threads; total time {s['total_seconds']:.0f}s.", ""]
    return "\n".join(lines)
