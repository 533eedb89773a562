"""The parameter server's server program (``async_ps``, :mod:`mpiml.algorithms.ps`):
hold one shard and its optimizer state, serve the workers
(:class:`mpiml.protocols.ps_server.ShardServer`) until they are all done."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI

from ..protocols.ps_server import ShardServer
from .base import Context
from .ps import INIT_TAG, PSProgram

if TYPE_CHECKING:
    from ..run.loop import Loop

__all__ = ["PSServer"]


class PSServer(PSProgram):
    """A server: holds one shard and serves the workers until they are all done."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        shard = ctx.role.group
        status = MPI.Status()
        self.comm.Probe(source=self.workers[0], tag=INIT_TAG, status=status)
        dtype = np.dtype(ctx.cfg.model.dtype)
        x = np.empty(status.Get_count(MPI.BYTE) // dtype.itemsize, dtype=dtype)
        self.comm.Recv([x, MPI.BYTE], source=self.workers[0], tag=INIT_TAG)
        self.x = x
        self.shard = shard
        if self.mode == "gradient":
            opt, self.opt_state = ctx.optimizer, ctx.optimizer.init(x)

            def apply(xs: np.ndarray, g: np.ndarray, worker: int) -> None:
                opt.step(xs, g, self.opt_state)

        else:
            self.opt_state = {}

            inv_w = 1.0 / len(self.workers)

            def apply(xs: np.ndarray, g: np.ndarray, worker: int) -> None:
                np.multiply(g, inv_w, out=g)  # x <- x + Delta / W (a BSP sum: the mean delta)
                xs += g

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
            if loop.fail_at > 0 and srv.max_done >= loop.fail_at:  # MPIML_FAIL_AT=<server rank>:<step>
                raise RuntimeError(
                    f"MPIML_FAIL_AT: injected failure on rank {loop.rank} (a server) once a worker completed "
                    f"step {loop.fail_at}"
                )

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
