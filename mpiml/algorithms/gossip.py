"""``dpsgd`` and ``gossip``: decentralized SGD, models averaged with neighbours only.

Each rank takes a local step y_i = x_i - eta g_i(x_i) (any optimizer); then, every
``algorithm.period`` steps, one synchronous gossip round over ``algorithm.topology``
mixes the models: x_i = sum_j W_ij y_j (Quantized-PR-SGD (Wu et al., arXiv:2004.09125) §5 and its
Algorithm 2 without quantization; MixML §6: "SyncDR" is this on a ring with period 1,
a local-step protocol with period m). ``dpsgd`` is D-PSGD, a round every step
(period 1, in the adapt-then-combine order: local step, then gossip); ``gossip``
takes ``algorithm.period`` local steps between rounds. ``algorithm.gamma`` < 1 is
MixML's slack-matrix variant x_i + gamma sum_j W_ij (y_j - y_i).

Round r (the r-th gossip, from 0) uses ``schedule.at(r)``, so a time-varying
topology (one-peer exponential) cycles through its matrices in the same order on
every rank; r is (t + 1) / period at step t and needs no checkpointing of its own.
Optimizer position state moves with the parameters (``Replica.replace_params``).

With a ``compression.codec`` the round is Algorithm 2's (D-Quantized-PR-SGD, the
DCD-PSGD form, :class:`mpiml.protocols.CompressedGossip`): neighbours exchange
Q(x~^(m) - x_half) and keep public copies of each other's models. ``dqpr_sgd`` is
exactly that algorithm: K = ``algorithm.tau`` local steps per round (4, §6.1),
``algorithm.topology`` (ring by default, §6.1), the qsgd codec by default; ``dpsgd``
with a codec is DCD-PSGD (K = 1), ``gossip`` with a codec takes ``algorithm.period``
local steps. The public copies are checkpointed (``dcd/own``, ``dcd/copies``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..config import Config
from ..errors import ConfigError
from ..layout import Layout
from ..protocols import CompressedGossip, Gossip
from ..protocols.async_gossip import AsyncGossip
from ..topology import Schedule, TopologyError, build_schedule
from .base import Algorithm, Context, register
from .compression import codec_of
from .keys import GAMMA, GOSSIP_METHOD, PERIOD, TAU, TOPOLOGY
from .replica import Replica

__all__ = ["AsyncGossipSGD", "DPSGD", "DQuantizedPRSGD", "PeriodicGossip", "schedule_of"]


@lru_cache(maxsize=8)
def _schedule(topology: str, n: int) -> Schedule:
    return build_schedule(topology, n)


def schedule_of(cfg: Config, replicas: int) -> Schedule:
    """The job's gossip schedule over ``replicas`` ranks (pure; built once per
    (topology, n) and shared by the check and the program). ConfigError if W is not
    a valid mixing matrix for that many ranks."""
    try:
        return _schedule(cfg.algorithm.topology, replicas)
    except TopologyError as exc:
        raise ConfigError(f"algorithm.topology = {cfg.algorithm.topology!r}: {exc}") from None


class _Decentralized(Algorithm):
    """Rules every gossip algorithm shares: its topology must fit the replicas."""

    keys = {"topology": TOPOLOGY}

    @classmethod
    def check_layout(cls, cfg: Config, layout: Layout) -> None:
        schedule = schedule_of(cfg, len(layout.ranks("replica")))  # checks W before any collective
        if codec_of(cfg) != "none" and not schedule.static:
            raise ConfigError(
                f"algorithm.topology = {cfg.algorithm.topology!r} changes every round; compressed "
                "gossip (Algorithm 2, DCD) keeps copies of its neighbours' models and needs a static one"
            )


class _GossipBase(_Decentralized, Replica):
    keys = {"topology": TOPOLOGY, "period": PERIOD, "gamma": GAMMA, "gossip_method": GOSSIP_METHOD}
    compressible = True

    @classmethod
    def check(cls, cfg: Config) -> None:
        if codec_of(cfg) != "none" and cfg.algorithm.gossip_method != "p2p":
            raise ConfigError(
                "algorithm.gossip_method must be 'p2p' for compressed gossip (payloads differ in length "
                f"per rank; got {cfg.algorithm.gossip_method!r})"
            )

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        a = ctx.options
        self.period: int = self._period(a)
        self.schedule = schedule_of(ctx.cfg, self.replicas)
        self.gossip: Gossip | CompressedGossip
        if self.compression is not None:
            self.gossip = CompressedGossip(
                self.comm,
                self.x,
                self.schedule,
                self.compression.codec,
                ctx.xp,
                gamma=a.gamma,
                trace=ctx.trace,
                stream=self.compression.stream,
            )
            return
        self.gossip = Gossip(
            self.comm,
            self.x.size,
            self.x.dtype,
            self.schedule,
            ctx.xp,
            method=a.gossip_method,
            gamma=a.gamma,
            trace=ctx.trace,
            cuda_aware=ctx.cuda_aware,
        )

    def _period(self, a: Any) -> int:
        return int(a.period)

    def step(self, t: int) -> float:
        loss = self.local_gradient(t)
        self.apply(t, self.grad)
        if (t + 1) % self.period == 0:
            self.replace_params(lambda: self._mix(t))
        return loss

    def _mix(self, t: int) -> None:
        r = (t + 1) // self.period - 1
        self.gossip.start(self.x, t, round=r)
        self.x[...] = self.gossip.finish()

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        if isinstance(self.gossip, CompressedGossip):
            out.update({f"dcd/{k}": v for k, v in self.gossip.state_arrays().items()})
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        if isinstance(self.gossip, CompressedGossip):
            self.gossip.load_state({k: arrays[f"dcd/{k}"] for k in ("own", "copies")})


@register
class DPSGD(_GossipBase):
    name = "dpsgd"
    keys = {"topology": TOPOLOGY, "gamma": GAMMA, "gossip_method": GOSSIP_METHOD}

    def _period(self, a: Any) -> int:
        return 1


@register
class PeriodicGossip(_GossipBase):
    name = "gossip"


@register
class DQuantizedPRSGD(_GossipBase):
    """Algorithm 2 of Quantized-PR-SGD (Wu et al., arXiv:2004.09125): K = tau local steps, then a
    compressed (DCD) gossip round."""

    name = "dqpr_sgd"
    keys = {"tau": TAU, "topology": TOPOLOGY, "gamma": GAMMA, "gossip_method": GOSSIP_METHOD}
    codec = "qsgd"
    plain = "dpsgd or gossip"

    def _period(self, a: Any) -> int:
        return int(a.tau)


@register
class AsyncGossipSGD(_Decentralized, Replica):
    """``async_gossip``: local steps; every ``algorithm.period`` steps one push-sum
    exchange with a random out-neighbour (MixML §6 AsyncDR; AD-PSGD / SGP style), no
    global barrier (:class:`mpiml.protocols.AsyncGossip`). ``self.x`` is the
    de-biased model z = s / w that gradients are taken at. Not repeatable bit for
    bit: who has pushed what by the time a rank drains depends on timing. A checkpoint
    quiesces (barrier, last drain), so it holds all the mass: (z, w) per rank."""

    name = "async_gossip"
    keys = {"topology": TOPOLOGY, "period": PERIOD}
    synchronous = False  # evaluated split-phase: an evaluation never waits for a slow rank

    @classmethod
    def check(cls, cfg: Config) -> None:
        if cfg.backend.device != "cpu":
            raise ConfigError(
                "backend.device must be 'cpu' for algorithm.name = 'async_gossip' (its RMA windows are host memory)"
            )

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        a = ctx.options
        self.period = int(a.period)
        self.schedule = schedule_of(ctx.cfg, self.replicas)
        self.gossip = AsyncGossip(
            self.comm,
            self.x.size,
            self.x.dtype,
            self.schedule,
            ctx.xp,
            seed=ctx.cfg.run.seed,
            trace=ctx.trace,
        )
        self._t = 0

    def step(self, t: int) -> float:
        loss = self.local_gradient(t)
        self.apply(t, self.grad)
        self._t = t
        if (t + 1) % self.period == 0:
            self.replace_params(lambda: self.gossip.drain(self.x, t))
            self.gossip.push(self.x, t)
        return loss

    def quiesce(self) -> None:
        """Collective over the replicas: every push lands and is drained (a checkpoint
        then holds all the mass)."""
        self.comm.Barrier()
        self.replace_params(lambda: self.gossip.drain(self.x, self._t))
        self.comm.Barrier()

    def close(self) -> None:
        self.gossip.close(self.x, self._t)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        out["async_gossip/w"] = np.array([self.gossip.w])
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        self.gossip.w = float(arrays["async_gossip/w"][0])
