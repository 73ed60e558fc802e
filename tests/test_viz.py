"""pyae.viz: filter grids (numpy only) and the PNG writers (matplotlib)."""

from __future__ import annotations

import builtins
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyae import viz

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    """Check the file is a non-empty PNG and return its pixels (H, W, C)."""
    image = pytest.importorskip("matplotlib.image")
    raw = Path(path).read_bytes()
    assert raw[:8] == PNG_SIGNATURE
    return image.imread(path)


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ filter_grid


def test_grid_shape_100():
    grid = viz.filter_grid(torch.randn(100, 784))
    assert grid.shape == (10 * 28 + 11, 10 * 28 + 11)
    assert grid.dtype == np.float64
    assert grid.min() >= 0.0 and grid.max() <= 1.0


@pytest.mark.parametrize(
    "k, rows, cols, expect",
    [(1, None, None, (1, 1)), (10, None, None, (3, 4)), (12, None, None, (3, 4)), (50, 5, None, (5, 10)),
     (50, None, 25, (2, 25)), (7, 3, 3, (3, 3))],
)
def test_grid_dims(k, rows, cols, expect):
    th, tw, pad = 4, 3, 2
    grid = viz.filter_grid(np.random.default_rng(0).random((k, th * tw)), rows=rows, cols=cols,
                           tile_shape=(th, tw), padding=pad)
    r, c = expect
    assert grid.shape == (r * th + (r + 1) * pad, c * tw + (c + 1) * pad)


def test_grid_takes_first_filters():
    f = np.arange(4 * 4, dtype=float).reshape(4, 4)
    extra = np.zeros((2, 4))  # beyond rows*cols: not shown
    grid = viz.filter_grid(np.vstack([f, extra]), rows=2, cols=2, tile_shape=(2, 2), padding=0)
    assert grid.shape == (4, 4)
    expect = np.array([[0, 1 / 3], [2 / 3, 1]])  # row-major reshape, min-max per tile
    for r in (0, 2):
        for c in (0, 2):
            np.testing.assert_allclose(grid[r:r + 2, c:c + 2], expect)


def test_grid_per_tile_scaling_and_layout():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((5, 12)) * np.array([[1e-3], [1.0], [1e3], [5.0], [0.1]]) + 7.0
    pad = 1
    grid = viz.filter_grid(f, rows=2, cols=3, tile_shape=(3, 4), padding=pad, pad_value=1.0)
    for i in range(5):
        r, c = divmod(i, 3)
        tile = grid[pad + r * 4: pad + r * 4 + 3, pad + c * 5: pad + c * 5 + 4]
        assert tile.min() == 0.0 and tile.max() == 1.0
        expect = (f[i] - f[i].min()) / (f[i].max() - f[i].min())
        np.testing.assert_allclose(tile, expect.reshape(3, 4))
    # Padding and the unused sixth cell carry pad_value.
    assert np.all(grid[0] == 1.0) and np.all(grid[:, 0] == 1.0)
    assert np.all(grid[pad + 4: pad + 7, pad + 10: pad + 14] == 1.0)


def test_grid_scale_invariant():
    w = torch.randn(16, 784)
    a = viz.filter_grid(w)
    b = viz.filter_grid(w / w.norm(dim=1, keepdim=True))  # W_l / ||W_l||
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_grid_constant_tile():
    f = np.random.default_rng(0).random((4, 784))
    f[2] = 3.25
    grid = viz.filter_grid(f, rows=2, cols=2, padding=0)
    np.testing.assert_array_equal(grid[28:, :28], 0.5)


def test_grid_pad_value_and_zero_padding():
    grid = viz.filter_grid(np.random.default_rng(0).random((3, 784)), padding=2, pad_value=0.0)
    assert grid.shape == (2 * 28 + 6, 2 * 28 + 6)
    assert np.all(grid[:2] == 0.0)
    assert viz.filter_grid(np.ones((1, 784)), padding=0).shape == (28, 28)


def test_grid_accepts_other_inputs():
    w = torch.randn(4, 784, dtype=torch.bfloat16, requires_grad=True)
    assert viz.filter_grid(w).shape == (59, 59)
    assert viz.filter_grid(w.detach().float().tolist()).shape == (59, 59)


