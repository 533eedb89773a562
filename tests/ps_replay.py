"""A serial replay of a parameter server run's apply log: the oracle for any interleaving.

Each server s logs, in the order it applied them, one row per push it applied (table
``ps_apply`` of its rank file, :data:`mpiml.protocols.ps_server.APPLY_DTYPE`): the
worker i, its clock c (its c-th push), ``version_read`` (the version of shard s in
the model worker i computed that push from) and ``version`` (the updates applied to
shard s before it). Nothing else about the interleaving matters: given the log, the
run is a pure function of the job. :func:`replay` recomputes it serially:

- shard s's history: its value at every version 0, 1, ..., kept whole (a push may
  have been computed from any earlier version of any shard);
- push (i, c) is recomputed at the model worker i read: shard s' at the
  ``version_read`` that shard s' logged for (i, c), for every s' (one push goes to
  every server, so every shard's log has a row for it);
- with worker i's own minibatches, rebuilt with :func:`mpiml.data.build_data` for its
  data shard i of W (the sampler is seeded by (run.seed, i), so it draws the same
  batches): gradient mode, batch c-1 (one push per step) and the gradient scaled
  1/(batch W); delta mode, batches (c-1) tau .. c tau - 1 (the last push: up to the
  run's last step), local optimizer steps on the batch mean's gradient (1/batch)
  from the model read (the worker's optimizer state carried from its previous
  period, its position-valued entries moved with the model as the worker moves
  them), the push being x_tau - x_0;
- each shard applies the pushes in its log's order, as the server does: gradient
  mode, the job's optimizer with the shard's own state; delta mode, x_s += Delta_s / W;
  rows that share one ``version`` (staleness 0, BSP) are one update, their pushes
  added in the log's order (worker order 0..W-1).

Pushes are recomputed lazily, as soon as every version they read exists; a log that
never lets that happen (a push read a version no update produced) or that misses a
push on some shard raises :class:`ReplayError`. The result is bit for bit the
servers' final shards when the run followed its log.

It is a test helper, not part of the package: it needs a whole run from step 0
(a resumed segment's pushes read the model its first pull returned, which the replay
reproduces only when the log before the resume is kept, as it is; but the workers'
local state in delta mode is not logged) and it keeps every version of the model in
memory: fine for the test suite's small jobs, not for a user's long run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mpiml.data import build_data
from mpiml.io.runfile import rank_file_name
from mpiml.models import initial_params, job_model
from mpiml.optim import POSITION_STATE, build_optimizer
from mpiml.protocols.ps_wire import shard_ranges

__all__ = ["ReplayError", "read_apply_logs", "replay"]


class ReplayError(RuntimeError):
    """The log cannot have come from a run of this job."""


def read_apply_logs(run_dir: Path, world_size: int, servers: int) -> list[np.ndarray]:
    """Each server's ``ps_apply`` table, shard 0 first (servers are the last ranks)."""
    out = []
    for r in range(world_size - servers, world_size):
        with h5py.File(Path(run_dir) / rank_file_name(r), "r") as f:
            out.append(f["ps_apply"][()])
    return out


class _Worker:
    """Worker i as the replay needs it: its minibatches in order (drawn once), and in
    delta mode its local optimizer state and the model it ended its last period at."""

    def __init__(self, cfg: Any, i: int, w: int, x0: np.ndarray, opt: Any) -> None:
        self.sampler = build_data(cfg, i, w).sampler
        self.batches: list[tuple[np.ndarray, np.ndarray]] = []
        self.pushed = 0  # pushes recomputed so far (delta mode: in order)
        self.x_end = x0.copy()  # delta: the local model at the end of the last period
        self.state = opt.init(x0.copy()) if opt is not None else {}

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self.batches) <= k:
            xb, yb = self.sampler.next()
            self.batches.append((xb.copy(), yb.copy()))
        return self.batches[k]


