"""A scikit-learn transformer around :class:`pyae.Autoencoder`: the hidden representation as
features, for ``Pipeline``, ``GridSearchCV`` and the rest of scikit-learn.

It needs scikit-learn, an optional dependency (``pip install "pyae[experiment]"``), and is
not imported by ``import pyae``::

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from pyae.sklearn import AutoencoderTransformer

    pipeline = Pipeline([
        ("features", AutoencoderTransformer(n_hidden=500, noise="mask", noise_level=0.25, random_state=0)),
        ("classifier", LogisticRegression(max_iter=1000)),
    ])
    pipeline.fit(images, labels)       # images: (N, 784) in [0, 1], a numpy array
    pipeline.score(test_images, test_labels)
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_array, check_is_fitted
except ImportError as err:  # scikit-learn is optional: pyae itself never imports this module
    raise ImportError(
        'pyae.sklearn needs scikit-learn: pip install "pyae[experiment]" (or pip install scikit-learn)'
    ) from err

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # scikit-learn < 1.6: the estimator's own method

    def _validate_data(estimator, X, **check_params):
        return estimator._validate_data(X, **check_params)


from pyae.config import TrainConfig
from pyae.modules import Autoencoder
from pyae.training import train
from pyae.validation import check_bool, check_int

__all__ = ["AutoencoderTransformer"]

# The float dtypes the estimator accepts as they are; anything else (ints, bools, objects
# holding numbers) becomes float64, scikit-learn's convention.
_FLOAT_DTYPES = (np.float64, np.float32)
# Rows per encoder/decoder call in transform and inverse_transform: bounds the (device)
# memory of the intermediate results on large inputs (the chunk size of pyae.experiments.mnist).
_CHUNK_ROWS = 4096


class AutoencoderTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A regularized autoencoder as a scikit-learn transformer: :meth:`fit` trains a
    :class:`pyae.Autoencoder` with :func:`pyae.training.train`, :meth:`transform` returns its
    hidden representation ``sigmoid(W x + b)`` and :meth:`inverse_transform` the decoder's
    reconstruction from a hidden representation.

    The parameters are :class:`pyae.Autoencoder`'s keywords (with its defaults, except
    ``n_hidden``) and the training settings of :class:`pyae.config.TrainConfig`. They are
    stored as given and checked by :meth:`fit`, which builds the ``TrainConfig``: a bad value
    raises ``TypeError`` or ``ValueError`` naming the parameter there, not in the constructor
    (scikit-learn's convention, which ``clone``, ``set_params`` and ``GridSearchCV`` rely on).

    Data: ``X`` is a 2-D array of real numbers without NaN or infinity. float32 and float64
    arrays are used as they are, anything else is converted to float64. Whatever the input's
    dtype, the model computes in ``dtype`` (float32 by default); :meth:`transform` and
    :meth:`inverse_transform` return the input's float dtype (float64 for float64 or integer
    input, float32 for float32). The default ``loss="mse"`` accepts any real-valued data;
    ``loss="cross_entropy"`` (the lecture's choice for MNIST) needs every input in [0, 1] and
    :meth:`fit` raises ``ValueError`` otherwise. With the default sigmoid decoder the
    reconstruction lies in (0, 1); use ``decoder_activation="linear"`` for data outside it
    (or scale the data into it first, e.g. with ``MinMaxScaler``).

    Device: the model is trained on ``device`` and stays there, so :meth:`transform` and
    :meth:`inverse_transform` run there too (the arrays go to and come back from it). A pickle
    always holds a CPU copy of the model, so that it loads on a machine without a GPU; the
    unpickled estimator computes on the CPU.

    scikit-learn's estimator checks (``sklearn.utils.estimator_checks``) all pass; none is
    marked as an expected failure (``tests/test_sklearn.py`` runs them). scikit-learn itself
    skips ``check_array_api_input`` unless the environment sets ``SCIPY_ARRAY_API=1``; it
    passes then too (NumPy inputs; the estimator declares no other array API support).

    Args:
        n_hidden: the number of hidden units, i.e. of output features (>= 1).
        tied_weights: decode with the transpose of the encoder's weight.
        decoder_activation: ``"sigmoid"`` (reconstruction in (0, 1)) or ``"linear"``.
        loss: ``"mse"`` (squared error summed over features; any real data) or
            ``"cross_entropy"`` (needs the sigmoid decoder and inputs in [0, 1]).
        weight_decay: ``lambda >= 0``, the weight of ``(1/2) ||W||^2`` (weight matrices only).
        noise: the denoising corruption during training: ``None``, ``"mask"`` or ``"gaussian"``.
        noise_level: the masking probability in [0, 1], or the Gaussian noise's standard
            deviation (>= 0); must be 0 without ``noise``.
        sparsity_target: ``rho`` in (0, 1), enabling the KL sparsity penalty, or None.
        sparsity_weight: ``beta >= 0``, the weight of the KL penalty (> 0 needs a target).
        contractive_weight: ``lambda_c >= 0``, the weight of the contractive penalty.
        epochs: passes over the training data (>= 1).
        batch_size: examples per optimizer step (>= 1).
        lr: the learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD's momentum in [0, 1).
        device: where to train and compute: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``
            (CUDA when available).
        dtype: the model's dtype: ``"float32"``, ``"float64"``, ``"bfloat16"`` or ``"float16"``.
        random_state: the seed of the initial weights, the data order and the noise: an int
            >= 0 is used as ``TrainConfig.seed`` (so ``random_state=s`` trains exactly like
            ``pyae.training.train`` with ``seed=s``); None draws a seed from numpy's global
            random state at each :meth:`fit`; a ``numpy.random.RandomState`` draws one from
            that state. torch's global random state is neither used nor changed.
        progress: show training progress (a tqdm bar, or lines on stderr); False: silent.

    Attributes:
        model_: the trained :class:`pyae.Autoencoder`, in eval mode, on ``device``.
        history_: the training history of :func:`pyae.training.train`: per-epoch lists
            ``"epoch"``, ``"loss"``, one per loss term and ``"seconds"``.
        n_iter_: the number of epochs trained (``epochs``).
        seed_: the seed the last :meth:`fit` trained with (``TrainConfig.seed``).
        config_: the :class:`pyae.config.TrainConfig` of the last :meth:`fit`.
        n_features_in_: the number of input features seen by :meth:`fit`.
        feature_names_in_: the input's column names, when :meth:`fit` got them (a DataFrame
            with string column names).

    Raises:
        ImportError: when this module is imported without scikit-learn installed.
    """

    def __init__(
        self,
        n_hidden: int = 100,
        *,
        tied_weights: bool = False,
        decoder_activation: str = "sigmoid",
        loss: str = "mse",
        weight_decay: float = 0.0,
        noise: Optional[str] = None,
        noise_level: float = 0.0,
        sparsity_target: Optional[float] = None,
        sparsity_weight: float = 0.0,
        contractive_weight: float = 0.0,
        epochs: int = 10,
        batch_size: int = 20,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        device: str = "cpu",
        dtype: str = "float32",
        random_state=None,
        progress: bool = False,
    ) -> None:
        self.n_hidden = n_hidden
        self.tied_weights = tied_weights
        self.decoder_activation = decoder_activation
        self.loss = loss
        self.weight_decay = weight_decay
        self.noise = noise
        self.noise_level = noise_level
        self.sparsity_target = sparsity_target
        self.sparsity_weight = sparsity_weight
        self.contractive_weight = contractive_weight
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------------ fitting
    def fit(self, X, y=None) -> "AutoencoderTransformer":
        """Train the autoencoder on ``X``.

        Args:
            X: the training data, array-like of shape ``(n_samples, n_features)``; float32
                and float64 are kept, other numbers become float64. No NaN or infinity.
            y: ignored (present for the scikit-learn API).

        Returns:
            The fitted estimator itself.

        Raises:
            TypeError, ValueError: a parameter is invalid (the message names it), or ``X`` is
                not a finite, non-empty 2-D numeric array (scikit-learn's messages), or
                ``loss="cross_entropy"`` with values outside [0, 1].
            FloatingPointError: training diverged (lower ``lr``).
        """
        config = self._train_config()
        X = _validate_data(self, X, dtype=_FLOAT_DTYPES, order="C")
        model, history = train(config, _as_tensor(X), progress=self.progress)
        self.model_: Autoencoder = model
        self.history_: Dict[str, list] = history
        self.n_iter_: int = config.epochs
        self.seed_: int = config.seed
        self.config_: TrainConfig = config
        self._n_features_out = model.n_hidden  # ClassNamePrefixFeaturesOutMixin's output width
        return self

    def _train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` of a fit: the parameters checked (by the shared checks of
        :mod:`pyae.validation`, through ``TrainConfig``) and the seed drawn."""
        check_bool(self.progress, "progress")
        return TrainConfig(
            n_hidden=self.n_hidden,
            tied_weights=self.tied_weights,
            decoder_activation=self.decoder_activation,
            loss=self.loss,
            weight_decay=self.weight_decay,
            noise=self.noise,
            noise_level=self.noise_level,
            sparsity_target=self.sparsity_target,
            sparsity_weight=self.sparsity_weight,
            contractive_weight=self.contractive_weight,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            momentum=self.momentum,
            seed=self._seed(),
            device=self.device,
            dtype=self.dtype,
        )

    def _seed(self) -> int:
        """``TrainConfig.seed`` for ``random_state``: an int as it is, otherwise a draw from
        numpy's global random state (None) or from the given ``RandomState``."""
        if self.random_state is None or isinstance(self.random_state, np.random.RandomState):
            return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if not isinstance(self.random_state, (bool, np.bool_)) and isinstance(self.random_state, (int, np.integer)):
            return check_int(self.random_state, "random_state", 0)
        raise TypeError(
            f"random_state must be None, an int >= 0 or a numpy.random.RandomState, got "
            f"{type(self.random_state).__name__}"
        )

    # ---------------------------------------------------------------------- transforms
    def transform(self, X) -> np.ndarray:
        """The hidden representation ``sigmoid(W x + b)`` of ``X`` (never corrupted).

        Args:
            X: array-like of shape ``(n_samples, n_features_in_)``.

        Returns:
            An array of shape ``(n_samples, n_hidden)`` with values in [0, 1], of ``X``'s
            float dtype (float64 for non-float input), computed in the model's dtype.

        Raises:
            sklearn.exceptions.NotFittedError: before :meth:`fit`.
            ValueError: ``X`` has another number of features than the training data, or is
                not a finite 2-D numeric array.
        """
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=_FLOAT_DTYPES, order="C", reset=False)
        return self._apply(self.model_.encode, X)

    def inverse_transform(self, X) -> np.ndarray:
        """The decoder's reconstruction ``g(W' h + c)`` from a hidden representation, e.g.
        ``inverse_transform(transform(X))`` reconstructs ``X``.

        Args:
            X: the hidden representation, array-like of shape ``(n_samples, n_hidden)``.

        Returns:
            An array of shape ``(n_samples, n_features_in_)`` of ``X``'s float dtype (float64
            for non-float input), computed in the model's dtype.

        Raises:
            sklearn.exceptions.NotFittedError: before :meth:`fit`.
            ValueError: ``X`` does not have ``n_hidden`` columns, or is not a finite 2-D
                numeric array.
        """
        check_is_fitted(self)
        X = check_array(X, dtype=_FLOAT_DTYPES, order="C")
        if X.shape[1] != self.model_.n_hidden:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__}.inverse_transform is expecting "
                f"{self.model_.n_hidden} features as input (the hidden units)"
            )
        return self._apply(self.model_.decode, X)

    def _apply(self, function: Callable[[Tensor], Tensor], X: np.ndarray) -> np.ndarray:
        """``function`` (the model's encode or decode) on ``X`` in chunks of rows, on the
        model's device and in its dtype, back as a numpy array of ``X``'s dtype."""
        weight = self.model_.encoder.weight
        out_dtype = torch.float64 if X.dtype == np.float64 else torch.float32
        inputs = _as_tensor(X)
        outputs = []
        with torch.no_grad():
            for begin in range(0, X.shape[0], _CHUNK_ROWS):
                chunk = inputs[begin:begin + _CHUNK_ROWS].to(device=weight.device, dtype=weight.dtype)
                outputs.append(function(chunk).to(out_dtype).cpu())
        return torch.cat(outputs).numpy()

    # --------------------------------------------------------------------- pickling
    def __getstate__(self) -> Dict[str, Any]:
        """The state to pickle, with a CPU copy of a model that lives on a GPU (the estimator
        itself keeps its model where it is)."""
        state = super().__getstate__()
        model = state.get("model_")
        if model is not None and any(t.device.type != "cpu" for t in _tensors(model)):
            # Deep-copy the module with its tensors replaced by CPU copies (the memo): no
            # second copy of the weights on the device.
            memo = {id(t): _cpu_copy(t) for t in _tensors(model)}
            state = {**state, "model_": copy.deepcopy(model, memo)}
        return state

    # ------------------------------------------------------------------------- tags
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # transform and inverse_transform return float32 for float32 input.
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    def _more_tags(self) -> Dict[str, Any]:  # scikit-learn < 1.6
        return {"preserves_dtype": ["float64", "float32"]}


def _as_tensor(X: np.ndarray) -> Tensor:
    """A CPU tensor of the validated (C-contiguous) array ``X``: shared memory, or a copy of
    a read-only array (torch warns about read-only arrays it would share)."""
    return torch.from_numpy(X if X.flags.writeable else X.copy())


def _tensors(module: torch.nn.Module):
    return [*module.parameters(), *module.buffers()]


def _cpu_copy(t: Tensor) -> Tensor:
    copied = t.detach().cpu()
    return torch.nn.Parameter(copied, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else copied
