"""A pure simulator of pipeline schedules: the send/receive pairing, deadlocks, bubbles.

:func:`simulate` replays every stage's op list (any schedule: GPipe, 1F1B, DSP's) against
FIFO channels, one per (sender, receiver, message kind): a ``send_act`` / ``send_grad``
from stage s to stage r matches r's next ``recv_act`` / ``recv_grad`` from s, which must
name the same micro-batch (FIFO: a receive for another micro-batch than the channel's
head waits for ever, and is reported). A channel holds at most ``depth`` messages sent
and not yet received; a send into a full channel blocks. Every stage whose next op can
progress advances, until all lists are done or none can move: then :class:`Deadlock`
names the first op of each stage that cannot progress.

Times follow from dependencies only, so the result does not depend on the order in
which stages are advanced: a compute op costs ``forward_cost`` (forward, recompute) /
``backward_cost`` time units, a message costs 0; a receive ends no earlier than its message was sent; the n-th
send into a channel of depth d starts no earlier than the (n-d)-th receive from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from .schedule import Op

__all__ = ["Deadlock", "Event", "ScheduleError", "Trace", "bubble_fraction", "simulate"]

_PAIR = {"send_act": "act", "recv_act": "act", "send_grad": "grad", "recv_grad": "grad"}


class ScheduleError(ValueError):
    """A schedule that cannot run: a bad peer, or a message never received."""


class Deadlock(ScheduleError):
    """No stage can progress and some have ops left. ``blocked``: stage -> its first op
    that cannot progress (stages that are done are absent); ``reasons``: stage -> why."""

    def __init__(self, blocked: dict[int, Op], reasons: dict[int, str]) -> None:
        parts = [f"stage {k}: {op} ({reasons[k]})" for k, op in sorted(blocked.items())]
        super().__init__("deadlock, no stage can progress: " + "; ".join(parts))
        self.blocked, self.reasons = blocked, reasons


@dataclass(frozen=True)
class Event:
    """One op as it ran: ``start`` and ``end`` in time units; ``round``: the sweep of the
    simulator in which it ran (0-based)."""

    op: Op
    start: int
    end: int
    round: int


@dataclass
class Trace:
    """The completed replay: ``stages[k]`` is stage k's events in program order."""

    stages: list[list[Event]] = field(default_factory=list)

    @property
    def makespan(self) -> int:
        """Time at which the last op ends."""
        return max((e.end for events in self.stages for e in events), default=0)

    def busy(self, k: int) -> int:
        """Time units stage k spent computing (forward + backward)."""
        return sum(e.end - e.start for e in self.stages[k] if e.op.is_compute)

    def idle(self, k: int) -> int:
        """Time units stage k did not compute within the makespan (its bubble)."""
        return self.makespan - self.busy(k)


@dataclass
class _Channel:
    queue: deque[tuple[int, int]] = field(default_factory=deque)  # (mb, time sent)
    received_at: list[int] = field(default_factory=list)  # time of each receive, in order
    sent: int = 0


def simulate(
    stages: list[list[Op]],
    *,
    depth: int = 1,
    forward_cost: int = 1,
    backward_cost: int = 1,
    depths: Mapping[tuple[int, int, str], int] | None = None,
) -> Trace:
    """Replay all stages' op lists; return the :class:`Trace` or raise :class:`Deadlock`.

    ``stages``: one op list per stage (stage k at index k); ``depth``: messages a channel
    holds sent and not yet received (>= 1); ``forward_cost`` / ``backward_cost``: time
    units of one compute op (>= 0); ``depths``: per-channel depths, (sender, receiver,
    "act" | "grad") -> depth >= 1, overriding ``depth`` there (DSP's queues). Raises ValueError naming a bad argument,
    :class:`ScheduleError` for a peer outside 0..K-1 or equal to the stage itself, or for
    messages left unreceived when every list is done, and :class:`Deadlock` when no
    stage can progress.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1 (got {depth!r})")
    for name, cost in (("forward_cost", forward_cost), ("backward_cost", backward_cost)):
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
            raise ValueError(f"{name} must be an integer >= 0 (got {cost!r})")
    caps = dict(depths or {})
    for key, d in caps.items():
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"depths[{key}] must be an integer >= 1 (got {d!r})")
    K = len(stages)
    for k, ops in enumerate(stages):
        for op in ops:
            if op.peer is not None and not (0 <= op.peer < K and op.peer != k):
                raise ScheduleError(f"stage {k}: {op} names peer {op.peer}, not another stage of 0..{K - 1}")
    channels: dict[tuple[int, int, str], _Channel] = {}
    pc = [0] * K
    clock = [0] * K
    trace = Trace([[] for _ in range(K)])

    def channel(src: int, dst: int, what: str) -> _Channel:
        return channels.setdefault((src, dst, what), _Channel())

    def step(k: int, op: Op, sweep: int) -> str | None:
        """Run op on stage k if it can progress; else return why it cannot."""
        start = clock[k]
        if op.is_compute:
            end = start + (backward_cost if op.kind == "backward" else forward_cost)
        elif op.kind.startswith("send"):
            assert op.peer is not None
            ch = channel(k, op.peer, _PAIR[op.kind])
            cap = caps.get((k, op.peer, _PAIR[op.kind]), depth)
            if len(ch.queue) >= cap:
                return f"channel to stage {op.peer} full, {cap} unreceived"
            if ch.sent >= cap:  # the slot this send takes was freed by that receive
                start = max(start, ch.received_at[ch.sent - cap])
            ch.queue.append((op.mb, start))
            ch.sent += 1
            end = start
        else:
            assert op.peer is not None
            ch = channel(op.peer, k, _PAIR[op.kind])
            if not ch.queue:
                return "nothing sent yet"
            mb, sent_at = ch.queue[0]
            if mb != op.mb:
                return f"channel head is micro-batch {mb}"
            ch.queue.popleft()
            start = end = max(start, sent_at)
            ch.received_at.append(end)
        clock[k] = end
        trace.stages[k].append(Event(op, start, end, sweep))
        pc[k] += 1
        return None

    sweep = 0
    while True:
        moved = False
        reasons: dict[int, str] = {}
        for k in range(K):
            while pc[k] < len(stages[k]):
                why = step(k, stages[k][pc[k]], sweep)
                if why is not None:
                    reasons[k] = why
                    break
                moved = True
        if not reasons:
            break
        if not moved:
            raise Deadlock({k: stages[k][pc[k]] for k in reasons}, reasons)
        sweep += 1
    left = {key: ch.queue for key, ch in channels.items() if ch.queue}
    if left:
        (src, dst, what), queue = next(iter(sorted(left.items())))
        raise ScheduleError(
            f"stage {src} sent {what} for micro-batch(es) {[mb for mb, _ in queue]} to stage {dst}, never received"
        )
    return trace


def bubble_fraction(trace: Trace) -> float:
    """Idle fraction of the pipeline: sum_k idle_k / (K * makespan) (0 for an empty trace).

    With unit forward and backward costs, GPipe and 1F1B give (K-1)/(m+K-1) (GPipe §2.2).
    """
    K, span = len(trace.stages), trace.makespan
    if K == 0 or span == 0:
        return 0.0
    return sum(trace.idle(k) for k in range(K)) / (K * span)
