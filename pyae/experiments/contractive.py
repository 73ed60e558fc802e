"""The lecture's picture of the contractive autoencoder, measured: sensitive along u1, not along u2.

The lecture's illustration: data that vary strongly along a direction ``u1`` and only
weakly (noise) along ``u2``. The reconstruction loss wants the hidden units to follow every
variation of the input; the contractive penalty ``||J_x(h)||_F^2`` wants them to follow
none. Traded off, the encoder should stay sensitive along ``u1``, which matters for the
reconstruction, and become insensitive along ``u2``, which does not: the directions it keeps
are those of the largest variance, as in PCA ("What does this remind you of?").
:func:`run_experiment` builds that picture with synthetic data whose ``u1`` and ``u2`` are
known, trains a plain and a contractive autoencoder on it, and measures both encoders'
Jacobians; ``pyae experiment contractive`` is its command-line face. A default run takes
about ten seconds on a 2-core CPU (16 small models of 1,200 steps each), ``quick=True``
two or three (including the pictures).

Data (:func:`make_data`). ``x = s1 * t * u1 + s2 * e`` with ``t ~ N(0, 1)`` and
``e ~ N(0, I_n)``: variance ``s1^2 + s2^2`` along ``u1``, ``s2^2`` along every direction
orthogonal to it, ``u2`` among them. ``s1 = 1`` and ``s2 = 0.1`` (the noise's standard
deviation is a tenth of the signal's). The data are centred on 0 and of order 1, where the
sigmoid encoder is neither saturated nor linear; the linear decoder reproduces any range.
Two variants: ``"2d"`` (``n = 2``; ``u1`` at 30 degrees to the first axis, ``u2``
perpendicular to it) and ``"20d"`` (``n = 20``; ``u1`` and ``u2`` a random orthonormal pair
drawn from the seed, so one strong direction and 19 noise ones). Each variant draws
independent training (1,000), validation (500) and test (500) examples.

Models. Both are :class:`pyae.Autoencoder` with 4 sigmoid hidden units (overcomplete for
the 2-D data, undercomplete for the 20-D ones), a linear decoder, the squared error summed
over features and **tied weights** (``xhat = W^T h + c``). Tied weights matter here:
with a free decoder, the contractive penalty can be dodged by shrinking ``W`` and growing
the decoder's weight by the same factor, which keeps the reconstruction and makes the
penalty vanish without choosing any direction (Rifai et al., 2011, tie them too). The
plain model has no regularizer; the contractive one adds ``contractive_weight *
mean ||J||_F^2``. Both start from the same initial weights (the same seed) and train with
Adam (lr 0.01, batches of 50, 60 epochs: 1,200 steps) through :func:`pyae.training.train`.

The contractive weight is chosen by a rule that looks at the reconstruction only, never at
the sensitivities: from the grid 0.01, 0.03, ..., 3, 10 (half decades; one model trained per
weight), the **largest** weight whose reconstruction error on the validation split exceeds
the plain model's by at most 5% of the validation data's total variance (the regularized
model may give up 5% of the variance the plain one explains). Where no weight passes, the
smallest is used and the report says so. Every grid point's numbers are reported. (A first
grid that ended at 1 had every weight within the budget, so the rule just took its end; the
grid now reaches weights where the budget binds. With seed 0 it chose 1 either way.)

Measures, on the test split, from the encoder Jacobians ``J_i = dh/dx`` at every test point
(:func:`jacobians_by_jacrev`: ``torch.func.jacrev`` of the encoder, cross-checked against
the closed form ``diag(h (1 - h)) W`` of :func:`encoder_jacobians` and against the penalty
that pyae's fused operator computes):

- ``sensitivity_ratio``: the mean over test points of ``||J_i u1|| / ||J_i u2||``: how
  much more the code reacts to a step along ``u1`` than to one along ``u2``. A model
  is called *more selective* than another when its ratio is larger.
- ``sensitive_direction``: the leading right-singular vector of the stacked Jacobians (the
  top eigenvector of ``mean_i J_i^T J_i``), the input direction the code reacts to most on
  average; ``angle_to_pc1_degrees`` is its angle to the first principal component of the
  training data (between lines, so in [0, 90]). Within 10 degrees counts as *aligned*.
- ``pc_sensitivities``: ``sqrt(mean_i ||J_i p_j||^2)`` for every principal component
  ``p_j`` of the training data, largest variance first: the sensitivity spectrum.
- ``reconstruction_error``: the test loss (squared error summed over features, mean over
  examples) and ``relative_reconstruction_error``, that divided by the test data's total
  variance; ``mean_squared_jacobian_norm``, the contractive penalty on the test set.

Everything is fixed by ``seed``: the data (one ``torch.Generator``, the 2-D variant drawn
first), the initial weights and the batch order (``TrainConfig.seed``). The report states
what this run measured: whether the contractive model's ratio exceeds the plain one's, and
whether its sensitive direction lies within 10 degrees of the first principal component.

Needs matplotlib for the pictures: ``pip install 'pyae[experiment]'``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

import pyae
from pyae import functional as PF
from pyae._typing import PathLike
from pyae.config import TrainConfig, resolve_device
from pyae.training import train
from pyae.validation import check_bool, check_device, check_int
from pyae.experiments._common import INSTALL_HINT, log, torch_threads, write_text

__all__ = [
    "DEFAULT_SETTINGS",
    "QUICK_SETTINGS",
    "SyntheticData",
    "make_data",
    "encoder_jacobians",
    "jacobians_by_jacrev",
    "sensitivity_ratio",
    "sensitive_direction",
    "principal_components",
    "angle_degrees",
    "measure",
    "run_experiment",
    "format_table",
]

#: The settings of the default run (the module docstring explains each choice).
DEFAULT_SETTINGS: Dict[str, Any] = {
    "variants": {"2d": 2, "20d": 20},  # name -> number of input features n
    "signal_scale": 1.0,  # s1: the standard deviation along u1 (besides the noise)
    "noise_scale": 0.1,  # s2: the noise's standard deviation along every axis
    "u1_angle_degrees_2d": 30.0,  # the 2-D variant's u1, from the first axis
    "n_train": 1000,
    "n_val": 500,
    "n_test": 500,
    "n_hidden": 4,
    "tied_weights": True,
    "decoder": "linear",
    "loss": "mse",
    "optimizer": "adam",
    "lr": 0.01,
    "batch_size": 50,
    "epochs": 60,
    "contractive_weights": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],  # the grid of the selection rule
    "selection_budget": 0.05,  # the share of the validation variance the rule may give up
    "aligned_degrees": 10.0,  # an angle to PC1 up to this counts as aligned
}

#: A smoke run of two or three seconds: fewer examples and epochs, a three-point grid.
QUICK_SETTINGS: Dict[str, Any] = {
    **DEFAULT_SETTINGS,
    "n_train": 400,
    "n_val": 200,
    "n_test": 200,
    "epochs": 15,
    "contractive_weights": [0.1, 1.0, 10.0],
}

#: The models of each variant, in the order of the tables.
MODELS = ("plain", "contractive")
_MEASURED_KEYS = ("sensitivity_ratio", "angle_to_pc1_degrees", "reconstruction_error")


# --------------------------------------------------------------------------- the data


class _Figure(NamedTuple):
    """What the pictures need of one variant beyond ``results.json``."""

    data: "SyntheticData"
    matrices: Dict[str, Tensor]  # model name -> mean_i J_i^T J_i on the test split


class SyntheticData(NamedTuple):
    """One variant's data and its known directions (float64, on the CPU).

    Attributes:
        train, val, test: ``(N, n)`` examples of the three splits.
        u1: the strong direction, a unit vector ``(n,)``.
        u2: a weak (noise) direction, a unit vector orthogonal to ``u1``.
    """

    train: Tensor
    val: Tensor
    test: Tensor
    u1: Tensor
    u2: Tensor


def make_data(n_inputs: int, sizes: Sequence[int], *, signal_scale: float = 1.0, noise_scale: float = 0.1,
              u1_angle_degrees: float = 30.0, generator: Optional[torch.Generator] = None) -> SyntheticData:
    """Draw ``x = signal_scale * t * u1 + noise_scale * e`` (``t ~ N(0, 1)``, ``e ~ N(0, I)``).

    Args:
        n_inputs: ``n >= 2``. For ``n = 2``, ``u1`` is at ``u1_angle_degrees`` from the first
            axis and ``u2`` is it turned by 90 degrees; otherwise both are a random
            orthonormal pair drawn from ``generator``.
        sizes: the numbers of training, validation and test examples (each >= 1).
        signal_scale: ``s1``, the standard deviation of the signal along ``u1``.
        noise_scale: ``s2``, the standard deviation of the isotropic noise.
        u1_angle_degrees: the 2-D variant's ``u1`` (ignored for ``n > 2``).
        generator: the random stream (a fresh unseeded one if None).

    Returns:
        A :class:`SyntheticData`.
    """
    n_inputs = check_int(n_inputs, "n_inputs", 2)
    sizes = [check_int(s, "sizes[i]", 1) for s in sizes]
    if len(sizes) != 3:
        raise ValueError(f"sizes must be (n_train, n_val, n_test), got {sizes!r}")
    generator = generator if generator is not None else torch.Generator()
    kw = dict(generator=generator, dtype=torch.float64)
    if n_inputs == 2:
        angle = math.radians(u1_angle_degrees)
        u1 = torch.tensor([math.cos(angle), math.sin(angle)], dtype=torch.float64)
        u2 = torch.tensor([-math.sin(angle), math.cos(angle)], dtype=torch.float64)
    else:
        q, _ = torch.linalg.qr(torch.randn(n_inputs, 2, **kw))
        u1, u2 = q[:, 0].contiguous(), q[:, 1].contiguous()
    splits = []
    for size in sizes:
        t = torch.randn(size, 1, **kw)
        noise = torch.randn(size, n_inputs, **kw)
        splits.append(signal_scale * t * u1 + noise_scale * noise)
    return SyntheticData(*splits, u1=u1, u2=u2)


# ------------------------------------------------------------------- the Jacobian measures


def _encoder_parameters(model: "pyae.Autoencoder") -> Tuple[Tensor, Tensor]:
    """The encoder's weight ``(k, n)`` and bias ``(k,)``, detached, float64, on the CPU."""
    weight = model.encoder.weight.detach().to("cpu", torch.float64)
    bias = model.encoder.bias.detach().to("cpu", torch.float64)
    return weight, bias


