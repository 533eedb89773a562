"""``async_ps``: an asynchronous parameter server with sharded servers and an SSP bound.

MixML (Lu, Nash & De Sa, arXiv:2005.06706) §6 and Fig. 3, "AsyncPS": "workers query
the model from a centralized server without global synchronization". The job's last
``algorithm.servers`` = S ranks are servers, the other W ranks workers
(:func:`mpiml.layout.parameter_server`); the flat parameters are cut into S contiguous
shards balanced by size (:func:`mpiml.protocols.ps_wire.shard_ranges`), and server s
holds shard s, with its own optimizer state and version counter.

A worker i, at its own pace (no barrier, no other worker's step):

- ``algorithm.push = "gradient"`` (default; ps-lite, MXNet ``dist_async``): computes
  g_i = grad f_i(x) / (B W) at the model x it last pulled (batch B, W workers, so that
  W pushes add up to one step of the mean gradient), pushes each shard's slice to its
  server and pulls the model back (one message each way per shard, the pull answered
  after its own push is applied). The server applies x_s <- opt(x_s, g_i) at once, with
  the job's optimizer (per-shard state: momentum, Adam, ... live on the server).
- ``algorithm.push = "delta"`` (BytePS asynchronous mode): takes ``algorithm.tau``
  local optimizer steps from the model it pulled, x_0 -> x_tau, then pushes the
  delta Delta_i = x_tau - x_0 and pulls; the server adds it, x_s <- x_s + Delta_i (the
  optimizer and its state are the worker's).

``algorithm.staleness`` s bounds how far apart workers run (Stale Synchronous
Parallel, Petuum Bösen): a pull at clock c (pushes made) is answered only once every
worker's clock is >= c - s, enforced by the servers per pull, never by a barrier.
Omitted (the default, shown as -1): fully asynchronous. s = 0 is BSP: the server sums
each clock's W pushes in worker order and applies the sum as one update, which is
synchronous minibatch SGD bit for bit (a float64 reference with the same data order
adds the same numbers in the same order).

Measured on every run: per applied update the version it was computed from and the
version it was applied to (staleness; tables ``ps_apply`` and ``ps_pull`` of each
server's rank file, :mod:`mpiml.protocols.ps_server`), pushes and applied updates per
worker and shard (``ps_counts``; the run fails unless equal), and the staleness
distribution, printed at the end.

Evaluation never stops a worker: each worker evaluates the model it pulled on its
slice of the test set when it completes a multiple of ``run.eval_every`` steps and
sends the sums with its next request; the server of shard 0 adds up the W of them and
sends them to the first worker (rank 0), which records the step's metrics. With s = 0
the W evaluated models are the same one; otherwise each is the servers' model as that
worker saw it at that step. ``loss`` is the workers' minibatch loss since the previous
evaluation. The last evaluation is of the servers' final model (a collective over the
workers, after every update is applied).

Checkpoints are where every worker has completed the same step c: a worker that gets
there sends QUIESCE and waits; once all have, nothing is in flight (every push applied,
every pull answered) and every rank writes its state (servers: shard, optimizer state,
version, clocks; workers: sampler, and with "delta" their local model and optimizer
state). A stop request (signal, stop file) on any rank reaches the server of shard 0
with the next request; it fixes a stop step a little past the furthest worker and
sends it with every reply; every worker stops there, at the same step, with a
checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from ..backend import to_host
from ..config import Config, at_least, choice, field
from ..errors import ConfigError, DivergenceError
from ..layout import Layout, Role, parameter_server
from ..optim import POSITION_STATE
from ..protocols.ps import ShardClient
from ..protocols.ps_server import ShardServer
from ..protocols.ps_wire import DONE, PULL, PUSH, QUIESCE, STOP, shard_ranges
from ..straggler import Straggler
from .base import Algorithm, Context, EvalSums, Program, register
from .keys import TAU
from .replica import COMPUTE, UPDATE

if TYPE_CHECKING:
    from ..run.loop import Loop

__all__ = ["AsyncPS", "PSServer", "PSWorker"]

_INIT = 30  # tag of the initial shards, first worker -> servers (once, at construction)
MAX_SERVERS = 4096

SERVERS = field(
    "int", 1, at_least(1, most=MAX_SERVERS), "S: the last S ranks are parameter servers, one shard each"
)
STALENESS = field(
    "int",
    -1,
    (lambda v: 0 <= v <= 10**9, "an integer in [0, 1_000_000_000] (omit it for no bound)"),
    "SSP bound s: a pull at clock c waits until every worker's clock >= c - s "
    "(0: BSP; omitted, shown as -1: fully asynchronous)",
    unset=True,
)
PUSH_MODE = field(
    "str",
    "gradient",
    choice("gradient", "delta"),
    "what a worker pushes: its gradient every step (the server's optimizer applies it) or "
    "its weight delta after algorithm.tau local steps (BytePS async; the server adds it)",
)


def _staleness(cfg: Config) -> int | None:
    s = int(cfg.algorithm.staleness)
    return None if s < 0 else s


@register
class AsyncPS(Algorithm):
    """The parameter server's job keys, rules, layout and programs."""

    name = "async_ps"
    keys = {"servers": SERVERS, "staleness": STALENESS, "push": PUSH_MODE, "tau": TAU}

    @classmethod
    def layout(cls, cfg: Config, world_size: int) -> Layout:
        servers = int(cfg.algorithm.servers)
        if servers >= world_size:
            raise ConfigError(
                f"algorithm.servers = {servers} leaves no worker: it must be at most {world_size - 1} "
                f"(world size - 1), or launch at least {servers + 1} ranks"
            )
        return parameter_server(world_size, servers=servers)

    @classmethod
    def check_layout(cls, cfg: Config, layout: Layout) -> None:
        from ..budget import data_shape, model_params

        servers, d = int(cfg.algorithm.servers), model_params(cfg, data_shape(cfg))
        if servers > d:
            raise ConfigError(
                f"algorithm.servers = {servers} is more than the model's {d} parameters (a shard holds at least one)"
            )

    @classmethod
    def program_for(cls, role: Role) -> type[Program]:
        if role.kind == "worker":
            return PSWorker
        if role.kind == "server":
            return PSServer
        raise ConfigError(f"algorithm.name = 'async_ps' has no program for a {role.kind} rank")


