"""pyae.sklearn.AutoencoderTransformer: scikit-learn's own estimator checks, Pipeline and
GridSearchCV on real digits, pickling, reproducibility, and errors; and that ``import pyae``
works without scikit-learn."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from helpers import needs_cuda  # noqa: E402
from pyae.config import TrainConfig  # noqa: E402
from pyae.data import load_mnist  # noqa: E402
from pyae.sklearn import AutoencoderTransformer  # noqa: E402
from pyae.training import train  # noqa: E402


def small(**overrides):
    """A small, fast estimator."""
    options = dict(n_hidden=8, epochs=2, batch_size=16, random_state=0)
    options.update(overrides)
    return AutoencoderTransformer(**options)


@pytest.fixture(scope="module")
def digits():
    """1,000 real digits of all classes (the embedded training set is sorted by class) as
    float32 numpy arrays: the first 500 to train on, the other 500 to test on."""
    images, labels = load_mnist()
    keep = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))[:1000]
    return images[keep].numpy(), labels[keep].numpy()


@pytest.fixture(scope="module")
def data():
    """Small real-valued data, not in [0, 1]."""
    return np.random.RandomState(0).normal(size=(40, 6))


# ---------------------------------------------------------------------- sklearn's checks


# No check is excused: every one of scikit-learn's checks passes (expected_failed_checks
# stays empty; see the class docstring).
@parametrize_with_checks([AutoencoderTransformer(epochs=2, n_hidden=4, batch_size=16)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ------------------------------------------------------------------------- pipelines


def test_pipeline_with_logistic_regression_classifies_digits(digits):
    images, labels = digits
    pipeline = Pipeline([
        ("features", AutoencoderTransformer(n_hidden=100, loss="cross_entropy", epochs=20, random_state=0)),
        ("classifier", LogisticRegression(max_iter=300)),
    ])
    pipeline.fit(images[:500], labels[:500])
    predictions = pipeline.predict(images[500:])
    assert predictions.shape == (500,)
    accuracy = float(np.mean(predictions == labels[500:]))
    # Chance is 0.1; seeds 0-3 gave 0.82-0.83 (the pixels themselves: 0.86 with 500 digits).
    assert accuracy > 0.75, accuracy
    features = pipeline.named_steps["features"]
    assert features.transform(images[:3]).shape == (3, 100)
    assert features.n_iter_ == 20 and len(features.history_["loss"]) == 20


def test_grid_search_over_n_hidden(digits):
    images, labels = digits
    pipeline = Pipeline([
        ("features", small(epochs=2)),
        ("classifier", LogisticRegression(max_iter=100)),
    ])
    search = GridSearchCV(pipeline, {"features__n_hidden": [4, 16]}, cv=2)
    search.fit(images[:200], labels[:200])
    assert search.best_params_["features__n_hidden"] in (4, 16)
    assert search.best_estimator_.named_steps["features"].model_.n_hidden == search.best_params_["features__n_hidden"]
    assert len(search.cv_results_["mean_test_score"]) == 2


def test_same_training_as_pyae_train(digits):
    """random_state=s trains exactly like pyae.training.train with seed=s."""
    images, _ = digits
    estimator = small(n_hidden=16, loss="cross_entropy", noise="mask", noise_level=0.25, random_state=5)
    hidden = estimator.fit_transform(images[:100])
    model, history = train(TrainConfig(n_hidden=16, loss="cross_entropy", noise="mask", noise_level=0.25, epochs=2,
                                       batch_size=16, seed=5, device="cpu"), torch.from_numpy(images[:100]),
                           progress=False)
    with torch.no_grad():
        expected = model.encode(torch.from_numpy(images[:100])).numpy()
    np.testing.assert_array_equal(hidden, expected)
    assert estimator.history_["loss"] == history["loss"]
    assert estimator.seed_ == 5 and estimator.config_.seed == 5


# -------------------------------------------------------------------------- pickling


def test_pickle_round_trip_gives_identical_output(data):
    estimator = small().fit(data)
    restored = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(restored.transform(data), estimator.transform(data))
    hidden = estimator.transform(data)
    np.testing.assert_array_equal(restored.inverse_transform(hidden), estimator.inverse_transform(hidden))
    assert restored.get_params() == estimator.get_params()
    assert restored.history_ == estimator.history_
    assert not restored.model_.training


def test_pickle_of_an_unfitted_estimator(data):
    restored = pickle.loads(pickle.dumps(small()))
    with pytest.raises(NotFittedError):
        restored.transform(data)
    assert restored.fit(data).transform(data).shape == (40, 8)


# -------------------------------------------------------------------- reproducibility


def test_random_state_makes_fit_reproducible(data):
    first = small(random_state=7).fit_transform(data)
    second = small(random_state=7).fit_transform(data)
    np.testing.assert_array_equal(first, second)
    other = small(random_state=8).fit_transform(data)
    assert not np.array_equal(first, other)


def test_random_state_none_draws_from_numpys_global_state_only(data):
    torch_state = torch.get_rng_state()
    np.random.seed(3)
    first = small(random_state=None).fit(data)
    np.random.seed(3)
    second = small(random_state=None).fit(data)
    assert first.seed_ == second.seed_
    np.testing.assert_array_equal(first.transform(data), second.transform(data))
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_random_state_accepts_a_numpy_random_state(data):
    first = small(random_state=np.random.RandomState(1)).fit(data)
    second = small(random_state=np.random.RandomState(1)).fit(data)
    assert first.seed_ == second.seed_
    np.testing.assert_array_equal(first.transform(data), second.transform(data))


def test_fit_leaves_torch_thread_count(data):
    threads = torch.get_num_threads()
    small().fit(data).transform(data)
    assert torch.get_num_threads() == threads


# ------------------------------------------------------------------------ transforms


def test_inverse_transform_reconstructs_the_input_shape(data):
    estimator = small(decoder_activation="linear").fit(data)
    hidden = estimator.transform(data)
    assert hidden.shape == (40, 8) and hidden.min() >= 0.0 and hidden.max() <= 1.0
    reconstruction = estimator.inverse_transform(hidden)
    assert reconstruction.shape == data.shape and reconstruction.dtype == data.dtype
    with torch.no_grad():
        expected = estimator.model_.decode(estimator.model_.encode(torch.from_numpy(data).float()))
    np.testing.assert_allclose(reconstruction, expected.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="8 features"):
        estimator.inverse_transform(data)  # 6 columns, not the 8 hidden units


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_has_the_inputs_float_dtype(data, dtype):
    X = data.astype(dtype)
    estimator = small().fit(X)
    hidden = estimator.transform(X)
    assert hidden.dtype == dtype
    assert estimator.inverse_transform(hidden).dtype == dtype
    assert estimator.transform(data.astype(np.int64)).dtype == np.float64


def test_float64_model(data):
    estimator = small(dtype="float64").fit(data)
    assert estimator.model_.encoder.weight.dtype == torch.float64
    with torch.no_grad():
        expected = estimator.model_.encode(torch.from_numpy(data)).numpy()
    np.testing.assert_array_equal(estimator.transform(data), expected)


def test_feature_names_out(data):
    estimator = small(n_hidden=3).fit(data)
    assert list(estimator.get_feature_names_out()) == [
        "autoencodertransformer0", "autoencodertransformer1", "autoencodertransformer2"]


def test_get_params_set_params_and_clone(data):
    estimator = small()
    params = estimator.get_params()
    assert params["n_hidden"] == 8 and params["loss"] == "mse" and params["random_state"] == 0
    assert set(params) == {
        "n_hidden", "tied_weights", "decoder_activation", "loss", "weight_decay", "noise", "noise_level",
        "sparsity_target", "sparsity_weight", "contractive_weight", "epochs", "batch_size", "lr", "optimizer",
        "momentum", "device", "dtype", "random_state", "progress",
    }
    estimator.set_params(n_hidden=5, contractive_weight=0.1, tied_weights=True)
    assert estimator.fit(data).transform(data).shape == (40, 5)
    assert estimator.model_.tied_weights and estimator.model_.contractive_weight == 0.1
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params() and not hasattr(copy, "model_")


def test_default_parameters():
    estimator = AutoencoderTransformer()
    assert estimator.n_hidden == 100 and estimator.loss == "mse" and estimator.device == "cpu"
    assert estimator.dtype == "float32" and estimator.random_state is None and estimator.progress is False


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("params, name", [
    ({"loss": "l1"}, "loss"),
    ({"n_hidden": 0}, "n_hidden"),
    ({"epochs": 0}, "epochs"),
    ({"lr": 0.0}, "lr"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"momentum": 1.0}, "momentum"),
    ({"dtype": "int32"}, "dtype"),
    ({"noise_level": 0.5}, "noise_level"),
    ({"noise": "mask", "noise_level": 2.0}, "noise_level"),
    ({"sparsity_target": 1.5}, "sparsity_target"),
    ({"decoder_activation": "relu"}, "decoder_activation"),
    ({"device": "tpu"}, "device"),
    ({"random_state": -1}, "random_state"),
])
def test_bad_parameters_raise_value_error_at_fit(data, params, name):
    estimator = small(**params)  # the constructor stores, never checks
    with pytest.raises(ValueError, match=name):
        estimator.fit(data)
    assert not hasattr(estimator, "model_")


@pytest.mark.parametrize("params, name", [
    ({"n_hidden": 2.5}, "n_hidden"),
    ({"tied_weights": "yes"}, "tied_weights"),
    ({"progress": 1}, "progress"),
    ({"random_state": "seed"}, "random_state"),
])
def test_bad_parameter_types_raise_type_error_at_fit(data, params, name):
    with pytest.raises(TypeError, match=name):
        small(**params).fit(data)


def test_cross_entropy_needs_inputs_in_unit_interval(data):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small(loss="cross_entropy").fit(data)
    small(loss="cross_entropy").fit(np.clip(data, 0.0, 1.0))


def test_transform_checks_its_input(data):
    with pytest.raises(NotFittedError):
        small().transform(data)
    estimator = small().fit(data)
    with pytest.raises(ValueError, match="6 features"):
        estimator.transform(data[:, :5])
    bad = data.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimator.transform(bad)


# -------------------------------------------------------------------------- devices


@needs_cuda
def test_cuda_model_stays_on_the_device_and_pickles_to_the_cpu(data):
    estimator = small(device="cuda").fit(data)
    assert estimator.model_.encoder.weight.is_cuda
    hidden = estimator.transform(data)
    assert isinstance(hidden, np.ndarray) and hidden.dtype == np.float64
    restored = pickle.loads(pickle.dumps(estimator))
    assert estimator.model_.encoder.weight.is_cuda  # pickling left the original where it was
    assert restored.model_.encoder.weight.device.type == "cpu"
    for name, value in restored.model_.state_dict().items():
        torch.testing.assert_close(value, estimator.model_.state_dict()[name].cpu(), rtol=0, atol=0)
    np.testing.assert_allclose(restored.transform(data), hidden, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- optional import


def test_import_pyae_without_sklearn():
    """With scikit-learn unimportable, ``import pyae`` works and ``pyae.sklearn`` says what
    to install."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import pyae\n"
        "try:\n"
        "    import pyae.sklearn\n"
        "except ImportError as err:\n"
        "    print('ImportError:', err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'pip install "pyae[experiment]"' in result.stdout