def encoder_jacobians(weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """The closed form of the sigmoid encoder's Jacobian at every row of ``x``.

    ``h = sigmoid(W x + b)`` has ``dh/dx = diag(h (1 - h)) W``.

    Args:
        weight: ``W``, ``(k, n)``.
        bias: ``b``, ``(k,)``.
        x: ``(B, n)`` points.

    Returns:
        ``(B, k, n)``: ``J[i, l, j] = dh_l / dx_j`` at ``x[i]``.
    """
    h = torch.sigmoid(F.linear(x, weight, bias))
    return (h * (1.0 - h)).unsqueeze(2) * weight.unsqueeze(0)


def jacobians_by_jacrev(weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """The sigmoid encoder's Jacobian at every row of ``x`` by ``torch.func.jacrev``
    (vectorized over the rows with ``torch.func.vmap``): the general way, which knows nothing
    of the closed form. Same arguments and result as :func:`encoder_jacobians`.

    (pyae's fused encoder is a C++ autograd function, which functorch cannot transform, so
    this differentiates the same formula written in plain torch operations.)
    """

    def encode_one(point: Tensor) -> Tensor:
        return torch.sigmoid(weight @ point + bias)

    return torch.func.vmap(torch.func.jacrev(encode_one))(x)


def _check_jacobians(jacobians: Tensor) -> Tensor:
    if not isinstance(jacobians, Tensor) or jacobians.dim() != 3 or jacobians.shape[0] < 1:
        raise ValueError("jacobians must be a (B, k, n) tensor with B >= 1")
    return jacobians


def _unit(v: Tensor, name: str) -> Tensor:
    if not isinstance(v, Tensor) or v.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor")
    norm = v.norm()
    if not norm > 0:
        raise ValueError(f"{name} must be a non-zero vector")
    return v / norm


def sensitivity_ratio(jacobians: Tensor, u1: Tensor, u2: Tensor) -> float:
    """The mean over points of ``||J_i u1|| / ||J_i u2||`` (``u1``, ``u2`` normalized first).

    Args:
        jacobians: ``(B, k, n)``, e.g. from :func:`jacobians_by_jacrev`.
        u1, u2: ``(n,)`` directions.

    Returns:
        The ratio as a float (``inf`` at a point where the code does not react to ``u2``
        at all).
    """
    jacobians = _check_jacobians(jacobians).double()
    u1, u2 = _unit(u1.double(), "u1"), _unit(u2.double(), "u2")
    along_1 = (jacobians @ u1).norm(dim=1)
    along_2 = (jacobians @ u2).norm(dim=1)
    return float((along_1 / along_2).mean())


def _sensitivity_matrix(jacobians: Tensor) -> Tensor:
    """``M = mean_i J_i^T J_i``, ``(n, n)``, float64."""
    jacobians = _check_jacobians(jacobians).double()
    return torch.einsum("bki,bkj->ij", jacobians, jacobians) / jacobians.shape[0]


def sensitive_direction(jacobians: Tensor) -> Tuple[Tensor, Tensor]:
    """The input directions the code reacts to, strongest first.

    The right-singular vectors of the stacked Jacobians ``[J_1; ...; J_B]``, computed as the
    eigenvectors of ``M = mean_i J_i^T J_i``: ``v^T M v`` is the mean squared change of the
    code per unit step along ``v``.

    Args:
        jacobians: ``(B, k, n)``.

    Returns:
        ``(leading, sensitivities)``: the leading unit vector ``(n,)`` (its sign is arbitrary)
        and ``sqrt`` of ``M``'s eigenvalues, largest first, ``(n,)``: the root-mean-square
        sensitivity along each singular direction.
    """
    values, vectors = torch.linalg.eigh(_sensitivity_matrix(jacobians))
    return vectors[:, -1].clone(), values.flip(0).clamp_min(0.0).sqrt()


def principal_components(x: Tensor) -> Tuple[Tensor, Tensor]:
    """The principal components of the rows of ``x``.

    Returns:
        ``(components, variances)``: ``(n, n)`` with one unit component per **column**,
        largest variance first, and the variances ``(n,)`` (of the centred data, divided by
        ``N - 1``).
    """
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 2:
        raise ValueError("x must be a (N, n) tensor with N >= 2")
    centred = x.double() - x.double().mean(0)
    covariance = centred.T @ centred / (x.shape[0] - 1)
    values, vectors = torch.linalg.eigh(covariance)
    return vectors.flip(1).contiguous(), values.flip(0).clamp_min(0.0)


def angle_degrees(a: Tensor, b: Tensor) -> float:
    """The angle between the lines spanned by ``a`` and ``b``, in degrees, in [0, 90]
    (the sign of either vector does not matter).

    Computed as ``atan2(|a x b|, |a . b|)`` of the unit vectors, accurate near 0 as well as
    near 90 degrees.

    Raises:
        ValueError: a vector is not 1-D, is zero, or the lengths differ.
    """
    a, b = _unit(torch.as_tensor(a).double(), "a"), _unit(torch.as_tensor(b).double(), "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same length, got {a.shape[0]} and {b.shape[0]}")
    cosine = torch.dot(a, b)
    sine = (b - cosine * a).norm()
    return math.degrees(math.atan2(float(sine), abs(float(cosine))))


def measure(model: "pyae.Autoencoder", data: SyntheticData, *, components: Optional[Tensor] = None) -> Dict[str, Any]:
    """Measure a trained model on ``data.test``.

    Args:
        model: a one-hidden-layer :class:`pyae.Autoencoder`.
        data: its data; the measures use ``data.test``, ``data.u1`` and ``data.u2``.
        components: the training data's principal components (columns, largest variance
            first); computed from ``data.train`` if None.

    Returns:
        ``sensitivity_ratio``, ``sensitive_direction`` (a list, oriented to have a
        non-negative component along PC1), ``angle_to_pc1_degrees``, ``angle_to_u1_degrees``,
        ``pc_sensitivities`` (a list), ``reconstruction_error``,
        ``relative_reconstruction_error``, ``mean_squared_jacobian_norm`` and
        ``jacobian_check``: the largest absolute difference between the jacrev and the
        closed-form Jacobians, and the relative difference between the mean squared
        Frobenius norm from them and the penalty of pyae's fused operator.
    """
    return _measure(model, data, components)[0]


def _measure(model: "pyae.Autoencoder", data: SyntheticData,
             components: Optional[Tensor]) -> Tuple[Dict[str, Any], Tensor]:
    """:func:`measure`'s dict and the sensitivity matrix ``mean_i J_i^T J_i`` (for the picture)."""
    if components is None:
        components, _ = principal_components(data.train)
    pc1 = components[:, 0]
    x = data.test
    weight, bias = _encoder_parameters(model)
    jacobians = jacobians_by_jacrev(weight, bias, x)
    closed_form = encoder_jacobians(weight, bias, x)
    direction, _ = sensitive_direction(jacobians)
    if torch.dot(direction, pc1) < 0:
        direction = -direction
    pc_sensitivities = (jacobians @ components).pow(2).sum(1).mean(0).sqrt()  # (n,): one per component
    squared_norm = float(jacobians.pow(2).sum((1, 2)).mean())

    parameter = model.encoder.weight
    x_model = x.to(device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reconstruction = float(model(x_model).terms["reconstruction"])
        fused = float(PF.sigmoid_encoder(x_model, model.encoder.weight, model.encoder.bias).contractive)
    model.train(was_training)
    total_variance = float(x.var(0).sum())
    measured = {
        "sensitivity_ratio": sensitivity_ratio(jacobians, data.u1, data.u2),
        "sensitive_direction": direction.tolist(),
        "angle_to_pc1_degrees": angle_degrees(direction, pc1),
        "angle_to_u1_degrees": angle_degrees(direction, data.u1),
        "pc_sensitivities": pc_sensitivities.tolist(),
        "reconstruction_error": reconstruction,
        "relative_reconstruction_error": reconstruction / total_variance,
        "mean_squared_jacobian_norm": squared_norm,
        "jacobian_check": {
            "jacrev_vs_closed_form_max_abs": float((jacobians - closed_form).abs().max()),
            "penalty_vs_fused_operator_rel": abs(squared_norm - fused) / max(abs(squared_norm), 1e-300),
        },
    }
    return measured, _sensitivity_matrix(jacobians)


# ------------------------------------------------------------------------------ helpers


def _require_matplotlib() -> None:
    try:
        __import__("matplotlib")
    except ImportError as err:
        raise ImportError(f"the contractive experiment needs matplotlib: {INSTALL_HINT}") from err






def _config(settings: Mapping[str, Any], contractive_weight: float, seed: int, device: torch.device) -> TrainConfig:
    return TrainConfig(
        n_hidden=settings["n_hidden"], tied_weights=settings["tied_weights"], decoder_activation=settings["decoder"],
        loss=settings["loss"], contractive_weight=contractive_weight, epochs=settings["epochs"],
        batch_size=settings["batch_size"], optimizer=settings["optimizer"], lr=settings["lr"], seed=seed,
        device=str(device),
    )


def _val_error(model: "pyae.Autoencoder", val: Tensor) -> float:
    """The reconstruction loss on the validation split (in eval mode)."""
    parameter = model.encoder.weight
    with torch.no_grad():
        return float(model(val.to(device=parameter.device, dtype=parameter.dtype)).terms["reconstruction"])


# ------------------------------------------------------------------------------ the run


def run_experiment(
    out_dir: PathLike,
    *,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Train the plain and the contractive autoencoder on each variant, measure their
    Jacobians, and write ``results.json``, ``report.md``, ``contractive.png`` (the data,
    ``u1``, ``u2`` and each model's sensitivity) and ``sensitivity.png`` (each model's
    sensitivity along every principal component) into ``out_dir``.

    Args:
        out_dir: the output directory (created).
        quick: a smoke run (:data:`QUICK_SETTINGS`, two or three seconds); its numbers say little
            about the method.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: where the models train
            (the measures run in float64 on the CPU).
        seed: fixes the data, the initial weights and the batch order (>= 0).
        progress: report progress on stderr.
        num_threads: torch's intra-op CPU threads for the run (restored afterwards); None:
            one, since these tiny matrices gain nothing from more.

    Returns:
        The content of ``results.json``: ``{"settings": {...}, "variants": {name: {...}}}``,
        each variant with ``data`` (``u1``, ``u2``, ``pc1``, the variances...),
        ``selection`` (the contractive weight's rule: every grid point's validation error
        and measures, the chosen weight), ``models`` (``plain`` and ``contractive``, each the
        dict of :func:`measure` plus ``contractive_weight``, ``train_seconds``,
        ``final_loss`` and ``config``) and ``comparison`` (``more_selective``,
        ``ratio_gain``, ``contractive_aligned_with_pc1``, ``plain_aligned_with_pc1``).

    Raises:
        TypeError, ValueError: a bad argument.
        ImportError: matplotlib is missing.
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path (str or os.PathLike), got {type(out_dir).__name__}")
    check_bool(quick, "quick")
    check_bool(progress, "progress")
    device = check_device(device)
    seed = check_int(seed, "seed", 0)
    if seed >= 2**63:
        raise ValueError(f"seed must be < 2**63, got {seed}")
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", 1)
    _require_matplotlib()
    torch_device = resolve_device(device)
    with torch_threads(num_threads, default=1):
        return _run(Path(os.fspath(out_dir)), quick=quick, device=torch_device, seed=seed, progress=progress)


def _run(out: Path, *, quick: bool, device: torch.device, seed: int, progress: bool) -> Dict[str, Any]:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    settings = copy.deepcopy(QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    record: Dict[str, Any] = {
        "settings": {**settings, "quick": quick, "seed": seed, "device": str(device),
                     "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                     "pyae": pyae.__version__, "complete": False},
        "variants": {},
    }
    generator = torch.Generator().manual_seed(seed)
    figures: Dict[str, _Figure] = {}
    for name, n_inputs in settings["variants"].items():
        data = make_data(n_inputs, (settings["n_train"], settings["n_val"], settings["n_test"]),
                         signal_scale=settings["signal_scale"], noise_scale=settings["noise_scale"],
                         u1_angle_degrees=settings["u1_angle_degrees_2d"], generator=generator)
        record["variants"][name], matrices = _run_variant(name, data, settings, seed, device, progress)
        figures[name] = _Figure(data, matrices)
        # Partial results survive a crash or Ctrl-C in a later variant.
        write_text(out / "results.json", json.dumps(record, indent=2) + "\n")

    _save_pictures(out, record, figures)
    record["settings"]["total_seconds"] = time.perf_counter() - started
    record["settings"]["complete"] = True
    write_text(out / "results.json", json.dumps(record, indent=2) + "\n")
    write_text(out / "report.md", _report(record))
    log(progress, f"done in {record['settings']['total_seconds']:.1f}s; wrote {out / 'results.json'}")
    return record


def _train_one(data: SyntheticData, settings: Mapping[str, Any], weight: float, seed: int,
               device: torch.device) -> Tuple["pyae.Autoencoder", Dict[str, Any]]:
    config = _config(settings, weight, seed, device)
    model, history = train(config, data.train, progress=False)  # train() casts to config.dtype
    return model, {"contractive_weight": weight, "train_seconds": float(sum(history["seconds"])),
                   "final_loss": history["loss"][-1], "config": config.to_dict()}


def _run_variant(name: str, data: SyntheticData, settings: Mapping[str, Any], seed: int, device: torch.device,
                 progress: bool) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    components, variances = principal_components(data.train)
    pc1 = components[:, 0]
    if torch.dot(pc1, data.u1) < 0:
        pc1 = -pc1
        components[:, 0] = pc1
    n = data.train.shape[1]
    val_variance = float(data.val.var(0).sum())
    entry: Dict[str, Any] = {"data": {
        "n_inputs": n, "u1": data.u1.tolist(), "u2": data.u2.tolist(), "pc1": pc1.tolist(),
        "pc1_to_u1_degrees": angle_degrees(pc1, data.u1),
        "pc_variances": variances.tolist(), "pc1_variance_share": float(variances[0] / variances.sum()),
        "n_train": data.train.shape[0], "n_val": data.val.shape[0], "n_test": data.test.shape[0],
    }}

    plain, plain_info = _train_one(data, settings, 0.0, seed, device)
    plain_val = _val_error(plain, data.val)
    measured, plain_matrix = _measure(plain, data, components)
    models = {"plain": {**measured, **plain_info, "val_reconstruction_error": plain_val}}
    log(progress, f"[{name}] plain: ratio {models['plain']['sensitivity_ratio']:.3g}, "
                   f"angle to PC1 {models['plain']['angle_to_pc1_degrees']:.1f} deg, "
                   f"val error {plain_val:.4g} ({plain_info['train_seconds']:.1f}s)")

    budget = plain_val + settings["selection_budget"] * val_variance
    grid: List[Dict[str, Any]] = []
    candidates = {}
    for weight in settings["contractive_weights"]:
        model, info = _train_one(data, settings, float(weight), seed, device)
        val = _val_error(model, data.val)
        measured, matrix = _measure(model, data, components)
        grid.append({"contractive_weight": float(weight), "val_reconstruction_error": val,
                     "within_budget": val <= budget, **{k: measured[k] for k in _MEASURED_KEYS},
                     "train_seconds": info["train_seconds"]})
        candidates[float(weight)] = ({**measured, **info, "val_reconstruction_error": val}, matrix)
        log(progress, f"[{name}] contractive {weight:g}: val error {val:.4g} (budget {budget:.4g}), ratio "
                       f"{measured['sensitivity_ratio']:.3g}, angle to PC1 {measured['angle_to_pc1_degrees']:.1f} deg "
                       f"({info['train_seconds']:.1f}s)")
    passing = [g["contractive_weight"] for g in grid if g["within_budget"]]
    chosen = max(passing) if passing else min(candidates)
    models["contractive"], contractive_matrix = candidates[chosen]
    entry["selection"] = {
        "rule": "the largest grid weight whose validation reconstruction error is at most the plain model's plus "
                f"{settings['selection_budget']:g} x the validation data's total variance; the smallest if none",
        "plain_val_reconstruction_error": plain_val, "val_total_variance": val_variance, "budget": budget,
        "grid": grid, "chosen": chosen, "rule_met": bool(passing),
    }
    entry["models"] = models

    plain_ratio = models["plain"]["sensitivity_ratio"]
    contractive_ratio = models["contractive"]["sensitivity_ratio"]
    aligned = settings["aligned_degrees"]
    entry["comparison"] = {
        "more_selective": contractive_ratio > plain_ratio,
        "ratio_gain": contractive_ratio / plain_ratio,
        "contractive_aligned_with_pc1": models["contractive"]["angle_to_pc1_degrees"] <= aligned,
        "plain_aligned_with_pc1": models["plain"]["angle_to_pc1_degrees"] <= aligned,
    }
    return entry, {"plain": plain_matrix, "contractive": contractive_matrix}


# ---------------------------------------------------------------------------- pictures


def _save_pictures(out: Path, record: Mapping[str, Any], figures: Mapping[str, "_Figure"]) -> None:
    from pyae.viz import _atomic_savefig, _require_matplotlib as viz_matplotlib

    new_figure = viz_matplotlib()
    styles = {"plain": dict(color="C0", linestyle="--"), "contractive": dict(color="C3", linestyle="-")}

    # The data in the (u1, u2) plane with each model's sensitivity in that plane.
    fig = new_figure(figsize=(6.5 * len(figures), 4.9))
    for index, (name, (data, matrices)) in enumerate(figures.items()):
        entry = record["variants"][name]
        ax = fig.add_subplot(1, len(figures), index + 1)
        basis = torch.stack([data.u1, data.u2], 1)  # (n, 2)
        plane = data.train @ basis
        ax.scatter(plane[:, 0], plane[:, 1], s=4, color="0.6", alpha=0.5, label="training data")
        reach = float(3.0 * plane[:, 0].std())
        arrow = dict(width=0.012 * reach, length_includes_head=True, zorder=4)
        ax.arrow(0, 0, 0.45 * reach, 0, color="k", **arrow)
        ax.arrow(0, 0, 0, 0.45 * reach, color="0.35", **arrow)
        ax.annotate("u1", (0.45 * reach, 0.04 * reach), fontsize=11)
        ax.annotate("u2", (0.03 * reach, 0.47 * reach), fontsize=11)
        pc1 = torch.tensor(entry["data"]["pc1"], dtype=torch.float64) @ basis
        ax.plot([-reach * pc1[0], reach * pc1[0]], [-reach * pc1[1], reach * pc1[1]], color="C2", linewidth=1,
                linestyle=":", label=f"data PC1 ({entry['data']['pc1_to_u1_degrees']:.1f} deg from u1)")
        phi = torch.linspace(0, 2 * math.pi, 361, dtype=torch.float64)
        circle = torch.stack([phi.cos(), phi.sin()], 1)  # unit directions in the plane
        for model_name in MODELS:
            result = entry["models"][model_name]
            # The sensitivity ellipse in the plane: M^(1/2) applied to the unit circle, with
            # M = mean_i J_i^T J_i restricted to the plane. Its semi-axes lie along M's
            # eigenvectors, as long as the RMS sensitivity ||J v|| along them.
            values, vectors = torch.linalg.eigh(basis.T @ matrices[model_name] @ basis)
            root = vectors @ torch.diag(values.clamp_min(0.0).sqrt()) @ vectors.T
            ellipse = circle @ root
            ellipse = 0.6 * reach * ellipse / values.clamp_min(0.0).sqrt().max().clamp_min(1e-300)
            ax.plot(ellipse[:, 0], ellipse[:, 1], linewidth=1.5, **styles[model_name],
                    label=f"{model_name}: sensitivity ellipse (ratio {result['sensitivity_ratio']:.3g})")
            direction = torch.tensor(result["sensitive_direction"], dtype=torch.float64) @ basis
            ax.plot([-reach * direction[0], reach * direction[0]], [-reach * direction[1], reach * direction[1]],
                    linewidth=2.5, alpha=0.6, color=styles[model_name]["color"],
                    label=f"{model_name}: sensitive direction ({result['angle_to_pc1_degrees']:.1f} deg from PC1)")
        ax.set_aspect("equal")
        ax.set_xlim(-1.15 * reach, 1.15 * reach)
        ax.set_ylim(-0.7 * reach, 0.7 * reach)
        ax.set_xlabel("x . u1")
        ax.set_ylabel("x . u2")
        dims = data.train.shape[1]
        ax.set_title(f"{name}: n = {dims}" + ("" if dims == 2 else " (projected on the u1, u2 plane)"), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle("Data, u1, u2 and each encoder's sensitivity ellipse (semi-axes: RMS ||J v|| over the test "
                 "points, scaled to the largest)", fontsize=10)
    fig.tight_layout()
    # The legends sit below the axes: the tight box grows the image to include them.
    _atomic_savefig(fig, out / "contractive.png", bbox_inches="tight", pad_inches=0.1)

    # The sensitivity spectrum: along every principal component of the training data.
    fig = new_figure(figsize=(5.0 * len(figures), 4.0))
    for index, name in enumerate(figures):
        entry = record["variants"][name]
        ax = fig.add_subplot(1, len(figures), index + 1)
        for model_name in MODELS:
            values = entry["models"][model_name]["pc_sensitivities"]
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=4, **styles[model_name],
                    label=f"{model_name} (weight {entry['models'][model_name]['contractive_weight']:g})")
        ax.set_yscale("log")
        ax.set_xticks(range(1, len(values) + 1))
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("principal component of the training data (largest variance first)", fontsize=9)
        ax.set_ylabel("RMS ||J p|| over test points")
        ax.set_title(f"{name}: sensitivity along each principal component", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_savefig(fig, out / "sensitivity.png")


# ------------------------------------------------------------------------------ the report


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first two columns left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_table(results: Mapping[str, Any]) -> str:
    """The measured numbers as a short Markdown table: one row per variant and model with its
    contractive weight, the mean sensitivity ratio ``||J u1|| / ||J u2||``, the angle of its
    sensitive direction to the data's first principal component, the test reconstruction
    error (absolute and as a share of the test variance) and the mean squared Jacobian norm.

    Args:
        results: what :func:`run_experiment` returns (or its ``results.json``).
    """
    if not isinstance(results, Mapping) or not isinstance(results.get("variants"), Mapping):
        raise TypeError("results must be the dict run_experiment returns (with a 'variants' mapping)")
    # No "|" inside a cell: it would split the column.
    header = ["variant", "model", "weight", "ratio u1/u2", "angle to PC1", "recon. error", "of variance",
              "mean sq. Jacobian"]
    rows = []
    for variant, entry in results["variants"].items():
        for name, model in entry["models"].items():
            rows.append([
                variant, name, f"{model['contractive_weight']:g}", f"{model['sensitivity_ratio']:.3g}",
                f"{model['angle_to_pc1_degrees']:.2f} deg", f"{model['reconstruction_error']:.4g}",
                f"{100 * model['relative_reconstruction_error']:.2f}%", f"{model['mean_squared_jacobian_norm']:.3g}",
            ])
    return _table(header, rows)


def _variant_findings(name: str, entry: Mapping[str, Any], aligned: float) -> List[str]:
    plain, contractive = entry["models"]["plain"], entry["models"]["contractive"]
    comparison, data = entry["comparison"], entry["data"]
    lines = [f"### {name} (n = {data['n_inputs']})", ""]
    ratio = (f"mean ||J u1|| / ||J u2|| = {contractive['sensitivity_ratio']:.3g} against the plain model's "
             f"{plain['sensitivity_ratio']:.3g} ({comparison['ratio_gain']:.3g} times)")
    if comparison["more_selective"]:
        lines.append(f"- The contractive model (weight {contractive['contractive_weight']:g}) **is more selective** "
                     f"than the plain one: {ratio}.")
    else:
        lines.append(f"- The contractive model (weight {contractive['contractive_weight']:g}) **is not more "
                     f"selective** than the plain one: {ratio}.")
    angle = contractive["angle_to_pc1_degrees"]
    verdict = (f"**aligned** with it (within {aligned:g} degrees)" if comparison["contractive_aligned_with_pc1"]
               else f"**not aligned** with it (more than {aligned:g} degrees)")
    lines.append(
        f"- Its sensitive direction (the leading right-singular vector of the stacked Jacobians) is {angle:.2f} "
        f"degrees from the data's first principal component: {verdict}. The plain model's is "
        f"{plain['angle_to_pc1_degrees']:.2f} degrees from it. (PC1 is {data['pc1_to_u1_degrees']:.2f} degrees from "
        f"u1 and carries {100 * data['pc1_variance_share']:.1f}% of the training variance.)")
    lines.append(
        f"- Reconstruction error on the test split: contractive {contractive['reconstruction_error']:.4g} "
        f"({100 * contractive['relative_reconstruction_error']:.2f}% of the test variance), plain "
        f"{plain['reconstruction_error']:.4g} ({100 * plain['relative_reconstruction_error']:.2f}%). Mean squared "
        f"Jacobian norm: contractive {contractive['mean_squared_jacobian_norm']:.3g}, plain "
        f"{plain['mean_squared_jacobian_norm']:.3g}.")
    spectrum = lambda m: ", ".join(f"{v:.3g}" for v in m["pc_sensitivities"][:4])  # noqa: E731
    more = " ..." if data["n_inputs"] > 4 else ""
    lines.append(f"- RMS sensitivity along the principal components, largest variance first: contractive "
                 f"{spectrum(contractive)}{more}; plain {spectrum(plain)}{more}.")
    lines.append("")
    return lines


def _selection_lines(name: str, entry: Mapping[str, Any]) -> List[str]:
    selection = entry["selection"]
    lines = [f"**{name}**: plain validation error {selection['plain_val_reconstruction_error']:.4g}, validation "
             f"variance {selection['val_total_variance']:.4g}, so the budget is {selection['budget']:.4g}. "
             + (f"Chosen: {selection['chosen']:g}." if selection["rule_met"] else
                f"No weight met the budget; the smallest, {selection['chosen']:g}, was used."), ""]
    rows = [[f"{g['contractive_weight']:g}", "yes" if g["within_budget"] else "no",
             f"{g['val_reconstruction_error']:.4g}", f"{g['sensitivity_ratio']:.3g}",
             f"{g['angle_to_pc1_degrees']:.2f} deg", f"{g['reconstruction_error']:.4g}",
             "chosen" if g["contractive_weight"] == selection["chosen"] else ""] for g in selection["grid"]]
    lines += [_table(["weight", "within budget", "val. error", "ratio u1/u2 (test)", "angle to PC1 (test)",
                      "recon. error (test)", "rule"], rows), ""]
    return lines


def _report(record: Mapping[str, Any]) -> str:
    s = record["settings"]
    variants = record["variants"]
    aligned = s["aligned_degrees"]
    n_more = sum(bool(v["comparison"]["more_selective"]) for v in variants.values())
    n_aligned = sum(bool(v["comparison"]["contractive_aligned_with_pc1"]) for v in variants.values())
    dims = ", ".join(f"`{name}` (n = {n})" for name, n in s["variants"].items())
    lines = [
        "# pyae experiment: what the contractive penalty keeps",
        "",
        f"Synthetic data `x = s1 t u1 + s2 e` with `t ~ N(0, 1)`, `e ~ N(0, I)`, s1 = {s['signal_scale']:g}, "
        f"s2 = {s['noise_scale']:g}: strong variation along `u1`, noise along every other direction, `u2` among "
        f"them. Variants: {dims}; {s['n_train']} training, {s['n_val']} validation and {s['n_test']} test examples "
        "each. Two autoencoders per variant, from the same initial weights: `plain` (no regularizer) and "
        f"`contractive` (the penalty mean ||J||_F^2 with the weight the rule below chose); {s['n_hidden']} sigmoid "
        f"hidden units, {'tied weights, ' if s['tied_weights'] else ''}{s['decoder']} decoder, {s['loss']} loss, "
        f"{s['optimizer']} lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} epochs, seed {s['seed']}, on "
        f"{s['device']}.",
        "",
        "Measured on the test split from the encoder Jacobians J_i = dh/dx (torch.func.jacrev): the mean over "
        "points of ||J_i u1|| / ||J_i u2|| (`ratio u1/u2`: larger is more selective), the angle between the "
        "leading right-singular vector of the stacked Jacobians and the training data's first principal component "
        "(`angle to PC1`), the reconstruction error (squared error summed over features, per example, and as a "
        "share of the test data's total variance) and the mean squared Frobenius norm of J (the penalty).",
        "",
        format_table(record),
        "",
    ]
    if s["quick"]:
        lines += ["**This is a `--quick` smoke run** (fewer examples and epochs, a three-point grid): its numbers "
                  "check that the experiment works and say little about the method.", ""]
    lines += [
        "## What this run measured",
        "",
        f"The contractive model was more selective than the plain one in {n_more} of {len(variants)} variants, and "
        f"its sensitive direction lay within {aligned:g} degrees of the first principal component in {n_aligned} of "
        f"{len(variants)}.",
        "",
    ]
    for name, entry in variants.items():
        lines += _variant_findings(name, entry, aligned)
    lines += [
        "## Choosing the contractive weight",
        "",
        f"Rule, fixed before the run and blind to the sensitivities: from the grid "
        f"{', '.join(f'{w:g}' for w in s['contractive_weights'])} (one model per weight), the largest weight whose "
        f"validation reconstruction error is at most the plain model's plus {s['selection_budget']:g} times the "
        "validation data's total variance; the smallest weight where none qualifies. Every grid point is "
        "listed with its test measures, so the comparison can be read at every weight.",
        "",
    ]
    for name, entry in variants.items():
        lines += _selection_lines(name, entry)
    checks = [m["jacobian_check"] for v in variants.values() for m in v["models"].values()]
    lines += [
        "## Pictures",
        "",
        "The data in the plane of u1 and u2 (the 20-D data projected onto it), the first principal component, and "
        "for each model its sensitive direction (thick line) and its sensitivity ellipse in that plane: the image of "
        "the unit circle under M^(1/2), M = mean_i J_i^T J_i restricted to the plane, so its semi-axes lie along the "
        "directions of largest and smallest sensitivity and are as long as the RMS of ||J_i v|| along them, each "
        "model's ellipse scaled to its own largest semi-axis (round: it reacts alike in every direction of the plane; "
        "flat: along one direction only).",
        "",
        "![data, u1, u2 and the models' sensitivity](contractive.png)",
        "",
        "The RMS sensitivity along every principal component of the training data (log scale):",
        "",
        "![sensitivity along the principal components](sensitivity.png)",
        "",
        "## Checks",
        "",
        f"The jacrev Jacobians agree with the closed form diag(h(1-h)) W to "
        f"{max(c['jacrev_vs_closed_form_max_abs'] for c in checks):.2g} (largest absolute difference over all "
        f"models and points); their mean squared norm agrees with the penalty of pyae's fused encoder to a relative "
        f"{max(c['penalty_vs_fused_operator_rel'] for c in checks):.2g}. Total run time "
        f"{s.get('total_seconds', 0.0):.1f}s ({s['cpu_threads']} CPU thread(s)).",
        "",
    ]
    return "\n".join(lines)
