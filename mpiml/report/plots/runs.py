"""Training curves of one or several runs: a metric against step, wall time or bytes sent.

Each run's metrics are the run file's ``/metrics`` tables (step, time, value), written at
every evaluation (docs/run-file.md). Against bytes, the x of a metric row is the run's
``bytes_sent`` metric (cumulative bytes every rank handed to MPI) interpolated linearly
at that row's step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import style
from .source import run_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...io.reader import Run

__all__ = ["XAXES", "metric_curves", "metric_curves_figure"]

XAXES = {
    "step": "step",
    "time": "wall time (s since the run started)",
    "bytes": "bytes sent, all ranks (cumulative)",
}
YLABELS = {
    "loss": "training loss",
    "test_loss": "test loss",
    "accuracy": "test accuracy",
    "consensus_distance": "consensus distance",
}


def _x(run: Run, rows: np.ndarray, x: str) -> np.ndarray | None:
    if x == "step":
        return rows["step"].astype(float)
    if x == "time":
        return rows["time"].astype(float)
    b = run.metrics.get("bytes_sent")
    if b is None or len(b) == 0:
        return None
    return np.interp(rows["step"], b["step"], b["value"].astype(float))


def metric_curves_figure(
    runs: Run | Sequence[Run], *, x: str = "step", metrics: Sequence[str] = ("loss", "accuracy")
) -> Figure:
    """The Figure of :func:`metric_curves` (one panel per metric some run has)."""
    runs = list(runs) if isinstance(runs, Sequence) else [runs]
    if x not in XAXES:
        raise ValueError(f"metric_curves: x must be one of {', '.join(map(repr, XAXES))} (got {x!r})")
    if not runs:
        raise ValueError("metric_curves: no run given")
    present = [m for m in metrics if any(m in r.metrics and len(r.metrics[m]) for r in runs)]
    if not present:
        raise ValueError(f"metric_curves: no run has any of the metrics {list(metrics)}")
    names = [run_name(r) for r in runs]
    if len(set(names)) < len(names):  # same name twice: tell them apart by folder
        names = [f"{n} ({r.path.parent})" for n, r in zip(names, runs, strict=True)]
    fig, axes = style.figure((style.SIZE[0], style.SIZE[1]), 1, len(present), squeeze=False)
    for ax, m in zip(axes[0], present, strict=True):
        for i, (run, name) in enumerate(zip(runs, names, strict=True)):
            rows = run.metrics.get(m)
            if rows is None or not len(rows):
                continue
            xs = _x(run, rows, x)
            if xs is None:
                continue
            ax.plot(
                xs, rows["value"], "-o", markersize=3, color=style.PALETTE[i % len(style.PALETTE)], label=name
            )
        ax.set(xlabel=XAXES[x], ylabel=YLABELS.get(m, m), title=YLABELS.get(m, m))
        if x == "bytes":
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(style.fmt_bytes))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    return fig


def metric_curves(
    runs: Run | Sequence[Run],
    path: str | Path,
    *,
    x: str = "step",
    metrics: Sequence[str] = ("loss", "accuracy"),
) -> Path:
    """Plot ``metrics`` of one run or several (loaded with :func:`mpiml.io.load_run`)
    against ``x``: ``"step"`` (the metric row's step), ``"time"`` (its wall time, seconds
    on the run clock) or ``"bytes"`` (the run's ``bytes_sent`` metric interpolated at the
    row's step; a run without it is left out of that plot). One panel per metric that at
    least one run has, one line per run (legend: the run's name). Writes a PNG of
    :data:`style.SIZE` x :data:`style.DPI` pixels at ``path`` and returns the Path.

    Raises ValueError for an unknown ``x`` or when no run has any of ``metrics``;
    ImportError without matplotlib.
    """
    return style.save(metric_curves_figure(runs, x=x, metrics=metrics), path)
