"""The ``pyae`` command: ``train``, ``encode``, ``filters``, ``experiment`` and ``stack``
(``stack pretrain``, ``stack finetune``).

Every failure that comes from the user's input (an unknown option, a value the library
rejects, a missing or corrupt checkpoint, a bad data directory, a CUDA device that is not
there) ends in one line ``pyae: error: ...`` on stderr and exit status 2, never a
traceback. Ctrl-C during training exits with 130 and says how to resume. Set
``PYAE_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.distributed as dist

from pyae import __version__, distributed
from pyae._atomic import atomic_write
from pyae.checkpoint import load_checkpoint, model_from_checkpoint
from pyae.config import DTYPES, MIXED_PRECISION, OPTIMIZERS, RESUMABLE_FIELDS, TrainConfig, resolve_device
from pyae.data import apply_minmax, load_examples, load_mnist, minmax_range, random_subset
from pyae.experiments._common import torch_threads
from pyae.training import train
from pyae.validation import DECODER_ACTIVATIONS, RECONSTRUCTION_LOSSES

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

CHECKPOINT_NAME = "checkpoint.pt"
# The data options of a training run, stored with its checkpoint (a resumed run trains on
# the same data).
_DATA_SETTINGS = ("data", "data_key", "limit", "val", "scale")
# The modules of pyae.experiments that `pyae experiment NAME` runs.
EXPERIMENTS = ("mnist", "selection", "contractive", "patches", "deep")
_CONFIG_FIELDS = frozenset(TrainConfig.__dataclass_fields__)


class CLIError(Exception):
    """A user error: printed as ``pyae: error: <message>``, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing the usage and exiting, so that every
    error ends in the same single line."""

    def error(self, message: str):  # type: ignore[override]
        raise CLIError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------- types


def _int_at_least(minimum: int, description: str):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {description}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _noise(text: str) -> Optional[str]:
    if text not in ("none", "mask", "gaussian"):
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from 'none', 'mask', 'gaussian')")
    return None if text == "none" else text


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pyae`` command (exposed for documentation tools)."""
    parser = _Parser(
        prog="pyae",
        allow_abbrev=False,
        description="Regularized autoencoders (denoising, sparse, contractive) on MNIST.",
        epilog="Run 'pyae COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"pyae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    shared = _shared_options()
    _add_train_parser(commands, shared)
    _add_filters_parser(commands)
    _add_encode_parser(commands)
    _add_experiment_parser(commands, shared)
    _add_stack_parser(commands, shared)
    return parser


def _shared_options() -> argparse.ArgumentParser:
    """The options train and experiment share. Left out, an option is absent from the
    namespace (default=SUPPRESS): train tells "given" from "default" that way (--resume
    needs it); each command sets its own defaults."""
    shared = _Parser(add_help=False, allow_abbrev=False)
    shared.add_argument("--out", required=True, metavar="DIR", help="output directory")
    shared.add_argument("--device", default=argparse.SUPPRESS, metavar="{auto,cpu,cuda}",
                        help="where to train: auto (a GPU if there is one), cpu, cuda or cuda:N (default auto)")
    shared.add_argument("--data", metavar="PATH", default=argparse.SUPPRESS,
                        help="a directory of the standard MNIST IDX files (default: the embedded subset); train also "
                             "takes a .npy, .npz, .csv or .pt file of shape (examples, features)")
    shared.add_argument("--seed", type=_non_negative_int, default=argparse.SUPPRESS,
                        help="seed of the initialization, shuffling and noise (default 0)")
    shared.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    shared.add_argument("--quiet", action="store_true", help="no progress output")
    return shared


def _add_train_parser(commands, shared: argparse.ArgumentParser) -> None:
    train_parser = commands.add_parser(
        "train",
        parents=[shared],
        allow_abbrev=False,
        help="train an autoencoder on MNIST or your own data, checkpointing every epoch",
        description=(
            "Train an autoencoder on MNIST (the embedded 5,000 training digits unless --data is "
            f"given). DIR/{CHECKPOINT_NAME} is written atomically after every epoch; Ctrl-C keeps the "
            "last one, and --resume continues it bitwise-reproducibly. Options left out take the "
            "defaults shown (with --resume: the checkpoint's values)."
        ),
    )
    resume = train_parser.add_argument("--resume", action="store_true")
    defaults = TrainConfig()
    _add_data_options(train_parser.add_argument_group("data"))
    # The options below set the TrainConfig field named by their dest; their defaults are
    # TrainConfig's.
    _add_model_options(train_parser.add_argument_group("model (pyae.Autoencoder keywords)"), defaults)
    _add_optimization_options(train_parser.add_argument_group("optimization"), defaults)
    held_out = train_parser.add_argument_group("held-out monitoring")
    held_out.add_argument("--val", metavar="PATH", default=argparse.SUPPRESS,
                          help="validation examples (a file or MNIST directory as for --data), measured every epoch")
    _option(held_out, "--val-fraction", type=_finite_float, metavar="F",
            help="hold out this fraction of the training examples for validation instead (default 0)")
    _option(held_out, "--early-stopping", type=_positive_int, metavar="EPOCHS",
            help="stop when the validation loss has not improved for this many epochs; "
                 "the best epoch's checkpoint is kept as checkpoint.best.pt")
    resumable = ", ".join(_option_of(train_parser, field) for field in RESUMABLE_FIELDS)
    resume.help = f"continue the run in DIR/{CHECKPOINT_NAME}; only {resumable} may change"
    train_parser.set_defaults(handler=_cmd_train, parser=train_parser)


def _option(group, *names, **kwargs) -> None:
    """An option left out of the namespace when not given (default=SUPPRESS)."""
    group.add_argument(*names, default=argparse.SUPPRESS, **kwargs)


def _add_data_options(group) -> None:
    _option(group, "--data-key", metavar="NAME", help="the array to read from a .npz or .pt file holding several")
    _option(group, "--scale", choices=("minmax", "minmax-global"),
            help="rescale the inputs into [0, 1] (cross-entropy needs it): min-max per feature, or over the whole "
                 "array; taken from the training examples, applied to --val and by 'pyae encode'")
    _option(group, "--limit", type=_positive_int, metavar="N",
            help="train on a random subset of N examples (drawn with --seed)")


def _add_model_options(group, defaults: TrainConfig) -> None:
    _option(group, "--hidden", dest="n_hidden", type=_positive_int, metavar="K",
            help=f"hidden units (default {defaults.n_hidden})")
    _option(group, "--tied-weights", action=argparse.BooleanOptionalAction,
            help="decode with the encoder's transposed weight (default off)")
    _option(group, "--decoder-activation", choices=DECODER_ACTIVATIONS,
            help=f"decoder activation (default {defaults.decoder_activation})")
    _option(group, "--loss", choices=RECONSTRUCTION_LOSSES, help=f"reconstruction loss (default {defaults.loss})")
    _option(group, "--weight-decay", type=_finite_float, metavar="LAMBDA",
            help="weight decay lambda on the weight matrices (default 0)")
    _option(group, "--noise", type=_noise, metavar="{none,mask,gaussian}",
            help="denoising corruption of the input (default none)")
    _option(group, "--noise-level", type=_finite_float, metavar="LEVEL",
            help="masking probability q, or the Gaussian noise's standard deviation (default 0)")
    _option(group, "--sparsity-target", type=_finite_float, metavar="RHO",
            help="target mean activation rho in (0, 1): enables the KL sparsity term")
    _option(group, "--sparsity-weight", type=_finite_float, metavar="BETA",
            help="weight beta of the KL sparsity term (default 0)")
    _option(group, "--contractive-weight", type=_finite_float, metavar="LAMBDA",
            help="weight of the contractive penalty (default 0)")


def _add_optimization_options(group, defaults: TrainConfig) -> None:
    _option(group, "--epochs", type=_positive_int, help=f"passes over the data (default {defaults.epochs})")
    _option(group, "--batch-size", type=_positive_int, help=f"examples per step (default {defaults.batch_size})")
    _option(group, "--lr", type=_finite_float, help=f"learning rate (default {defaults.lr:g})")
    _option(group, "--optimizer", choices=OPTIMIZERS, help=f"optimizer (default {defaults.optimizer})")
    _option(group, "--momentum", type=_finite_float, help=f"SGD momentum in [0, 1) (default {defaults.momentum:g})")
    _option(group, "--dtype", choices=tuple(DTYPES), help=f"parameter and data dtype (default {defaults.dtype})")
    _option(group, "--mixed-precision", choices=MIXED_PRECISION,
            help="train under torch.autocast in this dtype (float32 parameters and loss; float16 adds a "
                 "gradient scaler); default off")
    _option(group, "--cuda-graph", action=argparse.BooleanOptionalAction,
            help="run each step as one CUDA graph replay (CUDA only, one process; default off)")
    _option(group, "--fused-backward", action=argparse.BooleanOptionalAction,
            help="with SGD with momentum, put the weight gradients' products straight into the momentum "
                 "buffers (no weight-sized gradients; default on)")


def _add_filters_parser(commands) -> None:
    filters = commands.add_parser(
        "filters",
        allow_abbrev=False,
        help="draw a checkpoint's filters as a PNG grid",
        description="Draw the filters W_l/||W_l|| of a trained model as a grid of 28x28 tiles.",
    )
    filters.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by 'pyae train'")
    filters.add_argument("--out", metavar="PNG", default=None,
                         help="output file (default: filters.png next to the checkpoint)")
    filters.add_argument("--rows", type=_positive_int, default=None, help="grid rows (default 10)")
    filters.add_argument("--cols", type=_positive_int, default=None, help="grid columns (default 10)")
    filters.set_defaults(handler=_cmd_filters)


def _add_encode_parser(commands) -> None:
    encode = commands.add_parser(
        "encode",
        allow_abbrev=False,
        help="write a trained model's hidden representation of some data to a .npy file",
        description=(
            "Encode examples with a checkpoint's model (clean inputs, eval mode, in batches) and write the "
            "hidden representation, one row per example, to a .npy file any other tool can read. The input "
            "scaling the model was trained with (--scale) is applied."
        ),
    )
    encode.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by 'pyae train'")
    encode.add_argument("--data", metavar="PATH", default=None,
                        help="an MNIST IDX directory or a .npy, .npz, .csv or .pt file (default: the embedded MNIST)")
    encode.add_argument("--data-key", metavar="NAME", default=None, help="the array of a .npz or .pt file")
    encode.add_argument("--split", choices=("train", "test"), default="train",
                        help="which MNIST digits, for a directory or the embedded set (default train)")
    encode.add_argument("--out", required=True, metavar="NPY", help="output file (.npy)")
    encode.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="where to encode (default auto)")
    encode.add_argument("--batch-size", type=_positive_int, default=4096, help="examples per batch (default 4096)")
    encode.set_defaults(handler=_cmd_encode)


