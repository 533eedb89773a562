"""Measure what an MPI Allreduce achieves on the link the ranks have.

Run it on the ranks you want to check, with or without ``launch/slownet``::

    launch/slownet run 2 --rate 1gbit -- python launch/slownet_check.py
    mpiexec -n 2 python launch/slownet_check.py          # shared memory, for comparison

Rank 0 prints one JSON line: ``ranks``, ``bytes`` (per rank), ``seconds`` (median time of
one allreduce over ``reps``; each is the slowest rank's), ``seconds_all``, ``link`` (the
interface or subnet slownet told MPI to use), and ``mbit_s``, the bus bandwidth of a ring
allreduce, ``2 (n-1)/n * bytes * 8 / seconds`` (each rank sends and receives that much;
NCCL's "busbw"). Under slownet it should come out a little below the configured
``--rate``; over shared memory it is far above any network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from mpi4py import MPI


def bus_mbit_s(n: int, nbytes: int, seconds: float) -> float:
    """Ring-allreduce bus bandwidth in Mbit/s: 2 (n-1)/n * bytes * 8 / seconds / 1e6."""
    if n < 2:
        return float("nan")  # a single rank moves nothing
    return 2.0 * (n - 1) / n * nbytes * 8.0 / seconds / 1e6


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bytes", type=int, default=16_000_000, help="message size per rank (float32)")
    p.add_argument("--reps", type=int, default=5, help="timed allreduces (after one warm-up)")
    args = p.parse_args(argv)
    if args.bytes < 4:
        raise ValueError(f"--bytes must be >= 4 (got {args.bytes})")
    if args.reps < 1:
        raise ValueError(f"--reps must be >= 1 (got {args.reps})")

    comm = MPI.COMM_WORLD
    count = args.bytes // 4
    send = np.ones(count, dtype=np.float32)
    recv = np.empty_like(send)

    comm.Allreduce(send, recv, op=MPI.SUM)  # warm-up: connections are made lazily
    times = []
    for _ in range(args.reps):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(send, recv, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    # Slowest rank per repetition: the collective ends when its last rank does.
    times = [max(ts) for ts in zip(*comm.allgather(times), strict=True)]
    ok = bool(recv[0] == comm.Get_size() and recv[-1] == comm.Get_size())
    ok = all(comm.allgather(ok))

    if comm.Get_rank() == 0:
        n, nbytes = comm.Get_size(), count * 4
        seconds = statistics.median(times)
        print(
            json.dumps(
                {
                    "ranks": n,
                    "bytes": nbytes,
                    "reps": args.reps,
                    "seconds": seconds,
                    "seconds_all": times,
                    "mbit_s": bus_mbit_s(n, nbytes, seconds),
                    "correct": ok,
                    # The link MPI was told to use (set by launch/slownet); null: MPI's choice.
                    "link": os.environ.get("FI_TCP_IFACE") or os.environ.get("OMPI_MCA_btl_tcp_if_include"),
                    "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                }
            ),
            flush=True,
        )
    if not ok:
        raise SystemExit("allreduce returned a wrong sum")


if __name__ == "__main__":
    main()
