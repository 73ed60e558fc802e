"""The lecture's second denoising experiment: filters learned from natural image patches.

The lecture follows Gaussian-noise corruption with "we will now use such a denoising AE on a
different dataset": the natural-image-patch figure of Vincent et al. (JMLR 2010), where a
plain over-complete autoencoder, one with weight decay and a Gaussian denoising one are
compared by their filters. The claims are that the denoising autoencoder learns localized,
oriented, Gabor-like edge detectors, that weight decay gives blobs, and that the plain
autoencoder learns little structure. :func:`run_experiment` trains the three models and
checks each claim against numbers measured in that run; ``pyae experiment patches`` is its
command-line face.

Data:
    The two photographs that ship inside scikit-learn (``load_sample_images``: ``china.jpg``
    and ``flower.jpg``, 427 x 640, no download), converted to grayscale with the ITU-R BT.601
    luma weights (0.299 R + 0.587 G + 0.114 B) and scaled to [0, 1]. Each photograph is cut
    into two regions: its left 80% of columns gives the training patches, its right 20% the
    held-out ones, so no held-out patch overlaps a training patch. 12 x 12 patches are drawn
    at random positions with ``sklearn.feature_extraction.image.extract_patches_2d``, half
    from each photograph, with a ``random_state`` derived from ``seed``: 50,000 for training
    and 10,000 held out (quick mode: 4,000 and 1,000).

Normalization:
    Each patch's mean is removed (brightness carries no edge information), then the patches
    are ZCA-whitened with ``W = U diag(1 / sqrt(lambda + eps)) U^T``, from the eigenvectors
    ``U`` and eigenvalues ``lambda`` of the training patches' covariance, and finally
    multiplied by one scalar so that the training pixels' mean variance is 1. The held-out
    patches go through the same transform, fitted on the training patches only. Whitening is
    what the cited work used: natural images have a ~1/f^2 power spectrum (here the
    covariance's nonzero eigenvalues span about 570:1), so without it the few low-frequency
    components dominate the squared error. Flattening the spectrum makes every frequency
    count about the same, so that structure at the scale of edges matters to the loss.
    ``eps`` is 0.1 times the mean eigenvalue: the components above it (the run records how
    many) come out with about equal variance; the weakest, the highest spatial frequencies,
    where the photographs' JPEG quantization noise sits, are damped instead of amplified to
    unit variance. Per-patch contrast normalization was not used: dividing
    the nearly flat patches (sky, blurred background) by their small standard deviation
    would amplify that noise.

Models:
    Every model has 200 sigmoid hidden units (over-complete: 144 inputs), a linear decoder
    with tied weights (the decoder's weight is the encoder's transpose) and the squared
    error summed over the 144 pixels; all three start from the same initial weights (the
    same seed) and see the same patches in the same order; only the regularizer differs:

    - ``plain``: none.
    - ``weight_decay``: ``lambda * (1/2) ||W||^2`` with ``lambda = 0.1``. It was selected on
      the held-out reconstruction error, never on the edge measure: of the grid 0.01, 0.03,
      0.1 (development runs, seed 0, these settings; 0.003 and 0.3 were tried at 20
      epochs), the value whose held-out error came closest to the denoising model's (34.9%
      against 31.3% of the held-out energy; 0.03: 26.5%), so that the two regularizers are
      compared at about the same cost in reconstruction.
    - ``denoising_gaussian``: additive Gaussian noise of standard deviation 0.5, half the
      whitened pixels' standard deviation (a signal-to-noise ratio of 4 in variance), fixed
      before any run and not tuned. (The lecture's N(0, 1) would be as strong as the signal.)

    Why tied weights: with untied weights and a linear decoder, the encoder can shrink its
    weights until every sigmoid runs in its nearly linear range while the decoder grows to
    compensate. The model is then linear, and a linear autoencoder or denoiser of whitened
    patches (a flat spectrum) has no reason to prefer any filters over random ones. A
    development run (seed 0) with untied weights did exactly that: the encoder's rows ended
    shorter than at initialization and all three models' filters stayed noise-like (0%
    edge-like, median orientation selectivity 0.06-0.07, like white noise), although its
    held-out errors were far lower (plain 2.1%, weight decay 0.01 11.9%, denoising 10.1%).
    Tied weights rule that rescaling out. This choice was made after seeing that run's
    filters and measures; the noise level was fixed before, and the weight decay, the
    optimizer and the epochs were selected on the held-out error as described.

    Optimization: Adam, learning rate 1e-3 (3e-3 ended worse on the held-out error), batches
    of 50, 30 epochs (the held-out errors had levelled off by then). A model trains in well
    under a minute on a 2-core CPU; quick mode (3 epochs on 4,000 patches) takes a few
    seconds in all.

    Development notes (seed 0, none of this in the default run): besides untied weights,
    these variants of the denoising model were trained and measured, and in every one at
    most 5% of the filters were edge-like or blob-like: SGD with momentum 0.9 (lr 3e-3 and
    1e-2), noise std 1.0 (up to 150 epochs), std 0.5 up to 150 epochs, no whitening (mean
    removal and scaling only), inputs scaled by 0.1, and a sparse autoencoder (KL target
    0.035, weight 3); a plain PyTorch implementation of the same denoising model (no pyae
    operators) behaved the same. FastICA on the same patches finds edge filters (the
    positive control below), so the patches and the measure are not the reason.

Edge-detector measures (:func:`filter_measures`; every filter's mean is removed first, since
the whitened patches have zero mean and a filter's mean changes no response):

- **orientation selectivity** (:func:`orientation_selectivity`): from the filter's 2-D power
  spectrum ``P(f)`` (zero-padded to 32 x 32, the DC term excluded), the length of the
  power-weighted mean of ``exp(2 i theta(f))``: ``|sum P e^{2 i theta}| / sum P``, with
  ``theta`` the orientation of frequency ``f`` (doubled, because ``f`` and ``-f`` are the same
  orientation). 1: all energy in one orientation (a grating, a Gabor with a narrow
  orientation band); 0: energy spread evenly over orientations (an isotropic blob, a
  center-surround spot). White noise scores about 0.09 (95th percentile about 0.19).
- **localization** (:func:`localization`): the largest fraction of the filter's energy (sum of
  squared weights) inside any 4 x 4 window. 1: all of it in one window; white noise about
  0.2 (99th percentile about 0.28); a Gabor with a Gaussian envelope of sigma 2 pixels about 0.7.
- **roughness** (:func:`roughness`): the squared differences between neighbouring pixels of
  the unit-norm filter, relative to their expectation for white noise: about 1 for noise,
  near 0 for smooth shapes (a Gaussian blob of sigma 1.5 pixels: 0.14).

A filter is **oriented** when its selectivity is at least 0.5, **localized** when its
localization is at least 0.4, **smooth** when its roughness is at most 0.3
(:data:`THRESHOLDS`; set from synthetic filters, above white noise's 99th percentile and
below the values of Gabor functions with envelopes of sigma <= 2.5 pixels and wavelengths
of 3-6 pixels). It is **edge-like** (a localized oriented edge detector) when oriented and
localized; **blob-like** when not oriented but localized or smooth; **noise-like** when
none of oriented, localized, smooth. The same measures of synthetic white-noise, Gabor and
Gaussian-blob filters are reported beside the models' as references, and, in the default
run, those of a positive control: the 100 filters FastICA finds in 20,000 of the same
normalized training patches (ICA of natural image patches is the textbook way to get
localized, oriented edge filters), which shows what the measure reports for edge detectors
learned from these very photographs.

The claims checked (:func:`check_claims`), each "holds" or "does not hold" from this run's
numbers:

1. the denoising model has a larger fraction of edge-like filters than the plain one;
2. most (>= 50%) of the weight-decay model's filters are blob-like;
3. most (>= 50%) of the plain model's filters are noise-like (little structure).

It needs the optional dependencies: ``pip install 'pyae[experiment]'`` (matplotlib,
scikit-learn, tqdm).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

import pyae
from pyae._typing import PathLike
from pyae.config import TrainConfig, resolve_device
from pyae.experiments._common import log, require, torch_threads, write_text

__all__ = [
    "DEFAULT_SETTINGS",
    "QUICK_SETTINGS",
    "MODELS",
    "THRESHOLDS",
    "load_grayscale_images",
    "extract_patches",
    "Whitening",
    "fit_whitening",
    "orientation_selectivity",
    "localization",
    "roughness",
    "filter_measures",
    "summarize_measures",
    "gabor_filters",
    "blob_filters",
    "check_claims",
    "run_experiment",
    "format_table",
]

#: The settings of the default run (a few minutes on a 2-core CPU). Every model shares them
#: and starts from the same initial weights; only its regularizer (:data:`MODELS`) differs.
DEFAULT_SETTINGS: Dict[str, Any] = {
    "patch_size": 12,
    "n_train": 50_000,  # half from each photograph
    "n_test": 10_000,
    "held_out_columns": 0.2,  # the right 20% of each photograph gives the held-out patches
    "whitening_epsilon": 0.1,  # relative to the mean eigenvalue of the patch covariance
    "n_hidden": 200,
    "tied_weights": True,
    "decoder": "linear",
    "loss": "mse",
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 50,
    "epochs": 30,
    # The positive control: FastICA's filters of (the first) 20,000 normalized training
    # patches, 100 components. None: skipped.
    "ica_reference": {"n_components": 100, "patches": 20_000},
}

#: A smoke run of a few seconds: fewer patches and epochs; its numbers say nothing about the methods.
QUICK_SETTINGS: Dict[str, Any] = {**DEFAULT_SETTINGS, "n_train": 4_000, "n_test": 1_000, "epochs": 3,
                                   "ica_reference": None}

#: The autoencoders compared, by name: their options on top of the shared settings.
MODELS: Dict[str, Dict[str, Any]] = {
    "plain": {},
    # Selected on the held-out reconstruction error (see the module docstring).
    "weight_decay": {"weight_decay": 0.1},
    # Half the whitened pixels' standard deviation; fixed a priori.
    "denoising_gaussian": {"noise": "gaussian", "noise_level": 0.5},
}

#: The thresholds that classify a filter (see the module docstring).
THRESHOLDS: Dict[str, float] = {"oriented": 0.5, "localized": 0.4, "smooth": 0.3}

# ITU-R BT.601 luma weights.
_LUMA = np.array([0.299, 0.587, 0.114])
# The power spectrum's grid: 12 x 12 filters zero-padded to 32 x 32.
_SPECTRUM_SIZE = 32
_WINDOW = 4
_REFERENCE_FILTERS = 200
_SAMPLE_PATCHES = 20


# ---------------------------------------------------------------------------- data


def load_grayscale_images() -> List[np.ndarray]:
    """The photographs that ship with scikit-learn, as grayscale float64 images in [0, 1].

    Returns:
        ``[china, flower]``, each ``(427, 640)``: the BT.601 luma ``0.299 R + 0.587 G + 0.114 B``
        of ``sklearn.datasets.load_sample_images()``, divided by 255.
    """
    from sklearn.datasets import load_sample_images

    return [np.asarray(image, dtype=np.float64) @ _LUMA / 255.0 for image in load_sample_images().images]


def _random_state(seed: int, image: int, part: int) -> int:
    """A seed for ``extract_patches_2d`` of one (image, part) pair: independent streams."""
    return int(np.random.SeedSequence([seed, image, part]).generate_state(1)[0])


def extract_patches(
    images: Sequence[np.ndarray],
    n_train: int,
    n_test: int,
    *,
    patch_size: int = 12,
    held_out_columns: float = 0.2,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Random square patches, split by region: training ones from the left part of each
    image, held-out ones from its right part, so that the two sets never overlap.

    The patches are spread evenly over the images (the first ones get the remainder); each
    (image, part) draws its positions with ``extract_patches_2d`` and its own
    ``random_state`` derived from ``seed``.

    Args:
        images: 2-D grayscale images.
        n_train: the number of training patches (>= 1).
        n_test: the number of held-out patches (>= 1).
        patch_size: the patches' height and width in pixels.
        held_out_columns: the fraction of each image's columns, on its right, that the
            held-out patches come from, in (0, 1).
        seed: seeds the positions.

    Returns:
        ``(train, test)``: float64 arrays ``(n_train, patch_size**2)`` and
        ``(n_test, patch_size**2)``, each row a patch in row-major order.

    Raises:
        ValueError: on a bad count or fraction, or an image region too small for the patches.
    """
    from sklearn.feature_extraction.image import extract_patches_2d

    for name, value in (("n_train", n_train), ("n_test", n_test), ("patch_size", patch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 < held_out_columns < 1.0:
        raise ValueError(f"held_out_columns must be in (0, 1), got {held_out_columns!r}")
    if not images:
        raise ValueError("images is empty")
    parts: Tuple[List[np.ndarray], List[np.ndarray]] = ([], [])
    for index, image in enumerate(images):
        image = np.asarray(image, dtype=np.float64)
        if image.ndim != 2:
            raise ValueError(f"images[{index}] must be 2-D (grayscale), got shape {image.shape}")
        split = int(round(image.shape[1] * (1.0 - held_out_columns)))
        regions = (image[:, :split], image[:, split:])
        for part, (region, total) in enumerate(zip(regions, (n_train, n_test))):
            count = total // len(images) + (1 if index < total % len(images) else 0)
            if count == 0:
                continue
            if min(region.shape) < patch_size:
                raise ValueError(f"a region of images[{index}] of shape {region.shape} is smaller than "
                                 f"{patch_size} x {patch_size} patches")
            patches = extract_patches_2d(region, (patch_size, patch_size), max_patches=count,
                                         random_state=_random_state(seed, index, part))
            parts[part].append(patches.reshape(count, patch_size * patch_size))
    return np.concatenate(parts[0]), np.concatenate(parts[1])


class Whitening(NamedTuple):
    """The patch normalization: per-patch mean removal, then a fitted ZCA transform.

    Attributes:
        mean: the mean of the mean-removed training patches, ``(n,)`` (about 0).
        matrix: the symmetric ZCA matrix, scale included, ``(n, n)``.
        eigenvalues: the training covariance's eigenvalues, descending, ``(n,)``.
        epsilon: the absolute regularizer added to every eigenvalue.
    """

    mean: np.ndarray
    matrix: np.ndarray
    eigenvalues: np.ndarray
    epsilon: float

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        """Normalize ``(N, n)`` patches: remove each one's mean, then whiten."""
        patches = np.asarray(patches, dtype=np.float64)
        centered = patches - patches.mean(axis=1, keepdims=True)
        return (centered - self.mean) @ self.matrix


def fit_whitening(patches: np.ndarray, epsilon: float = 0.1) -> Whitening:
    """Fit the normalization of :class:`Whitening` on training patches.

    ``matrix = s * U diag(1 / sqrt(lambda + eps)) U^T`` from the eigen-decomposition of the
    covariance of the mean-removed patches, with ``eps = epsilon * mean(lambda)`` and ``s``
    the scalar that makes the whitened training pixels' mean variance exactly 1.

    Args:
        patches: ``(N, n)`` training patches (N >= 2).
        epsilon: the regularizer relative to the mean eigenvalue (> 0): larger damps the
            weak, high-frequency components more.
    """
    patches = np.asarray(patches, dtype=np.float64)
    if patches.ndim != 2 or patches.shape[0] < 2:
        raise ValueError(f"patches must be (N >= 2, n), got shape {patches.shape}")
    if not epsilon > 0.0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    centered = patches - patches.mean(axis=1, keepdims=True)
    mean = centered.mean(axis=0)
    centered = centered - mean
    covariance = centered.T @ centered / centered.shape[0]
    eigenvalues, vectors = np.linalg.eigh(covariance)
    eigenvalues, vectors = np.clip(eigenvalues[::-1], 0.0, None), vectors[:, ::-1]
    eps = float(epsilon * eigenvalues.mean())
    gains = 1.0 / np.sqrt(eigenvalues + eps)
    # The variance of every whitened component is lambda / (lambda + eps); their mean is the
    # mean pixel variance (an orthogonal basis).
    scale = 1.0 / math.sqrt(float(np.mean(eigenvalues / (eigenvalues + eps))))
    matrix = (vectors * (gains * scale)) @ vectors.T
    return Whitening(mean=mean, matrix=matrix, eigenvalues=eigenvalues, epsilon=eps)


# ------------------------------------------------------------------------ measures


def _as_tiles(filters, tile_shape: Tuple[int, int]) -> np.ndarray:
    """``(k, n)`` filters as ``(k, h, w)`` float64 tiles, each with its mean removed."""
    if isinstance(filters, torch.Tensor):
        filters = filters.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(filters, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    h, w = (int(s) for s in tile_shape)
    if array.ndim != 2 or array.shape[1] != h * w or array.shape[0] < 1:
        raise ValueError(f"filters must be (k >= 1, {h * w}) for tile_shape {(h, w)}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("filters contain NaN or infinite values")
    tiles = array.reshape(-1, h, w)
    return tiles - tiles.mean(axis=(1, 2), keepdims=True)


def _energy_fraction(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator``, 0 where the denominator is 0 (a constant filter)."""
    safe = np.where(denominator > 0.0, denominator, 1.0)
    return np.where(denominator > 0.0, numerator / safe, 0.0)


def orientation_selectivity(filters, tile_shape: Tuple[int, int] = (12, 12)) -> np.ndarray:
    """How concentrated each filter's power spectrum is in one orientation, in [0, 1].

    ``|sum_f P(f) exp(2 i theta(f))| / sum_f P(f)`` over the nonzero frequencies ``f`` of the
    mean-removed filter's power spectrum ``P`` (zero-padded to 32 x 32), ``theta(f)`` the
    frequency's orientation: 1 for energy along a single orientation, 0 for energy spread
    evenly (an isotropic blob; any spectrum with the square grid's 4-fold symmetry).

    Args:
        filters: ``(k, h*w)`` filters (a tensor or an array), one per row, row-major.
        tile_shape: ``(h, w)``.

    Returns:
        A float64 array ``(k,)``; 0 for a constant filter.
    """
    tiles = _as_tiles(filters, tile_shape)
    size = max(_SPECTRUM_SIZE, *tiles.shape[1:])
    power = np.abs(np.fft.fft2(tiles, s=(size, size))) ** 2
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    phase = np.exp(2j * np.arctan2(fy, fx))
    phase[0, 0] = 0.0
    power[:, 0, 0] = 0.0  # the DC term (0 after mean removal, up to rounding)
    return _energy_fraction(np.abs((power * phase).sum(axis=(1, 2))), power.sum(axis=(1, 2)))


def localization(filters, tile_shape: Tuple[int, int] = (12, 12), window: int = _WINDOW) -> np.ndarray:
    """The largest fraction of each mean-removed filter's energy inside one ``window`` x
    ``window`` square, in [0, 1] (1: all of it in one window).

    Args:
        filters: ``(k, h*w)`` filters, one per row, row-major.
        tile_shape: ``(h, w)``.
        window: the side of the square (at most ``min(h, w)``).

    Returns:
        A float64 array ``(k,)``; 0 for a constant filter.
    """
    tiles = _as_tiles(filters, tile_shape)
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= min(tiles.shape[1:]):
        raise ValueError(f"window must be an int in [1, {min(tiles.shape[1:])}], got {window!r}")
    energy = tiles ** 2
    # Window sums from the 2-D cumulative sums (a summed-area table).
    table = np.pad(energy.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))
    sums = (table[:, window:, window:] - table[:, :-window, window:] - table[:, window:, :-window]
            + table[:, :-window, :-window])
    return _energy_fraction(sums.reshape(len(tiles), -1).max(axis=1), energy.sum(axis=(1, 2)))


def roughness(filters, tile_shape: Tuple[int, int] = (12, 12)) -> np.ndarray:
    """The squared differences between neighbouring pixels of each unit-norm, mean-removed
    filter, relative to their expectation for white noise: about 1 for noise, near 0 for
    smooth shapes.

    Args:
        filters: ``(k, h*w)`` filters, one per row, row-major.
        tile_shape: ``(h, w)``.

    Returns:
        A float64 array ``(k,)``; 0 for a constant filter.
    """
    tiles = _as_tiles(filters, tile_shape)
    h, w = tiles.shape[1:]
    differences = (np.diff(tiles, axis=2) ** 2).sum(axis=(1, 2)) + (np.diff(tiles, axis=1) ** 2).sum(axis=(1, 2))
    # White noise of unit norm: each pixel has variance 1/n, each difference 2/n; there are
    # h (w - 1) + w (h - 1) neighbouring pairs.
    expected = 2.0 * (h * (w - 1) + w * (h - 1)) / (h * w)
    return _energy_fraction(differences, (tiles ** 2).sum(axis=(1, 2)) * expected)


def filter_measures(filters, tile_shape: Tuple[int, int] = (12, 12)) -> Dict[str, np.ndarray]:
    """Every measure of every filter, by name: ``orientation_selectivity``,
    ``localization`` (4 x 4 windows) and ``roughness``, each a float64 array ``(k,)``."""
    return {
        "orientation_selectivity": orientation_selectivity(filters, tile_shape),
        "localization": localization(filters, tile_shape),
        "roughness": roughness(filters, tile_shape),
    }


def summarize_measures(measures: Mapping[str, np.ndarray],
                       thresholds: Mapping[str, float] = THRESHOLDS) -> Dict[str, float]:
    """The medians of :func:`filter_measures`' arrays and the fractions of filters in each class.

    Returns:
        A dict of plain floats: ``median_<measure>`` for each measure; ``oriented``,
        ``localized``, ``smooth`` (the fractions past each threshold), ``edge_like``
        (oriented and localized), ``blob_like`` (not oriented, but localized or smooth) and
        ``noise_like`` (none of the three), each a fraction in [0, 1].
    """
    selectivity = np.asarray(measures["orientation_selectivity"])
    oriented = selectivity >= thresholds["oriented"]
    localized = np.asarray(measures["localization"]) >= thresholds["localized"]
    smooth = np.asarray(measures["roughness"]) <= thresholds["smooth"]
    summary = {f"median_{name}": float(np.median(values)) for name, values in measures.items()}
    classes = {
        "oriented": oriented,
        "localized": localized,
        "smooth": smooth,
        "edge_like": oriented & localized,
        "blob_like": ~oriented & (localized | smooth),
        "noise_like": ~(oriented | localized | smooth),
    }
    summary.update({name: float(mask.mean()) for name, mask in classes.items()})
    return summary


def gabor_filters(count: int, size: int = 12, *, seed: int = 0, sigma: Tuple[float, float] = (1.5, 2.5),
                  wavelength: Tuple[float, float] = (3.0, 6.0)) -> np.ndarray:
    """Random Gabor functions, the reference edge detectors: a cosine grating of random
    orientation, phase and wavelength under a Gaussian envelope of random width, centred
    within 2 pixels of the tile's centre.

    Args:
        count: the number of filters.
        size: the tiles' side.
        seed: seeds the draws.
        sigma: the range of the envelope's standard deviation, in pixels.
        wavelength: the range of the grating's wavelength, in pixels.

    Returns:
        A float64 array ``(count, size * size)``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2.0
    filters = []
    for _ in range(count):
        cx, cy = centre + rng.uniform(-2.0, 2.0, size=2)
        angle, phase = rng.uniform(0.0, np.pi), rng.uniform(0.0, 2.0 * np.pi)
        s, lam = rng.uniform(*sigma), rng.uniform(*wavelength)
        along = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        envelope = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * s ** 2))
        filters.append((envelope * np.cos(2.0 * np.pi * along / lam + phase)).ravel())
    return np.stack(filters)


def blob_filters(count: int, size: int = 12, *, seed: int = 0, sigma: Tuple[float, float] = (1.0, 2.5)) -> np.ndarray:
    """Random isotropic Gaussian blobs, the reference blob detectors, centred within 2 pixels
    of the tile's centre, with a standard deviation drawn from ``sigma`` (pixels).

    Returns:
        A float64 array ``(count, size * size)``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2.0
    filters = []
    for _ in range(count):
        cx, cy = centre + rng.uniform(-2.0, 2.0, size=2)
        s = rng.uniform(*sigma)
        filters.append(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * s ** 2)).ravel())
    return np.stack(filters)


def _reference_summaries(size: int, seed: int) -> Dict[str, Dict[str, float]]:
    """The measures of synthetic filters with known answers, computed like the models'."""
    tile = (size, size)
    noise = np.random.default_rng(seed).standard_normal((_REFERENCE_FILTERS, size * size))
    return {
        "white_noise": summarize_measures(filter_measures(noise, tile)),
        "gabor": summarize_measures(filter_measures(gabor_filters(_REFERENCE_FILTERS, size, seed=seed), tile)),
        "gaussian_blob": summarize_measures(filter_measures(blob_filters(_REFERENCE_FILTERS, size, seed=seed), tile)),
    }


def _ica_reference(patches: np.ndarray, settings: Optional[Mapping[str, int]], tile: Tuple[int, int],
                   seed: int) -> Optional[Tuple[Dict[str, Any], np.ndarray]]:
    """The positive control: the measures of FastICA's unmixing filters of the normalized
    training patches (the filters ICA finds in natural images are the textbook localized,
    oriented edge detectors), and the filters; None when ``settings`` is None."""
    if settings is None:
        return None
    import warnings

    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning

    ica = FastICA(n_components=settings["n_components"], whiten="unit-variance", max_iter=400,
                  random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        ica.fit(patches[:settings["patches"]])
    summary: Dict[str, Any] = summarize_measures(filter_measures(ica.components_, tile))
    summary["converged"] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return summary, ica.components_


# -------------------------------------------------------------------------- claims


def _verdict(holds: bool) -> str:
    return "holds" if holds else "does not hold"


def check_claims(models: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Check the lecture's three claims against the measured filter fractions.

    Args:
        models: ``results["models"]``: each entry with a ``"filters"`` summary
            (:func:`summarize_measures`) for ``plain``, ``weight_decay`` and
            ``denoising_gaussian``.

    Returns:
        By claim name, ``{"claim": text, "holds": bool, "evidence": text with the numbers}``;
        a claim whose models are missing is left out.
    """
    claims: Dict[str, Dict[str, Any]] = {}

    def fraction(name: str, key: str) -> float:
        return float(models[name]["filters"][key])

    if "plain" in models and "denoising_gaussian" in models:
        den, plain = fraction("denoising_gaussian", "edge_like"), fraction("plain", "edge_like")
        claims["denoising_more_edge_like_than_plain"] = {
            "claim": "the denoising model has a larger fraction of edge-like (oriented and localized) filters "
                     "than the plain one",
            "holds": den > plain,
            "evidence": f"edge-like: denoising_gaussian {100 * den:.1f}%, plain {100 * plain:.1f}%",
        }
    if "weight_decay" in models:
        blob = fraction("weight_decay", "blob_like")
        claims["weight_decay_blob_like"] = {
            "claim": "most (>= 50%) of the weight-decay model's filters are blob-like (not oriented; localized "
                     "or smooth)",
            "holds": blob >= 0.5,
            "evidence": f"blob-like: weight_decay {100 * blob:.1f}%; its oriented "
                        f"{100 * fraction('weight_decay', 'oriented'):.1f}%, smooth "
                        f"{100 * fraction('weight_decay', 'smooth'):.1f}%, localized "
                        f"{100 * fraction('weight_decay', 'localized'):.1f}%",
        }
    if "plain" in models:
        noise = fraction("plain", "noise_like")
        claims["plain_little_structure"] = {
            "claim": "most (>= 50%) of the plain model's filters are noise-like (neither oriented, localized "
                     "nor smooth)",
            "holds": noise >= 0.5,
            "evidence": f"noise-like: plain {100 * noise:.1f}%; its edge-like "
                        f"{100 * fraction('plain', 'edge_like'):.1f}%, blob-like "
                        f"{100 * fraction('plain', 'blob_like'):.1f}%",
        }
    return claims


# ------------------------------------------------------------------------- helpers








# ----------------------------------------------------------------------------- run


def run_experiment(
    out_dir: PathLike,
    *,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Train the three autoencoders on whitened natural image patches, measure their
    filters, check the lecture's claims, and write the results into ``out_dir``.

    Files written (each atomically): ``results.json`` (after every model, complete at the
    end), ``report.md``, ``filters_<name>.png`` for every model (its 200 filters as 12 x 12
    tiles), ``patches.png`` (sample training patches before and after normalization),
    ``heldout_error.png`` (the held-out reconstruction error per epoch) and, except in quick
    mode, ``filters_fastica_reference.png`` (the positive control's filters).

    Args:
        out_dir: the output directory (created).
        quick: a smoke run (:data:`QUICK_SETTINGS`, a few seconds); its numbers say nothing
            about the methods.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for training.
        seed: seeds the patch positions, the models' initial weights (shared by all three),
            the shuffling, the noise and the reference filters.
        progress: report progress on stderr.
        num_threads: torch's intra-op CPU threads for the run (restored afterwards); None
            leaves torch's setting, except for ``quick`` runs, which use one thread.

    Returns:
        The content of ``results.json``: ``{"settings": {...}, "references": {...},
        "models": {name: {...}}, "claims": {...}}``. Each model has
        ``heldout_error`` (the squared error summed over a patch's 144 whitened pixels,
        averaged over the held-out patches, the model in eval mode: no noise),
        ``heldout_relative_error`` (that over the held-out patches' mean squared norm),
        ``heldout_error_per_epoch``, ``train_reconstruction`` (the last epoch's training
        error, corrupted inputs for the denoising model), ``mean_filter_norm`` (of the
        encoder's rows), ``train_seconds``, ``filters`` (:func:`summarize_measures`) and
        ``config``. ``references`` holds the same summaries of synthetic white-noise, Gabor
        and Gaussian-blob filters and (not in quick mode) ``fastica``, FastICA's filters of
        the training patches (with ``converged``); ``claims`` is :func:`check_claims`.
    """
    require()
    with torch_threads(num_threads, default=1 if quick else None):
        return _run(out_dir, quick=quick, device=device, seed=seed, progress=progress)


def _run(out_dir: PathLike, *, quick: bool, device: str, seed: int, progress: bool) -> Dict[str, Any]:
    from pyae import viz

    started = time.perf_counter()
    out = Path(os.fspath(out_dir))
    out.mkdir(parents=True, exist_ok=True)
    settings = copy.deepcopy(QUICK_SETTINGS if quick else DEFAULT_SETTINGS)
    torch_device = resolve_device(device)
    tile = (settings["patch_size"], settings["patch_size"])
    data = _prepare_patches(settings, seed, out, progress, torch_device)
    record = _new_record(settings, quick=quick, seed=seed, device=torch_device, data=data)
    ica = _ica_reference(data.train_x.numpy(), settings["ica_reference"], tile, seed)
    if ica is not None:
        record["references"]["fastica"] = ica[0]
        viz.save_filter_grid(ica[1], out / "filters_fastica_reference.png", rows=5, tile_shape=tile, scale=3,
                             title=f"reference: FastICA's {ica[1].shape[0]} filters")
        log(progress, f"FastICA reference: edge-like {100 * ica[0]['edge_like']:.0f}% of its filters")
    curves: Dict[str, List[float]] = {}
    for index, (name, options) in enumerate(MODELS.items(), start=1):
        record["models"][name] = _train_model(name, options, settings, data, seed=seed, device=torch_device,
                                              out=out, progress=progress, step=f"[{index}/{len(MODELS)}]")
        curves[name] = record["models"][name]["heldout_error_per_epoch"]
        write_text(out / "results.json", json.dumps(record, indent=2) + "\n")

    viz.save_line_plot(curves, out / "heldout_error.png", ylabel="squared error per held-out patch",
                       title="Held-out reconstruction error (clean input)")
    record["claims"] = check_claims(record["models"])
    record["settings"]["total_seconds"] = time.perf_counter() - started
    record["settings"]["complete"] = True
    write_text(out / "results.json", json.dumps(record, indent=2) + "\n")
    write_text(out / "report.md", _report(record))
    log(progress, f"done in {record['settings']['total_seconds']:.0f}s; wrote {out / 'results.json'}")
    return record


class _Patches(NamedTuple):
    """The whitened training and held-out patches of one run."""

    train_x: torch.Tensor
    test_x: torch.Tensor
    test_energy: float  # the held-out patches' mean squared norm
    whitening: Any


def _prepare_patches(settings: Mapping[str, Any], seed: int, out: Path, progress: bool,
                     device: torch.device) -> _Patches:
    """Cut, whiten and picture the patches."""
    from pyae import viz

    size = settings["patch_size"]
    raw_train, raw_test = extract_patches(load_grayscale_images(), settings["n_train"], settings["n_test"],
                                          patch_size=size, held_out_columns=settings["held_out_columns"], seed=seed)
    whitening = fit_whitening(raw_train, settings["whitening_epsilon"])
    train_x = torch.from_numpy(whitening(raw_train)).float()
    test_x = torch.from_numpy(whitening(raw_test)).float()
    test_energy = float(test_x.double().pow(2).sum(dim=1).mean())
    log(progress, f"{train_x.shape[0]} training and {test_x.shape[0]} held-out {size}x{size} patches, "
                   f"whitened (eps = {whitening.epsilon:.3g}); training on {device}")
    shown = min(_SAMPLE_PATCHES, raw_train.shape[0])
    viz.save_filter_grid(np.concatenate([raw_train[:shown], whitening(raw_train[:shown])]), out / "patches.png",
                         rows=2, cols=shown, tile_shape=(size, size), scale=4,
                         title="training patches: grayscale (top), normalized (bottom)")
    return _Patches(train_x, test_x, test_energy, whitening)


def _new_record(settings: Mapping[str, Any], *, quick: bool, seed: int, device: torch.device,
                data: _Patches) -> Dict[str, Any]:
    """The results.json of a run that has not trained anything yet."""
    whitening = data.whitening
    return {
        "settings": {
            **settings,
            "quick": quick,
            "seed": seed,
            "device": str(device),
            "data": "sklearn.datasets.load_sample_images (china.jpg, flower.jpg)",
            "normalization": "per-patch mean removal, then ZCA whitening scaled to unit mean pixel variance",
            "whitening_epsilon_absolute": whitening.epsilon,
            "whitening_components_above_epsilon": int((whitening.eigenvalues > whitening.epsilon).sum()),
            "heldout_mean_squared_norm": data.test_energy,
            "thresholds": dict(THRESHOLDS),
            "models": copy.deepcopy(MODELS),
            "torch": torch.__version__,
            "pyae": pyae.__version__,
            "cpu_threads": torch.get_num_threads(),
            "complete": False,
        },
        "references": _reference_summaries(settings["patch_size"], seed),
        "models": {},
        "claims": {},
    }


def _train_model(name: str, options: Mapping[str, Any], settings: Mapping[str, Any], data: _Patches, *,
                 seed: int, device: torch.device, out: Path, progress: bool, step: str) -> Dict[str, Any]:
    """Train one autoencoder, measure and picture its filters; its results.json entry."""
    from pyae import viz
    from pyae.training import train

    tile = (settings["patch_size"], settings["patch_size"])
    config = TrainConfig(
        n_hidden=settings["n_hidden"], tied_weights=settings["tied_weights"],
        decoder_activation=settings["decoder"], loss=settings["loss"], epochs=settings["epochs"],
        batch_size=settings["batch_size"], lr=settings["lr"], optimizer=settings["optimizer"], seed=seed,
        device=str(device), **options,
    )
    log(progress, f"{step} {name}: {config.n_hidden} hidden units, {config.epochs} epochs")
    model, history = train(config, data.train_x, validation=data.test_x, progress=progress)
    entry = {
        "heldout_error": history["val_reconstruction"][-1],
        "heldout_relative_error": history["val_reconstruction"][-1] / data.test_energy,
        "heldout_error_per_epoch": history["val_reconstruction"],
        "train_reconstruction": history["reconstruction"][-1],
        "mean_filter_norm": float(model.encoder.weight.detach().double().norm(dim=1).mean()),
        "train_seconds": float(sum(history["seconds"])),
        "filters": summarize_measures(filter_measures(model.encoder.weight, tile)),
        "config": config.to_dict(),
    }
    viz.save_filter_grid(model.filters(), out / f"filters_{name}.png", rows=10, tile_shape=tile, scale=3,
                         title=f"{name}: all {config.n_hidden} filters")
    summary = entry["filters"]
    log(progress, f"    held-out error {entry['heldout_error']:.3f} "
                   f"({100 * entry['heldout_relative_error']:.1f}%); "
                   f"edge-like {100 * summary['edge_like']:.0f}%, blob-like {100 * summary['blob_like']:.0f}%, "
                   f"noise-like {100 * summary['noise_like']:.0f}%; trained in {entry['train_seconds']:.1f}s")
    return entry


# -------------------------------------------------------------------------- report


def format_table(results: Mapping[str, Any]) -> str:
    """A short Markdown table: per model, the held-out reconstruction error (absolute and
    relative to the held-out patches' squared norm), the median orientation selectivity and
    localization, and the fractions of edge-like, blob-like and noise-like filters; then the
    synthetic reference filters' measures (no error)."""
    header = ["model", "held-out error", "relative", "median OSI", "median loc.", "edge-like", "blob-like",
              "noise-like"]
    rows = []

    def row(name: str, summary: Mapping[str, float], entry: Optional[Mapping[str, Any]]) -> List[str]:
        return [
            name,
            "-" if entry is None else f"{entry['heldout_error']:.3f}",
            "-" if entry is None else f"{100 * entry['heldout_relative_error']:.1f}%",
            f"{summary['median_orientation_selectivity']:.2f}",
            f"{summary['median_localization']:.2f}",
            f"{100 * summary['edge_like']:.0f}%",
            f"{100 * summary['blob_like']:.0f}%",
            f"{100 * summary['noise_like']:.0f}%",
        ]

    for name, entry in results["models"].items():
        rows.append(row(name, entry["filters"], entry))
    for name, summary in results.get("references", {}).items():
        rows.append(row(f"({name} reference)", summary, None))
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def _report(record: Mapping[str, Any]) -> str:
    s = record["settings"]
    t = s["thresholds"]
    models = record["models"]
    options = "; ".join(f"`{name}`: " + (", ".join(f"{k}={v}" for k, v in o.items()) or "no regularizer")
                        for name, o in s["models"].items())
    lines = [
        "# pyae experiment: filters learned from natural image patches",
        "",
        f"{s['n_train']} training and {s['n_test']} held-out {s['patch_size']}x{s['patch_size']} grayscale patches "
        f"from {s['data']}; the held-out ones come from the right {100 * s['held_out_columns']:.0f}% of each "
        f"photograph, the training ones from the rest. Normalization: {s['normalization']} (eps = "
        f"{s['whitening_epsilon']:g} x the mean eigenvalue; {s['whitening_components_above_epsilon']} of "
        f"{s['patch_size'] ** 2} components above it).",
        "",
        f"Each autoencoder: {s['n_hidden']} sigmoid hidden units, {s['decoder']} decoder, "
        f"{'tied' if s['tied_weights'] else 'untied'} weights, squared error summed over the pixels, "
        f"{s['optimizer']} lr {s['lr']:g}, batch {s['batch_size']}, {s['epochs']} epochs, seed {s['seed']}, "
        f"the same initial weights. Models: {options}. Device: {s['device']}; total time "
        f"{s.get('total_seconds', 0.0):.0f}s.",
        "",
    ]
    if s["quick"]:
        lines += ["**This is a `--quick` smoke run** (few patches and epochs): the numbers and pictures check "
                  "that the pipeline works and say nothing about the methods.", ""]
    lines += [
        format_table(record),
        "",
        "`held-out error`: the squared error summed over a patch's whitened pixels, averaged over the held-out "
        "patches (clean input, no noise); `relative`: that over the held-out patches' mean squared norm "
        f"({s['heldout_mean_squared_norm']:.1f}), i.e. the fraction of their energy not reconstructed. "
        "`median OSI`: the median orientation-selectivity index of the filters (from each filter's 2-D power "
        "spectrum: 1 = all energy in one orientation, 0 = spread evenly). `median loc.`: the median largest "
        "fraction of a filter's energy inside one 4x4 window. A filter is oriented when OSI >= "
        f"{t['oriented']:g}, localized when loc. >= {t['localized']:g}, smooth when its roughness (squared "
        f"neighbour differences relative to white noise) <= {t['smooth']:g}. Edge-like = oriented and "
        "localized; blob-like = not oriented, but localized or smooth; noise-like = none of the three. The "
        "reference rows are synthetic white-noise, Gabor and Gaussian-blob filters measured the same way"
        + (", and the filters FastICA finds in the same normalized training patches (a positive control: "
           "edge detectors learned from these photographs)" if "fastica" in record["references"] else "") + ".",
        "",
        "## The lecture's claims, checked on this run",
        "",
    ]
    for claim in record["claims"].values():
        lines.append(f"- {claim['claim'][0].upper()}{claim['claim'][1:]}: **{_verdict(claim['holds'])}** "
                     f"({claim['evidence']}).")
    lines += ["", "## Filter classes per model", "",
              "| model | oriented | localized | smooth | edge-like | blob-like | noise-like | median roughness "
              "| mean filter norm | train s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in models.items():
        f = entry["filters"]
        lines.append(f"| {name} | " + " | ".join(f"{100 * f[k]:.0f}%" for k in (
            "oriented", "localized", "smooth", "edge_like", "blob_like", "noise_like"))
            + f" | {f['median_roughness']:.2f} | {entry['mean_filter_norm']:.2f} | {entry['train_seconds']:.1f} |")
    lines += ["", "## Filters", "",
              "Each tile is a unit's filter, its encoder weights W_l / ||W_l|| over the whitened 12x12 patch "
              "(what the unit responds to most), scaled to [0, 1] on its own.", ""]
    for name in models:
        lines += [f"![filters of {name}](filters_{name}.png)", ""]
    if "fastica" in record["references"]:
        lines += ["![FastICA reference filters](filters_fastica_reference.png)", ""]
    lines += ["## Data", "", "![sample patches](patches.png)", "",
              "## Training", "", "![held-out error](heldout_error.png)", ""]
    return "\n".join(lines)
