"""Training algorithms, registered under their papers' names."""

from __future__ import annotations

from . import sgd  # noqa: F401  (registers "sgd")
from .base import REGISTRY, Algorithm, Context, register

__all__ = ["REGISTRY", "Algorithm", "Context", "register"]
