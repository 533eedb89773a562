"""An algorithm is a composition: optimizer (Delta) + protocol (M_t) + schedule.

Subclasses implement ``step``; the trainer owns the loop, evaluation, traces and
checkpoints. Algorithms register under their paper's name in ``REGISTRY``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, to_host
from ..data import RankData
from ..io.trace import Trace
from ..models import Model
from ..optim import POSITION_STATE, Optimizer
from ..protocols import AllReduce, CompressedAllReduce
from .compression import compression_for

__all__ = ["REGISTRY", "Algorithm", "Context", "register"]


@dataclass
class Context:
    """What every algorithm is built from."""

    comm: MPI.Comm
    cfg: Any
    model: Model
    data: RankData
    optimizer: Optimizer
    trace: Trace
    xp: Any
    params: Array  # this rank's flat parameters x_i
    cuda_aware: bool = False


class Algorithm(ABC):
    """One rank's share of a training algorithm."""

    name = "algorithm"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.comm = ctx.comm
        self.model = ctx.model
        self.trace = ctx.trace
        self.x = ctx.params
        self.grad = ctx.xp.empty_like(self.x)
        self.opt_state = ctx.optimizer.init(self.x)
        self._position_keys = POSITION_STATE[type(ctx.optimizer)]  # looked up per call: buffers swap
        # the job's codec ([compression]); None when messages are plain buffers
        self.compression = compression_for(ctx.cfg, ctx.comm.Get_rank())

    def averager(self, op: str, progress: str = "test") -> AllReduce | CompressedAllReduce:
        """An AllReduce (``op`` "sum" or "mean") of buffers like ``self.x``: compressed with
        the job's codec when it has one, plain otherwise."""
        ctx = self.ctx
        if self.compression is not None:
            codec = self.compression.codec
            return CompressedAllReduce(
                ctx.comm, self.x.size, self.x.dtype, codec, ctx.xp, op=op, trace=ctx.trace, progress=progress
            )
        return AllReduce(
            ctx.comm,
            self.x.size,
            self.x.dtype,
            ctx.xp,
            op=op,
            trace=ctx.trace,
            cuda_aware=ctx.cuda_aware,
            progress=progress,
        )

    def seed_message(self, counter: int) -> None:
        """Seed the codec's random stream for the message sent at ``counter`` (a step or
        a round); nothing to do when uncompressed."""
        if self.compression is not None:
            self.compression.reseed(counter)

    @abstractmethod
    def step(self, t: int) -> float:
        """Run training step ``t`` (0-based); return this rank's minibatch loss."""

    def local_gradient(self, t: int, scale: float | None = None) -> float:
        """Sample a minibatch and write its gradient at ``self.x`` into ``self.grad``
        (times ``scale`` per row; the batch mean's gradient by default)."""
        tr = self.trace
        t0 = tr.now()
        xb, yb = self.ctx.data.sampler.next()
        loss = self.model.loss_and_grad(self.x, xb, yb, self.grad, scale)
        tr.record(t, "compute", t0, tr.now())
        return loss

    def apply(self, t: int, g: Array) -> None:
        """The optimizer's sequential update of ``self.x`` with gradient ``g``."""
        t0 = self.trace.now()
        self.ctx.optimizer.step(self.x, g, self.opt_state)
        self.trace.record(t, "update", t0, self.trace.now())

    def replace_params(self, fn: Callable[[], None]) -> None:
        """Run ``fn``, which moves ``self.x`` in place (an average, a merge), and move
        the optimizer's position state (SUM's y^s) by the same amount, so the move is
        not mistaken for momentum: state <- (state - x_old) + x_new, no scratch."""
        for k in self._position_keys:
            self.opt_state[k] -= self.x
        fn()
        for k in self._position_keys:
            self.opt_state[k] += self.x

    def finalize(self) -> None:  # noqa: B027 - a hook: synchronous algorithms have nothing in flight
        """Complete any communication still in flight (end of run, before a checkpoint)."""

    def close(self) -> None:  # noqa: B027 - a hook: most algorithms hold no MPI objects
        """Collective, once at the very end (after ``finalize``): free MPI objects (windows)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything a checkpoint needs to resume bit for bit (host copies)."""
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


REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    REGISTRY[cls.name] = cls
    return cls