class _PSProgram(Program):
    """What workers and servers share: the communicator (a Dup of world, made by every
    rank of the job in its program's constructor) and the shard map."""

    synchronous = False

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.comm = ctx.comms.world.Dup()  # collective over world: every rank builds its program
        lay = ctx.layout
        self.workers = lay.ranks("worker")
        self.servers = lay.ranks("server")
        self.staleness = _staleness(ctx.cfg)
        self.mode = str(ctx.cfg.algorithm.push)
        self.tau = int(ctx.cfg.algorithm.tau) if self.mode == "delta" else 1

    def close(self) -> None:
        self.comm.Free()


class PSWorker(_PSProgram):
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
                self.comm.Send([np.ascontiguousarray(host[lo:hi]), MPI.BYTE], dest=s, tag=_INIT)
        self.client = ShardClient(
            self.comm, self.servers, self.ranges, self.x.dtype, xp, ctx.trace, first=self.index == 0
        )
        self.grad = xp.empty_like(self.x)
        self.straggler = Straggler.for_rank(ctx.cfg, ctx.rank, ctx.trace)  # [straggler]: slower compute
        self.scale = 1.0 / (self.data.sampler.batch_size * len(self.workers))
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
            self.grad[...] = self.x
            self.grad -= self.base  # Delta_i = x_tau - x_0
            for k in self._position:  # the pull moves x: move SUM's positions with it
                self.opt_state[k] -= self.x
            self._exchange(PUSH | PULL, t + 1, self.grad, loss, flags)
            for k in self._position:
                self.opt_state[k] += self.x
            self.base[...] = self.x
        return loss

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
            stopping = done == agreed_stop and done < stop
            if stopping or (every and done % every == 0 and done < stop):
                op = QUIESCE | (STOP if stopping else 0)
                self._exchange(op, done, None, 0.0, loop.stop_flag(), quiesce=done)
                self._record_evals(loop)
                loop.checkpoint(done)
                if self.client.stopping:
                    loop.stop_by(self.client.seen_flags | loop.stop_flag())
                    loop.stopped(done)
                    return
            elif done % flush_every == 0:
                loop.files.flush()
            if done == loop.fail_at:
                raise RuntimeError(f"MPIML_FAIL_AT: injected failure on rank {loop.rank} at step {done}")
        self._finish(stop, loop)

    def _finish(self, stop: int, loop: Loop) -> None:
        """DONE to every server; the final model back; the last evaluation (collective
        over the workers); the staleness line; the final checkpoint."""
        self._exchange(DONE, stop, None, 0.0, 0)
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
        out = {"ps/pushed": self.client.pushed.copy(), "ps/versions": self.client.versions.copy()}
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
        self._need_pull = True
        if self.mode == "delta":
            self.x[...] = xp.asarray(arrays["params"])
            self.base[...] = xp.asarray(arrays["ps/base"])
            for k in self.opt_state:
                if not k.startswith("_"):
                    self.opt_state[k][...] = xp.asarray(arrays[f"opt/{k}"])
            self._need_pull = False  # mid-period: go on from the local model; the next push pulls


