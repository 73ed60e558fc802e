"""pyae.data: the IDX reader, the embedded MNIST, loading from a directory, download."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from pyae import data

MNIST_DIR = Path(data.__file__).resolve().parent / "mnist"

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray, *, code: int | None = None) -> bytes:
    """Serialize ``arr`` as IDX (big-endian), the way the MNIST files are laid out."""
    arr = np.asarray(arr)
    code = _CODES[arr.dtype.type] if code is None else code
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, gz: bool = False) -> Path:
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def fake_mnist(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


# ---------------------------------------------------------------------- embedded


def test_embedded_train():
    x, y = data.load_mnist()
    assert x.shape == (5000, 784) and x.dtype == torch.float32
    assert y.shape == (5000,) and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 500))
    # Sorted by class, as the README says.
    assert torch.equal(y, torch.arange(10).repeat_interleave(500))


def test_embedded_test():
    x, y = data.load_mnist(split="test", dtype=torch.float64)
    assert x.shape == (10000, 784) and x.dtype == torch.float64
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    # The official test set's class counts.
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Pixel values come from bytes: multiples of 1/255.
    assert torch.allclose(x * 255, (x * 255).round())


def test_embedded_sha256_matches_readme():
    table = dict(re.findall(r"^\|\s*(\S+\.gz)\s*\|.*\|\s*([0-9a-f]{64})\s*\|\s*$",
                            (MNIST_DIR / "README.md").read_text(), re.M))
    assert len(table) == 4
    for name, sha in table.items():
        assert hashlib.sha256(gzip.decompress((MNIST_DIR / name).read_bytes())).hexdigest() == sha, name


def test_embedded_test_split_is_official_t10k():
    # md5 of the decompressed official t10k files, as published alongside MNIST and used
    # by many loaders (the torchvision md5s are of the .gz, which was recompressed here).
    known = {"t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
             "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637"}
    for name, md5 in known.items():
        assert hashlib.md5(gzip.decompress((MNIST_DIR / name).read_bytes())).hexdigest() == md5


def test_dtype_and_device():
    x, y = data.load_mnist(split="train", dtype=torch.bfloat16, device="cpu")
    assert x.dtype == torch.bfloat16 and x.device.type == "cpu" and y.device.type == "cpu"
    with pytest.raises(ValueError, match="dtype"):
        data.load_mnist(dtype=torch.int64)


def test_bad_split():
    with pytest.raises(ValueError, match=r"split.*'train'.*'test'.*'valid'"):
        data.load_mnist(split="valid")


def test_module_constants():
    assert data.DEFAULT_MNIST_URL.startswith("https://") and data.DEFAULT_MNIST_URL.endswith("/")
    assert set(data.MNIST_FILES) == {
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
    }
    assert all(re.fullmatch(r"[0-9a-f]{32}", v) for v in data.MNIST_FILES.values())


# ---------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    # The name says nothing: compression is detected from the content.
    out = data.read_idx(write_idx(tmp_path / "a-file", arr, gz=gz))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable
    torch.from_numpy(out)  # no read-only / byte-order complaints


def test_read_idx_shapes(tmp_path):
    one_d = np.arange(7, dtype=np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "a.gz", one_d)), one_d)
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    assert data.read_idx(write_idx(tmp_path / "b", empty, gz=True)).shape == (0, 28, 28)


def test_read_idx_accepts_str_path(tmp_path):
    p = write_idx(tmp_path / "c", np.arange(3, dtype=np.int32))
    np.testing.assert_array_equal(data.read_idx(str(p)), [0, 1, 2])


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:1] + b"\x07" + b[2:], "magic"),
        (lambda b: b[:2] + b"\x0a" + b[3:], "type code 0x0A"),
        (lambda b: b[:3], "not an IDX file"),
        (lambda b: b[:10], "truncated IDX header"),
        (lambda b: b[:-1], "truncated IDX data"),
        (lambda b: b + b"\x00\x00", "2 trailing bytes"),
    ],
    ids=["magic0", "magic1", "code", "tiny", "header", "data", "trailing"],
)
def test_read_idx_malformed(tmp_path, gz, mangle, match):
    raw = mangle(idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8)))
    p = tmp_path / "bad-idx3-ubyte"
    p.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=match) as info:
        data.read_idx(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize("mangle", [lambda b: b[: len(b) // 2], lambda b: b[:10] + b"\xff" * 8 + b[18:]],
                         ids=["cut", "garbled"])
def test_read_idx_corrupt_gzip(tmp_path, mangle):
    p = tmp_path / "x.gz"
    p.write_bytes(mangle(gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))))
    with pytest.raises(ValueError, match="gzip") as info:
        data.read_idx(p)
    assert str(p) in str(info.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        data.read_idx(tmp_path / "nope")


# ------------------------------------------------------------------- directories


def make_mnist_dir(root: Path, *, n_train: int = 12, n_test: int = 7, gz: bool = False) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x, y = fake_mnist(n, seed=n)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{stem}-images-idx3-ubyte{suffix}", x, gz=gz)
        write_idx(root / f"{stem}-labels-idx1-ubyte{suffix}", y, gz=gz)
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_from_directory(tmp_path, gz, split):
    arrays = make_mnist_dir(tmp_path, gz=gz)
    x, y = data.load_mnist(tmp_path, split)
    ex, ey = arrays[split]
    assert x.shape == (len(ex), 784) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(ex.reshape(len(ex), -1)).float() / 255)
    assert y.dtype == torch.int64 and y.tolist() == ey.tolist()


def test_load_mixed_raw_and_gz(tmp_path):
    x_arr, y_arr = fake_mnist(5)
    write_idx(tmp_path / "train-images-idx3-ubyte", x_arr)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y_arr, gz=True)
    x, y = data.load_mnist(str(tmp_path))
    assert x.shape == (5, 784) and y.tolist() == y_arr.tolist()


def test_load_torchvision_layout(tmp_path):
    make_mnist_dir(tmp_path / "MNIST" / "raw")
    x, _ = data.load_mnist(tmp_path, "test")
    assert x.shape == (7, 784)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_mnist") as info:
        data.load_mnist(tmp_path / "absent")
    assert "train-images-idx3-ubyte" in str(info.value)


def test_missing_file(tmp_path):
    make_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    data.load_mnist(tmp_path, "train")  # the other split is still complete
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist(tmp_path, "test")
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg and "download_mnist" in msg and "'test'" in msg


def _replace(tmp_path: Path, name: str, arr: np.ndarray) -> Path:
    make_mnist_dir(tmp_path)
    return write_idx(tmp_path / name, arr)


def test_label_out_of_range(tmp_path):
    p = _replace(tmp_path, "train-labels-idx1-ubyte", np.array([0, 1, 10] + [0] * 9, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"0\.\.9") as info:
        data.load_mnist(tmp_path)
    assert str(p) in str(info.value)


def test_count_mismatch(tmp_path):
    p = _replace(tmp_path, "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(ValueError, match="11 labels.*12 images") as info:
        data.load_mnist(tmp_path)
    assert str(p) in str(info.value)


@pytest.mark.parametrize(
    "images",
    [np.zeros((3, 28, 27), np.uint8), np.zeros((3, 784), np.uint8), np.zeros((3, 28, 28), np.float32)],
    ids=["width", "flat", "dtype"],
)
def test_bad_images(tmp_path, images):
    p = _replace(tmp_path, "t10k-images-idx3-ubyte", images)
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)") as info:
        data.load_mnist(tmp_path, "test")
    assert str(p) in str(info.value)


def test_bad_labels_shape(tmp_path):
    p = _replace(tmp_path, "t10k-labels-idx1-ubyte", np.zeros((7, 1), np.uint8))
    with pytest.raises(ValueError, match=r"\(N,\)") as info:
        data.load_mnist(tmp_path, "test")
    assert str(p) in str(info.value)


# ------------------------------------------------------------------- random_subset


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_subset_draws_sorted_rows():
    x = torch.arange(50.0).repeat_interleave(3).reshape(50, 3)  # row i holds i
    (subset,) = data.random_subset(10, x, generator=_generator(3))
    rows = subset[:, 0].long()
    assert subset.shape == (10, 3)
    # Without replacement, in the original order, exactly the documented draw.
    assert torch.equal(rows, torch.randperm(50, generator=_generator(3))[:10].sort().values)
    assert bool((rows[1:] > rows[:-1]).all())
    assert torch.equal(subset, x[rows])


def test_random_subset_pairs_rows_across_tensors():
    n = 40
    images = torch.arange(n, dtype=torch.float64)[:, None].expand(n, 5).clone()
    labels = torch.arange(n) % 10
    cubes = torch.arange(n).reshape(n, 1, 1).expand(n, 2, 2).clone()
    out = data.random_subset(7, images, labels, cubes, generator=_generator(1))
    assert isinstance(out, tuple) and len(out) == 3
    sub_images, sub_labels, sub_cubes = out
    rows = sub_images[:, 0].long()
    assert torch.equal(sub_labels, labels[rows]) and torch.equal(sub_cubes, cubes[rows])
    assert sub_images.dtype == torch.float64 and sub_cubes.shape == (7, 2, 2)


def test_random_subset_seeds_and_generator_state():
    x = torch.arange(100)
    first = data.random_subset(20, x, generator=_generator(5))[0]
    assert torch.equal(first, data.random_subset(20, x, generator=_generator(5))[0])
    # One generator for two draws (as the experiment does for its two splits): the second
    # draw continues the stream.
    g = _generator(5)
    a, = data.random_subset(20, x, generator=g)
    b, = data.random_subset(20, x, generator=g)
    assert torch.equal(a, first) and not torch.equal(a, b)


def test_random_subset_keeps_classes_of_sorted_data():
    # The reason for the function: the embedded training digits are sorted by class.
    images, labels = data.load_mnist()
    sub_images, sub_labels = data.random_subset(200, images, labels, generator=_generator())
    assert sub_images.shape == (200, 784) and torch.unique(sub_labels).tolist() == list(range(10))
    assert torch.unique(labels[:200]).tolist() == [0]


@pytest.mark.parametrize("count", [None, 30, 31, 1000])
def test_random_subset_keeps_everything(count):
    x, y = torch.randn(30, 4), torch.arange(30)
    g = _generator(2)
    state = g.get_state()
    out = data.random_subset(count, x, y, generator=g)
    assert isinstance(out, tuple) and out[0] is x and out[1] is y
    assert torch.equal(g.get_state(), state)  # nothing drawn


def test_random_subset_single_tensor_matches_inline_draw():
    # The CLI's former inline code: images[randperm(N)[:limit].sort().values].
    images = torch.randn(60, 8)
    expected = images[torch.randperm(60, generator=_generator(9))[:25].sort().values]
    assert torch.equal(data.random_subset(25, images, generator=_generator(9))[0], expected)


@pytest.mark.parametrize(
    "count, tensors, kwargs, error, match",
    [
        (0, (torch.zeros(5),), {}, ValueError, "count"),
        (-3, (torch.zeros(5),), {}, ValueError, "count"),
        (2.0, (torch.zeros(5),), {}, TypeError, "count"),
        ("2", (torch.zeros(5),), {}, TypeError, "count"),
        (True, (torch.zeros(5),), {}, TypeError, "count"),
        (2, (torch.zeros(5), torch.zeros(4)), {}, ValueError, "first dimension"),
        (2, (torch.zeros(5, 3), torch.zeros(3, 5)), {}, ValueError, "first dimension"),
        (None, (torch.zeros(5), torch.zeros(6)), {}, ValueError, "first dimension"),
        (2, (), {}, ValueError, "at least one tensor"),
        (2, (torch.zeros(5), [0, 1, 2, 3, 4]), {}, TypeError, r"tensors\[1\]"),
        (2, (torch.tensor(1.0),), {}, ValueError, r"tensors\[0\]"),
        (2, (torch.zeros(5),), {"generator": None}, TypeError, "generator"),
        (2, (torch.zeros(5),), {"generator": 0}, TypeError, "generator"),
    ],
)
def test_random_subset_bad_arguments(count, tensors, kwargs, error, match):
    kwargs = {"generator": _generator(), **kwargs}
    with pytest.raises(error, match=match):
        data.random_subset(count, *tensors, **kwargs)


def test_random_subset_needs_a_generator():
    with pytest.raises(TypeError, match="generator"):
        data.random_subset(2, torch.zeros(5))  # keyword-only and required


# ---------------------------------------------------------------------- download


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server over a directory of small fake MNIST .gz files.

    Yields (base_url, served_dir, checksums, requests): `requests` lists the paths asked for.
    """
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    served = tmp_path / "served"
    make_mnist_dir(served, gz=True)
    checksums = {name: hashlib.md5((served / name).read_bytes()).hexdigest() for name in data.MNIST_FILES}
    requests: list[str] = []

    class Handler(_Handler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, checksums, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_download_success(tmp_path, server):
    base, served, checksums, requests = server
    root = tmp_path / "new" / "mnist"  # parents get created
    out = data.download_mnist(root, base_url=base, checksums=checksums, timeout=5)
    assert out == str(root)
    assert sorted(p.name for p in root.iterdir()) == sorted(data.MNIST_FILES)
    for name in data.MNIST_FILES:
        assert (root / name).read_bytes() == (served / name).read_bytes()
    assert len(requests) == 4
    x, y = data.load_mnist(root, "test")  # what was downloaded loads
    assert x.shape == (7, 784) and y.shape == (7,)


def test_download_base_url_without_slash(tmp_path, server):
    base, _, checksums, _ = server
    data.download_mnist(tmp_path / "m", base_url=base.rstrip("/"), checksums=checksums, timeout=5)
    assert len(list((tmp_path / "m").iterdir())) == 4


def test_download_algorithm_prefix(tmp_path, server):
    base, served, _, _ = server
    sha = {n: "sha256:" + hashlib.sha256((served / n).read_bytes()).hexdigest() for n in data.MNIST_FILES}
    data.download_mnist(tmp_path / "m", base_url=base, checksums=sha, timeout=5)
    assert len(list((tmp_path / "m").iterdir())) == 4


def test_download_skips_existing_and_force(tmp_path, server):
    base, _, checksums, requests = server
    root = tmp_path / "m"
    data.download_mnist(root, base_url=base, checksums=checksums, timeout=5)
    assert len(requests) == 4
    data.download_mnist(root, base_url=base, checksums=checksums, timeout=5)
    assert len(requests) == 4  # all present and valid: nothing fetched
    data.download_mnist(root, base_url=base, checksums=checksums, timeout=5, force=True)
    assert len(requests) == 8


def test_download_replaces_corrupt_existing(tmp_path, server):
    base, served, checksums, requests = server
    root = tmp_path / "m"
    root.mkdir()
    name = "t10k-labels-idx1-ubyte.gz"
    (root / name).write_bytes(b"junk")
    data.download_mnist(root, base_url=base, checksums=checksums, timeout=5)
    assert (root / name).read_bytes() == (served / name).read_bytes()
    assert len(requests) == 4


def test_download_checksum_mismatch(tmp_path, server):
    base, _, checksums, _ = server
    name = "train-images-idx3-ubyte.gz"  # the first one fetched
    bad = dict(checksums, **{name: "0" * 32})
    root = tmp_path / "m"
    with pytest.raises(data.ChecksumError, match="checksum mismatch") as info:
        data.download_mnist(root, base_url=base, checksums=bad, timeout=5)
    assert isinstance(info.value, ValueError) and name in str(info.value)
    assert list(root.iterdir()) == []  # no file, no temp file


def test_download_checksum_mismatch_keeps_existing(tmp_path, server):
    base, _, checksums, _ = server
    root = tmp_path / "m"
    root.mkdir()
    name = "t10k-images-idx3-ubyte.gz"
    (root / name).write_bytes(b"old")
    with pytest.raises(data.ChecksumError):
        data.download_mnist(root, base_url=base, checksums=dict(checksums, **{name: "1" * 32}), timeout=5)
    assert (root / name).read_bytes() == b"old"
    assert _leftovers(root) == []


def test_download_404(tmp_path, server):
    base, served, checksums, _ = server
    (served / "t10k-images-idx3-ubyte.gz").unlink()
    root = tmp_path / "m"
    with pytest.raises(data.DownloadError, match="404") as info:
        data.download_mnist(root, base_url=base, checksums=checksums, timeout=5)
    assert isinstance(info.value, OSError)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert not (root / "t10k-images-idx3-ubyte.gz").exists()
    assert _leftovers(root) == []


def test_download_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    checksums = {n: "0" * 32 for n in data.MNIST_FILES}
    with pytest.raises(data.DownloadError, match="127.0.0.1"):
        data.download_mnist(tmp_path / "m", base_url=f"http://127.0.0.1:{port}/", checksums=checksums, timeout=2)
    assert list((tmp_path / "m").iterdir()) == []


def test_download_checksums_must_cover_all_files(tmp_path):
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        data.download_mnist(tmp_path, base_url="http://127.0.0.1:9/",
                            checksums={n: "0" * 32 for n in list(data.MNIST_FILES)[:3]})
    with pytest.raises(ValueError, match="algorithm"):
        data.download_mnist(tmp_path, base_url="http://127.0.0.1:9/",
                            checksums={n: "crc99:00" for n in data.MNIST_FILES})


# ------------------------------------------------------------------- array files


def _mapping_of(t: torch.Tensor) -> str | None:
    """The file whose mapping holds ``t``'s data (Linux ``/proc/self/maps``), or None."""
    address = t.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return fields[5].strip() if len(fields) == 6 else None
    return None


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")

EXAMPLES = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.5, 8.0], [-1.0, 10.0, 0.25]])


