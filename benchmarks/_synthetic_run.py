"""A synthetic run folder, written by mpiml's own writers: a ring-gossip (D-PSGD-like)
run of N events over R ranks, for benchmarking the readers, ``mpiml report`` and
``mpiml trace export`` on large files (issue #15, Benchmark).

Per step every rank records ``compute``, then, all starting when its compute ends, a
``gossip`` span (in flight) holding one ``send`` to and one ``recv`` from each ring
neighbour, its ``update`` (overlapping the round) and a ``wait`` until the round
completes; every ``eval_every`` steps an ``eval`` and every ``checkpoint_every`` steps
a ``checkpoint`` close the step. Messages pair as docs/run-file.md ("Messages") says:
a send's ``msg`` is the sender's running count of messages to that peer, a recv's the
receiver's running count from that source, with equal ``nbytes``. Times are on one
common clock (seconds since run start): a step starts when the slowest rank's round of
the step before has completed, and a receive ends after its sender's compute. Rank
``R - 1`` is a mild straggler (compute 15 % longer). Rank 0's ``run.h5`` gets
``loss``, ``test_loss`` and ``accuracy`` at every evaluation, as the driver writes
them.

Deterministic (one seed); written in chunks of steps through
:class:`mpiml.io.runfile.RankFile` / :class:`~mpiml.io.runfile.RunFile` (one flush per
chunk), so the generator's memory stays O(chunk) whatever N.

    python benchmarks/_synthetic_run.py OUT_FOLDER [--events 1000000] [--ranks 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mpi4py  # noqa: E402

# the kinds' owners import mpi4py.MPI; the generator needs no MPI (nor its init)
mpi4py.rc.initialize = False
mpi4py.rc.finalize = False

from mpiml.algorithms.replica import COMPUTE, UPDATE  # noqa: E402
from mpiml.io.runfile import RankFile, RunFile  # noqa: E402
from mpiml.layout import data_parallel  # noqa: E402
from mpiml.protocols.base import RECV, SEND, WAIT  # noqa: E402
from mpiml.protocols.gossip import GOSSIP  # noqa: E402
from mpiml.run.evaluate import EVAL  # noqa: E402
from mpiml.run.resume import CHECKPOINT  # noqa: E402
from mpiml.trace import EVENT_DTYPE  # noqa: E402

__all__ = ["events_per_step", "neighbours", "write_run"]

MODEL_BYTES = 4 * 25_000  # a float32 model of 25k parameters per message


def neighbours(rank: int, ranks: int) -> list[int]:
    """Rank's ring neighbours (left, right; one when ``ranks`` = 2)."""
    return sorted({(rank - 1) % ranks, (rank + 1) % ranks} - {rank})


def events_per_step(ranks: int) -> int:
    """Events of one step on one rank, evaluations and checkpoints apart."""
    return 4 + 2 * len(neighbours(0, ranks))


def write_run(
    out: Path,
    events: int,
    ranks: int = 4,
    *,
    seed: int = 0,
    eval_every: int = 100,
    checkpoint_every: int = 500,
    chunk_steps: int = 2048,
) -> dict[str, int]:
    """Write a synthetic schema-2 run folder ``out`` (run.h5 + ranks/rank-XXXXX.h5) with
    about ``events`` events in all over ``ranks`` ranks (whole steps: the count is
    rounded to the step); returns ``{"events": n, "steps": s, "ranks": R}`` as written.
    ``ranks`` >= 2 (a ring needs a neighbour). Deterministic in ``seed``."""
    if ranks < 2:
        raise ValueError(f"write_run: ranks must be >= 2 for a ring (got {ranks})")
    per_step = ranks * events_per_step(ranks)
    extra = ranks * (1 / eval_every + 1 / checkpoint_every)
    steps = max(1, round(events / (per_step + extra)))
    out.mkdir(parents=True, exist_ok=True)
    layout = data_parallel(ranks)
    config = {"algorithm": {"name": "dpsgd"}, "run": {"steps": steps, "name": out.name}, "synthetic": True}
    run_file = RunFile(
        out,
        ranks,
        {
            "config": json.dumps(config),
            "mpi_library": "none (synthetic run: benchmarks/_synthetic_run.py)",
            "algorithm": "dpsgd",
            "clock": "synthetic, seconds since run start",
            "threads_per_rank": 1,
            "started_unix": 0.0,
            "network": "synthetic",
            "mpi_async_progress": "",
        },
        None,
        layout=layout.to_json(),
    )
    files = [RankFile(out, r, 0.0, None) for r in range(ranks)]
    rng = np.random.default_rng(seed)
    t = 0.0
    written = 0
    for s0 in range(0, steps, chunk_steps):
        s = np.arange(s0, min(steps, s0 + chunk_steps))
        t, n = _chunk(files, run_file, rng, s, t, ranks, eval_every, checkpoint_every)
        written += n
        for f in files:
            f.flush()
        run_file.flush()
    for f in files:
        f.close()
    run_file.close()
    return {"events": written, "steps": steps, "ranks": ranks}


