"""Pictures: filter grids, digit rows, the KL sparsity penalty, training curves.

:func:`filter_grid` is plain numpy. The ``save_*`` / ``plot_*`` functions need
matplotlib, an optional dependency (``pip install 'pyae[experiment]'``) imported only when
they are called. They draw on matplotlib's Agg canvas directly (``Figure`` +
``FigureCanvasAgg``), so they never need a display and never change the pyplot backend
of the calling program. Every file is written atomically: a temporary file in the
destination directory, renamed into place once complete.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from pyae._atomic import atomic_write
from pyae._typing import PathLike

__all__ = [
    "filter_grid",
    "save_filter_grid",
    "save_image_rows",
    "plot_kl_penalty",
    "save_line_plot",
]

ArrayLike = Union[torch.Tensor, np.ndarray, Sequence]

_INSTALL_HINT = "pip install 'pyae[experiment]'"
_DPI = 100


# ---------------------------------------------------------------------- helpers


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        # float64 first: numpy has no bfloat16, and it keeps tiny filter ranges exact.
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_tile_shape(tile_shape: Tuple[int, int]) -> Tuple[int, int]:
    shape = tuple(int(s) for s in tile_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"tile_shape must be two positive ints, got {tile_shape!r}")
    return shape  # type: ignore[return-value]


def _grid_dims(k: int, rows: Optional[int], cols: Optional[int]) -> Tuple[int, int]:
    for name, v in (("rows", rows), ("cols", cols)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if rows is None and cols is None:
        cols = max(1, math.ceil(math.sqrt(k)))
        rows = max(1, math.ceil(k / cols))
    elif rows is None:
        rows = max(1, math.ceil(k / cols))
    elif cols is None:
        cols = max(1, math.ceil(k / rows))
    return int(rows), int(cols)


def _tile(images: np.ndarray, rows: int, cols: int, tile_shape: Tuple[int, int], padding: int,
          pad_value: float) -> np.ndarray:
    """Place ``images`` (m, th, tw), m <= rows*cols, row-major on a padded canvas."""
    th, tw = tile_shape
    canvas = np.full(
        (rows * th + (rows + 1) * padding, cols * tw + (cols + 1) * padding), pad_value, dtype=np.float64
    )
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y = padding + r * (th + padding)
        x = padding + c * (tw + padding)
        canvas[y:y + th, x:x + tw] = img
    return canvas


def _require_matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"saving pictures with pyae.viz needs matplotlib, which is not installed: {_INSTALL_HINT}"
        ) from err

    def new_figure(**kwargs) -> "Figure":
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)
        return fig

    return new_figure


def _atomic_savefig(fig, path: PathLike, **kwargs) -> str:
    """Save ``fig`` as PNG to ``path`` through a temp file + ``os.replace``."""
    dest = Path(os.fspath(path))
    with atomic_write(dest, "wb") as f:
        fig.savefig(f, format="png", dpi=_DPI, **kwargs)
    return str(dest)


# ----------------------------------------------------------------------- filters


def filter_grid(
    filters: ArrayLike,
    *,
    rows: Optional[int] = None,
    cols: Optional[int] = None,
    tile_shape: Tuple[int, int] = (28, 28),
    padding: int = 1,
    pad_value: float = 1.0,
) -> np.ndarray:
    """Arrange filters as a grid of image tiles, each scaled to [0, 1] on its own.

    Args:
        filters: ``(k, n)``, a tensor or numpy array with one filter per row, e.g. an
            encoder weight ``W`` (``nn.Linear`` layout) or its unit-norm rows
            ``W_l / ||W_l||`` (the input that maximally activates unit ``l``). Per-tile
            scaling makes the two look the same.
        rows: the number of grid rows. By default the grid is near-square:
            ``cols = ceil(sqrt(k))`` and ``rows = ceil(k / cols)`` (100 filters -> 10 x 10);
            giving one of ``rows`` and ``cols`` derives the other. If ``rows * cols < k``
            only the first ``rows * cols`` filters are shown.
        cols: the number of grid columns (see ``rows``).
        tile_shape: the height and width each filter is reshaped to (row-major); ``n`` must
            equal their product. Default ``(28, 28)``.
        padding: pixels between tiles and around the border.
        pad_value: the intensity of the padding and of unused cells: 1.0 is white in a
            grayscale colormap, which separates dark tile edges.

    Returns:
        A float64 ``numpy.ndarray`` of shape
        ``(rows*th + (rows+1)*padding, cols*tw + (cols+1)*padding)``. Each tile is min-max
        scaled to [0, 1]; a constant tile becomes 0.5.

    Raises:
        ValueError: if ``filters`` is not 2-D, is empty, has non-finite values, or ``n``
            does not match ``tile_shape``; or if ``rows``, ``cols`` or ``padding`` are
            invalid.
    """
    f = _to_numpy(filters, "filters")
    th, tw = _check_tile_shape(tile_shape)
    if f.ndim != 2:
        raise ValueError(f"filters must be 2-D (k, n), got shape {f.shape}")
    k, n = f.shape
    if k == 0:
        raise ValueError("filters is empty (k == 0)")
    if n != th * tw:
        raise ValueError(f"filters have n={n} features, but tile_shape {(th, tw)} needs {th * tw}")
    if int(padding) != padding or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    rows, cols = _grid_dims(k, rows, cols)

    f = f[: rows * cols]
    lo = f.min(axis=1, keepdims=True)
    span = f.max(axis=1, keepdims=True) - lo
    flat = span[:, 0] == 0
    # Divide by 1 where constant, then overwrite: avoids 0/0 warnings.
    scaled = (f - lo) / np.where(flat[:, None], 1.0, span)
    scaled[flat] = 0.5
    return _tile(scaled.reshape(-1, th, tw), rows, cols, (th, tw), int(padding), float(pad_value))


def save_filter_grid(
    filters: ArrayLike,
    path: PathLike,
    *,
    rows: Optional[int] = None,
    cols: Optional[int] = None,
    tile_shape: Tuple[int, int] = (28, 28),
    padding: int = 1,
    title: Optional[str] = None,
    scale: int = 2,
) -> str:
    """Write :func:`filter_grid` of ``filters`` as a grayscale PNG.

    Args:
        filters: as in :func:`filter_grid`.
        path: the destination; parent directories are created. Always PNG, whatever the
            suffix.
        rows: as in :func:`filter_grid`.
        cols: as in :func:`filter_grid`.
        tile_shape: as in :func:`filter_grid`.
        padding: as in :func:`filter_grid`.
        title: text above the grid, in a 30-pixel band added on top.
        scale: each grid pixel becomes ``scale x scale`` image pixels (nearest neighbour).
            Without a title the PNG is exactly ``scale`` times the grid size.

    Returns:
        The path written, as a string.
    """
    new_figure = _require_matplotlib()
    grid = filter_grid(filters, rows=rows, cols=cols, tile_shape=tile_shape, padding=padding)
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    h, w = grid.shape[0] * scale, grid.shape[1] * scale
    band = 0 if title is None else 30
    fig = new_figure(figsize=(w / _DPI, (h + band) / _DPI), dpi=_DPI)
    # The axes fill the image area exactly, so pixels map 1:scale with no resampling blur.
    ax = fig.add_axes((0.0, 0.0, 1.0, h / (h + band)))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if title is not None:
        fig.text(0.5, 1.0 - 0.5 * band / (h + band), title, ha="center", va="center", fontsize=10)
    return _atomic_savefig(fig, path)


def save_image_rows(
    rows: Mapping[str, ArrayLike],
    path: PathLike,
    *,
    tile_shape: Tuple[int, int] = (28, 28),
    title: Optional[str] = None,
) -> str:
    """Write rows of images with their names on the left, e.g. clean / corrupted / reconstructed.

    Intensities are shown as they are, clipped to [0, 1] (not rescaled per image), so
    rows stay comparable: a faint reconstruction looks faint.

    Args:
        rows: row label -> images, an ``(m, n)`` array with one image per row
            (``n == prod(tile_shape)``; a 1-D array is one image); rows may hold different
            numbers of images. Insertion order is top to bottom.
        path: the destination PNG; parent directories are created.
        tile_shape: the height and width of each image. Default ``(28, 28)``.
        title: the figure title.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: if ``rows`` is empty or an entry is not 2-D with
            ``n == prod(tile_shape)``.
    """
    new_figure = _require_matplotlib()
    th, tw = _check_tile_shape(tile_shape)
    if not rows:
        raise ValueError("rows is empty")
    strips = []
    for name, images in rows.items():
        arr = _to_numpy(images, f"rows[{name!r}]")
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != th * tw or arr.shape[0] == 0:
            raise ValueError(
                f"rows[{name!r}] must be (m, {th * tw}) with m >= 1 for tile_shape {(th, tw)}, "
                f"got shape {arr.shape}"
            )
        strips.append(np.clip(arr, 0.0, 1.0).reshape(-1, th, tw))
    cols = max(len(s) for s in strips)
    pad = 2
    # One canvas, one axes: row labels become y tick labels and line up by construction.
    canvas = np.ones((len(strips) * (th + pad) + pad, cols * (tw + pad) + pad))
    for r, strip in enumerate(strips):
        for c, img in enumerate(strip):
            y, x = pad + r * (th + pad), pad + c * (tw + pad)
            canvas[y:y + th, x:x + tw] = img

    scale = 2  # digits at 56 px stay legible next to the labels
    fig = new_figure(figsize=(canvas.shape[1] * scale / _DPI, canvas.shape[0] * scale / _DPI), dpi=_DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + r * (th + pad) + (th - 1) / 2 for r in range(len(strips))])
    ax.set_yticklabels(list(rows.keys()))
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title)
    # The labels sit outside the axes; the tight box grows the image to include them.
    return _atomic_savefig(fig, path, bbox_inches="tight", pad_inches=0.05)


# ------------------------------------------------------------------------ curves


def _bernoulli_kl(target: float, rho_hat: np.ndarray) -> np.ndarray:
    """KL(target || rho_hat) between Bernoulli distributions, elementwise."""
    rho_hat = np.asarray(rho_hat, dtype=np.float64)
    return target * np.log(target / rho_hat) + (1.0 - target) * np.log((1.0 - target) / (1.0 - rho_hat))


def plot_kl_penalty(
    target: float,
    path: PathLike,
    *,
    current: Optional[ArrayLike] = None,
    title: Optional[str] = None,
) -> str:
    """Plot the sparsity penalty KL(target || rho_hat) over rho_hat in (0, 1).

    ``KL = t log(t / r) + (1 - t) log((1 - t) / (1 - r))`` is zero at ``r = t`` and
    grows without bound towards 0 and 1; a vertical line marks the minimum. With
    ``current``, each hidden unit's mean activation is drawn as a marker on the curve,
    which shows at a glance how far the units are from the target.

    Args:
        target: the sparsity target ``rho``, in (0, 1).
        path: the destination PNG; parent directories are created.
        current: the mean activations ``rho_hat`` of the hidden units, shape ``(k,)`` (a
            tensor is fine). Values are clipped into [1e-4, 1 - 1e-4] to stay on the plotted
            range.
        title: the figure title (default names the target).

    Returns:
        The path written, as a string.

    Raises:
        ValueError: if ``target`` is not in (0, 1), or ``current`` has non-finite values.
    """
    new_figure = _require_matplotlib()
    target = float(target)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    eps = 1e-4
    # Denser near the ends, where the curve turns steep.
    r = np.concatenate([np.geomspace(eps, 0.5, 400), 1.0 - np.geomspace(0.5, eps, 400)[1:]])
    kl = _bernoulli_kl(target, r)

    fig = new_figure(figsize=(6.0, 4.0), dpi=_DPI)
    ax = fig.add_subplot()
    ax.plot(r, kl, color="C0", label=rf"KL($\rho$ = {target:g} $\|$ $\hat\rho$)")
    ax.axvline(target, color="C1", linestyle="--", label=rf"target $\rho$ = {target:g} (KL = 0)")
    if current is not None:
        cur = np.clip(_to_numpy(current, "current").ravel(), eps, 1.0 - eps)
        total = float(_bernoulli_kl(target, cur).sum())
        ax.scatter(cur, _bernoulli_kl(target, cur), s=12, color="C3", alpha=0.6, zorder=3,
                   label=rf"{cur.size} units' $\hat\rho$ (sum KL = {total:.3g})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel(r"mean activation $\hat\rho$")
    ax.set_ylabel(r"KL($\rho \| \hat\rho$)")
    ax.set_title(title if title is not None else f"Sparsity penalty, target {target:g}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center")
    fig.tight_layout()
    return _atomic_savefig(fig, path)


def save_line_plot(
    series: Mapping[str, ArrayLike],
    path: PathLike,
    *,
    x: Optional[ArrayLike] = None,
    xlabel: str = "epoch",
    ylabel: str = "",
    title: Optional[str] = None,
    logy: bool = False,
) -> str:
    """Plot one or more named curves against a shared x axis, e.g. losses per epoch.

    Args:
        series: name -> 1-D values. Curves may differ in length; each is drawn against the
            first ``len`` entries of ``x``.
        path: the destination PNG; parent directories are created.
        x: the shared 1-D x values (default ``1, 2, ...``); at least as long as the longest
            series.
        xlabel: the x axis label.
        ylabel: the y axis label.
        title: the figure title.
        logy: a logarithmic y axis.

    Returns:
        The path written, as a string.

    Raises:
        ValueError: if ``series`` is empty, a series is not 1-D, or ``x`` is too short.
    """
    new_figure = _require_matplotlib()
    if not series:
        raise ValueError("series is empty")
    ys = {name: _to_numpy(v, f"series[{name!r}]") for name, v in series.items()}
    for name, y in ys.items():
        if y.ndim != 1:
            raise ValueError(f"series[{name!r}] must be 1-D, got shape {y.shape}")
    longest = max(len(y) for y in ys.values())
    xs = np.arange(1, longest + 1) if x is None else _to_numpy(x, "x").ravel()
    if len(xs) < longest:
        raise ValueError(f"x has {len(xs)} values, the longest series {longest}")

    fig = new_figure(figsize=(6.0, 4.0), dpi=_DPI)
    ax = fig.add_subplot()
    for name, y in ys.items():
        ax.plot(xs[: len(y)], y, marker="o" if len(y) < 30 else None, markersize=3, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _atomic_savefig(fig, path)
