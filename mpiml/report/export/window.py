"""What an export takes from a run: the window (ranks, steps, time) and its events.

A :class:`Window` is parsed from the command line's ``--ranks 0,2-3``, ``--steps A:B``
and ``--time A:B``; :func:`rank_events` streams one rank's events inside it in chunks
(memory O(chunk)); :func:`scan` is the first pass every format makes: which messages
have both ends in the window (for flow arrows and OTF2's MPI records) and the earliest
event time (OTF2 and Perfetto timestamps are unsigned).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CHUNK",
    "WRITE_CHUNK",
    "ExportError",
    "Scan",
    "Window",
    "describe",
    "message_ids",
    "parse_range",
    "parse_ranks",
    "rank_events",
    "scan",
    "segments",
]

CHUNK = 65536  # rows the first pass reads at a time: memory O(CHUNK), whatever the file size
# rows a writer formats at a time: each row becomes Python objects (~100 bytes a field),
# so fewer than the first pass's
WRITE_CHUNK = 8192


class ExportError(ValueError):
    """A bad window or format: the command prints it as one line (exit status 2)."""


def parse_ranks(text: str) -> list[int]:
    """``"0,2-3"`` -> ``[0, 2, 3]`` (sorted, no repeats). ExportError when malformed."""
    ranks: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo = int(a)
            hi = int(b) if sep else lo
        except ValueError:
            raise ExportError(f"--ranks takes a list of ranks and ranges like 0,2-3 (got {text!r})") from None
        if lo < 0 or hi < lo:
            raise ExportError(f"--ranks: {part.strip()!r} is not a rank or a range lo-hi with 0 <= lo <= hi")
        ranks.update(range(lo, hi + 1))
    return sorted(ranks)


def parse_range(option: str, text: str, kind: type[int] | type[float]) -> tuple[Any, Any]:
    """``"A:B"`` -> (A, B), half-open; either end may be left out (``":B"``, ``"A:"``).
    ExportError unless A < B."""
    a, sep, b = text.partition(":")
    if not sep:
        raise ExportError(f"{option} takes A:B (got {text!r})")
    try:
        lo = kind(a) if a.strip() else -np.inf
        hi = kind(b) if b.strip() else np.inf
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ExportError(f"{option} takes A:B with {what} A < B (got {text!r})") from None
    if not lo < hi:
        raise ExportError(f"{option} takes A:B with A < B (got {text!r})")
    return lo, hi


@dataclass(frozen=True)
class Window:
    """The part of a run to export. ``ranks``: None for every rank; ``steps``: [a, b) on
    the 0-based ``step`` column; ``time``: [t0, t1) in seconds on the run clock, keeping
    the events that overlap it (not clipped)."""

    ranks: tuple[int, ...] | None = None
    steps: tuple[float, float] | None = None
    time: tuple[float, float] | None = None

    def select(self, run: Any) -> list[int]:
        """The ranks to export: the window's, each checked against the run (ExportError
        for a rank the run does not have), less those whose files are missing or
        unreadable (the caller says which)."""
        world = run.world_size
        if self.ranks is not None:
            bad = [r for r in self.ranks if r >= world]
            if bad:
                raise ExportError(f"--ranks: rank {bad[0]} is not in the run (ranks 0..{world - 1})")
        there = set(run.ranks)
        return [r for r in (self.ranks if self.ranks is not None else range(world)) if r in there]

    def absent(self, run: Any) -> list[tuple[int, str]]:
        """(rank, why) for each rank of the window whose file is missing or unreadable."""
        wanted = set(self.ranks) if self.ranks is not None else set(range(run.world_size))
        out = [(r, "its file is missing") for r in run.missing_ranks if r in wanted]
        out += [
            (r, f"its file could not be read ({e})") for r, e in run.unreadable_ranks.items() if r in wanted
        ]
        return sorted(out)


def describe(run: Any, rank: int) -> str:
    """``rank 3 · stage 1 of pipeline 0``: the rank and its role, for track names
    (``rank 3`` alone for a run file without a layout)."""
    text = run.describe(rank)
    return f"rank {rank}" if text == "rank" else f"rank {rank} · {text}"


def rank_events(run: Any, rank: int, window: Window, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """Rank ``rank``'s events inside ``window``, in file order, in chunks of at most
    ``chunk`` rows (``READ_DTYPE``: step, kind str, t_start, t_end s, nbytes, peer, msg),
    read by the lazy reader (memory O(chunk)). RankReadError when the file fails."""
    steps = None if window.steps is None else _int_range(window.steps)
    yield from run.iter_events(rank, steps=steps, time=window.time, chunk=chunk)


def _int_range(steps: tuple[float, float]) -> tuple[int, int]:
    big = np.iinfo(np.int64).max
    lo = -big if steps[0] == -np.inf else int(steps[0])
    hi = big if steps[1] == np.inf else int(steps[1])
    return lo, hi


def segments(run: Any) -> np.ndarray:
    """The steps at which the run was resumed (message ids restart there), sorted."""
    return run.resumed_at_steps  # sorted


SEGMENTS = 1024  # run segments (resumes + 1) a flow id tells apart


@dataclass
class Scan:
    """What the first pass found: ``paired`` the flow ids (:func:`message_ids`) of the
    messages whose send and receive are both in the window, sorted (8 bytes a message);
    ``t0`` the earliest event start (0.0 when there is none); ``counts`` events per rank;
    ``names`` each rank's track name (:func:`describe`); ``failed`` {rank: error} for
    the ranks whose file failed part way (left out of the export)."""

    world: int
    resumed: np.ndarray
    paired: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    t0: float = 0.0
    counts: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)

    def flows(self, chunk: np.ndarray, rank: int) -> tuple[list[bool], list[int]]:
        """Per row of ``chunk`` (rank ``rank``'s events): whether it is a send, and its
        flow id when it is a message with both ends in the window, else 0."""
        send, ids = message_ids(chunk, rank, self.resumed, self.world)
        if len(self.paired):  # sorted: a binary search per row, not a hash of all of them per chunk
            at = np.minimum(np.searchsorted(self.paired, ids), len(self.paired) - 1)
            ids[self.paired[at] != ids] = 0
        else:
            ids[:] = 0
        return send.tolist(), ids.tolist()


def message_ids(
    chunk: np.ndarray, rank: int, resumed: np.ndarray, world: int
) -> tuple[np.ndarray, np.ndarray]:
    """(is a send, flow id) per row of ``chunk``; the id is 0 for a row that is not a
    message (``send``/``recv`` with ``msg`` >= 0). A message's id is the same at both
    ends, unique in the run: 1 + ((msg * SEGMENTS + segment) * world + src) * world + dst,
    where the segment counts the resumes at or before its step (ids restart there)."""
    kind = chunk["kind"]
    send = kind == "send"
    is_msg = (chunk["msg"] >= 0) & (send | (kind == "recv"))
    peer = chunk["peer"].astype(np.int64)
    src = np.where(send, rank, peer)
    dst = np.where(send, peer, rank)
    seg = np.searchsorted(resumed, chunk["step"], side="right").astype(np.int64)
    ids = 1 + ((chunk["msg"].astype(np.int64) * SEGMENTS + seg) * world + src) * world + dst
    return send, np.where(is_msg, ids, 0)


def scan(run: Any, ranks: Sequence[int], window: Window) -> Scan:
    """First pass over the window: the paired messages (memory O(messages in the window):
    8 bytes for each send and receive seen), the earliest start, counts per rank."""
    resumed = segments(run)
    if len(resumed) >= SEGMENTS:
        raise ExportError(f"the run was resumed {len(resumed)} times; flow ids tell {SEGMENTS - 1} apart")
    out = Scan(run.world_size, resumed, t0=np.inf)
    sends: list[np.ndarray] = []
    recvs: list[np.ndarray] = []
    for r in ranks:
        n = 0
        these: list[tuple[np.ndarray, np.ndarray]] = []
        t0 = np.inf
        try:
            for chunk in rank_events(run, r, window):
                n += len(chunk)
                if len(chunk):
                    t0 = min(t0, float(chunk["t_start"].min()))
                send, ids = message_ids(chunk, r, resumed, out.world)
                these.append((np.unique(ids[send & (ids > 0)]), np.unique(ids[~send & (ids > 0)])))
        except OSError as exc:  # RankReadError: the file is cut short or damaged past its header
            out.failed[r] = str(exc)
            continue
        out.t0 = min(out.t0, t0)
        sends += [s for s, _ in these]
        recvs += [v for _, v in these]
        out.counts[r] = n
        out.names[r] = describe(run, r)
    if sends:
        out.paired = np.intersect1d(np.concatenate(sends), np.concatenate(recvs))
    if out.t0 == np.inf:
        out.t0 = 0.0
    return out
