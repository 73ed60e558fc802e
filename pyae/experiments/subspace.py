"""The lecture's summary, measured: a linear autoencoder trained with squared error spans the
principal subspace of the data, the span of the top-k right singular vectors of the centered
data matrix (``X_c = U S V^T``), and a nonlinear one need not.

:func:`compare_subspaces` trains both on the same examples and measures the principal angles
between each decoder's column space (:attr:`pyae.Autoencoder.decoder_weight`, ``(n, k)``)
and that principal subspace (:func:`top_right_singular_vectors`); :func:`format_section`
turns the result into a Markdown section of the MNIST experiment's report::

    from pyae.data import load_mnist
    from pyae.experiments.subspace import compare_subspaces, format_section

    images, _ = load_mnist()
    result = compare_subspaces(images, 16)
    print(format_section(result))

pyae's hidden units are always sigmoids, ``h = sigmoid(W x + b)``. The *linear* autoencoder
is therefore the linearized one of ``tests/test_training.py``: a linear decoder and squared
error on centered inputs scaled down until the sigmoid works in its near-linear regime
(``sigmoid(a) ~ 1/2 + a/4``). The *nonlinear* one has a sigmoid decoder as well as the
sigmoid hidden units and sees the examples at their own scale, in [0, 1]. See
:func:`compare_subspaces` for why and how the data are centered.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from pyae.config import TrainConfig
from pyae.training import train
from pyae.validation import check_bool, check_int

__all__ = [
    "DEFAULT_K",
    "DEFAULT_SETTINGS",
    "QUICK_SETTINGS",
    "MATCH_THRESHOLD_DEGREES",
    "principal_angles",
    "top_right_singular_vectors",
    "compare_subspaces",
    "format_section",
]

#: The default subspace dimension: on the 5,000 embedded MNIST digits the covariance's 16th
#: and 17th eigenvalues are 0.83 and 0.69, a 17% gap (the 15th/16th differ by 4%), so the
#: top-16 subspace is well separated from the rest and a training run can find it.
DEFAULT_K = 16

#: The training settings both autoencoders share. ``input_norm`` is the root-mean-square
#: Euclidean norm the linear autoencoder's centered examples are scaled to.
#:
#: Tuning notes (the 5,000 embedded digits, k = 16, one CPU thread, about 13 s per model):
#: tied weights converge far faster than untied ones (after 30 epochs the mean angle was 9
#: degrees tied, 63 untied), as in tests/test_training.py. With Adam at lr 0.01, batch 100,
#: the largest angle falls below 10 degrees after 100-200 epochs and levels off at 4-5 (the
#: optimizer's noise; seeds 0-2: 4.3, 3.9, 3.9 after 300). After 200 epochs lr 0.03 was at
#: 6.3 and rising, lr 0.003 still at 24; inputs scaled to a norm of 1 instead of 0.5 were at
#: 3.8, with a larger mean angle (1.7 against 1.4): the sigmoid is less linear there.
#: k = 10 and 12 converge as well (5.0 and 3.1 after 300 epochs); k = 20, whose eigengap is
#: about half as large relatively (9% against 17%), is still at 16 degrees after 300 epochs.
DEFAULT_SETTINGS: Dict[str, Any] = {
    "epochs": 300,
    "batch_size": 100,
    "optimizer": "adam",
    "lr": 0.01,
    "tied_weights": True,
    "input_norm": 0.5,
}

#: The MNIST experiment's ``--quick`` smoke run: the same models, 10 epochs (about a second
#: each on MNIST; the angles are not converged).
QUICK_SETTINGS: Dict[str, Any] = {**DEFAULT_SETTINGS, "epochs": 10}

#: A decoder subspace "matches" the principal subspace when its largest principal angle is
#: at most this many degrees. ``sin(max angle)`` is the spectral-norm distance between the two
#: orthogonal projections, so at 10 degrees every unit vector of either subspace lies within
#: 0.17 of the other (at least cos^2(10) = 97% of its energy inside it). On MNIST (k = 16)
#: the trained linear autoencoder levels off at 4-5 degrees (the optimizer's noise; see
#: DEFAULT_SETTINGS), about half of it, and a random 16-dimensional subspace of the 784
#: pixels is at 89.5 (mean 83).
MATCH_THRESHOLD_DEGREES = 10.0

_MODELS = ("linear", "nonlinear")


# --------------------------------------------------------------------------- the geometry


def _check_matrix(value, name: str) -> Tensor:
    """``value`` as a CPU float64 copy, after checking that it is a finite real 2-D tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real (floating-point or integer) tensor, got {value.dtype}")
    if value.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor, got {value.dim()} dimension(s) (shape {tuple(value.shape)})")
    if value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(value.shape)}")
    matrix = value.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{name} must be finite (it has NaN or infinite entries)")
    return matrix


