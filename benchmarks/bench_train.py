"""The training loop itself: ``pyae.training.train`` (what ``pyae train`` runs) per step,
eager (the fused backward into the momentum buffers, the default), with the three calls
(``fused_backward=False``) and with ``cuda_graph`` (each step one CUDA graph replay), on the
embedded MNIST digits. The loops run one after the other, not in turns: compare them on a
quiet machine.

A training run is more than its steps: this measures the whole loop (batch slicing from the device-resident data, the step, the running sums of every loss
term), as milliseconds per step from the epochs' wall-clock times. The first epochs warm up
(and capture one graph per batch shape); the median is taken over the later ones.

    python benchmarks/bench_train.py --device cuda --batch-sizes 256 4096
    python benchmarks/bench_train.py --device cpu --batch-sizes 256 --epochs 3   # eager only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import pyae
from pyae.data import load_mnist
from pyae.config import TrainConfig
from pyae.training import train


# The loops: "eager" as `pyae train` runs by default (the fused backward into the momentum
# buffers), "three_calls" with --no-fused-backward (zero_grad, backward, step), "cuda_graph"
# (each step one graph replay; CUDA only).
MODES = {"eager": dict(), "three_calls": dict(fused_backward=False), "cuda_graph": dict(cuda_graph=True)}


def measure(images, batch_size, device, mode, epochs, warm_epochs, n_hidden=1000):
    config = TrainConfig(n_hidden=n_hidden, loss="cross_entropy", contractive_weight=0.1, sparsity_target=0.05,
                         sparsity_weight=0.1, batch_size=batch_size, epochs=epochs, device=device, seed=0,
                         **MODES[mode])
    _, history = train(config, images, progress=False)
    steps = -(-images.shape[0] // batch_size)
    seconds = history["seconds"][warm_epochs:]
    return dict(batch_size=batch_size, n_hidden=n_hidden, mode=mode, steps_per_epoch=steps,
                ms_per_step=statistics.median(seconds) / steps * 1e3, epoch_seconds=history["seconds"],
                final_loss=history["loss"][-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warm-epochs", type=int, default=3, help="epochs left out of the median")
    parser.add_argument("--copies", type=int, default=4, help="the 5,000 digits repeated this many times")
    parser.add_argument("--hidden", type=int, default=1000, help="hidden units (784-HIDDEN-784)")
    parser.add_argument("--rounds", type=int, default=1, help="times each loop is trained, in turns")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.warm_epochs >= args.epochs:
        parser.error("--warm-epochs must be smaller than --epochs")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    images, _ = load_mnist()
    images = images.repeat(args.copies, 1)
    modes = ["eager", "three_calls", "cuda_graph"] if args.device.startswith("cuda") else ["eager", "three_calls"]
    # Each round trains every loop once, in turns, so that a drifting machine slows them alike;
    # a loop's ms per step is the median over its rounds.
    rows = []
    for b in args.batch_sizes:
        runs = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode in modes:
                runs[mode].append(measure(images, b, args.device, mode, args.epochs, args.warm_epochs, args.hidden))
        for mode, measured in runs.items():
            row = dict(measured[-1], ms_per_step=statistics.median(r["ms_per_step"] for r in measured),
                       rounds_ms_per_step=[r["ms_per_step"] for r in measured])
            rows.append(row)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {images.shape[0]} examples, 784-{args.hidden}-784, "
          "cross-entropy + contractive + KL, SGD")
    print()
    print("| batch | loop | ms per step | x eager | final loss |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for row in rows:
        eager = next(r for r in rows if r["batch_size"] == row["batch_size"] and r["mode"] == "eager")
        print(f"| {row['batch_size']} | {row['mode']} | {row['ms_per_step']:.3f} | "
              f"{row['ms_per_step'] / eager['ms_per_step']:.2f} | {row['final_loss']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, torch=torch.__version__, pyae=pyae.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
