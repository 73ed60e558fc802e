"""Autoencoder modules: one general class and its named, regularized variants.

Every variant is the same :class:`Autoencoder` with different defaults: a one-hidden-layer
sigmoid autoencoder whose encoder runs through pyae's fused operator, so the sparsity and
contractive statistics come out of the encoder pass itself at almost no extra cost.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyae import functional as PF
from pyae import ops as _ops
from pyae.distributed import global_mean_activation
from pyae.validation import autoencoder_options, check_floating_tensor, check_int

__all__ = [
    "AutoencoderOutput",
    "Autoencoder",
    "DenoisingAutoencoder",
    "SparseAutoencoder",
    "ContractiveAutoencoder",
]


class AutoencoderOutput(NamedTuple):
    """What :meth:`Autoencoder.forward` returns.

    Attributes:
        loss: the weighted total, a scalar: reconstruction + weight_decay * ``weight_decay``
            term + sparsity_weight * ``sparsity`` term + contractive_weight * ``contractive`` term.
        reconstruction: the decoder's output ``xhat``, ``(B, n)``.
        hidden: the hidden representation of the (possibly corrupted) input, ``(B, k)``.
        terms: the unweighted components by name: ``reconstruction`` always, and
            ``weight_decay``, ``sparsity``, ``contractive`` when enabled.
    """

    loss: Tensor
    reconstruction: Tensor
    hidden: Tensor
    terms: Dict[str, Tensor]


class Autoencoder(nn.Module):
    """A one-hidden-layer autoencoder with the classic regularizers.

    ``h = sigmoid(W x + b)``, ``xhat = g(W' h + c)`` with ``g`` the sigmoid or the identity
    and ``W' = W^T`` when the weights are tied. The training loss is

        reconstruction + weight_decay * (1/2) ||W||^2  (every weight matrix, never biases)
                       + sparsity_weight * sum_l KL(sparsity_target || rho_hat_l)
                       + contractive_weight * mean_i ||dh_i/dx_i||_F^2

    Args:
        n_inputs: ``n``, the number of input features.
        n_hidden: ``k``, the number of hidden units.
        tied_weights: decode with the transpose of the encoder's weight (one shared parameter).
        decoder_activation: ``"sigmoid"`` (outputs in (0, 1)) or ``"linear"``.
        loss: ``"mse"`` (squared error summed over features) or ``"cross_entropy"``
            (needs the sigmoid decoder and inputs in [0, 1]; computed from logits).
        weight_decay: ``lambda >= 0``; adds exactly ``lambda * W`` to each weight's gradient.
        noise: ``None``, ``"mask"`` (zero each input with probability ``noise_level``) or
            ``"gaussian"`` (add ``noise_level * N(0, 1)``): the denoising autoencoder's
            corruption, applied in training mode only; the loss compares with the clean input.
        noise_level: ``q`` in [0, 1] for masking, the standard deviation (>= 0) for Gaussian.
        sparsity_target: ``rho`` in (0, 1): enables the KL sparsity term (reported in
            ``terms`` even with ``sparsity_weight == 0``).
        sparsity_weight: ``beta >= 0``, the weight of the KL term; > 0 needs a target.
        contractive_weight: ``lambda_c >= 0``, the weight of the contractive penalty.
        device, dtype: where and in which floating dtype to create the parameters.

    Example::

        model = pyae.ContractiveAutoencoder(784, 500, contractive_weight=0.1)
        out = model(x)            # x: (B, 784) in [0, 1]
        out.loss.backward()
        out.terms["contractive"]  # the unweighted penalty
    """

    def __init__(
        self,
        n_inputs: int,
        n_hidden: int,
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
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        n_inputs = check_int(n_inputs, "n_inputs", 1)
        n_hidden = check_int(n_hidden, "n_hidden", 1)
        options = autoencoder_options(
            tied_weights=tied_weights, decoder_activation=decoder_activation, loss=loss, weight_decay=weight_decay,
            noise=noise, noise_level=noise_level, sparsity_target=sparsity_target, sparsity_weight=sparsity_weight,
            contractive_weight=contractive_weight,
        )
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")

        self.n_inputs, self.n_hidden = n_inputs, n_hidden
        self.tied_weights: bool = options["tied_weights"]
        self.decoder_activation: str = options["decoder_activation"]
        self.loss: str = options["loss"]
        self.weight_decay: float = options["weight_decay"]
        self.noise: Optional[str] = options["noise"]
        self.noise_level: float = options["noise_level"]
        self.sparsity_target: Optional[float] = options["sparsity_target"]
        self.sparsity_weight: float = options["sparsity_weight"]
        self.contractive_weight: float = options["contractive_weight"]

        # Under torch.distributed, the process group whose ranks share one global batch: the
        # sparsity statistic is then the mean activation over the global batch. None: this
        # process's batch is the whole batch. Set by pyae.distributed.convert_sync_sparsity.
        self.statistics_group = None

        # Whether the optimizer adds the weight decay's gradient, lambda * W (torch's
        # ``weight_decay`` on the weight matrices: :meth:`parameter_groups`). The loss then holds
        # the term's value without a gradient, which saves the term's passes over the weights in
        # the backward (at small batches a step is bound by such passes).
        self.optimizer_applies_weight_decay: bool = False
        # The squared row norms of the weight matrices as kept by a pyae.optim optimizer built
        # with autoencoder=self (pyae.optim.TrackedNorms), or None: the forward then gives the
        # encoder its c instead of computing it, and takes weight decay's value from them.
        self._tracked_norms = None

        factory = {"device": device, "dtype": dtype}
        self.encoder = nn.Linear(n_inputs, n_hidden, **factory)
        if tied_weights:
            self.decoder = None
            self.decoder_bias = nn.Parameter(torch.zeros(n_inputs, **factory))
        else:
            self.decoder = nn.Linear(n_hidden, n_inputs, **factory)
            self.decoder_bias = None

    def __getstate__(self) -> Dict[str, Any]:
        # A copy (deepcopy, pickle) is not stepped by the original's optimizer: it computes its
        # own squared row norms and keeps its whole gradients.
        state = dict(super().__getstate__())
        state["_tracked_norms"] = None
        return state

    # ----------------------------------------------------------------------------------
    @property
    def decoder_weight(self) -> Tensor:
        """The decoder's weight, ``(n, k)``: ``encoder.weight.T`` when the weights are tied."""
        return self.encoder.weight.t() if self.tied_weights else self.decoder.weight

    def weight_matrices(self):
        """The parameters that weight decay applies to (the weight matrices, never biases)."""
        return (self.encoder.weight,) if self.tied_weights else (self.encoder.weight, self.decoder.weight)

    def parameter_groups(self) -> List[Dict[str, Any]]:
        """The parameters as optimizer groups for weight decay applied by the optimizer.

        The weight matrices (:meth:`weight_matrices`) with ``weight_decay=self.weight_decay``,
        the biases with ``0``. torch's SGD and Adam (not AdamW) add ``weight_decay * W`` to a
        parameter's gradient before their update: the gradient of the loss's term
        ``weight_decay * (1/2) ||W||^2``, added in the same pass as the update (one pass over
        each weight matrix fewer than the term's own backward, and no new gradient tensor). Set
        :attr:`optimizer_applies_weight_decay` with it, or the gradient is added twice::

            model.optimizer_applies_weight_decay = True
            optimizer = torch.optim.SGD(model.parameter_groups(), lr=0.01, momentum=0.9)

        The loss and its ``terms`` keep the same values; ``loss.backward()`` then leaves the
        term's share out of the weights' ``.grad``. :func:`pyae.training.train` does this.
        """
        matrices = {id(p) for p in self.weight_matrices()}
        return [
            {"params": list(self.weight_matrices()), "weight_decay": self.weight_decay},
            {"params": [p for p in self.parameters() if id(p) not in matrices], "weight_decay": 0.0},
        ]

    def extra_repr(self) -> str:
        parts = [f"n_inputs={self.n_inputs}", f"n_hidden={self.n_hidden}",
                 f"decoder_activation={self.decoder_activation!r}", f"loss={self.loss!r}"]
        if self.tied_weights:
            parts.append("tied_weights=True")
        if self.weight_decay:
            parts.append(f"weight_decay={self.weight_decay}")
        if self.noise:
            parts.append(f"noise={self.noise!r}, noise_level={self.noise_level}")
        if self.sparsity_target is not None:
            parts.append(f"sparsity_target={self.sparsity_target}, sparsity_weight={self.sparsity_weight}")
        if self.contractive_weight:
            parts.append(f"contractive_weight={self.contractive_weight}")
        return ", ".join(parts)

    def _check_input(self, x, name: str = "x") -> None:
        check_floating_tensor(x, name)
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(
                f"{name} must have shape (batch, {self.n_inputs}) for this model's {self.n_inputs} inputs, "
                f"got {tuple(x.shape)}"
            )

    # ----------------------------------------------------------------------------------
    def corrupt(self, x: Tensor, *, generator: Optional[torch.Generator] = None) -> Tensor:
        """The denoising corruption of ``x`` (a copy of ``x`` where there is none)."""
        if self.noise == "mask":
            return PF.mask_noise(x, self.noise_level, generator=generator)
        if self.noise == "gaussian":
            return PF.gaussian_noise(x, self.noise_level, generator=generator)
        return x

    def encode(self, x: Tensor) -> Tensor:
        """The hidden representation ``sigmoid(W x + b)`` of ``x``, never corrupted."""
        self._check_input(x)
        return PF.sigmoid_encoder(x, self.encoder.weight, self.encoder.bias).hidden

    def decode(self, hidden: Tensor) -> Tensor:
        """The reconstruction ``g(W' h + c)`` from a hidden representation ``(B, k)``."""
        return self._activate_decoder(self._decoder_logits(hidden))

    def _decoder_logits(self, hidden: Tensor) -> Tensor:
        bias = self.decoder_bias if self.tied_weights else self.decoder.bias
        return F.linear(hidden, self.decoder_weight, bias)

    def _activate_decoder(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits) if self.decoder_activation == "sigmoid" else logits

    @torch.no_grad()
    def filters(self) -> Tensor:
        """``W_l / ||W_l||`` for every hidden unit, ``(k, n)``: the unit-norm input that
        maximally activates each unit (a zero row stays zero)."""
        weight = self.encoder.weight.detach()
        return weight / weight.norm(dim=1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)

    def forward(self, x: Tensor, *, generator: Optional[torch.Generator] = None) -> AutoencoderOutput:
        """Encode (the corrupted input in training mode), decode, and form the loss.

        Args:
            x: the clean input, ``(B, n_inputs)``.
            generator: an optional ``torch.Generator`` for the corruption noise.
        """
        self._check_input(x)
        if not self._takes_whole_objective(x):
            tracked = self._tracked_norms.current(self.weight_matrices()) if self._tracked_norms is not None else None
            return self._forward_by_parts(x, tracked, generator)
        return self._whole_objective(x, generator).output

    def _takes_whole_objective(self, x: Tensor) -> bool:
        """Whether the forward is the one operator (pyae.ops.autoencoder_loss); otherwise
        :meth:`_forward_by_parts`."""
        return self.decoder_activation == "sigmoid" and self.statistics_group is None and not x.requires_grad

    def _whole_objective(self, x: Tensor, generator: Optional[torch.Generator]) -> "WholeObjective":
        """The whole objective as one operator and one autograd node (pyae.ops.autoencoder_loss):
        the same numbers as the parts (:meth:`_forward_by_parts`), for the host work of one
        operator; with what pyae.optim's fused training step needs for its own backward."""
        # (At small batches a step is bound by host work: the module's attributes are read once.)
        encoder = self.encoder
        encoder_weight = encoder.weight
        if self.tied_weights:
            decoder_weight, decoder_bias = encoder_weight.t(), self.decoder_bias
            matrices = (encoder_weight,)
        else:
            decoder = self.decoder
            decoder_weight, decoder_bias = decoder.weight, decoder.bias
            matrices = (encoder_weight, decoder_weight)
        # With a pyae.optim optimizer, the encoder reads its c from the optimizer's norms (no
        # pass over the weight) and leaves the chain rule through c to the update (pyae.optim).
        tracked = self._tracked_norms.current(matrices) if self._tracked_norms is not None else None
        encoder_input, seed = PF._fused_corruption(x, self.noise if self.training else None, self.noise_level,
                                                   generator)
        weight_decay_term = self._weight_decay_term(tracked) if self.weight_decay > 0.0 else None
        parts = _ops.autoencoder_loss(
            encoder_input, x, encoder_weight, encoder.bias, decoder_weight, decoder_bias,
            squared_row_norms=tracked[0] if tracked is not None else None, noise_level=self.noise_level, seed=seed,
            loss=self.loss, contractive_weight=self.contractive_weight, sparsity_target=self.sparsity_target,
            sparsity_weight=self.sparsity_weight, weight_decay_term=weight_decay_term, weight_decay=self.weight_decay)
        terms = {"reconstruction": parts.reconstruction_term}
        if weight_decay_term is not None:
            terms["weight_decay"] = weight_decay_term
        if self.sparsity_target is not None:
            terms["sparsity"] = parts.sparsity_term
        if self.contractive_weight > 0.0:
            terms["contractive"] = parts.contractive_term
        output = AutoencoderOutput(parts.loss, parts.reconstruction, parts.hidden, terms)
        return WholeObjective(output, parts, encoder_input, seed, decoder_weight, tracked)

    def _weight_decay_term(self, tracked) -> Tensor:
        """``(1/2) sum ||W||^2`` over the weight matrices, without a gradient where the optimizer
        applies the term's."""
        if tracked is not None and self.optimizer_applies_weight_decay:
            # (1/2) sum ||W||^2 = (1/2) sum_l c_l: no pass over the weights.
            return _half_total(tracked, self.encoder.weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.optimizer_applies_weight_decay):
            return PF.weight_decay(self.weight_matrices())

    def _forward_by_parts(self, x: Tensor, tracked, generator: Optional[torch.Generator]) -> AutoencoderOutput:
        """The forward operator by operator: for the linear decoder, a model converted by
        :func:`pyae.distributed.convert_sync_sparsity` (the mean activation is reduced across
        processes before the KL term), and an input that requires grad (the fused losses treat
        it as data)."""
        encoder_norms = tracked[0] if tracked is not None else None
        if self.training and self.noise == "mask":
            # The masked encoder recomputes the mask in the backward instead of keeping the
            # corrupted input: the same numbers as encoding self.corrupt(x), less memory.
            encoded = PF.masked_sigmoid_encoder(x, self.encoder.weight, self.encoder.bias, self.noise_level,
                                                generator=generator, squared_row_norms=encoder_norms)
        else:
            corrupted = self.corrupt(x, generator=generator) if self.training and self.noise else x
            encoded = PF.sigmoid_encoder(corrupted, self.encoder.weight, self.encoder.bias, encoder_norms)
        logits = self._decoder_logits(encoded.hidden)
        if self.decoder_activation == "sigmoid":
            reconstruction, reconstruction_term = PF.sigmoid_reconstruction_loss(logits, x, self.loss)
        else:
            reconstruction, reconstruction_term = logits, PF.reconstruction_loss(logits, x, self.loss)

        # torch.add(loss, term, alpha=w): one op and one backward node per term, where
        # loss + w * term takes two of each (at MNIST sizes a step is bound by such overhead).
        terms = {"reconstruction": reconstruction_term}
        loss = reconstruction_term
        if self.weight_decay > 0.0:
            terms["weight_decay"] = self._weight_decay_term(tracked)
            loss = torch.add(loss, terms["weight_decay"], alpha=self.weight_decay)
        if self.sparsity_target is not None:
            mean_activation = global_mean_activation(encoded.mean_activation, x.shape[0], self.statistics_group)
            terms["sparsity"] = PF.kl_sparsity(mean_activation, self.sparsity_target)
            loss = torch.add(loss, terms["sparsity"], alpha=self.sparsity_weight)
        if self.contractive_weight > 0.0:
            terms["contractive"] = encoded.contractive
            loss = torch.add(loss, terms["contractive"], alpha=self.contractive_weight)
        return AutoencoderOutput(loss, reconstruction, encoded.hidden, terms)


class WholeObjective(NamedTuple):
    """What :meth:`Autoencoder._whole_objective` computed, for a backward written out by hand
    (pyae.optim's fused training step): the model's output, the operator's outputs, the
    encoder's input (x, or x with Gaussian noise) and the masking seed (or None), the decoder
    weight it used (``encoder.weight.T`` when tied) and the optimizer's norms (or None)."""

    output: AutoencoderOutput
    parts: Any
    encoder_input: Tensor
    seed: Optional[Tensor]
    decoder_weight: Tensor
    norms: Optional[Any]


def _half_total(norms, dtype: torch.dtype) -> Tensor:
    """``(1/2) sum`` of every entry of the squared-row-norm vectors ``norms``, in ``dtype``,
    without a gradient (the optimizer applies weight decay's)."""
    # Detached sums rather than a no_grad block and a concatenation: fewer host operations
    # (at small batches a step is bound by them).
    total = norms[0].detach().sum()
    for more in norms[1:]:
        total.add_(more.detach().sum())
    total.mul_(0.5)
    return total if total.dtype == dtype else total.to(dtype)


class DenoisingAutoencoder(Autoencoder):
    """An :class:`Autoencoder` trained to undo a corruption: by default masking noise with
    ``q = 0.25`` (``noise="gaussian", noise_level=1.0`` is the lecture's other choice)."""

    def __init__(self, n_inputs: int, n_hidden: int, *, noise: Optional[str] = "mask", noise_level: float = 0.25,
                 **kwargs) -> None:
        super().__init__(n_inputs, n_hidden, noise=noise, noise_level=noise_level, **kwargs)


class SparseAutoencoder(Autoencoder):
    """An :class:`Autoencoder` with the KL sparsity penalty on the mean activations; by
    default ``sparsity_target = 0.05``, ``sparsity_weight = 0.1``."""

    def __init__(self, n_inputs: int, n_hidden: int, *, sparsity_target: Optional[float] = 0.05,
                 sparsity_weight: float = 0.1, **kwargs) -> None:
        super().__init__(n_inputs, n_hidden, sparsity_target=sparsity_target, sparsity_weight=sparsity_weight,
                         **kwargs)


class ContractiveAutoencoder(Autoencoder):
    """An :class:`Autoencoder` with the contractive penalty, the batch mean of the squared
    Frobenius norm of the encoder's Jacobian; by default ``contractive_weight = 0.1``."""

    def __init__(self, n_inputs: int, n_hidden: int, *, contractive_weight: float = 0.1, **kwargs) -> None:
        super().__init__(n_inputs, n_hidden, contractive_weight=contractive_weight, **kwargs)
