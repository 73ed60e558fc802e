"""Writing a file so that it is either the old one or the complete new one, never partial."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import IO, Iterator

from pyae._typing import PathLike


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) everywhere, e.g. Windows.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", *, encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; when the block ends without an
    exception, flush and fsync it and rename it onto ``path`` (``os.replace``). If the block
    raises (a failed check, Ctrl-C, a full disk), the temporary file is removed and ``path``
    keeps its old content. The parent directory is created.

    Args:
        path: the destination.
        mode: ``"wb"`` or ``"w"`` (text, in ``encoding``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    dest = Path(os.fspath(path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        # "x": never clobber anything; and unlike mkstemp the file gets umask permissions.
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_directory(dest.parent)
    finally:
        # After a successful replace the temporary name is gone; after a failure it must go.
        tmp.unlink(missing_ok=True)
