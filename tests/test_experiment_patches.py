"""pyae.experiments.patches: the edge-detector measures on filters with known answers, the
patches and their normalization, and the quick run's files."""

import json

import numpy as np
import pytest
import torch

from helpers import run_quick
from pyae.experiments.patches import (
    MODELS,
    THRESHOLDS,
    blob_filters,
    check_claims,
    extract_patches,
    filter_measures,
    fit_whitening,
    format_table,
    gabor_filters,
    localization,
    orientation_selectivity,
    roughness,
    summarize_measures,
)

SIZE = 12
Y, X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)


def gabor(cx=5.5, cy=5.5, sigma=2.0, wavelength=4.0, angle=0.3, phase=0.0):
    along = (X - cx) * np.cos(angle) + (Y - cy) * np.sin(angle)
    envelope = np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * sigma ** 2))
    return (envelope * np.cos(2 * np.pi * along / wavelength + phase)).ravel()


def blob(cx=5.5, cy=5.5, sigma=1.5):
    return np.exp(-((X - cx) ** 2 + (Y - cy) ** 2) / (2 * sigma ** 2)).ravel()


# ------------------------------------------------------------------------ measures


@pytest.mark.parametrize("angle", [0.0, 0.4, np.pi / 4, 1.2, np.pi / 2, 2.5])
def test_gabor_and_grating_are_orientation_selective(angle):
    assert orientation_selectivity(gabor(angle=angle, wavelength=3.0))[0] > 0.85
    assert orientation_selectivity(gabor(angle=angle, sigma=2.0, wavelength=5.0))[0] > 0.7
    grating = np.cos(2 * np.pi * ((X * np.cos(angle) + Y * np.sin(angle)) / 3.0)).ravel()
    assert orientation_selectivity(grating)[0] > 0.8


def test_selectivity_ranks_orientation_bandwidth():
    # The narrower the orientation band (more cycles under the envelope), the higher.
    values = [orientation_selectivity(gabor(sigma=1.5, wavelength=w))[0] for w in (10.0, 6.0, 4.0, 3.0)]
    assert values == sorted(values)
    assert values[0] < THRESHOLDS["oriented"] < values[-1]


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_isotropic_blob_scores_low_selectivity(sigma):
    # Centred on the grid's centre: the spectrum has the square grid's 4-fold symmetry.
    assert orientation_selectivity(blob(sigma=sigma))[0] < 1e-6
    # Off centre, the mean removal's box breaks the symmetry a little.
    assert orientation_selectivity(blob(cx=4.0, cy=7.0, sigma=sigma))[0] < 0.15


def test_white_noise_scores_low():
    noise = np.random.default_rng(0).standard_normal((500, SIZE * SIZE))
    measures = filter_measures(noise, (SIZE, SIZE))
    assert np.median(measures["orientation_selectivity"]) < 0.15
    assert np.mean(measures["orientation_selectivity"] >= THRESHOLDS["oriented"]) == 0.0
    assert np.median(measures["localization"]) < 0.25
    assert np.mean(measures["localization"] >= THRESHOLDS["localized"]) == 0.0
    assert np.median(measures["roughness"]) == pytest.approx(1.0, abs=0.05)
    summary = summarize_measures(measures)
    assert summary["noise_like"] == 1.0 and summary["edge_like"] == 0.0 and summary["blob_like"] == 0.0


def test_energy_in_one_window_is_maximally_localized():
    rng = np.random.default_rng(1)
    for top, left in [(0, 0), (3, 5), (8, 8)]:
        tile = np.zeros((SIZE, SIZE))
        # Zero-mean content inside the window, so that the mean removal leaves it alone.
        values = rng.standard_normal((4, 4))
        tile[top:top + 4, left:left + 4] = values - values.mean()
        assert localization(tile.ravel())[0] == pytest.approx(1.0, abs=1e-12)
    # Spread evenly: a checkerboard has 16/144 of its energy in any 4x4 window.
    checkerboard = ((X + Y) % 2 * 2 - 1).ravel()
    assert localization(checkerboard)[0] == pytest.approx(16 / 144)
    assert localization(checkerboard, window=12)[0] == pytest.approx(1.0)


def test_measures_are_scale_and_offset_invariant_and_accept_tensors():
    filters = np.stack([gabor(), blob(), np.random.default_rng(2).standard_normal(SIZE * SIZE)])
    reference = filter_measures(filters)
    changed = filter_measures(torch.from_numpy(-3.0 * filters + 7.0).float())
    for name in reference:
        np.testing.assert_allclose(changed[name], reference[name], rtol=1e-4, atol=1e-6)


def test_constant_filter_scores_zero():
    constant = np.full((1, SIZE * SIZE), 2.0)
    for values in filter_measures(constant).values():
        assert values[0] == 0.0


