"""Communication events M_t: who exchanges what with whom, and when (split-phase)."""

from __future__ import annotations

from .allreduce import AllReduce
from .base import Protocol

__all__ = ["AllReduce", "Protocol"]