def _npy(path: Path, arr) -> Path:
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to "X.NPY"
        np.save(f, np.asarray(arr))
    return path


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("np_dtype", [np.float32, np.float64, np.float16, np.uint8, np.int64, np.uint32, np.bool_])
def test_load_array_npy_roundtrip(tmp_path, mmap, np_dtype):
    arr = np.abs(EXAMPLES).astype(np_dtype)
    out = data.load_array(_npy(tmp_path / "x.npy", arr), mmap=mmap)
    assert out.dtype == torch.float32 and out.shape == (4, 3) and not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), arr.astype(np.float32))


@pytest.mark.parametrize("order", ["fortran", "big-endian"])
def test_load_array_npy_layouts(tmp_path, order):
    arr = np.asfortranarray(EXAMPLES) if order == "fortran" else EXAMPLES.astype(">f8")
    out = data.load_array(_npy(tmp_path / "x.npy", arr), dtype=torch.float64)
    np.testing.assert_array_equal(out.numpy(), EXAMPLES)


def test_load_array_accepts_str_path_and_upper_case_suffix(tmp_path):
    p = _npy(tmp_path / "X.NPY", EXAMPLES)
    torch.testing.assert_close(data.load_array(str(p), dtype=torch.float64), torch.from_numpy(EXAMPLES))


