"""The lazy run-file reader: :func:`load_run` opens a run, rows are read when asked for.

``load_run(path)`` reads ``run.h5``'s attributes, its ``/kinds`` table, the layout, the
metrics (small: a row per evaluation) and, for every rank, only the header of its
events table (its length, its first and last row: a file cut short by a kill fails
there). No event is read until asked for, and every reader streams:

- :meth:`Run.iter_events` / :meth:`Run.iter_columns`: one rank's events in chunks of at
  most ``chunk`` rows (memory O(chunk) whatever the file's size), optionally cut to
  kinds, a step range and a time window;
- :meth:`Run.scan`: every rank at once, in time slabs (each rank's rows up to a common
  time), for analyses that need ranks side by side (pairing messages);
- :meth:`Run.messages`: paired sends and receives (:data:`MESSAGE_DTYPE`), streamed:
  only messages whose other end has not been read yet are held.

The eager API of before keeps working, each access reading what it needs:
``run.events[r]`` (rank r's whole table), ``run.metrics[name]``, ``run.tables[r][name]``,
``run.table(name)``, ``run.to_pandas()``. ``run.events(...)``, ``run.metrics()`` and
``run.messages_frame(...)`` give pandas DataFrames (pandas: ``pip install 'mpiml[pandas]'``).

Times are seconds on the run's common clock (every rank's offset to rank 0 was
applied when recorded), so rows of different ranks compare directly. Files are opened
without HDF5's file lock and closed between reads, so a live run can be read.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time as _time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from ..kinds import KIND_WIDTH, KINDS
from ..trace import EVENT_DTYPE
from .runfile import EVENT_DEFAULTS, SCHEMAS, V1_KINDS

__all__ = ["MESSAGE_DTYPE", "READ_DTYPE", "Run", "RankReadError", "load_run"]

T = TypeVar("T")

READ_DTYPE = np.dtype(
    [(n, f"U{KIND_WIDTH}" if n == "kind" else EVENT_DTYPE[n]) for n in EVENT_DTYPE.names or ()]
)
"""Events as read: ``EVENT_DTYPE`` with ``kind`` decoded to ``str`` (``msg`` -1 in schema 1)."""

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

CHUNK = 65536  # rows per read: ~5 MB of events
READ_TRIES = 5  # a read that overlaps a writer's flush can fail; it succeeds when tried again
RECV_SLACK = (
    10.0  # s: a recv ends after its send starts; past this margin (clock error) its send will not come
)


class RankReadError(OSError):
    """A rank's file could not be read (damaged, cut short, locked, gone)."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank


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
            _time.sleep(0.05 * (k + 1))
            if k == READ_TRIES - 1 or _stamp(path) == before:
                raise
    raise AssertionError("unreachable")


