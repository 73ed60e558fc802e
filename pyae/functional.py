"""The functional API of pyae: the encoder, the penalties, the losses and the corruptions.

Conventions (see DESIGN.md): ``x`` is ``(B, n)``, ``weight`` is ``(k, n)`` (the
``nn.Linear`` layout), ``bias`` is ``(k,)``. Every penalty and loss is a mean over the batch
of a per-example sum, so its size does not depend on the batch size.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from pyae import ops as _ops
from pyae.ops import EncoderOutput, ReconstructionOutput, sigmoid_encoder, sigmoid_reconstruction_loss

__all__ = [
    "EncoderOutput",
    "sigmoid_encoder",
    "kl_sparsity",
    "weight_decay",
    "reconstruction_loss",
    "sigmoid_reconstruction",
    "ReconstructionOutput",
    "RECONSTRUCTION_LOSSES",
    "mask_noise",
    "masked_sigmoid_encoder",
    "gaussian_noise",
]

RECONSTRUCTION_LOSSES = ("mse", "cross_entropy")


def _check_probability(value, name: str, *, closed: bool) -> float:
    """Validate a Python number in (0, 1) (open) or [0, 1] (closed) and return it."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    inside = 0.0 <= value <= 1.0 if closed else 0.0 < value < 1.0
    if not inside:
        interval = "[0, 1]" if closed else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def _check_non_negative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not value >= 0.0 or math.isinf(value):  # also refuses NaN
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_floating_tensor(t, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def kl_sparsity(mean_activation: Tensor, target: float) -> Tensor:
    """The sparsity penalty: ``sum_l KL(target || rho_hat_l)`` for Bernoulli variables.

    ``KL = target * log(target / rho_hat) + (1 - target) * log((1 - target) / (1 - rho_hat))``.
    It is 0 with zero gradient where ``rho_hat == target`` and grows without bound as
    ``rho_hat`` approaches 0 or 1. Its gradient is
    ``-target / rho_hat + (1 - target) / (1 - rho_hat)``.

    Clamping: ``rho_hat`` is clamped into ``[eps, 1 - eps]`` with ``eps`` the machine epsilon
    of its dtype, so that mean activations of exactly 0 or 1 (saturated units) give a large
    but finite penalty and a finite gradient instead of ``inf``/``NaN``. The gradient is the
    formula above on the closed interval and 0 outside it, so a unit stuck at exactly 0 or 1
    gets no gradient from this term.

    One fused operator (``torch.ops.pyae.kl_sparsity``) each way, where the same formula in
    torch ops takes about a dozen kernels and autograd nodes.

    Args:
        mean_activation: ``rho_hat``, the batch mean of each hidden unit, shape ``(k,)``.
        target: the desired mean activation ``rho``, in ``(0, 1)``.
    """
    _check_floating_tensor(mean_activation, "mean_activation")
    target = _check_probability(target, "target", closed=False)
    return _ops.kl_sparsity(mean_activation, target)


def weight_decay(*weights: Tensor) -> Tensor:
    """``(1/2) * sum ||W||^2`` over the given weight matrices (never biases).

    Multiplied by ``lambda`` this adds exactly ``lambda * W`` to each matrix's gradient, the
    convention of the torch optimizers' ``weight_decay``. One fused operator
    (``torch.ops.pyae.weight_decay``): one read of each weight forward and one pass backward,
    no weight-sized temporaries. The weights must share one dtype and device.
    """
    if not weights:
        raise ValueError("weight_decay needs at least one weight tensor")
    for index, weight in enumerate(weights):
        _check_floating_tensor(weight, f"weights[{index}]")
    return _ops.weight_decay(weights)


def _check_reconstruction_arguments(output, target, kind: str, output_name: str = "output", *,
                                    check_range: bool = True) -> None:
    if kind not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"kind must be one of {', '.join(map(repr, RECONSTRUCTION_LOSSES))}; got {kind!r}")
    _check_floating_tensor(output, output_name)
    _check_floating_tensor(target, "target")
    if output.shape != target.shape or output.dim() != 2:
        raise ValueError(
            f"{output_name} and target must both be (batch, features) of one shape, got {tuple(output.shape)} "
            f"and {tuple(target.shape)}"
        )
    if output.shape[0] == 0:
        raise ValueError(f"{output_name} must hold at least one row: the batch mean of an empty batch is undefined")
    if check_range and kind == "cross_entropy" and target.device.type == "cpu" and not torch.compiler.is_compiling():
        # One cheap reduction to refuse targets that would give a meaningless loss (pyae's
        # fused CPU kernel does the same inside its pass). On an accelerator the check would
        # cost a host synchronization in every training step (and forbid CUDA-graph capture),
        # so there the data is checked once where it is loaded.
        low, high = torch.aminmax(target.detach())
        if low < 0 or high > 1:
            raise ValueError(
                f"cross_entropy needs targets in [0, 1], got values in [{low.item():g}, {high.item():g}]"
            )


