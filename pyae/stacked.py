"""Stacked autoencoders: greedy layer-wise pretraining and supervised fine-tuning.

A :class:`StackedAutoencoder` is a list of :class:`pyae.Autoencoder` layers, each taking the
hidden representation of the one below as its input. :func:`pretrain` trains them greedily,
one after the other, with :func:`pyae.training.train`: layer ``k`` learns to reconstruct the
clean codes of layers ``0 .. k-1`` from its own corruption of them (the stacked denoising
autoencoder of Vincent et al., 2010). A :class:`StackedClassifier` puts a softmax layer on
top of the stack and :func:`finetune` trains the whole network on labels, every encoder
running through pyae's fused operator::

    import pyae
    from pyae.data import load_mnist

    images, labels = load_mnist()
    stack = pyae.StackedAutoencoder(784, [500, 500], {"noise": "mask", "noise_level": 0.25,
                                                      "loss": "cross_entropy"})
    configs = pyae.stacked.layer_configs(stack, epochs=15, lr=0.01, batch_size=20, device="cpu")
    pyae.pretrain(stack, images, configs, checkpoint_dir="run")
    classifier = pyae.StackedClassifier(stack, n_classes=10)
    history = pyae.finetune(classifier, images, labels, epochs=50, lr=0.1, val_fraction=0.2,
                            patience=10, checkpoint_path="run/finetune.pt")

Both stages checkpoint every epoch (atomically) and resume bitwise equal on the CPU to a run
that never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import sys
import time
import warnings
from numbers import Real
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pyae
from pyae import functional as PF
from pyae.data import held_out_count, split_rows
from pyae._atomic import atomic_write
from pyae._typing import PathLike
from pyae.checkpoint import _cpu_state, model_from_checkpoint, restore_rng_state, rng_state
from pyae.config import DTYPES, MODEL_FIELDS, OPTIMIZERS, TrainConfig
from pyae.modules import Autoencoder
from pyae.ops import EncoderOutput
from pyae.validation import (
    check_bool,
    check_choice,
    check_floating_tensor,
    check_int,
    check_number,
    check_probability,
)

__all__ = [
    "StackedAutoencoder",
    "StackedClassifier",
    "layer_configs",
    "pretrain",
    "finetune",
    "load_finetune_checkpoint",
    "FINETUNE_FORMAT",
    "FINETUNE_RESUMABLE",
]

#: The value of a fine-tuning checkpoint's ``"format"`` key.
FINETUNE_FORMAT = "pyae.finetune"
_FINETUNE_VERSION = 1
#: The fine-tuning settings a resumed run may change: how long it runs and when it stops early.
FINETUNE_RESUMABLE = ("epochs", "patience")
#: What fine-tuning's early stopping may watch on the validation data.
MONITORS = ("accuracy", "loss")
# Examples per forward pass when encoding or scoring a whole set.
_CHUNK = 4096


# ----------------------------------------------------------------------------- checks


def _check_layer_sizes(layer_sizes) -> Tuple[int, ...]:
    if isinstance(layer_sizes, (str, bytes)) or not isinstance(layer_sizes, Sequence):
        raise TypeError(f"layer_sizes must be a sequence of ints, got {type(layer_sizes).__name__}")
    if len(layer_sizes) == 0:
        raise ValueError("layer_sizes must name at least one layer, got an empty sequence")
    return tuple(check_int(size, f"layer_sizes[{k}]", 1) for k, size in enumerate(layer_sizes))


def _check_layer_options(layer_options, n_layers: int) -> List[Dict[str, Any]]:
    """One dict of Autoencoder keywords per layer."""
    if layer_options is None:
        return [{} for _ in range(n_layers)]
    if isinstance(layer_options, Mapping):
        options = [layer_options] * n_layers
        names = ["layer_options"] * n_layers
    elif isinstance(layer_options, Sequence) and not isinstance(layer_options, (str, bytes)):
        if len(layer_options) != n_layers:
            raise ValueError(f"layer_options must hold one dict per layer ({n_layers}), got {len(layer_options)}")
        options = list(layer_options)
        names = [f"layer_options[{k}]" for k in range(n_layers)]
    else:
        raise TypeError(f"layer_options must be None, a dict or a list of dicts, got {type(layer_options).__name__}")
    for name, entry in zip(names, options):
        if not isinstance(entry, Mapping):
            raise TypeError(f"{name} must be a dict of pyae.Autoencoder options, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(MODEL_FIELDS))
        if unknown:
            raise ValueError(f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(MODEL_FIELDS)}")
    return [dict(entry) for entry in options]


def _check_examples(x, name: str, n_features: int) -> None:
    check_floating_tensor(x, name)
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] != n_features:
        raise ValueError(f"{name} must have shape (examples >= 1, {n_features}), got {tuple(x.shape)}")


def _check_labels(y, name: str, n_examples: int, n_classes: int) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of class indices, got {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n_examples:
        raise ValueError(f"{name} must have shape ({n_examples},), one class per example, got {tuple(y.shape)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= n_classes:
        raise ValueError(f"{name} must lie in 0..{n_classes - 1}, got values in [{low}, {high}]")


def _per_layer(value, name: str, n_layers: int) -> List[float]:
    """A number ``>= 0`` for every layer, from one number or a sequence of one per layer."""
    if isinstance(value, Real) and not isinstance(value, bool):
        return [check_number(value, name)] * n_layers
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != n_layers:
            raise ValueError(f"{name} must be one number or one per layer ({n_layers}), got {len(value)}")
        return [check_number(v, f"{name}[{k}]") for k, v in enumerate(value)]
    raise TypeError(f"{name} must be a number or a sequence of numbers, got {type(value).__name__}")


# ------------------------------------------------------------------------------ stack


class StackedAutoencoder(nn.Module):
    """A stack of one-hidden-layer autoencoders: layer ``k`` encodes the code of layer ``k-1``.

    ``layers[k]`` is a :class:`pyae.Autoencoder` with ``layer_sizes[k - 1]`` inputs
    (``n_inputs`` for the first) and ``layer_sizes[k]`` hidden units; its decoder and
    corruption serve its pretraining (:func:`pretrain`) only. The deep encoder
    ``h_k = sigmoid(W_k h_{k-1} + b_k)`` runs every layer's clean encoder through the fused
    operator, differentiably, so that :func:`finetune` trains all of them.

    Args:
        n_inputs: the number of input features.
        layer_sizes: the hidden units of each layer, bottom first (at least one layer).
        layer_options: :class:`pyae.Autoencoder` keywords (``noise``, ``noise_level``,
            ``sparsity_target``, ``sparsity_weight``, ``contractive_weight``, ``tied_weights``,
            ``loss``, ``decoder_activation``, ``weight_decay``): None (the defaults), one dict
            for every layer, or a list of one dict per layer.
        device, dtype: where and in which floating dtype to create the parameters (each layer
            initialized as :class:`pyae.Autoencoder` does, from the global RNG).

    Raises:
        TypeError, ValueError: naming the offending argument.

    Example::

        stack = pyae.StackedAutoencoder(784, [500, 250], [{"noise": "mask", "noise_level": 0.2},
                                                          {"noise": "mask", "noise_level": 0.3}])
        codes = stack.encode(x)             # (B, 250)
        first = stack.encode(x, depth=1)    # (B, 500)
    """

    def __init__(self, n_inputs: int, layer_sizes: Sequence[int], layer_options=None, *, device=None,
                 dtype=None) -> None:
        super().__init__()
        n_inputs = check_int(n_inputs, "n_inputs", 1)
        sizes = _check_layer_sizes(layer_sizes)
        options = _check_layer_options(layer_options, len(sizes))
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
        layers = []
        for k, (inputs, size) in enumerate(zip((n_inputs,) + sizes[:-1], sizes)):
            try:
                layers.append(Autoencoder(inputs, size, device=device, dtype=dtype, **options[k]))
            except (TypeError, ValueError) as err:
                raise type(err)(f"layer_options for layer {k}: {err}") from err
        self.layers = nn.ModuleList(layers)
        self.n_inputs = n_inputs

    @property
    def layer_sizes(self) -> Tuple[int, ...]:
        """The hidden units of each layer, bottom first."""
        return tuple(layer.n_hidden for layer in self.layers)

    @property
    def n_layers(self) -> int:
        """The number of layers."""
        return len(self.layers)

    @property
    def n_outputs(self) -> int:
        """The size of the top layer's code."""
        return self.layers[-1].n_hidden

    def layer_options(self) -> List[Dict[str, Any]]:
        """Each layer's :class:`pyae.Autoencoder` keywords (as ``layer_options`` takes them)."""
        return [{name: getattr(layer, name) for name in MODEL_FIELDS} for layer in self.layers]

    def extra_repr(self) -> str:
        return f"n_inputs={self.n_inputs}, layer_sizes={list(self.layer_sizes)}"

    def _check_depth(self, depth) -> int:
        if depth is None:
            return self.n_layers
        depth = check_int(depth, "depth", 0)
        if depth > self.n_layers:
            raise ValueError(f"depth must be <= {self.n_layers}, the number of layers, got {depth}")
        return depth

    def encoder_outputs(self, x: Tensor, depth: Optional[int] = None) -> List[EncoderOutput]:
        """The fused encoder's outputs ``(hidden, mean_activation, contractive)`` of each of
        the first ``depth`` layers (default all) on the clean input ``x``, bottom first: the
        contractive term of layer ``k`` is the batch mean of ``||dh_k/dh_{k-1}||_F^2``, its
        mean activation that of its units. Differentiable."""
        depth = self._check_depth(depth)
        _check_examples(x, "x", self.n_inputs)
        outputs, hidden = [], x
        for layer in self.layers[:depth]:
            encoded = PF.sigmoid_encoder(hidden, layer.encoder.weight, layer.encoder.bias)
            outputs.append(encoded)
            hidden = encoded.hidden
        return outputs

    def encode(self, x: Tensor, depth: Optional[int] = None) -> Tensor:
        """The code of the clean input ``x`` after the first ``depth`` layers (default all;
        0 gives ``x`` itself): every layer's encoder through the fused operator, never corrupted.

        Args:
            x: ``(B, n_inputs)``.
            depth: how many layers to run, ``0 .. n_layers``; None: all.

        Returns:
            ``(B, layer_sizes[depth - 1])``, differentiable with respect to ``x`` and the weights.
        """
        depth = self._check_depth(depth)
        _check_examples(x, "x", self.n_inputs)
        hidden = x
        for layer in self.layers[:depth]:
            hidden = PF.sigmoid_encoder(hidden, layer.encoder.weight, layer.encoder.bias).hidden
        return hidden

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`encode` with every layer."""
        return self.encode(x)

    @torch.no_grad()
    def filters(self) -> Tensor:
        """The first layer's filters ``W_l / ||W_l||``, ``(layer_sizes[0], n_inputs)``
        (:meth:`pyae.Autoencoder.filters`)."""
        return self.layers[0].filters()

    @torch.no_grad()
    def unit_filters(self, layer: int) -> Tensor:
        """A picture of what each unit of layer ``layer`` responds to, in input space.

        Layer 0: its filters, as :meth:`filters`. A deeper layer ``k``: the rows of the product
        of the encoder weights ``W_k W_{k-1} ... W_0``, each scaled to unit norm. This is the
        network's linear approximation with every sigmoid replaced by a line of one common
        slope (biases dropped): the Jacobian ``dh_k/dx`` of such a network is proportional to
        that product, so row ``l`` is the input direction that raises unit ``l`` fastest. It
        is each unit's weighted sum of the first layer's (unnormalized) filters, propagated
        through the layers between; it ignores where the sigmoids saturate, so it is a
        sketch, not the unit's exact preferred input.

        Args:
            layer: ``0 .. n_layers - 1``.

        Returns:
            ``(layer_sizes[layer], n_inputs)``, unit-norm rows (a zero row stays zero), ready
            for :func:`pyae.viz.save_filter_grid`.
        """
        layer = check_int(layer, "layer", 0)
        if layer >= self.n_layers:
            raise ValueError(f"layer must be < {self.n_layers}, the number of layers, got {layer}")
        product = self.layers[0].encoder.weight.detach()
        for above in self.layers[1:layer + 1]:
            product = above.encoder.weight.detach() @ product
        return product / product.norm(dim=1, keepdim=True).clamp_min(torch.finfo(product.dtype).tiny)


def layer_configs(stack: StackedAutoencoder, **fields) -> List[TrainConfig]:
    """One :class:`pyae.config.TrainConfig` per layer of ``stack`` for :func:`pretrain`: the
    layer's ``n_hidden`` and :class:`pyae.Autoencoder` options, and the optimization
    ``fields`` (``epochs``, ``lr``, ``seed``, ``device``, ...) for every layer.

    Raises:
        TypeError: ``stack`` is not a StackedAutoencoder.
        ValueError: ``fields`` sets a model option (those are the stack's) or is invalid.
    """
    if not isinstance(stack, StackedAutoencoder):
        raise TypeError(f"stack must be a StackedAutoencoder, got {type(stack).__name__}")
    clash = sorted(set(fields) & {"n_hidden", *MODEL_FIELDS})
    if clash:
        raise ValueError(f"layer_configs: {', '.join(clash)} come from the stack's layers (set them in "
                         "StackedAutoencoder's layer_options), not from the fields")
    fields.setdefault("dtype", _dtype_name(stack))
    return [TrainConfig(n_hidden=layer.n_hidden, **options, **fields)
            for layer, options in zip(stack.layers, stack.layer_options())]


# ------------------------------------------------------------------------- pretraining


def _dtype_name(stack: StackedAutoencoder) -> str:
    """The stack's parameter dtype as :class:`~pyae.config.TrainConfig` names it."""
    dtype = stack.layers[0].encoder.weight.dtype
    return next(name for name, value in DTYPES.items() if value == dtype)


def _check_configs(stack: StackedAutoencoder, configs) -> List[TrainConfig]:
    if isinstance(configs, TrainConfig) or not isinstance(configs, Sequence):
        raise TypeError(f"configs must be a list of one TrainConfig per layer, got {type(configs).__name__} "
                        "(pyae.stacked.layer_configs builds it)")
    if len(configs) != stack.n_layers:
        raise ValueError(f"configs must hold one TrainConfig per layer ({stack.n_layers}), got {len(configs)}")
    for k, (config, layer) in enumerate(zip(configs, stack.layers)):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"configs[{k}] must be a TrainConfig, got {type(config).__name__}")
        if config.n_hidden != layer.n_hidden:
            raise ValueError(
                f"configs[{k}].n_hidden={config.n_hidden} does not match layer_sizes[{k}]={layer.n_hidden}"
            )
        if config.torch_dtype != layer.encoder.weight.dtype:
            raise ValueError(f"configs[{k}].dtype={config.dtype!r} differs from the stack's parameters "
                             f"({layer.encoder.weight.dtype}); pyae.stacked.layer_configs builds matching configs")
        for name in MODEL_FIELDS:
            if getattr(config, name) != getattr(layer, name):
                raise ValueError(
                    f"configs[{k}].{name}={getattr(config, name)!r} differs from the stack's layer {k} "
                    f"({getattr(layer, name)!r}); pyae.stacked.layer_configs builds matching configs"
                )
    return list(configs)


