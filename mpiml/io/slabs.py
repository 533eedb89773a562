"""Every rank of a run at once, in time slabs, and the pairing of messages over them.

:func:`slabs` reads all ranks side by side: each rank's rows up to a common time (the
earliest "last start" of the ranks' current chunks), so that a row of one rank is read
about when the rows of the same time on the others are. :func:`messages` pairs each
``send`` with its ``recv`` over them, holding only the ends whose other end has not been
read yet. Memory: a chunk per rank and the unpaired ends. Used by
:meth:`mpiml.io.reader.Run.scan` and :meth:`~mpiml.io.reader.Run.messages`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RankReadError

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["CHUNK", "MESSAGE_DTYPE", "RECV_SLACK", "messages", "slabs"]

CHUNK = 65536  # rows per read: ~5 MB of events

MESSAGE_DTYPE = np.dtype(
    [
        ("src", "<i4"),
        ("dst", "<i4"),
        ("msg", "<i8"),
        ("step", "<i8"),
        ("nbytes", "<i8"),
        ("t_send_start", "<f8"),
        ("t_send_end", "<f8"),
        ("t_recv_start", "<f8"),
        ("t_recv_end", "<f8"),
    ]
)
"""A paired message: the ``send`` on ``src`` (its post and observed completion) and the
``recv`` on ``dst`` (the post of its receive and its completion), seconds on the run
clock; ``step`` and ``nbytes`` are the send's."""

RECV_SLACK = (
    10.0  # s: a recv ends after its send starts; past this margin (clock error) its send will not come
)