def _chunk(
    files: list[RankFile],
    run_file: RunFile,
    rng: np.random.Generator,
    s: np.ndarray,
    t: float,
    ranks: int,
    eval_every: int,
    checkpoint_every: int,
) -> tuple[float, int]:
    """Append the events of steps ``s`` (starting at time ``t``) to every rank's pending
    rows and rank 0's metrics; returns (the time after the last step, events added)."""
    S = len(s)
    slow = np.ones(ranks)
    slow[-1] = 1.15
    comp = 0.010 * slow[:, None] * rng.lognormal(0.0, 0.1, (ranks, S))  # (R, S) seconds
    upd = 0.001 * rng.lognormal(0.0, 0.1, (ranks, S))
    lat = 0.002 * rng.lognormal(0.0, 0.3, (ranks, ranks, S))  # [src, dst]: wire time
    # a message src -> dst is received once src has computed and the wire time passed;
    # the sender's Isend completes once the receiver has posted too
    recv_end = {}  # (dst, src) -> (S,) offsets from the step's start
    send_end = {}  # (src, dst)
    for r in range(ranks):
        for p in neighbours(r, ranks):
            recv_end[r, p] = np.maximum(comp[p], comp[r]) + lat[p, r]
            send_end[p, r] = np.maximum(comp[p], comp[r]) + 0.8 * lat[p, r]
    done = np.zeros((ranks, S))
    for r in range(ranks):
        ends = [recv_end[r, p] for p in neighbours(r, ranks)] + [send_end[r, p] for p in neighbours(r, ranks)]
        done[r] = np.maximum(np.max(ends, axis=0), comp[r] + upd[r])
    evals = (s + 1) % eval_every == 0
    ckpts = (s + 1) % checkpoint_every == 0
    t_eval, t_ckpt = 0.004, 0.020
    length = done.max(axis=0) + 1e-5 + evals * t_eval + ckpts * t_ckpt
    start = t + np.concatenate([[0.0], np.cumsum(length)[:-1]])  # (S,) each step's start
    step_end = done.max(axis=0) + 1e-5  # where eval / checkpoint begin
    added = 0
    for r, f in enumerate(files):
        nbs = neighbours(r, ranks)
        E = events_per_step(ranks) + 2
        rows = np.zeros((S, E), dtype=EVENT_DTYPE)
        rows["step"] = s[:, None]
        rows["peer"] = -1
        rows["msg"] = -1
        c = start + comp[r]

        put = functools.partial(_put, rows, s)
        put(0, COMPUTE, start, c)
        put(1, GOSSIP, c, start + done[r], MODEL_BYTES * len(nbs))
        j = 2
        for p in nbs:
            put(j, SEND, c, start + send_end[r, p], MODEL_BYTES, p)
            j += 1
        for p in nbs:
            put(j, RECV, c, start + recv_end[r, p], MODEL_BYTES, p)
            j += 1
        put(j, UPDATE, c, c + upd[r])
        put(j + 1, WAIT, c + upd[r], np.maximum(c + upd[r], start + done[r]))
        put(j + 2, EVAL, start + step_end, start + step_end + t_eval)
        ck0 = start + step_end + evals * t_eval
        put(j + 3, CHECKPOINT, ck0, ck0 + t_ckpt)
        keep = np.ones((S, E), dtype=bool)
        keep[:, j + 2] = evals
        keep[:, j + 3] = ckpts
        flat = rows[keep]  # row-major: step by step, in t_start order within a step
        f.append_events(flat)
        added += len(flat)
    for k in np.flatnonzero(evals):
        when = float(start[k] + step_end[k])
        loss = 2.3 * np.exp(-s[k] / 5000) + 0.05
        run_file.metric("loss", int(s[k]) + 1, when, float(loss))
        run_file.metric("test_loss", int(s[k]) + 1, when, float(loss * 1.05))
        run_file.metric("accuracy", int(s[k]) + 1, when, float(1 - loss / 2.5))
    return float(start[-1] + length[-1]), added


def _put(
    rows: np.ndarray,
    s: np.ndarray,
    j: int,
    kind: str,
    t0: np.ndarray,
    t1: np.ndarray,
    nbytes: int = 0,
    peer: int = -1,
) -> None:
    """Fill column ``j`` of the (steps, events) block ``rows``: one event per step."""
    rows["kind"][:, j] = kind.encode()
    rows["t_start"][:, j], rows["t_end"][:, j] = t0, t1
    rows["nbytes"][:, j] = nbytes
    if peer >= 0:
        rows["peer"][:, j] = peer
        rows["msg"][:, j] = s  # one message each way per step: the running count is the step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the run folder to write (created; files in it replaced)")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(write_run(args.out, args.events, args.ranks, seed=args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
