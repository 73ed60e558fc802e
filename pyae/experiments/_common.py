"""What the experiments share: their optional dependencies, atomic text files, progress lines."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from pyae._atomic import atomic_write
from pyae.validation import check_int

INSTALL_HINT = "pip install 'pyae[experiment]'"


def require(modules: Sequence[str] = ("sklearn", "matplotlib"), experiment: str = "the experiment") -> None:
    """Raise an ImportError naming the missing optional dependencies and how to install them."""
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append("scikit-learn" if module == "sklearn" else module)
    if missing:
        raise ImportError(f"{experiment} needs {' and '.join(missing)}: {INSTALL_HINT}")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (the old file or the new one, never a partial one)."""
    with atomic_write(path, "w") as f:
        f.write(text)


def log(progress: bool, message: str) -> None:
    """A progress line on stderr, when ``progress``."""
    if progress:
        print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def torch_threads(num_threads: Optional[int], default: Optional[int] = None) -> Iterator[None]:
    """Run the body with torch's intra-op CPU threads set to ``num_threads`` (``default`` when
    None; None for both: torch's setting), restored afterwards.

    Raises:
        TypeError, ValueError: ``num_threads`` is not a positive int or None.
    """
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", 1)
    wanted = default if num_threads is None else num_threads
    previous = torch.get_num_threads()
    if wanted is not None:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