def _add_experiment_parser(commands, shared: argparse.ArgumentParser) -> None:
    experiment = commands.add_parser(
        "experiment",
        parents=[shared],
        allow_abbrev=False,
        help="the lecture's experiments (default: the MNIST comparison)",
        description=(
            "Run one of the lecture's experiments; each writes results.json, report.md and pictures to "
            "--out. mnist (the default): train the plain, denoising, sparse and contractive autoencoders "
            "on the 5,000 training digits, fit a logistic regression on each hidden representation and "
            "report its accuracy on the 10,000 test digits, next to raw pixels, with measures of the "
            "filters. selection: choose the mnist models' hidden units, epochs and regularizer strengths on "
            "validation digits held out of the training digits (under an hour on 2 CPU cores; rerun with the "
            "same --out to continue an interrupted search). contractive: the contractive autoencoder's "
            "sensitivity along and across the data (seconds). patches: denoising on natural image patches "
            "(minutes). deep: stacked denoising autoencoders, pretrained and fine-tuned."
        ),
    )
    experiment.add_argument("name", nargs="?", choices=EXPERIMENTS, default="mnist", metavar="NAME",
                            help=f"which experiment: {', '.join(EXPERIMENTS)} (default mnist)")
    experiment.add_argument("--quick", action="store_true",
                            help="a smoke run of seconds (small models, few epochs, data subsets)")
    # The shared options' defaults are read in _cmd_experiment: set_defaults here would change
    # the actions train shares, whose default must stay SUPPRESS.
    experiment.set_defaults(handler=_cmd_experiment)


