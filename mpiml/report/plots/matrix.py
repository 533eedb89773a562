"""A communication matrix as a heatmap and a distribution as a histogram.

:func:`comm_matrix`: bytes sent from each source rank (row) to each destination (column),
as the report's ``comm_matrix`` section computes them; :func:`histogram`: e.g. the
report's staleness distribution (updates applied with a model that many versions old).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ANNOTATE_UP_TO", "comm_matrix", "comm_matrix_figure", "histogram", "histogram_figure"]

ANNOTATE_UP_TO = 12  # cells are annotated with their byte count up to this many ranks


def comm_matrix_figure(
    matrix: Any,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    size: tuple[float, float] | None = None,
) -> Figure:
    """The Figure of :func:`comm_matrix`."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not m.size:
        raise ValueError(f"comm_matrix: matrix must be square n x n with n >= 1 (got shape {m.shape})")
    n = m.shape[0]
    labels = [str(r) for r in range(n)] if labels is None else [str(x) for x in labels]
    if len(labels) != n:
        raise ValueError(f"comm_matrix: {len(labels)} labels for a {n} x {n} matrix")
    fig, ax = style.figure(size or (6.0, 5.0))
    image = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=max(float(m.max()), 1.0))
    bar = fig.colorbar(image, ax=ax)
    from matplotlib.ticker import FuncFormatter

    bar.formatter = FuncFormatter(style.fmt_bytes)
    bar.update_ticks()
    bar.set_label("bytes sent")
    ax.set_xticks(
        range(n),
        labels,
        rotation=45 if max(map(len, labels)) > 3 else 0,
        ha="right" if max(map(len, labels)) > 3 else "center",
    )
    ax.set_yticks(range(n), labels)
    ax.set(
        xlabel="destination rank", ylabel="source rank", title=title or "bytes sent, source -> destination"
    )
    if n <= ANNOTATE_UP_TO:
        top = float(m.max()) or 1.0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, style.fmt_bytes(m[i, j]) if m[i, j] else "-", ha="center", va="center",
                        fontsize="small", color="white" if m[i, j] > 0.6 * top else "black")  # fmt: skip
    return fig


def comm_matrix(
    matrix: Any,
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    size: tuple[float, float] | None = None,
) -> Path:
    """Write the heatmap of ``matrix`` (n x n, bytes sent from rank ``i`` (row) to rank
    ``j`` (column); any array-like of numbers) as a PNG at ``path``; returns the Path.

    ``labels``: n tick labels (default the indices 0..n-1); cells are annotated with
    their byte count when n <= :data:`ANNOTATE_UP_TO`. ``size`` in inches (default 6 x 5)
    at :data:`style.DPI`. Raises ValueError for a matrix that is not square or labels
    of the wrong length; ImportError without matplotlib.
    """
    return style.save(comm_matrix_figure(matrix, labels=labels, title=title, size=size), path)


def _counts(data: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(values, counts) of already-counted data, None for raw values."""
    if isinstance(data, Mapping):
        if "values" not in data or "counts" not in data:
            raise ValueError(f"histogram: a mapping needs 'values' and 'counts' (got keys {sorted(data)})")
        v, c = np.asarray(data["values"], dtype=float), np.asarray(data["counts"], dtype=float)
    elif isinstance(data, tuple) and len(data) == 2:
        v, c = np.asarray(data[0], dtype=float), np.asarray(data[1], dtype=float)
    else:
        return None
    if v.shape != c.shape or v.ndim != 1:
        raise ValueError(
            f"histogram: values and counts must be 1-D of one length (got {v.shape} and {c.shape})"
        )
    return v, c


def histogram_figure(
    values_or_counts: Any, *, title: str = "", xlabel: str = "", size: tuple[float, float] | None = None
) -> Figure:
    """The Figure of :func:`histogram`."""
    fig, ax = style.figure(size or style.SIZE)
    counted = _counts(values_or_counts)
    if counted is not None:
        v, c = counted
        width = float(np.min(np.diff(np.unique(v)))) * 0.8 if len(np.unique(v)) > 1 else 0.8
        ax.bar(v, c, width=width, color=style.PALETTE[0])
        total = int(c.sum())
        integers = bool(np.all(v == np.round(v)))
    else:
        x = np.asarray(values_or_counts, dtype=float).ravel()
        x = x[np.isfinite(x)]
        if np.all(x == np.round(x)) and x.size and x.max() - x.min() <= 200:  # integers: one bar each
            bins: Any = np.arange(x.min() - 0.5, x.max() + 1.5)
        else:
            bins = "auto"
        ax.hist(x, bins=bins, color=style.PALETTE[0], edgecolor="white")
        total = int(x.size)
        integers = not isinstance(bins, str)
    if integers:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel=xlabel, ylabel=f"count (of {total})")
    ax.grid(axis="y", alpha=0.3)
    return fig


def histogram(
    values_or_counts: Any,
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    size: tuple[float, float] | None = None,
) -> Path:
    """Write a histogram as a PNG at ``path``; returns the Path.

    ``values_or_counts``: raw values (a 1-D array-like; integers get one bar each, when
    they span at most 200, else matplotlib's automatic bins; non-finite values are left
    out), or already counted ones: ``{"values": [...], "counts": [...]}`` or a
    ``(values, counts)`` tuple (one bar per value). ``size`` in inches (default
    :data:`style.SIZE`) at :data:`style.DPI`. Raises ValueError for counts whose shape
    differs from their values'; ImportError without matplotlib.
    """
    return style.save(histogram_figure(values_or_counts, title=title, xlabel=xlabel, size=size), path)
