"""What the experiments share: their optional dependencies, atomic text files, progress lines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from pyae._atomic import atomic_write

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
