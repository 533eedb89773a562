"""The report's efficiency sections: POP's load balance, communication and parallel
efficiency, and stragglers, from the per-rank timelines (:mod:`.timeline`). numpy only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .section import Cell, Section
from .timeline import RankTimeline

__all__ = ["TRAINING_ROLES", "pop_section", "straggler_section"]

TRAINING_ROLES = ("replica", "worker", "stage", "rank")
"""Roles whose ranks train (POP's "training ranks"); servers and the scheduler serve."""

_POP = (
    "POP metrics: the POP Centre of Excellence, 'POP standard metrics for parallel performance "
    "analysis' (https://pop-coe.eu/node/69), as in Scalasca (Geimer et al., CCPE 22(6), 2010)."
)


def pop_section(run: Any, tl: dict[int, RankTimeline]) -> list[Section]:
    groups: list[tuple[str, list[int]]] = []
    train = [r for r in sorted(tl) if run.role(r) in TRAINING_ROLES and tl[r].n_events]
    if train:
        groups.append(("training ranks", train))
    by_role: dict[str, list[int]] = {}
    for r in sorted(tl):
        if tl[r].n_events:
            by_role.setdefault(run.role(r), []).append(r)
    if len(by_role) > 1 or not train:
        groups += sorted(by_role.items())
    rows: list[list[Cell]] = []
    for name, ranks in groups:
        u = np.array([tl[r].useful_train for r in ranks])
        T = max(tl[r].wall_train for r in ranks)
        if T <= 0 or u.max() <= 0:
            continue
        lb, comm = float(u.mean() / u.max()), float(u.max() / T)
        rows.append([name, _ranks_text(ranks), lb, comm, lb * comm, float(u.mean()), float(u.max()), T])
    if not rows:
        return []
    return [
        Section(
            "pop",
            "POP efficiencies",
            [
                "over",
                "ranks",
                "load balance",
                "comm. efficiency",
                "parallel efficiency",
                "useful mean (s)",
                "useful max (s)",
                "runtime (s)",
            ],
            rows,
            [
                "Over the training steps (events of step >= 0: set-up such as compiling a codec's kernels "
                "is left out, and so is the time between the launches of a resumed run). useful = the "
                "compute and codec events' time; runtime = the longest rank's time from its first training "
                "event's start to its last event's end. Load balance = mean(useful) / max(useful); "
                "communication efficiency = max(useful) / runtime; parallel efficiency = LB x CommE = "
                "mean(useful) / runtime.",
                f"Training ranks: roles {', '.join(TRAINING_ROLES)} (servers and the scheduler serve).",
                _POP,
            ],
        )
    ]


def _ranks_text(ranks: list[int]) -> str:
    if ranks == list(range(ranks[0], ranks[-1] + 1)) and len(ranks) > 2:
        return f"{ranks[0]}-{ranks[-1]}"
    return ",".join(map(str, ranks))


def straggler_section(run: Any, tl: dict[int, RankTimeline], threshold: float) -> list[Section]:
    by_role: dict[str, list[tuple[int, float]]] = {}
    for r, t in sorted(tl.items()):
        m = t.median_step_time
        if m is not None:
            by_role.setdefault(run.role(r), []).append((r, m))
    rows: list[list[Cell]] = []
    judged = False
    for role, ms in by_role.items():
        if len(ms) < 2:
            continue
        judged = True
        ref = float(np.median([m for _, m in ms]))
        for r, m in ms:
            if ref > 0 and m > ref * (1 + threshold):
                rows.append([r, role, m, ref, 100.0 * (m / ref - 1)])
    injected = _injected(run)
    if not judged and not injected:
        return []
    notes = [
        f"A straggler's median step time exceeds the median over its role's ranks by more than "
        f"{100 * threshold:g} % (--straggler-threshold). A step's time: its first training event's "
        "start to the next step's, less bookkeeping (evaluation, checkpoints)."
    ]
    if not rows:
        notes.insert(0, "No straggler: no rank's median step time is above the threshold.")
    if injected:
        notes.append(
            "The run injected delays (the /ranks/<r>/straggler table, job section [straggler]): "
            + "; ".join(
                f"rank {r}: {n} slowed steps, mean x{m:.2f}" for r, (n, m) in sorted(injected.items())
            )
        )
    return [
        Section(
            "stragglers",
            "Stragglers (median step time against the role's median)",
            ["rank", "role", "median step (s)", "role median (s)", "slower by %"] if rows else [],
            rows,
            notes,
            {"median_step_time": {str(r): t.median_step_time for r, t in tl.items()}, "threshold": threshold},
        )
    ]


def _injected(run: Any) -> dict[int, tuple[int, float]]:
    try:
        tables = run.table("straggler")
    except OSError:  # a rank's file became unreadable: its delays are not shown
        return {}
    return {
        int(r): (len(rows), float(np.mean(rows["multiplier"])))
        for r, rows in tables.items()
        if len(rows) and "multiplier" in (rows.dtype.names or ())
    }
