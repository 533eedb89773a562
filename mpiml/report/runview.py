"""What the protocol sections read of a run, one rank or one table at a time.

Thin accessors over the lazy :class:`mpiml.io.Run` (``ranks``, ``tables``,
``iter_events``), so that an analysis never holds more than one rank's tables or one
chunk of events at a time. Pure reading; no MPI.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["algorithm", "iter_events", "metric_rows", "ranks", "role", "stage_ranks", "table", "tables_named"]


def ranks(run: Any) -> list[int]:
    """Ranks whose files could be read, ascending."""
    return sorted(int(r) for r in run.ranks)


def algorithm(run: Any) -> str:
    """``algorithm.name`` of the run (from the ``algorithm`` attribute or the config)."""
    name = run.attrs.get("algorithm") or run.config.get("algorithm", {}).get("name", "")
    return str(name)


def role(run: Any, r: int) -> dict[str, Any] | None:
    """Rank r's role as the layout's dict (kind, stage, group, shard, reads); None when
    the run recorded no layout (schema 1)."""
    layout = run.layout
    if not layout:
        return None
    roles = layout.get("roles") or []
    return dict(roles[r]) if 0 <= r < len(roles) else None


def stage_ranks(run: Any) -> dict[int, tuple[int, int]]:
    """{rank: (stage k, pipeline p)} of every pipeline stage rank that was read."""
    out = {}
    for r in ranks(run):
        ro = role(run, r)
        if ro is not None and ro.get("kind") == "stage":
            out[r] = (int(ro.get("stage", 0)), int(ro.get("group", 0)))
    return out


def table(run: Any, r: int, name: str) -> np.ndarray | None:
    """Rank r's per-rank table ``name`` (read on access), None when the rank wrote none."""
    try:
        tabs = run.tables[r]
        return tabs[name] if name in tabs else None
    except (KeyError, IndexError):
        return None


def tables_named(run: Any, name: str) -> dict[int, np.ndarray]:
    """{rank: rows} of every readable rank that wrote table ``name``, read rank by rank."""
    out = {}
    for r in ranks(run):
        t = table(run, r, name)
        if t is not None:
            out[r] = t
    return out


def metric_rows(run: Any, name: str) -> np.ndarray | None:
    """The metric's (step, time, value) rows, None when the run has no such metric."""
    try:
        return np.asarray(run.metrics[name])
    except (KeyError, TypeError):
        return None


def iter_events(run: Any, r: int, kinds: Iterable[str] | None = None) -> Iterator[np.ndarray]:
    """Rank r's events (READ_DTYPE rows) in the reader's chunks, ``kinds`` only if given."""
    yield from run.iter_events(r, kinds=None if kinds is None else set(kinds))
