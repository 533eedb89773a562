"""HDF5 run files, checkpoints, and readers for post-processing."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..kinds import KIND_WIDTH, KINDS
from ..trace import EVENT_DTYPE, Trace
from .runfile import EVENT_DEFAULTS, METRIC_DTYPE, SCHEMA, SCHEMAS, V1_KINDS

__all__ = ["EVENT_DTYPE", "METRIC_DTYPE", "SCHEMA", "SCHEMAS", "Run", "Trace", "load_run"]


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
    ``to_pandas()`` gives DataFrames when pandas is installed.
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

    @property
    def world_size(self) -> int:
        return int(self.attrs["world_size"])

    @property
    def schema_version(self) -> int:
        return int(str(self.attrs["schema"]).rsplit("/", 1)[1])

    def metric(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one metric."""
        m = self.metrics[name]
        return m["step"], m["value"]

    def to_pandas(self) -> tuple[dict[str, Any], Any]:
        """(metrics as {name: DataFrame}, all events as one DataFrame with a rank column)."""
        import pandas as pd

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


def load_run(path: str | Path) -> Run:
    """Read ``run.h5`` (or the run folder holding it), following links to rank files.

    Reads schema ``mpiml-run/1`` and ``mpiml-run/2``. Safe to call while the run is
    going: it reads what has been flushed so far. A rank file that does not exist (a
    run that crashed before that rank wrote one) is listed in ``missing_ranks``, and
    one that exists but cannot be read (damaged, say) in ``unreadable_ranks`` with the
    error, each with a warning, rather than failing the read.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "run.h5"
    # locking=False: a run file may be read while its run is still writing it (or while
    # the processes of a run that was just killed are still being torn down)
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
        missing: list[int] = []
        unreadable: dict[int, str] = {}
        ranks = f["ranks"]
        for name in sorted(ranks, key=int):
            r = int(name)
            link = ranks.get(name, getlink=True)
            where = f"ranks/{name}"
            if isinstance(link, h5py.ExternalLink):
                target = p.parent / link.filename
                where = str(target)
                if not target.exists():
                    missing.append(r)
                    continue
            try:
                ev = ranks[name]["events"][()]
            except (KeyError, OSError) as exc:
                unreadable[r] = f"{where}: {type(exc).__name__}: {exc}"
                continue
            events[r] = _events(ev)
    if missing:
        warnings.warn(f"{p}: no events for ranks {missing} (their files are missing)", stacklevel=2)
    for r, err in unreadable.items():
        warnings.warn(f"{p}: no events for rank {r}: its file could not be read ({err})", stacklevel=2)
    return Run(p, attrs, config, metrics, events, missing, layout, kinds, unreadable)
