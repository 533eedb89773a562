"""Per-rank event recording: cheap appends in the hot path, numpy tables at flush time."""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

__all__ = ["EVENT_DTYPE", "Trace"]

EVENT_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("kind", "S16"),
        ("t_start", "<f8"),
        ("t_end", "<f8"),
        ("nbytes", "<i8"),
        ("peer", "<i4"),
    ]
)


_KIND_BYTES: dict[str, bytes] = {}

# events of split-phase protocols that span start to completion (Protocol._done); the
# time a rank was blocked in them is recorded apart as "wait"
SPLIT_PHASE_KINDS = frozenset({"iallreduce", "gossip", "callreduce", "cgossip"})


class Trace:
    """Events of one rank: (step, kind, t_start, t_end, nbytes, peer).

    Times are seconds on the run's common clock: ``perf_counter() + offset - t0``
    where ``offset`` comes from :func:`mpiml.clock.sync_clock` and ``t0`` is the
    run's start on rank 0's clock. ``record`` appends a tuple (no numpy work in the
    hot path); ``take`` turns the pending rows into an ``EVENT_DTYPE`` table.
    Per-kind totals are kept for the progress line whether or not events are stored.
    """

    def __init__(self, offset: float = 0.0, t0: float = 0.0, enabled: bool = True) -> None:
        self.offset = offset
        self.t0 = t0
        self.enabled = enabled
        self._rows: list[tuple[int, bytes, float, float, int, int]] = []
        self.totals: dict[str, float] = defaultdict(float)
        self.bytes_sent = 0
        self._tables: dict[str, tuple[np.dtype, list[tuple]]] = {}  # protocol tables: name -> rows
        self._open: dict[int, float] = {}  # spans started, not yet recorded: id -> t_start
        self._next_id = 0

    def now(self) -> float:
        return time.perf_counter() + self.offset - self.t0

    def record(
        self, step: int, kind: str, t_start: float, t_end: float, nbytes: int = 0, peer: int = -1
    ) -> None:
        self.totals[kind] += t_end - t_start
        if self.enabled:
            code = _KIND_BYTES.get(kind)
            if code is None:
                code = _KIND_BYTES[kind] = kind.encode()
            self._rows.append((step, code, t_start, t_end, nbytes, peer))

    def add_row(self, table: str, dtype: np.dtype, row: tuple) -> None:
        """Append a row to a protocol's own per-rank table (``/ranks/<r>/<table>``;
        ``dtype`` has a ``step`` field)."""
        if self.enabled:
            entry = self._tables.get(table)
            if entry is None:
                entry = self._tables[table] = (dtype, [])
            entry[1].append(row)

    def take_tables(self) -> dict[str, np.ndarray]:
        out = {name: np.array(rows, dtype=dt) for name, (dt, rows) in self._tables.items() if rows}
        for _, rows in self._tables.values():
            rows.clear()
        return out

    def sent(self, nbytes: int) -> None:
        """Count bytes this rank handed to MPI to send."""
        self.bytes_sent += nbytes

    def open(self, t_start: float) -> int:
        """Declare a span that began at ``t_start`` and will be recorded later (a
        split-phase operation); rows from ``t_start`` on are held back until it is."""
        self._next_id += 1
        self._open[self._next_id] = t_start
        return self._next_id

    def close(self, span: int) -> None:
        self._open.pop(span, None)

    def take(self, everything: bool = False) -> np.ndarray:
        """The pending rows in order of ``t_start``. Rows at or after the start of a
        span still open stay pending (unless ``everything``), so each rank's table is
        ordered by time even when a split-phase operation is recorded at its end."""
        rows = sorted(self._rows, key=lambda r: r[2])
        if self._open and not everything:
            mark = min(self._open.values())
            cut = next((i for i, r in enumerate(rows) if r[2] >= mark), len(rows))
            rows, self._rows = rows[:cut], rows[cut:]
        else:
            self._rows = []
        return np.array(rows, dtype=EVENT_DTYPE)

    def split_totals(self) -> dict[str, float]:
        """Totals grouped for the progress line: compute, comm (blocking), wait (blocked
        on a split-phase operation), in_flight (split-phase operations under way while
        the rank did other work; overlaps the others)."""
        out = {"compute": 0.0, "comm": 0.0, "wait": 0.0, "in_flight": 0.0}
        for kind, secs in self.totals.items():
            if kind in ("eval", "checkpoint", "flush"):
                continue  # bookkeeping, reported apart
            if kind in ("compute", "update", "merge"):
                out["compute"] += secs
            elif kind == "wait":
                out["wait"] += secs
            elif kind in SPLIT_PHASE_KINDS:  # start-to-completion spans; the blocked part is "wait"
                out["in_flight"] += secs
            else:
                out["comm"] += secs
        return out
