"""The compiled operators of pyae and their fake kernels.

Loading :mod:`pyae._C` registers the ``torch.ops.pyae`` operators: the schemas in
``csrc/pyae.cpp``, the kernels in ``csrc/cpu`` and ``csrc/cuda`` (the device-generic ones,
``autoencoder_loss`` among them, in ``csrc/composite.cpp``), and their autograd in
``csrc/autograd.cpp``, where each backward is itself an operator
(``sigmoid_encoder_backward``, ``sigmoid_reconstruction_loss_backward``,
``kl_sparsity_backward``, ``weight_decay_backward``; ``mask_noise`` is its own backward;
``autoencoder_loss``'s one node chains its parts') that ``torch.compile`` traces like an aten
op. Autograd is in C++ rather than in ``torch.library.register_autograd`` because a Python
autograd function costs tens of microseconds per call and per backward node, which at small
sizes is much of a training step (benchmarks/RESULTS.md, the tiny size on the CPU).

This module adds what the compiler needs from Python: ``register_fake`` for every operator,
so that ``torch.compile``, ``torch.export`` and meta tensors see the output shapes without
running a kernel, with the same argument checks as the kernels.

Most users want :mod:`pyae.functional` or the modules; the functions here are the thin,
typed entry points onto the operators, with the same names and keywords as
:mod:`pyae.functional`'s checked ones.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

try:
    from pyae import _C  # noqa: F401  (registers torch.ops.pyae)
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "pyae's compiled extension pyae._C could not be loaded "
        f"({error}). pyae has no pure-Python fallback: build it from the source checkout with\n"
        "    pip install --no-build-isolation -e .\n"
        "(torch must be installed first; set CUDA_HOME to your CUDA toolkit to build the CUDA "
        "kernels, or PYAE_CUDA=0 for a CPU-only build)."
    ) from error

# The backward operators (sigmoid_encoder_backward, ...) have typed entry points below too,
# for tests and benchmarks, but are not part of the public surface (torchvision keeps its
# backward operators private the same way).
__all__ = [
    "EncoderOutput",
    "ReconstructionOutput",
    "sigmoid_encoder",
    "masked_sigmoid_encoder",
    "sigmoid_reconstruction_loss",
    "kl_sparsity",
    "weight_decay",
    "mask_noise",
    "autoencoder_loss",
    "AutoencoderLossOutput",
    "squared_row_norms",
    "has_cuda_kernels",
]


class EncoderOutput(NamedTuple):
    """What :func:`sigmoid_encoder` returns.

    Attributes:
        hidden: ``h = sigmoid(x @ weight.T + bias)``, shape ``(B, k)``.
        mean_activation: ``rho_hat = h.mean(0)``, shape ``(k,)``: the sparsity statistic.
        contractive: the batch mean of ``||dh/dx||_F^2``, a scalar: the contractive penalty.
    """

    hidden: Tensor
    mean_activation: Tensor
    contractive: Tensor


class ReconstructionOutput(NamedTuple):
    """What :func:`sigmoid_reconstruction_loss` returns.

    Attributes:
        reconstruction: ``xhat = sigmoid(logits)``, shape ``(B, n)``.
        loss: the reconstruction loss summed over the features, averaged over the batch.
    """

    reconstruction: Tensor
    loss: Tensor


def has_cuda_kernels() -> bool:
    """Whether this build of pyae holds CUDA kernels (it is a CUDA build)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("pyae::sigmoid_encoder", "CUDA")


def sigmoid_encoder(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                    squared_row_norms: Optional[Tensor] = None) -> EncoderOutput:
    """The fused sigmoid encoder: hidden units, their batch mean and the contractive penalty.

    Args:
        x: input batch, ``(B, n)``, ``B >= 1``.
        weight: encoder weight in the ``nn.Linear`` layout, ``(k, n)``.
        bias: encoder bias, ``(k,)``, or None.
        squared_row_norms: ``c_l = ||weight_l||^2``, ``(k,)`` in the accumulation dtype
            (float32 for float32, float16 and bfloat16; float64 for float64), or None to
            compute it from ``weight``. When given, the contractive penalty reads it instead
            of the weight's rows, and treats it as an input of its own: the penalty's
            dependence on ``c`` reaches ``squared_row_norms``' gradient, not ``weight``'s
            (:mod:`pyae.optim` applies the chain rule through ``c`` in its update).

    Returns:
        An :class:`EncoderOutput` ``(hidden, mean_activation, contractive)``. Every output is
        differentiable with respect to ``x``, ``weight``, ``bias`` and ``squared_row_norms``.

    Raises:
        TypeError: a non-floating input, or inputs of different dtypes.
        ValueError: wrong ranks or sizes, an empty batch, or inputs on different devices.
    """
    hidden, mean_activation, contractive, _ = torch.ops.pyae.sigmoid_encoder.default(x, weight, bias,
                                                                                     squared_row_norms)
    return EncoderOutput(hidden, mean_activation, contractive)


