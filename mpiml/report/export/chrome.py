"""Chrome trace-event JSON (chrome://tracing, ui.perfetto.dev, Speedscope), written with
the standard library, one event at a time.

Layout: one process per rank (``pid`` = rank, named ``rank 3 · stage 1 of pipeline 0``
by ``M`` metadata events, sorted by rank), one thread per activity and lane
(:mod:`.tracks`: ``tid`` = 100 x group + lane, named after the group), complete events
(``ph`` ``X``, ``ts``/``dur`` in microseconds on the run clock) with ``args`` step,
bytes, peer, msg, kind. A message whose send and receive are both in the window gets a
flow arrow: ``ph`` ``s`` at the start of the send's slice and ``ph`` ``f`` (``bp`` ``e``)
at the start of the receive's, on the receiver's process, with the same ``id``
(:func:`.window.flow_id`). Perfetto's JSON importer has ignored flow ids in some versions:
its native format (:mod:`.perfetto`) is the one with reliable arrows.

Specification: "Trace Event Format" (Google, docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

import numpy as np

from .tracks import GROUPS, Lanes, group_of, track_name
from .window import Scan, Window, flow_id, message_keys, rank_events, segments

__all__ = ["write_chrome"]


class _Out:
    """Writes the ``traceEvents`` array one event at a time (nothing is kept)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.first = True
        fh.write('{"displayTimeUnit": "ms", "traceEvents": [\n')

    def event(self, ev: dict[str, Any]) -> None:
        self.fh.write(("" if self.first else ",\n") + json.dumps(ev, separators=(",", ":")))
        self.first = False

    def close(self, metadata: dict[str, Any]) -> None:
        self.fh.write('\n], "otherData": ' + json.dumps(metadata) + "}\n")


def write_chrome(run: Any, ranks: Sequence[int], window: Window, found: Scan, fh: IO[str]) -> int:
    """Write ``ranks``' events in ``window`` to ``fh`` as trace-event JSON; returns the
    number of complete (``X``) events written. Memory: one chunk of events, the lanes of
    one rank and ``found.paired`` (the messages of the window with both ends in it)."""
    out = _Out(fh)
    resumed = segments(run)
    world = run.world_size
    n = 0
    for r in ranks:
        out.event({"ph": "M", "pid": r, "tid": 0, "name": "process_name", "args": {"name": found.names[r]}})
        out.event({"ph": "M", "pid": r, "tid": 0, "name": "process_sort_index", "args": {"sort_index": r}})
        lanes = Lanes()
        for chunk in rank_events(run, r, window):
            send, keys = message_keys(chunk, r, resumed)
            key_at = iter(zip(send.tolist(), map(tuple, keys.tolist()), strict=True))
            for step, kind, t0, t1, nbytes, peer, msg in chunk.tolist():
                group = group_of(kind, msg, run.kinds)
                lane, new = lanes.place(group, t0, t1)
                tid = 100 * GROUPS.index(group) + lane
                if new:
                    name = {"name": track_name(group, lane)}
                    out.event({"ph": "M", "pid": r, "tid": tid, "name": "thread_name", "args": name})
                    out.event(
                        {
                            "ph": "M",
                            "pid": r,
                            "tid": tid,
                            "name": "thread_sort_index",
                            "args": {"sort_index": tid},
                        }
                    )
                ts = t0 * 1e6
                args = {"step": step, "bytes": nbytes, "peer": peer, "msg": msg, "kind": kind}
                x = {"ph": "X", "pid": r, "tid": tid, "ts": ts, "dur": (t1 - t0) * 1e6, "name": kind}
                out.event({**x, "cat": group, "args": args})
                n += 1
                if group in ("send", "recv") and msg >= 0:
                    is_send, key = next(key_at)
                    if key in found.paired:
                        fid = flow_id(key, world)
                        ph = {"ph": "s"} if is_send else {"ph": "f", "bp": "e"}
                        out.event(
                            {
                                **ph,
                                "pid": r,
                                "tid": tid,
                                "ts": ts,
                                "id": fid,
                                "name": "message",
                                "cat": "flow",
                            }
                        )
    out.close({"source": str(run.path), "exported_by": "mpiml trace export", **_window_meta(window)})
    return n


def _window_meta(window: Window) -> dict[str, Any]:
    def _j(v: tuple[float, float] | None) -> Any:
        return None if v is None else [None if not np.isfinite(x) else x for x in v]

    return {
        "ranks": None if window.ranks is None else list(window.ranks),
        "steps": _j(window.steps),
        "time": _j(window.time),
    }