def reconstruction_loss(output: Tensor, target: Tensor, kind: str = "mse", *, from_logits: bool = False) -> Tensor:
    """The reconstruction loss, summed over the features and averaged over the batch.

    Args:
        output: the decoder's output ``(B, n)``: the reconstruction ``xhat``, or the decoder's
            pre-activations (logits) when ``from_logits`` is true.
        target: the clean input ``x``, ``(B, n)``.
        kind: ``"mse"``, ``sum_j (xhat_j - x_j)^2``; or ``"cross_entropy"``,
            ``-sum_j x_j log xhat_j + (1 - x_j) log(1 - xhat_j)``. Its targets must lie in
            ``[0, 1]``: CPU targets outside raise a ValueError here; CUDA targets are not
            checked per call (that would synchronize every step), check them once up front.
        from_logits: the output holds logits ``z`` with ``xhat = sigmoid(z)``; the loss is
            then computed by :func:`sigmoid_reconstruction` (fused, stable for any ``z``).
    """
    if from_logits:
        return sigmoid_reconstruction(output, target, kind).loss
    _check_reconstruction_arguments(output, target, kind)
    batch = output.shape[0]
    if kind == "mse":
        return F.mse_loss(output, target, reduction="sum") / batch
    return F.binary_cross_entropy(output, target, reduction="sum") / batch


def sigmoid_reconstruction(logits: Tensor, target: Tensor, kind: str = "cross_entropy") -> ReconstructionOutput:
    """A sigmoid decoder's output and its reconstruction loss, from the decoder's logits.

    ``reconstruction = sigmoid(logits)`` and the loss of :func:`reconstruction_loss` (summed
    over the features, averaged over the batch), computed by pyae's fused operator in one
    pass; its backward saves only the reconstruction and the target. A target that requires
    grad is computed with torch ops instead (the operator treats the target as data).

    Returns:
        ``ReconstructionOutput(reconstruction, loss)``.
    """
    fused = not target.requires_grad
    # The fused CPU kernel checks the cross-entropy targets' range within its own pass.
    _check_reconstruction_arguments(logits, target, kind, "logits", check_range=not fused)
    if fused:
        return sigmoid_reconstruction_loss(logits, target, kind == "cross_entropy")
    reconstruction = torch.sigmoid(logits)
    batch = logits.shape[0]
    if kind == "mse":
        return ReconstructionOutput(reconstruction, F.mse_loss(reconstruction, target, reduction="sum") / batch)
    return ReconstructionOutput(
        reconstruction, F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch
    )


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def mask_noise(x: Tensor, q: float, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Masking noise: each entry of ``x`` is set to 0 with probability ``q``, independently.

    The kept entries are not rescaled (the lecture's corruption, unlike dropout). One fused
    operator (``torch.ops.pyae.mask_noise``): a seed is drawn from ``generator`` (one
    ``torch.randint`` on ``x``'s device), and each element's fate is a Philox4x32-10 word of
    that seed and the element's index. That is several times cheaper than ``torch.rand`` plus
    a comparison and a product on a CPU, gives the same mask on every device and thread count,
    and needs no stored mask for the backward (the gradient goes through the same mask).

    Args:
        x: the input; the result is contiguous.
        q: the probability of zeroing an entry, in ``[0, 1]``.
        generator: an optional ``torch.Generator`` on ``x``'s device, for reproducible noise.
    """
    _check_floating_tensor(x, "x")
    q = _check_probability(q, "q", closed=True)
    _check_generator(generator)
    if q == 0.0:
        return x.clone()
    return _ops.mask_noise(x, q, _draw_seed(generator, x.device))


def _draw_seed(generator: Optional[torch.Generator], device) -> Tensor:
    """A Philox seed for the masking noise, drawn from ``generator`` (or the default one) on
    ``device``: an int64 scalar tensor that stays on the device."""
    return torch.randint(0, 2**63 - 1, (), generator=generator, device=device, dtype=torch.int64)


def masked_sigmoid_encoder(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: float, *,
                           generator: Optional[torch.Generator] = None) -> EncoderOutput:
    """The encoder of a masked input: ``sigmoid_encoder(mask_noise(x, q, generator=g), ...)``,
    the same numbers for the same generator state, but the corrupted input is never kept for
    the backward: autograd keeps the clean ``x`` and the noise's seed and recomputes the mask,
    so a denoising step keeps no more memory than an uncorrupted one.

    Args:
        x: the clean input, ``(B, n)``.
        weight, bias: as in :func:`sigmoid_encoder`.
        q: the masking probability in ``[0, 1]``.
        generator: an optional ``torch.Generator`` on ``x``'s device.
    """
    _check_floating_tensor(x, "x")
    q = _check_probability(q, "q", closed=True)
    _check_generator(generator)
    if q == 0.0:
        return sigmoid_encoder(x, weight, bias)
    return _ops.masked_sigmoid_encoder(x, weight, bias, q, _draw_seed(generator, x.device))


def gaussian_noise(x: Tensor, std: float, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Additive Gaussian noise: ``x + std * N(0, 1)`` entrywise (the lecture uses ``std = 1``).

    Args:
        x: the input.
        std: the noise's standard deviation, ``>= 0``.
        generator: an optional ``torch.Generator`` on ``x``'s device, for reproducible noise.
    """
    _check_floating_tensor(x, "x")
    std = _check_non_negative(std, "std")
    _check_generator(generator)
    if std == 0.0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise
