"""A run's report: the per-rank time accounting (:mod:`.timeline`) turned into sections.

:func:`build_report` reads one run rank by rank (streaming; one rank's chunk in memory
at a time) and returns a :class:`Report`: the run summary, time per rank and role, the
POP efficiencies, stragglers, late sender, the communication matrix, bytes without a
peer and per-kind totals, then the protocol sections of :mod:`mpiml.report.protocols`
when that module exists. A section that does not apply is not produced.

**POP efficiencies** (the POP Centre of Excellence, "POP standard metrics for parallel
performance analysis", https://pop-coe.eu/node/69; Scalasca's time model): over a set of
ranks with useful time u_i (compute + codec, the time partition's exclusive parts) and
runtime T (first event's start to last event's end over those ranks):
load balance LB = mean(u) / max(u), communication efficiency CommE = max(u) / T,
parallel efficiency PE = LB x CommE = mean(u) / T.

**Stragglers**: a rank whose median step time exceeds the median, over the ranks of its
role, of their median step times by more than ``straggler_threshold`` (a fraction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .efficiency import TRAINING_ROLES, pop_section, straggler_section
from .messages import comm_matrix_section, late_sender_sections
from .protocols import protocol_sections
from .section import Cell, Section
from .timeline import PRIORITY, RankTimeline, rank_timeline

__all__ = ["TRAINING_ROLES", "Report", "build_report"]


@dataclass
class Report:
    """One run's report: its path, sections, the lines saying what could not be read,
    and the per-rank timelines (for plots)."""

    path: str
    sections: list[Section] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    timelines: dict[int, RankTimeline] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sections": [s.to_dict() for s in self.sections], "missing": self.missing}


def _layout_line(run: Any) -> str:
    if not run.layout:
        return "-"
    try:
        from ..layout import Layout

        lay = Layout.from_json(run.attrs["layout"])
        return f"{lay.name}: {lay.roles_line()}"
    except (ValueError, KeyError, TypeError):  # a layout this version cannot rebuild: its name
        return str(run.layout.get("name", "-")) if isinstance(run.layout, dict) else "-"


def _final_metrics(run: Any) -> list[tuple[str, Cell]]:
    out: list[tuple[str, Cell]] = []
    for name in sorted(run.metrics):
        steps, values = run.metric(name)
        if len(values):
            v = float(values[-1])
            out.append((f"{name} (step {int(steps[-1])})", int(v) if name == "bytes_sent" else v))
    return out


def _summary(run: Any, tl: dict[int, RankTimeline], windowed: bool = False) -> Section:
    ranks_line = f"{run.world_size}"
    if len(tl) != run.world_size:
        ranks_line += f" ({len(tl)} read)"
    firsts = [t.t_first for t in tl.values() if t.n_events]
    lasts = [t.t_last for t in tl.values() if t.n_events]
    seen = [t.steps for t in tl.values() if t.steps.size]
    steps: Cell = None
    if seen:
        lo, hi = min(int(x[0]) for x in seen), max(int(x[-1]) for x in seen)
        steps = hi + 1 if lo == 0 else f"{hi - lo + 1} (steps {lo}..{hi}, 0-based)"
    planned = run.config.get("run", {}).get("steps")
    if seen and isinstance(steps, int) and isinstance(planned, int) and steps < planned and not windowed:
        steps = f"{steps} of {planned} (incomplete: the run stopped early, or is still running)"
    sent = sum(sum(t.sent_to_peer.values()) for t in tl.values())
    gaps = max((t.between_launches for t in tl.values()), default=0.0)
    launches = max((t.launches for t in tl.values()), default=1)
    resumed: list[list[Cell]] = []
    if launches > 1:
        resumed = [
            ["launches", f"{launches} (resumed at steps {_steps_text(run)})"],
            ["between launches (s)", gaps],
        ]
    rows: list[list[Cell]] = [
        ["algorithm", run.algorithm or "-"],
        ["layout", _layout_line(run)],
        ["ranks", ranks_line],
        ["steps", steps],
        ["wall (s)", (max(lasts) - min(firsts) - gaps) if firsts else None],
        *resumed,
        ["events", sum(t.n_events for t in tl.values())],
        *[[k, v] for k, v in _final_metrics(run)],
        ["bytes to peers (traced)", sent],
    ]
    notes = [
        "wall: first event's start to last event's end over the ranks read (seconds, run clock), less "
        "the time between the launches of a resumed run (no rank ran: a requeued job waited). "
        "bytes_sent: the run's metric (every byte handed to MPI); bytes to peers: send/push events.",
    ]
    if tl and not any(t.n_events for t in tl.values()):
        if windowed:
            notes.append("The window (--steps / --time) selected no events: only this summary can be given.")
        else:
            notes.append("No events were recorded (trace.events = false?): only this summary can be given.")
    return Section("summary", "Run", ["", "value"], rows, notes)


def _steps_text(run: Any) -> str:
    return ", ".join(str(int(s)) for s in run.resumed_at_steps)


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def _time_section(run: Any, tl: dict[int, RankTimeline]) -> Section:
    cols = ["rank", "role", *PRIORITY, "idle", "wall", "in flight", "hidden", "overlap %", "blocked %"]
    rows: list[list[Cell]] = []
    roles: dict[str, list[RankTimeline]] = {}
    for r, t in sorted(tl.items()):
        roles.setdefault(run.role(r), []).append(t)
        rows.append(
            [
                r,
                run.describe(r),
                *[t.exclusive[c] for c in PRIORITY],
                t.idle,
                t.wall,
                t.in_flight,
                t.hidden,
                _pct(t.overlap),
                _pct(t.blocked_share),
            ]
        )
    for role, ts in roles.items():
        parts = np.array(
            [[*(t.exclusive[c] for c in PRIORITY), t.idle, t.wall, t.in_flight, t.hidden] for t in ts]
        )
        fly, hid, blk = parts[:, -2].sum(), parts[:, -1].sum(), sum(t.blocked for t in ts)
        mean: list[Cell] = [float(x) for x in parts.mean(axis=0)]
        shares = [_pct(hid / fly), _pct(blk / fly)] if fly > 0 else [None, None]
        rows.append([f"mean of {len(ts)}", role, *mean, *shares])
    return Section(
        "time",
        "Time per rank and role (seconds)",
        cols,
        rows,
        [
            "compute..bookkeeping partition each rank's wall time (first event's start to last event's "
            "end): an instant covered by several is counted once, in the first of compute > codec > "
            "communication > wait > bookkeeping; idle is the untraced remainder, so the parts and idle "
            "sum to wall. A resumed run's time between launches is in no part, nor in wall.",
            "in flight: union of the split-phase operations' and messages' spans (start to observed "
            "completion); hidden: its part under compute or codec; overlap % = hidden / in flight; "
            "blocked % = its part under a wait / in flight (the exposed transfer). A span ends at its "
            "observed completion: an operation that only moves in its wait still spans the compute "
            "before it, so a run without progress shows in blocked %, not in overlap %.",
        ],
        {"ranks": {str(r): _timeline_dict(t) for r, t in tl.items()}},
    )


def _timeline_dict(t: RankTimeline) -> dict[str, Any]:
    return {
        "wall": t.wall,
        "t_first": t.t_first,
        "t_last": t.t_last,
        **t.exclusive,
        "idle": t.idle,
        "in_flight": t.in_flight,
        "hidden": t.hidden,
        "blocked": t.blocked,
        "events": t.n_events,
        "median_step_time": t.median_step_time,
    }


def _peerless_section(tl: dict[int, RankTimeline]) -> list[Section]:
    kinds = sorted({k for t in tl.values() for k in t.collective_bytes})
    if not kinds:
        return []
    rows: list[list[Cell]] = [
        [r, *[t.collective_bytes.get(k, 0) for k in kinds]] for r, t in sorted(tl.items())
    ]
    return [
        Section(
            "bytes_no_peer",
            "Bytes without a peer, per rank and kind (collectives, rounds, drains)",
            ["rank", *kinds],
            rows,
            [
                "nbytes of communication and in-flight events with no peer: a collective's payload; a "
                "gossip round's span counts the bytes of its sends (also in the matrix); drain counts "
                "bytes received.",
            ],
        )
    ]


def _kinds_section(run: Any, tl: dict[int, RankTimeline]) -> list[Section]:
    totals: dict[str, list[float]] = {}
    for t in tl.values():
        for k, v in t.kinds.items():
            acc = totals.setdefault(k, [0, 0.0, 0])
            acc[0] += v.count
            acc[1] += v.time
            acc[2] += v.nbytes
    if not totals:
        return []
    rows: list[list[Cell]] = [
        [k, run.kinds.get(k, "?"), int(a[0]), a[1], int(a[2])] for k, a in sorted(totals.items())
    ]
    return [
        Section(
            "kinds",
            "Events per kind (all ranks)",
            ["kind", "category", "events", "time (s)", "bytes"],
            rows,
            ["time: summed durations (overlapping events each count in full; the partition above does not)."],
        )
    ]


def build_report(
    run: Any,
    *,
    steps: tuple[int, int] | None = None,
    time: tuple[float, float] | None = None,
    straggler_threshold: float = 0.1,
    chunk: int = 65536,
) -> Report:
    """The report of one run (a :func:`mpiml.io.load_run` result), rank by rank.

    A rank whose file is missing or cannot be read (also one that fails part way) is
    left out and named in ``Report.missing`` ("rank 2: file missing", "rank 1:
    unreadable: <error>"); the sections describe the ranks read.
    """
    rep = Report(str(run.path))
    rep.missing += [f"rank {r}: file missing" for r in run.missing_ranks]
    rep.missing += [f"rank {r}: unreadable: {e}" for r, e in sorted(run.unreadable_ranks.items())]
    for r in run.ranks:
        try:
            rep.timelines[r] = rank_timeline(run, r, steps=steps, time=time, chunk=chunk)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            rep.missing.append(f"rank {r}: unreadable: {type(exc).__name__}: {exc}")
    tl = rep.timelines
    windowed = steps is not None or time is not None
    rep.sections.append(_summary(run, tl, windowed))
    if any(t.n_events for t in tl.values()):
        rep.sections.append(_time_section(run, tl))
    rep.sections += pop_section(run, tl)
    rep.sections += straggler_section(run, tl, straggler_threshold)
    read = [r for r in run.ranks if r in tl]
    seen = {k for t in tl.values() for k in t.kinds}
    if {"send", "recv"} <= seen:  # else nothing to pair: no pass over the events
        try:
            rep.sections += late_sender_sections(run, ranks=read, steps=steps, time=time)
        except (OSError, KeyError, ValueError) as exc:
            rep.missing.append(f"late sender: messages unreadable: {type(exc).__name__}: {exc}")
    rep.sections += comm_matrix_section(tl)
    rep.sections += _peerless_section(tl)
    rep.sections += _kinds_section(run, tl)
    odd = {r: t.out_of_order for r, t in tl.items() if t.out_of_order}
    if odd:
        rep.missing.append(f"events out of t_start order (their start moved up; ranks {sorted(odd)})")
    try:
        extra = protocol_sections(run)
        if windowed:
            for s in extra:
                s.notes.append("This section covers the whole run: --steps and --time do not cut it.")
        rep.sections += extra
    except (OSError, KeyError, ValueError) as exc:  # a damaged table: say so, report the rest
        rep.missing.append(f"protocol sections: unreadable: {type(exc).__name__}: {exc}")
    return rep


def load(path: str | Path) -> Any:
    """``mpiml.io.load_run`` with its warnings about missing ranks silenced (the report
    says what is missing itself)."""
    import warnings

    from ..io import load_run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_run(path)