def test_roughness_of_smooth_and_rough_filters():
    assert roughness(blob(sigma=2.0))[0] < 0.15
    checkerboard = ((X + Y) % 2 * 2 - 1).ravel()
    # Every neighbour pair differs by twice the amplitude: twice white noise's expectation.
    assert roughness(checkerboard)[0] == pytest.approx(2.0)


def test_measure_argument_errors():
    with pytest.raises(ValueError, match="tile_shape"):
        filter_measures(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="NaN"):
        orientation_selectivity(np.full((1, 144), np.nan))
    with pytest.raises(ValueError, match="window"):
        localization(np.ones((1, 144)), window=13)


def test_reference_banks_classify_as_intended():
    tile = (SIZE, SIZE)
    gabors = summarize_measures(filter_measures(gabor_filters(200, SIZE, seed=3), tile))
    blobs = summarize_measures(filter_measures(blob_filters(200, SIZE, seed=3), tile))
    assert gabors["edge_like"] >= 0.9 and gabors["blob_like"] == 0.0
    assert blobs["blob_like"] == 1.0 and blobs["oriented"] == 0.0 and blobs["edge_like"] == 0.0


def test_summary_classes_partition_by_definition():
    measures = {
        "orientation_selectivity": np.array([0.9, 0.9, 0.1, 0.1, 0.1]),
        "localization": np.array([0.8, 0.1, 0.8, 0.1, 0.1]),
        "roughness": np.array([1.0, 1.0, 1.0, 0.1, 1.0]),
    }
    summary = summarize_measures(measures)
    assert summary["edge_like"] == pytest.approx(0.2)  # the first
    assert summary["oriented"] == pytest.approx(0.4)
    assert summary["blob_like"] == pytest.approx(0.4)  # localized (3rd) or smooth (4th)
    assert summary["noise_like"] == pytest.approx(0.2)  # the last
    assert summary["median_orientation_selectivity"] == pytest.approx(0.1)


def test_check_claims_reads_the_fractions():
    def entry(**fractions):
        base = {"edge_like": 0.0, "blob_like": 0.0, "noise_like": 0.0, "oriented": 0.0, "smooth": 0.0,
                "localized": 0.0}
        return {"filters": {**base, **fractions}}

    models = {"plain": entry(edge_like=0.1, noise_like=0.7), "weight_decay": entry(blob_like=0.6),
              "denoising_gaussian": entry(edge_like=0.5)}
    claims = check_claims(models)
    assert [c["holds"] for c in claims.values()] == [True, True, True]
    models = {"plain": entry(edge_like=0.5, noise_like=0.2), "weight_decay": entry(blob_like=0.3),
              "denoising_gaussian": entry(edge_like=0.5)}
    assert [c["holds"] for c in check_claims(models).values()] == [False, False, False]
    assert check_claims({"denoising_gaussian": entry()}) == {}


# --------------------------------------------------------------------------- data


def test_extract_patches_shapes_and_split():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    images = [rng.uniform(size=(40, 50)), rng.uniform(size=(30, 60))]
    train, test = extract_patches(images, 101, 21, patch_size=8, held_out_columns=0.3, seed=5)
    assert train.shape == (101, 64) and test.shape == (21, 64)
    assert train.dtype == np.float64
    again = extract_patches(images, 101, 21, patch_size=8, held_out_columns=0.3, seed=5)
    np.testing.assert_array_equal(again[0], train)
    other = extract_patches(images, 101, 21, patch_size=8, held_out_columns=0.3, seed=6)
    assert not np.array_equal(other[0], train)
    # The first image's training patches come from its left 35 columns only: each patch is a
    # window of that region (checked through its top-left pixel value and the rows below it).
    left = images[0][:, :35]
    windows = np.lib.stride_tricks.sliding_window_view(left, (8, 8)).reshape(-1, 64)
    first = train[:51]
    assert all((np.abs(windows - patch).max(axis=1) == 0).any() for patch in first[:10])
    right = images[0][:, 35:]
    right_windows = np.lib.stride_tricks.sliding_window_view(right, (8, 8)).reshape(-1, 64)
    assert all((np.abs(right_windows - patch).max(axis=1) == 0).any() for patch in test[:11])
    with pytest.raises(ValueError, match="smaller"):
        extract_patches(images, 10, 10, patch_size=8, held_out_columns=0.9)
    with pytest.raises(ValueError, match="n_train"):
        extract_patches(images, 0, 10)


