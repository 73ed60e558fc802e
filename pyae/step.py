"""One training step as a unit: forward, backward and the optimizer's update, optionally
captured in a CUDA graph.

At MNIST sizes a GPU step is bound by kernel launches and Python, not by arithmetic: the five
matrix products of a 4096 x 784 x 1000 step take tens of microseconds on an H100/H200. Captured
once and replayed, the whole step (pyae's fused encoder, the decoder, the losses, every
gradient and the foreach optimizer update) costs one graph launch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from pyae import optim
from pyae.validation import check_choice, check_generator

__all__ = ["TrainStep", "optimizer_step", "make_grad_scaler", "mixed_precision_context"]


class _CapturedStep:
    """The step for one input shape: a static input buffer, the graph, its static output."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static_input: Tensor, static_output: Any) -> None:
        self.graph, self.static_input, self.static_output = graph, static_input, static_output


class TrainStep:
    """``optimizer.zero_grad(set_to_none=True); model(x).loss.backward(); optimizer.step()``.

    With ``capture=True`` (or ``"auto"`` on a CUDA model) the first calls for an input shape
    run eagerly on a side stream (they create the optimizer's state), then the step is
    captured in a ``torch.cuda.CUDAGraph`` over a static input buffer and every later call
    with that shape copies its input into the buffer and replays the graph. Each input
    shape gets its own graph (a last, smaller batch of an epoch included); all share one
    memory pool.

    What capture requires, as CUDA graphs do: no host synchronization inside the step (pyae's
    operators have none; cross-entropy targets are not range-checked per call on CUDA, so
    check the data once up front), an optimizer that is graph-safe (SGD, or Adam/AdamW
    constructed with ``capturable=True``), hyperparameters that stay fixed after capture (a
    learning-rate scheduler's later changes are not seen by the replayed graph), and the
    model's default random generator or ``generator`` for its corruption noise (registered
    with each graph, so its state advances on every replay and the noise differs from step to
    step as in eager mode). Mixed precision goes with capture in bfloat16; float16's gradient
    scaler decides on the host whether to skip a step, which a graph cannot replay.

    Args:
        model: a :class:`pyae.Autoencoder` (anything whose ``forward(x)`` returns an object
            with a scalar ``.loss``; with ``generator``, ``forward(x, generator=...)``).
        optimizer: the optimizer over the model's parameters.
        capture: ``True``, ``False`` or ``"auto"`` (capture when the model is on a CUDA device).
        warmup_steps: eager steps per input shape before capture (at least 1).
        generator: a ``torch.Generator`` on the model's device for the corruption noise, or
            None for the default one.
        mixed_precision: None, ``"bfloat16"`` or ``"float16"``: the forward runs under
            ``torch.autocast`` in that dtype; ``"float16"`` also scales the loss with a
            ``torch.amp.GradScaler`` (:attr:`grad_scaler`) against gradient underflow.
        fused_backward: without capture and mixed precision, while the optimizer is a
            :class:`pyae.optim.SGD` given this model (``autoencoder=model``), each step is its
            :meth:`~pyae.optim.SGD.autoencoder_step`: the weight matrices' gradient products go
            straight into the momentum buffers, and the weight matrices get no ``.grad``
            (where that step cannot fuse, e.g. without momentum, it takes the three calls
            itself). False: always the three calls.

    Calling the step returns the loss of that step as a fresh, detached tensor on the
    model's device (reading it with ``.item()`` synchronizes; accumulate on the device and
    read once per epoch to keep the GPU busy). :attr:`last_output` is the whole output of
    that step (the model's ``forward`` result); with capture its tensors are the graph's
    static outputs, overwritten by the next call of the same shape: copy what you keep.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 capture: Union[bool, str] = "auto", warmup_steps: int = 3,
                 generator: Optional[torch.Generator] = None, mixed_precision: Optional[str] = None,
                 fused_backward: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if capture not in (True, False, "auto"):
            raise ValueError(f"capture must be True, False or 'auto'; got {capture!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        check_generator(generator)
        check_choice(mixed_precision, "mixed_precision", (None, "bfloat16", "float16"))
        if not isinstance(fused_backward, bool):
            raise TypeError(f"fused_backward must be a bool, got {type(fused_backward).__name__}")
        parameter = next(model.parameters(), None)
        on_cuda = parameter is not None and parameter.device.type == "cuda"
        if capture == "auto":
            capture = on_cuda and _optimizer_is_capturable(optimizer) and mixed_precision != "float16"
        elif capture and mixed_precision == "float16":
            raise ValueError(
                "capture=True does not go with mixed_precision='float16' (its gradient scaler decides on the host "
                "whether to skip a step); use 'bfloat16' or capture=False"
            )
        elif capture:
            if not on_cuda:
                raise ValueError("capture=True needs a model on a CUDA device (CUDA graphs)")
            if not _optimizer_is_capturable(optimizer):
                raise ValueError(
                    f"{type(optimizer).__name__} is not graph-safe as constructed: pass capturable=True "
                    "(Adam, AdamW, ...) or use capture=False"
                )
        self.model, self.optimizer, self.capture, self.warmup_steps = model, optimizer, bool(capture), warmup_steps
        self.generator = generator
        self.device_type = parameter.device.type if parameter is not None else "cpu"
        self.mixed_precision = mixed_precision
        self.grad_scaler = make_grad_scaler(self.device_type) if mixed_precision == "float16" else None
        self.last_output: Any = None
        self._captured: Dict[Tuple, _CapturedStep] = {}
        self._warmups: Dict[Tuple, int] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.fused_backward = fused_backward and not self.capture and mixed_precision is None

    def _forward(self, x: Tensor):
        # No autocast cast cache under capture: a graph must cast the weights it replays with.
        with mixed_precision_context(self.device_type, self.mixed_precision, cache_enabled=not self.capture):
            return self.model(x) if self.generator is None else self.model(x, generator=self.generator)

    def _eager_step(self, x: Tensor) -> Tensor:
        if self.fused_backward and uses_autoencoder_step(self.optimizer, self.model):
            output = self.optimizer.autoencoder_step(x, generator=self.generator)
            self.last_output = output
            return output.loss.detach()
        self.optimizer.zero_grad(set_to_none=True)
        output = self._forward(x)
        optimizer_step(output.loss, self.optimizer, self.grad_scaler)
        self.last_output = output
        return output.loss.detach()

    def __call__(self, x: Tensor) -> Tensor:
        if not self.capture:
            return self._eager_step(x)
        if not self.model.training:
            raise ValueError("TrainStep with capture runs the model in training mode: call model.train() first")
        key = (tuple(x.shape), x.dtype, x.device)
        captured = self._captured.get(key)
        if captured is None:
            done = self._warmups.get(key, 0)
            if done < self.warmup_steps:
                self._warmups[key] = done + 1
                return self._warmup(x)
            captured = self._captured[key] = self._capture(x)  # also runs this step
        else:
            captured.static_input.copy_(x)
            captured.graph.replay()
        self.last_output = captured.static_output
        return captured.static_output.loss.detach().clone()

    def _warmup(self, x: Tensor) -> Tensor:
        # Warm-up runs on a side stream, as torch.cuda.graphs asks, so that lazily created
        # state (optimizer buffers, cuBLAS workspaces) exists before capture.
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            loss = self._eager_step(x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        return loss

    def _capture(self, x: Tensor) -> _CapturedStep:
        static_input = x.detach().clone()
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None:
            # Replays then advance the generator's offset as eager steps would.
            graph.register_generator_state(self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph, pool=self._pool):
            static_output = self._forward(static_input)
            optimizer_step(static_output.loss, self.optimizer)
        # The capture recorded the step without running it; run it once for this input.
        graph.replay()
        return _CapturedStep(graph, static_input, static_output)


def mixed_precision_context(device_type: str, mixed_precision: Optional[str], *, cache_enabled: bool = True):
    """``torch.autocast`` in ``mixed_precision`` (``"bfloat16"``/``"float16"``), or no context at
    all for None (entering a disabled autocast still costs host time in every step)."""
    if mixed_precision is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, mixed_precision), cache_enabled=cache_enabled)


def make_grad_scaler(device_type: str) -> torch.amp.GradScaler:
    """The gradient scaler of float16 training. pyae's losses are sums over the input features
    (hundreds for MNIST), not means: torch's default initial scale, 2^16, overflows float16
    gradients for the first several steps, which are then skipped. 2^8 starts in range; the
    scaler grows it as usual (doubling after 2000 steps without overflow)."""
    return torch.amp.GradScaler(device_type, init_scale=2.0**8)


def optimizer_step(loss: Tensor, optimizer: torch.optim.Optimizer,
                   grad_scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """``loss.backward(); optimizer.step()``, through ``grad_scaler`` when given (scale the
    loss, unscale the gradients, skip a step whose gradients overflowed, update the scale)."""
    if grad_scaler is None:
        loss.backward()
        optimizer.step()
        return
    grad_scaler.scale(loss).backward()
    grad_scaler.step(optimizer)
    grad_scaler.update()


def uses_autoencoder_step(optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
    """Whether ``optimizer`` is a :class:`pyae.optim.SGD` given ``model`` itself: its
    :meth:`~pyae.optim.SGD.autoencoder_step` is then the whole step (fused where it can be)."""
    return isinstance(optimizer, optim.SGD) and optimizer.autoencoder is model


def _optimizer_is_capturable(optimizer: torch.optim.Optimizer) -> bool:
    """SGD has no device-side step counter and is graph-safe (torch's and pyae's: pyae.optim
    updates the squared row norms in place, so a replay reads the ones the last replay wrote);
    optimizers with one must have been built with capturable=True (pyae.optim.Adam is)."""
    if "capturable" in optimizer.defaults:
        return bool(optimizer.defaults["capturable"])
    return isinstance(optimizer, (torch.optim.SGD, optim.SGD))
