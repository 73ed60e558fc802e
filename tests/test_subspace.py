"""pyae.experiments.subspace: principal angles, the principal subspace of centered data, and
the linear autoencoder that finds it."""

import json
import math

import pytest
import torch

from pyae.experiments.subspace import (
    MATCH_THRESHOLD_DEGREES,
    compare_subspaces,
    format_section,
    principal_angles,
    top_right_singular_vectors,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def planted(count=500, n=12, spectrum=(3.0, 2.5, 2.0, 0.3, 0.25, 0.2, 0.15, 0.1), offset=0.0, seed=0):
    """``count`` examples in R^n whose covariance has the given leading spectrum (then zeros) in a
    random orthonormal basis: (examples, the basis as columns). The top 3 directions are
    separated from the rest by a gap of 2.0 -> 0.3."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    scales = torch.zeros(n, dtype=torch.float64)
    scales[:len(spectrum)] = torch.tensor(spectrum, dtype=torch.float64)
    x = (torch.randn(count, n, generator=g, dtype=torch.float64) * scales) @ basis.T
    return x + offset, basis


def rotated(theta, n=5):
    """e_1 and cos(theta) e_1 + sin(theta) e_2, each as an (n, 1) matrix."""
    a = torch.zeros(n, 1, dtype=torch.float64)
    a[0] = 1.0
    b = torch.zeros(n, 1, dtype=torch.float64)
    b[0], b[1] = math.cos(theta), math.sin(theta)
    return a, b


# ------------------------------------------------------------------------------ principal_angles


def test_identical_subspaces_are_at_zero_whatever_the_basis():
    a = randn(30, 4)
    mix = randn(4, 4, seed=1)  # invertible (almost surely): another basis of the same subspace
    angles = principal_angles(a, a @ mix)
    assert angles.dtype == torch.float64 and angles.shape == (4,)
    assert angles.abs().max() < 1e-6


def test_orthogonal_subspaces_are_at_ninety_degrees():
    eye = torch.eye(6, dtype=torch.float64)
    assert torch.allclose(principal_angles(eye[:, :2], eye[:, 2:5] * 3.0), torch.full((2,), 90.0, dtype=torch.float64))


@pytest.mark.parametrize("degrees", [1e-6, 0.5, 30.0, 45.0, 60.0, 89.0, 90.0])
def test_a_rotation_in_a_plane_gives_its_angle(degrees):
    a, b = rotated(math.radians(degrees))
    assert principal_angles(a, b).item() == pytest.approx(degrees, rel=1e-9, abs=1e-12)
    # With a shared direction added: the angles are [0, theta], ascending.
    shared = torch.zeros(5, 1, dtype=torch.float64)
    shared[4] = 1.0
    angles = principal_angles(torch.cat([a, shared], 1), torch.cat([shared, b], 1))
    assert angles[0].item() == pytest.approx(0.0, abs=1e-12)
    assert angles[1].item() == pytest.approx(degrees, rel=1e-9, abs=1e-12)


def test_radians_on_request():
    a, b = rotated(0.3)
    assert principal_angles(a, b, degrees=False).item() == pytest.approx(0.3, rel=1e-12)


def test_invariant_to_the_bases_and_symmetric():
    a, b = randn(40, 5, seed=2), randn(40, 5, seed=3)
    # Put two directions of b close to a's, for angles across the whole range.
    b[:, :2] = a[:, :2] + 0.05 * b[:, :2]
    angles = principal_angles(a, b)
    assert (angles[1:] >= angles[:-1]).all()
    assert angles[0] < 10.0 < angles[-1]
    other = principal_angles(a @ randn(5, 5, seed=4), b @ randn(5, 5, seed=5))
    assert torch.allclose(angles, other, atol=1e-9)
    assert torch.allclose(angles, principal_angles(b, a), atol=1e-9)
    # Any real dtype: float32 bases give the same angles to float32 accuracy.
    assert torch.allclose(angles, principal_angles(a.float(), b.float()), atol=1e-3)


def test_subspaces_of_different_dimensions_match_scipy():
    linalg = pytest.importorskip("scipy.linalg")
    a, b = randn(20, 6, seed=6), randn(20, 3, seed=7)
    b[:, 0] = a[:, 0] + 0.1 * b[:, 0]  # one small angle among large ones
    expected = torch.rad2deg(torch.from_numpy(linalg.subspace_angles(a.numpy(), b.numpy()))).flip(0)
    for angles in (principal_angles(a, b), principal_angles(b, a)):
        assert angles.shape == (3,)
        assert torch.allclose(angles, expected, rtol=1e-7, atol=1e-10)


def test_tiny_angles_keep_their_accuracy_next_to_large_ones():
    """arccos(cos(t)) loses a small t (cos(1e-9) rounds to 1); the sines keep it, even when the
    same pair of subspaces also has large angles (where scipy 1.17's subspace_angles falls back
    to arccos for the small one)."""
    expected = torch.tensor([1e-7, 40.0, 77.0], dtype=torch.float64)  # degrees
    a, b = torch.zeros(8, 3, dtype=torch.float64), torch.zeros(8, 3, dtype=torch.float64)
    for column, theta in enumerate(torch.deg2rad(expected)):
        a[2 * column, column] = 1.0
        b[2 * column, column], b[2 * column + 1, column] = torch.cos(theta), torch.sin(theta)
    assert torch.allclose(principal_angles(a, b), expected, rtol=1e-12, atol=0)
    rotation, _ = torch.linalg.qr(randn(8, 8, seed=8))  # the same pair, turned as a whole
    assert torch.allclose(principal_angles(rotation @ a, rotation @ b), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "a, b, error, match",
    [
        ([[1.0], [0.0]], torch.ones(2, 1), TypeError, "a must be a torch.Tensor"),
        (torch.ones(2, 1), torch.ones(2, 1, dtype=torch.complex64), TypeError, "b must be a real"),
        (torch.ones(2, 1), torch.ones(2, 1, dtype=torch.bool), TypeError, "b must be a real"),
        (torch.ones(3), torch.ones(3, 1), ValueError, "a must be a 2-D tensor"),
        (torch.ones(3, 0), torch.ones(3, 1), ValueError, "a must be non-empty"),
        (torch.ones(2, 3), torch.ones(2, 1), ValueError, "a must have at most as many columns as rows"),
        (torch.ones(3, 1), torch.ones(4, 1), ValueError, "the same number of rows"),
        (torch.ones(3, 2), torch.eye(3)[:, :2], ValueError, "a must have linearly independent columns"),
        (torch.eye(3)[:, :2], torch.zeros(3, 1), ValueError, "b must have linearly independent columns"),
        (torch.eye(3)[:, :2], torch.tensor([[1.0], [float("nan")], [0.0]]), ValueError, "b must be finite"),
    ],
)
def test_principal_angles_rejects_bad_arguments(a, b, error, match):
    with pytest.raises(error, match=match):
        principal_angles(a, b)


def test_principal_angles_checks_degrees():
    with pytest.raises(TypeError, match="degrees must be a bool"):
        principal_angles(torch.eye(2), torch.eye(2), degrees=1)


# ------------------------------------------------------------------------------ top_right_singular_vectors


def test_top_right_singular_vectors_are_torch_svds_of_the_centered_data():
    # A large mean along the weakest direction: without centering it would be the top one.
    x, basis = planted(offset=0.0)
    x = x + 20.0 * basis[:, -1]
    vectors = top_right_singular_vectors(x.float(), 3)
    assert vectors.shape == (12, 3) and vectors.dtype == torch.float64
    assert torch.allclose(vectors.T @ vectors, torch.eye(3, dtype=torch.float64), atol=1e-12)

    _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    expected = vh[:3].T
    # The same vectors up to sign (float32 input: float32 accuracy), the largest entry positive.
    assert torch.allclose((vectors * expected).sum(0).abs(), torch.ones(3, dtype=torch.float64), atol=1e-5)
    rows = vectors.abs().argmax(0)
    assert (vectors[rows, torch.arange(3)] > 0).all()
    # The planted subspace, up to the sampling error of 500 examples.
    assert principal_angles(vectors, basis[:, :3]).max() < 5.0
    assert principal_angles(vectors, basis[:, -1:]).min() > 85.0


def test_top_right_singular_vectors_match_scikit_learn_pca():
    decomposition = pytest.importorskip("sklearn.decomposition")
    x, _ = planted(offset=3.0, seed=1)
    components = torch.from_numpy(decomposition.PCA(4, svd_solver="full").fit(x.numpy()).components_)
    vectors = top_right_singular_vectors(x, 4)
    assert torch.allclose((vectors * components.T).sum(0).abs(), torch.ones(4, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize(
    "data, k, error, match",
    [
        ("pixels", 1, TypeError, "data must be a torch.Tensor"),
        (torch.ones(5, 3, dtype=torch.int64), 1, TypeError, "data must be a floating-point tensor"),
        (torch.randn(5, 3), 1.0, TypeError, "k must be an int"),
        (torch.randn(5, 3), True, TypeError, "k must be an int"),
        (torch.randn(5, 3), 0, ValueError, r"k must be in \[1, 3\]"),
        (torch.randn(3, 5), 3, ValueError, r"k must be in \[1, 2\]"),
        (torch.randn(5), 1, ValueError, "data must be a 2-D tensor"),
        (torch.full((5, 3), float("inf")), 1, ValueError, "data must be finite"),
        (torch.ones(5, 3), 1, ValueError, "rank below k=1"),
    ],
)
def test_top_right_singular_vectors_rejects_bad_arguments(data, k, error, match):
    with pytest.raises(error, match=match):
        top_right_singular_vectors(data, k)


# ------------------------------------------------------------------------------ compare_subspaces


@pytest.fixture(scope="module")
def synthetic_result():
    """compare_subspaces with its default settings (300 epochs, under a second per model) on
    500 examples of R^12 with a planted 3-d principal subspace, away from the origin."""
    x, _ = planted(offset=0.5, seed=2)
    # One thread, as in the one_thread fixture (which, function-scoped, is not yet active when
    # a module-scoped fixture runs): OpenMP threads on tiny matrices cost far more than they save.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compare_subspaces(x.float(), 3, seed=0)
    finally:
        torch.set_num_threads(previous)


def test_the_linear_autoencoder_finds_a_planted_subspace(synthetic_result):
    result = synthetic_result
    assert result["k"] == 3 and result["settings"]["epochs"] == 300 and not result["settings"]["quick"]
    linear = result["models"]["linear"]
    assert len(linear["angles_degrees"]) == 3
    # The 3rd and 4th covariance eigenvalues (about 4 and 0.09) are far apart, so the subspace
    # is sharply defined and training finds it closely: the largest angle measured 0.06-0.2
    # degrees over 4 data sets x 3 seeds (0.1 here). 1 degree leaves 5x room for other
    # platforms' rounding; a miss (a random 3-d subspace of R^12: ~60-90 degrees; 60 epochs
    # instead of 300: ~10) fails it.
    assert linear["max_degrees"] < 1.0, linear["angles_degrees"]
    assert linear["matches"]
    assert result["random"]["max_degrees"] > 45.0
    # Reported per model: angles ascending, in degrees, with their max and mean.
    for name in ("linear", "nonlinear"):
        entry = result["models"][name]
        angles = entry["angles_degrees"]
        assert angles == sorted(angles) and all(0.0 <= a <= 90.0 for a in angles)
        assert entry["max_degrees"] == max(angles)
        assert entry["mean_degrees"] == pytest.approx(sum(angles) / len(angles))
        assert entry["matches"] == (entry["max_degrees"] <= MATCH_THRESHOLD_DEGREES)
        assert entry["config"]["n_hidden"] == 3 and entry["config"]["loss"] == "mse"
    assert result["models"]["linear"]["config"]["decoder_activation"] == "linear"
    assert result["models"]["nonlinear"]["config"]["decoder_activation"] == "sigmoid"
    json.dumps(result)  # plain data, for results.json


def test_format_section_states_the_verdicts(synthetic_result):
    text = format_section(synthetic_result)
    assert text.startswith("## The linear autoencoder and the SVD\n")
    assert "| model | decoder | max angle | mean angle | train s |" in text
    for name in ("linear", "nonlinear", "random subspace"):
        assert f"| {name} |" in text
    linear = synthetic_result["models"]["linear"]
    assert f"- `linear`: the largest angle is {linear['max_degrees']:.1f}°" in text
    assert "so its decoder subspace matches the principal subspace" in text
    assert f"Threshold: {MATCH_THRESHOLD_DEGREES:g}°" in text
    with pytest.raises(TypeError, match="result must be a mapping"):
        format_section([])


def test_quick_mode_runs_and_says_so():
    x, _ = planted(count=200, seed=3)
    result = compare_subspaces(x, 2, quick=True)
    assert result["settings"]["quick"] is True and result["settings"]["epochs"] <= 10
    assert "Quick run" in format_section(result)


@pytest.mark.parametrize(
    "images, k, options, error, match",
    [
        (None, 2, {}, TypeError, "images must be a torch.Tensor"),
        (torch.randn(10, 4), 5, {}, ValueError, r"k must be in \[1, 4\]"),
        (torch.randn(10, 4), 2, {"epochs": 0}, ValueError, "epochs must be >= 1"),
        (torch.randn(10, 4), 2, {"quick": 1}, TypeError, "quick must be a bool"),
        (torch.randn(10, 4), 2, {"device": "tpu"}, ValueError, "device must be"),
    ],
)
def test_compare_subspaces_rejects_bad_arguments(images, k, options, error, match):
    with pytest.raises(error, match=match):
        compare_subspaces(images, k, **options)
