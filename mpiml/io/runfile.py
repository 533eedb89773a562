"""The run file ``results/<run>/run.h5``: config, metrics, and per-rank event tables.

Layout (schema ``mpiml-run/2``, documented in docs/run-file.md)::

    run.h5                    written by rank 0
      attrs: schema, mpiml_version, config (JSON), world_size, mpi_library,
             algorithm, started_at, clock, layout (JSON: each rank's role; "" if none)
      /kinds                  the event kinds table: name S32, category S16, doc (UTF-8)
      /metrics/<name>         rows (step int64, time float64, value float64)
      /ranks/<r>              external link to ranks/rank-<r>.h5, group "/"
    ranks/rank-<r>.h5         written by rank r alone
      attrs: rank, host, clock_offset
      /events                 rows of EVENT_DTYPE (with the message id ``msg``)

Schema 1 had no ``layout``, no ``/kinds``, a ``kind`` of S16 and no ``msg`` column;
:func:`mpiml.io.load_run` still reads it, and resuming a schema-1 run rewrites its
tables in schema 2 (:func:`upgrade_events`).

Every rank writes only its own file, so flushing never synchronises ranks and a
crash of one rank cannot corrupt another's table; h5py follows the external
links, so ``run.h5`` reads as one file. Tables are chunked and grow on append;
``flush()`` opens the file, appends the pending rows and closes it again, so between
flushes every file is closed and consistent on disk.

Readers never stop the writer: the writer opens its files without HDF5's file lock
(``locking=False``), so a reader holding ``run.h5`` or a rank file open (h5py, h5dump,
pandas) cannot make a flush fail. One writer per file is ensured instead by the run
folder's claim (:mod:`mpiml.run.folder`), held for the job's lifetime. A reader sees a
file as it was when it opened it (reopen to see newer rows); one that opens it while
a flush writes may get an OSError, and reading again succeeds (docs/run-file.md,
"Reading it"). A new file is created under a name unlinked first, never truncated in
place: a reader holding the old one keeps reading it, and no link is written through
(:mod:`mpiml.io.fs`).
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..kinds import KINDS, table, table_dtype
from ..trace import EVENT_DTYPE
from .fs import own_copy, refuse_link

__all__ = [
    "METRIC_DTYPE",
    "SCHEMA",
    "SCHEMAS",
    "RankFile",
    "RunFile",
    "rank_file_name",
    "upgrade_events",
]

SCHEMA = "mpiml-run/2"
SCHEMAS = ("mpiml-run/1", SCHEMA)  # what load_run reads
METRIC_DTYPE = np.dtype([("step", "<i8"), ("time", "<f8"), ("value", "<f8")])
EVENT_DEFAULTS = {"msg": -1}  # columns a schema-1 table lacks, and their value there


def upgrade_events(rows: np.ndarray) -> np.ndarray:
    """An events table of an older schema as ``EVENT_DTYPE`` rows (kind widened,
    ``msg`` -1 where there was none); ``rows`` itself if it is one already."""
    if rows.dtype == EVENT_DTYPE:
        return rows
    out = np.empty(rows.shape, dtype=EVENT_DTYPE)
    for name in EVENT_DTYPE.names or ():
        out[name] = rows[name] if name in (rows.dtype.names or ()) else EVENT_DEFAULTS[name]
    return out


# every kind schema 1 wrote, with its category: a schema-1 file has no /kinds, and its
# compressed protocols' kinds had short names that are registered no more
V1_KINDS = {
    "compute": "compute",
    "update": "compute",
    "merge": "compute",
    "eval": "bookkeeping",
    "checkpoint": "bookkeeping",
    "flush": "bookkeeping",
    "allreduce": "communication",
    "iallreduce": "in_flight",
    "wait": "wait",
    "encode": "compute",
    "decode": "compute",
    "callreduce": "in_flight",  # now compressed_allreduce
    "cgossip": "in_flight",  # now compressed_gossip
    "gossip": "in_flight",
    "push": "communication",
    "drain": "communication",
}


def _write_kinds(f: h5py.File, schema_1: bool = False) -> int:
    """(Re)write ``/kinds`` from the registry, keeping the rows of kinds the file already
    named that nobody registers now (and, for a schema-1 file being continued, its old
    kinds: its events keep their names); returns how many registered kinds it wrote."""
    rows = table()
    known = {bytes(n).decode() for n in rows["name"]}
    extra: list[tuple[bytes, bytes, bytes]] = []
    if "kinds" in f:
        extra = [(bytes(r["name"]), bytes(r["category"]), bytes(r["doc"])) for r in f["kinds"][()]]
        del f["kinds"]
    elif schema_1:
        extra = [(k.encode(), c.encode(), b"a schema-1 kind, recorded no more") for k, c in V1_KINDS.items()]
    extra = [r for r in extra if r[0].decode() not in known]
    if extra:
        width = max(rows.dtype["doc"].itemsize, *(len(r[2]) for r in extra))
        rows = np.concatenate([rows.astype(table_dtype(width)), np.array(extra, dtype=table_dtype(width))])
    f.create_dataset("kinds", data=rows)
    return len(known)


def rank_file_name(rank: int) -> str:
    return f"ranks/rank-{rank:05d}.h5"


def _table(group: h5py.Group, name: str, dtype: np.dtype) -> h5py.Dataset:
    if name in group:
        return group[name]
    return group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(1024,))


def _append(ds: h5py.Dataset, rows: np.ndarray) -> None:
    if len(rows) == 0:
        return
    n = ds.shape[0]
    ds.resize((n + len(rows),))
    ds[n:] = rows


def _h5(path: Path, mode: str) -> h5py.File:
    """``path`` opened by its one writer: without HDF5's file lock, so that no reader
    can make the writer fail (the run folder's claim keeps other writers out)."""
    return h5py.File(path, mode, locking=False)


def _create(path: Path) -> h5py.File:
    """A new, empty file at ``path``: the old name unlinked first (a reader holding the
    old file keeps it; a hard link keeps its content), then created exclusively."""
    refuse_link(path)
    path.unlink(missing_ok=True)
    return _h5(path, "w-")


def _open(path: Path, resume: bool) -> h5py.File:
    """Open for a new run or to continue one. A file that a crash left damaged is moved
    aside (``<name>.damaged-<k>``, nothing is deleted) and started anew. A symbolic
    link at ``path`` is a ConfigError (the driver checks the folder before any
    collective; this guards against one planted since)."""
    if not resume:
        return _create(path)
    own_copy(path)
    try:
        return _h5(path, "a")
    except OSError as exc:
        k = 0
        while path.with_name(f"{path.name}.damaged-{k}").exists():
            k += 1
        aside = path.with_name(f"{path.name}.damaged-{k}")
        path.rename(aside)
        print(
            f"mpiml: warning: {path} could not be opened ({exc}); moved to {aside.name}, starting a new one",
            file=sys.stderr,
            flush=True,
        )
        return _create(path)


def _truncate_after(ds: h5py.Dataset, step: int) -> None:
    """Drop rows whose step is after ``step`` (a resume replays them), wherever they
    are: set-up rows (step -1) of an earlier resumed segment may follow them."""
    if ds.shape[0] == 0:
        return
    steps = ds["step"]
    keep = steps <= step
    n = int(np.count_nonzero(keep))
    if n == ds.shape[0]:
        return
    if keep[:n].all():  # the usual case: the rows to drop are all at the end
        ds.resize((n,))
        return
    rows = ds[...][keep]
    ds.resize((n,))
    ds[...] = rows


class RankFile:
    """One rank's own HDF5 file of events.

    The file is open only while a flush writes to it: between flushes it is closed and
    consistent on disk, so a process killed between flushes loses only the rows it had
    not flushed yet (HDF5 without SWMR gives no such promise for a file left open).
    Opened without HDF5's file lock: a reader holding it open never fails a flush.
    """

    def __init__(self, run_dir: Path, rank: int, clock_offset: float, resume_step: int | None) -> None:
        self.path = run_dir / rank_file_name(rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _open(self.path, resume_step is not None) as f:
            f.attrs["rank"] = rank
            f.attrs["host"] = socket.gethostname()
            f.attrs["clock_offset"] = clock_offset
            if "events" in f and f["events"].dtype != EVENT_DTYPE:  # an older schema's: rewrite
                old = upgrade_events(f["events"][()])
                del f["events"]
                _append(_table(f, "events", EVENT_DTYPE), old)
            events = _table(f, "events", EVENT_DTYPE)
            if resume_step is not None:  # rows carry the 0-based index of the step they belong to
                _truncate_after(events, resume_step - 1)
                for name, ds in f.items():  # protocol tables too
                    if (
                        isinstance(ds, h5py.Dataset)
                        and name != "events"
                        and ds.dtype.names
                        and "step" in ds.dtype.names
                    ):
                        _truncate_after(ds, resume_step - 1)
        self._pending: list[np.ndarray] = []
        self._tables: dict[str, list[np.ndarray]] = {}

    def append_table(self, name: str, rows: np.ndarray) -> None:
        """Rows of a protocol's own table (``/ranks/<r>/<name>`` in run.h5)."""
        if len(rows):
            self._tables.setdefault(name, []).append(rows)

    def append_events(self, rows: np.ndarray) -> None:
        if len(rows):
            self._pending.append(rows)

    def flush(self) -> None:
        if not self._pending and not self._tables:
            return
        rows = np.concatenate(self._pending) if self._pending else None
        tables, self._pending, self._tables = self._tables, [], {}
        with _h5(self.path, "a") as f:
            if rows is not None:
                _append(f["events"], rows)
            for name, chunks in tables.items():
                data = np.concatenate(chunks)
                _append(_table(f, name, data.dtype), data)

    def close(self) -> None:
        self.flush()


class RunFile:
    """Rank 0's ``run.h5``: run attributes, metrics, the kinds table, and links to every
    rank's file.

    ``layout`` is JSON text describing each rank's role (stored as the root attribute
    ``layout``; "" when the caller has none); it must parse as JSON. ``/kinds`` is the
    registry's table (:func:`mpiml.kinds.table`), written at creation and rewritten at
    a flush when kinds were registered since. Like :class:`RankFile`, open only while
    a flush writes to it.
    """

    def __init__(
        self,
        run_dir: Path,
        world_size: int,
        attrs: dict[str, Any],
        resume_step: int | None,
        *,
        layout: str = "",
    ) -> None:
        if layout:
            try:
                json.loads(layout)
            except ValueError as exc:
                raise ValueError(f"RunFile: layout must be JSON text ({exc})") from None
        self.path = run_dir / "run.h5"
        with _open(self.path, resume_step is not None) as f:
            if resume_step is None or "schema" not in f.attrs:  # new, or lost and re-created
                f.attrs["schema"] = SCHEMA
                f.attrs["mpiml_version"] = __version__
                f.attrs["started_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
                f.attrs["world_size"] = world_size
                f.attrs["started_unix"] = attrs.get("started_unix", 0.0)
            for k, v in attrs.items():  # config etc. describe the latest segment (run.steps may grow)
                if k != "started_unix":
                    f.attrs[k] = v
            schema_1 = f.attrs.get("schema") == "mpiml-run/1"
            f.attrs["schema"] = SCHEMA  # a resumed schema-1 run: its rank files are upgraded too
            f.attrs["layout"] = layout
            self._n_kinds = _write_kinds(f, schema_1)
            metrics = f.require_group("metrics")
            ranks = f.require_group("ranks")
            for r in range(world_size):
                if str(r) not in ranks:
                    ranks[str(r)] = h5py.ExternalLink(rank_file_name(r), "/")
            if resume_step is not None:
                f.attrs["resumed_at_steps"] = np.append(
                    f.attrs.get("resumed_at_steps", np.zeros(0, np.int64)), resume_step
                )
                for ds in metrics.values():
                    _truncate_after(ds, resume_step)
        self._pending: dict[str, list[tuple[int, float, float]]] = {}

    def metric(self, name: str, step: int, time: float, value: float) -> None:
        self._pending.setdefault(name, []).append((step, time, value))

    def flush(self) -> None:
        grew = len(KINDS) != self._n_kinds
        if not self._pending and not grew:
            return
        pending, self._pending = self._pending, {}
        with _h5(self.path, "a") as f:
            if grew:
                self._n_kinds = _write_kinds(f)
            for name, rows in pending.items():
                _append(_table(f["metrics"], name, METRIC_DTYPE), np.array(rows, dtype=METRIC_DTYPE))

    def close(self) -> None:
        self.flush()
