"""An algorithm is a composition: optimizer (Delta) + protocol (M_t) + schedule, over a layout.

Two levels (DESIGN.md "Roles"):

- :class:`Algorithm`, class-level and pure: the paper's name, its job keys (its
  fragment of the ``[algorithm]`` section), its job rules (:meth:`Algorithm.check`),
  its layout for a world size (:meth:`Algorithm.layout`, with the rules that need it,
  :meth:`Algorithm.check_layout`), and the :class:`Program` each role runs
  (:meth:`Algorithm.program_for`). Registered under the paper's name with
  :func:`register`; the config and the driver name no algorithm.
- :class:`Program`: what one rank runs, built from a :class:`Context`. The driver
  (:mod:`mpiml.run`) calls :meth:`Program.run`, which steps and hands every step to the
  loop's hooks (evaluate, checkpoint, stop at agreed points); a program may run its
  own loop instead (a server's service loop, a stage's schedule).

:class:`mpiml.algorithms.replica.Replica` is the program of data parallelism (every rank
holds the whole model and its own data shard): today's algorithms are replicas, and a
class that is both an :class:`Algorithm` and a ``Replica`` is its own program.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..backend import Array
from ..config import Config, Field, Section, choice, field
from ..errors import ConfigError
from ..layout import Layout, Role, data_parallel
from ..optim import Optimizer

if TYPE_CHECKING:
    from ..comm import Comms
    from ..data import RankData
    from ..models import Model
    from ..run.loop import Loop
    from ..trace import Trace

__all__ = [
    "REGISTRY",
    "Algorithm",
    "Context",
    "EvalSums",
    "Program",
    "algorithm_keys",
    "algorithm_section",
    "check_job",
    "register",
]


@dataclass(frozen=True, kw_only=True)
class Context:
    """What a program is built from (made by the driver for each rank)."""

    cfg: Config  # the whole job
    comms: Comms  # world, peers (same parameters), role (same kind)
    layout: Layout
    role: Role  # this rank's role in the layout
    model: Model | None  # the model (or stage) this rank computes with; None: no compute
    data: RankData | None  # this rank's data shard; None: reads no data
    optimizer: Optimizer
    trace: Trace
    xp: Any  # numpy or cupy
    params: Array | None  # this rank's flat parameters, initialised from the run seed
    cuda_aware: bool = False

    @property
    def options(self) -> Section:
        """This algorithm's own keys of the job's ``[algorithm]`` section (and ``name``)."""
        return Section({k: v for k, v in self.cfg.algorithm.items() if k in algorithm_keys(self.cfg)})

    @property
    def rank(self) -> int:
        """This rank in ``comms.world``."""
        return int(self.comms.world.Get_rank())


@dataclass
class EvalSums:
    """One rank's contribution to an evaluation: sums, added over the ranks of its role.

    test_loss, correct, test_rows: of the evaluated model on this rank's test slice;
    loss, loss_steps: training minibatch losses since the last evaluation; distance:
    sum over the ranks holding the same parameters of ||x_i - x_bar||^2 (each adds its
    own term), holders: how many such ranks (each adds 1).
    """

    test_loss: float = 0.0
    correct: float = 0.0
    test_rows: float = 0.0
    distance: float = 0.0
    holders: float = 0.0


class Program(ABC):
    """What one rank runs. Subclasses implement :meth:`step` (or override :meth:`run`).

    ``synchronous``: the program's ranks step in lock-step anyway, so the driver may
    evaluate with blocking collectives. An asynchronous program (False) is evaluated
    split-phase (:meth:`start_evaluate`, :meth:`evaluate_ready`), so that evaluating
    never makes a fast rank wait for a slow one.
    """

    synchronous: ClassVar[bool] = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.trace = ctx.trace
        self._eval: EvalSums | None = None

    def run(self, start: int, stop: int, loop: Loop) -> None:
        """Steps ``start .. stop - 1``, each followed by the loop's hooks; returns early
        when a hook says stop."""
        for t in range(start, stop):
            if loop.after_step(t, self.step(t)):
                return

    @abstractmethod
    def step(self, t: int) -> float | None:
        """Training step ``t`` (0-based); this rank's minibatch loss (None: no loss here)."""

    def evaluate(self) -> EvalSums:
        """This rank's evaluation sums (collective over the ranks the program evaluates
        with, if any). Default: nothing to contribute."""
        return EvalSums()

    def start_evaluate(self) -> None:
        """Split-phase :meth:`evaluate`: start it (default: evaluate at once)."""
        self._eval = self.evaluate()

    def evaluate_ready(self, wait: bool = False) -> EvalSums | None:
        """The sums of the evaluation started last, or None while it is still under
        way (``wait``: block until it is done). Default: the sums :meth:`start_evaluate` made."""
        out, self._eval = self._eval, None
        return out

    @property
    def params(self) -> Array | None:
        """The parameters this rank holds (None when it holds none)."""
        return None

    def quiesce(self) -> None:  # noqa: B027 - a hook: synchronous programs have nothing in flight
        """Complete everything in flight (before a checkpoint and at the end): nothing
        lost, nothing half-applied. Asynchronous programs may communicate here."""

    def close(self) -> None:  # noqa: B027 - a hook: most programs hold no MPI objects
        """Collective over the program's communicators, once at the very end (after
        :meth:`quiesce`): free MPI objects (windows)."""

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything this rank's checkpoint needs to resume bit for bit (host copies)."""
        return {}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:  # noqa: B027 - nothing to restore
        """Restore what :meth:`state_arrays` saved."""


