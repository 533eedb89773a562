"""The parameter server's worker program (``async_ps``, :mod:`mpiml.algorithms.ps`):
compute at the model last pulled, push, pull; evaluations sent with the requests;
checkpoints where every worker has completed the same step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from ..backend import to_host
from ..errors import DivergenceError
from ..optim import POSITION_STATE
from ..protocols.ps import ShardClient
from ..protocols.ps_wire import DONE, PULL, PUSH, QUIESCE, STOP, STOP_NOW, shard_ranges
from ..straggler import Straggler
from .base import Context, EvalSums
from .ps import INIT_TAG, PSProgram
from .replica import COMPUTE, UPDATE

if TYPE_CHECKING:
    from ..run.loop import Loop

__all__ = ["PSWorker", "staleness_line"]


class PSWorker(PSProgram):
    """A worker: computes on its data shard at its own pace, pushes and pulls."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if ctx.params is None or ctx.model is None or ctx.data is None:
            raise ValueError("PSWorker: a worker needs a model, parameters and data")
        self.model, self.data, self.x = ctx.model, ctx.data, ctx.params
        xp, d = ctx.xp, ctx.params.size
        self.index = self.workers.index(ctx.rank)
        self.ranges = shard_ranges(d, len(self.servers))
        if self.index == 0:  # the initial model x_0, shard by shard (every worker holds the same x_0)
            host = to_host(self.x)
            for s, (lo, hi) in zip(self.servers, self.ranges, strict=True):
                self.comm.Send([np.ascontiguousarray(host[lo:hi]), MPI.BYTE], dest=s, tag=INIT_TAG)
        self.client = ShardClient(
            self.comm, self.servers, self.ranges, self.x.dtype, xp, ctx.trace, first=self.index == 0
        )
        self.grad = xp.empty_like(self.x)
        self.straggler = Straggler.for_rank(ctx.cfg, ctx.rank, ctx.trace)  # [straggler]: slower compute
        # gradient: W pushes make one step of the mean gradient; delta: the worker's local
        # steps are plain minibatch steps, and the server adds Delta / W
        w = len(self.workers) if self.mode == "gradient" else 1
        self.scale = 1.0 / (self.data.sampler.batch_size * w)
        self._own_done = 0  # steps this worker had completed at its last checkpoint
        self._resume_at: int | None = None  # from a checkpoint: this worker's own step
        self._need_pull = False  # x is the servers' x_0 until a resume says otherwise
        self._pending_eval: tuple[int, np.ndarray] | None = None  # sums to send with the next request
        if self.mode == "delta":
            self.opt_state = ctx.optimizer.init(self.x)
            self.base = self.x.copy()  # the model last pulled
            self._position = POSITION_STATE[type(ctx.optimizer)]

    @property
    def params(self) -> Any:
        return self.x

    @property
    def evaluated(self) -> Any:
        """The servers' model as this worker last pulled it."""
        return self.base if self.mode == "delta" else self.x

    # ---- one step -------------------------------------------------------------

    def step(self, t: int, flags: int = 0) -> float:
        """Step ``t``: the gradient at the pulled model; "gradient": push it and pull;
        "delta": a local step, and every tau steps push the delta and pull."""
        tr = self.trace
        if self._need_pull:  # after a resume: the servers' model, then go on
            self.client.request(PULL, t)
            self.client.wait(self.x)
            if self.mode == "delta":
                self.base[...] = self.x
            self._need_pull = False
        t0 = tr.now()
        xb, yb = self.data.sampler.next()
        loss = self.model.loss_and_grad(self.x, xb, yb, self.grad, self.scale)
        t1 = tr.now()
        tr.record(t, COMPUTE, t0, t1)
        if self.straggler is not None:
            self.straggler.delay(t, t1 - t0)
        if self.mode == "gradient":
            self._exchange(PUSH | PULL, t + 1, self.grad, loss, flags)
            return loss
        t0 = tr.now()
        self.ctx.optimizer.step(self.x, self.grad, self.opt_state)
        tr.record(t, UPDATE, t0, tr.now())
        if (t + 1) % self.tau == 0:
            self._delta()
            for k in self._position:  # the pull moves x: move SUM's positions with it
                self.opt_state[k] -= self.x
            self._exchange(PUSH | PULL, t + 1, self.grad, loss, flags)
            for k in self._position:
                self.opt_state[k] += self.x
            self.base[...] = self.x
        return loss

    def _delta(self) -> None:
        """``grad`` <- Delta_i = x_tau - x_0, the local steps since the last pull."""
        self.grad[...] = self.x
        self.grad -= self.base

    def _exchange(self, op: int, done: int, update: Any, loss: float, flags: int, quiesce: int = 0) -> None:
        ev_step, ev_sums = self._pending_eval if self._pending_eval is not None else (0, None)
        self._pending_eval = None
        self.client.request(
            op,
            done,
            update,
            loss=loss,
            flags=flags,
            eval_step=ev_step,
            eval_sums=ev_sums,
            quiesce_step=quiesce,
        )
        self.client.wait(self.x if op & PULL or op & DONE else None)

    # ---- the run: steps, evaluations, checkpoints, the end ---------------------

    def run(self, start: int, stop: int, loop: Loop) -> None:
        cfg = self.ctx.cfg
        every, eval_every, flush_every = cfg.checkpoint.every, cfg.run.eval_every, cfg.trace.flush_every
        if self._resume_at is not None:  # this worker's own step (a stop with no bound: not start)
            start, self._resume_at = self._resume_at, None
        for t in range(start, stop):
            loss = self.step(t, loop.stop_flag())
            loop.loss_sum += loss
            loop.loss_count += 1
            done = t + 1
            self._record_evals(loop)
            if done < stop and done % eval_every == 0:
                self._pending_eval = (done, self._eval_sums(loop))
            agreed_stop = self.client.stop_step
            if 0 <= agreed_stop < done:
                raise RuntimeError(
                    f"parameter server: the stop step {agreed_stop} reached worker {self.index} after step {done}"
                )
            stopping = done < stop and (done == agreed_stop or agreed_stop == STOP_NOW)
            if stopping or (every and done % every == 0 and done < stop):
                op = QUIESCE | (STOP if stopping else 0)
                self._exchange(op, done, None, 0.0, loop.stop_flag(), quiesce=done)
                if self._checkpointed(loop, done):
                    return
            elif done % flush_every == 0:
                loop.files.flush()
            if done == loop.fail_at:
                raise RuntimeError(f"MPIML_FAIL_AT: injected failure on rank {loop.rank} at step {done}")
        self._finish(stop, loop)

    def _checkpointed(self, loop: Loop, done: int) -> bool:
        """After the ACK of a QUIESCE (or of a stop that came while this worker was
        done): the checkpoint (collective over world), at the step the servers agreed
        on (every worker's, or with no bound the furthest worker's: this one's own
        step is in its state). True when it was a stop."""
        self._record_evals(loop)
        self._own_done = done
        loop.checkpoint(self.client.ack_step)
        if not self.client.stopping:
            return False
        loop.stop_by(self.client.seen_flags | loop.stop_flag())
        loop.stopped(self.client.ack_step)
        return True

    def _finish(self, stop: int, loop: Loop) -> None:
        """DONE to every server; the final model back; the last evaluation (collective
        over the workers); the staleness line; the final checkpoint."""
        pushes = -(-stop // self.tau)  # a delta mode worker's pushes in the run: the last period's too
        if self.mode == "delta" and stop % self.tau and self.client.clock < pushes:  # pushed with DONE
            self._delta()
            self._exchange(DONE | PUSH, stop, self.grad, 0.0, 0)
        else:
            self._exchange(DONE, stop, None, 0.0, 0)
        if self.client.stopping:  # a stop (no bound) reached the servers while this worker was done
            self._checkpointed(loop, stop)
            return
        self._need_pull = False
        self._record_evals(loop)
        if self.mode == "delta":
            self.base[...] = self.x
        metrics = loop.evaluate(stop - 1, loop.loss_sum, loop.loss_count)  # collective over the workers
        loop.loss_sum, loop.loss_count = 0.0, 0
        loop.record(stop - 1, self.trace.now(), metrics)
        from ..run.divergence import params_finite, raise_diverged

        if loop.evaluate.diverged:  # the same verdict on every worker: agree on the lowest rank, raise
            bad = not np.isfinite(loop.loss_sum) or not params_finite(self.x)
            raise_diverged(
                stop, self.ctx.rank, bad, self.ctx.comms.role, self.ctx.comms.world.Get_size(), "loss"
            )
        if self.index == 0 and self.client.staleness:
            print(staleness_line(self.client.staleness), file=loop.stream, flush=True)
        if self.ctx.cfg.checkpoint.every:
            self._own_done = stop
            loop.checkpoint(stop)

    def _eval_sums(self, loop: Loop) -> np.ndarray:
        data = self.data
        tl, correct = self.model.eval_sums(self.evaluated, data.x_test, data.y_test)
        out = np.array(
            [
                loop.loss_sum,
                loop.loss_count,
                tl,
                0.0 if np.isnan(correct) else correct,
                data.n_test_local,
                self.trace.bytes_sent,
            ]
        )
        loop.loss_sum, loop.loss_count = 0.0, 0
        return out

    def _record_evals(self, loop: Loop) -> None:
        from ..run.evaluate import metrics_of

        for step, sums in self.client.drain_evals():
            s8 = np.array([sums[2], sums[3], sums[4], sums[0], sums[1], 0.0, 0.0, sums[5]])
            metrics, diverged = metrics_of(s8, self.model.task == "classification")
            loop.record(step - 1, self.trace.now(), metrics)
            if diverged:
                raise DivergenceError(step, 0, "the workers' loss or the servers' model", what="loss")

    def evaluate(self) -> EvalSums:
        """The servers' final model on this worker's test slice (the driver adds the
        sums over the workers)."""
        data = self.data
        tl, correct = self.model.eval_sums(self.evaluated, data.x_test, data.y_test)
        return EvalSums(tl, 0.0 if np.isnan(correct) else correct, data.n_test_local)

    # ---- checkpoint -------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {
            "ps/pushed": self.client.pushed.copy(),
            "ps/versions": self.client.versions.copy(),
            "ps/done": np.array([self._own_done], dtype=np.int64),
        }
        if self.mode == "delta":
            out["params"] = to_host(self.x).copy()
            out["ps/base"] = to_host(self.base).copy()
            for k, v in self.opt_state.items():
                if not k.startswith("_"):
                    out[f"opt/{k}"] = to_host(v).copy()
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        xp = self.ctx.xp
        self.client.pushed[...] = arrays["ps/pushed"]
        self.client.versions[...] = arrays["ps/versions"]  # what the held model was read at (delta)
        self._resume_at = int(arrays["ps/done"][0])
        self._need_pull = True
        if self.mode == "delta":
            self.x[...] = xp.asarray(arrays["params"])
            self.base[...] = xp.asarray(arrays["ps/base"])
            for k in self.opt_state:
                if not k.startswith("_"):
                    self.opt_state[k][...] = xp.asarray(arrays[f"opt/{k}"])
            self._need_pull = False  # mid-period: go on from the local model; the next push pulls


def staleness_line(per_shard: list[np.ndarray]) -> str:
    """One line: per shard, the pushes applied (and the updates they made, when
    fewer: BSP sums W pushes into one) and their staleness in versions: mean, median,
    p95, max. ``per_shard``: [pushes, mean, p50, p95, max, updates] per shard."""
    parts = []
    for s, (n, mean, p50, p95, mx, updates) in enumerate(per_shard):
        made = f" ({int(updates)} updates)" if int(updates) != int(n) else ""
        parts.append(
            f"shard {s}: {int(n)} pushes{made}, mean {mean:.2f}, p50 {p50:g}, p95 {p95:g}, max {mx:g}"
        )
    return "mpiml: staleness (updates applied between read and apply; 0 lost): " + "; ".join(parts)
