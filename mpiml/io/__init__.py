"""HDF5 run files, checkpoints, and readers for post-processing."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .runfile import METRIC_DTYPE, SCHEMA
from .trace import EVENT_DTYPE, Trace

__all__ = ["EVENT_DTYPE", "METRIC_DTYPE", "SCHEMA", "Run", "Trace", "load_run"]


@dataclass
class Run:
    """A run file read into memory: attributes, config, metrics and per-rank events.

    ``metrics[name]`` and ``events[rank]`` are numpy structured arrays; ``kind`` is
    decoded to ``str``. ``to_pandas()`` gives DataFrames when pandas is installed.
    """

    path: Path
    attrs: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, np.ndarray]
    events: dict[int, np.ndarray] = field(default_factory=dict)
    missing_ranks: list[int] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return int(self.attrs["world_size"])

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


def load_run(path: str | Path) -> Run:
    """Read ``run.h5`` (or the run folder holding it), following links to rank files.

    Safe to call while the run is going: it reads what has been flushed so far.
    A rank file that is missing (a run that crashed before that rank wrote one) is
    listed in ``missing_ranks`` with a warning rather than failing the read.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "run.h5"
    # locking=False: a run file may be read while its run is still writing it (or while
    # the processes of a run that was just killed are still being torn down)
    with h5py.File(p, "r", locking=False) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        if attrs.get("schema") != SCHEMA:
            raise ValueError(
                f"{p} is not an mpiml run file (schema {attrs.get('schema')!r}, expected {SCHEMA!r})"
            )
        config = json.loads(attrs.get("config", "{}"))
        metrics = {name: ds[()] for name, ds in f["metrics"].items()}
        events: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for name in sorted(f["ranks"], key=int):
            r = int(name)
            try:
                ev = f["ranks"][name]["events"][()]
            except (KeyError, OSError):
                missing.append(r)
                continue
            out = np.empty(
                ev.shape, dtype=[(n, "U16" if n == "kind" else ev.dtype[n]) for n in ev.dtype.names]
            )
            for n in ev.dtype.names:
                out[n] = np.char.decode(ev[n]) if n == "kind" else ev[n]
            events[r] = out
    if missing:
        warnings.warn(f"{p}: no events for ranks {missing} (their files are missing)", stacklevel=2)
    return Run(p, attrs, config, metrics, events, missing)
