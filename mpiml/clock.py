"""One clock for all ranks: local ``perf_counter`` plus an offset measured against rank 0.

Each rank r > 0 exchanges ``rounds`` ping-pongs with rank 0 and keeps the offset of
the round with the shortest round trip (Cristian's algorithm): the error is at most
half that round trip, a few microseconds on one node.
"""

from __future__ import annotations

import time

import numpy as np
from mpi4py import MPI

__all__ = ["sync_clock"]

_TAG = 7001


def sync_clock(comm: MPI.Comm, rounds: int = 8) -> float:
    """Offset to add to ``time.perf_counter()`` to read rank 0's clock.

    Collective over ``comm``; ranks are served one after another by rank 0.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    buf = np.zeros(1, dtype=np.float64)
    if rank == 0:
        for peer in range(1, size):
            for _ in range(rounds):
                comm.Recv(buf, source=peer, tag=_TAG)
                buf[0] = time.perf_counter()
                comm.Send(buf, dest=peer, tag=_TAG)
        offset = 0.0
    else:
        best_rtt, offset = float("inf"), 0.0
        for _ in range(rounds):
            t1 = time.perf_counter()
            buf[0] = t1
            comm.Send(buf, dest=0, tag=_TAG)
            comm.Recv(buf, source=0, tag=_TAG)
            t2 = time.perf_counter()
            if t2 - t1 < best_rtt:
                best_rtt, offset = t2 - t1, float(buf[0]) - (t1 + t2) / 2
    # the run's time zero: rank 0's clock now, the same number on every rank
    return offset
