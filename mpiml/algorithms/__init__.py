"""Training algorithms, registered under their papers' names."""

from __future__ import annotations

from . import dasgd, local_sgd, sgd  # noqa: F401  (register "dasgd", "local_sgd", "sgd")
from .base import REGISTRY, Algorithm, Context, register

__all__ = ["REGISTRY", "Algorithm", "Context", "register"]
