"""The functional API of pyae: the encoder, the penalties, the losses and the corruptions.

Conventions (docs/design.md): ``x`` is ``(B, n)``, ``weight`` is ``(k, n)`` (the
``nn.Linear`` layout), ``bias`` is ``(k,)``. Every penalty and loss is a mean over the batch
of a per-example sum, so its size does not depend on the batch size. The modules of
:mod:`pyae.modules` take the same argument names; they call the operator behind
:func:`autoencoder_loss` (the whole objective) or, where it does not apply, these functions
one by one.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pyae import ops as _ops
from pyae.ops import AutoencoderLossOutput, EncoderOutput, ReconstructionOutput, sigmoid_encoder
from pyae.validation import (
    RECONSTRUCTION_LOSSES,
    autoencoder_options,
    check_choice,
    check_floating_tensor,
    check_generator,
    check_number,
    check_probability,
)

__all__ = [
    "EncoderOutput",
    "ReconstructionOutput",
    "AutoencoderLossOutput",
    "sigmoid_encoder",
    "masked_sigmoid_encoder",
    "kl_sparsity",
    "weight_decay",
    "reconstruction_loss",
    "sigmoid_reconstruction_loss",
    "mask_noise",
    "gaussian_noise",
    "autoencoder_loss",
]


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
    check_floating_tensor(mean_activation, "mean_activation")
    target = check_probability(target, "target", closed=False)
    return _ops.kl_sparsity(mean_activation, target)


def weight_decay(weights: Sequence[Tensor]) -> Tensor:
    """``(1/2) * sum ||W||^2`` over the given weight matrices (never biases).

    Multiplied by ``lambda`` this adds exactly ``lambda * W`` to each matrix's gradient, the
    convention of the torch optimizers' ``weight_decay``. One fused operator
    (``torch.ops.pyae.weight_decay``): one read of each weight forward and one pass backward,
    no weight-sized temporaries.

    Args:
        weights: the weight matrices (a list or tuple), of one dtype and device.
    """
    if isinstance(weights, Tensor) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a list or tuple of tensors, got {type(weights).__name__}")
    if not weights:
        raise ValueError("weights must hold at least one weight tensor")
    for index, weight in enumerate(weights):
        check_floating_tensor(weight, f"weights[{index}]")
    return _ops.weight_decay(weights)


def _check_reconstruction_arguments(output, target, loss: str, output_name: str, *, check_range: bool) -> None:
    check_choice(loss, "loss", RECONSTRUCTION_LOSSES)
    check_floating_tensor(output, output_name)
    check_floating_tensor(target, "target")
    if output.shape != target.shape or output.dim() != 2:
        raise ValueError(
            f"{output_name} and target must both be (batch, features) of one shape, got {tuple(output.shape)} "
            f"and {tuple(target.shape)}"
        )
    if output.shape[0] == 0:
        raise ValueError(f"{output_name} must hold at least one row: the batch mean of an empty batch is undefined")
    if check_range and loss == "cross_entropy" and target.device.type == "cpu" and not torch.compiler.is_compiling():
        # One cheap reduction to refuse targets that would give a meaningless loss (pyae's
        # fused CPU kernel does the same inside its pass). On an accelerator the check would
        # cost a host synchronization in every training step (and forbid CUDA-graph capture),
        # so there the data is checked once where it is loaded (pyae's CUDA kernel gives a
        # NaN loss for such targets).
        low, high = torch.aminmax(target.detach())
        if low < 0 or high > 1:
            raise ValueError(
                f"cross_entropy needs targets in [0, 1], got values in [{low.item():g}, {high.item():g}]"
            )


def reconstruction_loss(reconstruction: Tensor, target: Tensor, loss: str = "mse") -> Tensor:
    """The reconstruction loss of a decoder's output, summed over the features and averaged
    over the batch. (For a sigmoid decoder, :func:`sigmoid_reconstruction_loss` computes it
    from the logits, fused and stable for any logit.)

    Args:
        reconstruction: the decoder's output ``xhat``, ``(B, n)``.
        target: the clean input ``x``, ``(B, n)``.
        loss: ``"mse"``, ``sum_j (xhat_j - x_j)^2``; or ``"cross_entropy"``,
            ``-sum_j x_j log xhat_j + (1 - x_j) log(1 - xhat_j)`` (``xhat`` in ``(0, 1)``,
            targets in ``[0, 1]``: CPU targets outside raise a ValueError; CUDA targets are not
            checked per call, which would synchronize every step: check them once up front).
    """
    _check_reconstruction_arguments(reconstruction, target, loss, "reconstruction", check_range=True)
    batch = reconstruction.shape[0]
    if loss == "mse":
        return F.mse_loss(reconstruction, target, reduction="sum") / batch
    return F.binary_cross_entropy(reconstruction, target, reduction="sum") / batch


def sigmoid_reconstruction_loss(logits: Tensor, target: Tensor, loss: str = "mse") -> ReconstructionOutput:
    """A sigmoid decoder's output and its reconstruction loss, from the decoder's logits.

    ``reconstruction = sigmoid(logits)`` and the loss of :func:`reconstruction_loss` (summed
    over the features, averaged over the batch), computed by pyae's fused operator in one
    pass; its backward saves only the reconstruction and the target. A target that requires
    grad is computed with torch ops instead (the operator treats the target as data).

    Args:
        logits: the decoder's pre-activations ``z``, ``(B, n)``.
        target: the clean input ``x``, ``(B, n)``.
        loss: ``"mse"`` or ``"cross_entropy"`` (computed stably from ``z``), as in
            :func:`reconstruction_loss`.

    Returns:
        ``ReconstructionOutput(reconstruction, loss)``.
    """
    fused = not target.requires_grad
    # The fused CPU kernel checks the cross-entropy targets' range within its own pass.
    _check_reconstruction_arguments(logits, target, loss, "logits", check_range=not fused)
    if fused:
        return _ops.sigmoid_reconstruction_loss(logits, target, loss)
    reconstruction = torch.sigmoid(logits)
    batch = logits.shape[0]
    if loss == "mse":
        return ReconstructionOutput(reconstruction, F.mse_loss(reconstruction, target, reduction="sum") / batch)
    return ReconstructionOutput(
        reconstruction, F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch
    )


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
    check_floating_tensor(x, "x")
    q = check_probability(q, "q", closed=True)
    check_generator(generator)
    if q == 0.0:
        return x.clone()
    return _ops.mask_noise(x, q, _draw_seed(generator, x.device))


def _draw_seed(generator: Optional[torch.Generator], device) -> Tensor:
    """A Philox seed for the masking noise, drawn from ``generator`` (or the default one) on
    ``device``: an int64 scalar tensor that stays on the device."""
    return torch.randint(0, 2**63 - 1, (), generator=generator, device=device, dtype=torch.int64)


def masked_sigmoid_encoder(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: float, *,
                           generator: Optional[torch.Generator] = None,
                           squared_row_norms: Optional[Tensor] = None) -> EncoderOutput:
    """The encoder of a masked input: ``sigmoid_encoder(mask_noise(x, q, generator=g), ...)``,
    the same numbers for the same generator state, but the corrupted input is never kept for
    the backward: autograd keeps the clean ``x`` and the noise's seed and recomputes the mask,
    so a denoising step keeps no more memory than an uncorrupted one.

    Args:
        x: the clean input, ``(B, n)``.
        weight, bias, squared_row_norms: as in :func:`sigmoid_encoder`.
        q: the masking probability in ``[0, 1]``.
        generator: an optional ``torch.Generator`` on ``x``'s device.
    """
    check_floating_tensor(x, "x")
    q = check_probability(q, "q", closed=True)
    check_generator(generator)
    if q == 0.0:
        return sigmoid_encoder(x, weight, bias, squared_row_norms)
    return _ops.masked_sigmoid_encoder(x, weight, bias, q, _draw_seed(generator, x.device), squared_row_norms)


def gaussian_noise(x: Tensor, std: float, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """Additive Gaussian noise: ``x + std * N(0, 1)`` entrywise (the lecture uses ``std = 1``).

    Args:
        x: the input.
        std: the noise's standard deviation, ``>= 0``.
        generator: an optional ``torch.Generator`` on ``x``'s device, for reproducible noise.
    """
    check_floating_tensor(x, "x")
    std = check_number(std, "std")
    check_generator(generator)
    if std == 0.0:
        return x.clone()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + std * noise


def autoencoder_loss(x: Tensor, encoder_weight: Tensor, encoder_bias: Optional[Tensor], decoder_weight: Tensor,
                     decoder_bias: Optional[Tensor], *, loss: str = "mse", noise: Optional[str] = None,
                     noise_level: float = 0.0, generator: Optional[torch.Generator] = None,
                     sparsity_target: Optional[float] = None, sparsity_weight: float = 0.0,
                     contractive_weight: float = 0.0, weight_decay: float = 0.0,
                     weight_decay_term: Optional[Tensor] = None,
                     squared_row_norms: Optional[Tensor] = None) -> AutoencoderLossOutput:
    """A one-hidden-layer sigmoid autoencoder's training objective in one fused operator.

    What :class:`pyae.Autoencoder` with a sigmoid decoder computes in training mode, with the
    same argument names: the hidden units of the (corrupted) input, the sigmoid decoder's
    reconstruction of the clean ``x`` and the loss

        reconstruction + weight_decay * weight_decay_term + sparsity_weight * KL
                       + contractive_weight * contractive

    The same numbers as :func:`sigmoid_encoder` (or :func:`masked_sigmoid_encoder`),
    ``F.linear``, :func:`sigmoid_reconstruction_loss` and :func:`kl_sparsity` called one by
    one, as one operator with one autograd node (``torch.ops.pyae.autoencoder_loss``): at
    small batches a step's cost is the host work per operator and per node.

    Args:
        x: the clean input, ``(B, n)``; the reconstruction's target, treated as data (an ``x``
            that requires grad is refused: use the operators one by one).
        encoder_weight, encoder_bias: ``(k, n)`` and ``(k,)`` (or None).
        decoder_weight, decoder_bias: ``(n, k)`` and ``(n,)`` (or None); tied weights pass
            ``encoder_weight.t()``.
        loss: ``"mse"`` or ``"cross_entropy"``.
        noise, noise_level, generator: the corruption, as for :class:`pyae.Autoencoder`:
            ``"mask"`` (the mask recomputed in the backward, never stored) or ``"gaussian"``.
        sparsity_target, sparsity_weight: the KL term (reported whenever a target is given).
        contractive_weight: the contractive term's weight (the term is always reported).
        weight_decay: ``lambda``; its term is ``weight_decay_term`` when given (a 0-dim
            tensor), else :func:`weight_decay` of the weight matrices (one matrix when
            ``decoder_weight`` is a view of ``encoder_weight``, as with tied weights).
        squared_row_norms: as for :func:`sigmoid_encoder`.

    Returns:
        An :class:`AutoencoderLossOutput` ``(loss, reconstruction, hidden, mean_activation,
        reconstruction_term, sparsity_term, contractive_term)``.
    """
    options = autoencoder_options(
        tied_weights=False, decoder_activation="sigmoid", loss=loss, weight_decay=weight_decay, noise=noise,
        noise_level=noise_level, sparsity_target=sparsity_target, sparsity_weight=sparsity_weight,
        contractive_weight=contractive_weight)
    check_floating_tensor(x, "x")
    check_generator(generator)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "x requires grad, but autoencoder_loss treats it as the reconstruction's target, which is data; "
            "detach it, or call the operators one by one (sigmoid_encoder, sigmoid_reconstruction_loss, ...)"
        )
    check_floating_tensor(encoder_weight, "encoder_weight")
    check_floating_tensor(decoder_weight, "decoder_weight")
    for tensor, name in ((encoder_bias, "encoder_bias"), (decoder_bias, "decoder_bias"),
                         (squared_row_norms, "squared_row_norms"), (weight_decay_term, "weight_decay_term")):
        if tensor is not None:
            check_floating_tensor(tensor, name)
    if decoder_weight.dtype != encoder_weight.dtype or decoder_weight.device != encoder_weight.device:
        raise TypeError(
            f"decoder_weight ({decoder_weight.dtype}, {decoder_weight.device}) must have encoder_weight's dtype and "
            f"device ({encoder_weight.dtype}, {encoder_weight.device})"
        )
    noise_level = options["noise_level"]
    encoder_input, seed = _fused_corruption(x, noise, noise_level, generator)
    weight_decay = options["weight_decay"]
    if weight_decay > 0.0 and weight_decay_term is None:
        tied = _is_transpose_of(decoder_weight, encoder_weight)
        weight_decay_term = _ops.weight_decay([encoder_weight] if tied else [encoder_weight, decoder_weight])
    return _ops.autoencoder_loss(
        encoder_input, x, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
        squared_row_norms=squared_row_norms, noise_level=noise_level, seed=seed, loss=loss,
        contractive_weight=options["contractive_weight"], sparsity_target=options["sparsity_target"],
        sparsity_weight=options["sparsity_weight"], weight_decay_term=weight_decay_term, weight_decay=weight_decay)


def _fused_corruption(x: Tensor, noise: Optional[str], noise_level: float,
                      generator: Optional[torch.Generator]):
    """What :func:`pyae.ops.autoencoder_loss` is given for a corruption: ``(encoder input,
    seed)``. Masking is left to the operator (the seed drawn here, the mask recomputed in its
    backward); Gaussian noise is added here. No corruption: ``(x, None)``."""
    if noise is None or noise_level == 0.0:
        return x, None
    if noise == "mask":
        return x, _draw_seed(generator, x.device)
    return gaussian_noise(x, noise_level, generator=generator), None


def _is_transpose_of(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` is ``b.t()``: the same memory read with the dimensions swapped (tied weights)."""
    return (a.dim() == 2 and b.dim() == 2 and a.shape == b.shape[::-1] and a.stride() == b.stride()[::-1]
            and a.storage_offset() == b.storage_offset()
            and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())
