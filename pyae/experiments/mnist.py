"""The lecture's comparison: which autoencoder learns the most useful features of MNIST?

Each model is a scikit-learn pipeline (:func:`build_pipeline`): a
:class:`pyae.sklearn.AutoencoderTransformer` (the ``"features"`` step) trained on the 5,000
embedded training digits, whose hidden representation of the clean input (no noise) feeds a
multinomial logistic regression (the ``"classifier"`` step), fitted on the training split and
scored on the 10,000 test digits. Raw pixels are the baseline (the classifier alone).
:func:`run_experiment` writes ``results.json``, ``report.md`` and the pictures (filters,
reconstructions of corrupted digits, the KL penalty) into one directory; ``pyae experiment``
is its command-line face.

It needs the optional dependencies: ``pip install 'pyae[experiment]'`` (matplotlib,
scikit-learn, tqdm).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

import pyae
from pyae import functional as PF
from pyae._typing import PathLike
from pyae.config import TrainConfig, resolve_device
from pyae.data import load_mnist, random_subset
from pyae.experiments.subspace import compare_subspaces, format_section
from pyae.experiments.filters import summarize_filters
from pyae.experiments._common import log, require, torch_threads, write_text

if TYPE_CHECKING:  # scikit-learn is optional (the experiment extra)
    from sklearn.pipeline import Pipeline

__all__ = ["DEFAULT_SETTINGS", "QUICK_SETTINGS", "MODELS", "build_pipeline", "run_experiment", "format_table"]

#: The settings every model shares. Each model's hidden units and epochs are in :data:`MODELS`.
DEFAULT_SETTINGS: Dict[str, Any] = {
    "loss": "cross_entropy",  # the lecture's choice for inputs in [0, 1]
    "decoder": "sigmoid",
    "tied_weights": False,
    "batch_size": 20,
    "optimizer": "sgd",
    "lr": 0.01,
    "momentum": 0.9,
    "train_examples": None,  # None: all of them
    "test_examples": None,
    "classifier": {"kind": "LogisticRegression (multinomial, lbfgs)", "C": 1.0, "max_iter": 1000,
                   "standardize": False},
}

#: A smoke run of well under a minute: small models (its ``n_hidden`` and ``epochs`` replace
#: every model's), a few epochs, subsets of the data.
QUICK_SETTINGS: Dict[str, Any] = {
    **DEFAULT_SETTINGS,
    "n_hidden": 100,
    "epochs": 5,
    "train_examples": 1000,
    "test_examples": 2000,
    "classifier": {**DEFAULT_SETTINGS["classifier"], "max_iter": 200},
}

#: The autoencoders compared, by name: their hidden units, epochs and regularizer, on top of
#: the shared settings. Chosen on validation digits by ``pyae experiment selection``
#: (:mod:`pyae.experiments.selection`; its record, :data:`pyae.experiments.selection.SELECTED_RECORD`,
#: ships with the package and the report cites it); the masking rows' noise levels are fixed
#: probes of the lecture's claim that filters widen with the noise.
MODELS: Dict[str, Dict[str, Any]] = {
    "vanilla": {"n_hidden": 1000, "epochs": 10, "tied_weights": True},
    "denoising_mask_0.25": {"n_hidden": 1000, "epochs": 20, "tied_weights": True, "noise": "mask",
                            "noise_level": 0.25},
    "denoising_mask_0.5": {"n_hidden": 2000, "epochs": 20, "noise": "mask", "noise_level": 0.5},
    "denoising_gaussian": {"n_hidden": 2000, "epochs": 30, "tied_weights": True, "noise": "gaussian",
                           "noise_level": 0.7},
    "sparse": {"n_hidden": 2000, "epochs": 30, "tied_weights": True, "sparsity_target": 0.05,
               "sparsity_weight": 0.5},
    "contractive": {"n_hidden": 2000, "epochs": 30, "tied_weights": True, "contractive_weight": 1.0},
}

_FILTER_UNITS = 100  # the first 100 units, a 10 x 10 grid
_TILE_SHAPE = (28, 28)  # an MNIST filter as an image


# --------------------------------------------------------------------------- helpers






@torch.no_grad()
def _encode_statistics(model: "pyae.Autoencoder", images: Tensor, chunk: int = 4096):
    """The hidden representation of ``images`` (CPU float32), the mean squared Frobenius
    norm of the encoder Jacobian and the mean activation of every unit, in chunks so
    that large datasets fit on a GPU."""
    weight, bias = model.encoder.weight, model.encoder.bias
    hidden, jacobian_sum, activation_sum = [], 0.0, 0.0
    for begin in range(0, images.shape[0], chunk):
        batch = images[begin:begin + chunk]
        out = PF.sigmoid_encoder(batch, weight, bias)
        hidden.append(out.hidden.float().cpu())
        # Both statistics are batch means: weight them by the chunk size.
        jacobian_sum = jacobian_sum + out.contractive.double() * batch.shape[0]
        activation_sum = activation_sum + out.mean_activation.double() * batch.shape[0]
    n = images.shape[0]
    return torch.cat(hidden), float(jacobian_sum / n), (activation_sum / n).cpu()


def build_pipeline(model: str, settings: Mapping[str, Any] = DEFAULT_SETTINGS, *, seed: int = 0,
                   device: str = "cpu", progress: bool = False) -> "Pipeline":
    """The scikit-learn pipeline of one row of the comparison, unfitted.

    Its steps: ``"features"``, a :class:`pyae.sklearn.AutoencoderTransformer` with the shared
    ``settings`` and the options of ``model`` in :data:`MODELS`, whose ``n_hidden`` and
    ``epochs`` the ``settings`` replace where they have them (``random_state=seed``, so it
    trains exactly like :func:`pyae.training.train` with ``seed=seed``); ``"scaler"``, a
    ``StandardScaler``, only when ``settings["classifier"]["standardize"]``; and
    ``"classifier"``, the logistic regression of ``settings["classifier"]`` (lbfgs, the default
    multinomial loss for 10 classes; ``random_state=seed`` matters only for solvers that
    shuffle, but fixes the run completely). ``model="raw"`` has no ``"features"`` step: the
    classifier on the pixels.

    ``pipeline.fit(images, labels)`` trains it (``images``: ``(N, 784)`` float32 in [0, 1], a
    numpy array); :func:`run_experiment` fits the same steps one after the other, the
    classifier on one thread.

    Args:
        model: ``"raw"`` or a key of :data:`MODELS`.
        settings: :data:`DEFAULT_SETTINGS`, :data:`QUICK_SETTINGS` or alike (the keys they have).
        seed: the autoencoder's ``random_state`` and the classifier's.
        device: where the autoencoder trains and encodes (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"auto"``); the data stay numpy arrays.
        progress: show the autoencoder's training progress.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if model != "raw" and model not in MODELS:
        raise ValueError(f"model must be 'raw' or one of {list(MODELS)}, got {model!r}")
    steps = []
    if model != "raw":
        from pyae.sklearn import AutoencoderTransformer

        shared = {k: settings[k] for k in ("loss", "tied_weights", "batch_size", "optimizer", "lr", "momentum")}
        # The settings' "decoder" (a results.json key) is TrainConfig's decoder_activation.
        options = {**shared, "decoder_activation": settings["decoder"], **MODELS[model],
                   **{k: settings[k] for k in ("n_hidden", "epochs") if k in settings}}
        steps.append(("features", AutoencoderTransformer(**options, random_state=seed, device=str(device),
                                                         progress=progress)))
    classifier = settings["classifier"]
    if classifier.get("standardize"):
        steps.append(("scaler", StandardScaler()))
    steps.append(("classifier", LogisticRegression(C=classifier["C"], max_iter=classifier["max_iter"],
                                                   random_state=seed)))
    return Pipeline(steps)