@pytest.mark.parametrize(
    "filters, kwargs, match",
    [
        (np.zeros((4, 783)), {}, "n=783"),
        (np.zeros((4, 12)), {"tile_shape": (4, 4)}, "n=12"),
        (np.zeros(784), {}, "2-D"),
        (np.zeros((0, 784)), {}, "empty"),
        (np.full((2, 784), np.nan), {}, "NaN"),
        (np.zeros((2, 784)), {"rows": 0}, "rows"),
        (np.zeros((2, 784)), {"padding": -1}, "padding"),
        (np.zeros((2, 784)), {"tile_shape": (0, 784)}, "tile_shape"),
    ],
)
def test_grid_errors(filters, kwargs, match):
    with pytest.raises(ValueError, match=match):
        viz.filter_grid(filters, **kwargs)


# ---------------------------------------------------------------- PNG writers


def test_save_filter_grid(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "out" / "filters.png"  # parent gets created
    out = viz.save_filter_grid(torch.randn(100, 784), path)
    assert out == str(path)
    img = read_png(path)
    assert img.shape[:2] == (2 * 291, 2 * 291)  # exact: scale x grid, no resampling
    # Grayscale: R == G == B everywhere.
    np.testing.assert_array_equal(img[..., 0], img[..., 1])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert no_temp_files(path.parent)


def test_save_filter_grid_title_and_scale(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "f.png"
    viz.save_filter_grid(np.random.default_rng(0).random((10, 784)), path, title="10 filters", scale=1)
    h, w = read_png(path).shape[:2]
    assert w == 4 * 28 + 5 and h == 3 * 28 + 4 + 30


def test_save_overwrites_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "f.png"
    path.write_bytes(b"old")
    viz.save_filter_grid(np.ones((1, 784)), path, scale=1)
    assert read_png(path).shape[:2] == (30, 30)
    assert no_temp_files(tmp_path)


def test_failed_save_leaves_nothing(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError):
        viz.save_filter_grid(np.ones((1, 783)), tmp_path / "f.png")
    assert list(tmp_path.iterdir()) == []


def test_save_image_rows(tmp_path):
    pytest.importorskip("matplotlib")
    clean = torch.rand(8, 784)
    rows = {"clean": clean, "corrupted": clean * (torch.rand(8, 784) > 0.25),
            "reconstructed": (clean + 0.3 * torch.randn(8, 784)).numpy(), "short": clean[:3]}
    path = tmp_path / "rows.png"
    viz.save_image_rows(rows, path)
    h, w = read_png(path).shape[:2]
    # At least the digits themselves (2 px per pixel), wider than tall, labels on the left.
    assert h >= 2 * 4 * 28 and w >= 2 * 8 * 28 and w > h
    assert no_temp_files(tmp_path)


def test_save_image_rows_errors(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="empty"):
        viz.save_image_rows({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="bad"):
        viz.save_image_rows({"ok": np.zeros((2, 784)), "bad": np.zeros((2, 100))}, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_bernoulli_kl_values():
    r = np.array([0.05, 0.1, 0.5, 0.9])
    kl = viz._bernoulli_kl(0.05, r)
    assert kl[0] == 0.0 and np.all(kl[1:] > 0)
    expect = 0.05 * math.log(0.05 / 0.5) + 0.95 * math.log(0.95 / 0.5)
    assert kl[2] == pytest.approx(expect)


@pytest.mark.parametrize("current", [None, torch.rand(50) * 0.3, np.array([0.0, 0.05, 1.0])])
def test_plot_kl_penalty(tmp_path, current):
    pytest.importorskip("matplotlib")
    path = tmp_path / "kl.png"
    assert viz.plot_kl_penalty(0.05, path, current=current) == str(path)
    h, w = read_png(path).shape[:2]
    assert (h, w) == (400, 600)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 2.0])
def test_plot_kl_penalty_bad_target(tmp_path, target):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="target"):
        viz.plot_kl_penalty(target, tmp_path / "kl.png")


def test_save_line_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "loss.png"
    viz.save_line_plot({"train": [3.0, 2.0, 1.5, 1.2], "test": torch.tensor([3.1, 2.3, 1.9])}, path,
                       ylabel="loss", logy=True, title="losses")
    assert read_png(path).shape[:2] == (400, 600)
    with pytest.raises(ValueError, match="x has 2"):
        viz.save_line_plot({"a": [1, 2, 3]}, tmp_path / "b.png", x=[0, 1])
    with pytest.raises(ValueError, match="empty"):
        viz.save_line_plot({}, tmp_path / "b.png")


def test_missing_matplotlib_message(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'pyae\[experiment\]'"):
        viz.save_filter_grid(np.ones((1, 784)), tmp_path / "f.png")
    # filter_grid itself needs only numpy.
    assert viz.filter_grid(np.ones((1, 784))).shape == (30, 30)
