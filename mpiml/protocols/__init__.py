"""Communication events M_t: who exchanges what with whom, and when.

Split-phase protocols (:class:`Protocol`: ``start``, ``test``, ``finish``, ``run``):
:class:`AllReduce`, :class:`Gossip`, :class:`CompressedAllReduce`,
:class:`CompressedGossip`, and :class:`DifferenceAverage` (an average sent as differences
from a shared reference: PR-SGD's anchor, DaSGD's compressed reference).

:class:`AsyncGossip` is not a split-phase protocol: it is a one-sided push-sum channel
over MPI-3 windows (``push``, ``drain``, ``step``, and a collective ``close``), with no
operation that starts and finishes; it is exported here because it is the asynchronous
gossip protocol of MixML §6.
"""

from __future__ import annotations

from .allreduce import AllReduce
from .async_gossip import AsyncGossip
from .base import Protocol
from .compressed_allreduce import CompressedAllReduce
from .compressed_gossip import CompressedGossip
from .difference import DifferenceAverage
from .gossip import Gossip

__all__ = [
    "AllReduce",
    "AsyncGossip",
    "CompressedAllReduce",
    "CompressedGossip",
    "DifferenceAverage",
    "Gossip",
    "Protocol",
]
