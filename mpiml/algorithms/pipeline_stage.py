"""What one pipeline stage runs: :class:`StageProgram`, for ``gpipe``, ``1f1b`` and ``dsp``
(:mod:`mpiml.algorithms.pipeline` has the keys, rules and the papers).

Stage k of pipeline p holds ``x_k``, its slice of the whole model's flat vector (the
whole x_0 is drawn from the run seed on every rank and each stage keeps its slice), and
executes its op list of the schedule (:mod:`mpiml.pipeline`) op by op:

=============  ==============================================================================
op             what the stage does
=============  ==============================================================================
recv_act(i)    take micro-batch i's activations h_k from stage k-1's channel
forward(i)     h_{k+1} = f_k(h_k; x_k) (stage 0: h_0 = the rows of micro-batch i of x)
send_act(i)    copy h_{k+1} into the channel to stage k+1 (Isend; returns at once)
recompute(i)   DSP, Eq. (5): f_k again on the stored h_k with the current x_k
recv_grad(i)   take G_{h_{k+1}} from stage k+1's channel
backward(i)    Eq. (2): G_{x_k} (added to the step's gradient) and G_{h_k}; the last stage
               starts from the loss of its y rows (scale 1/(rows of the minibatch * P))
send_grad(i)   copy G_{h_k} into the channel to stage k-1
=============  ==============================================================================

Channels are :mod:`mpiml.protocols.channel` (bounded, preposted receives, split-phase
sends): depth 2 for GPipe and 1F1B (checked deadlock-free for the job's K and m by
:func:`mpiml.pipeline.simulate` at construction), DSP's P_k = 1+p_k (activations) and
Q_k = 1+q_k (gradients) (Appendix A, :func:`mpiml.pipeline.dsp_depths`). DSP's input queue
M_k (1+m_k) is the stage's stash: batch n is kept in slot n mod (1+m_k).

Updates. GPipe / 1F1B: after the minibatch's m micro-batches, the summed gradient is
summed over the P replicas of the stage (AllReduce over ``comms.peers``), then one
optimizer step. DSP: after each backward (and its send), the same for that one batch.

Checkpoints (at a step boundary): GPipe/1F1B have nothing in flight. DSP has: each stage
waits for the messages its neighbours have already sent it (their number follows from
the timetable) and keeps them, with its stash of inputs, in its checkpoint; the resumed
run takes them first, so it continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array, as_xp
from ..kinds import register_kind
from ..models import MLP, TimedModel, balanced_boundaries, split
from ..models.partition import measure_layer_costs
from ..models.timed import TimedStage
from ..pipeline import Slot, Timetable, dsp_depths, gpipe, one_f_one_b, simulate
from ..protocols.allreduce import AllReduce
from ..protocols.base import Messages
from ..protocols.channel import Receiver, Sender
from ..straggler import Straggler
from .base import Context, Program
from .pipeline import dsp_config
from .pipeline_eval import EVAL_ROWS, StageEvaluation, busy_line
from .pipeline_state import StageState

__all__ = ["StageProgram", "measured_cut"]

FORWARD = register_kind("forward", "compute", "a pipeline stage's forward pass of one micro-batch")
BACKWARD = register_kind("backward", "compute", "a pipeline stage's backward pass of one micro-batch")
RECOMPUTE = register_kind("recompute", "compute", "DSP's recomputation (Eq. 5) of one micro-batch's forward")
STAGE_UPDATE = register_kind("stage_update", "compute", "a pipeline stage's optimizer step")

ACT_TAG, GRAD_TAG, EVAL_TAG = 40, 41, 42
EVAL_MSG_BASE = 1 << 40  # message ids of evaluation chunks start here
SYNC_DEPTH = 2  # channel depth of GPipe and 1F1B
STALE = ("dsp", "sdpipe")  # the algorithms whose stages run DSP's timetable


class StageProgram(StageState, StageEvaluation, Program):
    """Stage ``role.stage`` of pipeline ``role.group``. Collective over world in the
    constructor (a Dup for the channels); its channels' receives are posted there."""

    synchronous = True
    # the P replicas of a stage sum their gradients (AllReduce) before every update; a
    # subclass that averages parameters instead (sdpipe) sets False: no AllReduce is built
    # and each replica's gradient is its own batch's mean
    sums_gradients = True

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        cfg, role, lay = ctx.cfg, ctx.role, ctx.layout
        self.algorithm = str(cfg.algorithm.name)
        self.stale = self.algorithm in STALE  # DSP's timetable (dsp, and sdpipe inside each pipeline)
        self.K, self.k, self.P = int(cfg.algorithm.stages), role.stage, lay.n_shards
        self.first, self.last = self.k == 0, self.k == self.K - 1
        self.xp = xp = ctx.xp
        self.B = int(cfg.data.batch_size)
        self.steps = int(cfg.run.steps)
        model = ctx.model
        assert model is not None and ctx.params is not None
        in_features = _in_features(ctx)
        if isinstance(model, TimedModel):
            self.stage: Any = TimedStage(model, self.k, self.K, in_features)
            stages_out = [self.stage.out_features] * self.K
            self.cut: list[int] = []
        else:
            assert isinstance(model, MLP)
            part = list(cfg.algorithm.partition) or None
            if part is None and cfg.algorithm.balance == "cost":
                rows = self.B if self.stale else self.B // int(cfg.algorithm.micro_batches)
                part = measured_cut(ctx.comms.world, model, self.K, rows, xp)
            stages = split(model, self.K, boundaries=part)
            self.cut = [s.layers[0] for s in stages[1:]]
            self.stage = stages[self.k]
            stages_out = [s.out_features for s in stages]
        self.x = xp.array(self.stage.view(ctx.params), copy=True)
        self.g = xp.zeros_like(self.x)
        self.g_mb = xp.zeros_like(self.x)
        self.opt = ctx.optimizer
        self.opt_state = self.opt.init(self.x)
        self.dtype = np.dtype(self.x.dtype)

        if self.stale:
            p, m = dsp_config(cfg)
            self.table = Timetable(p, m, self.steps)  # Figure 2's grid, computed per entry
            depths = dsp_depths(p, m)
            act_depth = depths.get((self.k, self.k + 1, "act"), 1)
            grad_depth = depths.get((self.k, self.k - 1, "grad"), 1)
            in_act_depth = depths.get((self.k - 1, self.k, "act"), 1)
            in_grad_depth = depths.get((self.k + 1, self.k, "grad"), 1)
            self.rows = self.B
            self.stash = 1 + m[self.k]  # M_k: batch n kept in slot n mod (1 + m_k)
        else:
            self.micro = int(cfg.algorithm.micro_batches)
            sched = gpipe if self.algorithm == "gpipe" else one_f_one_b
            lists = sched(self.K, self.micro)
            simulate(lists, depth=SYNC_DEPTH)  # a design check: raises Deadlock if these depths could hang
            self.ops = lists[self.k]
            act_depth = grad_depth = in_act_depth = in_grad_depth = SYNC_DEPTH
            self.rows = self.B // self.micro
        self.scale = 1.0 / (self.B * (self.P if self.sums_gradients else 1))

        self.comm = ctx.comms.world.Dup()  # collective over world: every rank builds its program
        rank, tr = ctx.rank, ctx.trace
        self.messages = Messages(tr, self.comm.Get_size())
        # evaluation chunks travel on their own tag, possibly overtaking DSP's training
        # messages in flight: ids of their own (from 2**40), so that (source, destination,
        # msg) pairs each send with its own receive
        self.eval_messages = Messages(tr, self.comm.Get_size(), first=EVAL_MSG_BASE)
        width_in = stages_out[self.k - 1] if not self.first else in_features
        width_out = stages_out[self.k]
        self.act_in = self.grad_out = self.eval_in = None
        self.act_out = self.grad_in = self.eval_out = None
        if not self.first:
            args = (self.comm, rank - 1)
            self.act_in = Receiver(
                *args, ACT_TAG, in_act_depth, width_in, self.rows, self.dtype, tr, self.messages
            )
            self.grad_out = Sender(
                *args, GRAD_TAG, grad_depth, width_in, self.rows, self.dtype, tr, self.messages
            )
            self.eval_in = Receiver(
                *args, EVAL_TAG, 2, width_in, EVAL_ROWS, self.dtype, tr, self.eval_messages
            )
        if not self.last:
            args = (self.comm, rank + 1)
            self.act_out = Sender(
                *args, ACT_TAG, act_depth, width_out, self.rows, self.dtype, tr, self.messages
            )
            self.grad_in = Receiver(
                *args, GRAD_TAG, in_grad_depth, width_out, self.rows, self.dtype, tr, self.messages
            )
            self.eval_out = Sender(
                *args, EVAL_TAG, 2, width_out, EVAL_ROWS, self.dtype, tr, self.eval_messages
            )
        self.channels = [c for c in (self.act_in, self.grad_out, self.act_out, self.grad_in) if c is not None]
        self.peers = ctx.comms.peers
        self.allreduce = (
            AllReduce(self.peers, self.x.size, self.dtype, xp, op="sum", trace=tr, cuda_aware=ctx.cuda_aware)
            if self.P > 1 and self.sums_gradients
            else None
        )
        self.mean = (  # evaluation's consensus distance among the replicas
            AllReduce(self.peers, self.x.size, self.dtype, xp, op="mean", trace=tr, cuda_aware=ctx.cuda_aware)
            if self.P > 1
            else None
        )
        self.straggler = Straggler.for_rank(cfg, rank, tr)
        self.data = ctx.data
        self.batch_x: Array | None = None
        self.batch_y: Array | None = None
        self.losses: list[float] = []
        self.slot_done = -1  # DSP: the last global step of the timetable this stage ran

    # -- helpers -------------------------------------------------------------------------

    @property
    def params(self) -> Array:
        return self.x

    def poll(self) -> None:
        """Progress the channels' requests (called between layers)."""
        for c in self.channels:
            c.poll()

    def _sample(self) -> None:
        if self.data is not None:
            self.batch_x, self.batch_y = self.data.sampler.next()

    def _rows_of(self, a: Array, i: int) -> Array:
        """Micro-batch i's rows of the step's minibatch (GPipe/1F1B) or the batch (DSP)."""
        if self.stale:
            return a
        return a[i * self.rows : (i + 1) * self.rows]

    def _update(self, t: int, batch: int = -1) -> None:
        """The step's update (``batch``: DSP's batch id in its timetable)."""
        g = self.g
        if self.allreduce is not None:
            g = self.allreduce.run(g, t)
        t0 = self.trace.now()
        self.opt.step(self.x, g, self.opt_state)
        self.trace.record(t, STAGE_UPDATE, t0, self.trace.now())

    # -- the ops ---------------------------------------------------------------------------

    def _forward(self, t: int, i: int, slot: int) -> None:
        t0 = self.trace.now()
        if self.first:
            assert self.batch_x is not None
            a = self._rows_of(self.batch_x, i)
            self.h_out = self.stage.forward(self.x, a, slot=slot, poll=self.poll)
        else:
            assert self.act_in is not None
            _, arr = self.act_in.take(t, expect=i)
            t0 = self.trace.now()
            self.h_out = self.stage.forward(self.x, as_xp(self.xp, arr), slot=slot, poll=self.poll)
            self.act_in.release()
        t1 = self.trace.now()
        self.trace.record(t, FORWARD, t0, t1)
        self._slow(t, t1 - t0)
        if self.act_out is not None:
            self.act_out.send(t, i, self.h_out)

    def _backward(self, t: int, i: int, slot: int, recompute: bool) -> None:
        if recompute:
            t0 = self.trace.now()
            self.stage.recompute(self.x, slot=slot, poll=self.poll)
            t1 = self.trace.now()
            self.trace.record(t, RECOMPUTE, t0, t1)
            self._slow(t, t1 - t0)
        if self.last:
            assert self.batch_y is not None
            t0 = self.trace.now()
            loss, g_h = self.stage.loss_backward(
                self.x, self._rows_of(self.batch_y, i), self.g_mb, self.scale, slot=slot, poll=self.poll
            )
            self.losses.append(loss)
        else:
            assert self.grad_in is not None
            _, arr = self.grad_in.take(t, expect=i)
            t0 = self.trace.now()
            g_h = self.stage.backward(self.x, as_xp(self.xp, arr), self.g_mb, slot=slot, poll=self.poll)
            self.grad_in.release()
        self.g += self.g_mb
        t1 = self.trace.now()
        self.trace.record(t, BACKWARD, t0, t1)
        self._slow(t, t1 - t0)
        if self.grad_out is not None:
            self.grad_out.send(t, i, g_h)

    # -- steps -----------------------------------------------------------------------------

    def run(self, start: int, stop: int, loop: Any) -> None:
        """Steps start..stop-1 (DSP: loop step t runs global step t of the timetable, the
        last one the drain); at the end, rank 0 prints each stage's busy share of the
        loop's wall time (collective over world, once)."""
        if self.algorithm != "dsp" or start == 0:
            self.slot_done = start - 1  # a resumed DSP stage has it from its checkpoint
        t0, busy0 = self.trace.now(), self._busy()
        super().run(start, stop, loop)
        if loop.stopped_at is not None:
            return
        if self.algorithm == "dsp" and start >= stop:  # resumed at the end: drain what is left
            for s in range(self.slot_done + 1, self.table.length):
                self._dsp_slot(stop - 1, s, self.table.slot(self.k, s))
        wall = self.trace.now() - t0
        share = (self._busy() - busy0) / wall if wall > 0 else float("nan")
        shares = self.comm.gather((self.k, share), root=0)  # once per run, not a hot path
        if shares is not None:
            print(
                busy_line(self.algorithm, self.K, self.micro if self.algorithm != "dsp" else 0, shares),
                file=loop.stream,
                flush=True,
            )

    def _busy(self) -> float:
        t = self.trace.totals
        return float(t[FORWARD] + t[BACKWARD] + t[RECOMPUTE] + t[STAGE_UPDATE])

    def _slow(self, t: int, seconds: float) -> None:
        """The job's ``[straggler]`` on this stage: a slowed step's every compute op takes
        its multiplier times as long (the delay is slept right after the op, before its
        send), as on a slower device; waits for neighbours are not stretched."""
        if self.straggler is not None:
            self.straggler.delay(t, seconds, self.poll)

    def step(self, t: int) -> float | None:
        self.losses.clear()
        if self.algorithm == "dsp":
            last = t == self.steps - 1
            for s in range(t, self.table.length if last else t + 1):
                self._dsp_slot(t, s, self.table.slot(self.k, s))
        else:
            self._sync_step(t)
        return float(np.mean(self.losses)) if self.losses else None

    def _sync_step(self, t: int) -> None:
        """One minibatch of GPipe or 1F1B: the op list, then one update."""
        self._sample()
        self.g.fill(0)
        for op in self.ops:
            if op.kind == "forward":
                self._forward(t, op.mb, op.mb)
            elif op.kind == "backward":
                self._backward(t, op.mb, op.mb, recompute=False)
            # recv_*/send_* are done inside forward/backward, in the schedule's order
        self._update(t)

    def _dsp_slot(self, t: int, s: int, slot: Slot) -> None:
        """Global step s of DSP's timetable (Figure 2) on this stage (recorded at loop step t)."""
        if slot.forward is not None:
            self._sample()  # stage 0 takes batch f's x, the last stage its y
            self._forward(t, slot.forward, slot.forward % self.stash)
        if slot.backward is not None:
            self.g.fill(0)
            b = slot.backward
            self._backward(t, b, b % self.stash, recompute=self.stash > 1)
            self._update(t, b)
        self.slot_done = s

    def close(self) -> None:
        for c in (self.act_in, self.grad_in, self.eval_in):
            if c is not None:
                c.cancel()
        self.comm.Free()


def _in_features(ctx: Context) -> int:
    """The data's width (stage 0's input), from the data or the data set's shape."""
    if ctx.data is not None:
        return int(ctx.data.n_features)
    from ..budget import data_shape

    return int(data_shape(ctx.cfg).features)


def measured_cut(world: Any, model: MLP, K: int, rows: int, xp: Any, repeats: int = 5) -> list[int]:
    """The K-1 layer boundaries that balance the stages' measured time: rank 0 times each
    layer (:func:`mpiml.models.partition.measure_layer_costs`), cuts exactly
    (:func:`mpiml.models.balanced_boundaries`) and broadcasts the cut, so every rank of
    ``world`` builds the same stages. Collective over world; prints the cut on rank 0 (a
    resume must cut the same way: pin it with ``algorithm.partition``)."""
    cut = None
    if world.Get_rank() == 0:
        costs = measure_layer_costs(model, rows, xp, repeats)
        cut = balanced_boundaries(costs, K)
        print(
            f"mpiml: algorithm.balance = 'cost': layer times {', '.join(f'{c * 1e6:.0f}' for c in costs)} us "
            f"-> algorithm.partition = {cut}",
            flush=True,
        )
    return list(world.bcast(cut, root=0))
