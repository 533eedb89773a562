"""``mpiml report --plots DIR``: the PNGs of a report, those that apply to its runs.

- ``metrics.png``, ``metrics-time.png``, ``metrics-bytes.png``: loss and accuracy against
  step, wall time (s) and bytes sent (when every run has ``bytes_sent``), every run's
  lines together (:func:`~mpiml.report.plots.runs.metric_curves`), when some run has
  either metric;
- ``timeline.png``: the per-rank Gantt chart of the report's window (its ``steps`` and
  ``time``; default :func:`~mpiml.report.plots.timeline.default_window`), when the run has
  events (:func:`~mpiml.report.plots.timeline.timeline`);
- ``comm_matrix.png``: from the report's ``comm_matrix`` section: its ``data["matrix"]``,
  bytes source -> destination as ``{"src": {"dst": bytes}}`` (what ``mpiml report``
  writes; the ranks are the union of sources and destinations) or as an n x n list of
  lists with ``data["ranks"]`` for the labels;
- ``staleness.png``: from the ``staleness`` section (``data["histogram"]``,
  ``{"values": [...], "counts": [...]}``).

With several runs the per-run files get the run's position and name:
``timeline-1-<name>.png``, ... (``metrics.png`` stays one file).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .matrix import comm_matrix, histogram
from .runs import metric_curves
from .source import ranks_of, run_name
from .timeline import timeline

if TYPE_CHECKING:
    from ...io.reader import Run

__all__ = ["write_plots"]


def _section(sections: Sequence[Any], key: str) -> Any | None:
    return next((s for s in sections if s.key == key), None)


def _has_events(run: Run) -> bool:
    return any(run.n_events(r) for r in ranks_of(run))


def _matrix(data: dict[str, Any]) -> tuple[Any, list[str] | None] | None:
    """(n x n bytes, labels) of a comm_matrix section's data, None when it has none."""
    m = data.get("matrix")
    if not m:
        return None
    if isinstance(m, dict):
        ranks = sorted({int(s) for s in m} | {int(d) for row in m.values() for d in row})
        pos = {r: i for i, r in enumerate(ranks)}
        out = np.zeros((len(ranks), len(ranks)))
        for src, row in m.items():
            for dst, nbytes in row.items():
                out[pos[int(src)], pos[int(dst)]] = nbytes
        return out, [str(r) for r in ranks]
    labels = data.get("ranks")
    return m, None if labels is None else [str(x) for x in labels]


def _staleness(data: dict[str, Any]) -> Any | None:
    h = data.get("histogram", data)
    if isinstance(h, dict) and "values" in h and "counts" in h and len(h["values"]):
        return {"values": h["values"], "counts": h["counts"]}
    return None


def write_plots(
    runs: Sequence[Run],
    reports: Sequence[Sequence[Any]],
    out_dir: str | Path,
    *,
    steps: tuple[int, int] | None = None,
    time: tuple[float, float] | None = None,
) -> list[Path]:
    """Write the PNGs that apply to ``runs`` (loaded with :func:`mpiml.io.load_run`) into
    ``out_dir`` (created), using ``reports[i]``, the list of
    :class:`mpiml.report.Section` of ``runs[i]``; returns the paths written, in the order
    metrics, then per run timeline, comm_matrix, staleness. ``steps=(a, b)`` (steps a to
    b - 1, 0-based) and ``time=(t0, t1)`` (seconds on the run clock): the report's window,
    which the timelines draw (both given: the events in both); neither: the timeline's
    default window. Raises ValueError when ``reports`` is not one list per run;
    ImportError without matplotlib."""
    if len(reports) != len(runs):
        raise ValueError(
            f"write_plots: {len(reports)} reports for {len(runs)} runs (one list of sections per run)"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if any(m in r.metrics and len(r.metrics[m]) for r in runs for m in ("loss", "accuracy")):
        written.append(metric_curves(list(runs), out / "metrics.png"))
        written.append(metric_curves(list(runs), out / "metrics-time.png", x="time"))
        if all("bytes_sent" in r.metrics and len(r.metrics["bytes_sent"]) for r in runs):
            written.append(metric_curves(list(runs), out / "metrics-bytes.png", x="bytes"))
    for i, (run, sections) in enumerate(zip(runs, reports, strict=True), start=1):
        tag = "" if len(runs) == 1 else f"-{i}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_name(run))}"
        if ranks_of(run) and _has_events(run):
            written.append(timeline(run, out / f"timeline{tag}.png", steps=steps, time=time))
        s = _section(sections, "comm_matrix")
        m = None if s is None else _matrix(s.data)
        if m is not None:
            written.append(
                comm_matrix(
                    m[0],
                    out / f"comm_matrix{tag}.png",
                    labels=m[1],
                    title=f"{run_name(run)}: bytes sent, source -> destination",
                )
            )
        s = _section(sections, "staleness")
        h = None if s is None else _staleness(s.data)
        if s is not None and h is not None:
            written.append(
                histogram(
                    h,
                    out / f"staleness{tag}.png",
                    title=f"{run_name(run)}: {s.title}",
                    xlabel="staleness (versions)",
                )
            )
    return written
