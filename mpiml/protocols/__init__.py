"""Communication events M_t: who exchanges what with whom, and when (split-phase)."""

from __future__ import annotations

from .allreduce import AllReduce
from .async_gossip import AsyncGossip
from .base import Protocol
from .compressed_allreduce import CompressedAllReduce
from .compressed_gossip import CompressedGossip
from .gossip import Gossip

__all__ = ["AllReduce", "AsyncGossip", "CompressedAllReduce", "CompressedGossip", "Gossip", "Protocol"]