def squared_row_norms(weight: Tensor) -> Tensor:
    """``c_l = ||weight_l||^2`` of a ``(k, n)`` weight, ``(k,)`` in the accumulation dtype: what
    :func:`sigmoid_encoder` computes for its contractive penalty, with the same arithmetic."""
    return torch.ops.pyae.squared_row_norms.default(weight)


def sigmoid_encoder_backward(
    grad_hidden: Optional[Tensor],
    grad_mean_activation: Optional[Tensor],
    grad_contractive: Optional[Tensor],
    x: Tensor,
    weight: Tensor,
    hidden: Tensor,
    output_mask: Sequence[bool] = (True, True, True),
    squared_row_norms: Optional[Tensor] = None,
    squared_row_norms_is_input: bool = False,
) -> Tuple[Optional[Tensor], ...]:
    """Gradients of :func:`sigmoid_encoder` with respect to ``(x, weight, bias)``, and with a
    four-entry ``output_mask`` also ``squared_row_norms``.

    Any upstream gradient may be None (that output did not reach the loss). The gradients
    not asked for in ``output_mask`` are not computed and come back as None.
    ``squared_row_norms`` is the ``c`` the forward used: its fourth output (``||W_l||^2`` in
    the accumulation dtype), or None to compute it from ``weight``; or, with
    ``squared_row_norms_is_input``, the ``squared_row_norms`` the forward was given.
    """
    mask = list(output_mask) + [False] * (4 - len(output_mask))
    grads = torch.ops.pyae.sigmoid_encoder_backward.default(
        grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden, squared_row_norms,
        squared_row_norms_is_input, mask
    )
    return tuple(grad if wanted else None for grad, wanted in zip(grads, output_mask))


def sigmoid_reconstruction_loss(logits: Tensor, target: Tensor, loss: str = "mse") -> ReconstructionOutput:
    """The sigmoid decoder's output fused with its reconstruction loss, in one pass.

    Args:
        logits: the decoder's pre-activations ``z``, ``(B, n)``, ``B >= 1``.
        target: the clean input ``x``, same shape and dtype. It is treated as data: the
            operator gives it no gradient (and refuses a backward that would need one).
        loss: ``"cross_entropy"``, ``-x log xhat - (1 - x) log(1 - xhat)`` computed stably
            from the logits (targets in [0, 1]: outside, a ValueError on the CPU and a NaN
            loss on CUDA, which cannot raise without synchronizing); or ``"mse"``,
            ``(xhat - x)^2``.

    Returns:
        A :class:`ReconstructionOutput` ``(reconstruction, loss)``; the loss is summed over
        the features and averaged over the batch.
    """
    reconstruction, value = torch.ops.pyae.sigmoid_reconstruction_loss.default(
        logits, target, _is_cross_entropy(loss)
    )
    return ReconstructionOutput(reconstruction, value)


def _is_cross_entropy(loss: str) -> bool:
    if loss not in ("mse", "cross_entropy"):
        raise ValueError(f"loss must be one of 'mse', 'cross_entropy'; got {loss!r}")
    return loss == "cross_entropy"


def sigmoid_reconstruction_loss_backward(
    grad_reconstruction: Optional[Tensor],
    grad_loss: Optional[Tensor],
    reconstruction: Tensor,
    target: Tensor,
    loss: str = "mse",
) -> Tensor:
    """The gradient of :func:`sigmoid_reconstruction_loss` with respect to the logits."""
    return torch.ops.pyae.sigmoid_reconstruction_loss_backward.default(
        grad_reconstruction, grad_loss, reconstruction, target, _is_cross_entropy(loss)
    )


