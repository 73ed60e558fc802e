"""The ``pyae`` command: ``train``, ``filters`` and ``experiment``.

Every failure that comes from the user's input (an unknown option, a value the library
rejects, a missing or corrupt checkpoint, a bad data directory, a CUDA device that is not
there) ends in one line ``pyae: error: ...`` on stderr and exit status 2, never a
traceback. Ctrl-C during training exits with 130 and says how to resume. Set
``PYAE_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from pyae._atomic import atomic_write

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

CHECKPOINT_NAME = "checkpoint.pt"

# argparse dest -> TrainConfig field, for the train options that feed the config.
_DEST_TO_FIELD = {
    "hidden": "n_hidden",
    "tied_weights": "tied_weights",
    "decoder": "decoder",
    "loss": "loss",
    "weight_decay": "weight_decay",
    "noise": "noise",
    "noise_level": "noise_level",
    "sparsity_target": "sparsity_target",
    "sparsity_weight": "sparsity_weight",
    "contractive_weight": "contractive_weight",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "lr": "lr",
    "optimizer": "optimizer",
    "momentum": "momentum",
    "seed": "seed",
    "dtype": "dtype",
    "device": "device",
    "cuda_graph": "cuda_graph",
}

# TrainConfig field -> the option that sets it (used to word error messages).
_OPTION_OF = {
    "n_hidden": "--hidden",
    "tied_weights": "--tied-weights",
    "decoder": "--decoder",
    "loss": "--loss",
    "weight_decay": "--weight-decay",
    "noise": "--noise",
    "noise_level": "--noise-level",
    "sparsity_target": "--sparsity-target",
    "sparsity_weight": "--sparsity-weight",
    "contractive_weight": "--contractive-weight",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "momentum": "--momentum",
    "seed": "--seed",
    "device": "--device",
    "dtype": "--dtype",
    "cuda_graph": "--cuda-graph",
}


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
    from pyae.training import DTYPES, OPTIMIZERS, TrainConfig

    defaults = TrainConfig()
    parser = _Parser(
        prog="pyae",
        allow_abbrev=False,
        description="Regularized autoencoders (denoising, sparse, contractive) on MNIST.",
        epilog="Run 'pyae COMMAND --help' for a command's options.",
    )
    from pyae import __version__

    parser.add_argument("--version", action="version", version=f"pyae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    # -- train ------------------------------------------------------------------------
    train = commands.add_parser(
        "train",
        allow_abbrev=False,
        help="train an autoencoder on MNIST, checkpointing every epoch",
        description=(
            "Train an autoencoder on MNIST (the embedded 5,000 training digits unless --data is "
            f"given). DIR/{CHECKPOINT_NAME} is written atomically after every epoch; Ctrl-C keeps the "
            "last one, and --resume continues it bitwise-reproducibly. Options left out take the "
            "defaults shown (with --resume: the checkpoint's values)."
        ),
    )
    train.add_argument("--out", required=True, metavar="DIR",
                       help=f"output directory ({CHECKPOINT_NAME}, history.json, filters.png)")
    train.add_argument("--resume", action="store_true",
                       help=f"continue the run in DIR/{CHECKPOINT_NAME}; only --epochs and --device may change")
    train.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS,
                       help="directory with the standard MNIST IDX files (default: the embedded 5k subset)")
    train.add_argument("--limit", type=_positive_int, default=argparse.SUPPRESS, metavar="N",
                       help="train on a random subset of N examples (drawn with --seed)")
    model = train.add_argument_group("model (pyae.Autoencoder keywords)")
    # default=SUPPRESS everywhere: an option left out is absent from the namespace, which
    # tells "given" from "default" (--resume needs it); the defaults come from TrainConfig.
    model.add_argument("--hidden", type=_positive_int, default=argparse.SUPPRESS, metavar="K",
                       help=f"hidden units (default {defaults.n_hidden})")
    model.add_argument("--tied-weights", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                       help="decode with the encoder's transposed weight (default off)")
    model.add_argument("--decoder", choices=("sigmoid", "linear"), default=argparse.SUPPRESS,
                       help=f"decoder activation (default {defaults.decoder})")
    model.add_argument("--loss", choices=("mse", "cross_entropy"), default=argparse.SUPPRESS,
                       help=f"reconstruction loss (default {defaults.loss})")
    model.add_argument("--weight-decay", type=_finite_float, default=argparse.SUPPRESS, metavar="LAMBDA",
                       help=f"weight decay on the weight matrices (default {defaults.weight_decay:g})")
    model.add_argument("--noise", type=_noise, default=argparse.SUPPRESS, metavar="{none,mask,gaussian}",
                       help="denoising corruption (default none)")
    model.add_argument("--noise-level", type=_finite_float, default=argparse.SUPPRESS, metavar="Q",
                       help="masking probability in [0, 1] or Gaussian std (default 0)")
    model.add_argument("--sparsity-target", type=_finite_float, default=argparse.SUPPRESS, metavar="RHO",
                       help="target mean activation in (0, 1): enables the KL sparsity penalty")
    model.add_argument("--sparsity-weight", type=_finite_float, default=argparse.SUPPRESS, metavar="BETA",
                       help=f"weight of the KL sparsity penalty (default {defaults.sparsity_weight:g})")
    model.add_argument("--contractive-weight", type=_finite_float, default=argparse.SUPPRESS, metavar="LAMBDA",
                       help=f"weight of the contractive penalty (default {defaults.contractive_weight:g})")
    optim = train.add_argument_group("optimization")
    optim.add_argument("--epochs", type=_positive_int, default=argparse.SUPPRESS,
                       help=f"epochs (default {defaults.epochs})")
    optim.add_argument("--batch-size", type=_positive_int, default=argparse.SUPPRESS,
                       help=f"examples per step (default {defaults.batch_size})")
    optim.add_argument("--lr", type=_finite_float, default=argparse.SUPPRESS,
                       help=f"learning rate (default {defaults.lr:g})")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, default=argparse.SUPPRESS,
                       help=f"optimizer (default {defaults.optimizer})")
    optim.add_argument("--momentum", type=_finite_float, default=argparse.SUPPRESS,
                       help=f"SGD momentum in [0, 1) (default {defaults.momentum:g})")
    optim.add_argument("--seed", type=_non_negative_int, default=argparse.SUPPRESS,
                       help=f"seed of the initialization, shuffling and noise (default {defaults.seed})")
    optim.add_argument("--dtype", choices=tuple(DTYPES), default=argparse.SUPPRESS,
                       help=f"parameter and data dtype (default {defaults.dtype})")
    optim.add_argument("--device", default=argparse.SUPPRESS, metavar="{auto,cpu,cuda}",
                       help="where to train: auto (a GPU if there is one), cpu, cuda or cuda:N (default auto)")
    optim.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                       help="run each step as one CUDA graph replay (CUDA only, one process; default off)")
    train.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    train.add_argument("--quiet", action="store_true", help="no progress output")
    train.set_defaults(handler=_cmd_train)

    # -- filters ----------------------------------------------------------------------
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

    # -- experiment -------------------------------------------------------------------
    experiment = commands.add_parser(
        "experiment",
        allow_abbrev=False,
        help="the lecture's comparison: AE features + logistic regression on MNIST",
        description=(
            "Train the plain, denoising, sparse and contractive autoencoders on the 5,000 training "
            "digits, fit a logistic regression on each hidden representation and report its accuracy "
            "on the 10,000 test digits, next to raw pixels. Writes results.json, report.md and pictures."
        ),
    )
    experiment.add_argument("--out", required=True, metavar="DIR", help="output directory")
    experiment.add_argument("--quick", action="store_true",
                            help="a smoke run of seconds (small models, few epochs, data subsets)")
    experiment.add_argument("--device", default="auto", metavar="{auto,cpu,cuda}", help="where to train (default auto)")
    experiment.add_argument("--data", metavar="DIR", default=None,
                            help="directory with the standard MNIST IDX files (default: the embedded subset)")
    experiment.add_argument("--seed", type=_non_negative_int, default=0, help="seed (default 0)")
    experiment.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                            help="CPU threads for torch (default: torch's choice; 1 is faster on a busy machine)")
    experiment.add_argument("--quiet", action="store_true", help="no progress output")
    experiment.set_defaults(handler=_cmd_experiment)
    return parser


# --------------------------------------------------------------------------- helpers


def _word_config_error(err: Exception) -> str:
    """Name the command-line option in a TrainConfig/Autoencoder validation message."""
    message = str(err)
    match = re.match(r"(\w+)", message)
    if match and match.group(1) in _OPTION_OF:
        return f"argument {_OPTION_OF[match.group(1)]}: {message}"
    return message


def _explicit_config_options(args) -> Dict[str, Any]:
    """The TrainConfig fields given on the command line (the others are absent from
    ``args``: their default is ``argparse.SUPPRESS``)."""
    given = vars(args)
    return {field: given[dest] for dest, field in _DEST_TO_FIELD.items() if dest in given}


def _load_images(root: Optional[str], limit: Optional[int], seed: int):
    import torch

    from pyae.data import load_mnist

    if root is not None and not os.path.isdir(root):
        raise CLIError(f"argument --data: {root!r} is not a directory")
    images, _ = load_mnist(root, "train")
    if limit is not None and limit < images.shape[0]:
        # A random subset, not the first N: the embedded digits are sorted by class.
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(images.shape[0], generator=generator)[:limit].sort().values
        images = images[keep]
    return images


# --------------------------------------------------------------------------- commands


def _cmd_train(args) -> int:
    from pyae.training import TrainConfig, load_checkpoint, resolve_device

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"argument --out: {str(out)!r} exists and is not a directory")
    checkpoint_path = out / CHECKPOINT_NAME
    options = _explicit_config_options(args)
    args.data_given, args.limit_given = hasattr(args, "data"), hasattr(args, "limit")
    data_settings = {"data": getattr(args, "data", None), "limit": getattr(args, "limit", None)}

    if args.resume:
        if not checkpoint_path.exists():
            raise CLIError(f"--resume: there is no checkpoint at {str(checkpoint_path)!r} (start without --resume)")
        checkpoint = load_checkpoint(checkpoint_path)
        stored = checkpoint.config
        for field, value in options.items():
            if field in ("epochs", "device"):
                continue
            if value != getattr(stored, field):
                raise CLIError(
                    f"argument {_OPTION_OF[field]}: {value!r} differs from the checkpoint's "
                    f"{getattr(stored, field)!r}; "
                    "a resumed run keeps its settings (only --epochs and --device may change)"
                )
        # The data a run was trained on is part of the run. A checkpoint written by
        # pyae.training.train() directly has no record of it: then the options decide.
        stored_data = checkpoint.extra.get("data_settings")
        if isinstance(stored_data, dict):
            for key, option, given in (("data", "--data", args.data_given), ("limit", "--limit", args.limit_given)):
                if given and data_settings[key] != stored_data.get(key):
                    raise CLIError(
                        f"argument {option}: {data_settings[key]!r} differs from the checkpoint's "
                        f"{stored_data.get(key)!r}; a resumed run trains on the same data"
                    )
                data_settings[key] = stored_data.get(key)
        changes = {k: options[k] for k in ("epochs", "device", "cuda_graph") if k in options}
        try:
            config = stored.replace(**changes)
        except (TypeError, ValueError) as err:
            raise CLIError(_word_config_error(err)) from err
        if checkpoint.epoch >= config.epochs:
            print(f"{checkpoint_path} already holds {checkpoint.epoch} epochs (--epochs {config.epochs}); "
                  "pass a larger --epochs to train further")
            return EXIT_OK
    else:
        if checkpoint_path.exists():
            raise CLIError(
                f"{str(checkpoint_path)!r} already exists: pass --resume to continue that run, "
                "or choose another --out"
            )
        try:
            config = TrainConfig(**options)
        except (TypeError, ValueError) as err:
            raise CLIError(_word_config_error(err)) from err

    try:
        device = resolve_device(config.device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from err
    if config.cuda_graph and device.type != "cuda":
        raise CLIError(f"argument --cuda-graph: needs a CUDA device, and this run trains on {device}")
    if config.cuda_graph and _launched_by_torchrun():
        raise CLIError("argument --cuda-graph: trains in one process; under torchrun leave it off")
    distributed = _start_distributed(device)
    if distributed is not None:
        device, config = distributed, config.replace(device=str(distributed))
    images = _load_images(data_settings["data"], data_settings["limit"], config.seed)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        status = _train_and_report(args, config, device, images, out, checkpoint_path, data_settings)
        if distributed is not None:
            # Every rank done (rank 0 has written its files) before the group goes away. Only
            # on success: a rank that failed must not wait for the others, which torchrun stops.
            torch.distributed.barrier()
        return status
    finally:
        # main() may run inside a larger program (or a test): leave its settings as they were.
        torch.set_num_threads(previous_threads)
        if distributed is not None:
            torch.distributed.destroy_process_group()


def _launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks that torchrun started (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _start_distributed(device):
    """Under torchrun (WORLD_SIZE > 1 in the environment), join the process group: NCCL with
    one GPU per rank (cuda:LOCAL_RANK), gloo on the CPU. Returns this rank's device, or
    None when not launched by torchrun."""
    if not _launched_by_torchrun():
        return None
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _train_and_report(args, config, device, images, out: Path, checkpoint_path: Path, data_settings) -> int:
    import torch.distributed as dist

    from pyae.training import train

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        args.quiet = True  # rank 0 speaks and writes for the run
    if not args.quiet:
        print(f"training {config.n_hidden} hidden units on {images.shape[0]} examples on {device}; "
              f"checkpoints: {checkpoint_path}", file=sys.stderr)
    try:
        model, history = train(
            config,
            images,
            checkpoint_path=checkpoint_path,
            resume=args.resume,
            progress=not args.quiet,
            extra={"data_settings": data_settings},
        )
    except KeyboardInterrupt:
        _report_interrupt(checkpoint_path, config.epochs)
        return EXIT_INTERRUPTED
    if args.quiet and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return EXIT_OK

    with atomic_write(out / "history.json", "w") as f:
        json.dump({"config": config.to_dict(), "history": history}, f, indent=2)
        f.write("\n")
    written = [str(checkpoint_path), str(out / "history.json")]
    try:
        from pyae.viz import save_filter_grid

        side = math.isqrt(model.n_inputs)
        if side * side == model.n_inputs:
            save_filter_grid(model.filters()[:100], out / "filters.png", rows=10, cols=10, tile_shape=(side, side))
            written.append(str(out / "filters.png"))
    except ImportError:
        pass  # matplotlib is optional: the checkpoint is what matters
    last = {k: v[-1] for k, v in history.items() if k not in ("epoch", "seconds") and v}
    terms = ", ".join(f"{k} {v:.4g}" for k, v in last.items())
    print(f"trained {history['epoch'][-1]} epochs ({sum(history['seconds']):.1f}s of training): {terms}")
    print("wrote " + ", ".join(written))
    return EXIT_OK


def _report_interrupt(checkpoint_path: Path, epochs: int) -> None:
    from pyae.training import load_checkpoint

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
    from pyae.training import load_checkpoint, model_from_checkpoint
    from pyae.viz import save_filter_grid

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


def _cmd_experiment(args) -> int:
    from pyae.experiment import format_table, run_experiment
    from pyae.training import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        raise CLIError(f"argument --device: {err}") from err
    if args.data is not None and not os.path.isdir(args.data):
        raise CLIError(f"argument --data: {args.data!r} is not a directory")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"argument --out: {str(out)!r} exists and is not a directory")
    results = run_experiment(out, quick=args.quick, device=args.device, data_root=args.data, seed=args.seed,
                             progress=not args.quiet, num_threads=args.threads)
    print(format_table(results))
    print(f"\nwrote {out / 'results.json'} and {out / 'report.md'}")
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