@torch.no_grad()
def _encode_layer(layer: Autoencoder, x: Tensor) -> Tensor:
    """``layer``'s clean code of ``x`` (moved to the layer's device and dtype), in chunks."""
    weight = layer.encoder.weight
    return torch.cat([layer.encode(chunk.to(device=weight.device, dtype=weight.dtype))
                      for chunk in x.split(_CHUNK)])


def pretrain(
    stack: StackedAutoencoder,
    images: Tensor,
    configs: Sequence[TrainConfig],
    *,
    validation: Optional[Tensor] = None,
    checkpoint_dir: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[int, int, int, Any], None]] = None,
) -> List[Dict[str, List[float]]]:
    """Greedy layer-wise pretraining: train each layer of ``stack`` in turn, bottom first.

    Layer ``k`` is trained by :func:`pyae.training.train` with ``configs[k]`` on the clean
    codes of the (already trained) layers ``0 .. k-1`` of ``images``; its own corruption
    (``noise``) is applied by the layer to its input, as in the stacked denoising
    autoencoder. The trained weights replace the layer's (its initial ones do not matter:
    :func:`~pyae.training.train` initializes from ``configs[k].seed``); with early stopping
    the layer keeps the model :func:`~pyae.training.train` returns (the last epoch's).

    Args:
        stack: the stack to train, in place.
        images: ``(N, n_inputs)`` training inputs (in [0, 1] for ``loss="cross_entropy"``).
        configs: one :class:`~pyae.config.TrainConfig` per layer; its ``n_hidden`` and model
            options must be the layer's (:func:`layer_configs` builds them).
        validation: ``(M, n_inputs)`` held-out inputs: their codes are each layer's validation
            set (for ``configs[k].early_stopping``); or use ``configs[k].val_fraction``.
        checkpoint_dir: where :func:`~pyae.training.train` writes ``layer{k}.pt`` (and
            ``layer{k}.best.pt`` with validation) after every epoch of layer ``k``. None: none.
        resume: continue from ``checkpoint_dir``: a layer whose checkpoint is complete (all its
            epochs, or stopped early) is loaded, not trained; a partly trained one continues
            bitwise-reproducibly (``train(resume=True)``); the others train from scratch. A
            layer's checkpoint above one that trains further in this call is refused (it was
            trained on other codes).
        progress: a progress line per layer and :func:`~pyae.training.train`'s progress.
        callback: ``callback(layer, epoch, step, output)`` after every optimizer step
            (:func:`~pyae.training.train`'s callback with the layer index in front).

    Returns:
        The per-layer histories (:func:`~pyae.training.train`'s), bottom first; a loaded
        layer's is its checkpoint's.

    Raises:
        TypeError, ValueError: bad arguments (naming them), or a checkpoint that does not
            belong to this stack, these configs or these codes.
        KeyboardInterrupt: propagated; every completed epoch's checkpoint is kept.
    """
    if not isinstance(stack, StackedAutoencoder):
        raise TypeError(f"stack must be a StackedAutoencoder, got {type(stack).__name__}")
    configs = _check_configs(stack, configs)
    _check_examples(images, "images", stack.n_inputs)
    if validation is not None:
        _check_examples(validation, "validation", stack.n_inputs)
    check_bool(resume, "resume")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir to resume from")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    from pyae.training import _checkpoint_to_resume, stopped_early, train

    directory = None if checkpoint_dir is None else Path(os.fspath(checkpoint_dir))
    histories: List[Dict[str, List[float]]] = []
    codes, validation_codes = images, validation
    trained_below = None  # the first layer that trained in this call
    for k, (layer, config) in enumerate(zip(stack.layers, configs)):
        path = None if directory is None else directory / f"layer{k}.pt"
        checkpoint = None
        codes_digest = _digest(codes) if directory is not None else None  # what layer k trains on
        if resume and path.exists():
            if trained_below is not None:
                raise ValueError(
                    f"cannot resume {str(path)!r}: it was trained on the codes of layer {trained_below}, which has "
                    f"trained further in this run; remove it (and the layers above) to retrain it"
                )
            checkpoint = _checkpoint_to_resume(config, codes, path)
            stored = checkpoint.extra.get("stacked", {})
            if isinstance(stored, Mapping) and stored.get("layer", k) != k:
                raise ValueError(f"cannot resume {str(path)!r}: it holds layer {stored.get('layer')}, not layer {k}")
            if isinstance(stored, Mapping) and stored.get("codes", codes_digest) != codes_digest:
                # Also across calls: a lower layer that trained further, or other images.
                raise ValueError(
                    f"cannot resume {str(path)!r}: it was trained on other inputs (other images, or codes of a "
                    f"layer below that has trained since); remove it (and the layers above) to retrain it"
                )
        extra = {"stacked": {"layer": k, "n_inputs": stack.n_inputs, "layer_sizes": list(stack.layer_sizes),
                             "codes": codes_digest}}
        if checkpoint is not None and (checkpoint.epoch >= config.epochs
                                       or stopped_early(checkpoint.history, config.early_stopping)):
            if progress:
                print(f"layer {k + 1}/{stack.n_layers}: loaded {path} ({checkpoint.epoch} epochs)", file=sys.stderr)
            model = model_from_checkpoint(checkpoint)
            history = {name: list(values) for name, values in checkpoint.history.items()}
            history["epoch"] = [int(e) for e in history.get("epoch", [])]
        else:
            if progress:
                print(f"pretraining layer {k + 1}/{stack.n_layers}: {layer.n_inputs} -> {layer.n_hidden} units, "
                      f"{config.epochs} epochs", file=sys.stderr, flush=True)
            layer_callback = None if callback is None else functools.partial(callback, k)
            model, history = train(config, codes, validation=validation_codes, checkpoint_path=path,
                                   resume=checkpoint is not None, progress=progress, callback=layer_callback,
                                   extra=extra)
            trained_below = k
        layer.load_state_dict(model.state_dict())
        histories.append(history)
        if k + 1 < stack.n_layers:
            codes = _encode_layer(layer, codes)
            validation_codes = None if validation_codes is None else _encode_layer(layer, validation_codes)
    stack.eval()
    return histories


