"""Per-rank event recording: cheap appends in the hot path, numpy tables at flush time.

No h5py here (the run files that store these tables are :mod:`mpiml.io`), so the
protocols can trace without pulling in HDF5.

One event is a row of :data:`EVENT_DTYPE`: (step, kind, t_start, t_end, nbytes, peer,
msg). ``kind`` is a registered kind (:mod:`mpiml.kinds`; at most ``KIND_WIDTH`` = 32
bytes). ``peer`` is the other rank of a point-to-point event (-1 if none). ``msg`` is
a message id (-1 if the event is not a point-to-point message): on a ``send`` the
sender's running count of messages to ``peer`` on that protocol's channel, on a
``recv`` the receiver's running count of messages from ``peer``, so the k-th send
from i to j pairs with j's k-th receive from i: key (source, destination, msg).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from .kinds import KIND_WIDTH, KINDS, category

__all__ = ["EVENT_DTYPE", "Trace"]

EVENT_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("kind", f"S{KIND_WIDTH}"),
        ("t_start", "<f8"),
        ("t_end", "<f8"),
        ("nbytes", "<i8"),
        ("peer", "<i4"),
        ("msg", "<i8"),
    ]
)

# kind -> its encoded name, filled on first use (a kind's category never changes once
# registered, so the cache cannot go stale)
_KIND_BYTES: dict[str, bytes] = {}


def _encode(kind: str) -> bytes:
    category(kind)  # ValueError for a kind nobody registered
    code = _KIND_BYTES[kind] = kind.encode()
    return code


# split_totals' groups: the progress line's names for the categories
_TOTALS = {"compute": "compute", "communication": "comm", "wait": "wait", "in_flight": "in_flight"}


class Trace:
    """Events of one rank: rows of :data:`EVENT_DTYPE`.

    Times are seconds on the run's common clock: ``perf_counter() + offset - t0``
    where ``offset`` comes from :func:`mpiml.clock.sync_clock` and ``t0`` is the
    run's start on rank 0's clock. ``record`` appends a tuple (no numpy work in the
    hot path); ``take`` turns the pending rows into an ``EVENT_DTYPE`` table.
    Per-kind totals are kept for the progress line whether or not events are stored.
    A kind must be registered (:func:`mpiml.kinds.register_kind`), else ``ValueError``.
    """

    def __init__(self, offset: float = 0.0, t0: float = 0.0, enabled: bool = True) -> None:
        self.offset = offset
        self.t0 = t0
        self.enabled = enabled
        self._rows: list[tuple[int, bytes, float, float, int, int, int]] = []
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
        """One event (``msg`` -1); its time counts in ``totals``."""
        code = _KIND_BYTES.get(kind)
        if code is None:
            code = _encode(kind)
        self.totals[kind] += t_end - t_start
        if self.enabled:
            self._rows.append((step, code, t_start, t_end, nbytes, peer, -1))

    def message(
        self, step: int, kind: str, t_start: float, t_end: float, nbytes: int, peer: int, msg: int
    ) -> None:
        """One point-to-point message's event (``send`` or ``recv``, ``msg`` >= 0).

        A message lies inside its protocol's operation span (a gossip round), whose
        time ``totals`` already counts, so a message adds no time to ``totals``."""
        if self.enabled:
            code = _KIND_BYTES.get(kind)
            if code is None:
                code = _encode(kind)
            self._rows.append((step, code, t_start, t_end, nbytes, peer, msg))

    def add_row(self, table: str, dtype: np.dtype, row: tuple, *, always: bool = False) -> None:
        """Append a row to a protocol's own per-rank table (``/ranks/<r>/<table>``;
        ``dtype`` has a ``step`` field). Kept only when events are (``trace.events``),
        unless ``always``: a table the run's record needs (the parameter server's
        apply log and update counts)."""
        if self.enabled or always:
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
        """Totals grouped by category (:mod:`mpiml.kinds`) for the progress line:
        ``compute``, ``comm`` (category ``communication``), ``wait`` (blocked on a
        split-phase operation), ``in_flight`` (split-phase operations under way while
        the rank did other work; overlaps the others). ``bookkeeping`` kinds
        (evaluation, checkpoints) are left out: they are reported apart."""
        out = {"compute": 0.0, "comm": 0.0, "wait": 0.0, "in_flight": 0.0}
        for kind, secs in self.totals.items():
            key = _TOTALS.get(KINDS[kind].category)
            if key is not None:
                out[key] += secs
        return out
