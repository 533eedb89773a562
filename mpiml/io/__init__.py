"""HDF5 run files, checkpoints, and readers for post-processing."""

from __future__ import annotations

import json
import os
import stat
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from ..kinds import KIND_WIDTH, KINDS
from ..trace import EVENT_DTYPE, Trace
from .runfile import EVENT_DEFAULTS, METRIC_DTYPE, SCHEMA, SCHEMAS, V1_KINDS

__all__ = ["EVENT_DTYPE", "METRIC_DTYPE", "SCHEMA", "SCHEMAS", "Run", "Trace", "load_run"]

T = TypeVar("T")


# events as read: kind decoded to str
READ_DTYPE = np.dtype(
    [(n, f"U{KIND_WIDTH}" if n == "kind" else EVENT_DTYPE[n]) for n in EVENT_DTYPE.names or ()]
)


@dataclass
class Run:
    """A run file read into memory: attributes, config, metrics and per-rank events.

    ``metrics[name]`` and ``events[rank]`` are numpy structured arrays; events have the
    columns of ``EVENT_DTYPE`` whatever the file's schema (``kind`` decoded to ``str``;
    ``msg`` -1 in a schema-1 file). ``layout`` is the parsed ``layout`` attribute (None
    when the file has none); ``kinds`` maps each kind to its category (the file's
    ``/kinds``; for a schema-1 file, that schema's kinds and the current registry).
    ``tables[rank]`` holds that rank's other per-rank tables by name (``/ranks/<r>/<name>``:
    ``bytes_sent``, async gossip's ``exchanges``, the injected delays ``straggler``...;
    :meth:`table` gathers one over the ranks). ``to_pandas()`` gives DataFrames when
    pandas is installed.
    """

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, np.ndarray]
    events: dict[int, np.ndarray] = field(default_factory=dict)
    missing_ranks: list[int] = field(default_factory=list)
    layout: Any = None
    kinds: dict[str, str] = field(default_factory=dict)
    unreadable_ranks: dict[int, str] = field(default_factory=dict)  # rank -> the error
    tables: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # rank -> name -> rows

    @property
    def world_size(self) -> int:
        return int(self.attrs["world_size"])

    @property
    def schema_version(self) -> int:
        return int(str(self.attrs["schema"]).rsplit("/", 1)[1])

    def table(self, name: str) -> dict[int, np.ndarray]:
        """The per-rank table ``name`` of every rank that wrote one: {rank: rows}."""
        return {r: t[name] for r, t in self.tables.items() if name in t}

    def metric(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric."""
        m = self.metrics[name]
        return m["step"], m["value"]

    def to_pandas(self) -> tuple[dict[str, Any], Any]:
        """(metrics as {name: DataFrame}, all events as one DataFrame with a rank column).
        ImportError (one line, naming the extra to install) without pandas."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Run.to_pandas() needs pandas: pip install 'mpiml[pandas]'") from None

        metrics = {k: pd.DataFrame(v) for k, v in self.metrics.items()}
        frames = []
        for r, ev in self.events.items():
            df = pd.DataFrame(ev)
            df["rank"] = r
            frames.append(df)
        return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _events(ev: np.ndarray) -> np.ndarray:
    """A stored events table (any schema) as ``READ_DTYPE`` rows."""
    out = np.empty(ev.shape, dtype=READ_DTYPE)
    names = ev.dtype.names or ()
    for n in READ_DTYPE.names or ():
        if n == "kind":
            out[n] = np.char.decode(ev[n])
        else:
            out[n] = ev[n] if n in names else EVENT_DEFAULTS[n]
    return out


def _kinds(f: h5py.File) -> dict[str, str]:
    if "kinds" in f:
        t = f["kinds"][()]
        return {bytes(n).decode(): bytes(c).decode() for n, c in zip(t["name"], t["category"], strict=True)}
    return {**V1_KINDS, **{k.name: k.category for k in KINDS.values()}}


