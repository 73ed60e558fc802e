"""Checkpoints: the format, written atomically, read safely.

A checkpoint holds everything a run needs to continue as if it had never stopped: the
model, the optimizer, the epoch, the configuration, the history and every random generator's
state. It is written to a temporary file and renamed onto its path (a crash leaves the
previous checkpoint intact) and read with ``torch.load(weights_only=True)`` (it can hold no
code); a file that is not a valid checkpoint is refused with a message naming what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union

import torch
from torch import Tensor

import pyae
from pyae._atomic import atomic_write
from pyae._typing import PathLike
from pyae.config import TrainConfig, build_model
from pyae.modules import Autoencoder
from pyae.validation import check_int

__all__ = [
    "Checkpoint",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "best_checkpoint_path",
    "rng_state",
    "restore_rng_state",
]

#: The value of a checkpoint's ``"format"`` key: tells a pyae checkpoint from any other file.
CHECKPOINT_FORMAT = "pyae.checkpoint"
#: The newest checkpoint layout this version writes and reads.
CHECKPOINT_VERSION = 1


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
    epoch = check_int(epoch, "epoch", 0)
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

    try:
        config = _validated_config(data)
    except ValueError as err:
        raise ValueError(f"{path!r} is not a valid pyae checkpoint: {err}") from err
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


def _validated_config(data) -> TrainConfig:
    """The config of a loaded checkpoint payload, after checking the payload's layout; a
    ValueError says what is wrong."""
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"it has no 'format': {CHECKPOINT_FORMAT!r} marker (another kind of file?)")
    for key, kind in _REQUIRED_KEYS.items():
        if key not in data:
            raise ValueError(f"missing key {key!r}")
        if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
            raise ValueError(f"{key!r} should be a {kind.__name__}, got {type(data[key]).__name__}")
    if data["version"] > CHECKPOINT_VERSION or data["version"] < 1:
        raise ValueError(
            f"format version {data['version']} is not supported by this pyae (reads 1..{CHECKPOINT_VERSION})"
        )
    if data["epoch"] < 0:
        raise ValueError(f"negative epoch {data['epoch']}")
    try:
        config = TrainConfig.from_dict(data["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad config: {err}") from err
    for name, value in data["model"].items():
        if not isinstance(value, Tensor):
            raise ValueError(f"model state entry {name!r} is not a tensor")
    expected_weight = (config.n_hidden, data["n_inputs"])
    weight = data["model"].get("encoder.weight")
    if weight is None or tuple(weight.shape) != expected_weight:
        raise ValueError(f"model state has no encoder.weight of shape {expected_weight}")
    for name in ("shuffle", "noise"):
        state = data["rng_state"].get(name)
        if not isinstance(state, Tensor) or state.dtype != torch.uint8:
            raise ValueError(f"rng_state[{name!r}] is missing or not a uint8 tensor")
    return config


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


def best_checkpoint_path(path: PathLike) -> Path:
    """Where a run with validation keeps the checkpoint of its best epoch (the lowest held-out
    loss so far): beside ``path``, ``checkpoint.pt`` -> ``checkpoint.best.pt``."""
    path = Path(os.fspath(path))
    return path.with_name(f"{path.stem}.best{path.suffix}")


def rng_state(generators: Mapping[str, torch.Generator], device: torch.device) -> Dict[str, Any]:
    """The states of the global generators and of ``generators`` (by name), for a checkpoint."""
    state: Dict[str, Any] = {
        "device_type": device.type,  # a CPU generator's state does not fit a CUDA one
        "torch": torch.get_rng_state(),
        **{name: generator.get_state() for name, generator in generators.items()},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator],
                      device: torch.device) -> bool:
    """Restore what :func:`rng_state` stored. Returns False, leaving ``generators`` as they
    are, when the checkpoint's generators lived on another kind of device (their states do
    not fit these); the global ones are restored either way."""
    same_device_type = state.get("device_type", "cpu") == device.type
    if same_device_type:
        for name, generator in generators.items():
            generator.set_state(state[name].cpu())
    if isinstance(state.get("torch"), Tensor):
        torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if device.type == "cuda" and isinstance(cuda_states, (list, tuple)) \
            and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    return same_device_type
