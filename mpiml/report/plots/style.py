"""The plots' look and their one way in and out of matplotlib: palette, sizes, figure, save.

Every figure of mpiml (the run plots, MixML's Figure 3, the benchmarks' PNGs) is made by
:func:`figure` and written by :func:`save`, so they share one palette, one font size and
one resolution, and none needs a display: the figure is matplotlib's object-oriented
:class:`~matplotlib.figure.Figure` on an Agg canvas (no ``pyplot``, no global backend).

matplotlib is the ``plots`` extra (``pip install 'mpiml[plots]'``), imported when a
figure is first made; without it :func:`require` raises a one-line ImportError naming
the extra, so importing :mod:`mpiml.report.plots` itself costs nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["CATEGORY_COLORS", "DPI", "PALETTE", "SIZE", "figure", "fmt_bytes", "require", "save"]

# colour-blind-safe (Okabe & Ito, "Color Universal Design", 2008)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
# one colour per event category (mpiml.kinds.CATEGORIES)
CATEGORY_COLORS = {
    "compute": "#0072B2",
    "codec": "#CC79A7",
    "communication": "#D55E00",
    "wait": "#E69F00",
    "in_flight": "#009E73",
    "bookkeeping": "#999999",
}
SIZE = (8.0, 4.5)  # inches, the default figure size
DPI = 100  # dots per inch: a SIZE figure is 800 x 450 pixels
FONT_SIZE = 9.0

MISSING = "mpiml.report.plots needs matplotlib: pip install 'mpiml[plots]'"


def require() -> Any:
    """The ``matplotlib`` module; ImportError (one line, naming the extra) without it."""
    try:
        import matplotlib
        import matplotlib.figure  # noqa: F401
        from matplotlib.backends import backend_agg  # noqa: F401
    except ImportError:
        raise ImportError(MISSING) from None
    return matplotlib


def figure(
    size: tuple[float, float] = SIZE, nrows: int = 1, ncols: int = 1, **subplots: Any
) -> tuple[Figure, Any]:
    """A new Figure on an Agg canvas with ``nrows x ncols`` Axes (``size`` in inches, drawn
    at :data:`DPI`), laid out by matplotlib's constrained layout; returns (figure, axes)
    where axes is one Axes for 1 x 1, else the numpy array ``Figure.subplots`` gives.
    ``subplots``: further arguments of ``Figure.subplots`` (``sharey``, ``squeeze``...)."""
    mpl = require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with mpl.rc_context({"font.size": FONT_SIZE, "axes.prop_cycle": mpl.cycler(color=PALETTE)}):
        fig = Figure(figsize=size, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, **subplots)
    return fig, axes


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG of exactly its size x :data:`DPI` pixels (no tight bounding
    box) to ``path``, atomically (a temporary file beside it, then a rename), creating
    its folder; returns the Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png", facecolor="white")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fmt_bytes(v: float, _pos: object = None) -> str:
    """A byte count for an axis tick: 0 B, 512 B, 1.5 kB, 20 MB, 3 GB (powers of 1000).

    >>> fmt_bytes(1536), fmt_bytes(2e7), fmt_bytes(0)
    ('1.54 kB', '20 MB', '0 B')
    """
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.3g} {unit}"
    return f"{v:.0f} B"
