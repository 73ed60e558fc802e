"""Training autoencoders: a validated configuration, resumable checkpoints, the loop.

This is the Python API under ``pyae train``::

    from pyae.data import load_mnist
    from pyae.training import TrainConfig, train

    images, _ = load_mnist()
    config = TrainConfig(n_hidden=500, loss="cross_entropy", noise="mask", noise_level=0.25,
                         epochs=20, lr=0.01, batch_size=20)
    model, history = train(config, images, checkpoint_path="run/checkpoint.pt")

Reproducibility: the parameters are initialized from ``config.seed`` (without touching the
global RNG), the mini-batches are drawn by a ``torch.Generator`` seeded from it and the
corruption noise by a second one. A checkpoint, written atomically after every epoch,
holds the model, the optimizer and every generator state, so a run that is interrupted
and resumed (``resume=True``) ends bitwise equal on the CPU to one that never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch

from pyae._atomic import atomic_write
from torch import Tensor

import pyae
from pyae.modules import Autoencoder, AutoencoderOutput
from pyae.step import TrainStep

__all__ = [
    "TrainConfig",
    "Checkpoint",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "OPTIMIZERS",
    "DTYPES",
    "resolve_device",
    "build_model",
    "build_optimizer",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "train",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The value of a checkpoint's ``"format"`` key: tells a pyae checkpoint from any other file.
CHECKPOINT_FORMAT = "pyae.checkpoint"
#: The newest checkpoint layout this version writes and reads.
CHECKPOINT_VERSION = 1

OPTIMIZERS = ("sgd", "adam")
#: The dtypes a configuration may name (strings, so that a config is plain JSON).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The TrainConfig fields that are Autoencoder keywords (n_hidden aside).
_MODEL_FIELDS = (
    "tied_weights",
    "decoder",
    "loss",
    "weight_decay",
    "noise",
    "noise_level",
    "sparsity_target",
    "sparsity_weight",
    "contractive_weight",
)
# The noise generator's seed is config.seed plus this (the golden-ratio constant): a stream
# independent of the shuffling one.
_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15

# Fields a resumed run may change: how long it runs and where and how, not what it computes.
_RESUMABLE_CHANGES = ("epochs", "device", "cuda_graph")


# ----------------------------------------------------------------------------- config


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_real(value, name: str, *, positive: bool = False, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0) or (below_one and value >= 1.0):
        bound = "in [0, 1)" if below_one else ("> 0" if positive else ">= 0")
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def _check_device_spec(device) -> str:
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a str ('auto', 'cpu', 'cuda', 'cuda:N'), got {type(device).__name__}")
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


@dataclass
class TrainConfig:
    """Everything that determines a training run; validated on construction.

    The model fields are :class:`pyae.Autoencoder`'s keywords with the same defaults and
    rules; the rest describe the optimization. Every field is a plain Python value, so
    :meth:`to_dict` is JSON-serializable and is what checkpoints store.

    Attributes:
        n_hidden: the number of hidden units ``k``.
        tied_weights, decoder, loss, weight_decay, noise, noise_level, sparsity_target,
            sparsity_weight, contractive_weight: as in :class:`pyae.Autoencoder`.
        epochs: the number of passes over the data (>= 1).
        batch_size: examples per step (>= 1); the last, smaller batch of an epoch is kept.
        lr: the learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD's momentum in [0, 1) (ignored by Adam).
        seed: seeds the initialization, the shuffling and the corruption noise (>= 0).
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        dtype: ``"float32"``, ``"float64"``, ``"bfloat16"`` or ``"float16"``.
        cuda_graph: run each training step as one CUDA graph replay (:class:`pyae.TrainStep`):
            forward, backward and the optimizer's update captured once per batch shape. CUDA
            only, one process; Adam is then built with ``capturable=True``.

    Raises:
        TypeError, ValueError: naming the offending field.
    """

    n_hidden: int = 500
    tied_weights: bool = False
    decoder: str = "sigmoid"
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
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        self.n_hidden = _check_int(self.n_hidden, "n_hidden", 1)
        self.epochs = _check_int(self.epochs, "epochs", 1)
        self.batch_size = _check_int(self.batch_size, "batch_size", 1)
        self.seed = _check_int(self.seed, "seed", 0)
        if self.seed >= 2**63:
            raise ValueError(f"seed must be < 2**63, got {self.seed}")
        self.lr = _check_real(self.lr, "lr", positive=True)
        self.momentum = _check_real(self.momentum, "momentum", below_one=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}; got {self.optimizer!r}")
        if isinstance(self.dtype, torch.dtype):
            self.dtype = str(self.dtype).replace("torch.", "")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}; got {self.dtype!r}")
        self.device = _check_device_spec(self.device)
        if not isinstance(self.cuda_graph, bool):
            raise TypeError(f"cuda_graph must be a bool, got {type(self.cuda_graph).__name__}")
        if self.cuda_graph and self.device == "cpu":
            raise ValueError("cuda_graph=True needs a CUDA device (device='cuda' or 'auto' on a machine with a GPU)")
        # The model's own checks, on the meta device: one source of truth for the model
        # options' rules, and no memory is allocated. Its messages name the keyword.
        model = Autoencoder(1, self.n_hidden, device="meta", **self.model_kwargs())
        # Store the normalized values (e.g. an int noise_level becomes a float).
        self.weight_decay = model.weight_decay
        self.noise_level = model.noise_level
        self.sparsity_target = model.sparsity_target
        self.sparsity_weight = model.sparsity_weight
        self.contractive_weight = model.contractive_weight

    def model_kwargs(self) -> Dict[str, Any]:
        """The :class:`pyae.Autoencoder` keyword arguments (all but ``n_inputs``, ``n_hidden``)."""
        return {name: getattr(self, name) for name in _MODEL_FIELDS}

    @property
    def torch_dtype(self) -> torch.dtype:
        """:attr:`dtype` as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict of plain Python values (JSON-serializable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build (and validate) a config from :meth:`to_dict`'s output; unknown keys are an error."""
        if not isinstance(values, Mapping):
            raise TypeError(f"config must be a mapping, got {type(values).__name__}")
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
    spec = _check_device_spec(device)
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


def build_optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    """The optimizer that ``config`` names. Weight decay lives in the model's loss (the
    lecture's ``lambda * W`` on weight matrices only), never in the optimizer."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)
    # A captured step needs Adam's step counter on the device.
    return torch.optim.Adam(parameters, lr=config.lr, capturable=config.cuda_graph)


# ------------------------------------------------------------------------ checkpoints


class Checkpoint(NamedTuple):
    """A validated checkpoint, as :func:`load_checkpoint` returns it.

    Attributes:
        path: the file it was read from.
        version: its format version.
        epoch: the number of completed epochs it holds.
        config: the run's :class:`TrainConfig`.
        model_state: the model's ``state_dict``.
        optimizer_state: the optimizer's ``state_dict``.
        rng_state: the generator states (uint8 tensors): ``"torch"`` (global CPU),
            ``"cuda"`` (a list, one per device, when CUDA was used), ``"shuffle"``, ``"noise"``;
            and ``"device_type"``, where the generators lived (``"cpu"`` or ``"cuda"``).
        history: per-epoch metrics up to ``epoch`` (see :func:`train`).
        extra: whatever the writer added (e.g. the CLI's data settings).
        n_inputs: the model's number of input features.
    """

    path: str
    version: int
    epoch: int
    config: TrainConfig
    model_state: Dict[str, Tensor]
    optimizer_state: Dict[str, Any]
    rng_state: Dict[str, Any]
    history: Dict[str, List[float]]
    extra: Dict[str, Any]
    n_inputs: int


def _cpu_state(state):
    """A copy of a (nested) state with every tensor on the CPU: loadable anywhere."""
    if isinstance(state, Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: _cpu_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_state(value) for value in state)
    return state


def save_checkpoint(
    path: PathLike,
    *,
    model: Autoencoder,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    config: TrainConfig,
    rng_state: Mapping[str, Any],
    history: Optional[Mapping[str, List[float]]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write a checkpoint atomically: the file at ``path`` is the old one or the new one, never partial.

    The data goes to a temporary file in the same directory, is flushed and fsync'ed, and
    only then renamed onto ``path`` (``os.replace``); a crash or Ctrl-C at any point leaves
    the previous checkpoint intact and no temporary file behind.

    Only tensors, dicts, lists, strings and numbers are stored, so that
    :func:`load_checkpoint` can read it with ``torch.load(weights_only=True)``.

    Args:
        path: destination (its directory is created).
        model, optimizer: their ``state_dict()`` is stored (on the CPU).
        epoch: completed epochs.
        config: the run's configuration, stored as a dict.
        rng_state: generator states, uint8 tensors by name (lists of them allowed).
        history: per-epoch metrics, lists of floats by name.
        extra: more plain data to keep (e.g. where the training data came from).

    Returns:
        ``path`` as a string.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    epoch = _check_int(epoch, "epoch", 0)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "pyae_version": pyae.__version__,
        "epoch": epoch,
        "config": config.to_dict(),
        "n_inputs": int(model.n_inputs),
        "model": _cpu_state(model.state_dict()),
        "optimizer": _cpu_state(optimizer.state_dict()),
        "rng_state": _cpu_state(dict(rng_state)),
        "history": {key: list(map(float, values)) for key, values in (history or {}).items()},
        "extra": dict(extra or {}),
    }
    dest = Path(os.fspath(path))
    with atomic_write(dest, "wb") as f:
        torch.save(payload, f)
    return str(dest)


_REQUIRED_KEYS = {
    "version": int,
    "epoch": int,
    "config": dict,
    "n_inputs": int,
    "model": dict,
    "optimizer": dict,
    "rng_state": dict,
    "history": dict,
    "extra": dict,
}


def _short_reason(err: BaseException) -> str:
    """The gist of a torch.load failure. Its weights-only message is a paragraph that
    suggests weights_only=False, which is exactly what must not be done with a foreign file."""
    text = " ".join(str(err).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        detail = text.split(marker, 1)[1].split("Check the documentation", 1)[0].split(". ", 1)[0]
        text = f"content that is not plain tensors and containers ({detail.strip().rstrip('.')})"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_checkpoint(path: PathLike, map_location=None) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``torch.load(weights_only=True)``: it can hold no code.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors (default: the CPU, so a checkpoint written
            on a GPU machine loads anywhere; :func:`train` moves them where it needs them).

    Returns:
        A :class:`Checkpoint`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: the file is truncated, corrupt, not a pyae checkpoint, from a newer
            pyae, or inconsistent; the message names the path and what is wrong.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path!r} is a directory, not a checkpoint file")
    try:
        data = torch.load(path, map_location="cpu" if map_location is None else map_location, weights_only=True)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as err:  # noqa: BLE001 - UnpicklingError, EOFError, RuntimeError (zip), ...
        raise ValueError(
            f"{path!r} is not a readable pyae checkpoint (corrupt, truncated or another kind of file): "
            f"{_short_reason(err)}"
        ) from err

    def invalid(reason: str) -> ValueError:
        return ValueError(f"{path!r} is not a valid pyae checkpoint: {reason}")

    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise invalid(f"it has no 'format': {CHECKPOINT_FORMAT!r} marker (another kind of file?)")
    for key, kind in _REQUIRED_KEYS.items():
        if key not in data:
            raise invalid(f"missing key {key!r}")
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            raise invalid(f"{key!r} should be a {kind.__name__}, got {type(data[key]).__name__}")
    if data["version"] > CHECKPOINT_VERSION or data["version"] < 1:
        raise invalid(
            f"format version {data['version']} is not supported by this pyae (reads 1..{CHECKPOINT_VERSION})"
        )
    if data["epoch"] < 0:
        raise invalid(f"negative epoch {data['epoch']}")
    try:
        config = TrainConfig.from_dict(data["config"])
    except (TypeError, ValueError) as err:
        raise invalid(f"bad config: {err}") from err
    for name, value in data["model"].items():
        if not isinstance(value, Tensor):
            raise invalid(f"model state entry {name!r} is not a tensor")
    expected_weight = (config.n_hidden, data["n_inputs"])
    weight = data["model"].get("encoder.weight")
    if weight is None or tuple(weight.shape) != expected_weight:
        raise invalid(f"model state has no encoder.weight of shape {expected_weight}")
    for name in ("shuffle", "noise"):
        state = data["rng_state"].get(name)
        if not isinstance(state, Tensor) or state.dtype != torch.uint8:
            raise invalid(f"rng_state[{name!r}] is missing or not a uint8 tensor")
    return Checkpoint(
        path=path,
        version=data["version"],
        epoch=data["epoch"],
        config=config,
        model_state=data["model"],
        optimizer_state=data["optimizer"],
        rng_state=data["rng_state"],
        history={key: list(values) for key, values in data["history"].items()},
        extra=data["extra"],
        n_inputs=data["n_inputs"],
    )


def model_from_checkpoint(checkpoint: Union[Checkpoint, PathLike], *, device=None) -> Autoencoder:
    """The trained model a checkpoint holds (a path or a loaded :class:`Checkpoint`), in eval mode."""
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = load_checkpoint(checkpoint)
    model = build_model(checkpoint.config, checkpoint.n_inputs, device=device)
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint.path!r}: the model state does not fit its config: {err}") from err
    return model.eval()


# ------------------------------------------------------------------------------ train


def _rng_state(shuffle: torch.Generator, noise: torch.Generator, device: torch.device) -> Dict[str, Any]:
    state = {
        "device_type": device.type,  # a CPU generator's state does not fit a CUDA one
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
        "noise": noise.get_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: Mapping[str, Any], shuffle: torch.Generator, noise: torch.Generator,
                       device: torch.device, *, seed: int, epoch: int) -> None:
    if state.get("device_type", "cpu") == device.type:
        shuffle.set_state(state["shuffle"].cpu())
        noise.set_state(state["noise"].cpu())
    else:
        # Resumed on another kind of device: the stored generator states cannot be carried
        # over. Continue deterministically (same seed and epoch, same streams), though not
        # bitwise like the run that never moved.
        warnings.warn(
            f"resuming a run checkpointed on {state.get('device_type')!r} on {device.type!r}: the data order "
            "and noise from here on are reproducible but differ from an uninterrupted run",
            RuntimeWarning,
            stacklevel=3,
        )
        shuffle.manual_seed((seed + 1_000_003 * epoch) % 2**64)
        noise.manual_seed((seed + _NOISE_SEED_OFFSET + 1_000_003 * epoch) % 2**64)
    if isinstance(state.get("torch"), Tensor):
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda_states, (list, tuple)) \
            and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def _check_images(images, config: TrainConfig) -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 2 or images.shape[0] < 1 or images.shape[1] < 1:
        raise ValueError(f"images must be a non-empty 2-D tensor (examples, features), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if config.loss == "cross_entropy":
        # Checked once here, so a bad dataset fails before any training rather than mid-epoch.
        low, high = torch.aminmax(images.detach())
        if low < 0 or high > 1:
            raise ValueError(
                f"loss='cross_entropy' needs images in [0, 1], got values in [{low.item():g}, {high.item():g}]"
            )


class _Progress:
    """A tqdm bar over all steps when tqdm is importable, plain per-epoch lines otherwise."""

    def __init__(self, enabled: bool, total_steps: int, initial_steps: int, epochs: int) -> None:
        self.bar = None
        self.enabled = enabled
        self.epochs = epochs
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total_steps, initial=initial_steps, unit="step", dynamic_ncols=True, leave=True)

    def begin(self, epoch: int) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{self.epochs}", refresh=False)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def epoch(self, epoch: int, metrics: Mapping[str, float], seconds: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=True)
        else:
            terms = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"epoch {epoch}/{self.epochs}  {terms}  ({seconds:.2f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Ranks(NamedTuple):
    rank: int
    world: int


def _ranks() -> Optional[_Ranks]:
    """This process's place in an initialized torch.distributed group of several ranks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _Ranks(dist.get_rank(), dist.get_world_size())
    return None


def _rank_loss(output: AutoencoderOutput, model: Autoencoder, share: float) -> Tensor:
    """The loss a rank backpropagates so that DDP's average of the ranks' gradients is the
    gradient of one process on the whole global batch.

    The per-example means (reconstruction, contractive) are weighted by the rank's share of
    the global batch times the number of ranks (1 when the shares are equal); terms that are
    the same on every rank (weight decay) come out of the average unchanged; the sparsity
    term is already a function of the global mean activation, whose gradient the average
    gets exactly right, so it is left unweighted.
    """
    if "sparsity" not in output.terms or model.sparsity_weight == 0.0:
        return output.loss * share
    sparsity = model.sparsity_weight * output.terms["sparsity"]
    return (output.loss - sparsity) * share + sparsity


def train(
    config: TrainConfig,
    images: Tensor,
    *,
    checkpoint_path: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[int, int, AutoencoderOutput], None]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Tuple[Autoencoder, Dict[str, List[float]]]:
    """Train the autoencoder ``config`` describes on ``images`` with mini-batch SGD or Adam.

    Each epoch visits every example once in an order drawn with ``torch.randperm`` from a
    generator seeded by ``config.seed``; the denoising corruption draws from a second one.
    The data are moved to the device once and the batches are slices of it, so a step
    costs the model's kernels and little Python.

    Args:
        config: the run.
        images: ``(N, n)`` training inputs (for ``loss="cross_entropy"`` in [0, 1]).
        checkpoint_path: where to write a checkpoint after every epoch (atomically; see
            :func:`save_checkpoint`). None: no checkpoints.
        resume: continue the run stored at ``checkpoint_path``: the model, optimizer, epoch
            count, history and every RNG state are restored, so the result is bitwise equal
            (on the CPU) to a run that never stopped. ``config`` must match the stored one
            except for ``epochs`` (which may grow) and ``device``. Moving a run between
            the CPU and a GPU works, but its generator states cannot follow: it goes on
            deterministically from the seed and epoch, with a ``RuntimeWarning``.
        progress: show a tqdm bar (plain per-epoch lines on stderr without tqdm); False: silent.
        callback: ``callback(epoch, step, output)`` after every optimizer step, ``epoch``
            counting from 1, ``step`` from 0 within the epoch, ``output`` the step's
            :class:`pyae.AutoencoderOutput` (with ``config.cuda_graph`` its tensors are the
            graph's static outputs, overwritten by the next step). An exception it raises
            stops training (the epoch in progress is lost, the last checkpoint stays as it was).
        extra: plain data stored in every checkpoint (e.g. where ``images`` came from).

    Under ``torch.distributed`` (e.g. ``torchrun``, with the process group initialized), each
    step's batch of ``config.batch_size`` examples is split across the ranks, the model runs
    under DistributedDataParallel with the global-batch sparsity statistic
    (``model.statistics_group``), and the gradients equal those of one process on the whole
    batch. A final batch with fewer examples than ranks is skipped. Rank 0 alone writes the
    checkpoints (which load in a single process) and shows progress.

    Returns:
        ``(model, history)``: the trained model (in eval mode) and a dict of per-epoch
        lists: ``"epoch"``, ``"loss"`` (mean per example of the total), one list per loss
        term (``"reconstruction"``, and ``"weight_decay"``, ``"sparsity"``, ``"contractive"``
        when enabled; unweighted, as in ``output.terms``) and ``"seconds"`` (training time
        of the epoch). A resumed run's history covers the earlier epochs too.

    Raises:
        KeyboardInterrupt: propagated as is; the checkpoint of the last complete epoch is intact.
        FloatingPointError: the loss became NaN or infinite (the last checkpoint is kept;
            lower the learning rate).
        FileNotFoundError, ValueError: ``resume`` without a usable checkpoint, or one that
            does not match ``config`` or ``images``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path to resume from")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    _check_images(images, config)
    device = resolve_device(config.device)
    if config.cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; device={config.device!r} resolved to {device}")
    n_examples, n_inputs = images.shape

    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(checkpoint_path)
        stored = checkpoint.config.to_dict()
        wanted = config.to_dict()
        differing = [k for k in wanted if k not in _RESUMABLE_CHANGES and wanted[k] != stored.get(k)]
        if differing:
            details = ", ".join(f"{k}={wanted[k]!r} (checkpoint: {stored.get(k)!r})" for k in differing)
            raise ValueError(f"cannot resume {checkpoint.path!r} with a different configuration: {details}")
        if checkpoint.n_inputs != n_inputs:
            raise ValueError(
                f"cannot resume {checkpoint.path!r}: its model has {checkpoint.n_inputs} inputs, "
                f"the images have {n_inputs} features"
            )

    # One copy of the data on the device, in the model's dtype; batches are views into it.
    data = images.detach().to(device=device, dtype=config.torch_dtype)
    model = build_model(config, n_inputs, device=device)
    optimizer = build_optimizer(config, model.parameters())
    ranks = _ranks()
    if config.cuda_graph and ranks is not None:
        raise ValueError("cuda_graph=True trains in one process; under torch.distributed leave it off")
    trainer = model
    if ranks is not None:
        import torch.distributed as dist

        model.statistics_group = dist.group.WORLD
        trainer = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # Every rank draws the same order (the same seed); the noise differs from rank to rank.
    shuffle_generator = torch.Generator(device=device)
    shuffle_generator.manual_seed(config.seed)
    noise_generator = torch.Generator(device=device)
    noise_generator.manual_seed((config.seed + _NOISE_SEED_OFFSET + (ranks.rank if ranks else 0)) % 2**64)
    writes = ranks is None or ranks.rank == 0

    history: Dict[str, List[float]] = {}
    start_epoch = 0
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint.model_state)
            optimizer.load_state_dict(checkpoint.optimizer_state)
            _restore_rng_state(checkpoint.rng_state, shuffle_generator, noise_generator, device,
                               seed=config.seed, epoch=checkpoint.epoch)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot resume from {checkpoint.path!r}: {err}") from err
        start_epoch = checkpoint.epoch
        history = checkpoint.history
        if extra is None:
            extra = checkpoint.extra

    # With cuda_graph, each step (forward, backward, update) is one graph replay per batch shape.
    captured_step = TrainStep(model, optimizer, capture=True, generator=noise_generator) if config.cuda_graph else None
    steps_per_epoch = math.ceil(n_examples / config.batch_size)
    remaining = max(config.epochs - start_epoch, 0)
    bar = _Progress(progress and writes, config.epochs * steps_per_epoch, start_epoch * steps_per_epoch, config.epochs)
    model.train()
    try:
        for epoch in range(start_epoch + 1, start_epoch + remaining + 1):
            started = time.perf_counter()
            bar.begin(epoch)
            order = torch.randperm(n_examples, generator=shuffle_generator, device=device)
            # One gather per epoch, then contiguous slices: cheaper than a gather per step.
            shuffled = data.index_select(0, order)
            # Running sums stay on the device (no host synchronization inside the epoch), all
            # terms in one vector: two small kernels per step, whatever the number of terms.
            names: List[str] = []
            sums: Optional[Tensor] = None
            for step, begin in enumerate(range(0, n_examples, config.batch_size)):
                batch = shuffled[begin:begin + config.batch_size]
                share = 1.0
                if ranks is not None:
                    if batch.shape[0] < ranks.world:
                        continue
                    global_size = batch.shape[0]
                    batch = batch.tensor_split(ranks.world)[ranks.rank]
                    share = batch.shape[0] * ranks.world / global_size
                if captured_step is not None:
                    captured_step(batch)
                    output = captured_step.last_output
                else:
                    output = trainer(batch, generator=noise_generator)
                    optimizer.zero_grad(set_to_none=True)
                    (output.loss if ranks is None else _rank_loss(output, model, share)).backward()
                    optimizer.step()
                with torch.no_grad():
                    values = torch.stack([output.loss.detach(), *(t.detach() for t in output.terms.values())])
                    if sums is None:
                        names = ["loss", *output.terms]
                        sums = values.float() * batch.shape[0]
                    else:
                        sums.add_(values.float(), alpha=batch.shape[0])
                bar.step()
                if callback is not None:
                    callback(epoch, step, output)
            if ranks is not None:
                import torch.distributed as dist

                dist.all_reduce(sums)  # every rank's examples, for the epoch's means
            metrics = dict(zip(names, (sums / n_examples).tolist()))
            seconds = time.perf_counter() - started  # .tolist() above synchronized the device
            if not all(math.isfinite(v) for v in metrics.values()):
                raise FloatingPointError(
                    f"training diverged in epoch {epoch}: {metrics}; lower the learning rate (lr={config.lr})"
                )
            history.setdefault("epoch", []).append(float(epoch))
            for name, value in metrics.items():
                history.setdefault(name, []).append(value)
            history.setdefault("seconds", []).append(seconds)
            if checkpoint_path is not None and writes:
                save_checkpoint(
                    checkpoint_path,
                    model=model,
                    optimizer=optimizer,
                    epoch=epoch,
                    config=config,
                    rng_state=_rng_state(shuffle_generator, noise_generator, device),
                    history=history,
                    extra=extra,
                )
            bar.epoch(epoch, metrics, seconds)
    finally:
        bar.close()
    model.eval()
    history["epoch"] = [int(e) for e in history.get("epoch", [])]
    return model, history
