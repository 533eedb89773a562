"""``sdpipe``: P pipelines of K stages whose stage replicas average in groups of the ready
ones, chosen by a central scheduler (Miao et al., "SDPipe: A Semi-Decentralized Framework
for Heterogeneity-aware Pipeline-parallel Training", VLDB 2023; update rule from the
appendix B.1.1, DOI 10.14778/3598581.3598604):

    X_{k+1} = (X_k - eta G_k) W_k

per stage: column i of X_k is replica i's parameters of that stage, G_k their
stochastic gradients, and W_k averages within the group S_k of replicas ready at update
k (1/|S_k| on the group's block, the identity elsewhere: symmetric and doubly
stochastic, Assumption 2 (4)); P = 1 group of all is AllReduce.

Layout: P = ``algorithm.pipelines`` pipelines of K = ``algorithm.stages`` ranks (rank
``p*K + k`` is stage k of pipeline p, as for ``dsp``) and one scheduler rank, the last:
world size P * K + 1 (:func:`mpiml.layout.pipelines` with ``scheduler=True``).

Inside each pipeline: DSP's asynchronous schedule (:mod:`mpiml.algorithms.pipeline`,
``algorithm.dsp_p`` / ``dsp_m``; default DSP(1,..,1,0; 2(K-1),..,2,0)): every stage
updates once per batch with diversely stale parameters, stored inputs recomputed with
the current weights (Eq. 5 of DSP) instead of stashed weights. The issue names an
asynchronous 1F1B with weight stashing (PipeDream); DSP's queues are the asynchronous
pipeline this project has, and they make the replay and the checkpoint exact.

Each update of stage k of pipeline p, for batch b (one per batch; the gradient of the
batch mean, 1/``data.batch_size``):

1. a ready signal (stage, pipeline, batch id, step, its wait time) to the scheduler,
2. the optimizer step on its own gradient, x <- x - eta g (overlapping the reply),
3. the group from the scheduler (:mod:`mpiml.protocols.sdpipe`),
4. the average over the group, point to point in a fixed summation order.

The scheduler (:class:`mpiml.algorithms.sdpipe_scheduler.SchedulerProgram`): the first
ready replica of a stage opens a group with deadline now + its wait time; the group
closes when all P replicas are in it or at the deadline. A replica's wait starts at
``algorithm.wait_ms`` and doubles (up to ``wait_max_ms``) after a group of fewer than 2
members, else shrinks x0.9 (not below 0.01 ms). Every ``ssp_bound`` batches a *bound
round* waits without deadline until the groups since the last round connect all
replicas (union-find); every ``sync_every`` batches (default: the batches of an epoch
of a shard) and at the last batch, a *sync round* averages all P replicas and each
pipeline drains (DSP's timetable restarts: nothing is in flight at a sync round).
Rounds fall on batch ids, the same ones for every replica (deadlock-free with K >= 2;
:mod:`mpiml.pipeline.groups` says why).

Between evaluations and checkpoints (``run.eval_every``, ``checkpoint.every``) the
pipelines run free of each other; those steps are meeting points (the test set flows
through every pipeline). A stop request (a signal, the stop file) reaches the scheduler
with the ready signals; it fixes a stop step a few steps past the furthest worker and
sends it with every reply, so all stop after the same step, with a checkpoint.
"""

from __future__ import annotations

import functools

from ..budget import data_shape
from ..config import Config, at_least, field
from ..errors import ConfigError
from ..layout import Layout, Role, pipelines
from ..pipeline import Timetable
from ..pipeline.groups import WAIT_FLOOR_MS
from .base import Program, register
from .pipeline import DSP, DSP_M, DSP_P, PipelineAlgorithm

__all__ = ["SDPipe", "drain_gap", "sync_period", "updates_through"]