READ_TRIES = 5  # a read that overlaps a writer's flush can fail; it succeeds when tried again


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _retry(read: Callable[[], T], path: Path) -> T:
    """``read()`` of ``path``, tried again (up to READ_TRIES times) while a failure
    comes with the file changing: a reader that opens a file while its writer flushes
    may see a half-written end ("truncated file", "addr overflow"; h5py raises KeyError
    when that happens behind a link), and the next try sees a whole one. A file that
    does not change (damaged for good) fails at once."""
    for k in range(READ_TRIES):
        before = _stamp(path)
        try:
            return read()
        except FileNotFoundError:
            raise
        except (OSError, KeyError):
            time.sleep(0.05 * (k + 1))
            if k == READ_TRIES - 1 or _stamp(path) == before:
                raise
    raise AssertionError("unreachable")


def _read_rank(ranks: h5py.Group, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A rank's events and its other tables (the datasets of its group beside ``events``
    with a ``step`` column, as mpiml writes them; anything else in the file is left)."""
    group = ranks[name]
    tables = {
        k: np.asarray(ds[()])
        for k, ds in group.items()
        if k != "events" and isinstance(ds, h5py.Dataset) and "step" in (ds.dtype.names or ())
    }
    return np.asarray(group["events"][()]), tables


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "lock file" in str(exc) or "locking" in str(exc):
        text += (
            " (another process holds the file with HDF5's file lock: open it with locking=False, "
            "as load_run does, or set HDF5_USE_FILE_LOCKING=FALSE)"
        )
    return text


def load_run(path: str | Path) -> Run:
    """Read ``run.h5`` (or the run folder holding it), following links to rank files.

    Reads schema ``mpiml-run/1`` and ``mpiml-run/2``. Safe to call while the run is
    going: it reads what has been flushed so far, without HDF5's file lock, and tries
    again a read that overlapped a flush. A rank file that does not exist (a run that
    crashed before that rank wrote one) is listed in ``missing_ranks``; one that exists
    but cannot be read (damaged, locked, not readable by you, a link loop) in
    ``unreadable_ranks`` with the error; each with a warning, rather than failing the
    read. Raises OSError when ``run.h5`` itself cannot be read, and ValueError for a
    file of another schema.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "run.h5"
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):  # a FIFO would block for ever
        raise OSError(f"{p} is not a regular file (a folder, FIFO, socket or device)")
    return _retry(lambda: _read(p), p)


def _read(p: Path) -> Run:
    # locking=False: a run file may be read while its run is still writing it (or while
    # the processes of a run that was just killed are still being torn down); the
    # external links to the rank files are opened with the same setting
    with h5py.File(p, "r", locking=False) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("schema") not in SCHEMAS:
            raise ValueError(
                f"{p} is not an mpiml run file this version reads (schema {attrs.get('schema')!r}, "
                f"expected one of {', '.join(map(repr, SCHEMAS))})"
            )
        config = json.loads(attrs.get("config", "{}"))
        text = attrs.get("layout", "")
        layout = json.loads(text) if text else None
        kinds = _kinds(f)
        metrics = {name: ds[()] for name, ds in f["metrics"].items()}
        events: dict[int, np.ndarray] = {}
        tables: dict[int, dict[str, np.ndarray]] = {}
        missing: list[int] = []
        unreadable: dict[int, str] = {}
        ranks = f["ranks"]
        for name in sorted(ranks, key=int):
            r = int(name)
            link = ranks.get(name, getlink=True)
            where, target = f"ranks/{name}", p
            if isinstance(link, h5py.ExternalLink):
                target = p.parent / link.filename
                where = str(target)
                try:
                    st = os.stat(target)
                except FileNotFoundError:
                    missing.append(r)
                    continue
                except OSError as exc:  # a link loop, no permission on the folder...
                    unreadable[r] = f"{where}: {_why(exc)}"
                    continue
                if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block for ever
                    unreadable[r] = f"{where}: not a regular file (a folder, FIFO, socket or device)"
                    continue
            try:
                ev, tables[r] = _retry(partial(_read_rank, ranks, name), target)
            except (KeyError, OSError) as exc:
                unreadable[r] = f"{where}: {_why(exc)}"
                continue
            events[r] = _events(ev)
    if missing:
        warnings.warn(f"{p}: no events for ranks {missing} (their files are missing)", stacklevel=5)
    for r, err in unreadable.items():
        warnings.warn(f"{p}: no events for rank {r}: its file could not be read ({err})", stacklevel=5)
    return Run(p, attrs, config, metrics, events, missing, layout, kinds, unreadable, tables)