# The stack command's files: in the pretraining directory, stack.json and layer{k}.pt (one
# pyae.training checkpoint per layer); in the fine-tuning directory, finetune.pt and finetune.json.
STACK_FILE = "stack.json"
FINETUNE_CHECKPOINT = "finetune.pt"
FINETUNE_FILE = "finetune.json"
# The settings of `pyae stack pretrain` and `pyae stack finetune` (what their options set
# when left out), stored in stack.json / finetune.json: a resumed stage reuses them.
_PRETRAIN_DEFAULTS: Dict[str, Any] = {
    "sizes": [500, 500], "noise": "mask", "noise_levels": [0.25], "loss": "cross_entropy", "epochs": 10,
    "batch_size": 20, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "data": None, "limit": None,
    "val_fraction": 0.2, "seed": 0, "device": "auto",
}
_FINETUNE_DEFAULTS: Dict[str, Any] = {
    "pretrained": None, "epochs": 50, "batch_size": 20, "lr": 0.1, "optimizer": "sgd", "momentum": 0.9,
    "patience": 10, "monitor": "accuracy", "contractive_weight": 0.0, "sparsity_weight": 0.0,
    "sparsity_target": None, "seed": 0, "device": "auto",
}
# What a resumed stage may change.
_PRETRAIN_RESUMABLE = ("device",)
_FINETUNE_RESUMABLE = ("epochs", "patience", "device")


