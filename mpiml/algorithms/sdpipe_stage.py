"""What one SDPIPE stage runs (:mod:`mpiml.algorithms.sdpipe` has the keys and the paper):
a DSP stage (:class:`mpiml.algorithms.pipeline_stage.StageProgram`) whose update is
SDPIPE's, and whose timetable restarts at every sync round.

Update of batch b (Eq. of the appendix, X_{k+1} = (X_k - eta G_k) W_k, for this stage's
column): the ready signal goes to the scheduler first, the optimizer steps on the
stage's own gradient g (the batch mean, 1/``data.batch_size``) while the scheduler
decides, then the stepped parameters are averaged over the group it sends back
(:class:`mpiml.protocols.sdpipe.GroupAverage`). The optimizer's state (momentum) stays
each replica's own; only parameters are averaged (its position state, SUM's y^s, moves
with them, as :mod:`mpiml.optim` asks, so an average's jump is not read as velocity).

Segments: batches [j S, (j+1) S) (S = ``algorithm.sync_every``) run one DSP timetable of
S batches (:class:`mpiml.pipeline.Timetable`), which drains at its last step: the loop
step of the segment's last batch runs the remaining global steps of the timetable, and
every stage's update of that batch is a sync round (all P replicas). Channel message ids
and stash slots count from the segment's start; the batch ids sent to the scheduler are
global.

Checkpoints: mid-segment as DSP (the messages in flight and the stash are saved; the
segment's start and length with them); at a segment's end nothing is in flight. A
stage's adaptive wait time is saved too.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ..comm import EX_DIVERGED
from ..errors import DivergenceError
from ..optim import POSITION_STATE
from ..pipeline import Timetable
from ..protocols.sdpipe import GroupAverage, GroupClient
from .base import Context
from .pipeline import dsp_config
from .pipeline_eval import busy_line
from .pipeline_stage import STAGE_UPDATE, StageProgram
from .sdpipe import sync_period

__all__ = ["SDPipeStage"]


class SDPipeStage(StageProgram):
    """Stage ``role.stage`` of pipeline ``role.group`` under SDPIPE. Collective over world
    in the constructor (the channels' Dup, as every pipeline stage) and over the stage's
    replicas (``comms.peers``: a Dup for the group averages)."""

    sums_gradients = False  # each replica steps on its own batch's mean; parameters are averaged in groups

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg, lay = ctx.cfg, ctx.layout
        self.dsp_p, self.dsp_m = dsp_config(cfg)
        self.period = sync_period(cfg, self.P)
        self.replica = ctx.role.group
        self.seg_start = 0
        self._segment(0)
        self.client = GroupClient(
            self.comm,
            lay.size - 1,  # the scheduler: the last rank
            self.P,
            self.k,
            self.replica,
            float(cfg.algorithm.wait_ms),
            float(cfg.algorithm.wait_max_ms),
            ctx.trace,
        )
        self.avg_comm = ctx.comms.peers.Dup()  # collective over this stage's replicas
        self.avg = GroupAverage(
            self.avg_comm,
            self.x.size,
            self.dtype,
            ctx.trace,
            world_ranks=ctx.layout.ranks("stage", stage=self.k),
            world_size=lay.size,
        )
        self.flags: Any = lambda: 0
        self.position = POSITION_STATE[type(self.opt)]  # keys looked up per update: buffers swap

    def _segment(self, t: int) -> None:
        """The DSP timetable of the segment holding loop step ``t``."""
        self.seg_start = (t // self.period) * self.period
        self.table = Timetable(self.dsp_p, self.dsp_m, min(self.period, self.steps - self.seg_start))
        self.slot_done = -1

    def _update(self, t: int, batch: int = -1) -> None:
        """Ready -> optimizer step (overlapping the scheduler's answer) -> group -> average."""
        self.client.ready(self.seg_start + batch, t, self.flags())
        t0 = self.trace.now()
        self.opt.step(self.x, self.g, self.opt_state)
        self.trace.record(t, STAGE_UPDATE, t0, self.trace.now())
        reply = self.client.group()
        # the optimizer's position state (SUM's y^s) moves with x, or the average's jump
        # would read as velocity and momentum would amplify it (~1/(1-beta)): momentum
        # stays each replica's own, as with a velocity buffer (mpiml.optim)
        shift = self.position if len(reply.members) > 1 else ()
        for key in shift:
            self.opt_state[key] -= self.x
        self.avg.run(self.x, reply.members, t)
        for key in shift:
            self.opt_state[key] += self.x

    def step(self, t: int) -> float | None:
        self.losses.clear()
        if t >= self.seg_start + self.table.steps:
            self._segment(t)
        i = t - self.seg_start
        last = i == self.table.steps - 1  # the segment's last batch: drain the pipeline
        for s in range(i, self.table.length if last else i + 1):
            self._dsp_slot(t, s, self.table.slot(self.k, s))
        return float(np.mean(self.losses)) if self.losses else None

    def run(self, start: int, stop: int, loop: Any) -> None:
        """Steps start..stop-1 with the loop's hooks, but without its stop agreement (the
        scheduler's replies carry the stop step): evaluations and checkpoints are the only
        points where pipelines meet. Rank 0 prints each stage's busy share at the end
        (collective over the stages, once)."""
        cfg = loop.cfg
        self.flags = loop.stop_flag
        if start < stop and (start == 0 or self.slot_done >= self.table.length - 1):
            self._segment(start)  # a fresh segment (a resumed one keeps its table and slot)
        t0, busy0 = self.trace.now(), self._busy()
        for t in range(start, stop):
            loss = self.step(t)
            if loss is not None:
                loop.loss_sum += loss
                loop.loss_count += 1
            done = t + 1
            if done % cfg.run.eval_every == 0 or done == cfg.run.steps:
                self._evaluate(loop, t)
            every = cfg.checkpoint.every
            ckpt = bool(every) and (done % every == 0 or done == cfg.run.steps)
            if ckpt:
                loop.checkpoint(done)
            elif done % cfg.trace.flush_every == 0:
                loop.files.flush()
            stop_at = self.client.stop_step
            if 0 <= stop_at < done:
                raise RuntimeError(f"SDPIPE: the stop step {stop_at} reached this stage after step {done}")
            if done < cfg.run.steps and done == stop_at:
                if not ckpt:
                    loop.checkpoint(done)
                loop.stop_by(self.client.stop_bits | loop.stop_flag())
                loop.stopped(done)
                return
            if done == loop.fail_at:
                raise RuntimeError(f"MPIML_FAIL_AT: injected failure on rank {loop.rank} at step {done}")
        wall = self.trace.now() - t0
        share = (self._busy() - busy0) / wall if wall > 0 else float("nan")
        shares = self.ctx.comms.role.gather((self.k, share), root=0)  # once per run, not a hot path
        if shares is not None:
            print(busy_line(self.algorithm, self.K, 0, shares), file=loop.stream, flush=True)

    def _evaluate(self, loop: Any, t: int) -> None:
        """The loop's evaluation after step ``t`` (collective over the stages). A
        divergence it finds is agreed over the stages only: the scheduler, which does not
        evaluate, would serve on and the job would hang; so the lowest stage rank prints
        the one line and every stage aborts the job with the divergence status."""
        try:
            loop.evaluate_now(t)
        except DivergenceError as exc:
            if self.ctx.comms.role.Get_rank() == 0:
                print(f"mpiml: error: training diverged: {exc}", file=sys.stderr, flush=True)
            time.sleep(0.5)  # let mpiexec forward the line before MPI_Abort (as the abort hook does)
            self.ctx.comms.world.Abort(EX_DIVERGED)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        out["sdpipe/segment"] = np.array([self.seg_start, self.table.steps], dtype=np.int64)
        out["sdpipe/wait_ms"] = np.array([self.client.wait_ms], dtype=np.float64)
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        start, length = (int(v) for v in arrays["sdpipe/segment"])
        done = int(arrays["dsp/slot_done"][0])
        saved = Timetable(self.dsp_p, self.dsp_m, length)
        self._segment(start)
        if self.seg_start != start or (self.table.steps != length and done < saved.length - 1):
            raise ValueError(
                f"this SDPIPE checkpoint is inside a segment of {length} batches from batch {start}; this job's "
                f"segment there has {self.table.steps} (algorithm.sync_every = {self.period}, run.steps = "
                f"{self.steps}): resume with the same sync_every, or run.steps"
            )
        self.table = saved  # a finished segment keeps its shape until run() moves on
        super().load_state(arrays)
        self.client.wait_ms = float(arrays["sdpipe/wait_ms"][0])

    def close(self) -> None:
        super().close()
        self.avg_comm.Free()
