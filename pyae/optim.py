"""Fused optimizers: torch's SGD and Adam in one pass per parameter, and for a pyae
autoencoder, its regularizers' weight-side terms applied inside that pass.

:class:`SGD` and :class:`Adam` take the same arguments as ``torch.optim.SGD`` and
``torch.optim.Adam`` (without ``maximize``, ``amsgrad`` and the implementation switches), do
the same arithmetic and keep the same state (``momentum_buffer``; ``step``, ``exp_avg``,
``exp_avg_sq``), so a checkpoint of either loads into the other. Each step is one call of a
fused operator (``torch.ops.pyae.sgd_update_`` / ``adam_update_``) per parameter group.

Given the autoencoder they train (``autoencoder=model``), they also take over what its
penalties would otherwise add to the weights' gradients in passes of their own, and do it in
the pass over each weight that the update makes anyway:

- the contractive penalty ``(1/B) sum_i sum_l d_il^2 c_l`` depends on the encoder weight
  directly through its squared row norms ``c_l = ||W_l||^2``. The optimizer keeps ``c`` as a
  tensor of its own, computes it for the next step while it writes ``W``, and gives it to the
  encoder, which then needs no pass over ``W`` for it; the encoder leaves the penalty's
  share of the gradient on ``c`` (``d loss / d c``), and the update adds ``2 (d loss / d c_l) W_l``
  to row ``l`` of the gradient (the chain rule) while it reads ``W``;
- weight decay's ``lambda * W`` is added in the same pass, and its value in the loss comes
  from the same norms.

The arithmetic is the same as the unfused step's; only where the terms are added changes.
The weights' ``.grad`` then hold the gradient with ``c`` held fixed (and without weight
decay), and the optimizer adds the rest: let this optimizer, not another, step the model, and
clip gradients knowing that. ``c`` sits in a parameter group of its own (marked
``"squared_row_norms": True``), so that ``zero_grad`` clears its gradient and a
``torch.amp.GradScaler`` unscales it and checks it for overflow with the others; the update
itself never changes it otherwise. If the weights change outside the optimizer (a loaded
state dict, ``copy_``), the model notices by the weights' version counters and takes
``c`` afresh.

Example::

    model = pyae.ContractiveAutoencoder(784, 1000, contractive_weight=0.1)
    optimizer = pyae.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, autoencoder=model)
    for x in batches:
        optimizer.zero_grad()
        model(x).loss.backward()
        optimizer.step()

The whole step can go further (:meth:`SGD.autoencoder_step`): SGD with momentum needs the
weight matrices' gradients only inside ``momentum * buf + (1 - dampening) * grad``, and each
is a matrix product (``delta.T @ x`` for the encoder, ``grad_logits.T @ h`` for the decoder),
so the backward keeps the products and the update adds them straight into the momentum
buffers (``addmm`` with ``beta = momentum``), never making the weight-sized gradients: two
weight-sized tensors fewer to write, read and allocate in every step. ``optimizer.autoencoder_step(x)`` replaces
the three lines of the loop above; the weight matrices are then left without a ``.grad``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn.modules import module as _module_globals
from torch.optim import optimizer as _optimizer_globals

from pyae import ops as _ops
from pyae.modules import Autoencoder, AutoencoderOutput
from pyae.validation import check_number

__all__ = ["SGD", "Adam"]

# The key that marks the parameter group of the squared row norms.
NORMS_GROUP = "squared_row_norms"


class TrackedNorms:
    """The squared row norms of an autoencoder's weight matrices, kept by its optimizer.

    ``norms[i]`` belongs to ``weights[i]`` (the autoencoder's :meth:`~pyae.Autoencoder.weight_matrices`,
    the encoder's first) and is current while ``weights[i]._version`` is ``versions[i]``. The
    encoder's norms require grad when the model has the contractive penalty.
    """

    __slots__ = ("weights", "norms", "versions")

    def __init__(self, weights: Sequence[Tensor], encoder_requires_grad: bool) -> None:
        self.weights = tuple(weights)
        with torch.no_grad():
            self.norms = tuple(_ops.squared_row_norms(w.detach()) for w in self.weights)
        self.norms[0].requires_grad_(encoder_requires_grad)
        self.versions = [w._version for w in self.weights]

    def record(self) -> None:
        """The weights as they are now are what the norms describe (after an update)."""
        self.versions = [w._version for w in self.weights]

    def current(self, weights: Sequence[Tensor]) -> Optional[Tuple[Tensor, ...]]:
        """The norms, brought up to date where a weight changed outside the optimizer; None
        when ``weights`` (the model's :meth:`~pyae.Autoencoder.weight_matrices` now) are no
        longer the tracked tensors (replaced parameters)."""
        tracked = self.weights
        if len(weights) != len(tracked) or any(w is not t for w, t in zip(weights, tracked)):
            return None
        versions = self.versions
        for i, weight in enumerate(weights):
            if weight._version != versions[i]:
                norms = self.norms[i]
                if norms.device != weight.device or norms.dtype != _ops._accumulation_dtype(weight.dtype):
                    raise RuntimeError(
                        "the autoencoder's weights moved to another device or dtype after its pyae.optim optimizer "
                        "was built; build the optimizer after moving the model"
                    )
                with torch.no_grad():
                    norms.copy_(_ops.squared_row_norms(weight.detach()))
                self.versions[i] = weight._version
        return self.norms


class _FusedOptimizer(torch.optim.Optimizer):
    """What SGD and Adam share: the autoencoder's terms, the norms' group, the step's lists."""

    def __init__(self, params: Iterable, defaults: Dict[str, Any], autoencoder: Optional[Autoencoder]) -> None:
        super().__init__(params, defaults)
        # Extra weight decay per parameter (the autoencoder's lambda on its weight matrices),
        # and the squared-row-norm tensor each updated parameter writes (by parameter id).
        self._extra_decay: Dict[int, float] = {}
        self._norms_of: Dict[int, Tensor] = {}
        self._encoder_norms: Optional[Tensor] = None
        self._encoder_weight_id: Optional[int] = None
        self._tracked: Optional[TrackedNorms] = None
        # Between a fused step's backward and its update (autoencoder_step): each weight
        # matrix's gradient as the matrix products (left, right) whose sum it is, by parameter
        # id. step() accumulates them into the momentum buffers (or forms the gradient).
        self._pending_products: Dict[int, List[Tuple[Tensor, Tensor]]] = {}
        self.autoencoder = autoencoder
        if autoencoder is not None:
            self._attach(autoencoder)

    def _attach(self, model: Autoencoder) -> None:
        if not isinstance(model, Autoencoder):
            raise TypeError(f"autoencoder must be a pyae.Autoencoder, got {type(model).__name__}")
        groups_of = {id(p): group for group in self.param_groups for p in group["params"]}
        missing = [name for name, p in model.named_parameters() if id(p) not in groups_of]
        if missing:
            raise ValueError(f"autoencoder's parameters {missing} are not among the optimizer's params")
        for parameter in model.parameters():
            if not parameter.is_contiguous():
                raise ValueError("pyae.optim needs contiguous parameters")
        weights = model.weight_matrices()
        if model.weight_decay > 0.0:
            for weight in weights:
                if groups_of[id(weight)]["weight_decay"] != 0.0:
                    raise ValueError(
                        "the optimizer applies the autoencoder's own weight_decay to its weight matrices; give them "
                        "weight_decay=0 in the optimizer (e.g. pass model.parameters(), not model.parameter_groups())"
                    )
                self._extra_decay[id(weight)] = model.weight_decay
            model.optimizer_applies_weight_decay = True
        tracked = TrackedNorms(weights, encoder_requires_grad=model.contractive_weight > 0.0)
        for weight, norms in zip(tracked.weights, tracked.norms):
            self._norms_of[id(weight)] = norms
        self._encoder_weight_id = id(tracked.weights[0])
        if tracked.norms[0].requires_grad:
            self._encoder_norms = tracked.norms[0]
            self.add_param_group({"params": [tracked.norms[0]], NORMS_GROUP: True})
        self._tracked = tracked
        model._tracked_norms = tracked

    def detach_autoencoder(self) -> None:
        """Hand the autoencoder's terms back to it: its gradients are whole again (for another
        optimizer), its weight decay has a gradient again."""
        model = self.autoencoder
        if model is None:
            return
        if getattr(model, "_tracked_norms", None) is self._tracked:
            model._tracked_norms = None
        model.optimizer_applies_weight_decay = False
        self._extra_decay.clear()
        self._norms_of.clear()
        self._encoder_norms = None
        self._tracked = None
        self.autoencoder = None

    def _update_lists(self, group: Dict[str, Any]):
        """The group's parameters that have a gradient, with their gradients (None for a fused
        step's pending products, which the update accumulates into the momentum buffer), total
        weight decays, squared-row-norm gradients and norms targets."""
        params, grads, decays, row_grads, norms = [], [], [], [], []
        base_decay = group["weight_decay"]
        encoder_row_grad = None
        if self._encoder_norms is not None and self._encoder_norms.grad is not None:
            encoder_row_grad = self._encoder_norms.grad
        any_rows = False
        in_buffer = self._takes_gradient_in_buffer(group)
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                products = self._pending_products.get(id(p))
                if products is None:
                    continue
                if not in_buffer:  # the gradient itself, after all
                    grad = _sum_of_products(products)
            elif grad.is_sparse:
                raise RuntimeError("pyae.optim does not support sparse gradients")
            key = id(p)
            params.append(p)
            # None: a fused step's products, which the update accumulates into the momentum buffer.
            grads.append(grad if grad is None or grad.is_contiguous() else grad.contiguous())
            decays.append(base_decay + self._extra_decay.get(key, 0.0))
            target = self._norms_of.get(key)
            if target is not None:
                any_rows = True
                norms.append(target)
                row_grads.append(encoder_row_grad if key == self._encoder_weight_id else None)
            else:
                norms.append(_EMPTY.get(p))
                row_grads.append(None)
        if not any_rows:
            row_grads, norms = [], []
        return params, grads, decays, row_grads, norms

    def _groups_to_update(self):
        return (group for group in self.param_groups if not group.get(NORMS_GROUP, False))

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self._groups_to_update():
            params, grads, decays, row_grads, norms = self._update_lists(group)
            if params:
                self._update_group(group, params, grads, decays, row_grads, norms)
        if self._tracked is not None:
            self._tracked.record()
        return loss

    def _update_group(self, group: Dict[str, Any], params: List[Tensor], grads: List[Optional[Tensor]],
                      decays: List[float], row_grads: List[Optional[Tensor]], norms: List[Tensor]) -> None:
        """The fused update of one group's parameters that have a gradient (the lists of
        :meth:`_update_lists`)."""
        raise NotImplementedError

    def _takes_gradient_in_buffer(self, group: Dict[str, Any]) -> bool:
        """Whether the group's update can take a gradient accumulated into its state by
        ``addmm`` (the fused step) instead of the gradient itself."""
        return False

    def autoencoder_step(self, x: Tensor, *, generator: Optional[torch.Generator] = None) -> AutoencoderOutput:
        """One whole training step of the autoencoder this optimizer was given, on the batch
        ``x``: ``zero_grad(set_to_none=True)``, the forward, the backward and :meth:`step`.

        Where it can (:meth:`fused_step_refusal` is None), the backward leaves the weight
        matrices' gradients as matrix products, which :meth:`step` writes straight into their
        momentum buffers (see :mod:`pyae.optim`): the same update as the three calls up to
        rounding (the products are summed into the buffers by ``addmm`` instead of apart), with
        no weight-sized gradient tensors. The weight matrices then have no ``.grad`` after the
        step; the biases (and the squared row norms) have theirs, as usual. :meth:`step` is
        called as usual (a learning-rate scheduler counts it); a model or optimizer with hooks
        (module, gradient or step hooks) takes the three calls, as do the other cases
        :meth:`fused_step_refusal` names.

        Args:
            x: the clean batch, ``(B, n_inputs)``.
            generator: an optional ``torch.Generator`` for the corruption noise, as for the
                model's ``forward``.

        Returns:
            The model's output for the step (detached where the step was fused).
        """
        model = self.autoencoder
        if model is None:
            raise ValueError("autoencoder_step needs an optimizer built with autoencoder=model")
        model._check_input(x)
        self.zero_grad(set_to_none=True)
        if self.fused_step_refusal(x) is not None:
            output = model(x, generator=generator)
            output.loss.backward()
            self.step()
            return output
        try:
            with torch.no_grad():
                output = self._fused_backward(model, x, generator)
            self.step()
        finally:
            self._pending_products.clear()
        return output

    def fused_step_refusal(self, x: Tensor) -> Optional[str]:
        """Why :meth:`autoencoder_step` would not fuse the backward into the buffers for
        ``x``, or None when it would."""
        model = self.autoencoder
        if model is None:
            return "no autoencoder was given to the optimizer"
        if not isinstance(self, SGD):
            return f"{type(self).__name__} needs each gradient itself, not only its share in a buffer"
        if type(model).forward is not Autoencoder.forward:
            return f"{type(model).__name__} overrides forward, which the fused step would not call"
        if not model._takes_whole_objective(x):
            return "the model's forward takes the operators one by one (linear decoder, synchronized sparsity, or x requires grad)"
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return "grad mode is off (the three calls' backward would refuse)"
        if torch.is_autocast_enabled(x.device.type):
            return "autocast is on (its casts belong to the autograd path)"
        if _has_module_hooks(model):
            return "the model has forward or backward hooks, which the fused step would not call"
        if torch.is_anomaly_enabled():
            return "anomaly detection is on (it checks the autograd backward)"
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or _optimizer_globals._global_optimizer_pre_hooks or _optimizer_globals._global_optimizer_post_hooks):
            return "the optimizer has step hooks, which would see no weight gradients"
        tracked = self._tracked
        if tracked is None or model._tracked_norms is not tracked:
            return "the model's squared row norms are not this optimizer's (another pyae.optim optimizer took them)"
        if model.weight_decay > 0.0 and not model.optimizer_applies_weight_decay:
            return "the model's weight decay is not applied by this optimizer (it was set after it was built)"
        weights = model.weight_matrices()
        if len(weights) != len(tracked.weights) or any(w is not t for w, t in zip(weights, tracked.weights)):
            return "the model's weights are no longer the ones the optimizer was built with"
        # The parameters the objective reads (the model's forward, not overridden, reads no others).
        decoder_bias = model.decoder_bias if model.tied_weights else model.decoder.bias
        for p in (*weights, model.encoder.bias, decoder_bias):
            if p is None:
                continue
            if not p.requires_grad:
                return "a parameter of the model does not require grad (frozen), which the fused step would update"
            if p._backward_hooks or p._post_accumulate_grad_hooks:
                return "a parameter has gradient hooks, which the fused step would not call"
        for weight in weights:
            group = next(g for g in self.param_groups if any(q is weight for q in g["params"]))
            if not self._takes_gradient_in_buffer(group):
                return "a weight matrix's group has no momentum or uses nesterov (the update needs the gradient itself)"
        return None

    def _fused_backward(self, model: Autoencoder, x: Tensor, generator: Optional[torch.Generator]) -> AutoencoderOutput:
        """The forward and the backward of :meth:`autoencoder_step`'s fused step (no grad mode):
        the weight matrices' gradients as pending products for :meth:`step`, the biases' and
        the norms' gradients in their ``.grad``."""
        whole = model._whole_objective(x, generator)
        parts = whole.parts
        one = parts.loss.new_ones(())
        grad_logits = _ops.sigmoid_reconstruction_loss_backward(None, one, parts.reconstruction, x, model.loss)
        grad_hidden = grad_logits @ whole.decoder_weight
        grad_mean = None
        if model.sparsity_target is not None and model.sparsity_weight != 0.0:
            grad_mean = _ops.kl_sparsity_backward(one * model.sparsity_weight, parts.mean_activation,
                                                  model.sparsity_target)
        grad_contractive = one * model.contractive_weight if model.contractive_weight != 0.0 else None
        encoder_norms = whole.norms[0]
        delta, grad_encoder_bias, grad_norms = _ops.sigmoid_encoder_preactivation_backward(
            grad_hidden, grad_mean, grad_contractive, parts.hidden, encoder_norms)
        # The product reads what the encoder read: the (corrupted) input.
        encoder_input = whole.encoder_input if whole.seed is None else _ops.mask_noise(x, model.noise_level, whole.seed)
        encoder, decoder_bias = model.encoder, model.decoder_bias if model.tied_weights else model.decoder.bias
        products = {id(encoder.weight): [(delta.t(), encoder_input)]}
        if model.tied_weights:
            products[id(encoder.weight)].append((parts.hidden.t(), grad_logits))
        else:
            products[id(model.decoder.weight)] = [(grad_logits.t(), parts.hidden)]
        self._pending_products.update(products)
        if encoder.bias is not None:
            encoder.bias.grad = grad_encoder_bias
        if decoder_bias is not None:
            decoder_bias.grad = grad_logits.sum(0)
        if self._encoder_norms is not None:
            self._encoder_norms.grad = grad_norms
        return whole.output


class _EmptyTensors:
    """An empty (0,) tensor per (device, dtype): 'no norms for this parameter'."""

    def __init__(self) -> None:
        self._cache: Dict[Tuple[torch.device, torch.dtype], Tensor] = {}

    def get(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        empty = self._cache.get(key)
        if empty is None:
            empty = self._cache[key] = torch.empty(0, device=like.device, dtype=_ops._accumulation_dtype(like.dtype))
        return empty


_EMPTY = _EmptyTensors()


def _check_lr(lr: float) -> float:
    return check_number(lr, "lr")


class SGD(_FusedOptimizer):
    """``torch.optim.SGD`` (momentum, dampening, weight decay, Nesterov) as one fused pass per
    parameter; with ``autoencoder``, that autoencoder's weight-side terms inside the pass
    (see :mod:`pyae.optim`).

    Args:
        params: parameters or parameter groups, as for torch's optimizers.
        lr, momentum, dampening, weight_decay, nesterov: as for ``torch.optim.SGD``.
        autoencoder: the :class:`pyae.Autoencoder` whose parameters these are, or None.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *,
                 autoencoder: Optional[Autoencoder] = None) -> None:
        lr = _check_lr(lr)
        momentum = check_number(momentum, "momentum")
        dampening = check_number(dampening, "dampening")
        weight_decay = check_number(weight_decay, "weight_decay")
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("nesterov needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults, autoencoder)

    def _takes_gradient_in_buffer(self, group: Dict[str, Any]) -> bool:
        return group["momentum"] != 0.0 and not group["nesterov"]

    def _update_group(self, group, params, grads, decays, row_grads, norms) -> None:
        momentum = group["momentum"]
        hyper = dict(lr=group["lr"], momentum=momentum, dampening=group["dampening"], nesterov=group["nesterov"])
        if momentum == 0.0:
            _ops.sgd_update_(params, grads, [], row_grads, decays, norms, first_step=False, **hyper)
            return
        # One call per kind of entry: (gradient in the buffer already, first step).
        buffers, kinds = [], []
        for p, grad in zip(params, grads):
            state = self.state[p]
            if grad is None:
                # A fused step's products: buf = momentum * buf + (1 - dampening) * grad, or
                # grad on the first step (torch's SGD takes no dampening then), by addmm.
                buffer = state.get("momentum_buffer")
                first_step = buffer is None
                if first_step:
                    buffer = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.contiguous_format)
                beta, alpha = (0.0, 1.0) if first_step else (momentum, 1.0 - group["dampening"])
                for left, right in self._pending_products[id(p)]:
                    buffer.addmm_(left, right, beta=beta, alpha=alpha)
                    beta = 1.0
                buffers.append(buffer)
                kinds.append((True, first_step))
                continue
            buffer = state.get("momentum_buffer")
            first_step = buffer is None
            if first_step:
                # Zeros, not garbage: the first step's buf = 0 * buf + g must not meet a NaN.
                buffer = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            buffers.append(buffer)
            kinds.append((False, first_step))
        distinct = list(dict.fromkeys(kinds))
        for kind in distinct:
            in_buffer, first_step = kind
            if len(distinct) == 1:
                _ops.sgd_update_(params, [] if in_buffer else grads, buffers, row_grads, decays, norms,
                                 first_step=first_step, **hyper)
                continue
            indices = [i for i, k in enumerate(kinds) if k == kind]
            _ops.sgd_update_(_pick(params, indices), [] if in_buffer else _pick(grads, indices),
                             _pick(buffers, indices), _pick(row_grads, indices), _pick(decays, indices),
                             _pick(norms, indices), first_step=first_step, **hyper)


def _has_module_hooks(model: torch.nn.Module) -> bool:
    """Whether calling ``model`` would run forward or backward hooks (its own or global ones)."""
    return bool(model._forward_hooks or model._forward_pre_hooks or model._backward_hooks
                or model._backward_pre_hooks or _module_globals._global_forward_hooks
                or _module_globals._global_forward_pre_hooks or _module_globals._global_backward_hooks
                or _module_globals._global_backward_pre_hooks)


def _sum_of_products(products: List[Tuple[Tensor, Tensor]]) -> Tensor:
    """A pending gradient formed after all: the sum of its matrix products."""
    grad = None
    for left, right in products:
        grad = torch.mm(left, right) if grad is None else grad.addmm_(left, right)
    return grad


def _pick(values: List, indices: List[int]) -> List:
    return [values[i] for i in indices] if values else values


class Adam(_FusedOptimizer):
    """``torch.optim.Adam`` (L2 weight decay, no amsgrad) as one fused pass per parameter; with
    ``autoencoder``, that autoencoder's weight-side terms inside the pass (see
    :mod:`pyae.optim`). The step counts live on the parameters' device, so a step can be
    captured in a CUDA graph.

    Args:
        params: parameters or parameter groups, as for torch's optimizers.
        lr, betas, eps, weight_decay: as for ``torch.optim.Adam``.
        autoencoder: the :class:`pyae.Autoencoder` whose parameters these are, or None.
    """

    def __init__(self, params, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, autoencoder: Optional[Autoencoder] = None) -> None:
        lr = _check_lr(lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        beta1 = check_number(betas[0], "betas[0]", below_one=True)
        beta2 = check_number(betas[1], "betas[1]", below_one=True)
        eps = check_number(eps, "eps")
        weight_decay = check_number(weight_decay, "weight_decay")
        defaults = dict(lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, capturable=True)
        super().__init__(params, defaults, autoencoder)

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # torch keeps a non-capturable Adam's step counts on the CPU; the fused update reads
        # them on the parameter's device.
        for group in self._groups_to_update():
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device).reshape(())

    def _update_group(self, group, params, grads, decays, row_grads, norms) -> None:
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        torch._foreach_add_(steps, 1.0)
        beta1, beta2 = group["betas"]
        _ops.adam_update_(params, grads, exp_avgs, exp_avg_sqs, steps, row_grads, decays, norms,
                          lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"])