def _int_list(text: str):
    """An argparse type: comma-separated positive integers."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _float_list(text: str):
    """An argparse type: comma-separated finite numbers."""
    try:
        return [_finite_float(part) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_stack_parser(commands, shared: argparse.ArgumentParser) -> None:
    stack = commands.add_parser(
        "stack",
        allow_abbrev=False,
        help="stacked denoising autoencoders: greedy layer-wise pretraining, then supervised fine-tuning",
        description=(
            "Two stages. 'pyae stack pretrain --out DIR' trains the layers of a stacked (denoising) "
            "autoencoder one after the other on the MNIST training digits, each on the codes of the "
            "layers below (DIR/layer0.pt, layer1.pt, ...: checkpointed every epoch, --resume continues). "
            "'pyae stack finetune --out DIR' then puts a softmax layer on top and trains the whole network "
            "on the digits' labels, with early stopping on the held-out digits (DIR/finetune.pt, "
            "finetune.json). Ctrl-C keeps the last epoch; --resume continues bitwise-reproducibly."
        ),
    )
    stages = stack.add_subparsers(dest="stage", metavar="STAGE", parser_class=_Parser)
    stages.required = True
    _add_stack_pretrain_parser(stages, shared)
    _add_stack_finetune_parser(stages, shared)


def _add_stack_pretrain_parser(stages, shared: argparse.ArgumentParser) -> None:
    d = _PRETRAIN_DEFAULTS
    pretrain = stages.add_parser(
        "pretrain",
        parents=[shared],
        allow_abbrev=False,
        help="train the layers one after the other (greedy layer-wise pretraining)",
        description=(
            "Greedy layer-wise pretraining on the MNIST training digits (the embedded 5,000 unless --data "
            "names an MNIST directory): layer k is a denoising autoencoder trained on the clean codes of "
            f"layers 0..k-1. Writes DIR/layer<k>.pt (every epoch) and DIR/{STACK_FILE}. A random --val-fraction "
            "of the digits is held out: never pretrained on, it is the validation set of "
            "'pyae stack finetune'. Options left out take the defaults shown (with --resume: the stored ones)."
        ),
    )
    pretrain.add_argument("--resume", action="store_true",
                          help=f"continue the run in DIR ({STACK_FILE}): completed layers are loaded, a partly "
                               "trained one continues; only --device may change")
    model = pretrain.add_argument_group("layers")
    _option(model, "--sizes", type=_int_list, metavar="K1,K2,...",
            help=f"hidden units of each layer, bottom first (default {','.join(map(str, d['sizes']))})")
    _option(model, "--noise", type=_noise, metavar="{none,mask,gaussian}",
            help=f"every layer's denoising corruption (default {d['noise']})")
    _option(model, "--noise-levels", type=_float_list, metavar="Q1,Q2,...",
            help="the noise level of every layer, or one per layer: masking probability q or Gaussian std "
                 f"(default {d['noise_levels'][0]:g})")
    _option(model, "--loss", choices=RECONSTRUCTION_LOSSES, help=f"reconstruction loss (default {d['loss']})")
    optimization = pretrain.add_argument_group("optimization (every layer)")
    _option(optimization, "--epochs", type=_positive_int, help=f"epochs per layer (default {d['epochs']})")
    _option(optimization, "--batch-size", type=_positive_int, help=f"examples per step (default {d['batch_size']})")
    _option(optimization, "--lr", type=_finite_float, help=f"learning rate (default {d['lr']:g})")
    _option(optimization, "--optimizer", choices=OPTIMIZERS, help=f"optimizer (default {d['optimizer']})")
    _option(optimization, "--momentum", type=_finite_float, help=f"SGD momentum (default {d['momentum']:g})")
    data = pretrain.add_argument_group("data")
    _option(data, "--limit", type=_positive_int, metavar="N",
            help="use a random subset of N training digits (drawn with --seed)")
    _option(data, "--val-fraction", type=_finite_float, metavar="F",
            help=f"hold out this fraction of the digits for validation (default {d['val_fraction']:g})")
    pretrain.set_defaults(handler=_cmd_stack_pretrain, parser=pretrain)


def _add_stack_finetune_parser(stages, shared: argparse.ArgumentParser) -> None:
    d = _FINETUNE_DEFAULTS
    finetune = stages.add_parser(
        "finetune",
        parents=[shared],
        allow_abbrev=False,
        help="put a softmax layer on a pretrained stack and train the whole network on labels",
        description=(
            "Supervised fine-tuning of a stack pretrained by 'pyae stack pretrain': a softmax layer on top, "
            "every layer trained on the labels of the same training digits, early stopping on the digits "
            f"pretraining held out. Writes DIR/{FINETUNE_CHECKPOINT} (every epoch) and DIR/{FINETUNE_FILE}; "
            "DIR may be the pretraining directory. --data and --seed of pretraining decide the digits."
        ),
    )
    finetune.add_argument("--resume", action="store_true",
                          help=f"continue the run in DIR/{FINETUNE_CHECKPOINT}; only --epochs, --patience, "
                               "--device may change")
    finetune.add_argument("--test", action="store_true",
                          help="also measure the accuracy on the 10,000 test digits (do not choose settings by it)")
    _option(finetune, "--pretrained", metavar="DIR",
            help="the directory of 'pyae stack pretrain' (default: --out)")
    optimization = finetune.add_argument_group("optimization")
    _option(optimization, "--epochs", type=_positive_int, help=f"most passes over the digits (default {d['epochs']})")
    _option(optimization, "--batch-size", type=_positive_int, help=f"examples per step (default {d['batch_size']})")
    _option(optimization, "--lr", type=_finite_float, help=f"learning rate (default {d['lr']:g})")
    _option(optimization, "--optimizer", choices=OPTIMIZERS, help=f"optimizer (default {d['optimizer']})")
    _option(optimization, "--momentum", type=_finite_float, help=f"SGD momentum (default {d['momentum']:g})")
    _option(optimization, "--patience", type=_positive_int, metavar="EPOCHS",
            help=f"stop when the validation {d['monitor']} has not improved for this many epochs and keep "
                 f"the best epoch (default {d['patience']}; needs held-out digits)")
    _option(optimization, "--monitor", choices=("accuracy", "loss"),
            help=f"the validation metric that picks the best epoch (default {d['monitor']})")
    _option(optimization, "--contractive-weight", type=_finite_float, metavar="LAMBDA",
            help="keep every layer's contractive penalty with this weight (default 0)")
    _option(optimization, "--sparsity-weight", type=_finite_float, metavar="BETA",
            help="add every layer's KL sparsity penalty with this weight (default 0; needs --sparsity-target)")
    _option(optimization, "--sparsity-target", type=_finite_float, metavar="RHO",
            help="the KL penalty's target mean activation rho in (0, 1), for every layer")
    finetune.set_defaults(handler=_cmd_stack_finetune, parser=finetune)


def _config_actions(parser: argparse.ArgumentParser):
    """The options of ``parser`` that set a TrainConfig field (dest == field)."""
    return [action for action in parser._actions if action.dest in _CONFIG_FIELDS and action.option_strings]


def _option_of(parser: argparse.ArgumentParser, field: str) -> str:
    """The command-line option that sets the TrainConfig field ``field``."""
    for action in _config_actions(parser):
        if action.dest == field:
            return action.option_strings[0]
    raise KeyError(field)


# --------------------------------------------------------------------------- helpers


def _word_config_error(parser: argparse.ArgumentParser, err: Exception) -> str:
    """Name the command-line option in a TrainConfig/Autoencoder validation message."""
    message = str(err)
    match = re.match(r"(\w+)", message)
    if match:
        try:
            return f"argument {_option_of(parser, match.group(1))}: {message}"
        except KeyError:
            pass
    return message


def _given_config_options(args) -> Dict[str, Any]:
    """The TrainConfig fields given on the command line (the others are absent from
    ``args``: their default is ``argparse.SUPPRESS``)."""
    return {field: value for field, value in vars(args).items() if field in _CONFIG_FIELDS}


def _read_examples(option: str, path: Optional[str], key: Optional[str], split: str = "train") -> torch.Tensor:
    """The examples at ``path`` (an MNIST directory or an array file), or the embedded MNIST."""
    try:
        if path is None:
            return load_mnist(None, split)[0]
        if os.path.isdir(path):
            if key is not None:
                raise CLIError(f"argument --data-key: {path!r} is an MNIST directory, which has no named arrays")
            return load_mnist(path, split)[0]
        return load_examples(path, key=key)
    except (OSError, ValueError) as err:
        raise CLIError(f"argument {option}: {err}") from err


def _load_training_data(settings: Dict[str, Any], seed: int):
    """(training examples, validation examples or None, the input scaling or None) as the
    data settings say: the examples (a random subset of ``limit`` of them, drawn with
    ``seed``), rescaled by the min-max ranges of the training examples."""
    images = _read_examples("--data", settings["data"], settings["data_key"])
    # A random subset, not the first N: the embedded digits are sorted by class.
    images = random_subset(settings["limit"], images, generator=torch.Generator().manual_seed(seed))[0]
    validation = None
    if settings["val"] is not None:
        validation = _read_examples("--val", settings["val"], settings["data_key"])
        if validation.shape[1] != images.shape[1]:
            raise CLIError(f"argument --val: {validation.shape[1]} features, the training data has {images.shape[1]}")
    scaling = None
    if settings["scale"] is not None:
        low, span = minmax_range(images, per_feature=settings["scale"] == "minmax")
        scaling = {"kind": settings["scale"], "low": low.tolist(), "span": span.tolist()}
        images = apply_minmax(images, low, span)
        validation = None if validation is None else apply_minmax(validation, low, span)
    return images, validation, scaling


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CLIError(f"argument --out: {str(out)!r} exists and is not a directory")


# --------------------------------------------------------------------------- commands


def _cmd_train(args) -> int:
    out = Path(args.out)
    _check_out_dir(out)
    checkpoint_path = out / CHECKPOINT_NAME
    data_settings = {name: getattr(args, name, None) for name in _DATA_SETTINGS}
    if args.resume:
        config, data_settings = _resumed_config(args, checkpoint_path, data_settings)
        if config is None:
            return EXIT_OK
    else:
        if checkpoint_path.exists():
            raise CLIError(
                f"{str(checkpoint_path)!r} already exists: pass --resume to continue that run, "
                "or choose another --out"
            )
        try:
            config = TrainConfig(**_given_config_options(args))
        except (TypeError, ValueError) as err:
            raise CLIError(_word_config_error(args.parser, err)) from err

    device = _train_device(args, config)
    rank_device = distributed.start_process_group(device)
    if rank_device is not None:
        device, config = rank_device, config.replace(device=str(rank_device))
    if config.early_stopping is not None and data_settings["val"] is None and config.val_fraction == 0.0:
        raise CLIError("argument --early-stopping: needs validation data: --val PATH or --val-fraction F")
    images, validation, scaling = _load_training_data(data_settings, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        extra = {"data_settings": data_settings, "input_scaling": scaling}
        status = _train_and_report(args, config, device, (images, validation), out, checkpoint_path, extra)
        if rank_device is not None:
            # Every rank done (rank 0 has written its files) before the group goes away. Only
            # on success: a rank that failed must not wait for the others, which torchrun stops.
            dist.barrier()
    finally:
        # main() may run inside a larger program (or a test): leave its settings as they were.
        torch.set_num_threads(previous_threads)
        if rank_device is not None:
            dist.destroy_process_group()
    if rank_device is not None:
        # A rank under torchrun ends here, its files written and its process group destroyed:
        # the gloo backend's teardown at interpreter exit now and then aborts a finished
        # process (std::terminate, exit -6) after a collective ran inside autograd's backward,
        # which torchrun would report as a failed run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _resumed_config(args, checkpoint_path: Path, data_settings: Dict[str, Any]):
    """(config, data settings) of the run to resume, or (None, ...) when it is complete."""
    if not checkpoint_path.exists():
        raise CLIError(f"--resume: there is no checkpoint at {str(checkpoint_path)!r} (start without --resume)")
    checkpoint = load_checkpoint(checkpoint_path)
    stored = checkpoint.config
    options = _given_config_options(args)
    for field, value in options.items():
        if field not in RESUMABLE_FIELDS and value != getattr(stored, field):
            resumable = ", ".join(_option_of(args.parser, f) for f in RESUMABLE_FIELDS)
            raise CLIError(
                f"argument {_option_of(args.parser, field)}: {value!r} differs from the checkpoint's "
                f"{getattr(stored, field)!r}; a resumed run keeps its settings (only {resumable} may change)"
            )
    # The data a run was trained on is part of the run. A checkpoint written by
    # pyae.training.train() directly has no record of it: then the options decide.
    stored_data = checkpoint.extra.get("data_settings")
    if isinstance(stored_data, dict):
        for key in _DATA_SETTINGS:
            if hasattr(args, key) and data_settings[key] != stored_data.get(key):
                raise CLIError(
                    f"argument --{key.replace('_', '-')}: {data_settings[key]!r} differs from the checkpoint's "
                    f"{stored_data.get(key)!r}; a resumed run trains on the same data"
                )
            data_settings[key] = stored_data.get(key)
    try:
        config = stored.replace(**{k: v for k, v in options.items() if k in RESUMABLE_FIELDS})
    except (TypeError, ValueError) as err:
        raise CLIError(_word_config_error(args.parser, err)) from err
    if checkpoint.epoch >= config.epochs:
        print(f"{checkpoint_path} already holds {checkpoint.epoch} epochs (--epochs {config.epochs}); "
              "pass a larger --epochs to train further")
        return None, data_settings
    return config, data_settings


def _train_device(args, config: TrainConfig) -> torch.device:
    try:
        device = resolve_device(config.device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from err
    if config.cuda_graph and device.type != "cuda":
        raise CLIError(f"argument --cuda-graph: needs a CUDA device, and this run trains on {device}")
    if config.cuda_graph and distributed.launched_by_torchrun():
        raise CLIError("argument --cuda-graph: trains in one process; under torchrun leave it off")
    return device


def _train_and_report(args, config, device, data, out: Path, checkpoint_path: Path, extra) -> int:
    images, validation = data
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    quiet = args.quiet or rank != 0  # rank 0 speaks and writes for the run
    if not quiet:
        print(f"training {config.n_hidden} hidden units on {images.shape[0]} examples on {device}; "
              f"checkpoints: {checkpoint_path}", file=sys.stderr)
    try:
        model, history = train(config, images, validation=validation, checkpoint_path=checkpoint_path,
                               resume=args.resume, progress=not quiet, extra=extra)
    except KeyboardInterrupt:
        _report_interrupt(checkpoint_path, config.epochs)
        return EXIT_INTERRUPTED
    if rank != 0:
        return EXIT_OK

    with atomic_write(out / "history.json", "w") as f:
        json.dump({"config": config.to_dict(), "history": history}, f, indent=2)
        f.write("\n")
    written = [str(checkpoint_path), str(out / "history.json")]
    try:
        written += _save_pictures(model, history, out)
    except ImportError:
        pass  # matplotlib is optional: the checkpoint is what matters
    last = {k: v[-1] for k, v in history.items() if k not in ("epoch", "seconds") and v}
    terms = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"trained {history['epoch'][-1]} epochs ({sum(history['seconds']):.1f}s of training): {terms}")
    print("wrote " + ", ".join(written))
    return EXIT_OK


def _save_pictures(model, history: Dict[str, Any], out: Path):
    """The filters (when the inputs are square images) and the training curves; the paths."""
    from pyae.viz import save_filter_grid, save_line_plot

    written = []
    side = math.isqrt(model.n_inputs)
    if side * side == model.n_inputs:
        save_filter_grid(model.filters()[:100], out / "filters.png", rows=10, cols=10, tile_shape=(side, side))
        written.append(str(out / "filters.png"))
    curves = {"training": history["loss"]}
    if "val_loss" in history:
        curves["validation"] = history["val_loss"]
    save_line_plot(curves, out / "curves.png", x=history["epoch"], ylabel="loss per example",
                   title="loss per epoch (training: with corruption and penalties as trained)")
    written.append(str(out / "curves.png"))
    return written


def _report_interrupt(checkpoint_path: Path, epochs: int) -> None:
    try:
        epoch = load_checkpoint(checkpoint_path).epoch
    except (OSError, ValueError):
        epoch = None
    if epoch is None:
        print("pyae: interrupted before the first epoch finished; no checkpoint was written", file=sys.stderr)
        return
    out = shlex.quote(str(checkpoint_path.parent))
    print(
        f"pyae: interrupted; the last checkpoint is {checkpoint_path} (epoch {epoch} of {epochs}).\n"
        f"resume with: pyae train --out {out} --resume",
        file=sys.stderr,
    )


def _cmd_filters(args) -> int:
    from pyae.viz import save_filter_grid  # needs matplotlib (the experiment extra)

    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint)
    n = model.n_inputs
    side = math.isqrt(n)
    if side * side != n:
        raise CLIError(f"{args.checkpoint!r}: the model has {n} inputs, not a square image; cannot draw tiles")
    rows = args.rows if args.rows is not None else (10 if args.cols is None else None)
    cols = args.cols if args.cols is not None else (10 if args.rows is None else None)
    if rows is None:
        rows = math.ceil(min(model.n_hidden, 100) / cols)
    if cols is None:
        cols = math.ceil(min(model.n_hidden, 100) / rows)
    out = Path(args.out) if args.out is not None else Path(args.checkpoint).parent / "filters.png"
    filters = model.filters()[: rows * cols]
    title = f"{min(model.n_hidden, rows * cols)} of {model.n_hidden} filters, epoch {checkpoint.epoch}"
    path = save_filter_grid(filters, out, rows=rows, cols=cols, tile_shape=(side, side), title=title)
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_encode(args) -> int:
    import numpy as np

    checkpoint = load_checkpoint(args.checkpoint)
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from err
    model = model_from_checkpoint(checkpoint, device=device)
    examples = _read_examples("--data", args.data, args.data_key, args.split)
    if examples.shape[1] != model.n_inputs:
        raise CLIError(f"argument --data: {examples.shape[1]} features, the model takes {model.n_inputs}")
    scaling = checkpoint.extra.get("input_scaling")
    if scaling:
        examples = apply_minmax(examples, torch.tensor(scaling["low"]), torch.tensor(scaling["span"]))
    dtype = checkpoint.config.torch_dtype
    with torch.no_grad():
        codes = torch.cat([model.encode(batch.to(device=device, dtype=dtype)).float().cpu()
                           for batch in examples.split(args.batch_size)])
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"argument --out: {str(out)!r} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        np.save(f, codes.numpy())
    print(f"wrote {out}: the {codes.shape[1]}-unit codes of {codes.shape[0]} examples (float32)")
    return EXIT_OK


def _cmd_experiment(args) -> int:
    # The experiments need the experiment extra (scikit-learn, matplotlib): imported here.
    experiment = importlib.import_module(f"pyae.experiments.{args.name}")
    device, data, seed = getattr(args, "device", "auto"), getattr(args, "data", None), getattr(args, "seed", 0)
    try:
        resolve_device(device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from err
    options = dict(quick=args.quick, device=device, seed=seed, progress=not args.quiet, num_threads=args.threads)
    if data is not None:
        if args.name not in ("mnist", "selection"):
            raise CLIError(f"argument --data: the {args.name} experiment makes its own data")
        if not os.path.isdir(data):
            raise CLIError(f"argument --data: {data!r} is not a directory")
        options["data_root"] = data
    out = Path(args.out)
    _check_out_dir(out)
    results = experiment.run_experiment(out, **options)
    print(experiment.format_table(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'report.md'}")
    return EXIT_OK


def _stack_settings(args, defaults: Dict[str, Any], stored: Optional[Dict[str, Any]],
                    resumable: Sequence[str]) -> Dict[str, Any]:
    """The settings of a stack stage: the options given over the defaults, or, resuming,
    over the stored settings (only ``resumable`` ones may differ)."""
    given = {name: getattr(args, name) for name in defaults if hasattr(args, name)}
    if stored is None:
        return {**defaults, **given}
    for name, value in given.items():
        if name not in resumable and value != stored.get(name):
            allowed = ", ".join("--" + n.replace("_", "-") for n in resumable)
            raise CLIError(
                f"argument --{name.replace('_', '-')}: {value!r} differs from the stored {stored.get(name)!r}; "
                f"a resumed run keeps its settings (only {allowed} may change)"
            )
    return {**defaults, **stored, **{k: v for k, v in given.items() if k in resumable}}


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"there is no {what} at {str(path)!r}") from None
    except (OSError, ValueError) as err:
        raise CLIError(f"{str(path)!r} is not a readable {what}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise CLIError(f"{str(path)!r} is not a {what} (no settings)")
    return data


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


_STACK_OPTION_NAMES = {
    "layer_sizes": "--sizes", "n_hidden": "--sizes", "noise_level": "--noise-levels", "noise": "--noise",
    "loss": "--loss", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "optimizer": "--optimizer",
    "momentum": "--momentum", "patience": "--patience", "contractive_weight": "--contractive-weight",
    "sparsity_weight": "--sparsity-weight", "sparsity_target": "--sparsity-target", "val_fraction": "--val-fraction",
    "seed": "--seed",
}


def _word_stack_error(err: Exception) -> str:
    """Name the command-line option in a library's validation message."""
    message = str(err)
    for word in re.findall(r"\w+", message):
        if word in _STACK_OPTION_NAMES:
            return f"argument {_STACK_OPTION_NAMES[word]}: {message}"
    return message