def replay(cfg: Any, logs: Sequence[np.ndarray], workers: int) -> list[np.ndarray]:
    """The final value of every shard (shard 0 first) that the apply ``logs`` (one per
    server, rows in apply order) give for the job ``cfg`` with ``workers`` workers.

    Pure, serial, no MPI. Raises :class:`ReplayError` for a log that is not causal
    (a push read a version no update produced before it was applied), misses a push
    on some shard, or numbers its versions other than 0, 1, ... per update.
    """
    data0 = build_data(cfg, 0, workers)
    model = job_model(cfg, data0.n_features, data0.n_classes)
    x0 = initial_params(cfg, model)
    s_count = len(logs)
    ranges = shard_ranges(x0.size, s_count)
    mode, tau = str(cfg.algorithm.push), int(cfg.algorithm.tau)
    if mode == "gradient":
        tau = 1
    opt = build_optimizer(cfg.optimizer)
    scale = 1.0 / (data0.sampler.batch_size * (workers if mode == "gradient" else 1))
    inv_w = 1.0 / workers
    steps = int(cfg.run.steps)
    ws = [_Worker(cfg, i, workers, x0, opt if mode == "delta" else None) for i in range(workers)]

    # per shard: every version's value, the optimizer state (gradient mode), and
    # version_read of each push (worker, clock) as that shard logged it
    hist = [[x0[lo:hi].copy()] for lo, hi in ranges]
    states = [opt.init(x0[lo:hi].copy()) for lo, hi in ranges] if mode == "gradient" else []
    read: list[dict[tuple[int, int], int]] = []
    for s, log in enumerate(logs):
        seen: dict[tuple[int, int], int] = {}
        for row in log:
            key = (int(row["worker"]), int(row["clock"]))
            if key in seen:
                raise ReplayError(f"shard {s}: push {key} (worker, clock) applied twice")
            seen[key] = int(row["version_read"])
        read.append(seen)
    keys = [set(r) for r in read]
    if any(k != keys[0] for k in keys):
        missing = sorted(set.union(*keys) - set.intersection(*keys))[:5]
        raise ReplayError(f"pushes (worker, clock) missing on some shard: {missing} ...")

    updates: dict[tuple[int, int], np.ndarray] = {}
    g = np.empty_like(x0)

    def readable(i: int, c: int) -> bool:
        return all(read[s][(i, c)] < len(hist[s]) for s in range(s_count))

    def model_read(i: int, c: int) -> np.ndarray:
        x = np.empty_like(x0)
        for s, (lo, hi) in enumerate(ranges):
            x[lo:hi] = hist[s][read[s][(i, c)]]
        return x

    def compute(i: int, c: int) -> np.ndarray:
        """Push c of worker i (1-based clock), recomputed at the model it read."""
        if (i, c) in updates:
            return updates[(i, c)]
        w = ws[i]
        x = model_read(i, c)
        if mode == "gradient":
            xb, yb = w.batch(c - 1)
            out = np.empty_like(x0)
            model.loss_and_grad(x, xb, yb, out, scale)
        else:
            if w.pushed != c - 1:
                raise ReplayError(f"worker {i}: push {c} before push {w.pushed + 1} (delta mode)")
            # the worker's exchange moved its optimizer's positions with the model:
            # state - x_tau (before the push) + x_pulled (after it); x_0 for the first period
            if c > 1:
                for k in POSITION_STATE[type(opt)]:
                    w.state[k] -= w.x_end
                    w.state[k] += x
            base = x.copy()
            for j in range((c - 1) * tau, min(c * tau, steps)):
                xb, yb = w.batch(j)
                model.loss_and_grad(x, xb, yb, g, scale)
                opt.step(x, g, w.state)
            out = x.copy()
            out -= base  # Delta = x_tau - x_0, as the worker computes it
            w.x_end = x
            w.pushed = c
        updates[(i, c)] = out
        return out

    def apply(s: int, xs: np.ndarray, u: np.ndarray) -> None:
        if mode == "gradient":
            opt.step(xs, u, states[s])
        else:
            u = u.copy()
            np.multiply(u, inv_w, out=u)  # as the server: x + Delta / W
            xs += u

    pos = [0] * s_count
    while any(pos[s] < len(logs[s]) for s in range(s_count)):
        progressed = False
        for s, (lo, hi) in enumerate(ranges):
            log = logs[s]
            while pos[s] < len(log):
                version = int(log[pos[s]]["version"])
                end = pos[s]
                while end < len(log) and int(log[end]["version"]) == version:
                    end += 1  # a BSP round: the rows of one version are one update
                if version != len(hist[s]) - 1:
                    raise ReplayError(
                        f"shard {s}: row {pos[s]} applied at version {version}, expected {len(hist[s]) - 1}"
                    )
                rows = [(int(r["worker"]), int(r["clock"])) for r in log[pos[s] : end]]
                if not all(readable(i, c) for i, c in rows):
                    break
                # delta mode: a worker's earlier pushes first (its local state runs on)
                acc = compute(*rows[0])[lo:hi].copy()
                for i, c in rows[1:]:
                    acc += compute(i, c)[lo:hi]
                xs = hist[s][-1].copy()
                apply(s, xs, acc)
                hist[s].append(xs)
                pos[s] = end
                progressed = True
        if not progressed:
            stuck = {s: int(logs[s][pos[s]]["version"]) for s in range(s_count) if pos[s] < len(logs[s])}
            raise ReplayError(
                f"the log is not causal: no shard can apply its next row (shard: version) {stuck}"
            )
    return [h[-1] for h in hist]
