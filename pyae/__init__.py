"""pyae: regularized autoencoders for PyTorch.

Fused CPU and CUDA kernels compute the sigmoid encoder together with the closed-form
contractive penalty and the sparsity statistics (``pyae.ops``, ``pyae.functional``); thin
modules build the plain, denoising, sparse and contractive autoencoders on them
(``pyae.modules``), ``pyae.optim`` fuses their optimizer's update with the penalties'
weight-side terms, ``pyae.stacked`` stacks them (greedy layer-wise pretraining, then
supervised fine-tuning), and ``pyae.TrainStep`` runs a whole training step, on a GPU as one
captured CUDA graph. ``pyae.config``, ``pyae.training`` and ``pyae.checkpoint`` are the
resumable training loop, ``pyae.distributed`` its multi-process support, ``pyae.data`` reads
MNIST (a subset ships with the package), ``pyae.viz`` draws filters, and the ``pyae`` command
runs the lecture's experiment.
"""

from pyae import functional, ops
from pyae.modules import (
    Autoencoder,
    AutoencoderOutput,
    ContractiveAutoencoder,
    DenoisingAutoencoder,
    SparseAutoencoder,
)
from pyae.ops import EncoderOutput, ReconstructionOutput, has_cuda_kernels
from pyae import optim
from pyae.step import TrainStep
from pyae import stacked
from pyae.stacked import StackedAutoencoder, StackedClassifier, finetune, pretrain

__version__ = "0.1.0"

__all__ = [
    "Autoencoder",
    "AutoencoderOutput",
    "ContractiveAutoencoder",
    "DenoisingAutoencoder",
    "SparseAutoencoder",
    "TrainStep",
    "EncoderOutput",
    "ReconstructionOutput",
    "functional",
    "ops",
    "optim",
    "has_cuda_kernels",
    "StackedAutoencoder",
    "StackedClassifier",
    "pretrain",
    "finetune",
    "stacked",
    "__version__",
]