def _stack_data(settings: Dict[str, Any]):
    """(training digits, their labels, held-out digits or None, their labels or None) as the
    pretraining settings say: the MNIST training split (embedded, or --data), a random subset of
    --limit digits, --val-fraction of them held out, both drawn with --seed."""
    root = settings["data"]
    if root is not None and not os.path.isdir(root):
        raise CLIError(f"argument --data: {root!r} is not an MNIST directory (the stack needs the labels)")
    try:
        images, labels = load_mnist(root, "train")
    except (OSError, ValueError) as err:
        raise CLIError(f"argument --data: {err}") from err
    generator = torch.Generator().manual_seed(settings["seed"])
    images, labels = random_subset(settings["limit"], images, labels, generator=generator)
    fraction = settings["val_fraction"]
    if not 0.0 <= fraction < 1.0:
        raise CLIError(f"argument --val-fraction: must lie in [0, 1), got {fraction}")
    held_out = round(images.shape[0] * fraction)
    if fraction > 0.0 and not 1 <= held_out < images.shape[0]:
        raise CLIError(f"argument --val-fraction: {fraction} of {images.shape[0]} digits leaves no "
                       f"{'validation' if held_out < 1 else 'training'} digits")
    if held_out == 0:
        return images, labels, None, None
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(settings["seed"]))
    keep, out = order[held_out:].sort().values, order[:held_out].sort().values
    return images[keep], labels[keep], images[out], labels[out]


