"""Divergence: a non-finite loss or model ends the run on every rank with one line
(:class:`mpiml.errors.DivergenceError`, status 3), never a checkpoint of it."""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..errors import DivergenceError

__all__ = ["params_finite", "raise_diverged"]


def params_finite(x: Any) -> bool:
    """Whether every value of a flat parameter array (numpy or cupy; None: none held)
    is finite. Local: no communication."""
    if x is None:
        return True
    xp = getattr(x, "__array_namespace__", None)
    return bool((xp() if xp is not None else np).isfinite(x).all())


def raise_diverged(done: int, rank: int, bad_here: bool, comm: MPI.Comm, world_size: int, what: str) -> None:
    """Raise DivergenceError on every rank of ``comm`` (which agreed that the run
    diverged after step ``done``), naming the lowest world ``rank`` whose own values were
    not finite. One small collective over ``comm``, on this error path only."""
    lowest = comm.allreduce(rank if bad_here else world_size, op=MPI.MIN)
    err = DivergenceError(done, lowest if lowest < world_size else 0, "try a smaller optimizer.lr", what=what)
    err.agreed = True  # type: ignore[attr-defined]  # raised on every rank: one line, no abort
    raise err
