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
import stat
import time as _time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from ..errors import RankReadError
from ..kinds import KINDS
from ..trace import EVENT_DTYPE
from .kindcodes import KindCodes
from .runfile import EVENT_DEFAULTS, SCHEMAS, V1_KINDS
from .slabs import CHUNK, MESSAGE_DTYPE, slabs
from .slabs import messages as _messages
from .views import READ_DTYPE, EventsView, MetricsView, TablesView, pandas_or_raise

__all__ = ["MESSAGE_DTYPE", "READ_DTYPE", "Run", "RankReadError", "load_run"]

T = TypeVar("T")


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


def _window(
    steps: tuple[int, int] | None, time: tuple[float, float] | None
) -> tuple[tuple[int, int] | None, tuple[float, float] | None]:
    for name, w in (("steps", steps), ("time", time)):
        if w is not None and (len(w) != 2 or not w[0] <= w[1]):
            raise ValueError(f"{name} must be a pair (start, end) with start <= end (got {w!r})")
    return steps, time


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
    metrics: MetricsView
    layout: Any = None
    kinds: dict[str, str] = field(default_factory=dict)
    missing_ranks: list[int] = field(default_factory=list)
    unreadable_ranks: dict[int, str] = field(default_factory=dict)
    _sources: dict[int, _Source] = field(default_factory=dict, repr=False)
    unpaired: int = 0

    def __post_init__(self) -> None:
        self._kind_codes = KindCodes(self.kinds)
        self.events = EventsView(self)
        self.tables = TablesView(self)

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
        """int64, sorted: the first step of every resumed segment (empty if never resumed)."""
        return np.sort(np.atleast_1d(np.asarray(self.attrs.get("resumed_at_steps", []), np.int64)))

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
        for r, cols, _ in slabs(
            self, fields, ranks=ranks, kinds=kinds, steps=steps, time=time, chunk=chunk, on_error=on_error
        ):
            yield r, cols

    # paired messages (mpiml.io.slabs.messages, a method here: run.messages(...))
    messages = _messages

    def messages_frame(self, **kw: Any) -> Any:
        """:meth:`messages` as one DataFrame (pandas), one row per message."""
        pd = pandas_or_raise("run.messages_frame()")
        parts = list(self.messages(**kw))
        return pd.DataFrame(np.concatenate(parts) if parts else np.zeros(0, MESSAGE_DTYPE))

    def to_pandas(self) -> tuple[dict[str, Any], Any]:
        """(metrics as {name: DataFrame}, all events as one DataFrame with a rank column).
        ImportError (one line, naming the extra to install) without pandas."""
        pd = pandas_or_raise("Run.to_pandas()")
        metrics = {k: pd.DataFrame(v) for k, v in self.metrics.items()}
        frames = []
        for r in self.ranks:
            df = pd.DataFrame(self.events[r])
            df["rank"] = r
            frames.append(df)
        return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
        metrics = MetricsView({name: ds[()] for name, ds in f["metrics"].items()})
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
