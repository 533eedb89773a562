"""The SPMD driver, split by concept: :mod:`~mpiml.run.setup` (checks and set-up before
any collective), :mod:`~mpiml.run.loop` (:func:`train`, the hooks after each step),
:mod:`~mpiml.run.evaluate` (metrics from the programs' contributions),
:mod:`~mpiml.run.resume` (checkpoints, layout-aware) and :mod:`~mpiml.run.console`
(what rank 0 prints)."""

from __future__ import annotations

from .loop import Loop, Result, train
from .setup import job_layout

__all__ = ["Loop", "Result", "job_layout", "train"]
