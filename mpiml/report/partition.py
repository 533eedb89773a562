"""The streaming partition of one rank's time by the categories of its events.

**The partition.** At every instant of the rank's wall time (its first event's start to
its last event's end) the rank is attributed to exactly one of :data:`PRIORITY`'s
categories, the first of them that an event covers at that instant, or to ``idle``
(untraced: no event of those categories covers it). So
``sum(exclusive.values()) + idle == wall``. The priority is compute > codec >
communication > wait > bookkeeping: local work wins (an evaluation that overlaps
training steps, as asynchronous algorithms' split-phase evaluations do, counts as
bookkeeping only where nothing else was recorded). ``in_flight`` is not part of the
partition: it is the measure of the union of in-flight spans (split-phase operations
and their messages), and ``hidden`` its part covered by compute or codec; overlap =
hidden / in_flight (HTA's "communication-computation overlap": the share of
communication time under computation). ``blocked`` is in-flight time under a ``wait``
event: the exposed part of a split-phase operation. An in-flight span ends at its
*observed* completion, so an operation that only moves in its wait (DaSGD with
``progress = "none"``) still spans the compute before it: its overlap stays high and
its blocked share shows the difference.

:class:`Partition` is fed chunk by chunk (events in ``t_start`` order) and holds, between
chunks, at most one carried interval per category. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["IN_FLIGHT", "PRIORITY", "USEFUL", "Partition"]

PRIORITY = ("compute", "codec", "communication", "wait", "bookkeeping")
"""The categories that partition a rank's wall time, highest priority first."""
IN_FLIGHT = "in_flight"
USEFUL = ("compute", "codec")  # local work: what hides communication, and POP's useful time
_LABELS = (*PRIORITY, IN_FLIGHT)


class Partition:
    """The streaming partition of time by labelled intervals (:data:`PRIORITY` and
    in-flight), fed chunk by chunk with a non-decreasing frontier.

    ``feed(intervals, frontier)``: ``intervals`` maps a label to (starts, ends) arrays;
    every interval fed later starts at or after ``frontier``, so the coverage before it
    is final and is measured now; the parts after it are carried, one interval per
    label (all carried parts start at the frontier, so their union is one interval).
    An interval that starts before the previous frontier (out of order) has its start
    moved up to it and is counted in ``out_of_order``.
    """

    def __init__(self, start: float = -np.inf) -> None:
        self.frontier = start  # time before it is accounted for; -inf: from the first interval
        self.carry: dict[str, float] = {}  # label -> end of [frontier, end)
        self.exclusive = dict.fromkeys(PRIORITY, 0.0)
        self.idle = 0.0
        self.in_flight = 0.0
        self.hidden = 0.0
        self.blocked = 0.0
        self.out_of_order = 0
        self._book: list[tuple[np.ndarray, np.ndarray]] = []  # bookkeeping-exclusive segments

    def feed(self, intervals: Mapping[str, tuple[np.ndarray, np.ndarray]], frontier: float) -> None:
        old = self.frontier
        frontier = max(frontier, old)
        spans: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        edges = [np.array([frontier])] if np.isfinite(frontier) else []
        if np.isfinite(old):
            edges.append(np.array([old]))
        for label in _LABELS:
            s, e = intervals.get(label, (np.empty(0), np.empty(0)))
            if np.isfinite(old) and s.size:
                early = s < old
                self.out_of_order += int(np.count_nonzero(early))
                s = np.maximum(s, old)
            if label in self.carry:
                s = np.append(s, old)
                e = np.append(e, self.carry[label])
            keep = e > s
            s, e = s[keep], e[keep]
            if not s.size:
                self.carry.pop(label, None)
                continue
            end = float(e.max())
            if end > frontier:
                self.carry[label] = end
            else:
                self.carry.pop(label, None)
            e = np.minimum(e, frontier)
            keep = e > s
            spans[label] = (s[keep], e[keep])
            edges += [s[keep], e[keep]]
        self.frontier = frontier
        if not edges:
            return
        b = np.unique(np.concatenate(edges))
        b = b[(b >= (old if np.isfinite(old) else -np.inf)) & (b <= frontier)]
        if b.size < 2:
            return
        at, length = b[:-1], np.diff(b)
        cover = {}
        for label, (s, e) in spans.items():  # coverage counts: +1 at each start, -1 at each end
            delta = np.bincount(np.searchsorted(b, s), minlength=b.size)
            delta -= np.bincount(np.searchsorted(b, e), minlength=b.size)
            cover[label] = np.cumsum(delta[:-1]) > 0
        none = np.zeros(at.size, bool)
        free = np.ones(at.size, bool)
        for c in PRIORITY:
            cov = cover.get(c, none)
            mine = cov & free
            self.exclusive[c] += float(length[mine].sum())
            if c == "bookkeeping" and mine.any():
                self._book.append((at[mine], at[mine] + length[mine]))
            free &= ~cov
        self.idle += float(length[free].sum())
        fly = cover.get(IN_FLIGHT, none)
        self.in_flight += float(length[fly].sum())
        busy = cover.get("compute", none) | cover.get("codec", none)
        self.hidden += float(length[fly & busy].sum())
        self.blocked += float(length[fly & cover.get("wait", none)].sum())

    def close(self, end: float) -> None:
        """Measure what is carried, up to ``end`` (the rank's last event's end)."""
        if self.carry or end > self.frontier:
            self.feed({}, end)

    def bookkeeping_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """The bookkeeping-exclusive time as sorted disjoint [start, end) segments."""
        if not self._book:
            return np.empty(0), np.empty(0)
        return np.concatenate([s for s, _ in self._book]), np.concatenate([e for _, e in self._book])


def _measure_before(starts: np.ndarray, ends: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Measure of the disjoint sorted segments [starts, ends) before each time in ``t``."""
    if not starts.size:
        return np.zeros(t.shape)
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)])
    k = np.searchsorted(starts, t, "right")  # segments starting at or before t
    last = np.maximum(k - 1, 0)
    partial = np.clip(t - starts[last], 0.0, ends[last] - starts[last])
    return np.where(k > 0, cum[last] + partial, 0.0)
