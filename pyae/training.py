"""The training loop: mini-batch SGD or Adam over a tensor of examples, checkpointed and
resumable.

This is the Python API under ``pyae train``::

    from pyae.config import TrainConfig
    from pyae.data import load_mnist
    from pyae.training import train

    images, _ = load_mnist()
    config = TrainConfig(n_hidden=500, loss="cross_entropy", noise="mask", noise_level=0.25,
                         epochs=20, lr=0.01, batch_size=20)
    model, history = train(config, images, checkpoint_path="run/checkpoint.pt")

Reproducibility: the parameters are initialized from ``config.seed`` (without touching the
global RNG), the mini-batches are drawn by a ``torch.Generator`` seeded from it and the
corruption noise by a second one. A checkpoint (:mod:`pyae.checkpoint`), written atomically
after every epoch, holds the model, the optimizer and every generator state, so a run that
is interrupted and resumed (``resume=True``) ends bitwise equal on the CPU to one that never
stopped.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from pyae import distributed
from pyae.data import held_out_count, split_rows
from pyae._typing import PathLike
from pyae.checkpoint import (
    Checkpoint,
    best_checkpoint_path,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from pyae.config import RESUMABLE_FIELDS, TrainConfig, build_model, build_optimizer, resolve_device
from pyae.modules import Autoencoder, AutoencoderOutput
from pyae.step import TrainStep, make_grad_scaler, mixed_precision_context, optimizer_step, uses_autoencoder_step

__all__ = ["train"]

# The noise generator's seed is config.seed plus this (the golden-ratio constant): a stream
# independent of the shuffling one.
_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15
# Held-out examples per forward pass of the validation.
_VALIDATION_CHUNK = 4096
# Training examples up to this size move to the device and are gathered once per epoch;
# larger ones are gathered batch by batch where they are.
_ON_DEVICE_BYTES = 1 << 30


def train(
    config: TrainConfig,
    images: Tensor,
    *,
    validation: Optional[Tensor] = None,
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
        images: ``(N, n)`` training inputs (for ``loss="cross_entropy"`` in [0, 1]). With
            ``config.val_fraction``, that fraction of them is held out for validation.
        validation: ``(M, n)`` held-out inputs, measured after every epoch (instead of
            ``config.val_fraction``, not with it). The held-out loss and terms are those of
            the model in eval mode (no corruption), over the whole set (in chunks of 4,096
            examples, each term weighted by its chunk's size).
        checkpoint_path: where to write a checkpoint after every epoch (atomically; see
            :func:`save_checkpoint`). None: no checkpoints.
        resume: continue the run stored at ``checkpoint_path``: the model, optimizer, epoch
            count, history and every RNG state are restored, so the result is bitwise equal
            (on the CPU) to a run that never stopped. ``config`` must match the stored one
            except for the fields in :data:`pyae.config.RESUMABLE_FIELDS` (``epochs``, which
            may grow, ``early_stopping``, ``device``, ``cuda_graph`` and ``fused_backward``; a
            changed ``fused_backward`` continues equal up to rounding). Moving a run between
            the CPU and a GPU works, but its generator states cannot follow: it goes on
            deterministically from the seed and epoch, with a ``RuntimeWarning``.
        progress: show a tqdm bar (plain per-epoch lines on stderr without tqdm); False: silent.
        callback: ``callback(epoch, step, output)`` after every optimizer step, ``epoch``
            counting from 1, ``step`` from 0 within the epoch, ``output`` the step's
            :class:`pyae.AutoencoderOutput` (with ``config.cuda_graph`` its tensors are the
            graph's static outputs, overwritten by the next step; where the step fused,
            ``config.fused_backward``, they are detached and the weight matrices have no
            ``.grad``). An exception it raises
            stops training (the epoch in progress is lost, the last checkpoint stays as it was).
        extra: plain data stored in every checkpoint (e.g. where ``images`` came from).

    Under ``torch.distributed`` (e.g. ``torchrun``, with the process group initialized), each
    step's batch of ``config.batch_size`` examples is split across the ranks, the model runs
    under DistributedDataParallel with the global-batch sparsity statistic
    (:func:`pyae.distributed.convert_sync_sparsity`), and the gradients equal those of one
    process on the whole batch. A final batch with fewer examples than ranks is skipped. Rank 0 alone writes the
    checkpoints (which load in a single process) and shows progress.

    Returns:
        ``(model, history)``: the trained model (in eval mode) and a dict of per-epoch
        lists: ``"epoch"``, ``"loss"`` (mean per example of the total), one list per loss
        term (``"reconstruction"``, and ``"weight_decay"``, ``"sparsity"``, ``"contractive"``
        when enabled; unweighted, as in ``output.terms``) and ``"seconds"`` (training time
        of the epoch). With validation data, ``"val_loss"`` and ``"val_<term>"`` for each
        term, per held-out example. A resumed run's history covers the earlier epochs too.
        With ``config.mixed_precision`` the losses are float32 (autocast computes them in
        float32). With ``config.early_stopping`` training ends once ``val_loss`` has not
        improved for that many epochs; the model returned is the last one, and the best
        epoch's checkpoint is at :func:`pyae.checkpoint.best_checkpoint_path`.

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
    rows, validation = _split_validation(config, images, validation)
    checkpoint = _checkpoint_to_resume(config, images, checkpoint_path) if resume else None
    run = _Run.start(config, images, rows, validation, checkpoint, extra)

    steps_per_epoch = math.ceil(run.examples / config.batch_size)
    bar = _Progress(progress and run.writes, config.epochs * steps_per_epoch, run.start_epoch * steps_per_epoch,
                    config.epochs)
    run.model.train()
    try:
        for epoch in range(run.start_epoch + 1, config.epochs + 1):
            if run.stops_early():
                break
            started = time.perf_counter()
            bar.begin(epoch)
            metrics = run.train_epoch(epoch, bar, callback)
            seconds = time.perf_counter() - started  # train_epoch's metrics synchronized the device
            metrics.update(run.validate(epoch))
            run.record(epoch, metrics, seconds, checkpoint_path)
            bar.epoch(epoch, metrics, seconds)
    finally:
        bar.close()
        # The model leaves train() as a plain model: its loss's terms carry their whole
        # gradients again (build_optimizer had the optimizer apply the weight-side ones).
        detach = getattr(run.optimizer, "detach_autoencoder", None)
        if detach is not None:
            detach()
        getattr(run.model, "module", run.model).optimizer_applies_weight_decay = False
    run.model.eval()
    run.history["epoch"] = [int(e) for e in run.history.get("epoch", [])]
    return run.model, run.history


def stopped_early(history: Mapping[str, List[float]], patience: Optional[int]) -> bool:
    """Early stopping's rule: the held-out loss (``history["val_loss"]``) has not improved for
    ``patience`` epochs (never with ``patience`` None)."""
    losses = history.get("val_loss", [])
    return patience is not None and len(losses) > patience and min(losses[-patience:]) >= min(losses[:-patience])


def _regrouped(state: Mapping[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Mapping[str, Any]:
    """An optimizer state stored by an earlier pyae (torch's SGD or Adam over one group of every
    parameter in the model's order, or over two: the weight matrices with weight decay, then
    the rest), rearranged into ``optimizer``'s groups, so that such a run resumes. A state of
    ``optimizer``'s own layout as it is."""
    stored = state["param_groups"]
    current = optimizer.param_groups
    if [len(g["params"]) for g in stored] == [len(g["params"]) for g in current]:
        return state
    model = getattr(model, "module", model)  # under DistributedDataParallel
    parameters = list(model.parameters())
    if len(stored) == 1:
        order = parameters
    else:
        matrices = {id(p) for p in model.weight_matrices()}
        order = list(model.weight_matrices()) + [p for p in parameters if id(p) not in matrices]
    flat = [index for group in stored for index in group["params"]]
    if len(flat) != len(order):
        raise ValueError(f"the stored optimizer state holds {len(flat)} parameters, the model {len(order)}")
    old_index = {id(p): flat[i] for i, p in enumerate(order)}
    hyper = {k: v for k, v in stored[0].items() if k not in ("params", "weight_decay", "capturable")}
    groups, per_parameter, index = [], {}, 0
    for group in current:
        indices = []
        for parameter in group["params"]:
            old = old_index.get(id(parameter))
            if old is not None and old in state["state"]:
                per_parameter[index] = state["state"][old]
            indices.append(index)
            index += 1
        known = {k: v for k, v in group.items() if k != "params"}
        groups.append({**known, **{k: v for k, v in hyper.items() if k in known}, "params": indices})
    return {"state": per_parameter, "param_groups": groups}