def _rank_tolerance(dtype: torch.dtype, shape) -> float:
    """The relative singular-value threshold below which a matrix of ``dtype`` and ``shape``
    is taken as rank-deficient (LAPACK's usual ``max(shape) * eps``)."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    return max(shape) * eps


def _orthonormal_basis(value, name: str) -> Tensor:
    """An orthonormal basis (``(n, k)``, float64) of the column space of ``value``, which must
    have full column rank."""
    matrix = _check_matrix(value, name)
    n, k = matrix.shape
    if k > n:
        raise ValueError(f"{name} must have at most as many columns as rows (k <= n), got shape {(n, k)}")
    singular = torch.linalg.svdvals(matrix)
    if singular[0] == 0 or singular[-1] <= _rank_tolerance(value.dtype, matrix.shape) * singular[0]:
        raise ValueError(
            f"{name} must have linearly independent columns (full column rank {k}); its smallest singular "
            f"value is {singular[-1].item():.3g} against a largest of {singular[0].item():.3g}"
        )
    q, _ = torch.linalg.qr(matrix)
    return q


def principal_angles(a: Tensor, b: Tensor, *, degrees: bool = True) -> Tensor:
    """The principal angles between the column spaces of ``a`` and ``b``, smallest first.

    Both are orthonormalized with a QR decomposition (``Q_a``, ``Q_b``); the cosines of the
    angles are the singular values of ``Q_a^T Q_b``. ``arccos`` loses accuracy near 0 (an
    angle of 1e-8 rad has a cosine that rounds to 1), so angles below 45 degrees come from their
    sines instead, the singular values of ``Q_b - Q_a Q_a^T Q_b`` (as
    ``scipy.linalg.subspace_angles`` does); both are clamped to [0, 1] first. The angles do
    not depend on the basis chosen for either subspace.

    Args:
        a: ``(n, k_a)``, full column rank (``k_a <= n``): spans the first subspace. Any real
            dtype and device.
        b: ``(n, k_b)``, the same ``n``, full column rank: spans the second.
        degrees: return degrees (the default); False: radians.

    Returns:
        The ``min(k_a, k_b)`` angles, ascending, in ``[0, 90]`` degrees (``[0, pi/2]``
        radians): a float64 CPU tensor. 0: a shared direction; 90: a direction of the smaller
        subspace orthogonal to the whole of the other.

    Raises:
        TypeError: ``a`` or ``b`` is not a real tensor, or ``degrees`` not a bool.
        ValueError: ``a`` or ``b`` is not 2-D, is empty, has more columns than rows, NaN or
            infinite entries, or linearly dependent columns; or their row counts differ.
    """
    check_bool(degrees, "degrees")
    qa, qb = _orthonormal_basis(a, "a"), _orthonormal_basis(b, "b")
    if qa.shape[0] != qb.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows (the dimension of the space), got {qa.shape[0]} and "
            f"{qb.shape[0]}"
        )
    if qb.shape[1] > qa.shape[1]:
        qa, qb = qb, qa  # qb spans the smaller subspace: one angle per column of qb
    overlap = qa.T @ qb
    cosines = torch.linalg.svdvals(overlap).clamp(0.0, 1.0)  # descending
    sines = torch.linalg.svdvals(qb - qa @ overlap).clamp(0.0, 1.0).flip(0)  # ascending
    from_cosines = torch.arccos(cosines)  # ascending
    angles = torch.where(from_cosines < math.pi / 4, torch.arcsin(sines), from_cosines)
    return torch.rad2deg(angles) if degrees else angles


def _centered_svd(data, k: int, name: str = "data") -> Tuple[Tensor, Tensor]:
    """(all singular values, descending; the top-k right singular vectors as ``(n, k)``
    columns) of ``data`` (examples as rows) centered by its column means, in float64."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    matrix = _check_matrix(data, name)
    if not data.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {data.dtype}")
    examples, features = matrix.shape
    limit = min(examples - 1, features)  # centering removes one dimension
    if not 1 <= k <= limit:
        raise ValueError(
            f"k must be in [1, {limit}] for {name} of shape {(examples, features)} "
            f"(at most min(examples - 1, features)), got {k}"
        )
    centered = matrix - matrix.mean(dim=0, keepdim=True)
    _, singular, vh = torch.linalg.svd(centered, full_matrices=False)
    if singular[k - 1] <= _rank_tolerance(data.dtype, matrix.shape) * singular[0]:
        raise ValueError(
            f"the centered {name} has rank below k={k} (singular value {k} is {singular[k - 1].item():.3g}): "
            "its top-k subspace is not defined"
        )
    vectors = vh[:k].T.clone()
    # A deterministic sign: each vector's entry of largest magnitude is positive (the
    # convention of scikit-learn's svd_flip); the subspace does not depend on it.
    rows = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[rows, torch.arange(k)])
    return singular, vectors * signs


