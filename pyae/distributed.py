"""Training on several processes (``torch.distributed``, e.g. under ``torchrun``).

What data parallelism changes for a regularized autoencoder is the sparsity statistic: the
KL penalty is a function of the mean activation over the *global* batch, which no rank sees
alone. :func:`convert_sync_sparsity` opts a model in (as
``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does for batch statistics): its mean
activation becomes a differentiable, batch-size-weighted all-reduce over the process group,
so the penalty and its gradient equal those of one process on the whole batch. Everything
else (the per-example means) is averaged by ``DistributedDataParallel`` as usual;
:func:`rank_loss` weights a rank's loss for unequal shares of a batch.

``pyae train`` under ``torchrun`` uses all of this (:func:`start_process_group`).
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "convert_sync_sparsity",
    "global_mean_activation",
    "Ranks",
    "ranks",
    "rank_loss",
    "launched_by_torchrun",
    "start_process_group",
]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks of a process group, differentiable: the gradient of every rank's
    input is the sum of the ranks' output gradients."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        import torch.distributed as dist

        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        import torch.distributed as dist

        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None


def global_mean_activation(mean_activation: Tensor, batch_size: int, group) -> Tensor:
    """The mean activation over the global batch of ``group``'s ranks.

    Each rank's mean is weighted by its batch size and summed with a differentiable
    all-reduce, so that the KL penalty of the global mean, and its gradient, are the same as
    one process computing them on the whole batch. With ``group=None``, ``mean_activation``
    itself.
    """
    if group is None:
        return mean_activation
    weighted = torch.cat([mean_activation * batch_size, mean_activation.new_full((1,), float(batch_size))])
    total = _AllReduceSum.apply(weighted, group)
    return total[:-1] / total[-1]


def convert_sync_sparsity(module: nn.Module, process_group=None) -> nn.Module:
    """Make every :class:`pyae.Autoencoder` in ``module`` compute its sparsity statistic over
    the global batch of ``process_group`` (default: the whole world), like
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. Call it before wrapping the model in
    ``DistributedDataParallel``. Returns ``module`` (changed in place).

    Raises:
        RuntimeError: ``torch.distributed`` is not initialized.
    """
    import torch.distributed as dist

    from pyae.modules import Autoencoder

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("convert_sync_sparsity needs an initialized torch.distributed process group")
    group = dist.group.WORLD if process_group is None else process_group
    for submodule in module.modules():
        if isinstance(submodule, Autoencoder):
            submodule.statistics_group = group
    return module


class Ranks(NamedTuple):
    """This process's place in a process group: ``rank`` of ``world``."""

    rank: int
    world: int


def ranks() -> Optional[Ranks]:
    """This process's place in an initialized torch.distributed group of several ranks, or
    None (one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Ranks(dist.get_rank(), dist.get_world_size())
    return None


def rank_loss(output, model, share: float) -> Tensor:
    """The loss a rank backpropagates so that DDP's average of the ranks' gradients is the
    gradient of one process on the whole global batch.

    The per-example means (reconstruction, contractive) are weighted by the rank's share of
    the global batch times the number of ranks (1 when the shares are equal); terms that are
    the same on every rank (weight decay) come out of the average unchanged; the sparsity
    term is already a function of the global mean activation (:func:`convert_sync_sparsity`),
    whose gradient the average gets exactly right, so it is left unweighted.

    Args:
        output: the rank's :class:`pyae.AutoencoderOutput`.
        model: the :class:`pyae.Autoencoder` (for its sparsity weight).
        share: the rank's batch size times the number of ranks over the global batch size.
    """
    if "sparsity" not in output.terms or model.sparsity_weight == 0.0:
        return output.loss * share
    sparsity = model.sparsity_weight * output.terms["sparsity"]
    return (output.loss - sparsity) * share + sparsity


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks that torchrun started (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start_process_group(device: torch.device) -> Optional[torch.device]:
    """Under torchrun, join the process group: NCCL with one GPU per rank
    (``cuda:LOCAL_RANK``), gloo on the CPU. Returns this rank's device, or None when not
    launched by torchrun."""
    if not launched_by_torchrun():
        return None
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device