def _check_images(images, config: TrainConfig, name: str = "images") -> None:
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 2 or images.shape[0] < 1 or images.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty 2-D tensor (examples, features), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {images.dtype}")
    if config.loss == "cross_entropy":
        # Checked once here, so a bad dataset fails before any training rather than mid-epoch.
        low, high = torch.aminmax(images.detach())
        if low < 0 or high > 1:
            raise ValueError(
                f"loss='cross_entropy' needs {name} in [0, 1], got values in [{low.item():g}, {high.item():g}]"
                " (rescale them, e.g. min-max per feature)"
            )


def _split_validation(config: TrainConfig, images: Tensor,
                      validation: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """(the rows of ``images`` to train on, or None for all; the validation examples or None):
    ``validation`` as given, or ``config.val_fraction`` of the images drawn with
    ``config.seed`` (both parts kept in their original order; only the held-out part is
    copied)."""
    rows = None
    if validation is not None:
        if config.val_fraction > 0.0:
            raise ValueError("give either validation data or config.val_fraction > 0, not both")
        _check_images(validation, config, name="validation")
        if validation.shape[1] != images.shape[1]:
            raise ValueError(f"validation has {validation.shape[1]} features but the images have {images.shape[1]}")
    elif config.val_fraction > 0.0:
        held_out = held_out_count(config.val_fraction, images.shape[0])
        rows, validation_rows = split_rows(images.shape[0], held_out,
                                           generator=torch.Generator().manual_seed(config.seed))
        validation = images[validation_rows]
    if config.early_stopping is not None and validation is None:
        raise ValueError("early_stopping needs validation data (config.val_fraction > 0, or validation=...)")
    return rows, validation


def _checkpoint_to_resume(config: TrainConfig, images: Tensor, checkpoint_path: PathLike) -> Checkpoint:
    """The checkpoint a resumed run continues, checked against the run's config and data."""
    checkpoint = load_checkpoint(checkpoint_path)
    stored = checkpoint.config.to_dict()
    wanted = config.to_dict()
    differing = [k for k in wanted if k not in RESUMABLE_FIELDS and wanted[k] != stored.get(k)]
    if differing:
        details = ", ".join(f"{k}={wanted[k]!r} (checkpoint: {stored.get(k)!r})" for k in differing)
        raise ValueError(f"cannot resume {checkpoint.path!r} with a different configuration: {details}")
    if checkpoint.n_inputs != images.shape[1]:
        raise ValueError(
            f"cannot resume {checkpoint.path!r}: its model has {checkpoint.n_inputs} inputs, "
            f"the images have {images.shape[1]} features"
        )
    return checkpoint


@dataclass
class _Run:
    """A training run in progress: what it trains, with what, and what it has recorded."""

    config: TrainConfig
    device: torch.device
    data: Tensor  # the examples in the model's dtype: on the device, or on the CPU when large
    rows: Optional[Tensor]  # the rows of data to train on (on data's device), None for all
    validation: Optional[Tensor]  # the held-out examples, on the device, or None
    model: Autoencoder
    optimizer: torch.optim.Optimizer
    generators: Dict[str, torch.Generator]  # "shuffle" (the data order) and "noise" (the corruption)
    step: Callable[[Tensor, float], AutoencoderOutput]  # one optimizer step on a batch (and its share)
    ranks: Optional[distributed.Ranks]
    extra: Optional[Mapping[str, Any]]
    start_epoch: int = 0
    history: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def examples(self) -> int:
        """The number of training examples."""
        return self.data.shape[0] if self.rows is None else self.rows.shape[0]

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints and shows progress (rank 0 of several)."""
        return self.ranks is None or self.ranks.rank == 0

    @classmethod
    def start(cls, config: TrainConfig, images: Tensor, rows: Optional[Tensor], validation: Optional[Tensor],
              checkpoint: Optional[Checkpoint], extra: Optional[Mapping[str, Any]]) -> "_Run":
        device = resolve_device(config.device)
        if config.cuda_graph and device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device; device={config.device!r} resolved to {device}")
        ranks = distributed.ranks()
        if config.cuda_graph and ranks is not None:
            raise ValueError("cuda_graph=True trains in one process; under torch.distributed leave it off")
        model = build_model(config, images.shape[1], device=device)
        optimizer = build_optimizer(config, model)
        # Every rank draws the same order (the same seed); the noise differs from rank to rank.
        generators = {"shuffle": torch.Generator(device=device), "noise": torch.Generator(device=device)}
        _seed_generators(generators, config.seed, epoch=0, rank=ranks.rank if ranks else 0)
        on_device = lambda t: None if t is None else t.detach().to(device=device, dtype=config.torch_dtype)  # noqa: E731
        # Examples up to _ON_DEVICE_BYTES move to the device once, and an epoch gathers them
        # in its order at once; larger ones (a memory-mapped file) stay where they are and
        # each batch gathers its rows, so that no epoch copies the whole set.
        large = images.numel() * config.torch_dtype.itemsize > _ON_DEVICE_BYTES
        data = images.detach().to(dtype=config.torch_dtype) if large else on_device(images)
        run = cls(config=config, device=device, data=data, rows=None if rows is None else rows.to(data.device),
                  validation=on_device(validation), model=model, optimizer=optimizer, generators=generators,
                  step=_step_function(config, model, optimizer, generators["noise"], ranks), ranks=ranks,
                  extra=extra)
        if checkpoint is not None:
            run._restore(checkpoint)
        return run

    def _restore(self, checkpoint: Checkpoint) -> None:
        try:
            self.model.load_state_dict(checkpoint.model_state)
            self.optimizer.load_state_dict(_regrouped(checkpoint.optimizer_state, self.model, self.optimizer))
            if not restore_rng_state(checkpoint.rng_state, self.generators, self.device):
                # Resumed on another kind of device: the stored generator states cannot be
                # carried over. Continue deterministically (same seed and epoch, same
                # streams), though not bitwise like the run that never moved.
                warnings.warn(
                    f"resuming a run checkpointed on {checkpoint.rng_state.get('device_type')!r} on "
                    f"{self.device.type!r}: the data order and noise from here on are reproducible but differ "
                    "from an uninterrupted run",
                    RuntimeWarning,
                    stacklevel=4,
                )
                _seed_generators(self.generators, self.config.seed, epoch=checkpoint.epoch,
                                 rank=self.ranks.rank if self.ranks else 0)
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot resume from {checkpoint.path!r}: {err}") from err
        self.start_epoch = checkpoint.epoch
        self.history = checkpoint.history
        if self.extra is None:
            self.extra = checkpoint.extra

    def _batches(self, order: Tensor):
        """(step, batch, share) for each step of an epoch whose examples come in ``order``:
        under torch.distributed, this rank's part of each batch and its share of it (a batch
        with fewer examples than ranks is skipped); otherwise the whole batch and a share of 1."""
        if self.rows is not None:
            order = self.rows.index_select(0, order.to(self.rows.device))
        if self.data.device == self.device:
            # One gather per epoch, then contiguous slices: cheaper than a gather per step.
            epoch_data = self.data.index_select(0, order)
            gather = lambda begin, end: epoch_data[begin:end]  # noqa: E731
        else:
            order = order.to(self.data.device)
            gather = lambda begin, end: self.data.index_select(0, order[begin:end]).to(self.device)  # noqa: E731
        for step, begin in enumerate(range(0, order.shape[0], self.config.batch_size)):
            batch = gather(begin, begin + self.config.batch_size)
            if self.ranks is None:
                yield step, batch, 1.0
            elif batch.shape[0] >= self.ranks.world:
                part = batch.tensor_split(self.ranks.world)[self.ranks.rank]
                yield step, part, part.shape[0] * self.ranks.world / batch.shape[0]

    def train_epoch(self, epoch: int, bar: "_Progress", callback) -> Dict[str, float]:
        """One pass over the data; returns the epoch's mean loss and terms per example."""
        order = torch.randperm(self.examples, generator=self.generators["shuffle"], device=self.device)
        sums = _TermSums()
        for step, batch, share in self._batches(order):
            output = self.step(batch, share)
            sums.add(output, batch.shape[0])
            bar.step()
            if callback is not None:
                callback(epoch, step, output)
        metrics = sums.means(self.examples, all_ranks=self.ranks is not None)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(
                f"training diverged in epoch {epoch}: {metrics}; lower the learning rate (lr={self.config.lr})"
            )
        return metrics

    @torch.no_grad()
    def validate(self, epoch: int) -> Dict[str, float]:
        """The held-out loss and terms per example ("val_..."), in eval mode; {} without
        validation data."""
        if self.validation is None:
            return {}
        self.model.eval()
        sums = _TermSums()
        with mixed_precision_context(self.device.type, self.config.mixed_precision):
            for chunk in self.validation.split(_VALIDATION_CHUNK):
                sums.add(self.model(chunk), chunk.shape[0])
        self.model.train()
        metrics = sums.means(self.validation.shape[0], all_ranks=False)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"the held-out loss diverged in epoch {epoch}: {metrics}")
        return {f"val_{name}": value for name, value in metrics.items()}

    def stops_early(self) -> bool:
        """Whether the held-out loss has not improved for config.early_stopping epochs."""
        return stopped_early(self.history, self.config.early_stopping)

    def record(self, epoch: int, metrics: Mapping[str, float], seconds: float,
               checkpoint_path: Optional[PathLike]) -> None:
        """Add the epoch to the history and write the checkpoint (rank 0 only), and the best
        one so far beside it when the held-out loss improved."""
        self.history.setdefault("epoch", []).append(float(epoch))
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        self.history.setdefault("seconds", []).append(seconds)
        if checkpoint_path is None or not self.writes:
            return
        state = dict(model=self.model, optimizer=self.optimizer, epoch=epoch, config=self.config,
                     rng_state=rng_state(self.generators, self.device), history=self.history, extra=self.extra)
        save_checkpoint(checkpoint_path, **state)
        losses = self.history.get("val_loss", [])
        if losses and losses[-1] <= min(losses):
            save_checkpoint(best_checkpoint_path(checkpoint_path), **state)