def top_right_singular_vectors(data: Tensor, k: int) -> Tensor:
    """The top-k right singular vectors of ``data`` centered by its column means: an
    orthonormal basis of its k-dimensional principal subspace.

    ``data`` holds one example per row, as in torch and scikit-learn (``(n_samples,
    n_features)``). With ``X_c = data - data.mean(0) = U S V^T`` (``torch.linalg.svd``
    returns ``V^T`` as ``Vh``), the result is ``Vh[:k].T``: the vectors are *columns*,
    ``(n_features, k)``, laid out like :attr:`pyae.Autoencoder.decoder_weight`. They equal
    ``sklearn.decomposition.PCA(k).fit(data).components_.T`` (whose rows are the vectors) and
    the top-k eigenvectors of the sample covariance, up to each vector's sign; here the sign
    makes each vector's entry of largest magnitude positive.

    Args:
        data: ``(n_samples, n_features)`` floating-point, finite; any device (computed on the
            CPU in float64).
        k: the number of vectors, ``1 <= k <= min(n_samples - 1, n_features)``.

    Returns:
        ``(n_features, k)`` float64 CPU tensor with orthonormal columns, by decreasing
        singular value.

    Raises:
        TypeError: ``data`` is not a floating-point tensor, or ``k`` not an int.
        ValueError: ``data`` is not 2-D, is empty or not finite; ``k`` is out of range, or the
            centered data has rank below ``k``.
    """
    return _centered_svd(data, k)[1]


# --------------------------------------------------------------------------- the experiment


def _angle_summary(angles: Tensor) -> Dict[str, Any]:
    return {
        "angles_degrees": [float(a) for a in angles],
        "max_degrees": float(angles.max()),
        "mean_degrees": float(angles.mean()),
        "matches": bool(angles.max() <= MATCH_THRESHOLD_DEGREES),
    }