def _why(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "lock file" in str(exc) or "locking" in str(exc):
        text += (
            " (another process holds the file with HDF5's file lock: open it with locking=False, "
            "as load_run does, or set HDF5_USE_FILE_LOCKING=FALSE)"
        )
    return text


def _open(path: Path) -> h5py.File:
    # locking=False: a run file may be read while its run is still writing it
    return h5py.File(path, "r", locking=False)


@dataclass(frozen=True)
class _Source:
    """Where one rank's tables are: a file and the group in it."""

    file: Path
    group: str  # "/" for a rank file, "ranks/<r>" for a table inside run.h5
    n_events: int


def _decode(rows: np.ndarray) -> np.ndarray:
    """Stored events (any schema) as ``READ_DTYPE`` rows."""
    out = np.empty(rows.shape, dtype=READ_DTYPE)
    names = rows.dtype.names or ()
    for n in READ_DTYPE.names or ():
        if n == "kind":
            out[n] = np.char.decode(rows[n])
        else:
            out[n] = rows[n] if n in names else EVENT_DEFAULTS[n]
    return out


_KIND_NAME = re.compile(r"[a-z][a-z0-9_.\-]*")  # mpiml.kinds.register_kind's rule


class _Kinds:
    """Kind names -> small integer codes, fast: an S32 name is hashed from its four
    8-byte words and looked up among the known names' hashes (verified by equality)."""

    _MUL = np.array(
        [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], np.uint64
    )

    def __init__(self, names: Iterable[str]) -> None:
        self.names: list[str] = []
        self.valid = np.zeros(0, bool)  # per code: a name a writer can make (register_kind's rule)
        self._hash: dict[int, int] = {}
        self._sorted = np.zeros(0, np.uint64)
        self._codes = np.zeros(0, np.int32)
        for n in names:
            self.add(n)

    def _hashes(self, raw: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(raw, dtype=f"S{KIND_WIDTH}")
        words = b.view(np.uint64).reshape(-1, KIND_WIDTH // 8)
        with np.errstate(over="ignore"):
            h = words * self._MUL
            return (
                h[:, 0] ^ (h[:, 1] >> np.uint64(7)) ^ (h[:, 2] << np.uint64(3)) ^ (h[:, 3] >> np.uint64(11))
            )

    def add(self, name: str, raw: bytes | None = None) -> int:
        """The code of ``name`` (``raw``: its stored bytes, when they do not decode)."""
        if raw is None and name in self.names:
            return self.names.index(name)
        h = int(self._hashes(np.array([name.encode() if raw is None else raw], f"S{KIND_WIDTH}"))[0])
        if raw is not None and h in self._hash:
            return self._hash[h]
        if h in self._hash:  # a collision (never seen): fall back to exact compares for both
            raise AssertionError(f"kind hash collision: {name!r} and {self.names[self._hash[h]]!r}")
        self.names.append(name)
        ok = raw is None or raw.rstrip(b"\0").isascii()
        self.valid = np.append(self.valid, ok and _KIND_NAME.fullmatch(name) is not None)
        self._hash[h] = len(self.names) - 1
        keys = np.array(sorted(self._hash), np.uint64)
        self._sorted = keys
        self._codes = np.array([self._hash[int(k)] for k in keys], np.int32)
        return len(self.names) - 1

    def codes(self, raw: np.ndarray) -> np.ndarray:
        """int32 code of each S32 name in ``raw`` (names not seen before are added)."""
        if len(raw) == 0:
            return np.zeros(0, np.int32)
        h = self._hashes(raw)
        i = np.minimum(np.searchsorted(self._sorted, h), max(len(self._sorted) - 1, 0))
        hit = (self._sorted[i] == h) if len(self._sorted) else np.zeros(len(h), bool)
        if not hit.all():
            for name in np.unique(np.asarray(raw)[~hit]):  # a kind /kinds lacks, or damaged bytes
                self.add(bytes(name).decode(errors="replace"), bytes(name))
            return self.codes(raw)
        return self._codes[i]

    def select(self, kinds: Iterable[str] | None) -> np.ndarray | None:
        """The codes of ``kinds`` (None: no selection)."""
        if kinds is None:
            return None
        return np.array([self.add(k) for k in ([kinds] if isinstance(kinds, str) else kinds)], np.int32)


def _window(
    steps: tuple[int, int] | None, time: tuple[float, float] | None
) -> tuple[tuple[int, int] | None, tuple[float, float] | None]:
    for name, w in (("steps", steps), ("time", time)):
        if w is not None and (len(w) != 2 or not w[0] <= w[1]):
            raise ValueError(f"{name} must be a pair (start, end) with start <= end (got {w!r})")
    return steps, time


class _Events(Mapping[int, np.ndarray]):
    """``run.events``: {rank: whole events table} (read on access), and, called, a
    DataFrame of the events of some ranks, kinds, steps or time window."""

    def __init__(self, run: Run) -> None:
        self._run = run

    def __getitem__(self, rank: int) -> np.ndarray:
        if rank not in self._run._sources:
            raise KeyError(rank)
        parts = list(self._run.iter_events(rank))
        return np.concatenate(parts) if parts else np.zeros(0, READ_DTYPE)

    def __iter__(self) -> Iterator[int]:
        return iter(self._run.ranks)

    def __len__(self) -> int:
        return len(self._run.ranks)

    def __call__(
        self,
        ranks: Iterable[int] | None = None,
        kinds: Iterable[str] | None = None,
        steps: tuple[int, int] | None = None,
        time: tuple[float, float] | None = None,
    ) -> Any:
        """Events as one DataFrame: rank, role, step, kind, category, t_start, t_end,
        duration (s), nbytes, peer, msg. Reads only the ranks asked for."""
        pd = _pandas("run.events()")
        frames = []
        for r in self._run._select(ranks):
            for rows in self._run.iter_events(r, kinds=kinds, steps=steps, time=time):
                df = pd.DataFrame(rows)
                df.insert(0, "role", self._run.role(r))
                df.insert(0, "rank", r)
                frames.append(df)
        if not frames:
            return pd.DataFrame(columns=["rank", "role", *(READ_DTYPE.names or ()), "category", "duration"])
        df = pd.concat(frames, ignore_index=True)
        df.insert(df.columns.get_loc("kind") + 1, "category", df["kind"].map(self._run.kinds).fillna(""))
        df.insert(df.columns.get_loc("t_end") + 1, "duration", df["t_end"] - df["t_start"])
        return df


class _Metrics(dict[str, np.ndarray]):
    """``run.metrics``: {name: rows (step, time, value)}; called, one DataFrame with a
    row per evaluated step and a column per metric."""

    def __call__(self) -> Any:
        pd = _pandas("run.metrics()")
        out = None
        for name, rows in sorted(self.items()):
            df = pd.DataFrame({"step": rows["step"], "time": rows["time"], name: rows["value"]})
            if out is None:
                out = df
            else:
                out = out.merge(df.drop(columns="time"), on="step", how="outer")
        if out is None:
            return pd.DataFrame(columns=["step", "time"])
        return out.sort_values("step", ignore_index=True)


class _Tables(Mapping[int, dict[str, np.ndarray]]):
    """``run.tables``: {rank: {name: rows}}, a rank's tables read on access."""

    def __init__(self, run: Run) -> None:
        self._run = run

    def __getitem__(self, rank: int) -> dict[str, np.ndarray]:
        if rank not in self._run._sources:
            raise KeyError(rank)
        return self._run._read_tables(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(self._run.ranks)

    def __len__(self) -> int:
        return len(self._run.ranks)


def _pandas(what: str) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(f"{what} needs pandas: pip install 'mpiml[pandas]'") from None
    return pd


@dataclass
class Run:
    """An opened run file: attributes, config, kinds, layout and metrics in memory; each
    rank's events and tables read when asked for (see the module's docstring).

    ``missing_ranks``: ranks whose file does not exist (a run that crashed before they
    wrote it); ``unreadable_ranks``: {rank: the error} for files that exist but cannot
    be read (damaged, locked, not readable by you, a link loop); each with a warning
    at :func:`load_run`. ``ranks``: the others. ``unpaired`` (after :meth:`messages`):
    sends and receives whose other end was not found.
    """

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    metrics: _Metrics
    layout: Any = None
    kinds: dict[str, str] = field(default_factory=dict)
    missing_ranks: list[int] = field(default_factory=list)
    unreadable_ranks: dict[int, str] = field(default_factory=dict)
    _sources: dict[int, _Source] = field(default_factory=dict, repr=False)
    unpaired: int = 0

    def __post_init__(self) -> None:
        self._kind_codes = _Kinds(self.kinds)
        self.events = _Events(self)
        self.tables = _Tables(self)

    # -- what the run is -------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return int(self.attrs["world_size"])

    @property
    def schema_version(self) -> int:
        return int(str(self.attrs["schema"]).rsplit("/", 1)[1])

    @property
    def ranks(self) -> list[int]:
        """Ranks whose events can be read, ascending."""
        return sorted(self._sources)

    @property
    def resumed_at_steps(self) -> np.ndarray:
        """int64: the first step of every resumed segment (empty if never resumed)."""
        return np.atleast_1d(np.asarray(self.attrs.get("resumed_at_steps", []), np.int64))

    @property
    def algorithm(self) -> str:
        """``algorithm.name`` of the run ("" when the file does not say)."""
        name = self.attrs.get("algorithm") or self.config.get("algorithm", {}).get("name", "")
        return str(name)

    def role_info(self, rank: int) -> dict[str, Any] | None:
        """The rank's role as the layout records it ({kind, stage, group, shard, reads};
        :class:`mpiml.layout.Role`), None when the file has no layout (schema 1)."""
        roles = (self.layout or {}).get("roles") if isinstance(self.layout, dict) else None
        if not roles or not 0 <= rank < len(roles):
            return None
        return dict(roles[rank])

    def role(self, rank: int) -> str:
        """The rank's part: replica, worker, server, stage or scheduler ("rank" for a
        file that records no layout)."""
        r = self.role_info(rank)
        return str(r["kind"]) if r else "rank"

    def describe(self, rank: int) -> str:
        """The rank's part in words: "stage 1 of pipeline 0", "server of shard 1",
        "replica (shard 2)", "scheduler" ("rank" without a layout)."""
        r = self.role_info(rank)
        if r is None:
            return "rank"
        from ..layout import Role

        try:
            return Role(**r).describe()
        except (TypeError, ValueError):
            return str(r.get("kind", "rank"))

    def n_events(self, rank: int) -> int:
        """How many events rank ``rank`` recorded (0 for a missing or unreadable rank)."""
        s = self._sources.get(rank)
        return s.n_events if s else 0

    def metric(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric; KeyError naming the metrics there are."""
        if name not in self.metrics:
            raise KeyError(f"no metric {name!r} in {self.path} (it has {', '.join(sorted(self.metrics))})")
        m = self.metrics[name]
        return m["step"], m["value"]

    def table(self, name: str) -> dict[int, np.ndarray]:
        """The per-rank table ``name`` of every rank that wrote one: {rank: rows}."""
        out = {}
        for r in self.ranks:
            rows = self._read_table(r, name)
            if rows is not None:
                out[r] = rows
        return out

    def _select(self, ranks: Iterable[int] | None) -> list[int]:
        if ranks is None:
            return self.ranks
        out = sorted(set(int(r) for r in ranks))
        bad = [r for r in out if r not in self._sources]
        if bad:
            raise ValueError(
                f"ranks {bad} have no readable events in {self.path} (readable: {self.ranks}; "
                f"missing: {self.missing_ranks}; unreadable: {sorted(self.unreadable_ranks)})"
            )
        return out

    # -- reading one rank ------------------------------------------------------------

    def _group(self, f: h5py.File, rank: int) -> h5py.Group:
        s = self._sources[rank]
        return f if s.group == "/" else f[s.group]

    def _read_tables(self, rank: int) -> dict[str, np.ndarray]:
        s = self._sources[rank]

        def read() -> dict[str, np.ndarray]:
            with _open(s.file) as f:
                g = self._group(f, rank)
                return {
                    k: np.asarray(ds[()])
                    for k, ds in g.items()
                    if k != "events" and isinstance(ds, h5py.Dataset) and "step" in (ds.dtype.names or ())
                }

        try:
            return _retry(read, s.file)
        except (OSError, KeyError) as exc:
            raise RankReadError(rank, f"{s.file}: {_why(exc)}") from None

    def _read_table(self, rank: int, name: str) -> np.ndarray | None:
        s = self._sources[rank]

        def read() -> np.ndarray | None:
            with _open(s.file) as f:
                ds = self._group(f, rank).get(name)
                return np.asarray(ds[()]) if isinstance(ds, h5py.Dataset) else None

        try:
            return _retry(read, s.file)
        except (OSError, KeyError) as exc:
            raise RankReadError(rank, f"{s.file}: {_why(exc)}") from None

    def iter_columns(
        self,
        rank: int,
        fields: Iterable[str] = ("step", "kind", "t_start", "t_end", "nbytes", "peer", "msg"),
        *,
        kinds: Iterable[str] | None = None,
        steps: tuple[int, int] | None = None,
        time: tuple[float, float] | None = None,
        chunk: int = CHUNK,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Rank ``rank``'s events in file order (``t_start`` order), ``chunk`` rows at a
        time, as {column: array}; only ``fields`` are read (``kind``, when asked for, is
        an int32 code: ``run.kind_names[code]``; ``msg`` is -1 in a schema-1 file).

        ``kinds``: keep these kind names; ``steps``: keep steps in [a, b) (the 0-based
        ``step`` column); ``time``: keep events that overlap [t0, t1) on the run clock
        (not clipped; reading stops at the first event starting at or after t1). Memory
        O(chunk). Raises :class:`RankReadError` naming the rank, file and rows when a
        read fails (rows before it were yielded), ValueError for a rank not readable or
        a malformed window.
        """
        self._select([rank])
        steps, time = _window(steps, time)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 (got {chunk})")
        want = list(fields)
        unknown = [f for f in want if f not in (EVENT_DTYPE.names or ())]
        if unknown:
            raise ValueError(f"unknown event fields {unknown} (fields: {', '.join(EVENT_DTYPE.names or ())})")
        need = list(dict.fromkeys(want + ["kind"] * (kinds is not None) + ["step"] * (steps is not None)))
        if time is not None:
            need = list(dict.fromkeys(need + ["t_start", "t_end"]))
        codes = self._kind_codes.select(kinds)
        s = self._sources[rank]
        try:
            f = _retry(lambda: _open(s.file), s.file)
        except (OSError, KeyError) as exc:
            raise RankReadError(rank, f"{s.file}: {_why(exc)}") from None
        with f:
            ds = self._group(f, rank)["events"]
            stored = ds.dtype.names or ()
            # whole rows into one buffer reused for every chunk (faster than a field
            # selection, which HDF5 converts row by row); the columns asked for are copied
            buf = np.empty(min(chunk, s.n_events), ds.dtype)
            for a in range(0, s.n_events, chunk):
                b = min(a + chunk, s.n_events)
                raw = buf[: b - a]
                try:
                    ds.read_direct(raw, np.s_[a:b], np.s_[0 : b - a])
                except (OSError, KeyError, ValueError) as exc:
                    raise RankReadError(rank, f"{s.file}: rows {a}-{b - 1}: {_why(exc)}") from None
                kind = self._kind_codes.codes(raw["kind"])
                self._check(rank, s.file, a, raw, kind)
                cols: dict[str, np.ndarray] = {}
                for n in need:
                    if n == "kind":
                        cols[n] = kind
                    elif n in stored:
                        cols[n] = raw[n].copy()
                    else:
                        cols[n] = np.full(b - a, EVENT_DEFAULTS[n], EVENT_DTYPE[n])
                keep = None
                if codes is not None:
                    keep = np.isin(cols["kind"], codes)
                if steps is not None:
                    k = (cols["step"] >= steps[0]) & (cols["step"] < steps[1])
                    keep = k if keep is None else keep & k
                stop = False
                if time is not None:
                    k = (cols["t_end"] >= time[0]) & (cols["t_start"] < time[1])
                    keep = k if keep is None else keep & k
                    stop = bool(len(cols["t_start"]) and cols["t_start"][-1] >= time[1])
                if keep is not None:
                    cols = {n: v[keep] for n, v in cols.items()}
                out = {n: cols[n] for n in want}
                if len(next(iter(out.values()), ())):
                    yield out
                if stop:
                    return

    def _check(self, rank: int, file: Path, first: int, raw: np.ndarray, kind: np.ndarray) -> None:
        """RankReadError when rows of a chunk cannot be what a writer wrote: a kind name
        no writer makes, a time that is not finite or an end before its start (HDF5
        keeps no checksum of a table's data, so overwritten bytes read without error)."""
        with np.errstate(invalid="ignore"):
            bad = (
                ~self._kind_codes.valid[kind] | ~(raw["t_end"] >= raw["t_start"]) | ~np.isfinite(raw["t_end"])
            )
            bad |= ~np.isfinite(raw["t_start"])
        if bad.any():
            at = np.flatnonzero(bad)
            raise RankReadError(
                rank,
                f"{file}: rows {first + int(at[0])}-{first + int(at[-1])}: {len(at)} damaged rows (kind names "
                "no writer makes, times not finite or ending before they start): the file was overwritten",
            )

    @property
    def kind_names(self) -> list[str]:
        """Kind name of each code :meth:`iter_columns` gives (grows as new names are read)."""
        return self._kind_codes.names

    def iter_events(
        self,
        rank: int,
        *,
        kinds: Iterable[str] | None = None,
        steps: tuple[int, int] | None = None,
        time: tuple[float, float] | None = None,
        chunk: int = CHUNK,
    ) -> Iterator[np.ndarray]:
        """Rank ``rank``'s events as ``READ_DTYPE`` rows (``kind`` a str), in chunks of
        at most ``chunk`` rows; the cuts and errors of :meth:`iter_columns`."""
        names = list(EVENT_DTYPE.names or ())
        kind_names = np.array(self._kind_codes.names or [""])
        for cols in self.iter_columns(rank, names, kinds=kinds, steps=steps, time=time, chunk=chunk):
            rows = np.empty(len(cols["step"]), READ_DTYPE)
            if len(self._kind_codes.names) > len(kind_names):
                kind_names = np.array(self._kind_codes.names)
            for n in names:
                rows[n] = kind_names[cols[n]] if n == "kind" else cols[n]
            yield rows

    # -- every rank at once ------------------------------------------------------------

    def scan(
        self,
        fields: Iterable[str] = ("step", "kind", "t_start", "t_end", "nbytes", "peer", "msg"),
        *,
        ranks: Iterable[int] | None = None,
        kinds: Iterable[str] | None = None,
        steps: tuple[int, int] | None = None,
        time: tuple[float, float] | None = None,
        chunk: int = CHUNK,
        on_error: Callable[[RankReadError], None] | None = None,
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Every rank's events in time slabs: yields (rank, columns) such that, once a
        slab's parts have been yielded, every row starting before the slab's end has
        been, on every rank. Each rank holds at most ``chunk`` rows (the chunk per rank
        shrinks with many ranks, to about 4M rows in all). ``on_error``: called with a
        rank's :class:`RankReadError` and that rank left out (default: raise)."""
        for r, cols, _ in self._slabs(
            fields, ranks=ranks, kinds=kinds, steps=steps, time=time, chunk=chunk, on_error=on_error
        ):
            yield r, cols

    def _slabs(
        self,
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
        chunk = max(1, min(chunk, max(1024, (1 << 22) // max(1, len(self._select(ranks))))))
        its: dict[int, Iterator[dict[str, np.ndarray]]] = {
            r: self.iter_columns(r, want, kinds=kinds, steps=steps, time=time, chunk=chunk)
            for r in self._select(ranks)
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
        self,
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
        window (``steps``, ``time``: as :meth:`iter_columns`). Streams over
        :meth:`scan`: held are only the ends whose other end was not read yet (a recv
        is given up once every rank has been read to ``RECV_SLACK`` seconds past its end). Ends never
        paired are counted in ``run.unpaired`` when the iterator is done. A schema-1
        file (no message ids) yields nothing.
        """
        self.unpaired = 0
        if self.schema_version < 2:
            return
        sel = set(self._select(ranks))
        resumed = self.resumed_at_steps
        cols = ("step", "kind", "t_start", "t_end", "nbytes", "peer", "msg")
        fields = [("key", "<i8"), ("msg", "<i8"), ("side", "i1"), ("src", "<i4"), ("dst", "<i4")]
        fields += [("step", "<i8"), ("nbytes", "<i8"), ("t0", "<f8"), ("t1", "<f8")]
        end_dtype = np.dtype(fields)
        pending = np.zeros(0, end_dtype)
        w = max(self.world_size, 1)
        for r, c, done in self._slabs(
            cols, ranks=sel, kinds=("send", "recv"), steps=steps, time=time, chunk=chunk, on_error=on_error
        ):
            send = c["kind"] == self._kind_codes.add("send")
            peer = c["peer"]
            ok = np.isin(peer, list(sel)) & (c["msg"] >= 0)
            if not ok.all():
                self.unpaired += int(np.count_nonzero(~ok))
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
                self.unpaired += int(np.count_nonzero(stale))
                pending = pending[~stale]
        self.unpaired += len(pending)

    def messages_frame(self, **kw: Any) -> Any:
        """:meth:`messages` as one DataFrame (pandas), one row per message."""
        pd = _pandas("run.messages_frame()")
        parts = list(self.messages(**kw))
        return pd.DataFrame(np.concatenate(parts) if parts else np.zeros(0, MESSAGE_DTYPE))

    def to_pandas(self) -> tuple[dict[str, Any], Any]:
        """(metrics as {name: DataFrame}, all events as one DataFrame with a rank column).
        ImportError (one line, naming the extra to install) without pandas."""
        pd = _pandas("Run.to_pandas()")
        metrics = {k: pd.DataFrame(v) for k, v in self.metrics.items()}
        frames = []
        for r in self.ranks:
            df = pd.DataFrame(self.events[r])
            df["rank"] = r
            frames.append(df)
        return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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


def _kinds_of(f: h5py.File) -> dict[str, str]:
    if "kinds" in f:
        t = f["kinds"][()]
        return {bytes(n).decode(): bytes(c).decode() for n, c in zip(t["name"], t["category"], strict=True)}
    return {**V1_KINDS, **{k.name: k.category for k in KINDS.values()}}


def _probe(file: Path, group: str) -> int:
    """The number of events in a rank's table, reading its first and last rows (a file
    cut short fails here rather than half-way through a report)."""
    with _open(file) as f:
        g = f if group == "/" else f[group]
        ds = g["events"]
        n = int(ds.shape[0])
        if n:
            ds[0]
            ds[n - 1]
        return n


def load_run(path: str | Path) -> Run:
    """Open ``run.h5`` (or the run folder holding it) lazily, following the links to
    the rank files (the module's docstring says what is read now and what later).

    Reads schema ``mpiml-run/1`` and ``mpiml-run/2``. Safe to call while the run is
    going: it reads what has been flushed so far, without HDF5's file lock, and tries
    again a read that overlapped a flush. A rank file that does not exist is listed in
    ``missing_ranks``, one that exists but cannot be opened or whose events table is cut
    short in ``unreadable_ranks`` with the error; each with a warning, and the other
    ranks are read. Raises OSError when ``run.h5`` itself cannot be read, and ValueError
    for a file of another schema.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "run.h5"
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):  # a FIFO would block for ever
        raise OSError(f"{p} is not a regular file (a folder, FIFO, socket or device)")
    run = _retry(lambda: _read(p), p)
    if run.missing_ranks:
        warnings.warn(f"{p}: no events for ranks {run.missing_ranks} (their files are missing)", stacklevel=2)
    for r, err in run.unreadable_ranks.items():
        warnings.warn(f"{p}: no events for rank {r}: its file could not be read ({err})", stacklevel=2)
    return run


def _read(p: Path) -> Run:
    with _open(p) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("schema") not in SCHEMAS:
            raise ValueError(
                f"{p} is not an mpiml run file this version reads (schema {attrs.get('schema')!r}, "
                f"expected one of {', '.join(map(repr, SCHEMAS))})"
            )
        config = json.loads(attrs.get("config", "{}"))
        text = attrs.get("layout", "")
        layout = json.loads(text) if text else None
        kinds = _kinds_of(f)
        metrics = _Metrics({name: ds[()] for name, ds in f["metrics"].items()})
        links = {}
        ranks = f["ranks"]
        for name in sorted(ranks, key=int):
            link = ranks.get(name, getlink=True)
            links[int(name)] = link.filename if isinstance(link, h5py.ExternalLink) else None
    sources: dict[int, _Source] = {}
    missing: list[int] = []
    unreadable: dict[int, str] = {}
    for r, filename in links.items():
        target, group, where = p, f"ranks/{r}", f"ranks/{r}"
        if filename is not None:
            target, group = p.parent / filename, "/"
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
            n = _retry(lambda t=target, g=group: _probe(t, g), target)  # type: ignore[misc]
        except (KeyError, OSError) as exc:
            unreadable[r] = f"{where}: {_why(exc)}"
            continue
        sources[r] = _Source(target, group, n)
    return Run(
        p,
        attrs,
        config,
        metrics,
        layout=layout,
        kinds=kinds,
        missing_ranks=missing,
        unreadable_ranks=unreadable,
        _sources=sources,
    )
