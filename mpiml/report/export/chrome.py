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

from .tracks import GROUPS, placed, track_name
from .window import Scan, Window

__all__ = ["write_chrome"]


class _Out:
    """Writes the ``traceEvents`` array a piece at a time (nothing is kept past a chunk)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh
        self.sep = ""
        fh.write('{"displayTimeUnit": "ms", "traceEvents": [\n')

    def write(self, events: list[str]) -> None:
        """Events already encoded as JSON objects."""
        if events:
            self.fh.write(self.sep + ",\n".join(events))
            self.sep = ",\n"

    def event(self, ev: dict[str, Any]) -> None:
        self.write([json.dumps(ev, separators=(",", ":"))])

    def close(self, metadata: dict[str, Any]) -> None:
        self.fh.write('\n], "otherData": ' + json.dumps(metadata) + "}\n")


class _Strings(dict[str, str]):
    """A name's JSON encoding (json.dumps), made once per name: the complete events are
    formatted from a template (4-6x faster than json.dumps of a dict per event, which
    made 1M events take a minute), their numbers by ``repr`` (valid JSON for the finite
    floats and ints of an events table)."""

    def __missing__(self, name: str) -> str:
        self[name] = text = json.dumps(name)
        return text


def write_chrome(run: Any, ranks: Sequence[int], window: Window, found: Scan, fh: IO[str]) -> int:
    """Write ``ranks``' events in ``window`` to ``fh`` as trace-event JSON; returns the
    number of complete (``X``) events written. Memory: one chunk of events (and its
    text), the lanes of one rank and ``found.paired`` (the window's messages with both
    ends in it)."""
    out = _Out(fh)
    js = _Strings()
    n = 0
    for r in ranks:
        out.event({"ph": "M", "pid": r, "tid": 0, "name": "process_name", "args": {"name": found.names[r]}})
        out.event({"ph": "M", "pid": r, "tid": 0, "name": "process_sort_index", "args": {"sort_index": r}})
        for rows in placed(run, r, window, found):
            text: list[str] = []
            for (step, kind, t0, t1, nbytes, peer, msg), is_send, fid, g, lane, new in rows:
                group = GROUPS[g]
                tid = 100 * g + lane
                if new:
                    name = {"name": track_name(group, lane)}
                    meta = {"ph": "M", "pid": r, "tid": tid}
                    text.append(json.dumps({**meta, "name": "thread_name", "args": name}))
                    text.append(
                        json.dumps({**meta, "name": "thread_sort_index", "args": {"sort_index": tid}})
                    )
                ts = t0 * 1e6
                k = js[kind]
                text.append(
                    f'{{"ph":"X","pid":{r},"tid":{tid},"ts":{ts!r},"dur":{(t1 - t0) * 1e6!r},"name":{k},'
                    f'"cat":{js[group]},"args":{{"step":{step},"bytes":{nbytes},"peer":{peer},"msg":{msg},'
                    f'"kind":{k}}}}}'
                )
                n += 1
                if fid:  # a message with both ends in the window
                    ph = '"ph":"s"' if is_send else '"ph":"f","bp":"e"'
                    text.append(
                        f'{{{ph},"pid":{r},"tid":{tid},"ts":{ts!r},"id":{fid},"name":"message","cat":"flow"}}'
                    )
            out.write(text)
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