def _stack_device(settings: Dict[str, Any]) -> torch.device:
    try:
        return resolve_device(settings["device"])
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from err




def _build_stack(settings: Dict[str, Any], n_inputs: int):
    """The stack the pretraining settings describe and its layers' TrainConfigs."""
    from pyae.stacked import StackedAutoencoder, layer_configs

    sizes, levels = settings["sizes"], settings["noise_levels"]
    if len(levels) not in (1, len(sizes)):
        raise CLIError(f"argument --noise-levels: give one level or one per layer ({len(sizes)}), got {len(levels)}")
    levels = levels * len(sizes) if len(levels) == 1 else levels
    noise = settings["noise"]
    options = [{"noise": noise, "noise_level": level if noise is not None else 0.0, "loss": settings["loss"]}
               for level in levels]
    try:
        stack = StackedAutoencoder(n_inputs, sizes, options)
        configs = layer_configs(stack, epochs=settings["epochs"], batch_size=settings["batch_size"], lr=settings["lr"],
                                optimizer=settings["optimizer"], momentum=settings["momentum"], seed=settings["seed"],
                                device=settings["device"])
    except (TypeError, ValueError) as err:
        raise CLIError(_word_stack_error(err)) from err
    return stack, configs


def _cmd_stack_pretrain(args) -> int:
    from pyae.stacked import pretrain

    out = Path(args.out)
    _check_out_dir(out)
    stack_file = out / STACK_FILE
    if args.resume:
        stored = _read_json(stack_file, "pretraining record ('pyae stack pretrain' writes it)")["settings"]
        settings = _stack_settings(args, _PRETRAIN_DEFAULTS, stored, _PRETRAIN_RESUMABLE)
    else:
        if stack_file.exists() or (out / "layer0.pt").exists():
            raise CLIError(f"{str(out)!r} already holds a pretraining run: pass --resume to continue it, "
                           "or choose another --out")
        settings = _stack_settings(args, _PRETRAIN_DEFAULTS, None, _PRETRAIN_RESUMABLE)
    device = _stack_device(settings)
    images, _, validation, _ = _stack_data(settings)
    stack, configs = _build_stack(settings, images.shape[1])
    stack.to(device)
    record = {"format": "pyae.stack", "settings": settings, "n_inputs": stack.n_inputs,
              "layer_sizes": list(stack.layer_sizes), "layer_options": stack.layer_options(), "complete": False,
              "n_train": int(images.shape[0]), "n_validation": 0 if validation is None else int(validation.shape[0])}
    out.mkdir(parents=True, exist_ok=True)
    _write_json(stack_file, record)
    quiet = args.quiet
    if not quiet:
        print(f"pretraining {len(configs)} layers {list(stack.layer_sizes)} on {images.shape[0]} digits on {device}; "
              f"checkpoints: {out}/layer<k>.pt", file=sys.stderr)
    with torch_threads(args.threads):
        try:
            histories = pretrain(stack, images, configs, validation=validation, checkpoint_dir=out,
                                 resume=args.resume, progress=not quiet)
        except KeyboardInterrupt:
            print(f"pyae: interrupted; the completed layers and the last epoch's checkpoint are kept in {out}.\n"
                  f"resume with: pyae stack pretrain --out {shlex.quote(str(out))} --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    record["complete"] = True
    record["layers"] = [{"epochs": history["epoch"][-1] if history["epoch"] else 0,
                         "final_loss": history["loss"][-1] if history.get("loss") else None,
                         "final_val_loss": history["val_loss"][-1] if history.get("val_loss") else None,
                         "seconds": float(sum(history.get("seconds", [])))} for history in histories]
    _write_json(stack_file, record)
    written = [str(stack_file)] + [str(out / f"layer{k}.pt") for k in range(stack.n_layers)]
    try:
        written += _save_stack_pictures(stack, out)
    except ImportError:
        pass  # matplotlib is optional
    for k, layer in enumerate(record["layers"]):
        print(f"layer {k}: {layer['epochs']} epochs ({layer['seconds']:.1f}s), final loss {layer['final_loss']:.4g}")
    print("wrote " + ", ".join(written))
    return EXIT_OK


def _save_stack_pictures(stack, out: Path):
    """The first layer's filters and the top layer's unit filters (square inputs only)."""
    from pyae.viz import save_filter_grid

    side = math.isqrt(stack.n_inputs)
    if side * side != stack.n_inputs:
        return []
    written = []
    for k in sorted({0, stack.n_layers - 1}):
        path = out / f"filters_layer{k}.png"
        units = stack.unit_filters(k)[:100]
        title = (f"layer {k}: filters" if k == 0 else f"layer {k}: unit filters (product of the encoder weights)")
        save_filter_grid(units, path, rows=math.ceil(units.shape[0] / 10), cols=min(10, units.shape[0]),
                         tile_shape=(side, side), title=title)
        written.append(str(path))
    return written


def _load_pretrained_stack(directory: Path, device: torch.device):
    """(the pretrained stack, its record) from a 'pyae stack pretrain' directory."""
    from pyae.stacked import StackedAutoencoder

    record = _read_json(directory / STACK_FILE, "pretraining record ('pyae stack pretrain' writes it)")
    if not record.get("complete"):
        raise CLIError(f"argument --pretrained: the pretraining in {str(directory)!r} is not complete; finish it "
                       f"with: pyae stack pretrain --out {shlex.quote(str(directory))} --resume")
    try:
        stack = StackedAutoencoder(record["n_inputs"], record["layer_sizes"], record["layer_options"])
        for k, layer in enumerate(stack.layers):
            layer.load_state_dict(model_from_checkpoint(directory / f"layer{k}.pt").state_dict())
    except (KeyError, TypeError, RuntimeError) as err:
        raise CLIError(f"argument --pretrained: {str(directory)!r} does not hold a consistent stack: {err}") from err
    return stack.to(device), record


def _cmd_stack_finetune(args) -> int:
    from pyae.stacked import StackedClassifier, finetune

    out = Path(args.out)
    _check_out_dir(out)
    if hasattr(args, "data"):
        raise CLIError("argument --data: fine-tuning uses the digits of its pretraining (give --data to "
                       "'pyae stack pretrain')")
    checkpoint_path, record_path = out / FINETUNE_CHECKPOINT, out / FINETUNE_FILE
    if args.resume:
        if not checkpoint_path.exists():
            raise CLIError(f"--resume: there is no checkpoint at {str(checkpoint_path)!r} (start without --resume)")
        stored = _read_json(record_path, "fine-tuning record ('pyae stack finetune' writes it)")["settings"]
        settings = _stack_settings(args, _FINETUNE_DEFAULTS, stored, _FINETUNE_RESUMABLE)
    else:
        if checkpoint_path.exists():
            raise CLIError(f"{str(checkpoint_path)!r} already exists: pass --resume to continue that run, "
                           "or choose another --out")
        settings = _stack_settings(args, _FINETUNE_DEFAULTS, None, _FINETUNE_RESUMABLE)
        settings["pretrained"] = settings["pretrained"] or str(out)
    device = _stack_device(settings)
    stack, stack_record = _load_pretrained_stack(Path(settings["pretrained"]), device)
    images, labels, val_images, val_labels = _stack_data(stack_record["settings"])
    if val_images is None:
        if hasattr(args, "patience"):
            raise CLIError("argument --patience: needs held-out digits: pretrain with --val-fraction > 0")
        settings["patience"] = None
    classifier = StackedClassifier(stack, n_classes=10)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(record_path, {"format": "pyae.finetune", "settings": settings, "complete": False})
    if not args.quiet:
        print(f"fine-tuning {[stack.n_inputs, *stack.layer_sizes, 10]} on {images.shape[0]} digits on {device}, "
              f"validation on {0 if val_images is None else val_images.shape[0]}; checkpoints: {checkpoint_path}",
              file=sys.stderr)
    options = {k: settings[k] for k in ("epochs", "batch_size", "lr", "optimizer", "momentum", "patience", "monitor",
                                        "contractive_weight", "sparsity_weight", "sparsity_target", "seed")}
    with torch_threads(args.threads):
        try:
            history = finetune(classifier, images, labels,
                               validation=None if val_images is None else (val_images, val_labels),
                               checkpoint_path=checkpoint_path, resume=args.resume, progress=not args.quiet,
                               **options)
        except KeyboardInterrupt:
            print(f"pyae: interrupted; the last epoch's checkpoint is {checkpoint_path}.\n"
                  f"resume with: pyae stack finetune --out {shlex.quote(str(out))} --resume", file=sys.stderr)
            return EXIT_INTERRUPTED
        except (TypeError, ValueError) as err:
            raise CLIError(_word_stack_error(err)) from err
        best = history["best_epoch"]
        result = {"format": "pyae.finetune", "settings": settings, "complete": True, "best_epoch": best,
                  "stopped_early": history["stopped_early"],
                  "val_accuracy": history["val_accuracy"][best - 1] if "val_accuracy" in history else None,
                  "train_accuracy": classifier.accuracy(images, labels),
                  "history": {k: v for k, v in history.items() if isinstance(v, list)}}
        if args.test:
            test_images, test_labels = load_mnist(None, "test") if stack_record["settings"]["data"] is None \
                else load_mnist(stack_record["settings"]["data"], "test")
            result["test_accuracy"] = classifier.accuracy(test_images, test_labels)
    _write_json(record_path, result)
    summary = f"fine-tuned {len(history['epoch'])} epochs ({sum(history['seconds']):.1f}s); best epoch {best}"
    if result["val_accuracy"] is not None:
        summary += f": validation accuracy {100 * result['val_accuracy']:.2f}%"
    if "test_accuracy" in result:
        summary += f", test accuracy {100 * result['test_accuracy']:.2f}%"
    print(summary)
    print(f"wrote {checkpoint_path}, {record_path}")
    return EXIT_OK


# ------------------------------------------------------------------------------ main


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``pyae`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("PYAE_DEBUG"))
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise CLIError(f"unrecognized arguments: {' '.join(unknown)} (see 'pyae {args.command} --help')")
        return args.handler(args)
    except SystemExit as exit_:  # --help and --version
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else EXIT_FAILURE)
    except KeyboardInterrupt:
        print("pyae: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CLIError as err:
        if debug:
            raise
        print(f"pyae: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, OSError, ImportError, FloatingPointError, RuntimeError) as err:
        if debug:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"pyae: error: {message}", file=sys.stderr)
        # A missing/corrupt checkpoint, a bad data directory or a value the library refuses is
        # the user's input (2); a missing optional dependency, a diverged run or a kernel
        # failure is not (1).
        return EXIT_USAGE if isinstance(err, (ValueError, TypeError, OSError)) else EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
