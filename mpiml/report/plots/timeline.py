"""Per-rank timeline (a Gantt chart) of a short window of a run, with message arrows.

One row per rank (labelled with its role, :meth:`mpiml.io.Run.describe`); its events as
bars coloured by category (the run file's ``/kinds``: compute, codec, communication,
wait, bookkeeping), its ``in_flight`` spans (a split-phase operation or a message from
post to observed completion, overlapping the rest) as thin bars under them, and one
arrow per paired message from the start of its send (on the source's row) to the end
of its receive (on the destination's row). Times: seconds on the run's common clock.

A timeline is for a short window: the events and arrows drawn are capped
(:data:`MAX_EVENTS`, :data:`MAX_ARROWS`) and the title says so when a cap cut them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import style
from .source import messages, rank_events, ranks_of, run_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ...io.reader import Run

__all__ = ["DEFAULT_STEPS", "MAX_ARROWS", "MAX_EVENTS", "default_window", "timeline", "timeline_figure"]

MAX_EVENTS = 4000  # bars drawn, all ranks together
MAX_ARROWS = 300  # message arrows drawn
DEFAULT_STEPS = 3  # the default window: this many steps
BAR = 0.56  # height of an event bar (one rank's row is 1)
THIN = 0.12  # height of an in-flight bar


def default_window(run: Run) -> tuple[int, int]:
    """Steps [1, 1 + DEFAULT_STEPS): step 0 carries the start-up (compiling codec kernels,
    the first connections), which would squeeze the steady steps to slivers; [0, 3)
    when the run has at most DEFAULT_STEPS + 1 steps."""
    steps = int((run.config.get("run") or {}).get("steps", 0) or 0)
    first = 1 if steps > DEFAULT_STEPS + 1 else 0
    return first, first + DEFAULT_STEPS


def _label(run: Run, r: int) -> str:
    role = run.describe(r)
    return f"rank {r}" + (f"\n{role}" if role and role != "rank" else "")


def timeline_figure(
    run: Run,
    *,
    ranks: Sequence[int] | None = None,
    time: tuple[float, float] | None = None,
    steps: tuple[int, int] | None = None,
    size: tuple[float, float] | None = None,
    max_events: int = MAX_EVENTS,
    max_arrows: int = MAX_ARROWS,
) -> Figure:
    """The Figure of :func:`timeline`; its Axes holds one ``Annotation`` per message
    arrow drawn (``Axes.texts``) and one ``BrokenBarHCollection``/``PolyCollection`` per
    rank and category."""
    if time is None and steps is None:
        steps = default_window(run)
    parts = [] if steps is None else [f"steps {steps[0]}-{steps[1] - 1}"]
    parts += [] if time is None else [f"t = {time[0]:g}-{time[1]:g} s"]
    window = ", ".join(parts)
    shown = ranks_of(run) if ranks is None else sorted(ranks)
    missing = sorted(set(shown) - set(ranks_of(run)))
    if missing:
        raise ValueError(f"timeline: ranks {missing} have no events in this run (it has {ranks_of(run)})")
    if not shown:
        raise ValueError("timeline: the run has no rank with events")
    row = {r: i for i, r in enumerate(shown)}
    size = size or (style.SIZE[0], max(3.0, 1.5 + 0.7 * len(shown)))
    fig, ax = style.figure(size)
    per_rank = max(1, max_events // len(shown))
    drawn = total = 0
    lo, hi = np.inf, -np.inf
    cats_seen: set[str] = set()
    for r in shown:
        ev = rank_events(run, r, steps=steps, time=time)
        total += len(ev)
        ev = ev[:per_rank]
        drawn += len(ev)
        if not len(ev):
            continue
        lo, hi = min(lo, float(ev["t_start"].min())), max(hi, float(ev["t_end"].max()))
        cats = np.array([run.kinds.get(k, "compute") for k in ev["kind"]])
        y = row[r]
        for cat in style.CATEGORY_COLORS:
            sel = ev[cats == cat]
            if not len(sel):
                continue
            cats_seen.add(cat)
            spans = np.column_stack([sel["t_start"], sel["t_end"] - sel["t_start"]])
            if cat == "in_flight":
                ax.broken_barh(
                    spans, (y + BAR / 2 + 0.02, THIN), facecolors=style.CATEGORY_COLORS[cat], alpha=0.6
                )
            else:
                ax.broken_barh(
                    spans, (y - BAR / 2, BAR), facecolors=style.CATEGORY_COLORS[cat], edgecolor="none"
                )
    msgs = messages(run, ranks=shown, steps=steps, time=time)
    arrows = msgs[:max_arrows]
    for m in arrows:
        ax.annotate(
            "",
            xy=(float(m["t_recv_end"]), row[int(m["dst"])]),
            xytext=(float(m["t_send_start"]), row[int(m["src"])]),
            arrowprops={
                "arrowstyle": "->",
                "color": "#333333",
                "lw": 0.7,
                "alpha": 0.7,
                "shrinkA": 0,
                "shrinkB": 0,
            },
        )
    if time is not None:
        lo, hi = time
    if np.isfinite(lo) and hi > lo:
        pad = 0.01 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(len(shown) - 0.3, -0.7)  # rank 0 on top
    ax.set_yticks(range(len(shown)), [_label(run, r) for r in shown])
    ax.set_xlabel("time (s since the run started)")
    title = f"{run_name(run)}: timeline, {window}"
    cut = []
    if drawn < total:
        cut.append(f"first {drawn} of {total} events")
    if len(arrows) < len(msgs):
        cut.append(f"first {len(arrows)} of {len(msgs)} messages")
    if cut:
        title += f" ({', '.join(cut)} drawn)"
    ax.set_title(title)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [
        Patch(color=style.CATEGORY_COLORS[c], label=c.replace("_", " "))
        for c in style.CATEGORY_COLORS
        if c in cats_seen
    ]
    if len(arrows):
        handles.append(
            Line2D([], [], color="#333333", lw=0.7, marker=">", label="message (send start -> recv end)")
        )
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def timeline(
    run: Run,
    path: str | Path,
    *,
    ranks: Sequence[int] | None = None,
    time: tuple[float, float] | None = None,
    steps: tuple[int, int] | None = None,
    size: tuple[float, float] | None = None,
) -> Path:
    """Write the per-rank Gantt chart of ``run`` (a :func:`mpiml.io.load_run` Run) as a
    PNG at ``path``; returns the Path.

    ``ranks``: the ranks to show (default: every rank whose file opened); the window is
    ``time=(t0, t1)`` (seconds since the run started; events overlapping it) and/or
    ``steps=(a, b)`` (steps a to b - 1, 0-based; both given: the events in both),
    default :func:`default_window`.
    Arrows: the paired messages (``run.messages``) with both ends among ``ranks`` in the
    window; a run without message ids (schema 1, collectives only) has none.
    ``size``: inches (default 8 wide, 1.5 + 0.7 per rank high, at least 3), drawn at
    :data:`style.DPI`.

    Raises ValueError when a rank has no events file;
    ImportError without matplotlib.
    """
    return style.save(timeline_figure(run, ranks=ranks, time=time, steps=steps, size=size), path)