@linux_only
def test_npy_mmap_is_a_copy_on_write_view_of_the_file(tmp_path):
    # The docstring's promise: a .npy already of `dtype` comes back without a copy, as a
    # private (copy-on-write) mapping of the file; writes never reach the file.
    arr = EXAMPLES.astype(np.float32)
    p = _npy(tmp_path / "x.npy", arr)
    out = data.load_array(p)
    assert _mapping_of(out) == str(p)
    out[0, 0] = 99.0
    np.testing.assert_array_equal(np.load(p), arr)
    assert out[0, 0] == 99.0


@linux_only
@pytest.mark.parametrize(
    "kwargs", [{"mmap": False}, {"dtype": torch.float64}, {"scale": "minmax"}], ids=["no-mmap", "dtype", "scale"]
)
def test_npy_copies_when_documented(tmp_path, kwargs):
    p = _npy(tmp_path / "x.npy", EXAMPLES.astype(np.float32))
    assert _mapping_of(data.load_array(p, **kwargs)) != str(p)


@linux_only
def test_pt_mmap_is_a_view_of_the_file(tmp_path):
    p = tmp_path / "x.pt"
    torch.save(torch.from_numpy(EXAMPLES).float(), p)
    assert _mapping_of(data.load_array(p)) == str(p)
    assert _mapping_of(data.load_array(p, mmap=False)) != str(p)


