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

__all__ = ["GROUPS", "Lanes", "group_of"]

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


class Lanes:
    """Lane allocation for one rank: ``place(group, t_start, t_end)`` -> (lane, new), the
    lane index within the group and whether that lane was just opened. Memory: one
    float per lane."""

    def __init__(self) -> None:
        self._ends: dict[str, list[float]] = {}

    def place(self, group: str, t_start: float, t_end: float) -> tuple[int, bool]:
        ends = self._ends.setdefault(group, [])
        for i, end in enumerate(ends):
            if t_start >= end:
                ends[i] = max(end, t_end)
                return i, False
        ends.append(t_end)
        return len(ends) - 1, True


def track_name(group: str, lane: int) -> str:
    """``in_flight``, ``in_flight 2``, ... (lanes counted from 1 in names after the first)."""
    return group if lane == 0 else f"{group} {lane + 1}"
