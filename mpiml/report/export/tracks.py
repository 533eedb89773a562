"""Which track (Chrome thread, Perfetto track, OTF2 location) of its rank an event goes on.

One group of tracks per activity: the kinds' categories (compute, codec, communication,
wait, in_flight, bookkeeping) and the point-to-point messages apart (``send``,
``recv``). Within a group, spans that overlap (a rank's in-flight operations, several
messages posted at once, an asynchronous evaluation) go on separate *lanes*: an event
takes the first lane whose last event has ended, so every track holds disjoint spans
in time order, which all three formats need (Chrome and Perfetto break the nesting of
partly overlapping slices; OTF2 needs Enter/Leave nested and monotone per location).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .window import WRITE_CHUNK, Scan, Window, rank_events

__all__ = ["GROUPS", "Lanes", "group_of", "groups_of", "placed"]

# display order of the groups of one rank
GROUPS: tuple[str, ...] = (
    "compute",
    "codec",
    "communication",
    "wait",
    "in_flight",
    "send",
    "recv",
    "bookkeeping",
    "other",
)
MESSAGES = ("send", "recv")


def group_of(kind: str, msg: int, kinds: dict[str, str]) -> str:
    """The track group of an event: ``send``/``recv`` for a message (msg >= 0), else its
    kind's category (``other`` for a kind the run's /kinds does not list)."""
    if msg >= 0 and kind in MESSAGES:
        return kind
    category = kinds.get(kind, "other")
    return category if category in GROUPS else "other"


def groups_of(chunk: np.ndarray, kinds: dict[str, str]) -> np.ndarray:
    """:func:`group_of` of every row of ``chunk`` (READ_DTYPE rows) as an index into
    :data:`GROUPS` (int64), computed once per kind, not per row."""
    names, inverse = np.unique(chunk["kind"], return_inverse=True)
    by_kind = np.array([GROUPS.index(group_of(str(k), -1, kinds)) for k in names], np.int64)
    out = by_kind[inverse] if len(names) else np.zeros(len(chunk), np.int64)
    kind = chunk["kind"]
    message = (chunk["msg"] >= 0) & np.isin(kind, MESSAGES)
    out[message & (kind == "send")] = GROUPS.index("send")
    out[message & (kind == "recv")] = GROUPS.index("recv")
    return out


class Lanes:
    """Lane allocation for one rank, first fit: an event takes the first lane of its
    group whose last event has ended. :meth:`place` one event, :meth:`assign` a chunk;
    each says whether the lane is new (its track must be announced). Memory: one float
    per lane."""

    def __init__(self) -> None:
        self._ends: dict[str, list[float]] = {}
        self._opened: dict[str, int] = {}  # lanes announced per group

    def _open(self, group: str, lane: int) -> bool:
        if lane < self._opened.get(group, 0):
            return False
        self._opened[group] = lane + 1
        return True

    def place(self, group: str, t_start: float, t_end: float) -> tuple[int, bool]:
        """(lane, new) of one event."""
        ends = self._ends.setdefault(group, [])
        for i, end in enumerate(ends):
            if t_start >= end:
                ends[i] = max(end, t_end)
                return i, self._open(group, i)
        ends.append(t_end)
        return len(ends) - 1, self._open(group, len(ends) - 1)

    def assign(self, groups: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> tuple[list[int], list[bool]]:
        """:meth:`place` of every row (``groups``: indices into :data:`GROUPS`; rows in
        start order), vectorised: a row that starts once every earlier row of its group
        has ended takes lane 0 and leaves every other lane free (what first fit does
        then), so only rows that overlap an earlier one are placed one by one."""
        lane = np.zeros(len(groups), np.int64)
        new = np.zeros(len(groups), bool)
        for g in np.unique(groups).tolist():
            name = GROUPS[g]
            idx = np.flatnonzero(groups == g)
            s, e = t0[idx], t1[idx]
            ends = self._ends.setdefault(name, [])
            reach = np.maximum.accumulate(np.concatenate([[max(ends, default=-np.inf)], e]))[:-1]
            free = s >= reach
            last_free = np.maximum.accumulate(np.where(free, np.arange(len(idx)), -1))
            if free[0]:
                new[idx[0]] = self._open(name, 0)
            seen = -1
            for j in np.flatnonzero(~free).tolist():
                k = int(last_free[j])
                if k >= 0 and k != seen:  # a free row came since: lanes are [its end]
                    ends[:] = [float(e[k])]
                    seen = k
                lane[idx[j]], new[idx[j]] = self.place(name, float(s[j]), float(e[j]))
            k = int(last_free[-1])
            if k >= 0 and k != seen and not (~free[k:]).any():
                ends[:] = [float(e[k])]
        return lane.tolist(), new.tolist()


def track_name(group: str, lane: int) -> str:
    """``in_flight``, ``in_flight 2``, ... (lanes counted from 1 in names after the first)."""
    return group if lane == 0 else f"{group} {lane + 1}"


def placed(run: Any, rank: int, window: Window, found: Scan) -> Iterator[Iterator[tuple[Any, ...]]]:
    """Rank ``rank``'s events in ``window``, a chunk (WRITE_CHUNK rows) at a time, each
    row as ((step, kind, t0, t1, nbytes, peer, msg), is_send, flow id, group index, lane,
    new lane): what every writer needs, its track (group and lane, :class:`Lanes`) and
    its flow (:meth:`Scan.flows`: 0 unless a message with both ends in the window)."""
    lanes = Lanes()
    for chunk in rank_events(run, rank, window, WRITE_CHUNK):
        sends, flows = found.flows(chunk, rank)
        codes = groups_of(chunk, run.kinds)
        lane_of, opens = lanes.assign(codes, chunk["t_start"], chunk["t_end"])
        yield zip(chunk.tolist(), sends, flows, codes.tolist(), lane_of, opens, strict=True)
