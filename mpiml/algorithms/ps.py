"""``async_ps``: an asynchronous parameter server with sharded servers and an SSP bound.

This module: the job keys, rules and layout (:class:`AsyncPS`) and what both roles
share (:class:`PSProgram`); the programs are :class:`mpiml.algorithms.ps_worker.PSWorker`
and :class:`mpiml.algorithms.ps_server.PSServer`.

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
  local optimizer steps (on its minibatch mean's gradient, 1/B) from the model it
  pulled, x_0 -> x_tau, then pushes the delta Delta_i = x_tau - x_0 and pulls; the
  server adds x_s <- x_s + Delta_i / W (the optimizer and its state are the worker's).
  With s = 0 the server adds the W deltas of a clock, then divides: x + mean_i Delta_i,
  local SGD's model average. BytePS adds Delta_i whole; the 1/W (our choice) keeps
  the step of W workers that of one, as in gradient mode. A run whose steps are not
  a multiple of tau pushes its last, shorter period with its last message.

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
with the next request. With a staleness bound it fixes a stop step a little past the
furthest worker (2 tau + 1 steps; every worker is at most s + that many steps from
it) and sends it with every reply: every worker stops there, at the same step, with a
checkpoint. With no bound a straggler could take minutes to get there, so every
worker stops where it is (STOP_NOW, at its next reply; a worker already done takes
part): the checkpoint holds each worker's own step (``ps/done``) and is named after
the furthest one; ``--resume`` continues each worker from its own step.
"""

from __future__ import annotations

from ..config import Config, at_least, choice, field
from ..errors import ConfigError
from ..layout import Layout, Role, parameter_server
from .base import Algorithm, Context, Program, register
from .keys import TAU

__all__ = ["AsyncPS", "PSProgram"]

INIT_TAG = 30  # the initial shards, first worker -> servers (once, at construction)
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
    def reads(cls, cfg: Config) -> set[str]:
        """``tau`` only with ``push = "delta"`` (a gradient is pushed every step)."""
        return set(cls.keys) - ({"tau"} if cfg.algorithm.push == "gradient" else set())

    @classmethod
    def layout(cls, cfg: Config, world_size: int) -> Layout:
        servers = int(cfg.algorithm.servers)
        if world_size < 2:
            raise ConfigError(
                f"algorithm.name = 'async_ps' needs at least 2 ranks (a server and a worker; got {world_size})"
            )
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
        slowed = [r for r in cfg.straggler.ranks if layout.roles[r].kind == "server"]
        if slowed:
            raise ConfigError(
                f"straggler.ranks lists rank{'s' * (len(slowed) > 1)} {', '.join(map(str, slowed))}, "
                f"a parameter server (it computes nothing to slow down): list worker ranks, 0..{layout.size - servers - 1}"
            )

    @classmethod
    def program_for(cls, role: Role) -> type[Program]:
        if role.kind == "worker":
            from .ps_worker import PSWorker

            return PSWorker
        if role.kind == "server":
            from .ps_server import PSServer

            return PSServer
        raise ConfigError(f"algorithm.name = 'async_ps' has no program for a {role.kind} rank")


class PSProgram(Program):
    """What workers and servers share (collective over world in the constructor): the communicator (a Dup of world, made by every
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