def compare_subspaces(
    images: Tensor,
    k: int = DEFAULT_K,
    *,
    seed: int = 0,
    device: str = "cpu",
    epochs: Optional[int] = None,
    quick: bool = False,
    progress: bool = False,
) -> Dict[str, Any]:
    """Train a linear and a nonlinear autoencoder with ``k`` hidden units on ``images`` and
    measure the principal angles between each decoder's column space and the top-k principal
    subspace of the centered images.

    The two models share :data:`DEFAULT_SETTINGS` (or :data:`QUICK_SETTINGS`): the optimizer,
    learning rate, batch size, epochs, tied or untied weights, squared error, and the
    initial weights (``seed``). They differ in:

    - ``linear``: a linear decoder, ``W' h + c``, on the examples centered (minus the column
      means of ``images``) and scaled by one number so that their root-mean-square norm is
      ``input_norm`` (0.5): small enough for the sigmoid hidden units to work near their
      linear regime, as in Baldi & Hornik's and Bourlard & Kamp's setting.
    - ``nonlinear``: a sigmoid decoder, ``sigmoid(W' h + c)``, on the examples mapped to
      [0, 1] by one affine map of all entries, ``(x - min) / (max - min)`` (the identity on
      MNIST), since a sigmoid cannot reconstruct anything else.

    Centering. The theory's ``X`` is the centered data, so the reference subspace is that of
    the centered ``images`` for both models. Any reconstruction ``W' h + c`` of a linear decoder
    lies in the affine subspace ``c + span(W')``, and the best k-dimensional affine fit to a
    cloud of points passes through its mean along the top-k principal directions: the decoder
    bias ``c`` can carry the mean, so uncentered inputs have the same optimal ``span(W')``.
    The linear model is fed centered inputs anyway, so that no training is spent on moving
    ``c`` to the mean, and the scaling it needs is defined around the mean. Both data maps
    (a shift by a constant vector, a scaling by one number) leave the centered data's
    principal subspace as it was, so both models are measured against the same subspace.

    Args:
        images: ``(N, n)`` examples (rows), floating-point, finite, ``N > k``, e.g.
            ``pyae.data.load_mnist()[0]``.
        k: the number of hidden units and the dimension of the principal subspace
            (``1 <= k <= min(N - 1, n)``).
        seed: the models' initial weights and mini-batch order, and the random subspace of
            the reference row.
        device: where to train: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        epochs: override the settings' number of epochs (>= 1); None: theirs.
        quick: use :data:`QUICK_SETTINGS` (a smoke run of seconds; its angles say little).
        progress: show training progress on stderr.

    Returns:
        A JSON-serializable dict::

            {"k": k, "threshold_degrees": MATCH_THRESHOLD_DEGREES,
             "settings": {the shared settings, "seed", "device", "quick", "n_examples",
                          "n_features", "input_scale" (the linear model's factor)},
             "principal": {"explained_variance_ratio": of the top k,
                           "eigenvalues": the covariance's first k + 1},
             "models": {"linear" / "nonlinear": {
                 "angles_degrees": all k, ascending, "max_degrees", "mean_degrees",
                 "matches": max <= threshold, "decoder_activation", "input" (in words),
                 "final_loss", "train_seconds", "config": the TrainConfig as a dict}},
             "random": {the same angles for a random k-dimensional subspace (a reference)}}

    Raises:
        TypeError, ValueError: an argument is wrong (naming it).
        FloatingPointError: a training run diverged.
    """
    check_bool(quick, "quick")
    check_bool(progress, "progress")
    settings = dict(QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    if epochs is not None:
        settings["epochs"] = check_int(epochs, "epochs", 1)
    singular, principal = _centered_svd(images, k, "images")
    data = images.detach().to(dtype=torch.float32)
    examples, features = data.shape

    eigenvalues = singular.pow(2) / max(examples - 1, 1)
    mean = data.mean(dim=0, keepdim=True)
    rms_norm = float(singular.pow(2).sum().div(examples).sqrt())
    scale = settings["input_norm"] / rms_norm
    low, high = float(data.min()), float(data.max())
    inputs = {
        "linear": (scale * (data - mean), "centered, scaled by {:.4g} (root-mean-square norm {:g})".format(
            scale, settings["input_norm"])),
        "nonlinear": ((data - low) / (high - low), "[0, 1] (x - min) / (max - min), not centered"
                      if (low, high) != (0.0, 1.0) else "as given, in [0, 1], not centered"),
    }
    models: Dict[str, Any] = {}
    for name in _MODELS:
        config = TrainConfig(
            n_hidden=k, decoder_activation="linear" if name == "linear" else "sigmoid", loss="mse",
            tied_weights=settings["tied_weights"], epochs=settings["epochs"], batch_size=settings["batch_size"],
            optimizer=settings["optimizer"], lr=settings["lr"], seed=seed, device=device,
        )
        x, described = inputs[name]
        started = time.perf_counter()
        model, history = train(config, x, progress=progress)
        seconds = time.perf_counter() - started
        angles = principal_angles(model.decoder_weight, principal)
        models[name] = {
            **_angle_summary(angles),
            "decoder_activation": config.decoder_activation,
            "input": described,
            "final_loss": float(history["loss"][-1]),
            "train_seconds": seconds,
            "config": config.to_dict(),
        }

    generator = torch.Generator().manual_seed(seed)
    random_basis = torch.randn(features, k, generator=generator, dtype=torch.float64)
    return {
        "k": k,
        "threshold_degrees": MATCH_THRESHOLD_DEGREES,
        "settings": {**settings, "seed": seed, "device": str(device), "quick": quick, "n_examples": examples,
                     "n_features": features, "input_scale": scale},
        "principal": {
            "explained_variance_ratio": float(eigenvalues[:k].sum() / eigenvalues.sum()),
            "eigenvalues": [float(v) for v in eigenvalues[:k + 1]],
        },
        "models": models,
        "random": _angle_summary(principal_angles(random_basis, principal)),
    }


def format_section(result: Mapping[str, Any]) -> str:
    """A Markdown section of the report from :func:`compare_subspaces`'s result: a table of
    each model's largest and mean principal angle (with a random subspace for reference) and
    one sentence per model saying, from those numbers, whether its decoder spans the
    principal subspace.

    Raises:
        TypeError: ``result`` is not a mapping.
        KeyError: ``result`` lacks one of :func:`compare_subspaces`'s keys.
    """
    if not isinstance(result, Mapping):
        raise TypeError(f"result must be a mapping (compare_subspaces' result), got {type(result).__name__}")
    k, threshold, s = result["k"], result["threshold_degrees"], result["settings"]
    models = result["models"]
    random = result["random"]
    eigenvalues = result["principal"]["eigenvalues"]
    lines = [
        "## The linear autoencoder and the SVD",
        "",
        f"The lecture's summary: a linear autoencoder trained with squared error spans the principal subspace, "
        f"here the span of the top {k} right "
        f"singular vectors of the centered training data ({s['n_examples']} examples, {s['n_features']} "
        f"features; they carry {100 * result['principal']['explained_variance_ratio']:.1f}% of its variance, "
        f"covariance eigenvalues {k} and {k + 1}: {eigenvalues[k - 1]:.3g} and {eigenvalues[k]:.3g}). "
        f"Two autoencoders with {k} sigmoid hidden units, squared error, "
        f"{'tied' if s['tied_weights'] else 'untied'} weights, {s['optimizer']} lr {s['lr']:g}, batch "
        f"{s['batch_size']}, {s['epochs']} epochs, seed {s['seed']}: `linear` has a linear decoder and sees the "
        f"centered examples scaled to a root-mean-square norm of {s['input_norm']:g} (the sigmoid's near-linear "
        "regime); `nonlinear` has a sigmoid decoder and sees the examples in [0, 1]. The table gives the "
        "principal angles between each decoder's column space and the principal subspace.",
        "",
        "| model | decoder | max angle | mean angle | train s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, entry in models.items():
        lines.append(f"| {name} | {entry['decoder_activation']} | {entry['max_degrees']:.1f}° | "
                     f"{entry['mean_degrees']:.1f}° | {entry['train_seconds']:.1f} |")
    lines += [f"| random subspace | - | {random['max_degrees']:.1f}° | {random['mean_degrees']:.1f}° | - |", ""]
    for name, entry in models.items():
        verdict = (f"at most {threshold:g}°, so its decoder subspace matches the principal subspace"
                   if entry["matches"] else
                   f"above {threshold:g}°, so its decoder subspace does not match the principal subspace")
        lines.append(f"- `{name}`: the largest angle is {entry['max_degrees']:.1f}° (mean "
                     f"{entry['mean_degrees']:.1f}°), {verdict}.")
    lines += [
        "",
        f"Threshold: {threshold:g}° for the largest angle. Its sine is the spectral-norm distance between the "
        f"two subspaces' projections, so below it every direction of either subspace keeps at least "
        f"{100 * math.cos(math.radians(threshold)) ** 2:.0f}% of its energy in the other; a random "
        f"{k}-dimensional subspace is at {random['max_degrees']:.1f}°. A linear decoder's reconstructions lie in "
        "its column space (plus the bias), so squared error pulls that space onto the principal one; a sigmoid "
        "decoder's columns are directions of its pre-activations, which nothing ties to that subspace.",
    ]
    if s.get("quick"):
        lines += ["", "**Quick run**: too few epochs for the angles to mean anything."]
    return "\n".join(lines) + "\n"
