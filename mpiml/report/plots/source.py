"""What the plots read from a run (:func:`mpiml.io.load_run`): its name, ranks, events in
a window and paired messages, through the reader's streaming methods.

Times are seconds on the run's common clock (seconds since the run started).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...io.reader import MESSAGE_DTYPE, READ_DTYPE

if TYPE_CHECKING:
    from ...io.reader import Run

__all__ = ["messages", "rank_events", "ranks_of", "run_name"]

Steps = tuple[int, int] | None
Window = tuple[float, float] | None


def run_name(run: Run) -> str:
    """The run's name: ``run.name`` of its config, else its folder's name."""
    name = (run.config.get("run") or {}).get("name")
    return str(name) if name else run.path.parent.name


def ranks_of(run: Run) -> list[int]:
    """The ranks whose files opened, sorted."""
    return sorted(run.ranks)


def rank_events(run: Run, rank: int, *, steps: Steps = None, time: Window = None) -> np.ndarray:
    """Rank ``rank``'s events with a step in [steps[0], steps[1]) and overlapping
    [time[0], time[1]) (seconds), in file (= start time) order, as one array
    (:meth:`mpiml.io.Run.iter_events`' chunks joined: the window is a plot's, small)."""
    chunks = list(run.iter_events(rank, steps=steps, time=time))
    return np.concatenate(chunks) if chunks else np.empty(0, READ_DTYPE)


def messages(
    run: Run, *, ranks: Sequence[int] | None = None, steps: Steps = None, time: Window = None
) -> np.ndarray:
    """The paired point-to-point messages (:meth:`mpiml.io.Run.messages`: a send on src
    and the recv of the same message id on dst) whose both ends are in ``ranks`` and in
    the window, as one array of :data:`~mpiml.io.reader.MESSAGE_DTYPE` rows ordered by
    send start."""
    parts = list(run.messages(ranks=ranks, steps=steps, time=time))
    out = np.concatenate(parts) if parts else np.empty(0, MESSAGE_DTYPE)
    return out[np.argsort(out["t_send_start"], kind="stable")]