def slabs(
    run: Run,
    fields: Iterable[str],
    *,
    ranks: Iterable[int] | None,
    kinds: Iterable[str] | None,
    steps: tuple[int, int] | None,
    time: tuple[float, float] | None,
    chunk: int,
    on_error: Callable[[RankReadError], None] | None,
) -> Iterator[tuple[int, dict[str, np.ndarray], float]]:
    """:meth:`scan`'s parts, each with ``done``: every row of every rank that starts
    at or before ``done`` has been yielded (the previous slab's edge)."""
    want = list(dict.fromkeys([*fields, "t_start"]))
    chunk = max(1, min(chunk, max(1024, (1 << 22) // max(1, len(run._select(ranks))))))
    its: dict[int, Iterator[dict[str, np.ndarray]]] = {
        r: run.iter_columns(r, want, kinds=kinds, steps=steps, time=time, chunk=chunk)
        for r in run._select(ranks)
    }
    bufs: dict[int, dict[str, np.ndarray]] = {}

    def refill(r: int) -> None:
        try:
            bufs[r] = next(its[r])
        except StopIteration:
            del its[r]
        except RankReadError as exc:
            del its[r]
            if on_error is None:
                raise
            on_error(exc)

    for r in list(its):
        refill(r)
    done = -np.inf
    while bufs:
        # the slab ends at the earliest "last t_start" of the ranks still reading: no
        # rank can later give a row that starts before it (rows come in t_start order)
        live = [bufs[r]["t_start"][-1] for r in bufs if r in its]
        edge = min(live) if live else np.inf
        for r in sorted(bufs):
            b = bufs[r]
            size = len(b["t_start"])
            if not np.isfinite(edge) or (r in its and b["t_start"][-1] == edge):
                n = size  # the rank that sets the edge gives all it holds: progress
            else:
                n = int(np.searchsorted(b["t_start"], edge, "right"))
            if n:
                yield r, {k: v[:n] for k, v in b.items()}, done
            if n == size:
                del bufs[r]
                if r in its:
                    refill(r)
            else:
                bufs[r] = {k: v[n:] for k, v in b.items()}
        done = edge


def messages(
    run: Run,
    ranks: Iterable[int] | None = None,
    steps: tuple[int, int] | None = None,
    time: tuple[float, float] | None = None,
    chunk: int = CHUNK,
    on_error: Callable[[RankReadError], None] | None = None,
) -> Iterator[np.ndarray]:
    """Paired point-to-point messages as :data:`MESSAGE_DTYPE` rows, in chunks.

    A ``send`` on rank i with peer j and id k pairs with the ``recv`` on rank j with
    peer i and id k, within one run segment (ids restart after a resume;
    docs/run-file.md, "Messages"). Both ends must be among ``ranks`` and in the
    window (``steps``, ``time``: as :meth:`Run.iter_columns`). Streams over
    :func:`slabs`: held are only the ends whose other end was not read yet (a recv
    is given up once every rank has been read to ``RECV_SLACK`` seconds past its end). Ends never
    paired are counted in ``run.unpaired`` when the iterator is done. A schema-1
    file (no message ids) yields nothing.
    """
    run.unpaired = 0
    if run.schema_version < 2:
        return
    sel = set(run._select(ranks))
    resumed = run.resumed_at_steps
    cols = ("step", "kind", "t_start", "t_end", "nbytes", "peer", "msg")
    fields = [("key", "<i8"), ("msg", "<i8"), ("side", "i1"), ("src", "<i4"), ("dst", "<i4")]
    fields += [("step", "<i8"), ("nbytes", "<i8"), ("t0", "<f8"), ("t1", "<f8")]
    end_dtype = np.dtype(fields)
    pending = np.zeros(0, end_dtype)
    w = max(run.world_size, 1)
    send_code = run._kind_codes.add("send")
    for r, c, done in slabs(
        run, cols, ranks=sel, kinds=("send", "recv"), steps=steps, time=time, chunk=chunk, on_error=on_error
    ):
        send = c["kind"] == send_code
        peer = c["peer"]
        ok = np.isin(peer, list(sel)) & (c["msg"] >= 0)
        if not ok.all():
            run.unpaired += int(np.count_nonzero(~ok))
            c = {k: v[ok] for k, v in c.items()}
            send, peer = send[ok], peer[ok]
        ends = np.empty(len(peer), end_dtype)
        ends["src"] = np.where(send, r, peer)
        ends["dst"] = np.where(send, peer, r)
        seg = np.searchsorted(resumed, c["step"], side="right")
        ends["key"] = (seg * w + ends["src"]) * w + ends["dst"]
        ends["msg"] = c["msg"]
        ends["side"] = np.where(send, 0, 1)
        ends["step"], ends["nbytes"] = c["step"], c["nbytes"]
        ends["t0"], ends["t1"] = c["t_start"], c["t_end"]
        pending = np.concatenate([pending, ends])
        pending, out = _pair(pending)
        if len(out):
            yield out
        # a recv that ended long before every rank's rows up to ``done`` were read: its
        # send started before the recv ended, so it would have been read by now
        stale = (pending["side"] == 1) & (pending["t1"] + RECV_SLACK < done)
        if stale.any():
            run.unpaired += int(np.count_nonzero(stale))
            pending = pending[~stale]
    run.unpaired += len(pending)


def _pair(ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split ``ends`` into (still unpaired, paired messages): a send and a recv with the
    same (key, msg) make one message."""
    if len(ends) < 2:
        return ends, np.zeros(0, MESSAGE_DTYPE)
    span = int(ends["msg"].max()) + 1
    if int(ends["key"].max()) < (1 << 61) // span:  # one int64 sort key: (key, msg, side)
        order = np.argsort((ends["key"] * span + ends["msg"]) * 2 + ends["side"], kind="stable")
    else:
        order = np.lexsort((ends["side"], ends["msg"], ends["key"]))
    e = ends[order]
    same = (e["key"][1:] == e["key"][:-1]) & (e["msg"][1:] == e["msg"][:-1])
    match = same & (e["side"][:-1] == 0) & (e["side"][1:] == 1)
    i = np.flatnonzero(match)
    s, v = e[i], e[i + 1]
    out = np.empty(len(i), MESSAGE_DTYPE)
    out["src"], out["dst"], out["msg"] = s["src"], s["dst"], s["msg"]
    out["step"], out["nbytes"] = s["step"], s["nbytes"]
    out["t_send_start"], out["t_send_end"] = s["t0"], s["t1"]
    out["t_recv_start"], out["t_recv_end"] = v["t0"], v["t1"]
    used = np.zeros(len(e), bool)
    used[i] = used[i + 1] = True
    return e[~used], out
