"""pyae.experiments.filters: the filter measures give the known answers on synthetic filters."""

import math

import numpy as np
import pytest
import torch

from pyae.experiments.filters import extent, smoothness, summarize, summarize_filters

SIDE = 28
N = SIDE * SIDE
PAIRS = 2 * SIDE * (SIDE - 1)  # neighbouring pairs of a 28 x 28 image: 1512


def blob(sigma, shape=(SIDE, SIDE), centre=None):
    """A round Gaussian blob of standard deviation ``sigma`` pixels, flattened, unit norm."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    cy, cx = centre if centre is not None else ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
    w = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma**2)).ravel()
    return w / np.linalg.norm(w)


def checkerboard(shape):
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return ((-1.0) ** (rows + cols)).ravel()


def smoothness_by_loops(w, shape):
    """The definition, pair by pair: the pooled correlation of neighbouring pixels."""
    v = (w - w.mean()).reshape(shape)
    products = energy = 0.0
    for i in range(shape[0]):
        for j in range(shape[1]):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < shape[0] and j + dj < shape[1]:
                    a, b = v[i, j], v[i + di, j + dj]
                    products += a * b
                    energy += (a * a + b * b) / 2
    return products / energy


# ------------------------------------------------------------------------ smoothness


def test_smooth_filters_score_near_one():
    rows, cols = np.mgrid[:SIDE, :SIDE]
    ramp = (cols + 0.5 * rows).ravel()  # a tilted plane
    filters = np.stack([ramp, blob(2.0), blob(4.0)])
    values = smoothness(filters, (SIDE, SIDE))
    assert np.all(values > 0.93) and np.all(values <= 1.0), values
    # A blob of standard deviation s: about exp(-1/(4 s^2)) (the overlap of a Gaussian with its
    # one-pixel shift), a little less after centring by the mean.
    for sigma, value in zip((2.0, 4.0), values[1:]):
        assert value == pytest.approx(math.exp(-1 / (4 * sigma**2)), abs=0.01)
    # Smoother (broader) blobs score higher.
    broadening = smoothness(np.stack([blob(s) for s in (0.7, 1.0, 2.0, 3.0, 5.0)]))
    assert np.all(np.diff(broadening) > 0), broadening


def test_thin_strokes_score_lower_than_broad_ones():
    # Horizontal strokes 20 pixels long: a line one pixel wide, then Gaussian profiles of growing
    # width. Smoothness is texture at the scale of a pixel: it grows with the stroke's width.
    rows, cols = np.mgrid[:SIDE, :SIDE]
    along = (cols >= 4) & (cols < 24)
    line = (rows == 14) & along
    strokes = [np.exp(-((rows - 13.5) ** 2) / (2 * s**2)) * along for s in (1.0, 2.0)]
    values = smoothness(np.stack([line.ravel().astype(float)] + [w.ravel() for w in strokes]))
    assert np.all(np.diff(values) > 0) and 0.4 < values[0] < 0.5 and values[1] > 0.8, values


def test_white_speckle_scores_near_zero():
    # i.i.d. random signs: each of the |P| = 1512 products of neighbours is +-1 and they are
    # uncorrelated, so smoothness is 0 with standard deviation 1/sqrt(1512) = 0.026 per filter
    # (centring by the mean shifts the expectation by -1/(n-1) = -0.0013). 1000 filters: every
    # one within 6 standard deviations (0.15), their mean within 4 standard errors of 0 and
    # their spread within 10% of the predicted one (a 1000-sample standard deviation is good to
    # about 2%).
    rng = np.random.default_rng(0)
    speckle = rng.choice([-1.0, 1.0], size=(1000, N))
    values = smoothness(speckle)
    sd = 1 / math.sqrt(PAIRS)
    assert np.all(np.abs(values) < 6 * sd)
    assert abs(values.mean() + 1 / (N - 1)) < 4 * sd / math.sqrt(1000)
    assert values.std() == pytest.approx(sd, rel=0.1)


@pytest.mark.parametrize("shape", [(SIDE, SIDE), (4, 6), (2, 2), (1, 8), (8, 1)])
def test_checkerboard_scores_minus_one(shape):
    # Even sizes: mean 0 and every neighbour of the opposite sign.
    assert smoothness(checkerboard(shape)[None], shape)[0] == pytest.approx(-1.0, abs=1e-12)


def test_smoothness_is_the_definition_and_reads_rows_in_image_order():
    # On a non-square tile, against the pair-by-pair loop: (H, W) is read row-major, so a filter
    # smooth along the rows and rough down the columns differs from its transpose's reading.
    rng = np.random.default_rng(1)
    shape = (5, 7)
    filters = rng.standard_normal((6, 35))
    expected = [smoothness_by_loops(w, shape) for w in filters]
    np.testing.assert_allclose(smoothness(filters, shape), expected, rtol=1e-12, atol=1e-15)
    # The same 30 values +1, -1, +1, ... read as a 5 x 6 image: every row +1 -1 +1 -1 +1 -1, so
    # 25 horizontal pairs of opposite sign and 24 vertical pairs of equal sign: (24 - 25) / 49.
    # Read as a 6 x 5 image they form a checkerboard: -1.
    stripes = np.tile([1.0, -1.0], 15)[None]
    assert smoothness(stripes, (5, 6))[0] == pytest.approx(-1 / 49, abs=1e-12)
    assert smoothness(stripes, (6, 5))[0] == pytest.approx(-1.0, abs=1e-12)


def test_smoothness_is_scale_and_offset_invariant():
    rng = np.random.default_rng(2)
    filters = rng.standard_normal((4, N))
    base = smoothness(filters)
    np.testing.assert_allclose(smoothness(-3.0 * filters + 7.0), base, rtol=1e-10)
    np.testing.assert_allclose(smoothness(1e-200 * filters), base, rtol=1e-10)


def test_constant_and_zero_filters_have_no_smoothness():
    # No variation: the correlation is undefined (NaN), whatever the rounding of the mean.
    filters = np.stack([np.zeros(N), np.full(N, 1 / SIDE), np.full(N, 0.1), blob(2.0)])
    values = smoothness(filters)
    assert np.isnan(values[:3]).all() and np.isfinite(values[3])


# ------------------------------------------------------------------------ extent


@pytest.mark.parametrize("m", [1, 2, 7, 100, N])
def test_extent_counts_equal_pixels_exactly(m):
    # m nonzero pixels of equal magnitude, any signs and positions: exactly m.
    rng = np.random.default_rng(m)
    w = np.zeros(N)
    where = rng.choice(N, size=m, replace=False)
    w[where] = rng.choice([-1.0, 1.0], size=m) / math.sqrt(m)
    assert extent(w[None])[0] == pytest.approx(m, rel=1e-12)
    assert extent(5.0 * w[None])[0] == pytest.approx(m, rel=1e-12)  # scale-invariant


def test_single_pixel_has_extent_one():
    filters = np.eye(N)[[0, 300, N - 1]]
    np.testing.assert_allclose(extent(filters), 1.0, rtol=0, atol=1e-15)


def test_wider_blobs_have_larger_extent():
    # A 2-D Gaussian blob of standard deviation s: (sum w^2)^2 / sum w^4 = 2 pi s^2 (the
    # integrals; the 28 x 28 grid's sums match them to 1e-4 for 1.5 <= s <= 4: narrower blobs
    # are undersampled, wider ones cut off by the border).
    sigmas = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0])
    values = extent(np.stack([blob(s) for s in sigmas]))
    assert np.all(np.diff(values) > 0), values
    np.testing.assert_allclose(values[2:6], 2 * math.pi * sigmas[2:6] ** 2, rtol=1e-4)


def test_extent_of_white_noise_and_zero_rows():
    # Gaussian white noise: n E[w^2]^2 / E[w^4] = n / 3; zero rows have none.
    rng = np.random.default_rng(3)
    values = extent(rng.standard_normal((500, N)))
    assert values.mean() == pytest.approx(N / 3, rel=0.02)
    assert np.all((values >= 1) & (values <= N))
    assert np.isnan(extent(np.zeros((2, N)))).all()


# ------------------------------------------------------------------------ inputs and outputs


@pytest.mark.parametrize("make", [
    lambda a: a,
    lambda a: a.astype(np.float32),
    lambda a: torch.from_numpy(a),
    lambda a: torch.from_numpy(a).float(),
    lambda a: torch.from_numpy(a).to(torch.bfloat16),
])
def test_shapes_and_dtypes(make):
    rng = np.random.default_rng(4)
    array = rng.standard_normal((5, N))
    filters = make(array)
    for values in (smoothness(filters), extent(filters)):
        assert isinstance(values, np.ndarray) and values.dtype == np.float64 and values.shape == (5,)
    tolerance = 1e-2 if filters.dtype == torch.bfloat16 else 1e-5
    np.testing.assert_allclose(smoothness(filters), smoothness(array), atol=tolerance)
    np.testing.assert_allclose(extent(filters), extent(array), rtol=tolerance)
    # Integers are numbers too; no filters, no values.
    assert smoothness(np.ones((2, 4), dtype=np.int64) * [[1, -1, -1, 1]], (2, 2)) == pytest.approx([-1.0, -1.0])
    assert smoothness(np.zeros((0, N))).shape == (0,) and extent(np.zeros((0, N))).shape == (0,)


def test_model_filters_are_accepted():
    import pyae

    torch.manual_seed(0)
    model = pyae.Autoencoder(N, 10)
    assert smoothness(model.filters()).shape == (10,) and extent(model.filters()).shape == (10,)


@pytest.mark.parametrize("filters, error, match", [
    ([[0.0, 1.0, 2.0, 3.0]], TypeError, "filters must be a numpy array"),
    (np.array([[True, False, True, False]]), TypeError, "filters must be a real"),
    (np.ones((1, 4), dtype=np.complex128), TypeError, "filters must be a real"),
    (torch.ones(1, 4, dtype=torch.bool), TypeError, "filters must be a real"),
    (np.ones(4), ValueError, "filters must be 2-D"),
    (np.ones((1, 2, 2)), ValueError, "filters must be 2-D"),
    (np.ones((1, 0)), ValueError, "filters must have at least one pixel"),
    (np.array([[0.0, np.nan, 1.0, 2.0]]), ValueError, "filters contains NaN"),
    (torch.tensor([[0.0, float("inf"), 1.0, 2.0]]), ValueError, "filters contains NaN"),
])
def test_bad_filters_raise(filters, error, match):
    with pytest.raises(error, match=match):
        smoothness(filters, (2, 2))
    with pytest.raises(error, match=match):
        extent(filters)


@pytest.mark.parametrize("shape, error, match", [
    ((3, 3), ValueError, "shape 3 x 3 = 9 pixels does not match"),
    ((2, 2, 1), TypeError, "shape must be a pair"),
    (4, TypeError, "shape must be a pair"),
    ((2.0, 2), TypeError, "shape must be a pair"),
    ((True, 4), TypeError, "shape must be a pair"),
    ((0, 4), ValueError, "shape must be two positive ints"),
    ((-2, -2), ValueError, "shape must be two positive ints"),
])
def test_bad_shape_raises(shape, error, match):
    with pytest.raises(error, match=match):
        smoothness(np.ones((1, 4)), shape)


def test_one_pixel_has_no_neighbours():
    with pytest.raises(ValueError, match="shape must have at least two pixels"):
        smoothness(np.ones((3, 1)), (1, 1))


# ------------------------------------------------------------------------ summaries


def test_summarize_is_median_and_interquartile_range():
    values = np.array([4.0, 1.0, np.nan, 3.0, 2.0, 5.0])  # NaN left out
    assert summarize(values) == {"median": 3.0, "iqr": [2.0, 4.0]}
    assert summarize([np.nan]) == {"median": None, "iqr": None}
    assert summarize([]) == {"median": None, "iqr": None}
    summary = summarize(np.arange(10.0))
    assert all(type(x) is float for x in [summary["median"], *summary["iqr"]])  # JSON-ready
    with pytest.raises(ValueError, match="values must be 1-D"):
        summarize(np.ones((2, 2)))
    with pytest.raises(TypeError, match="values must be"):
        summarize(["a", "b"])


def test_summarize_filters():
    filters = np.stack([blob(1.0), blob(2.0), blob(3.0)])
    summary = summarize_filters(filters, (SIDE, SIDE))
    assert set(summary) == {"smoothness", "extent"}
    assert summary["smoothness"]["median"] == pytest.approx(smoothness(filters)[1])
    assert summary["extent"]["median"] == pytest.approx(extent(filters)[1])
    q25, q75 = summary["extent"]["iqr"]
    assert extent(filters)[0] < q25 < summary["extent"]["median"] < q75 < extent(filters)[2]
