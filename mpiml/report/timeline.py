"""One rank's time, streamed: the partition of its wall time by category, time in flight
and hidden, per-kind totals, per-step times and bytes sent.

:func:`rank_timeline` reads a rank's events chunk by chunk (``run.iter_events``, events in
``t_start`` order) and never holds the rank's whole table: memory is O(chunk) plus a
carry of at most one interval per category (the parts of intervals that cross the
chunk's frontier), plus O(steps) for the per-step times.

**The partition** (:class:`mpiml.report.partition.Partition`): compute, codec,
communication, wait and bookkeeping time by priority, idle, in flight, hidden and
blocked; see that module.

Categories come from the run file's ``/kinds`` (:attr:`mpiml.io.Run.kinds`), never from
lists of kind names; a kind the file does not list is counted in ``unknown_events`` and
left out of the partition.

**Per-step time.** As :func:`mpiml.plan.measure.measured_step_times`: a step's time
runs from its first training (non-bookkeeping) event's start to the next step's, less
the bookkeeping-exclusive time in between (evaluations, checkpoints); only consecutive
steps count, not the last step and not a step that a resume started
(``resumed_at_steps``).

numpy only (the run object supplies the events).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .partition import _LABELS, IN_FLIGHT, PRIORITY, USEFUL, Partition, _measure_before

__all__ = [
    "IN_FLIGHT",
    "PEER_SENDS",
    "PRIORITY",
    "KindTotal",
    "RankTimeline",
    "Partition",
    "rank_timeline",
    "step_times",
]

PEER_SENDS = ("send", "push")
"""Kinds whose ``nbytes`` went to ``peer``: a point-to-point message's ``send`` and async
gossip's one-sided ``push`` (docs/run-file.md, Events)."""


@dataclass
class KindTotal:
    """One kind's events on one rank: how many, their summed duration (s, clipped to the
    window) and summed ``nbytes``."""

    count: int = 0
    time: float = 0.0
    nbytes: int = 0


@dataclass
class RankTimeline:
    """What :func:`rank_timeline` found on one rank; times in seconds on the run clock.

    ``exclusive[c]`` for c in :data:`PRIORITY` plus ``idle`` sum to ``wall``;
    ``in_flight`` is the union of in-flight spans, ``hidden`` its part under compute or
    codec, ``blocked`` its part under a wait (the exposed transfer). ``step_times``: seconds per step for the steps ``step_time_steps`` (see the
    module's docstring). ``sent_to_peer``: {peer: bytes} from :data:`PEER_SENDS` events;
    ``collective_bytes``: {kind: bytes} of peerless communication and in-flight events.
    """

    rank: int
    n_events: int = 0
    t_first: float = float("nan")
    t_last: float = float("nan")
    exclusive: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PRIORITY, 0.0))
    idle: float = 0.0
    in_flight: float = 0.0
    hidden: float = 0.0
    blocked: float = 0.0
    kinds: dict[str, KindTotal] = field(default_factory=dict)
    steps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    step_times: np.ndarray = field(default_factory=lambda: np.empty(0))
    step_time_steps: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    sent_to_peer: dict[int, int] = field(default_factory=dict)
    collective_bytes: dict[str, int] = field(default_factory=dict)
    unknown_events: int = 0
    out_of_order: int = 0
    between_launches: float = 0.0
    launches: int = 0
    t_first_train: float = float("nan")
    useful_train: float = 0.0

    @property
    def wall(self) -> float:
        """First event's start to last event's end, less the time between the launches
        of a resumed run (0 for a rank without events)."""
        return float(self.t_last - self.t_first - self.between_launches) if self.n_events else 0.0

    @property
    def wall_train(self) -> float:
        """Like :attr:`wall`, from the first training event (step >= 0): set-up left out."""
        if not self.n_events or not np.isfinite(self.t_first_train):
            return 0.0
        return float(self.t_last - self.t_first_train - self.between_launches)

    @property
    def useful(self) -> float:
        """Compute + codec time (POP's useful time)."""
        return sum(self.exclusive[c] for c in USEFUL)

    @property
    def overlap(self) -> float | None:
        """hidden / in_flight, None without time in flight."""
        return self.hidden / self.in_flight if self.in_flight > 0 else None

    @property
    def blocked_share(self) -> float | None:
        """blocked / in_flight: the exposed part of communication, None without time in flight."""
        return self.blocked / self.in_flight if self.in_flight > 0 else None

    @property
    def median_step_time(self) -> float | None:
        return float(np.median(self.step_times)) if self.step_times.size else None


