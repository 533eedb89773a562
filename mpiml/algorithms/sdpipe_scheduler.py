"""SDPIPE's scheduler rank (:mod:`mpiml.algorithms.sdpipe`): serves the stages' ready
signals (:class:`mpiml.protocols.sdpipe.GroupScheduler`) between the job's checkpoints.

It holds no parameters and reads no data. It knows from the timetable how many updates
each stage makes by every loop step (:func:`mpiml.algorithms.sdpipe.updates_through`), so
it joins a checkpoint (collective over world) once every update before it has been
answered: nothing is waiting then, and its state (each stage's union-find since the last
round, group counters, the wait times last seen) goes into the checkpoint. A stop
request it sees (from a ready signal's bits, or its own signal or stop file) fixes the
stop step: the furthest step reported + the longest run of steps without an update +
2, so every stage hears it with a reply before it gets there.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from ..protocols.sdpipe import GroupScheduler
from .base import Context, Program
from .pipeline import dsp_config
from .sdpipe import drain_gap, sync_period, updates_through

if TYPE_CHECKING:
    from ..run.loop import Loop

__all__ = ["SchedulerProgram"]


class SchedulerProgram(Program):
    """The scheduler. Collective over world in the constructor (the stages' channel Dup,
    and rank 0's broadcast of a measured layer cut)."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg, lay = ctx.cfg, ctx.layout
        world = ctx.comms.world
        if not list(cfg.algorithm.partition) and cfg.algorithm.balance == "cost" and cfg.model.name == "mlp":
            world.bcast(None, root=0)  # the stages' measured_cut
        self.comm = world.Dup()  # collective over world, as every stage's
        K, P = int(cfg.algorithm.stages), lay.n_shards
        p, m = dsp_config(cfg)
        self.steps = int(cfg.run.steps)
        period = sync_period(cfg, P)

        def updates_of(k: int, step: int) -> int:
            return updates_through(p, m, period, self.steps, k, step)

        self.sched = GroupScheduler(
            self.comm,
            [lay.ranks("stage", stage=k) for k in range(K)],
            int(cfg.algorithm.ssp_bound),
            period,
            self.steps,
            ctx.trace,
            updates_of,
            stop_margin=drain_gap(p, m) + 2,
        )

    def step(self, t: int) -> float | None:  # pragma: no cover - a scheduler serves, it does not step
        raise RuntimeError("the SDPIPE scheduler does not step")

    def run(self, start: int, stop: int, loop: Loop) -> None:
        cfg, sched = loop.cfg, self.sched
        sched.flags = loop.stop_flag
        every = int(cfg.checkpoint.every)
        flush = [0]

        def tick() -> None:
            reached = int(sched.last_step.max()) + 1
            if reached - flush[0] >= cfg.trace.flush_every:
                loop.files.flush()
                flush[0] = reached
            if loop.fail_at > 0 and reached >= loop.fail_at:  # MPIML_FAIL_AT=<scheduler rank>:<step>
                raise RuntimeError(
                    f"MPIML_FAIL_AT: injected failure on rank {loop.rank} (the scheduler) once a stage "
                    f"reached step {loop.fail_at}"
                )

        point = (start // every + 1) * every if every else stop
        while True:
            target = min(point, stop)

            def reached(target: int = target) -> bool:
                s = sched.stop_step
                return sched.done_through(target - 1) or (0 <= s < target and s < stop)

            sched.serve(reached, tick)
            s = sched.stop_step
            if 0 <= s < target and s < stop:  # a stop before the next checkpoint
                sched.serve(functools.partial(sched.done_through, s - 1), tick)
                loop.checkpoint(s)
                loop.stop_by(sched.flags_seen)
                loop.stopped(s)
                return
            if target < stop or every:
                loop.checkpoint(target)
                if 0 <= s == target < stop:
                    loop.stop_by(sched.flags_seen)
                    loop.stopped(s)
                    return
            if target >= stop:
                break
            point += every
        print(sched.summary(), file=loop.stream, flush=True)
        loop.last = {"loss": float("nan")}  # a scheduler has no metrics of its own

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.sched.state_arrays()

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.sched.load_state(arrays)

    def close(self) -> None:
        self.sched.close()
        self.comm.Free()