# -------------------------------------------------------------------------- classifier


class StackedClassifier(nn.Module):
    """A stack's deep encoder with a softmax layer on top: ``logits = V h_L + c``.

    The output layer starts at zero (weights and bias), as in the stacked denoising
    autoencoder's fine-tuning: the start is fixed, with no random draw (its first steps
    then train the output layer alone: the encoders' gradient passes through ``V``).

    Args:
        stack: the (pretrained, or freshly initialized) :class:`StackedAutoencoder`; it is
            a submodule, trained in place by :func:`finetune`.
        n_classes: the number of classes (>= 2).

    Example::

        classifier = pyae.StackedClassifier(stack, n_classes=10)
        logits = classifier(x)                  # (B, 10)
        classifier.accuracy(test_x, test_y)     # a float in [0, 1]
    """

    def __init__(self, stack: StackedAutoencoder, n_classes: int = 10) -> None:
        super().__init__()
        if not isinstance(stack, StackedAutoencoder):
            raise TypeError(f"stack must be a StackedAutoencoder, got {type(stack).__name__}")
        n_classes = check_int(n_classes, "n_classes", 2)
        weight = stack.layers[-1].encoder.weight
        self.stack = stack
        self.n_classes = n_classes
        self.output = nn.Linear(stack.n_outputs, n_classes, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.output.weight.zero_()
            self.output.bias.zero_()

    @property
    def n_inputs(self) -> int:
        """The number of input features."""
        return self.stack.n_inputs

    def forward(self, x: Tensor) -> Tensor:
        """The class logits ``(B, n_classes)`` of the clean input ``x`` ``(B, n_inputs)``."""
        return self.output(self.stack.encode(x))

    def logits_and_encodings(self, x: Tensor) -> Tuple[Tensor, List[EncoderOutput]]:
        """The logits and every layer's :class:`pyae.EncoderOutput` (for the penalties)."""
        outputs = self.stack.encoder_outputs(x)
        return self.output(outputs[-1].hidden), outputs

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """The most likely class of every example, ``(B,)`` int64 (in chunks, no gradient)."""
        _check_examples(x, "x", self.n_inputs)
        weight = self.output.weight
        return torch.cat([self(chunk.to(device=weight.device, dtype=weight.dtype)).argmax(1).cpu()
                          for chunk in x.split(_CHUNK)])

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """The fraction of ``images`` whose predicted class is ``labels``."""
        _check_examples(images, "images", self.n_inputs)
        _check_labels(labels, "labels", images.shape[0], self.n_classes)
        return float((self.predict(images) == labels.cpu()).double().mean())


# ------------------------------------------------------------------------- fine-tuning


@dataclasses.dataclass
class _FinetuneSettings:
    """What determines a fine-tuning run (stored in its checkpoint)."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    val_fraction: float
    patience: Optional[int]
    monitor: str
    contractive_weight: List[float]
    sparsity_weight: List[float]
    sparsity_target: List[Optional[float]]
    seed: int


def _digest(*tensors: Optional[Tensor]) -> str:
    """A SHA-256 of the tensors' shapes, dtypes and bytes: tells whether a resumed run has
    the same data."""
    hasher = hashlib.sha256()
    for t in tensors:
        if t is None:
            hasher.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        hasher.update(f"{t.dtype}{tuple(t.shape)}".encode())
        hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _split(images: Tensor, labels: Tensor, fraction: float, seed: int):
    """``fraction`` of the examples held out (drawn with ``seed``, both parts in order)."""
    keep, out = split_rows(images.shape[0], held_out_count(fraction, images.shape[0]),
                           generator=torch.Generator().manual_seed(seed))
    return images[keep], labels[keep], images[out], labels[out]


def _state_copy(module: nn.Module) -> Dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in module.state_dict().items()}


def finetune(
    classifier: StackedClassifier,
    images: Tensor,
    labels: Tensor,
    *,
    epochs: int = 50,
    batch_size: int = 20,
    lr: float = 0.1,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    val_fraction: float = 0.0,
    validation: Optional[Tuple[Tensor, Tensor]] = None,
    patience: Optional[int] = None,
    monitor: str = "accuracy",
    contractive_weight: Union[float, Sequence[float]] = 0.0,
    sparsity_weight: Union[float, Sequence[float]] = 0.0,
    sparsity_target: Optional[float] = None,
    seed: int = 0,
    checkpoint_path: Optional[PathLike] = None,
    resume: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[int, int, Tensor], None]] = None,
) -> Dict[str, Any]:
    """Supervised fine-tuning: train the whole classifier (every encoder and the softmax
    layer) on labelled examples with mini-batch SGD or Adam.

    The loss of a batch is the mean cross-entropy of its logits, plus, when asked, each
    layer's own regularizer kept as a penalty: ``contractive_weight[k]`` times layer ``k``'s
    contractive term (the batch mean of ``||dh_k/dh_{k-1}||_F^2``) and ``sparsity_weight[k]``
    times its KL sparsity term (the batch's mean activations against the target), both out
    of the fused encoder. No corruption: fine-tuning sees the clean inputs. The layers' other
    options (noise, weight decay, their own sparsity and contractive weights) served their
    pretraining; fine-tuning uses only the penalties given here.

    Each epoch visits the training examples in an order drawn from a ``torch.Generator``
    seeded with ``seed``; nothing else is random, so a run is determined by its arguments
    and the classifier's starting weights. After every epoch the validation loss and
    accuracy are measured (in eval mode) and a checkpoint is written atomically: the model,
    the optimizer, the generator states, the history and the best epoch's weights, so that
    ``resume=True`` continues bitwise equal on the CPU to a run that never stopped.

    Args:
        classifier: the :class:`StackedClassifier` to train, in place.
        images: ``(N, n_inputs)`` training inputs.
        labels: ``(N,)`` integer classes in ``0 .. n_classes - 1``.
        epochs: the most passes over the training examples (>= 1).
        batch_size: examples per step (>= 1); an epoch's last, smaller batch is kept.
        lr: the learning rate (> 0).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD's momentum in [0, 1).
        val_fraction: hold out this fraction of the examples (drawn with ``seed``) for
            validation, in [0, 1). Not with ``validation``.
        validation: ``(images, labels)`` held out for validation, instead of ``val_fraction``.
        patience: stop when the monitored validation metric has not improved for this many
            epochs (>= 1; needs validation data). None: run all ``epochs``.
        monitor: ``"accuracy"`` (higher is better; equal accuracies are ranked by the
            validation loss) or ``"loss"`` (the mean validation cross-entropy, lower is better):
            what picks the best epoch and drives ``patience``.
        contractive_weight: ``>= 0``, one number for every layer or one per layer.
        sparsity_weight: ``>= 0``, likewise; a layer with a weight > 0 needs a target.
        sparsity_target: the KL target in (0, 1) for every layer; None: each layer's own
            ``sparsity_target`` (from its :class:`pyae.Autoencoder` options).
        seed: seeds the shuffling and the ``val_fraction`` split (>= 0).
        checkpoint_path: where to write the checkpoint after every epoch; None: none.
        resume: continue the run stored at ``checkpoint_path``: its settings must be these
            (only ``epochs`` and ``patience`` may change) and its data the same; the
            classifier's weights are replaced by the stored ones.
        progress: a tqdm bar (per-epoch lines on stderr without tqdm); False: silent.
        callback: ``callback(epoch, step, loss)`` after every optimizer step (``epoch`` from 1,
            ``step`` from 0); an exception it raises stops the run (the last checkpoint stays).

    Returns:
        The history, a dict: per-epoch lists ``"epoch"``, ``"loss"`` (the mean training loss
        per example, penalties included), ``"cross_entropy"``, ``"train_accuracy"`` (of the
        batches as they were trained), ``"seconds"``; ``"contractive"`` (the unweighted sum over
        all layers) and ``"sparsity"`` (the unweighted sum over the layers with a sparsity
        weight, the only ones with a target) when used; with validation ``"val_loss"`` and
        ``"val_accuracy"``. Scalars: ``"best_epoch"`` (the epoch whose weights the classifier
        ends with: with validation data the best by ``monitor``, else the last), and
        ``"stopped_early"``. With validation data the classifier ends with the best epoch's
        weights; a resumed run's history covers the earlier epochs too.

    Raises:
        TypeError, ValueError: bad arguments (naming them); ``resume`` without a checkpoint,
            or with one of another run.
        FloatingPointError: the loss became NaN or infinite (lower ``lr``).
        KeyboardInterrupt: propagated; the last complete epoch's checkpoint is kept.
    """
    if not isinstance(classifier, StackedClassifier):
        raise TypeError(f"classifier must be a StackedClassifier, got {type(classifier).__name__}")
    n_layers = classifier.stack.n_layers
    settings = _FinetuneSettings(
        epochs=check_int(epochs, "epochs", 1),
        batch_size=check_int(batch_size, "batch_size", 1),
        lr=check_number(lr, "lr", positive=True),
        optimizer=check_choice(optimizer, "optimizer", OPTIMIZERS),
        momentum=check_number(momentum, "momentum", below_one=True),
        val_fraction=check_number(val_fraction, "val_fraction", below_one=True),
        patience=None if patience is None else check_int(patience, "patience", 1),
        monitor=check_choice(monitor, "monitor", MONITORS),
        contractive_weight=_per_layer(contractive_weight, "contractive_weight", n_layers),
        sparsity_weight=_per_layer(sparsity_weight, "sparsity_weight", n_layers),
        sparsity_target=[],
        seed=check_int(seed, "seed", 0),
    )
    if sparsity_target is not None:
        sparsity_target = check_probability(sparsity_target, "sparsity_target", closed=False)
    for k, (weight, layer) in enumerate(zip(settings.sparsity_weight, classifier.stack.layers)):
        target = sparsity_target if sparsity_target is not None else layer.sparsity_target
        if weight > 0 and target is None:
            raise ValueError(f"sparsity_weight for layer {k} is > 0 but there is no target: pass sparsity_target "
                             "or give the layer a sparsity_target")
        settings.sparsity_target.append(target if weight > 0 else None)
    check_bool(resume, "resume")
    if resume and checkpoint_path is None:
        raise ValueError("resume=True needs a checkpoint_path to resume from")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    _check_examples(images, "images", classifier.n_inputs)
    _check_labels(labels, "labels", images.shape[0], classifier.n_classes)
    if validation is not None:
        if settings.val_fraction > 0.0:
            raise ValueError("give either validation=(images, labels) or val_fraction > 0, not both")
        if not isinstance(validation, (tuple, list)) or len(validation) != 2:
            raise TypeError("validation must be a pair (images, labels)")
        val_x, val_y = validation
        _check_examples(val_x, "validation images", classifier.n_inputs)
        _check_labels(val_y, "validation labels", val_x.shape[0], classifier.n_classes)
        train_x, train_y = images, labels
    elif settings.val_fraction > 0.0:
        train_x, train_y, val_x, val_y = _split(images, labels, settings.val_fraction, settings.seed)
    else:
        train_x, train_y, val_x, val_y = images, labels, None, None
    if settings.patience is not None and val_x is None:
        raise ValueError("patience needs validation data (val_fraction > 0, or validation=(images, labels))")
    # What a resumed run must train on: the data as given (the split follows from the settings).
    digest = _digest(images, labels, *(validation if validation is not None else (None, None)))

    run = _Finetune(classifier, settings, train_x, train_y, val_x, val_y, digest)
    if resume:
        run.restore(checkpoint_path)
    return run.fit(checkpoint_path, progress, callback)


class _Finetune:
    """A fine-tuning run in progress."""

    def __init__(self, classifier: StackedClassifier, settings: _FinetuneSettings, train_x, train_y, val_x, val_y,
                 digest: str) -> None:
        weight = classifier.output.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.classifier = classifier
        self.settings = settings
        self.digest = digest
        on_device = lambda t, dtype: None if t is None else t.detach().to(device=self.device, dtype=dtype)  # noqa: E731
        self.train_x, self.train_y = on_device(train_x, self.dtype), on_device(train_y, torch.int64)
        self.val_x, self.val_y = on_device(val_x, self.dtype), on_device(val_y, torch.int64)
        parameters = classifier.parameters()
        if settings.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum)
        else:
            self.optimizer = torch.optim.Adam(parameters, lr=settings.lr)
        self.generators = {"shuffle": torch.Generator(device=self.device).manual_seed(settings.seed)}
        self.start_epoch = 0
        self.history: Dict[str, List[float]] = {}
        self.best_epoch: Optional[int] = None
        self.best_key: Optional[Tuple[float, float]] = None
        self.best_state: Optional[Dict[str, Tensor]] = None
        self.architecture = {"n_inputs": classifier.n_inputs, "layer_sizes": list(classifier.stack.layer_sizes),
                             "n_classes": classifier.n_classes}

    # -------------------------------------------------------------- checkpoints
    def _settings_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.settings)

    def save(self, path: PathLike, epoch: int) -> None:
        payload = {
            "format": FINETUNE_FORMAT,
            "version": _FINETUNE_VERSION,
            "pyae_version": pyae.__version__,
            "epoch": epoch,
            "settings": self._settings_dict(),
            "architecture": self.architecture,
            "data_sha256": self.digest,
            "model": _cpu_state(self.classifier.state_dict()),
            "optimizer": _cpu_state(self.optimizer.state_dict()),
            "rng_state": _cpu_state(rng_state(self.generators, self.device)),
            "history": {name: list(map(float, values)) for name, values in self.history.items()},
            "best_epoch": self.best_epoch,
            "best_key": None if self.best_key is None else list(self.best_key),
            "best_model": None if self.best_state is None else _cpu_state(self.best_state),
        }
        with atomic_write(Path(os.fspath(path)), "wb") as f:
            torch.save(payload, f)

    def restore(self, path: PathLike) -> None:
        path = os.fspath(path)
        data = load_finetune_checkpoint(path)
        stored, wanted = data["settings"], self._settings_dict()
        differing = [k for k in wanted if k not in FINETUNE_RESUMABLE and wanted[k] != stored.get(k)]
        if differing:
            details = ", ".join(f"{k}={wanted[k]!r} (checkpoint: {stored.get(k)!r})" for k in differing)
            raise ValueError(f"cannot resume {path!r} with different settings: {details}")
        if data["architecture"] != self.architecture:
            raise ValueError(f"cannot resume {path!r}: it holds a classifier {data['architecture']}, "
                             f"this one is {self.architecture}")
        if data["data_sha256"] != self.digest:
            raise ValueError(f"cannot resume {path!r}: the images, labels or validation data differ from its run's")
        try:
            self.classifier.load_state_dict(data["model"])
            self.optimizer.load_state_dict(data["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"cannot resume from {path!r}: {err}") from err
        self.start_epoch = data["epoch"]
        if not restore_rng_state(data["rng_state"], self.generators, self.device):
            warnings.warn(
                f"resuming fine-tuning checkpointed on {data['rng_state'].get('device_type')!r} on "
                f"{self.device.type!r}: the order of the examples from here on is reproducible but differs from an "
                "uninterrupted run", RuntimeWarning, stacklevel=3)
            self.generators["shuffle"].manual_seed((self.settings.seed + 1_000_003 * self.start_epoch) % 2**64)
        self.history = {name: list(values) for name, values in data["history"].items()}
        self.best_epoch = data["best_epoch"]
        self.best_key = None if data["best_key"] is None else tuple(data["best_key"])
        self.best_state = None if data["best_model"] is None else {
            name: t.to(device=self.device) for name, t in data["best_model"].items()}

    # ------------------------------------------------------------------- epochs
    def _loss(self, x: Tensor, y: Tensor):
        settings = self.settings
        logits, encoded = self.classifier.logits_and_encodings(x)
        cross_entropy = F.cross_entropy(logits, y)
        loss, terms = cross_entropy, {"cross_entropy": cross_entropy}
        if any(settings.contractive_weight):
            contractive = [out.contractive for out in encoded]
            terms["contractive"] = torch.stack(contractive).sum()
            for weight, term in zip(settings.contractive_weight, contractive):
                if weight > 0:
                    loss = torch.add(loss, term, alpha=weight)
        if any(settings.sparsity_weight):
            sparsity = [PF.kl_sparsity(out.mean_activation, target) for out, target, weight
                        in zip(encoded, settings.sparsity_target, settings.sparsity_weight) if weight > 0]
            terms["sparsity"] = torch.stack(sparsity).sum()
            for weight, term in zip((w for w in settings.sparsity_weight if w > 0), sparsity):
                loss = torch.add(loss, term, alpha=weight)
        return loss, logits, terms

    def train_epoch(self, epoch: int, bar, callback) -> Dict[str, float]:
        settings, n = self.settings, self.train_x.shape[0]
        order = torch.randperm(n, generator=self.generators["shuffle"], device=self.device)
        epoch_x, epoch_y = self.train_x.index_select(0, order), self.train_y.index_select(0, order)
        sums, names = None, None
        self.classifier.train()
        for step, begin in enumerate(range(0, n, settings.batch_size)):
            x, y = epoch_x[begin:begin + settings.batch_size], epoch_y[begin:begin + settings.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss, logits, terms = self._loss(x, y)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                correct = (logits.argmax(1) == y).sum().to(torch.float64)
                values = torch.stack([loss.detach().double() * x.shape[0], correct,
                                      *(t.detach().double() * x.shape[0] for t in terms.values())])
                if sums is None:
                    sums, names = values, ["loss", "train_accuracy", *terms]
                else:
                    sums.add_(values)
            bar.step()
            if callback is not None:
                callback(epoch, step, loss)
        metrics = dict(zip(names, (sums / n).tolist()))
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"fine-tuning diverged in epoch {epoch}: {metrics}; lower the learning rate "
                                     f"(lr={settings.lr})")
        return metrics

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        if self.val_x is None:
            return {}
        self.classifier.eval()
        loss, correct = 0.0, 0.0
        for x, y in zip(self.val_x.split(_CHUNK), self.val_y.split(_CHUNK)):
            logits = self.classifier(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
        n = self.val_x.shape[0]
        return {"val_loss": loss / n, "val_accuracy": correct / n}

    def _stops(self, last_epoch: int) -> bool:
        patience = self.settings.patience
        return patience is not None and self.best_epoch is not None and last_epoch - self.best_epoch >= patience

    def fit(self, checkpoint_path: Optional[PathLike], progress: bool, callback) -> Dict[str, Any]:
        from pyae.training import _Progress

        settings = self.settings
        steps = math.ceil(self.train_x.shape[0] / settings.batch_size)
        bar = _Progress(progress, settings.epochs * steps, min(self.start_epoch, settings.epochs) * steps,
                        settings.epochs)
        try:
            for epoch in range(self.start_epoch + 1, settings.epochs + 1):
                if self._stops(epoch - 1):
                    break
                started = time.perf_counter()
                bar.begin(epoch)
                metrics = self.train_epoch(epoch, bar, callback)
                seconds = time.perf_counter() - started
                metrics.update(self.validate())
                self.history.setdefault("epoch", []).append(float(epoch))
                for name, value in metrics.items():
                    self.history.setdefault(name, []).append(value)
                self.history.setdefault("seconds", []).append(seconds)
                if "val_accuracy" in metrics:
                    key = ((metrics["val_accuracy"], -metrics["val_loss"]) if settings.monitor == "accuracy"
                           else (-metrics["val_loss"], metrics["val_accuracy"]))
                    if self.best_key is None or key > self.best_key:
                        self.best_key, self.best_epoch = key, epoch
                        self.best_state = _state_copy(self.classifier)
                if checkpoint_path is not None:
                    self.save(checkpoint_path, epoch)
                bar.epoch(epoch, metrics, seconds)
        finally:
            bar.close()
        if self.best_state is not None:
            self.classifier.load_state_dict(self.best_state)
        self.classifier.eval()
        history: Dict[str, Any] = {name: list(values) for name, values in self.history.items()}
        history["epoch"] = [int(e) for e in history.get("epoch", [])]
        last = history["epoch"][-1] if history["epoch"] else 0
        history["best_epoch"] = self.best_epoch if self.best_epoch is not None else last
        # Stopped before its last epoch because the monitored metric had stopped improving.
        history["stopped_early"] = last < settings.epochs and self._stops(last)
        return history


def load_finetune_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read a fine-tuning checkpoint written by :func:`finetune` (``torch.load`` with
    ``weights_only=True``: it can hold no code).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: it is not a readable fine-tuning checkpoint of a version this pyae reads.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"fine-tuning checkpoint {path!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - corrupt, truncated, foreign
        raise ValueError(f"{path!r} is not a readable pyae fine-tuning checkpoint: {type(err).__name__}") from err
    if not isinstance(data, dict) or data.get("format") != FINETUNE_FORMAT:
        raise ValueError(f"{path!r} is not a pyae fine-tuning checkpoint (no 'format': {FINETUNE_FORMAT!r})")
    if not isinstance(data.get("version"), int) or not 1 <= data["version"] <= _FINETUNE_VERSION:
        raise ValueError(f"{path!r}: fine-tuning checkpoint version {data.get('version')!r} is not supported")
    return data