def test_whitening_statistics():
    pytest.importorskip("sklearn")
    from pyae.experiments.patches import load_grayscale_images

    images = load_grayscale_images()
    assert len(images) == 2 and all(image.shape == (427, 640) for image in images)
    assert all(0.0 <= image.min() and image.max() <= 1.0 for image in images)
    train, test = extract_patches(images, 6000, 2000, seed=0)
    assert train.shape == (6000, 144) and test.shape == (2000, 144)
    whitening = fit_whitening(train, 0.1)
    white = whitening(train)
    # Every patch has zero mean; the pixels have unit mean variance on the training set.
    np.testing.assert_allclose(white.mean(axis=1), 0.0, atol=1e-10)
    assert white.var(axis=0).mean() == pytest.approx(1.0, rel=1e-6)
    # The covariance is diagonal in the eigenbasis, with lambda / (lambda + eps) (scaled):
    # the leading components come out with equal variance, the constant direction with none.
    covariance = white.T @ white / white.shape[0]
    eigenvalues = np.linalg.eigvalsh(covariance)[::-1]
    assert eigenvalues[0] / eigenvalues[20] < 1.2  # flat where the raw spectrum spans decades
    raw = np.linalg.eigvalsh(np.cov((train - train.mean(axis=1, keepdims=True)).T))[::-1]
    assert raw[0] / raw[20] > 10
    assert eigenvalues[-1] < 1e-8
    assert whitening.eigenvalues[0] >= whitening.eigenvalues[-1] >= 0.0
    # Held-out patches: same transform, similar statistics.
    assert whitening(test).var(axis=0).mean() == pytest.approx(1.0, rel=0.3)


def test_fastica_positive_control_finds_oriented_filters():
    # ICA of whitened natural patches gives localized, oriented filters: the measure must see them.
    pytest.importorskip("sklearn")
    from pyae.experiments.patches import _ica_reference, load_grayscale_images

    train, _ = extract_patches(load_grayscale_images(), 5000, 2, seed=0)
    white = fit_whitening(train, 0.1)(train)
    summary, filters = _ica_reference(white, {"n_components": 40, "patches": 5000}, (SIZE, SIZE), 0)
    assert filters.shape == (40, SIZE * SIZE)
    assert summary["converged"] is True
    assert summary["oriented"] >= 0.5 and summary["edge_like"] >= 0.1 and summary["noise_like"] <= 0.25
    assert _ica_reference(white, None, (SIZE, SIZE), 0) is None


# ------------------------------------------------------------------------ quick run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from pyae.experiments.patches import run_experiment

    return run_quick(run_experiment, tmp_path_factory.mktemp("patches"))


def test_quick_run_results(quick_run):
    out, results = quick_run
    stored = json.loads((out / "results.json").read_text())
    assert stored == json.loads(json.dumps(results))
    assert list(stored["models"]) == list(MODELS) == ["plain", "weight_decay", "denoising_gaussian"]
    settings = stored["settings"]
    assert settings["quick"] is True and settings["complete"] is True and settings["cpu_threads"] == 1
    assert settings["n_train"] == 4000 and settings["n_test"] == 1000 and settings["patch_size"] == 12
    for name, entry in stored["models"].items():
        assert entry["heldout_error"] > 0.0 and 0.0 < entry["heldout_relative_error"] < 1.5
        assert len(entry["heldout_error_per_epoch"]) == settings["epochs"]
        assert entry["config"]["n_hidden"] == 200 and entry["config"]["decoder_activation"] == "linear"
        assert entry["config"]["loss"] == "mse"
        for option, value in MODELS[name].items():
            assert entry["config"][option] == value
        filters = entry["filters"]
        for key in ("edge_like", "blob_like", "noise_like", "oriented", "localized", "smooth"):
            assert 0.0 <= filters[key] <= 1.0
        assert filters["edge_like"] + filters["blob_like"] + filters["noise_like"] <= 1.0 + 1e-12
    assert set(stored["references"]) == {"white_noise", "gabor", "gaussian_blob"}  # no FastICA in quick mode
    assert set(stored["claims"]) == {"denoising_more_edge_like_than_plain", "weight_decay_blob_like",
                                     "plain_little_structure"}
    assert all(isinstance(c["holds"], bool) for c in stored["claims"].values())
    assert not list(out.glob(".*.tmp"))


def test_quick_run_pictures_and_report(quick_run):
    out, results = quick_run
    image = pytest.importorskip("matplotlib.image")
    for name in MODELS:
        pixels = image.imread(out / f"filters_{name}.png")
        # 10 x 20 tiles of 12 pixels with 1-pixel padding, 3x, plus the title band.
        assert pixels.shape[1] == (20 * 13 + 1) * 3 and pixels.shape[0] == (10 * 13 + 1) * 3 + 30
    assert (out / "patches.png").stat().st_size > 0
    assert (out / "heldout_error.png").stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "smoke run" in report
    for name in MODELS:
        assert f"| {name} " in report and f"filters_{name}.png" in report
    for claim in results["claims"].values():
        assert ("**holds**" if claim["holds"] else "**does not hold**") in report
    table = format_table(results)
    assert table.splitlines()[0].startswith("| model")
    for name in MODELS:
        assert f"| {name} " in table
    assert "white_noise reference" in table
