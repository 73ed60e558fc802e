"""The configuration of a training run: a validated, JSON-serializable :class:`TrainConfig`,
and what it builds (the device, the model, the optimizer).

This is what ``pyae train``'s options fill in and what every checkpoint stores::

    from pyae.config import TrainConfig

    config = TrainConfig(n_hidden=500, loss="cross_entropy", noise="mask", noise_level=0.25,
                         epochs=20, lr=0.01, batch_size=20)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

import torch

import pyae
from pyae import distributed, optim
from pyae.modules import Autoencoder
from pyae.validation import (
    autoencoder_options,
    check_bool,
    check_choice,
    check_device,
    check_int,
    check_number,
)

__all__ = [
    "TrainConfig",
    "OPTIMIZERS",
    "DTYPES",
    "MIXED_PRECISION",
    "RESUMABLE_FIELDS",
    "resolve_device",
    "build_model",
    "build_optimizer",
]

OPTIMIZERS = ("sgd", "adam")
#: The dtypes a configuration may name (strings, so that a config is plain JSON).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: The autocast dtypes of mixed-precision training.
MIXED_PRECISION = ("bfloat16", "float16")

# The TrainConfig fields that are Autoencoder keywords (n_hidden aside).
MODEL_FIELDS = (
    "tied_weights",
    "decoder_activation",
    "loss",
    "weight_decay",
    "noise",
    "noise_level",
    "sparsity_target",
    "sparsity_weight",
    "contractive_weight",
)

#: The fields a resumed run may change: how long it runs (and when it stops early), where,
#: whether its steps are replayed as CUDA graphs (the same numbers) or fuse the backward into
#: the momentum buffers (the same numbers up to rounding); never what it computes.
RESUMABLE_FIELDS = ("epochs", "early_stopping", "device", "cuda_graph", "fused_backward")


@dataclass
class TrainConfig:
    """Everything that determines a training run; validated on construction.

    The model fields are :class:`pyae.Autoencoder`'s keywords with the same defaults and
    rules; the rest describe the optimization. Every field is a plain Python value, so
    :meth:`to_dict` is JSON-serializable and is what checkpoints store.

    Attributes:
        n_hidden: the number of hidden units ``k``.
        tied_weights, decoder_activation, loss, weight_decay, noise, noise_level,
            sparsity_target, sparsity_weight, contractive_weight: as in :class:`pyae.Autoencoder`.
        epochs: the number of passes over the data (>= 1; fewer with ``early_stopping``).
        batch_size: examples per step (>= 1); the last, smaller batch of an epoch is kept.
        lr: the learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD's momentum in [0, 1) (ignored by Adam).
        seed: seeds the initialization, the shuffling and the corruption noise (>= 0).
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: the parameters' dtype: ``"float32"``, ``"float64"``, ``"bfloat16"`` or ``"float16"``.
        mixed_precision: None, or ``"bfloat16"`` / ``"float16"``: run each forward under
            ``torch.autocast`` in that dtype (float32 parameters, float32 loss; see
            docs/design.md for what runs in which dtype). ``"float16"`` adds a
            ``torch.amp.GradScaler`` against gradient underflow. Needs ``dtype="float32"``.
        val_fraction: the fraction of the examples held out for validation, in [0, 1): drawn
            with ``seed`` before training, never trained on; the held-out loss and each term
            are measured after every epoch. 0: no held-out split (``train`` may still be given
            a validation set).
        early_stopping: stop when the held-out loss has not improved for this many epochs
            (>= 1; needs validation data), keeping the best epoch's checkpoint beside the
            last one. None: train for ``epochs``.
        cuda_graph: run each training step as one CUDA graph replay (:class:`pyae.TrainStep`):
            forward, backward and the optimizer's update captured once per batch shape. CUDA
            only, one process; Adam is then built with ``capturable=True``. Goes with
            ``mixed_precision="bfloat16"`` but not ``"float16"`` (the scaler decides on the
            host whether a step is skipped, which a graph cannot).
        fused_backward: with SGD with momentum (no nesterov), each eager step is
            :meth:`pyae.optim.SGD.autoencoder_step`: the weight matrices' gradient products go
            straight into the momentum buffers instead of making weight-sized gradients (the
            same update up to rounding). Off: zero_grad, backward, step. Not with
            ``cuda_graph``, ``mixed_precision`` or ``torchrun``, which take the latter.

    Raises:
        TypeError, ValueError: naming the offending field.
    """

    n_hidden: int = 500
    tied_weights: bool = False
    decoder_activation: str = "sigmoid"
    loss: str = "mse"
    weight_decay: float = 0.0
    noise: Optional[str] = None
    noise_level: float = 0.0
    sparsity_target: Optional[float] = None
    sparsity_weight: float = 0.0
    contractive_weight: float = 0.0
    epochs: int = 10
    batch_size: int = 20
    # The losses are sums over the input features (784 for MNIST), so their gradients are
    # large: 0.01 with momentum 0.9 is stable; 0.03 already kills hidden units on MNIST.
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    mixed_precision: Optional[str] = None
    val_fraction: float = 0.0
    early_stopping: Optional[int] = None
    cuda_graph: bool = False
    fused_backward: bool = True

    def __post_init__(self) -> None:
        self.n_hidden = check_int(self.n_hidden, "n_hidden", 1)
        self.epochs = check_int(self.epochs, "epochs", 1)
        self.batch_size = check_int(self.batch_size, "batch_size", 1)
        self.seed = check_int(self.seed, "seed", 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")
        self.lr = check_number(self.lr, "lr", positive=True)
        self.momentum = check_number(self.momentum, "momentum", below_one=True)
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        if isinstance(self.dtype, torch.dtype):
            self.dtype = str(self.dtype).replace("torch.", "")
        check_choice(self.dtype, "dtype", DTYPES)
        check_choice(self.mixed_precision, "mixed_precision", (None, *MIXED_PRECISION))
        if self.mixed_precision is not None and self.dtype != "float32":
            raise ValueError(
                f"mixed_precision={self.mixed_precision!r} needs dtype='float32' (autocast runs float32 "
                f"parameters' products in {self.mixed_precision}), got dtype={self.dtype!r}"
            )
        self.val_fraction = check_number(self.val_fraction, "val_fraction", below_one=True)
        if self.early_stopping is not None:
            self.early_stopping = check_int(self.early_stopping, "early_stopping", 1)
        self.device = check_device(self.device)
        check_bool(self.cuda_graph, "cuda_graph")
        check_bool(self.fused_backward, "fused_backward")
        if self.cuda_graph and self.device == "cpu":
            raise ValueError("cuda_graph=True needs a CUDA device (device='cuda' or 'auto' on a machine with a GPU)")
        if self.cuda_graph and self.mixed_precision == "float16":
            raise ValueError(
                "cuda_graph=True does not go with mixed_precision='float16': its gradient scaler decides on the "
                "host whether to skip a step, which a replayed graph cannot; use mixed_precision='bfloat16'"
            )
        # The model's options, checked and normalized by the same function as the model's.
        for name, value in autoencoder_options(**self.model_kwargs()).items():
            setattr(self, name, value)

    def model_kwargs(self) -> Dict[str, Any]:
        """The :class:`pyae.Autoencoder` keyword arguments (all but ``n_inputs``, ``n_hidden``)."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    @property
    def torch_dtype(self) -> torch.dtype:
        """:attr:`dtype` as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict of plain Python values (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build (and validate) a config from :meth:`to_dict`'s output; unknown keys are an error.
        (``decoder``, the name of ``decoder_activation`` in pyae 0.1.0's checkpoints, is read as it.)"""
        if not isinstance(values, Mapping):
            raise TypeError(f"config must be a mapping, got {type(values).__name__}")
        if "decoder" in values and "decoder_activation" not in values:
            values = {("decoder_activation" if k == "decoder" else k): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(map(repr, unknown))}")
        return cls(**values)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def resolve_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a usable ``torch.device``.

    ``"auto"`` picks CUDA when a GPU is visible and this pyae build has CUDA kernels.

    Raises:
        ValueError: a CUDA device was asked for but there is none, or pyae was built
            without CUDA kernels; or the spec is not a device.
    """
    spec = check_device(device)
    cuda_ok = torch.cuda.is_available() and pyae.has_cuda_kernels()
    if spec == "auto":
        return torch.device("cuda" if cuda_ok else "cpu")
    resolved = torch.device(spec)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={spec!r}: CUDA is not available on this machine (use 'cpu' or 'auto')")
        if not pyae.has_cuda_kernels():
            raise ValueError(
                f"device={spec!r}: this pyae build has no CUDA kernels; rebuild it where nvcc is available "
                "(FORCE_CUDA=1 pip install --no-build-isolation -e .) or use 'cpu'"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return resolved


def build_model(config: TrainConfig, n_inputs: int, *, device=None) -> Autoencoder:
    """The :class:`pyae.Autoencoder` that ``config`` describes, for ``n_inputs`` features.

    The parameters are initialized on the CPU from ``config.seed`` (the global RNG is left
    as it was) and then moved to ``device`` (default: the CPU) in ``config.dtype``, so the
    same seed gives the same initial weights on every device.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Autoencoder(n_inputs, config.n_hidden, dtype=torch.float64, **config.model_kwargs())
    # Initialized in float64 then rounded: the same draws whatever the target dtype.
    return model.to(device=device, dtype=config.torch_dtype)