def _fit_and_score(pipeline: "Pipeline", train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray) -> Dict[str, Any]:
    """Fit ``pipeline`` (from :func:`build_pipeline`) on the training split, score it on both,
    and report on the classifier's fit.

    The steps are fitted one after the other, as ``pipeline.fit`` would: the ``"features"``
    step (the autoencoder) with torch's threads or on its device, then the rest (the scaler
    and the classifier) on the features with one BLAS/OpenMP thread. scikit-learn's OpenMP
    runtime and torch's (two libgomp copies in one process) oversubscribe the cores
    otherwise, which made the classifier's fit 10-20x slower on a 2-core machine; at these
    sizes one thread is fast anyway. The autoencoder must not train under that limit.
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    features, rest = train_x, pipeline
    if "features" in pipeline.named_steps:
        features = pipeline.named_steps["features"].fit_transform(train_x)
        rest = pipeline[1:]  # the same step objects: fitting it fits them in the pipeline
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1):
        warnings.simplefilter("always", ConvergenceWarning)
        rest.fit(features, train_y)
    seconds = time.perf_counter() - started
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {
        "test_accuracy": float(pipeline.score(test_x, test_y)),
        "train_accuracy": float(pipeline.score(train_x, train_y)),
        "classifier_seconds": seconds,
        "classifier_iterations": int(max(pipeline.named_steps["classifier"].n_iter_)),
        "classifier_converged": converged,
    }


def _noise_mean_square(config: TrainConfig, train_x: np.ndarray) -> float:
    """The expected mean squared change the model's input noise makes to a pixel of the
    training digits: ``q * mean(x^2)`` for masking noise (a pixel becomes 0 with probability
    q), ``std^2`` for Gaussian noise, 0 without noise. One scale for both kinds of noise."""
    if config.noise == "mask":
        return float(config.noise_level * np.mean(np.square(train_x, dtype=np.float64)))
    if config.noise == "gaussian":
        return float(config.noise_level) ** 2
    return 0.0




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
    """Run the comparison and write its results, report and pictures into ``out_dir``.

    Models (their names are keys of ``results["models"]``): ``raw`` (the pixels, no
    autoencoder), ``vanilla``, ``denoising_mask_0.25``, ``denoising_mask_0.5``,
    ``denoising_gaussian``, ``sparse`` and ``contractive`` (options in :data:`MODELS`,
    shared settings in :data:`DEFAULT_SETTINGS`).

    Files written: ``results.json`` (atomically), ``report.md``, ``filters_<name>.png``
    for every autoencoder (its first 100 filters), ``reconstructions_<name>.png`` (clean,
    corrupted and reconstructed test digits) for the denoising models,
    ``kl_penalty.png`` (the sparsity penalty with the sparse model's mean activations)
    and ``training_loss.png``.

    Args:
        out_dir: the output directory (created).
        quick: a smoke run (:data:`QUICK_SETTINGS`, about a minute on a small CPU); its
            accuracies say nothing about the methods.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for the autoencoders
            (the classifier runs on the CPU).
        data_root: a directory of the standard MNIST files; None: the embedded digits
            (5,000 for training, the official 10,000 for testing).
        seed: seeds the autoencoders (all start from the same weights), the noise, the
            shuffling, the quick run's subsets and the classifier.
        progress: report progress on stderr.
        num_threads: torch's intra-op CPU threads for the run (restored afterwards); None
            leaves torch's setting, except for ``quick`` runs, which use one thread (their
            small matrices gain nothing from more). On a busy machine (more runnable
            processes than cores) ``1`` can be many times faster: OpenMP threads that wait
            for a descheduled peer spin instead of working.

    Returns:
        The content of ``results.json``: ``{"settings": {...}, "models": {name: {...}}}``,
        each model with ``test_accuracy``, ``train_accuracy``, ``mean_squared_jacobian_norm``
        (the contractive penalty on the test set), ``mean_activation`` (the mean over units
        of rho_hat on the test set), ``train_seconds`` and ``config``; ``None`` where a
        statistic does not apply (the raw pixels). Each autoencoder also has
        ``final_loss``, ``final_reconstruction``, ``noise_mean_square`` (the expected mean
        squared change its input noise makes to a training pixel: ``q * mean(x^2)`` for masking,
        ``std^2`` for Gaussian noise, 0 without noise) and ``filter_smoothness`` and
        ``filter_extent`` (:mod:`pyae.experiments.filters` over all its units' filters, each
        ``{"median": m, "iqr": [q25, q75]}``). ``"subspace"``: the principal angles between a
        linear and a nonlinear autoencoder's decoder subspaces and the training digits' top
        principal subspace (:func:`pyae.experiments.subspace.compare_subspaces`).
    """
    require()
    with torch_threads(num_threads, default=1 if quick else None):
        return _run(out_dir, quick=quick, device=device, data_root=data_root, seed=seed, progress=progress)


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What every model of one run shares: where to write, the settings and the data."""

    out: Path
    settings: Dict[str, Any]
    seed: int
    device: torch.device
    progress: bool
    # The splits as numpy arrays (float32 images, int64 labels) on the CPU: what the pipelines
    # fit and score on (the autoencoder step moves the images to its device itself).
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_on_device: Tensor  # the test images on the autoencoders' device: statistics and pictures


