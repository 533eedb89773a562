"""What the plots read from a run (:func:`mpiml.io.load_run`): its name, ranks, events in
a window and paired messages, through the reader's streaming methods when it has them.

Times are seconds on the run's common clock (seconds since the run started).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MESSAGE_FIELDS", "messages", "rank_events", "ranks_of", "run_name"]

# the columns of a paired message (the reader's MESSAGE_DTYPE)
MESSAGE_FIELDS = (
    ("src", "i4"),
    ("dst", "i4"),
    ("msg", "i8"),
    ("step", "i8"),
    ("nbytes", "i8"),
    ("t_send_start", "f8"),
    ("t_send_end", "f8"),
    ("t_recv_start", "f8"),
    ("t_recv_end", "f8"),
)
_MESSAGE = np.dtype(list(MESSAGE_FIELDS))

Window = tuple[float, float] | None


def run_name(run: Any) -> str:
    """The run's name: ``run.name`` of its config, else its folder's name."""
    name = (run.config.get("run") or {}).get("name")
    return str(name) if name else run.path.parent.name


def ranks_of(run: Any) -> list[int]:
    """The ranks whose files opened, sorted."""
    ranks = getattr(run, "ranks", None)
    return sorted(ranks) if ranks is not None else sorted(run.events)


def _window(ev: np.ndarray, steps: Window, time: Window) -> np.ndarray:
    keep = np.ones(len(ev), dtype=bool)
    if steps is not None:
        keep &= (ev["step"] >= steps[0]) & (ev["step"] < steps[1])
    if time is not None:
        keep &= (ev["t_end"] >= time[0]) & (ev["t_start"] < time[1])
    return ev[keep]


def rank_events(run: Any, rank: int, *, steps: Window = None, time: Window = None) -> np.ndarray:
    """Rank ``rank``'s events with a step in [steps[0], steps[1]) and overlapping
    [time[0], time[1]) (seconds), in file (= start time) order."""
    it = getattr(run, "iter_events", None)
    if it is not None:
        chunks = list(it(rank, steps=steps, time=time))
        return np.concatenate(chunks) if chunks else run.events[rank][:0]
    return _window(run.events[rank], steps, time)


def messages(
    run: Any, *, ranks: Sequence[int] | None = None, steps: Window = None, time: Window = None
) -> np.ndarray:
    """The paired point-to-point messages (send on src, recv of the same msg id on dst)
    whose both ends are in ``ranks`` and in the window, as one structured array with
    :data:`MESSAGE_FIELDS`, ordered by send start. The reader's ``run.messages`` when it
    has one; otherwise paired here from the events (docs/run-file.md, "Messages")."""
    keep = set(ranks_of(run) if ranks is None else ranks)
    reader = getattr(run, "messages", None)
    if callable(reader):
        parts = [np.asarray(m) for m in reader(ranks=sorted(keep), steps=steps, time=time)]
        out = np.concatenate(parts) if parts else np.empty(0, _MESSAGE)
    else:
        out = _pair(run, keep, steps, time)
    out = out[np.isin(out["src"], list(keep)) & np.isin(out["dst"], list(keep))]
    return out[np.argsort(out["t_send_start"], kind="stable")]


def _pair(run: Any, keep: set[int], steps: Window, time: Window) -> np.ndarray:
    sends: dict[tuple[int, int, int], np.void] = {}
    recvs: dict[tuple[int, int, int], np.void] = {}
    for r in sorted(keep & set(ranks_of(run))):
        ev = rank_events(run, r, steps=steps, time=time)
        ev = ev[ev["msg"] >= 0]
        for e in ev[ev["kind"] == "send"]:
            sends[(r, int(e["peer"]), int(e["msg"]))] = e
        for e in ev[ev["kind"] == "recv"]:
            recvs[(int(e["peer"]), r, int(e["msg"]))] = e
    rows = [
        (
            k[0],
            k[1],
            k[2],
            s["step"],
            s["nbytes"],
            s["t_start"],
            s["t_end"],
            recvs[k]["t_start"],
            recvs[k]["t_end"],
        )
        for k, s in sends.items()
        if k in recvs
    ]
    return np.array(rows, dtype=_MESSAGE)