WAIT_MS = field(
    "float",
    1.0,
    at_least(WAIT_FLOOR_MS, most=60_000.0),
    "ms a group waits after its first ready replica (initial; each replica adapts its own: x2 when it "
    "averaged with nobody, x0.9 otherwise, down to 0.01 ms)",
)
WAIT_MAX_MS = field(
    "float",
    10.0,
    at_least(WAIT_FLOOR_MS, most=60_000.0),
    "the cap of a replica's adaptive wait time (ms; at least the floor, 0.01 ms)",
)
SSP_BOUND = field(
    "int",
    10,
    at_least(1, most=10**6),
    "batches between bound rounds: the update of every ssp_bound-th batch waits, without deadline, until the "
    "groups since the last round connect all replicas",
)
SYNC_EVERY = field(
    "int",
    -1,
    at_least(1, most=10**9),
    "batches between sync rounds (all P replicas average, the pipelines drain; omitted, shown as -1: the "
    "batches of one epoch of a shard)",
    unset=True,
)


def sync_period(cfg: Config, P: int) -> int:
    """``algorithm.sync_every``, or, omitted, the batches of one epoch of a pipeline's data
    shard: (training rows / P) // data.batch_size, at least 1."""
    s = int(cfg.algorithm.sync_every)
    if s > 0:
        return s
    n = data_shape(cfg).rows
    train = n - max(P, round(float(cfg.data.test_fraction) * n))
    return max(1, (train // max(P, 1)) // int(cfg.data.batch_size))


def updates_through(p: list[int], m: list[int], period: int, steps: int, k: int, step: int) -> int:
    """How many updates stage k of every pipeline has made by the end of loop step ``step``
    (-1: none) in a run of ``steps`` batches whose DSP(p; m) timetable restarts every
    ``period`` batches (each segment drains at its last step)."""
    if step < 0:
        return 0
    j = step // period
    start = j * period
    length = min(period, steps - start)
    i = step - start
    if i >= length - 1:
        return start + length
    return start + _timetable(tuple(p), tuple(m), length).counts(k, i)[1]


@functools.lru_cache(maxsize=8)
def _timetable(p: tuple[int, ...], m: tuple[int, ...], length: int) -> Timetable:
    """A segment's timetable, built once (the scheduler asks on every pass of its loop;
    a run has at most two segment lengths)."""
    return Timetable(p, m, length)


def drain_gap(p: list[int], m: list[int]) -> int:
    """The most loop steps a stage runs without an update: d_k + m_k at the start of a
    segment (its forwards before its first backward)."""
    d = [sum(p[:k]) for k in range(len(p))]
    return max(dk + mk for dk, mk in zip(d, m, strict=True))


@register
class SDPipe(PipelineAlgorithm):
    """SDPIPE: DSP pipelines whose stage replicas average in scheduler-chosen groups."""

    name = "sdpipe"
    schedule = "dsp"
    keys = {
        **PipelineAlgorithm.keys,
        "dsp_p": DSP_P,
        "dsp_m": DSP_M,
        "wait_ms": WAIT_MS,
        "wait_max_ms": WAIT_MAX_MS,
        "ssp_bound": SSP_BOUND,
        "sync_every": SYNC_EVERY,
    }

    @classmethod
    def check(cls, cfg: Config) -> None:
        DSP.check(cfg)  # the stages, the model, DSP(p; m)
        w, wmax = float(cfg.algorithm.wait_ms), float(cfg.algorithm.wait_max_ms)
        if w > wmax:
            raise ConfigError(
                f"algorithm.wait_ms = {w} is more than algorithm.wait_max_ms = {wmax}: the initial wait "
                "must not exceed its cap"
            )

    @classmethod
    def layout(cls, cfg: Config, world_size: int) -> Layout:
        K, P = int(cfg.algorithm.stages), int(cfg.algorithm.pipelines)
        body = world_size - 1
        if body < K or body % K or (P > 0 and P * K != body):
            want = f"P * K + 1 = {P} * {K} + 1 = {P * K + 1}" if P > 0 else f"P * {K} + 1 for some P >= 1"
            raise ConfigError(
                f"algorithm.name = 'sdpipe' runs P pipelines of algorithm.stages = {K} ranks and one scheduler "
                f"rank: launch {want} ranks (got {world_size})"
            )
        return pipelines(world_size, stages=K, scheduler=True)

    @classmethod
    def program_for(cls, role: Role) -> type[Program]:
        if role.kind == "stage":
            from .sdpipe_stage import SDPipeStage

            return SDPipeStage
        if role.kind == "scheduler":
            from .sdpipe_scheduler import SchedulerProgram

            return SchedulerProgram
        raise ConfigError(f"algorithm.name = 'sdpipe' has no program for a {role.kind} rank")
