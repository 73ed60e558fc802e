"""Argument checks shared by the whole package: each option is checked here once, with one
wording, and every message names the argument. A wrong type raises ``TypeError``, a wrong
value ``ValueError``.

The compiled operators check their tensors themselves (``csrc/checks.h``, mirrored by the
fake kernels in :mod:`pyae.ops`); this module checks the Python-level options around them.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Dict, Iterable, Optional

import torch
from torch import Tensor

__all__ = [
    "DECODER_ACTIVATIONS",
    "RECONSTRUCTION_LOSSES",
    "NOISES",
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_probability",
    "check_floating_tensor",
    "check_generator",
    "check_device",
    "autoencoder_options",
]

DECODER_ACTIVATIONS = ("sigmoid", "linear")
RECONSTRUCTION_LOSSES = ("mse", "cross_entropy")
NOISES = (None, "mask", "gaussian")


def check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(value, name: str, choices: Iterable[Any]):
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_int(value, name: str, minimum: int) -> int:
    """An int (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_number(value, name: str, *, positive: bool = False, below_one: bool = False) -> float:
    """A finite real number ``>= 0`` (``> 0`` when ``positive``; ``< 1`` too when
    ``below_one``), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0) or (below_one and value >= 1.0):
        bound = "in [0, 1)" if below_one else ("> 0" if positive else ">= 0")
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def check_probability(value, name: str, *, closed: bool) -> float:
    """A real number in ``[0, 1]`` (``closed``) or ``(0, 1)``, returned as a float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    inside = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not inside:
        raise ValueError(f"{name} must lie in {'[0, 1]' if closed else '(0, 1)'}, got {value}")
    return value


def check_floating_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_generator(generator) -> Optional[torch.Generator]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_device(device) -> str:
    """A device specification: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a
    ``torch.device`` is accepted and returned as its string)."""
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


def autoencoder_options(
    *,
    tied_weights: bool,
    decoder_activation: str,
    loss: str,
    weight_decay: float,
    noise: Optional[str],
    noise_level: float,
    sparsity_target: Optional[float],
    sparsity_weight: float,
    contractive_weight: float,
) -> Dict[str, Any]:
    """The options of :class:`pyae.Autoencoder` (and of :class:`pyae.config.TrainConfig`,
    which holds the same ones), checked together and normalized (numbers become floats).

    Raises:
        TypeError, ValueError: naming the option.
    """
    check_bool(tied_weights, "tied_weights")
    check_choice(decoder_activation, "decoder_activation", DECODER_ACTIVATIONS)
    check_choice(loss, "loss", RECONSTRUCTION_LOSSES)
    check_choice(noise, "noise", NOISES)
    if loss == "cross_entropy" and decoder_activation != "sigmoid":
        raise ValueError(
            "loss='cross_entropy' needs decoder_activation='sigmoid' (the reconstruction must be a probability)"
        )
    weight_decay = check_number(weight_decay, "weight_decay")
    sparsity_weight = check_number(sparsity_weight, "sparsity_weight")
    contractive_weight = check_number(contractive_weight, "contractive_weight")
    if noise == "mask":
        noise_level = check_probability(noise_level, "noise_level", closed=True)
    else:
        noise_level = check_number(noise_level, "noise_level")
        if noise is None and noise_level != 0.0:
            raise ValueError(f"noise_level={noise_level} needs noise='mask' or noise='gaussian'")
    if sparsity_target is not None:
        sparsity_target = check_probability(sparsity_target, "sparsity_target", closed=False)
    elif sparsity_weight > 0.0:
        raise ValueError("sparsity_weight > 0 needs a sparsity_target in (0, 1)")
    return dict(tied_weights=tied_weights, decoder_activation=decoder_activation, loss=loss,
                weight_decay=weight_decay, noise=noise, noise_level=noise_level, sparsity_target=sparsity_target,
                sparsity_weight=sparsity_weight, contractive_weight=contractive_weight)