@pytest.mark.parametrize("compressed", [False, True])
def test_load_array_npz(tmp_path, compressed):
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "one.npz", EXAMPLES)  # stored as "arr_0"
    save(tmp_path / "two.npz", images=EXAMPLES, labels=np.arange(4))
    expected = torch.from_numpy(EXAMPLES)
    torch.testing.assert_close(data.load_array(tmp_path / "one.npz", dtype=torch.float64), expected)
    torch.testing.assert_close(data.load_array(tmp_path / "one.npz", key="arr_0", dtype=torch.float64), expected)
    torch.testing.assert_close(data.load_array(tmp_path / "two.npz", key="images", dtype=torch.float64), expected)


@pytest.mark.parametrize(
    "text, header",
    [
        ("0,1,2\n3,4,5\n6,7.5,8\n-1,10,0.25\n", None),  # no header, detected
        ("0,1,2\n3,4,5\n6,7.5,8\n-1,10,0.25\n", False),
        ("a,b,c\n0,1,2\n3,4,5\n6,7.5,8\n-1,10,0.25\n", None),  # header, detected
        ("a,b,c\n0,1,2\n3,4,5\n6,7.5,8\n-1,10,0.25\n", True),
        ("1,2,3\n0,1,2\n3,4,5\n6,7.5,8\n-1,10,0.25\n", True),  # numeric column names, stated
        ('\ufeff"x", "y" ,z\n\n 0 ,"1",2\n3,4,5\r\n6, 7.5e0 ,8\n-1,1e1,.25\n\n', None),  # BOM, quotes, blanks
    ],
    ids=["plain", "no-header", "detected", "stated", "numeric-names", "messy"],
)
def test_load_array_csv(tmp_path, text, header):
    p = tmp_path / "x.csv"
    p.write_bytes(text.encode())
    out = data.load_array(p, header=header, dtype=torch.float64)
    torch.testing.assert_close(out, torch.from_numpy(EXAMPLES))