class Algorithm:
    """The class-level description of an algorithm (never instantiated as such).

    Subclasses set ``name`` (the paper's), ``keys`` (their ``[algorithm]`` keys; a key
    shared by several algorithms is the same :class:`~mpiml.config.Field` object, see
    :mod:`mpiml.algorithms.keys`), and override the pure class methods they need.
    ``codec`` says what ``compression.codec = 'auto'`` means for it; ``compressible``
    whether any codec applies; ``plain`` / ``compressed`` name the algorithm to use
    instead when a job asks the opposite (for the error message).
    """

    name: ClassVar[str] = "algorithm"
    keys: ClassVar[Mapping[str, Field]] = {}
    codec: ClassVar[str] = "none"
    compressible: ClassVar[bool] = False
    plain: ClassVar[str] = ""
    compressed: ClassVar[str] = ""

    @classmethod
    def reads(cls, cfg: Config) -> set[str]:
        """The keys of :attr:`keys` this job reads (default: all; an option may make
        another one moot, and a user who set it is told so)."""
        return set(cls.keys)

    @classmethod
    def check(cls, cfg: Config) -> None:
        """Pure rules on the job alone (no world size); raise ConfigError naming the keys."""

    @classmethod
    def layout(cls, cfg: Config, world_size: int) -> Layout:
        """The rank -> role map for ``world_size`` ranks (pure; ConfigError when it does
        not fit). Default: every rank a replica."""
        return data_parallel(world_size)

    @classmethod
    def check_layout(cls, cfg: Config, layout: Layout) -> None:
        """Pure rules that need the layout (a topology's size, ...). Run on every rank
        under :func:`mpiml.comm.agree`, before any collective."""

    @classmethod
    def program_for(cls, role: Role) -> type[Program]:
        """The program ``role`` runs. Default: the class itself, for replicas."""
        if role.kind == "replica" and issubclass(cls, Program):
            return cls
        raise ConfigError(f"algorithm.name = {cls.name!r} has no program for a {role.kind} rank")


REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Register ``cls`` under ``cls.name`` (a class decorator)."""
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"algorithm {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def algorithm_section() -> dict[str, Field]:
    """The ``[algorithm]`` section: ``name`` (one of the registered algorithms) and every
    algorithm's keys, each documented with the algorithms that read it."""
    fields: dict[str, Field] = {}
    owners: dict[str, list[str]] = {}
    for name, cls in REGISTRY.items():
        for key, f in cls.keys.items():
            if key in fields and fields[key] is not f:
                raise ValueError(
                    f"algorithm key {key!r} is declared differently by {owners[key][0]!r} and {name!r}; "
                    "share one Field (mpiml.algorithms.keys)"
                )
            fields.setdefault(key, f)
            owners.setdefault(key, []).append(name)
    out = {"name": field("str", "sgd", choice(*REGISTRY), "the training algorithm")}
    for key, f in fields.items():
        out[key] = replace(f, doc=f"{', '.join(owners[key])}: {f.doc}")
    return out


def algorithm_keys(cfg: Config) -> set[str]:
    """The ``[algorithm]`` keys the job's algorithm reads: ``name`` and its own keys
    (the others, which another algorithm reads, may differ on ``--resume``)."""
    return {"name", *REGISTRY[cfg.algorithm.name].reads(cfg)}


def check_job(cfg: Config) -> None:
    """The job's algorithm's own rules (registered with the ``[algorithm]`` section)."""
    REGISTRY[cfg.algorithm.name].check(cfg)
