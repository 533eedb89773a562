"""The eager faces of a lazily opened run (:class:`mpiml.io.reader.Run`).

``run.events``: {rank: whole table} read on access and, called, a DataFrame of some
ranks, kinds, steps or a time window; ``run.metrics``: {name: rows} and, called, one
DataFrame; ``run.tables``: {rank: {name: rows}} read on access. The DataFrames need
pandas (``pip install 'mpiml[pandas]'``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kinds import KIND_WIDTH
from ..trace import EVENT_DTYPE

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["READ_DTYPE", "EventsView", "MetricsView", "TablesView", "pandas_or_raise"]

READ_DTYPE = np.dtype(
    [(n, f"U{KIND_WIDTH}" if n == "kind" else EVENT_DTYPE[n]) for n in EVENT_DTYPE.names or ()]
)
"""Events as read: ``EVENT_DTYPE`` with ``kind`` decoded to ``str`` (``msg`` -1 in schema 1)."""


class EventsView(Mapping[int, np.ndarray]):
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
        pd = pandas_or_raise("run.events()")
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


class MetricsView(dict[str, np.ndarray]):
    """``run.metrics``: {name: rows (step, time, value)}; called, one DataFrame with a
    row per evaluated step and a column per metric."""

    def __call__(self) -> Any:
        pd = pandas_or_raise("run.metrics()")
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


class TablesView(Mapping[int, dict[str, np.ndarray]]):
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


def pandas_or_raise(what: str) -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(f"{what} needs pandas: pip install 'mpiml[pandas]'") from None
    return pd