def test_load_array_csv_single_column(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("value\n1\n2\n")
    assert data.load_array(p).tolist() == [[1.0], [2.0]]


def test_load_array_pt(tmp_path):
    x = torch.from_numpy(EXAMPLES)
    torch.save(x, tmp_path / "tensor.pt")
    torch.save({"images": x, "step": 3}, tmp_path / "one.pt")
    torch.save({"images": x, "labels": torch.arange(4)}, tmp_path / "two.pt")
    torch.save(torch.nn.Parameter(x.clone()), tmp_path / "param.pt")
    for name, key in [("tensor.pt", None), ("one.pt", None), ("one.pt", "images"), ("two.pt", "images"),
                      ("param.pt", None)]:
        out = data.load_array(tmp_path / name, key=key, dtype=torch.float64)
        torch.testing.assert_close(out, x)
        assert not out.requires_grad
    with pytest.raises(ValueError, match=r"\['labels'\]: expected a 2-D array"):
        data.load_array(tmp_path / "two.pt", key="labels")


def test_load_array_pt_legacy_format(tmp_path):
    p = tmp_path / "old.pt"
    torch.save(torch.from_numpy(EXAMPLES), p, _use_new_zipfile_serialization=False)
    torch.testing.assert_close(data.load_array(p, dtype=torch.float64), torch.from_numpy(EXAMPLES))


# ------------------------------------------------------------------------ scaling


SCALING = np.array([[0.0, 5.0, -2.0], [10.0, 5.0, 2.0], [5.0, 5.0, 0.0]])


def test_minmax_per_feature(tmp_path):
    out = data.load_array(_npy(tmp_path / "x.npy", SCALING), scale="minmax", dtype=torch.float64)
    expected = [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.5, 0.0, 0.5]]  # the constant column becomes 0
    assert out.tolist() == expected