class PSServer(_PSProgram):
    """A server: holds one shard and serves the workers until they are all done."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        shard = ctx.role.group
        status = MPI.Status()
        self.comm.Probe(source=self.workers[0], tag=_INIT, status=status)
        dtype = np.dtype(ctx.cfg.model.dtype)
        x = np.empty(status.Get_count(MPI.BYTE) // dtype.itemsize, dtype=dtype)
        self.comm.Recv([x, MPI.BYTE], source=self.workers[0], tag=_INIT)
        self.x = x
        self.shard = shard
        if self.mode == "gradient":
            opt, self.opt_state = ctx.optimizer, ctx.optimizer.init(x)

            def apply(xs: np.ndarray, g: np.ndarray, worker: int) -> None:
                opt.step(xs, g, self.opt_state)

        else:
            self.opt_state = {}

            def apply(xs: np.ndarray, g: np.ndarray, worker: int) -> None:
                xs += g  # the worker's delta

        self.server = ShardServer(
            self.comm,
            self.workers,
            x,
            apply,
            staleness=self.staleness,
            trace=ctx.trace,
            coordinator=shard == 0,
            stop_margin=2 * self.tau + 1,
        )

    @property
    def params(self) -> np.ndarray:
        return self.x

    def step(self, t: int) -> float | None:  # pragma: no cover - a server serves, it does not step
        raise RuntimeError("a parameter server does not step")

    def run(self, start: int, stop: int, loop: Loop) -> None:
        srv = self.server
        srv.flags_fn = loop.stop_flag

        def on_quiesce(step: int, stopping: bool) -> None:
            loop.checkpoint(step)
            if stopping:
                loop.stop_by(srv.flags_seen | loop.stop_flag())
                loop.stopped(step)

        flush_every = self.ctx.cfg.trace.flush_every * len(self.workers)  # in updates applied
        flushed = [srv.version]

        def tick() -> None:  # the trace to disk every trace.flush_every steps' worth of updates
            if srv.version - flushed[0] >= flush_every:
                loop.files.flush()
                flushed[0] = srv.version

        if srv.serve(on_quiesce, tick) and self.ctx.cfg.checkpoint.every:
            loop.checkpoint(stop)
        loop.last = {"loss": float("nan")}  # a server has no metrics of its own

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"params": self.x.copy(), **self.server.state_arrays()}
        for k, v in self.opt_state.items():
            if not k.startswith("_"):
                out[f"opt/{k}"] = v.copy()
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.x[...] = arrays["params"]
        for k in self.opt_state:
            if not k.startswith("_"):
                self.opt_state[k][...] = arrays[f"opt/{k}"]
        self.server.load_state(arrays)


def staleness_line(per_shard: list[np.ndarray]) -> str:
    """One line: per shard, the number of updates and their staleness (versions):
    mean, median, p95, max."""
    parts = []
    for s, (n, mean, p50, p95, mx) in enumerate(per_shard):
        parts.append(f"shard {s}: {int(n)} updates, mean {mean:.2f}, p50 {p50:g}, p95 {p95:g}, max {mx:g}")
    return "mpiml: staleness (updates applied between read and apply; 0 lost): " + "; ".join(parts)