class _Trained(NamedTuple):
    """One autoencoder's results: its ``results.json`` entry and what the summary pictures need."""

    entry: Dict[str, Any]
    reconstruction: List[float]  # the training reconstruction loss per epoch
    sparsity: Optional[Tuple[float, Tensor]]  # a sparse model's (target, mean activation per unit)


def _run(out_dir, *, quick, device, data_root, seed, progress) -> Dict[str, Any]:
    started = time.perf_counter()
    setup = _prepare(out_dir, quick=quick, device=device, data_root=data_root, seed=seed, progress=progress)
    record = _new_record(setup, quick=quick, data_root=data_root)
    models: Dict[str, Dict[str, Any]] = record["models"]
    total = len(MODELS) + 1

    log(progress, f"[1/{total}] raw pixels: logistic regression on {setup.train_x.shape[1]} features")
    models["raw"] = _evaluate_raw_pixels(setup)
    log(progress, f"    test accuracy {models['raw']['test_accuracy']:.4f}")

    histories: Dict[str, List[float]] = {}
    sparse_activation = None
    for index, name in enumerate(MODELS, start=2):
        trained = _train_and_evaluate(setup, name, step=f"[{index}/{total}]")
        models[name] = trained.entry
        histories[name] = trained.reconstruction
        if trained.sparsity is not None:
            sparse_activation = trained.sparsity
        # Partial results survive a crash or Ctrl-C in a later model.
        write_text(setup.out / "results.json", json.dumps(record, indent=2) + "\n")

    _save_summary_pictures(setup, histories, sparse_activation)
    if record["settings"]["selection"] is not None:
        from pyae.experiments import selection

        selection.save_picture(selection.load_selected(), setup.out / "selection.png")
    log(progress, "the linear autoencoder and the SVD: principal angles to the top principal subspace")
    record["subspace"] = compare_subspaces(torch.from_numpy(setup.train_x), quick=quick, seed=seed,
                                           device=str(setup.device))
    record["settings"]["total_seconds"] = time.perf_counter() - started
    record["settings"]["complete"] = True
    write_text(setup.out / "results.json", json.dumps(record, indent=2) + "\n")
    write_text(setup.out / "report.md", _report(record))
    log(progress, f"done in {record['settings']['total_seconds']:.0f}s; wrote {setup.out / 'results.json'}")
    return record


