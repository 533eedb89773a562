"""Line plots of named series in one or several panels: MixML's Figure 3, the benchmarks'
accuracy curves.

A :class:`Panel` is one Axes (title, axis labels and scales, its :class:`Series`, dashed
horizontal reference lines); :func:`line_panels_figure` lays panels out in a grid and
:func:`line_panels` writes them as a PNG. Points with a non-finite coordinate are left
out (the line breaks there, as matplotlib does with NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Panel", "Series", "line_panels", "line_panels_figure"]


@dataclass(frozen=True)
class Series:
    """One line: ``x`` and ``y`` (same length, numbers), its legend ``label``;
    ``dashed``: a dashed line without markers (a bound, a model), else solid with markers;
    ``color``: a matplotlib colour (default: the next of :data:`style.PALETTE`)."""

    x: Sequence[float]
    y: Sequence[float]
    label: str
    dashed: bool = False
    color: str | None = None


@dataclass(frozen=True)
class Panel:
    """One Axes: its lines, title, axis labels (with units), scales (``"linear"`` or
    ``"log"``), ``hlines``: (y, label) dashed grey reference lines across the panel;
    ``bytes_x``: x ticks written as byte counts (kB, MB)."""

    series: Sequence[Series]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    yscale: str = "linear"
    hlines: Sequence[tuple[float, str]] = field(default_factory=tuple)
    bytes_x: bool = False


def line_panels_figure(
    panels: Sequence[Panel],
    *,
    ncols: int = 1,
    size: tuple[float, float] | None = None,
    sharey: bool = False,
    title: str = "",
    legend: str = "best",
) -> Figure:
    """The Figure of ``panels`` in a grid of ``ncols`` columns (row-major), ``size`` in
    inches (default: 8 wide, 4.5 per row of panels); ``legend``: a matplotlib legend
    location, or ``"outside"`` for one to the right of each panel. Raises ValueError when
    there is no panel or a panel has no series."""
    if not panels:
        raise ValueError("line_panels: no panel to draw")
    nrows = -(-len(panels) // ncols)
    size = size or (style.SIZE[0], style.SIZE[1] * nrows)
    fig, axes = style.figure(size, nrows, ncols, squeeze=False, sharey=sharey)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, panels, strict=False):
        if not p.series:
            raise ValueError(f"line_panels: panel {p.title!r} has no series")
        for i, s in enumerate(p.series):
            x, y = np.asarray(s.x, dtype=float), np.asarray(s.y, dtype=float)
            if x.shape != y.shape:
                raise ValueError(f"line_panels: series {s.label!r} has {x.size} x and {y.size} y values")
            colour = s.color or style.PALETTE[i % len(style.PALETTE)]
            if s.dashed:
                ax.plot(x, y, "--", color=colour, label=s.label)
            else:
                ax.plot(x, y, "-o", color=colour, markersize=3, label=s.label)
        for level, label in p.hlines:
            ax.axhline(level, color="#777777", linestyle=":", linewidth=1.2, label=label)
        ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel, xscale=p.xscale, yscale=p.yscale)
        xs = np.concatenate([np.asarray(s.x, dtype=float) for s in p.series])
        # a few whole numbers (workers n): whole ticks, not 2.25, 2.5...
        if p.xscale == "linear" and np.all(xs == np.round(xs)) and np.ptp(xs) <= 20:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if p.bytes_x:
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(style.fmt_bytes))
        ax.grid(alpha=0.3)
        if legend == "outside":
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        else:
            ax.legend(loc=legend, fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def line_panels(panels: Sequence[Panel], path: str | Path, **kw: Any) -> Path:
    """:func:`line_panels_figure` written as a PNG at ``path``; returns the Path."""
    return style.save(line_panels_figure(panels, **kw), path)