def test_minmax_global(tmp_path):
    out = data.load_array(_npy(tmp_path / "x.npy", SCALING), scale="minmax-global", dtype=torch.float64)
    expected = (SCALING + 2.0) / 12.0
    torch.testing.assert_close(out, torch.from_numpy(expected), rtol=0, atol=1e-15)
    assert out.min() == 0.0 and out.max() == 1.0


def test_minmax_global_constant_array(tmp_path):
    out = data.load_array(_npy(tmp_path / "x.npy", np.full((3, 2), 7.0)), scale="minmax-global")
    assert torch.equal(out, torch.zeros(3, 2))


def test_minmax_bytes_to_unit_interval(tmp_path):
    pixels = np.array([[0, 255, 17], [255, 0, 17], [51, 102, 17]], dtype=np.uint8)
    out = data.load_array(_npy(tmp_path / "x.npy", pixels), scale="minmax")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.2, 0.4, 0.0]]))


def test_minmax_spans_blocks(tmp_path, monkeypatch):
    # The min and max come from every block of rows, not just the first.
    monkeypatch.setattr(data, "_BLOCK_ELEMENTS", 3)
    arr = np.arange(30, dtype=np.float64).reshape(10, 3)
    out = data.load_array(_npy(tmp_path / "x.npy", arr), scale="minmax", dtype=torch.float64)
    torch.testing.assert_close(out, torch.from_numpy(np.repeat(np.arange(10) / 9, 3).reshape(10, 3)))


@pytest.mark.parametrize("scale", ["minmax", "minmax-global"])
@pytest.mark.parametrize("suffix", [".csv", ".pt", ".npz"])
def test_scaling_applies_to_every_format(tmp_path, scale, suffix):
    p = tmp_path / f"x{suffix}"
    if suffix == ".csv":
        p.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in SCALING))
    elif suffix == ".pt":
        torch.save(torch.from_numpy(SCALING), p)
    else:
        np.savez(p, SCALING)
    expected = data.load_array(_npy(tmp_path / "ref.npy", SCALING), scale=scale)
    assert torch.equal(data.load_array(p, scale=scale), expected)


# ----------------------------------------------------------------- load_examples


def test_load_examples_directory_and_file(tmp_path):
    arrays = make_mnist_dir(tmp_path / "mnist")
    out = data.load_examples(tmp_path / "mnist")
    torch.testing.assert_close(out, data.load_mnist(tmp_path / "mnist", "train")[0])
    assert out.shape == (len(arrays["train"][0]), 784)
    p = _npy(tmp_path / "x.npy", EXAMPLES)
    assert torch.equal(data.load_examples(p, scale="minmax"), data.load_array(p, scale="minmax"))


def test_load_examples_directory_scale(tmp_path):
    make_mnist_dir(tmp_path)
    out = data.load_examples(tmp_path, scale="minmax-global", dtype=torch.float64)
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(ValueError, match="key and header") as info:
        data.load_examples(tmp_path, key="images")
    assert str(tmp_path) in str(info.value)