def _prepare(out_dir, *, quick, device, data_root, seed, progress) -> _Setup:
    """Create the output directory, choose the settings and the device, load the data."""
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = copy.deepcopy(QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    torch_device = resolve_device(device)
    train_x, train_y = load_mnist(data_root, "train")
    test_x, test_y = load_mnist(data_root, "test")
    # One generator for both splits: the test subset is drawn after the training one.
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = random_subset(settings["train_examples"], train_x, train_y, generator=generator)
    test_x, test_y = random_subset(settings["test_examples"], test_x, test_y, generator=generator)
    return _Setup(out=out, settings=settings, seed=seed, device=torch_device, progress=progress,
                  train_x=train_x.numpy(), train_y=train_y.numpy(), test_x=test_x.numpy(), test_y=test_y.numpy(),
                  test_on_device=test_x.to(torch_device))


def _new_record(setup: _Setup, *, quick: bool, data_root: Optional[PathLike]) -> Dict[str, Any]:
    """The skeleton of ``results.json``: the run's settings, no models yet, not complete."""
    return {
        "settings": {
            **setup.settings,
            "quick": quick,
            "seed": setup.seed,
            "device": str(setup.device),
            "data": "embedded MNIST subset" if data_root is None else os.fspath(data_root),
            "n_train": int(setup.train_x.shape[0]),
            "n_test": int(setup.test_x.shape[0]),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "pyae": pyae.__version__,
            "models": copy.deepcopy(MODELS),
            "selection": _selection_summary(),
            "complete": False,
        },
        "models": {},
    }


def _selection_summary() -> Optional[Dict[str, Any]]:
    """How :data:`MODELS` were chosen: the packaged record of ``pyae experiment selection``
    (its procedure's numbers and each model's selected setting), None if it is missing."""
    from pyae.experiments import selection

    if not selection.SELECTED_RECORD.exists():
        return None
    record = selection.load_selected()
    s = record["settings"]
    return {
        "record": f"pyae/experiments/{selection.SELECTED_RECORD.name}",
        "n_train": s["n_train"],
        "n_validation": s["n_validation"],
        "seed": s["seed"],
        "n_hidden": s["n_hidden"],
        "epochs": s["epochs"],
        "candidates": len(record["candidates"]),
        "selected": selection.select(record),
    }


def _evaluate_raw_pixels(setup: _Setup) -> Dict[str, Any]:
    """The baseline: the classifier on the pixels themselves."""
    pipeline = build_pipeline("raw", setup.settings, seed=setup.seed)
    return {
        **_fit_and_score(pipeline, setup.train_x, setup.train_y, setup.test_x, setup.test_y),
        "mean_squared_jacobian_norm": None,
        "mean_activation": None,
        "train_seconds": 0.0,
        "noise_mean_square": None,
        "filter_smoothness": None,
        "filter_extent": None,
        "config": None,
    }


def _train_and_evaluate(setup: _Setup, name: str, *, step: str) -> _Trained:
    """Fit the pipeline of the autoencoder ``name`` (:func:`build_pipeline`: the shared
    settings plus its options, then the classifier on its hidden representation), score it,
    and save its filters (and, for a denoising model, its reconstructions of corrupted test
    digits)."""
    from pyae import viz

    pipeline = build_pipeline(name, setup.settings, seed=setup.seed, device=str(setup.device),
                              progress=setup.progress)
    features = pipeline.named_steps["features"]
    log(setup.progress, f"{step} {name}: {features.n_hidden} hidden units, {features.epochs} epochs on {setup.device}")
    scores = _fit_and_score(pipeline, setup.train_x, setup.train_y, setup.test_x, setup.test_y)
    model, history, config = features.model_, features.history_, features.config_
    train_seconds = float(sum(history["seconds"]))

    _, jacobian, activation = _encode_statistics(model, setup.test_on_device)
    filters = model.filters()
    measures = summarize_filters(filters, _TILE_SHAPE)  # every unit, not only the pictured ones
    entry = {
        **scores,
        "mean_squared_jacobian_norm": jacobian,
        "mean_activation": float(activation.mean()),
        "train_seconds": train_seconds,
        "final_loss": history["loss"][-1],
        "final_reconstruction": history["reconstruction"][-1],
        "noise_mean_square": _noise_mean_square(config, setup.train_x),
        "filter_smoothness": measures["smoothness"],
        "filter_extent": measures["extent"],
        "config": config.to_dict(),
    }
    log(setup.progress, f"    test accuracy {entry['test_accuracy']:.4f} (train {entry['train_accuracy']:.4f}); "
                         f"trained in {train_seconds:.1f}s")

    viz.save_filter_grid(filters[:_FILTER_UNITS], setup.out / f"filters_{name}.png", rows=10, cols=10,
                         title=f"{name}: first {min(_FILTER_UNITS, config.n_hidden)} filters")
    if config.noise is not None:
        _save_denoising_picture(model, setup.test_on_device[:10], setup.out / f"reconstructions_{name}.png", name,
                                setup.seed)
    sparsity = None if config.sparsity_target is None else (config.sparsity_target, activation)
    return _Trained(entry, history["reconstruction"], sparsity)


def _save_summary_pictures(setup: _Setup, histories: Mapping[str, List[float]],
                           sparse_activation: Optional[Tuple[float, Tensor]]) -> None:
    """The KL penalty with the sparse model's units, and every model's training curve."""
    from pyae import viz

    if sparse_activation is not None:
        target, activation = sparse_activation
        viz.plot_kl_penalty(target, setup.out / "kl_penalty.png", current=activation,
                            title=f"KL sparsity penalty, target {target:g}: the sparse model's units (test set)")
    viz.save_line_plot(histories, setup.out / "training_loss.png", ylabel="reconstruction cross-entropy per digit"
                       if setup.settings["loss"] == "cross_entropy" else "reconstruction loss per digit",
                       title="Training reconstruction loss")


@torch.no_grad()
def _save_denoising_picture(model, clean: Tensor, path: Path, name: str, seed: int) -> None:
    generator = torch.Generator(device=clean.device).manual_seed(seed)
    corrupted = model.corrupt(clean, generator=generator)
    reconstructed = model.decode(model.encode(corrupted))
    from pyae import viz

    viz.save_image_rows({"clean": clean, "corrupted": corrupted, "reconstructed": reconstructed}, path,
                        title=f"{name}: test digits")


# --------------------------------------------------------------------------- report


def format_table(results: Mapping[str, Any], *, markdown: bool = True) -> str:
    """The results as a table: one row per model with its hidden units and epochs, its test
    and train accuracy, the mean squared Jacobian norm, the mean activation, the training time, and its filters'
    smoothness and extent (:mod:`pyae.experiments.filters`), each as the median
    [25th, 75th percentile] over the model's units."""
    # No "|" in the cells: it would split a markdown table's columns.
    header = ["model", "hidden", "epochs", "test acc.", "train acc.", "mean sq. Jacobian norm", "mean activation", "train s",
              "filter smoothness", "filter extent"]
    rows = []
    for name, entry in results["models"].items():
        def number(key, fmt):
            value = entry.get(key)
            return "-" if value is None else format(value, fmt)

        config = entry.get("config") or {}
        rows.append([
            name,
            str(config.get("n_hidden", "-")),
            str(config.get("epochs", "-")),
            f"{100 * entry['test_accuracy']:.2f}%",
            f"{100 * entry['train_accuracy']:.2f}%",
            number("mean_squared_jacobian_norm", ".3g"),
            number("mean_activation", ".3f"),
            number("train_seconds", ".1f"),
            _summary_cell(entry.get("filter_smoothness"), _SMOOTHNESS_FORMAT),
            _summary_cell(entry.get("filter_extent"), _EXTENT_FORMAT),
        ])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(cells):
        padded = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |" if markdown else "  ".join(padded)

    lines = [line(header)]
    if markdown:
        # The first column left-aligned, the numbers right-aligned.
        rule = ["-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)]
        lines.append("|" + "|".join(rule) + "|")
    lines += [line(r) for r in rows]
    return "\n".join(lines)


_SMOOTHNESS_FORMAT = ".3f"
_EXTENT_FORMAT = ".1f"


def _summary_cell(summary: Optional[Mapping[str, Any]], fmt: str) -> str:
    """``median [q25, q75]`` of a :func:`pyae.experiments.filters.summarize` result."""
    if not summary or summary.get("median") is None:
        return "-"
    q25, q75 = summary["iqr"]
    return f"{summary['median']:{fmt}} [{q25:{fmt}}, {q75:{fmt}}]"


def _report(record: Mapping[str, Any]) -> str:
    s = record["settings"]
    lines = _report_summary(record)
    if s["quick"]:
        lines += ["**This is a `--quick` smoke run** (few epochs, small models, data subsets): the numbers "
                  "and pictures check that the pipeline works and say nothing about the methods.", ""]
    lines += _selection_section(record)
    lines += _filter_section(record)
    lines += ["## Denoising", "", "Clean test digits, their corruption, and the reconstruction from the "
              "corrupted input:", ""]
    for name, options in s["models"].items():
        if options.get("noise"):
            lines += [f"![{name}](reconstructions_{name}.png)", ""]
    lines += ["## Sparsity", "", "The KL penalty against the mean activation, with the sparse model's "
              "units on the test set:", "", "![KL penalty](kl_penalty.png)", ""]
    if "subspace" in record:
        lines += [format_section(record["subspace"]), ""]
    lines += ["## Training", "", "![training loss](training_loss.png)", ""]
    return "\n".join(lines)


def _report_summary(record: Mapping[str, Any]) -> List[str]:
    """The report's head: what was trained, the table, the best model, the columns."""
    s = record["settings"]
    models = record["models"]
    best = max(models, key=lambda n: models[n]["test_accuracy"])
    raw = models["raw"]["test_accuracy"]
    return [
        "# pyae experiment: autoencoder features for MNIST",
        "",
        f"Each autoencoder (sigmoid hidden units, {s['loss']} loss, {s['optimizer']} "
        f"lr {s['lr']:g} momentum {s['momentum']:g}, batch {s['batch_size']}, seed "
        f"{s['seed']}; its hidden units and epochs in the table) was trained on {s['n_train']} training digits ({s['data']}). A logistic regression "
        f"(C = {s['classifier']['C']:g}) was fitted on its hidden representation of the clean training "
        f"digits and scored on {s['n_test']} test digits. `raw` is the same classifier on the pixels.",
        "",
        format_table(record),
        "",
        f"Best: **{best}**, {100 * models[best]['test_accuracy']:.2f}% test accuracy "
        f"(raw pixels: {100 * raw:.2f}%). Device: {s['device']}; total time {s.get('total_seconds', 0):.0f}s.",
        "",
        "`mean sq. Jacobian norm` is the contractive penalty on the test set: the mean squared Frobenius norm "
        "of the encoder's Jacobian, i.e. how strongly the representation reacts to a small change of "
        "the input. `mean activation` is the mean over the hidden units of their mean activation on the "
        "test set (the sparse model's target is "
        f"{s['models']['sparse'].get('sparsity_target')}). `filter smoothness` and `filter extent` describe "
        "the filters of all its units: the median [25th, 75th percentile] over the units "
        "(see Filters).",
        "",
        "Model options: " + "; ".join(
            f"`{n}`: " + (", ".join(f"{k}={v}" for k, v in o.items()) or "no regularizer")
            for n, o in s["models"].items()) + ".",
        "",
    ]


def _selection_section(record: Mapping[str, Any]) -> List[str]:
    """How the settings were chosen (the packaged selection record), and every regularized
    model's test accuracy against the vanilla one's in this run."""
    s, models = record["settings"], record["models"]
    lines = ["## How the settings were chosen", ""]
    summary = s.get("selection")
    if summary is None:
        lines += ["No selection record ships with this installation: the settings are the defaults in "
                  "`pyae.experiments.mnist.MODELS`.", ""]
    else:
        lines += [
            f"Each model's hidden units, epochs and regularizer strength were chosen by `pyae experiment selection` "
            f"(its record: `{summary['record']}`): {summary['n_validation']} of the training digits were held out "
            f"(seed {summary['seed']}), {summary['candidates']} candidates ({', '.join(map(str, summary['n_hidden']))} "
            f"hidden units, scored after {', '.join(map(str, summary['epochs']))} epochs) trained on the other "
            f"{summary['n_train']}, and each model kept its candidate with the best validation accuracy of this "
            "report's classifier. No test digit took part; the test accuracies below are this run's, measured once "
            "with the selected settings, trained on all the training digits.",
            "",
        ]
        if s["quick"] or s["seed"] != summary["seed"] or s["data"] != "embedded MNIST subset":
            lines += ["This run differs from the selection's (a `--quick` run, another seed or other data): its "
                      "models use the selected regularizers" + (", not the selected sizes and epochs" if s["quick"]
                                                                else "") + ".", ""]
        rows = [["model", "selected", "validation acc.", "test acc. (this run)"]]
        for name, choice in summary["selected"].items():
            options = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in choice["options"].items()) or "no regularizer"
            test = models.get(name, {}).get("test_accuracy")
            rows.append([f"`{name}`", f"{options}; {choice['n_hidden']} units, {choice['epochs']} epochs",
                         f"{100 * choice['validation_accuracy']:.2f}%", "-" if test is None else f"{100 * test:.2f}%"])
        lines += ["| " + " | ".join(rows[0]) + " |", "|---|---|---:|---:|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]] + [""]
        lines += ["Every candidate of the search, its best validation accuracy over the epochs:", "",
                  "![the selection's candidates](selection.png)", ""]
    if "vanilla" in models:
        vanilla = models["vanilla"]["test_accuracy"]
        others = [n for n in models if n not in ("raw", "vanilla")]
        if others:
            lines += ["Test accuracy against the vanilla autoencoder's "
                      f"({100 * vanilla:.2f}%), in points: "
                      + ", ".join(f"`{n}` {100 * (models[n]['test_accuracy'] - vanilla):+.2f}" for n in others)
                      + f"; {sum(models[n]['test_accuracy'] > vanilla for n in others)} of {len(others)} "
                      "regularized models beat it.", ""]
    return lines


def _filter_section(record: Mapping[str, Any]) -> List[str]:
    """The filters: what the measures mean, the lecture's claims measured, the pictures."""
    lines = [
        "## Filters", "",
        "Each tile is a unit's filter W_l / ||W_l||, the unit-norm input that excites it most, scaled to "
        f"[0, 1] (the first {_FILTER_UNITS} units). The table above measures the filters "
        f"of all units, each as a {_TILE_SHAPE[0]} x {_TILE_SHAPE[1]} image w (`pyae.experiments.filters`):",
        "",
        "* `filter smoothness`: the correlation between horizontally and vertically neighbouring pixels of "
        "the filter (centred by its mean). About 0 for pixel speckle (white noise gives 0 +- 0.03), near 1 "
        "for smooth strokes and blobs (0.94 for a round blob of standard deviation 2 pixels), -1 for a "
        "checkerboard. Thin strokes score lower than broad ones (a line one pixel wide: 0.46), and a smooth "
        "shape with speckle on it scores in between, by the speckle's share of the filter's energy.",
        "* `filter extent`: the effective number of pixels that carry the filter's energy, "
        "1 / sum_j w_j^4 for the unit-norm filter: m for a filter spread evenly over m pixels, about 25 "
        "for a round blob of standard deviation 2 pixels, about 261 for white noise over all 784 pixels.",
        "",
    ]
    lines += _claims(record)
    for name in record["models"]:
        if name != "raw":
            lines += [f"![filters of {name}](filters_{name}.png)", ""]
    return lines


def _verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def _median(entry: Mapping[str, Any], key: str) -> Optional[float]:
    summary = entry.get(key)
    return None if not summary else summary.get("median")


def _measured(entry: Mapping[str, Any]) -> bool:
    """Whether a model's entry has both filter medians."""
    return None not in (_median(entry, "filter_smoothness"), _median(entry, "filter_extent"))


def _claims(record: Mapping[str, Any]) -> List[str]:
    """The lecture's statements about the filters, each tested on this run's medians."""
    models, options = record["models"], record["settings"]["models"]
    denoising = [n for n in models if options.get(n, {}).get("noise") and _measured(models[n])]
    lines = [
        "### The lecture's claims, measured in this run", "",
        "The lecture says that the vanilla autoencoder \"does not learn many meaningful patterns\", that the "
        "hidden units of the denoising autoencoders act like pen-stroke detectors, and that the filters "
        "become wider as the noise grows. Each statement below compares the models' medians from the "
        "table and says whether it holds in this run. The interquartile ranges in the table show how much "
        "the units of one model differ from each other: a difference between medians well inside them is "
        "a small one. Each model's hidden units, epochs and tied or untied weights were selected on their own "
        "(the table and the settings above), so where they differ, a difference between two models is not "
        "their regularizers' alone." + (" In a `--quick` run the verdicts describe small, briefly trained models only."
                          if record["settings"]["quick"] else ""),
        "",
    ]
    statements = _vanilla_claims(models, denoising) + _width_claims(models, options, denoising)
    if not statements:
        return lines + ["No statement applies: the run lacks the vanilla or the denoising models.", ""]
    return lines + [f"{i}. {text}" for i, text in enumerate(statements, start=1)] + [""]


def _vanilla_claims(models: Mapping[str, Any], denoising: List[str]) -> List[str]:
    """Denoising filters smoother and more local (smaller extent) than the vanilla model's."""
    if "vanilla" not in models or not _measured(models["vanilla"]) or not denoising:
        return []
    smooth, wide = _median(models["vanilla"], "filter_smoothness"), _median(models["vanilla"], "filter_extent")

    def each(key, fmt, holds):
        medians = {n: _median(models[n], key) for n in denoising}
        return "; ".join(f"`{n}` {m:{fmt}}, {_verdict(holds(m))}" for n, m in medians.items())

    return [
        "**The denoising models' filters are smoother than the vanilla model's** (a higher median smoothness "
        f"than vanilla's {smooth:{_SMOOTHNESS_FORMAT}}): "
        + each("filter_smoothness", _SMOOTHNESS_FORMAT, lambda m: m > smooth) + ".",
        "**The denoising models' filters are more local than the vanilla model's** (a smaller median extent "
        f"than vanilla's {wide:{_EXTENT_FORMAT}} pixels): "
        + each("filter_extent", _EXTENT_FORMAT, lambda m: m < wide) + ".",
    ]


def _width_claims(models: Mapping[str, Any], options: Mapping[str, Any], denoising: List[str]) -> List[str]:
    """Wider filters (larger median extent) with more masking noise, and with stronger noise
    of either kind on one scale (the mean squared change the noise makes to a pixel)."""
    statements = []
    masking = sorted((n for n in denoising if options[n]["noise"] == "mask"), key=lambda n: options[n]["noise_level"])
    if len(masking) >= 2:
        extents = [_median(models[n], "filter_extent") for n in masking]
        statements.append(
            "**The filters become wider as the masking noise grows** (a larger median extent), q = "
            + " -> ".join(f"{options[n]['noise_level']:g}" for n in masking) + ": "
            + " -> ".join(f"{e:{_EXTENT_FORMAT}}" for e in extents) + f" pixels, {_verdict(_increasing(extents))}.")
    ordered = sorted((n for n in denoising if models[n].get("noise_mean_square") is not None),
                     key=lambda n: models[n]["noise_mean_square"])
    if len({options[n]["noise"] for n in ordered}) >= 2:
        extents = [_median(models[n], "filter_extent") for n in ordered]
        statements.append(
            "**The filters become wider as the noise grows, whatever its kind.** On one scale, the mean squared "
            "change the noise makes to a training pixel (q * mean x^2 for masking, std^2 for Gaussian noise), "
            "the order is " + ", ".join(f"`{n}` ({models[n]['noise_mean_square']:.3g})" for n in ordered)
            + "; their median extents in that order: " + ", ".join(f"{e:{_EXTENT_FORMAT}}" for e in extents)
            + f" pixels, {_verdict(_increasing(extents))}.")
    return statements


def _increasing(values: List[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))
