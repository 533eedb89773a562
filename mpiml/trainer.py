"""The training driver's former home; it lives in :mod:`mpiml.run` now (split by
concept). ``from mpiml.trainer import train`` keeps working."""

from __future__ import annotations

from .run import Result, train

__all__ = ["Result", "train"]