def step_times(
    steps: np.ndarray,
    first: np.ndarray,
    excluded: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0)),
    resumed: Any = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds per step from each step's first training event's start.

    ``steps`` (sorted, unique) and ``first`` (float64, same length): each step's first
    training event's start. A step's time is ``first[i+1] - first[i]`` less the measure
    of the ``excluded`` segments (sorted disjoint [start, end) arrays: bookkeeping)
    inside it; only for consecutive steps whose next step was not started by a resume
    (``resumed``: steps). Returns (steps, seconds).
    """
    if steps.size < 2:
        return np.empty(0, np.int64), np.empty(0)
    ok = (steps[1:] == steps[:-1] + 1) & ~np.isin(steps[1:], np.asarray(list(resumed), np.int64))
    m = _measure_before(*excluded, first)
    t = np.diff(first) - np.diff(m)
    return steps[:-1][ok], t[ok]


class Launches:
    """The launches of a resumed run, found in one rank's event stream: a launch starts
    at its set-up rows (step -1) after training rows, or, without set-up rows, at the
    first row of a step the run was resumed at (``resumed``: ``resumed_at_steps``).
    ``gap``: the seconds between one launch's last event's end and the next one's first
    start, summed (a requeued job's time in the queue: no rank ran)."""

    def __init__(self, resumed: np.ndarray) -> None:
        self.resumed = resumed  # sorted (Run.resumed_at_steps)
        self.k = 0  # launches found after the first
        self.trained = False  # a training row seen in the current launch
        self.last_end = -np.inf
        self.gap = 0.0

    def feed(self, step: np.ndarray, s: np.ndarray, e: np.ndarray) -> None:
        """One chunk of the rank's rows (steps, starts, ends), in file order."""
        i, n = 0, len(step)
        while i < n:
            nxt = self.resumed[self.k] if self.k < len(self.resumed) else np.iinfo(np.int64).max
            rest = step[i:]
            trained = np.concatenate([[self.trained], np.logical_or.accumulate(rest >= 0)[:-1]])
            hit = np.flatnonzero((trained & (rest == -1)) | (rest >= nxt))
            if not hit.size:
                self.trained = self.trained or bool((rest >= 0).any())
                self.last_end = max(self.last_end, float(e[i:].max()))
                return
            j = i + int(hit[0])
            if j > i:
                self.last_end = max(self.last_end, float(e[i:j].max()))
            if np.isfinite(self.last_end):
                self.gap += max(0.0, float(s[j]) - self.last_end)
            self.k += 1
            self.trained = bool(step[j] >= 0)
            self.last_end = float(e[j])
            i = j + 1


def rank_timeline(
    run: Any,
    rank: int,
    *,
    steps: tuple[int, int] | None = None,
    time: tuple[float, float] | None = None,
    chunk: int = 65536,
) -> RankTimeline:
    """Stream rank ``rank``'s events of ``run`` (a :func:`mpiml.io.load_run` result) and
    account for its time (see the module's docstring).

    ``steps``: half-open [a, b) on the 0-based step column; ``time``: (t0, t1) seconds on
    the run clock, every interval clipped to it. Raises what the reader raises for a
    rank file that cannot be read (OSError, KeyError).
    """
    kinds: Mapping[str, str] = run.kinds
    out = RankTimeline(rank)
    part = Partition()
    firsts: list[tuple[np.ndarray, np.ndarray]] = []
    seen: list[np.ndarray] = []
    sent = np.zeros(0, np.int64)
    per_kind = np.zeros((0, 3))  # per kind code: count, time, bytes
    t_first, t_last = np.inf, -np.inf
    label_of = {c: i for i, c in enumerate(_LABELS)}
    useful = [label_of[c] for c in USEFUL]
    launch = Launches(run.resumed_at_steps)
    book, fly, comm = label_of["bookkeeping"], label_of[IN_FLIGHT], label_of["communication"]
    names = run.kind_names  # grows as the reader meets kinds; codes stay
    fields = ("step", "kind", "t_start", "t_end", "nbytes", "peer")
    for cols in run.iter_columns(rank, fields, steps=steps, time=time, chunk=chunk):
        n = len(cols["step"])
        if not n:
            continue
        s, e = cols["t_start"].astype(np.float64), cols["t_end"].astype(np.float64)
        if time is not None:
            s, e = np.clip(s, *time), np.clip(e, *time)
        code, step, peer, nbytes = cols["kind"], cols["step"], cols["peer"], cols["nbytes"]
        t_first, t_last = min(t_first, float(s.min())), max(t_last, float(e.max()))
        out.n_events += n
        # category of every kind code (-1: a kind the file's /kinds does not list)
        cat_of = np.array([label_of.get(kinds.get(k, ""), -1) for k in names], np.int8)
        cat = cat_of[code]
        out.unknown_events += int(np.count_nonzero(cat < 0))
        m = len(names)
        if per_kind.shape[0] < m:
            per_kind = np.vstack([per_kind, np.zeros((m - per_kind.shape[0], 3))])
        per_kind[:m, 0] += np.bincount(code, minlength=m)
        per_kind[:m, 1] += np.bincount(code, weights=e - s, minlength=m)
        per_kind[:m, 2] += np.bincount(code, weights=nbytes, minlength=m)
        if not np.isfinite(part.frontier):  # the accounting starts at the rank's first event
            part.frontier = float(s.min())
        launch.feed(step, s, e)
        work = (step >= 0) & np.isin(cat, useful)
        if work.any():
            out.useful_train += float((e[work] - s[work]).sum())
        if (step >= 0).any():
            out.t_first_train = float(np.fmin(out.t_first_train, s[step >= 0].min()))
        mask = {c: cat == i for c, i in label_of.items()}
        part.feed({c: (s[k], e[k]) for c, k in mask.items() if k.any()}, float(s.max()))
        # steps seen and each step's first training event
        seen.append(np.unique(step[step >= 0]))
        train = (step >= 0) & (cat != book) & (cat >= 0)
        if train.any():
            st, ts = step[train], s[train]
            if np.any(st[1:] < st[:-1]):
                order = np.argsort(st, kind="stable")
                st, ts = st[order], ts[order]
            uniq, at = np.unique(st, return_index=True)
            firsts.append((uniq, np.minimum.reduceat(ts, at)))
        # bytes: to a peer, and of peerless collectives
        sends = [i for i, k in enumerate(names) if k in PEER_SENDS]
        to_peer = np.isin(code, sends) & (peer >= 0)
        if to_peer.any():
            add = np.bincount(peer[to_peer], weights=nbytes[to_peer]).astype(np.int64)
            if add.size > sent.size:
                sent = np.concatenate([sent, np.zeros(add.size - sent.size, np.int64)])
            sent[: add.size] += add
        coll = (peer < 0) & ((cat == comm) | (cat == fly)) & (nbytes > 0)
        if coll.any():
            cb = np.bincount(code[coll], weights=nbytes[coll], minlength=m)
            for i in np.flatnonzero(cb):
                out.collective_bytes[names[i]] = out.collective_bytes.get(names[i], 0) + int(cb[i])
    if not out.n_events:
        return out
    out.kinds = {
        names[i]: KindTotal(int(c), float(t), int(b)) for i, (c, t, b) in enumerate(per_kind) if c > 0
    }
    part.close(t_last)
    out.t_first, out.t_last = t_first, t_last
    out.between_launches, out.launches = launch.gap, launch.k + 1
    out.exclusive, out.idle = part.exclusive, part.idle - launch.gap  # no rank ran between launches
    out.in_flight, out.hidden, out.out_of_order = part.in_flight, part.hidden, part.out_of_order
    out.blocked = part.blocked
    out.steps = np.unique(np.concatenate(seen)) if seen else out.steps
    out.sent_to_peer = {int(p): int(b) for p, b in enumerate(sent) if b}
    if firsts:
        st = np.concatenate([u for u, _ in firsts])
        ts = np.concatenate([f for _, f in firsts])
        uniq, inv = np.unique(st, return_inverse=True)
        first = np.full(uniq.size, np.inf)
        np.minimum.at(first, inv, ts)
        resumed = run.resumed_at_steps
        out.step_time_steps, out.step_times = step_times(uniq, first, part.bookkeeping_segments(), resumed)
    return out