def test_load_examples_directory_without_mnist(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_examples(tmp_path)


# ------------------------------------------------------------------- bad files


class _Boom:
    """Unpickling one would create the directory ``marker``: evidence of unpickling."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif path.suffix == ".npy":
        _npy(path, content)
    elif path.suffix == ".pt":
        torch.save(content, path)
    else:
        raise AssertionError(path)
    return path


def _npz(**arrays):
    def write(path):
        np.savez(path, **arrays)
        return path
    return write


_NAN = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, np.nan]])
_INF = np.array([[0.0, 1.0], [2.0, -np.inf], [4.0, np.inf]])

BAD_FILES = [
    # (file name, content or writer, load_array kwargs, message pattern)
    ("ragged.csv", "1,2,3\n4,5\n", {}, r"line 2 has 2 fields, expected 3 \(as on line 1\)"),
    ("ragged-header.csv", "a,b\n1,2,3\n", {}, r"line 2 has 3 fields, expected 2"),
    ("text.csv", "1,2\n3,x\n", {}, r"non-numeric cell 'x' at line 2, column 2"),
    ("underscore.csv", "1,2\n3,1_0\n", {}, r"non-numeric cell '1_0' at line 2, column 2"),
    ("hole.csv", "1,2\n3,\n", {}, r"empty cell at line 2, column 2"),
    ("mixed-first.csv", "a,2\n3,4\n", {}, r"non-numeric cell 'a' at line 1, column 1; .*header=True"),
    ("stated.csv", "a,b\n3,4\n", {"header": False}, r"non-numeric cell 'a' at line 1, column 1"),
    ("nan.csv", "1,2\n\n3,nan\n", {}, r"non-finite value 'nan' at line 3, column 2"),
    ("inf.csv", "1,-inf\n3,4\n", {}, r"non-finite value '-inf' at line 1, column 2"),
    ("empty.csv", "", {}, r"empty file"),
    ("blank.csv", "\n \n", {}, r"empty file"),
    ("header-only.csv", "a,b\n", {}, r"only a header line"),
    ("latin1.csv", b"1,2\n3,\xe9\n", {}, r"not UTF-8"),
    ("nan.npy", _NAN, {}, r"nan at row 2, column 1 \(counting from 0\)"),
    ("inf.npy", _INF, {}, r"-inf at row 1, column 1"),
    ("nan16.npy", _NAN.astype(np.float16), {"dtype": torch.float64}, r"nan at row 2, column 1"),
    ("overflow.npy", np.array([[1.0, 1e300]]), {}, r"1e\+300 at row 0, column 1 .*does not fit in torch.float32"),
    ("vector.npy", np.arange(5.0), {}, r"2-D array \(examples, features\), got shape \(5,\); .*\(N, 1\)"),
    ("scalar.npy", np.float64(3.0), {}, r"got shape \(\)"),
    ("cube.npy", np.zeros((2, 3, 4)), {}, r"got shape \(2, 3, 4\); flatten"),
    ("no-rows.npy", np.zeros((0, 3)), {}, r"empty array of shape \(0, 3\)"),
    ("no-columns.npy", np.zeros((3, 0)), {}, r"empty array of shape \(3, 0\)"),
    ("complex.npy", np.ones((2, 2), complex), {}, r"non-numeric dtype complex128"),
    ("strings.npy", np.array([["a", "b"]]), {}, r"non-numeric dtype <U1"),
    ("record.npy", np.zeros((2, 2), dtype=[("a", "f4")]), {}, r"non-numeric dtype"),
    ("garbage.npy", b"not an array at all", {}, r"not a \.npy file"),
    ("truncated.npy", lambda p: p.write_bytes(_npy_bytes(np.zeros((50, 4)))[:-8]) or p, {}, r"unreadable \.npy data"),
    ("truncated-nommap.npy", lambda p: p.write_bytes(_npy_bytes(np.zeros((50, 4)))[:-8]) or p, {"mmap": False},
     r"unreadable \.npy data"),
    ("several.npz", _npz(a=np.ones((2, 2)), b=np.ones((2, 2))), {}, r"holds 2 arrays \('a', 'b'\); choose one with key"),
    ("missing-key.npz", _npz(a=np.ones((2, 2))), {"key": "b"}, r"no array named 'b'; it holds 'a'"),
    ("nothing.npz", _npz(), {}, r"holds no arrays"),
    ("bad-member.npz", _npz(images=np.zeros((2, 2, 2))), {}, r"\['images'\]: expected a 2-D array"),
    ("nan.npz", _npz(x=_NAN), {}, r"\['x'\]: nan at row 2, column 1"),
    ("garbage.npz", b"PK? not really", {}, r"not a \.npz file"),
    ("vector.pt", torch.arange(3.0), {}, r"got shape \(3,\)"),
    ("nan.pt", torch.tensor([[1.0, float("nan")]]), {}, r"nan at row 0, column 1"),
    ("list.pt", [torch.ones(2, 2)], {}, r"holds a list; expected a tensor or a dict of tensors"),
    ("several.pt", {"a": torch.ones(2, 2), "b": torch.ones(2, 2)}, {}, r"holds 2 tensors \('a', 'b'\)"),
    ("missing-key.pt", {"a": torch.ones(2, 2)}, {"key": "b"}, r"no tensor named 'b'"),
    ("not-tensor.pt", {"a": torch.ones(2, 2), "n": 3}, {"key": "n"}, r"entry 'n' is a int, not a tensor"),
    ("key-for-tensor.pt", torch.ones(2, 2), {"key": "a"}, r"holds a tensor, not a dict"),
    ("complex.pt", torch.ones(2, 2, dtype=torch.complex64), {}, r"non-numeric dtype torch.complex64"),
    ("sparse.pt", torch.eye(3).to_sparse(), {}, r"torch.sparse_coo tensor"),
    ("garbage.pt", b"hello world", {}, r"not a readable torch.save file"),
    ("data.txt", "1,2\n", {}, r"unsupported file type '\.txt'; supported: \.npy, \.npz, \.csv, \.pt"),
    ("noext", "1,2\n", {}, r"unsupported file type '\(no suffix\)'"),
    ("key.npy", np.ones((2, 2)), {"key": "a"}, r"key='a' applies to \.npz and \.pt files only"),
    ("header.pt", torch.ones(2, 2), {"header": True}, r"header=True applies to \.csv files only"),
]


def _npy_bytes(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, arr)
    return buffer.getvalue()


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")
@pytest.mark.parametrize("filename, content, kwargs, match", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_file(tmp_path, filename, content, kwargs, match):
    p = tmp_path / filename
    content(p) if callable(content) else _write(p, content)
    with pytest.raises(ValueError, match=match) as info:
        data.load_array(p, **kwargs)
    message = str(info.value)
    assert message.startswith(repr(str(p))) and "\n" not in message
    with pytest.raises(ValueError):  # the CLI's entry point says the same
        data.load_examples(p, **kwargs)


@pytest.mark.parametrize("mmap", [True, False])
def test_pickled_npy_is_refused_without_unpickling(tmp_path, mmap):
    marker = tmp_path / "unpickled"
    p = tmp_path / "objects.npy"
    np.save(p, np.array([[_Boom(marker), 1.0]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects .*never loads pickles") as info:
        data.load_array(p, mmap=mmap)
    assert str(p) in str(info.value) and not marker.exists()
    np.load(p, allow_pickle=True)  # the file really would run code when unpickled
    assert marker.is_dir()


def test_pickled_npz_member_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    p = tmp_path / "objects.npz"
    np.savez(p, x=np.array([[_Boom(marker)]], dtype=object))
    with pytest.raises(ValueError, match="Python objects") as info:
        data.load_array(p)
    assert str(p) in str(info.value) and not marker.exists()


def test_pickled_pt_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    p = tmp_path / "objects.pt"
    torch.save({"x": torch.ones(2, 2), "evil": _Boom(marker)}, p)
    with pytest.raises(ValueError, match="weights_only=True") as info:
        data.load_array(p, key="x")
    assert str(p) in str(info.value) and not marker.exists()


@pytest.mark.parametrize("name", ["absent.npy", "absent.csv", "absent"])
def test_missing_file_names_it(tmp_path, name):
    p = tmp_path / name
    for load in (data.load_array, data.load_examples):
        with pytest.raises(FileNotFoundError, match="no such file or directory") as info:
            load(p)
        assert str(p) in str(info.value)


def test_load_array_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory.*load_examples") as info:
        data.load_array(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scale": "zscore"}, ValueError, "scale must be one of None, 'minmax', 'minmax-global'"),
        ({"dtype": torch.int64}, ValueError, "dtype"),
        ({"header": "yes"}, TypeError, "header"),
        ({"key": 1}, TypeError, "key"),
        ({"mmap": 1}, TypeError, "mmap"),
    ],
)
def test_load_array_bad_options(tmp_path, kwargs, error, match):
    p = _npy(tmp_path / "x.npy", EXAMPLES)
    for load in (data.load_array, data.load_examples):
        with pytest.raises(error, match=match):
            load(p, **kwargs)


def test_first_non_finite_spans_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_BLOCK_ELEMENTS", 4)
    arr = np.zeros((20, 2))
    arr[13, 1] = np.inf
    arr[17, 0] = np.nan
    with pytest.raises(ValueError, match="inf at row 13, column 1"):
        data.load_array(_npy(tmp_path / "x.npy", arr))
