"""Training algorithms, registered under their papers' names."""

from __future__ import annotations

from . import dasgd, gossip, local_sgd, sgd  # noqa: F401  (register the algorithms)
from .base import REGISTRY, Algorithm, Context, register

__all__ = ["REGISTRY", "Algorithm", "Context", "register"]
