"""The run file ``results/<run>/run.h5``: config, metrics, and per-rank event tables.

Layout (schema ``mpiml-run/1``, documented in docs/run-file.md)::

    run.h5                    written by rank 0
      attrs: schema, mpiml_version, config (JSON), world_size, mpi_library,
             algorithm, started_at, clock
      /metrics/<name>         rows (step int64, time float64, value float64)
      /ranks/<r>              external link to ranks/rank-<r>.h5, group "/"
    ranks/rank-<r>.h5         written by rank r alone
      attrs: rank, host, clock_offset
      /events                 rows of EVENT_DTYPE

Every rank writes only its own file, so flushing never synchronises ranks and a
crash of one rank cannot corrupt another's table; h5py follows the external
links, so ``run.h5`` reads as one file. Tables are chunked and grow on append;
``flush()`` pushes appended rows to disk.
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from .trace import EVENT_DTYPE

__all__ = ["METRIC_DTYPE", "SCHEMA", "RankFile", "RunFile", "rank_file_name"]

SCHEMA = "mpiml-run/1"
METRIC_DTYPE = np.dtype([("step", "<i8"), ("time", "<f8"), ("value", "<f8")])


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


def _truncate_after(ds: h5py.Dataset, step: int) -> None:
    """Drop rows whose step is after ``step`` (a resume replays them)."""
    if ds.shape[0] == 0:
        return
    steps = ds["step"]
    keep = int(np.count_nonzero(steps <= step))
    if keep < ds.shape[0]:
        ds.resize((keep,))


class RankFile:
    """One rank's own HDF5 file of events (append-only, flushed on demand)."""

    def __init__(self, run_dir: Path, rank: int, clock_offset: float, resume_step: int | None) -> None:
        path = run_dir / rank_file_name(rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = h5py.File(path, "a" if resume_step is not None else "w")
        self.f.attrs["rank"] = rank
        self.f.attrs["host"] = socket.gethostname()
        self.f.attrs["clock_offset"] = clock_offset
        self.events = _table(self.f, "events", EVENT_DTYPE)
        if resume_step is not None:  # events carry the 0-based index of the step they belong to
            _truncate_after(self.events, resume_step - 1)

    def append_events(self, rows: np.ndarray) -> None:
        _append(self.events, rows)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()


class RunFile:
    """Rank 0's ``run.h5``: run attributes, metrics, and links to every rank's file."""

    def __init__(
        self, run_dir: Path, world_size: int, attrs: dict[str, Any], resume_step: int | None
    ) -> None:
        self.path = run_dir / "run.h5"
        self.f = h5py.File(self.path, "a" if resume_step is not None else "w")
        if resume_step is None:
            self.f.attrs["schema"] = SCHEMA
            self.f.attrs["mpiml_version"] = __version__
            self.f.attrs["started_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            self.f.attrs["world_size"] = world_size
            for k, v in attrs.items():
                self.f.attrs[k] = v
        self.metrics = self.f.require_group("metrics")
        ranks = self.f.require_group("ranks")
        for r in range(world_size):
            if str(r) not in ranks:
                ranks[str(r)] = h5py.ExternalLink(rank_file_name(r), "/")
        if resume_step is not None:
            self.f.attrs["resumed_at_steps"] = np.append(
                self.f.attrs.get("resumed_at_steps", np.zeros(0, np.int64)), resume_step
            )
            for ds in self.metrics.values():
                _truncate_after(ds, resume_step)
        self._pending: dict[str, list[tuple[int, float, float]]] = {}

    def metric(self, name: str, step: int, time: float, value: float) -> None:
        self._pending.setdefault(name, []).append((step, time, value))

    def flush(self) -> None:
        for name, rows in self._pending.items():
            _append(_table(self.metrics, name, METRIC_DTYPE), np.array(rows, dtype=METRIC_DTYPE))
        self._pending = {}
        self.f.flush()

    def set_attr(self, key: str, value: Any) -> None:
        self.f.attrs[key] = value if not isinstance(value, dict) else json.dumps(value)

    def close(self) -> None:
        if self.f.id.valid:
            self.flush()
            self.f.close()
