"""The program of data parallelism: every rank a replica of the whole model, reading its
own data shard (:func:`mpiml.layout.data_parallel`).

:class:`Replica` provides what every replica algorithm composes (the local gradient, the
optimizer's update, moving ``x`` by a communication event without disturbing the
optimizer's position state, the job's codec) and the evaluation of the replicas' average
model, blocking or split-phase.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backend import Array, to_host
from ..kinds import register_kind
from ..optim import POSITION_STATE
from ..straggler import Straggler
from .base import Context, EvalSums, Program

if TYPE_CHECKING:
    from ..protocols import AllReduce, CompressedAllReduce
    from .compression import Compression

__all__ = ["COMPUTE", "UPDATE", "Replica"]

COMPUTE = register_kind("compute", "compute", "sampling a minibatch and computing its gradient")
UPDATE = register_kind("update", "compute", "the optimizer's update of the local parameters")


class Replica(Program):
    """Data parallelism: this rank holds the whole model ``x`` and samples its own shard.

    Provides the pieces every replica algorithm composes: the local gradient, the
    optimizer's update, moving ``x`` by a communication event without disturbing the
    optimizer's position state, the job's codec, and the evaluation of the replicas'
    average model.
    """

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        if ctx.params is None or ctx.model is None or ctx.data is None:
            raise ValueError(f"{type(self).__name__}: a replica needs a model, parameters and data")
        from .compression import compression_for

        self.comm = ctx.comms.peers  # the replicas: the algorithm's protocols run here
        self.model = ctx.model
        self.data = ctx.data
        self.x = ctx.params
        self.grad = ctx.xp.empty_like(self.x)
        self.opt_state = ctx.optimizer.init(self.x)
        self._position_keys = POSITION_STATE[type(ctx.optimizer)]  # looked up per call: buffers swap
        # the job's codec ([compression]); None when messages are plain buffers
        self.compression: Compression | None = compression_for(ctx.cfg, ctx.rank)
        self._evaluator: _AverageEvaluator | None = None
        # the job's [straggler] slow-down of this rank's compute; None when never slowed
        self.straggler: Straggler | None = Straggler.for_rank(ctx.cfg, ctx.rank, ctx.trace)

    @property
    def replicas(self) -> int:
        """Number of data-parallel replicas (the ranks averaging with this one)."""
        return int(self.comm.Get_size())

    @property
    def params(self) -> Array:
        return self.x

    def averager(self, op: str, progress: str = "test") -> AllReduce | CompressedAllReduce:
        """An AllReduce over the replicas (``op`` "sum" or "mean") of buffers like
        ``self.x``: compressed with the job's codec when it has one, plain otherwise."""
        from ..protocols import AllReduce, CompressedAllReduce

        ctx = self.ctx
        if self.compression is not None:
            return CompressedAllReduce(
                self.comm,
                self.x.size,
                self.x.dtype,
                self.compression.codec,
                ctx.xp,
                op=op,
                trace=ctx.trace,
                progress=progress,
                stream=self.compression.stream,
            )
        return AllReduce(
            self.comm,
            self.x.size,
            self.x.dtype,
            ctx.xp,
            op=op,
            trace=ctx.trace,
            cuda_aware=ctx.cuda_aware,
            progress=progress,
        )

    def local_gradient(
        self, t: int, scale: float | None = None, poll: Callable[[], Any] | None = None
    ) -> float:
        """Sample a minibatch and write its gradient at ``self.x`` into ``self.grad``
        (times ``scale`` per row; the batch mean's gradient by default). ``poll`` is
        called between layers (progress of communication in flight). On a rank the
        job's ``[straggler]`` slows, the compute is then stretched by sleeping
        (:meth:`mpiml.straggler.Straggler.delay`, ``poll`` still called)."""
        tr = self.trace
        t0 = tr.now()
        xb, yb = self.data.sampler.next()
        loss = self.model.loss_and_grad(self.x, xb, yb, self.grad, scale, poll=poll)
        t1 = tr.now()
        tr.record(t, COMPUTE, t0, t1)
        if self.straggler is not None:
            self.straggler.delay(t, t1 - t0, poll)
        return loss

    def apply(self, t: int, g: Array) -> None:
        """The optimizer's sequential update of ``self.x`` with gradient ``g``."""
        t0 = self.trace.now()
        self.ctx.optimizer.step(self.x, g, self.opt_state)
        self.trace.record(t, UPDATE, t0, self.trace.now())

    def replace_params(self, fn: Callable[[], None]) -> None:
        """Run ``fn``, which moves ``self.x`` in place (an average, a merge), and move
        the optimizer's position state (SUM's y^s) by the same amount, so the move is
        not mistaken for momentum: state <- (state - x_old) + x_new, no scratch."""
        for k in self._position_keys:
            self.opt_state[k] -= self.x
        fn()
        for k in self._position_keys:
            self.opt_state[k] += self.x

    def evaluate(self) -> EvalSums:
        """The replicas' average x_bar (float64, collective over the replicas) evaluated
        on this rank's test slice, and this rank's term ||x_i - x_bar||^2 of the
        consensus distance (MixML §6)."""
        return self._average_evaluator().blocking()

    def start_evaluate(self) -> None:
        """Start averaging a snapshot of x over the replicas (MPI_Iallreduce)."""
        self._average_evaluator().start()

    def evaluate_ready(self, wait: bool = False) -> EvalSums | None:
        ev = self._average_evaluator()
        return ev.finish() if wait or ev.average.test() else None

    def _average_evaluator(self) -> _AverageEvaluator:
        if self._evaluator is None:
            self._evaluator = _AverageEvaluator(self)
        return self._evaluator

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"params": to_host(self.x).copy()}
        for k, v in self.opt_state.items():
            if not k.startswith("_"):
                out[f"opt/{k}"] = to_host(v).copy()
        if self.compression is not None:
            out.update(self.compression.state_arrays())  # the error-feedback residual
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        xp = self.ctx.xp
        self.x[...] = xp.asarray(arrays["params"])
        for k in self.opt_state:
            if not k.startswith("_"):
                self.opt_state[k][...] = xp.asarray(arrays[f"opt/{k}"])
        if self.compression is not None:
            self.compression.load_state(arrays, self.x)


class _AverageEvaluator:
    """x_bar by an untraced float64 AllReduce over the replicas (evaluation is not the
    algorithm's communication), split-phase: ``start`` snapshots x into its own buffer
    and starts the average, ``finish`` completes it and evaluates; buffers allocated once."""

    def __init__(self, rep: Replica) -> None:
        from ..protocols import AllReduce

        xp, x = rep.ctx.xp, rep.x
        self.rep = rep
        self.x64 = xp.empty(x.size, dtype=np.float64)
        self.xbar = xp.empty_like(x)
        self.average = AllReduce(rep.comm, x.size, np.float64, xp, op="mean", cuda_aware=rep.ctx.cuda_aware)

    def blocking(self) -> EvalSums:
        self.x64[...] = self.rep.x
        return self._sums(self.average.run(self.x64))

    def start(self) -> None:
        self.x64[...] = self.rep.x
        self.average.start(self.x64)

    def finish(self) -> EvalSums:
        return self._sums(self.average.finish())

    def _sums(self, avg64: Array) -> EvalSums:
        rep = self.rep
        self.x64 -= avg64
        dist = float(self.x64 @ self.x64)
        self.xbar[...] = avg64
        data = rep.data
        tl, correct = rep.model.eval_sums(self.xbar, data.x_test, data.y_test)
        return EvalSums(tl, 0.0 if np.isnan(correct) else correct, data.n_test_local, dist, 1.0)