def kl_sparsity(mean_activation: Tensor, target: float) -> Tensor:
    """The sparsity penalty ``sum_l KL(target || mean_activation_l)`` for Bernoulli variables.

    ``mean_activation`` is clamped into ``[eps, 1 - eps]`` (``eps`` the machine epsilon of
    its dtype); the gradient is the formula's on that closed interval and 0 outside it; see
    :func:`pyae.functional.kl_sparsity`, the checked public entry point.

    Args:
        mean_activation: ``rho_hat``, usually ``(k,)``; any shape is summed over.
        target: ``rho`` in ``(0, 1)``.
    """
    return torch.ops.pyae.kl_sparsity.default(mean_activation, target)


def sigmoid_encoder_preactivation_backward(grad_hidden: Optional[Tensor], grad_mean_activation: Optional[Tensor],
                                           grad_contractive: Optional[Tensor], hidden: Tensor,
                                           squared_row_norms: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """The encoder backward's fused pass without its products: ``(delta, grad_bias,
    grad_squared_row_norms)`` with ``delta`` the gradient at the pre-activations (``B, k``);
    ``grad_weight = delta.T @ x`` (``csrc/pyae.cpp``). Not differentiable."""
    return torch.ops.pyae.sigmoid_encoder_preactivation_backward.default(
        grad_hidden, grad_mean_activation, grad_contractive, hidden, squared_row_norms)


def kl_sparsity_backward(grad: Tensor, mean_activation: Tensor, target: float) -> Tensor:
    """The gradient of :func:`kl_sparsity` with respect to ``mean_activation``."""
    return torch.ops.pyae.kl_sparsity_backward.default(grad, mean_activation, target)


def mask_noise(x: Tensor, q: float, seed: Tensor) -> Tensor:
    """``x`` with each element set to 0 with probability ``q``: one Philox4x32-10 word per
    element from ``seed`` (an int64 scalar tensor on ``x``'s device) and the element's
    row-major index, so a seed gives the same mask on every device and thread count; see
    :func:`pyae.functional.mask_noise`, which draws the seed from a ``torch.Generator``."""
    return torch.ops.pyae.mask_noise.default(x, q, seed)


def masked_sigmoid_encoder(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: float, seed: Tensor,
                           squared_row_norms: Optional[Tensor] = None) -> EncoderOutput:
    """:func:`sigmoid_encoder` of ``mask_noise(x, q, seed)``, without keeping the corrupted
    input for the backward: autograd keeps ``x`` and the seed and recomputes the mask."""
    hidden, mean_activation, contractive, _ = torch.ops.pyae.masked_sigmoid_encoder.default(
        x, weight, bias, q, seed, squared_row_norms)
    return EncoderOutput(hidden, mean_activation, contractive)


def sgd_update_(params: Sequence[Tensor], grads: Sequence[Tensor], momentum_buffers: Sequence[Tensor],
                squared_row_norm_grads: Sequence[Optional[Tensor]], weight_decays: Sequence[float],
                squared_row_norms: Sequence[Tensor], *, lr: float, momentum: float, dampening: float,
                nesterov: bool, first_step: bool) -> None:
    """The fused SGD update in place (``csrc/pyae.cpp`` documents every argument; an empty
    ``grads`` means the momentum buffers already hold the gradient's share); use it through
    :class:`pyae.optim.SGD`."""
    torch.ops.pyae.sgd_update_.default(list(params), list(grads), list(momentum_buffers),
                                       list(squared_row_norm_grads), list(weight_decays), list(squared_row_norms),
                                       lr, momentum, dampening, nesterov, first_step)


def adam_update_(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                 exp_avg_sqs: Sequence[Tensor], steps: Sequence[Tensor],
                 squared_row_norm_grads: Sequence[Optional[Tensor]], weight_decays: Sequence[float],
                 squared_row_norms: Sequence[Tensor], *, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """The fused Adam update in place (``csrc/pyae.cpp`` documents every argument); use it
    through :class:`pyae.optim.Adam`."""
    torch.ops.pyae.adam_update_.default(list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(steps),
                                        list(squared_row_norm_grads), list(weight_decays), list(squared_row_norms),
                                        lr, beta1, beta2, eps)


class AutoencoderLossOutput(NamedTuple):
    """What :func:`autoencoder_loss` returns.

    Attributes:
        loss: the weighted total, a scalar.
        reconstruction: ``xhat = sigmoid(hidden @ decoder_weight.T + decoder_bias)``, ``(B, n)``.
        hidden: ``h``, ``(B, k)``, of the (masked) input.
        mean_activation: ``rho_hat = h.mean(0)``, ``(k,)``.
        reconstruction_term: the reconstruction loss, a scalar.
        sparsity_term: ``sum_l KL(sparsity_target || rho_hat_l)``, a scalar; an empty ``(0,)``
            tensor without a sparsity target.
        contractive_term: the batch mean of ``||dh/dx||_F^2``, a scalar.
    """

    loss: Tensor
    reconstruction: Tensor
    hidden: Tensor
    mean_activation: Tensor
    reconstruction_term: Tensor
    sparsity_term: Tensor
    contractive_term: Tensor


def autoencoder_loss(x: Tensor, target: Tensor, encoder_weight: Tensor, encoder_bias: Optional[Tensor],
                     decoder_weight: Tensor, decoder_bias: Optional[Tensor], *,
                     squared_row_norms: Optional[Tensor] = None, noise_level: float = 0.0,
                     seed: Optional[Tensor] = None, loss: str = "mse", contractive_weight: float = 0.0,
                     sparsity_target: Optional[float] = None, sparsity_weight: float = 0.0,
                     weight_decay_term: Optional[Tensor] = None, weight_decay: float = 0.0) -> AutoencoderLossOutput:
    """A sigmoid autoencoder's whole objective in one operator and one autograd node: the
    composition of :func:`sigmoid_encoder` (of :func:`mask_noise` ``(x, noise_level, seed)``
    when ``seed`` is given), the decoder's ``F.linear``, :func:`sigmoid_reconstruction_loss`
    against ``target`` (data: no gradient) and :func:`kl_sparsity`, with
    ``loss = reconstruction_term + weight_decay * weight_decay_term + sparsity_weight *
    sparsity_term + contractive_weight * contractive_term`` (a term enters only with a nonzero
    weight). The same numbers as those calls one by one, with the host work of one operator;
    see :func:`pyae.functional.autoencoder_loss`, the checked public entry point."""
    outputs = torch.ops.pyae.autoencoder_loss.default(
        x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias, squared_row_norms, noise_level, seed,
        _is_cross_entropy(loss), contractive_weight, sparsity_target, sparsity_weight, weight_decay_term, weight_decay)
    return AutoencoderLossOutput(*outputs[:7])


def weight_decay(weights: Sequence[Tensor]) -> Tensor:
    """``(1/2) * sum ||W||^2`` over ``weights`` (one dtype and device), gradient ``W`` each;
    see :func:`pyae.functional.weight_decay`, the checked public entry point."""
    return torch.ops.pyae.weight_decay.default(list(weights))


def weight_decay_backward(grad: Tensor, weights: Sequence[Tensor]) -> List[Tensor]:
    """The gradients of :func:`weight_decay`: ``grad * W`` for each weight."""
    return torch.ops.pyae.weight_decay_backward.default(grad, list(weights))


# --------------------------------------------------------------------------------------
# Fake (meta) kernels: shapes, dtypes and the same argument checks as the C++ kernels, so a
# traced program fails where an eager one would.

# The dtypes every kernel has (csrc/checks.h refuses the others, float8 among them).
KERNEL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _check_kernel_dtype(t: Tensor, name: str) -> None:
    torch._check_type(
        t.dtype in KERNEL_DTYPES,
        lambda: f"pyae: {name} must be a floating-point tensor (float64, float32, float16 or bfloat16), got {t.dtype}",
    )


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_encoder_arguments(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    _check_kernel_dtype(x, "x")
    torch._check_value(x.dim() == 2, lambda: f"pyae: x must be 2-D (batch, features), got shape {tuple(x.shape)}")
    torch._check_value(x.shape[0] > 0, lambda: "pyae: x must hold at least one row")
    torch._check_value(weight.dim() == 2, lambda: f"pyae: weight must be 2-D, got shape {tuple(weight.shape)}")
    torch._check_type(weight.dtype == x.dtype, lambda: f"pyae: weight has dtype {weight.dtype} but x has {x.dtype}")
    torch._check_value(
        weight.shape[1] == x.shape[1],
        lambda: f"pyae: x has {x.shape[1]} features but weight expects {weight.shape[1]}",
    )
    if bias is not None:
        torch._check_type(bias.dtype == x.dtype, lambda: f"pyae: bias has dtype {bias.dtype} but x has {x.dtype}")
        torch._check_value(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: f"pyae: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}",
        )


def _check_squared_row_norms(squared_row_norms: Tensor, weight: Tensor) -> None:
    accumulation = _accumulation_dtype(weight.dtype)
    torch._check_type(
        squared_row_norms.dtype == accumulation,
        lambda: f"pyae: squared_row_norms must have dtype {accumulation}, got {squared_row_norms.dtype}",
    )
    torch._check_value(
        squared_row_norms.dim() == 1 and squared_row_norms.shape[0] == weight.shape[0],
        lambda: f"pyae: squared_row_norms must have shape ({weight.shape[0]},), got {tuple(squared_row_norms.shape)}",
    )


@torch.library.register_fake("pyae::sigmoid_encoder")
def _sigmoid_encoder_fake(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                          squared_row_norms: Optional[Tensor] = None):
    _check_encoder_arguments(x, weight, bias)
    if squared_row_norms is not None:
        _check_squared_row_norms(squared_row_norms, weight)
    batch, hidden_units = x.shape[0], weight.shape[0]
    return (x.new_empty(batch, hidden_units), x.new_empty(hidden_units), x.new_empty(()),
            x.new_empty(0 if squared_row_norms is not None else hidden_units, dtype=_accumulation_dtype(x.dtype)))


@torch.library.register_fake("pyae::sigmoid_encoder_backward")
def _sigmoid_encoder_backward_fake(grad_hidden, grad_mean_activation, grad_contractive, x, weight, hidden,
                                   squared_row_norms, squared_row_norms_is_input, output_mask):
    _check_encoder_arguments(x, weight, None)
    want_x, want_weight, want_bias, want_norms = output_mask
    want_norms = want_norms and squared_row_norms_is_input
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format) if want_x else x.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if want_weight else x.new_empty(0),
        weight.new_empty(weight.shape[0]) if want_bias else x.new_empty(0),
        torch.empty_like(squared_row_norms, memory_format=torch.contiguous_format) if want_norms else x.new_empty(0),
    )


@torch.library.register_fake("pyae::sigmoid_encoder_preactivation_backward")
def _sigmoid_encoder_preactivation_backward_fake(grad_hidden, grad_mean_activation, grad_contractive, hidden,
                                                 squared_row_norms):
    _check_kernel_dtype(hidden, "hidden")
    torch._check_value(hidden.dim() == 2, lambda: f"pyae: hidden must be 2-D, got shape {tuple(hidden.shape)}")
    torch._check_value(grad_contractive is None or squared_row_norms is not None,
                       lambda: "pyae: sigmoid_encoder_preactivation_backward needs squared_row_norms when "
                               "grad_contractive is given")
    if squared_row_norms is not None:
        _check_squared_row_norms(squared_row_norms, hidden.t())
    return (torch.empty_like(hidden, memory_format=torch.contiguous_format), hidden.new_empty(hidden.shape[1]),
            torch.empty_like(squared_row_norms, memory_format=torch.contiguous_format)
            if squared_row_norms is not None else hidden.new_empty(0))


def _check_same_dtype(t: Tensor, name: str, x: Tensor) -> None:
    torch._check_type(t.dtype == x.dtype, lambda: f"pyae: {name} has dtype {t.dtype} but x has dtype {x.dtype}")


def _check_autoencoder_loss_arguments(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                                      noise_level, seed, contractive_weight, sparsity_target, sparsity_weight,
                                      weight_decay_term, weight_decay) -> None:
    """csrc/checks.h's check_autoencoder_loss_inputs (outside autocast)."""
    _check_kernel_dtype(x, "x")
    torch._check_value(x.dim() == 2, lambda: f"pyae: x must be 2-D (batch, features), got shape {tuple(x.shape)}")
    torch._check_value(x.shape[0] > 0, lambda: "pyae: x must hold at least one row")
    _check_same_dtype(target, "target", x)
    torch._check_value(target.shape == x.shape,
                       lambda: f"pyae: target must have x's shape {tuple(x.shape)}, got {tuple(target.shape)}")
    n = x.shape[1]
    _check_same_dtype(encoder_weight, "encoder_weight", x)
    torch._check_value(encoder_weight.dim() == 2 and encoder_weight.shape[1] == n,
                       lambda: f"pyae: encoder_weight must be (hidden, {n}), got {tuple(encoder_weight.shape)}")
    k = encoder_weight.shape[0]
    _check_same_dtype(decoder_weight, "decoder_weight", x)
    torch._check_value(decoder_weight.dim() == 2 and tuple(decoder_weight.shape) == (n, k),
                       lambda: f"pyae: decoder_weight must be ({n}, {k}), got {tuple(decoder_weight.shape)}")
    for bias, name, size in ((encoder_bias, "encoder_bias", k), (decoder_bias, "decoder_bias", n)):
        if bias is not None:
            _check_same_dtype(bias, name, x)
            torch._check_value(bias.dim() == 1 and bias.shape[0] == size,
                               lambda: f"pyae: {name} must have shape ({size},), got {tuple(bias.shape)}")
    if seed is not None:
        torch._check_value(0.0 <= noise_level <= 1.0, lambda: f"pyae: noise_level must lie in [0, 1], got {noise_level}")
    for weight, name in ((contractive_weight, "contractive_weight"), (sparsity_weight, "sparsity_weight"),
                         (weight_decay, "weight_decay")):
        torch._check_value(0.0 <= weight < float("inf"), lambda: f"pyae: {name} must be finite and >= 0, got {weight}")
    if sparsity_target is not None:
        torch._check_value(0.0 < sparsity_target < 1.0,
                           lambda: f"pyae: sparsity_target must lie in (0, 1), got {sparsity_target}")
    if weight_decay_term is not None:
        _check_same_dtype(weight_decay_term, "weight_decay_term", x)
        torch._check_value(weight_decay_term.dim() == 0,
                           lambda: f"pyae: weight_decay_term must be a 0-dim tensor, got {tuple(weight_decay_term.shape)}")


@torch.library.register_fake("pyae::autoencoder_loss")
def _autoencoder_loss_fake(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias, squared_row_norms,
                           noise_level, seed, cross_entropy, contractive_weight, sparsity_target, sparsity_weight,
                           weight_decay_term, weight_decay):
    _check_autoencoder_loss_arguments(x, target, encoder_weight, encoder_bias, decoder_weight, decoder_bias,
                                      noise_level, seed, contractive_weight, sparsity_target, sparsity_weight,
                                      weight_decay_term, weight_decay)
    if seed is not None:
        _mask_noise_fake(x, noise_level, seed)
    hidden, mean_activation, contractive, norms = _sigmoid_encoder_fake(x, encoder_weight, encoder_bias,
                                                                        squared_row_norms)
    reconstruction = torch.empty_like(x, memory_format=torch.contiguous_format)
    sparsity_term = x.new_empty(() if sparsity_target is not None else (0,))
    return (x.new_empty(()), reconstruction, hidden, mean_activation, x.new_empty(()), sparsity_term, contractive, norms)


@torch.library.register_fake("pyae::squared_row_norms")
def _squared_row_norms_fake(weight: Tensor):
    _check_kernel_dtype(weight, "weight")
    torch._check_value(weight.dim() == 2, lambda: f"pyae: weight must be 2-D, got shape {tuple(weight.shape)}")
    return weight.new_empty(weight.shape[0], dtype=_accumulation_dtype(weight.dtype))


@torch.library.register_fake("pyae::sgd_update_")
def _sgd_update_fake(params, grads, momentum_buffers, squared_row_norm_grads, weight_decays, squared_row_norms,
                     lr, momentum, dampening, nesterov, first_step):
    torch._check_value(len(grads) == len(params) or (not grads and momentum != 0.0 and not nesterov),
                       lambda: "pyae: grads must hold one entry per parameter (or none, with momentum > 0 and "
                               "nesterov=False: the gradient already in the momentum buffers)")


@torch.library.register_fake("pyae::adam_update_")
def _adam_update_fake(params, grads, exp_avgs, exp_avg_sqs, steps, squared_row_norm_grads, weight_decays,
                      squared_row_norms, lr, beta1, beta2, eps):
    torch._check_value(len(grads) == len(params), lambda: "pyae: grads must hold one entry per parameter")


def _check_reconstruction_arguments(logits: Tensor, target: Tensor) -> None:
    _check_kernel_dtype(logits, "logits")
    torch._check_value(logits.dim() == 2, lambda: f"pyae: logits must be 2-D, got shape {tuple(logits.shape)}")
    torch._check_value(logits.shape[0] > 0, lambda: "pyae: logits must hold at least one row")
    torch._check_type(target.dtype == logits.dtype,
                      lambda: f"pyae: target has dtype {target.dtype} but logits has {logits.dtype}")
    torch._check_value(target.shape == logits.shape,
                       lambda: f"pyae: target must have logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}")


@torch.library.register_fake("pyae::sigmoid_reconstruction_loss")
def _sigmoid_reconstruction_loss_fake(logits: Tensor, target: Tensor, cross_entropy: bool):
    _check_reconstruction_arguments(logits, target)
    return torch.empty_like(logits, memory_format=torch.contiguous_format), logits.new_empty(())


@torch.library.register_fake("pyae::sigmoid_reconstruction_loss_backward")
def _sigmoid_reconstruction_loss_backward_fake(grad_reconstruction, grad_loss, reconstruction, target, cross_entropy):
    _check_reconstruction_arguments(reconstruction, target)
    return torch.empty_like(reconstruction, memory_format=torch.contiguous_format)


def _check_kl_arguments(mean_activation: Tensor, target: float) -> None:
    _check_kernel_dtype(mean_activation, "mean_activation")
    torch._check_value(0.0 < target < 1.0, lambda: f"pyae: target must lie in (0, 1), got {target}")


@torch.library.register_fake("pyae::kl_sparsity")
def _kl_sparsity_fake(mean_activation: Tensor, target: float):
    _check_kl_arguments(mean_activation, target)
    return mean_activation.new_empty(())


@torch.library.register_fake("pyae::kl_sparsity_backward")
def _kl_sparsity_backward_fake(grad: Tensor, mean_activation: Tensor, target: float):
    _check_kl_arguments(mean_activation, target)
    return torch.empty_like(mean_activation, memory_format=torch.contiguous_format)


def _check_weight_decay_arguments(weights) -> None:
    torch._check_value(len(weights) > 0, lambda: "pyae: weight_decay needs at least one weight tensor")
    for index, weight in enumerate(weights):
        _check_kernel_dtype(weight, f"weights[{index}]")
        torch._check_type(
            weight.dtype == weights[0].dtype,
            lambda: f"pyae: weights[{index}] has dtype {weight.dtype} but weights[0] has {weights[0].dtype}",
        )


@torch.library.register_fake("pyae::weight_decay")
def _weight_decay_fake(weights):
    _check_weight_decay_arguments(weights)
    return weights[0].new_empty(())


@torch.library.register_fake("pyae::weight_decay_backward")
def _weight_decay_backward_fake(grad, weights):
    _check_weight_decay_arguments(weights)
    return [torch.empty_like(weight, memory_format=torch.contiguous_format) for weight in weights]


@torch.library.register_fake("pyae::mask_noise")
def _mask_noise_fake(x: Tensor, q: float, seed: Tensor):
    _check_kernel_dtype(x, "x")
    torch._check_value(0.0 <= q <= 1.0, lambda: f"pyae: q must lie in [0, 1], got {q}")
    torch._check_type(seed.dtype == torch.int64, lambda: f"pyae: seed must be an int64 tensor, got {seed.dtype}")
    torch._check_value(seed.numel() == 1, lambda: f"pyae: seed must hold one value, got shape {tuple(seed.shape)}")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("pyae::masked_sigmoid_encoder")
def _masked_sigmoid_encoder_fake(x: Tensor, weight: Tensor, bias: Optional[Tensor], q: float, seed: Tensor,
                                 squared_row_norms: Optional[Tensor] = None):
    _mask_noise_fake(x, q, seed)
    return _sigmoid_encoder_fake(x, weight, bias, squared_row_norms)