def _seed_generators(generators: Mapping[str, torch.Generator], seed: int, *, epoch: int, rank: int) -> None:
    """The generators' seeds for a run starting (epoch 0) or restarting after ``epoch``
    epochs without its stored states."""
    restart = 1_000_003 * epoch
    generators["shuffle"].manual_seed((seed + restart) % 2**64)
    generators["noise"].manual_seed((seed + _NOISE_SEED_OFFSET + restart + rank) % 2**64)


def _step_function(config: TrainConfig, model: Autoencoder, optimizer: torch.optim.Optimizer,
                   noise: torch.Generator, ranks: Optional[distributed.Ranks]):
    """step(batch, share) -> the step's output: one forward, backward and update."""
    mixed_precision = config.mixed_precision
    if config.cuda_graph:
        # Each step (forward, backward, update) is one graph replay per batch shape.
        captured = TrainStep(model, optimizer, capture=True, generator=noise, mixed_precision=mixed_precision)

        def captured_step(batch: Tensor, share: float) -> AutoencoderOutput:
            captured(batch)
            return captured.last_output

        return captured_step
    trainer = model
    if ranks is not None:
        distributed.convert_sync_sparsity(model)
        trainer = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[model.encoder.weight.device.index] if model.encoder.weight.is_cuda else None
        )
    device_type = model.encoder.weight.device.type
    grad_scaler = make_grad_scaler(device_type) if mixed_precision == "float16" else None

    if config.fused_backward and ranks is None and mixed_precision is None and uses_autoencoder_step(optimizer, model):
        # pyae's SGD given the model: the weight matrices' gradient products go straight into
        # the momentum buffers (pyae.optim, SGD.autoencoder_step).
        def fused_step(batch: Tensor, share: float) -> AutoencoderOutput:
            return optimizer.autoencoder_step(batch, generator=noise)

        return fused_step

    def eager_step(batch: Tensor, share: float) -> AutoencoderOutput:
        optimizer.zero_grad(set_to_none=True)
        with mixed_precision_context(device_type, mixed_precision):
            output = trainer(batch, generator=noise)
        loss = output.loss if ranks is None else distributed.rank_loss(output, model, share)
        optimizer_step(loss, optimizer, grad_scaler)
        return output

    return eager_step


class _TermSums:
    """The running sums of a step's loss and terms, weighted by the batch size. They stay on
    the device (no host synchronization inside an epoch), all in one vector: two small
    kernels per step, whatever the number of terms."""

    def __init__(self) -> None:
        self.names: List[str] = []
        self.sums: Optional[Tensor] = None

    @torch.no_grad()
    def add(self, output: AutoencoderOutput, batch_size: int) -> None:
        values = torch.stack([output.loss.detach().float(), *(t.detach().float() for t in output.terms.values())])
        if self.sums is None:
            self.names = ["loss", *output.terms]
            self.sums = values * batch_size
        else:
            self.sums.add_(values, alpha=batch_size)

    def means(self, examples: int, *, all_ranks: bool) -> Dict[str, float]:
        """The means per example (over every rank's examples with ``all_ranks``); reading
        them synchronizes the device."""
        if all_ranks:
            import torch.distributed as dist

            dist.all_reduce(self.sums)
        return dict(zip(self.names, (self.sums / examples).tolist()))


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