def build_optimizer(config: TrainConfig, model: Autoencoder) -> torch.optim.Optimizer:
    """The optimizer that ``config`` names for ``model``: pyae's fused SGD or Adam
    (:mod:`pyae.optim`, torch's arithmetic in one pass per parameter) given the model, so that
    the update applies its weight decay and the chain rule through the contractive penalty's
    squared row norms in the pass it makes over each weight anyway.

    It sets ``model.optimizer_applies_weight_decay`` when the model has weight decay (the loss
    keeps the term's value); :func:`pyae.training.train` hands the terms back to the model it
    returns (``optimizer.detach_autoencoder()``). Under ``torch.distributed`` the optimizer
    applies the weight decay alone (DistributedDataParallel averages the parameters'
    gradients, not the norms').
    """
    if not isinstance(model, Autoencoder):
        raise TypeError(f"model must be a pyae.Autoencoder, got {type(model).__name__}")
    if distributed.ranks() is None:
        parameters, autoencoder = model.parameters(), model
    else:
        # Under DistributedDataParallel only the parameters' gradients are averaged across
        # ranks, not the squared row norms': the optimizer applies the weight decay alone
        # (torch's weight_decay on the weight matrices), the model keeps the rest.
        parameters, autoencoder = model.parameters(), None
        if model.weight_decay > 0.0:
            parameters = model.parameter_groups()
            model.optimizer_applies_weight_decay = True
    if config.optimizer == "sgd":
        return optim.SGD(parameters, lr=config.lr, momentum=config.momentum, autoencoder=autoencoder)
    return optim.Adam(parameters, lr=config.lr, autoencoder=autoencoder)
