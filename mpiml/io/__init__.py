"""HDF5 run files, checkpoints, and readers for post-processing.

:func:`load_run` opens a run lazily (:mod:`mpiml.io.reader`): attributes, kinds,
layout and metrics at once, each rank's events and tables when asked for, streamed.
"""

from __future__ import annotations

from ..trace import EVENT_DTYPE, Trace
from .reader import MESSAGE_DTYPE, READ_DTYPE, RankReadError, Run, load_run
from .runfile import METRIC_DTYPE, SCHEMA, SCHEMAS

__all__ = [
    "EVENT_DTYPE",
    "MESSAGE_DTYPE",
    "METRIC_DTYPE",
    "READ_DTYPE",
    "SCHEMA",
    "SCHEMAS",
    "RankReadError",
    "Run",
    "Trace",
    "load_run",
]
