"""Straggler injection: the job's ``[straggler]`` section slows chosen ranks' compute,
for every algorithm alike (docs/stragglers.md).

Two ways, which compose (their factors multiply on a step where both apply):

- **fixed stragglers**: every rank in ``straggler.ranks`` (world ranks) computes
  ``straggler.factor`` times slower, every step;
- **random stragglers**, the protocol of DSP's Table 2 (Xu et al., "On the Acceleration
  of Deep Learning Model Parallelism with Staleness", CVPR 2020 / arXiv:1909.02625, §5.2:
  "we randomly slow down each GPU by a certain percentage with a probability of 1/3"):
  each rank, at each step, independently with probability ``straggler.probability`` p,
  computes with its time stretched by the slow-down percentage ``straggler.percent`` X,
  i.e. takes (1 + X/100) times its time (the paper's X: 20, 50, 100, 150 %).

Applied to compute time: a program measures a step's compute (``compute_seconds``) and
calls :meth:`Straggler.delay`, which sleeps the extra ``(multiplier - 1) * compute_seconds``
(``time.sleep``: an emulated slower device leaves the host idle, as while an
accelerator computes; nothing busy-spins), calling the program's ``poll`` between 5 ms
slices so split-phase communication keeps progressing, as it would during real
compute. The sleep is traced as an event of kind ``straggler`` (category ``compute``:
reports count it as compute time) and each delay is a row of the per-rank table
``/ranks/<r>/straggler`` (:data:`DELAY_DTYPE`: step, multiplier, compute, delay).

Seeded and stateless: whether rank r is slowed at step t is a pure function of
(run.seed, :data:`STREAM`, r, t) (:func:`slowed`), so the same job slows the same
steps on every run, and a resumed run slows the steps the uninterrupted one slowed,
with nothing to checkpoint. A straggler only adds time: a synchronous algorithm's
result is bit for bit the same with or without one.

The call a program makes (:class:`mpiml.algorithms.Replica` does it in
``local_gradient``, after the gradient, so every replica algorithm has it)::

    straggler = Straggler.for_rank(cfg, rank, trace)   # None when the rank is never slowed
    ...
    t0 = trace.now(); compute(); t1 = trace.now()
    if straggler is not None:
        straggler.delay(step, t1 - t0, poll)          # sleeps, traces; returns the seconds added

Pure except for the sleep: no MPI. The world-size rule (``straggler.ranks`` below the
number of ranks) is :func:`check_world`, run by the driver's set-up before any
collective.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import Config, at_least, field, register_section, within
from .errors import ConfigError
from .kinds import register_kind
from .trace import Trace

__all__ = [
    "DELAY_DTYPE",
    "KEYS",
    "SLICE_S",
    "STRAGGLER",
    "STREAM",
    "Straggler",
    "check",
    "check_world",
    "relevant",
    "slowed",
]

STREAM = 0x5354  # "ST": keeps the straggler draws apart from the samplers' and codecs' streams
SLICE_S = 0.005  # seconds slept between two calls of the program's poll
MAX_RANK = 2**24 - 1  # the largest world rank run.world_size allows

STRAGGLER = register_kind(
    "straggler",
    "compute",
    "compute slowed by [straggler]: the injected extra time, slept (an emulated slower device)",
)

# /ranks/<r>/straggler: one row per slowed step
DELAY_DTYPE = np.dtype(
    [
        ("step", "<i8"),  # 0-based training step
        ("multiplier", "<f8"),  # the step's compute took multiplier x its time
        ("compute", "<f8"),  # seconds of compute measured before the delay
        ("delay", "<f8"),  # seconds added: (multiplier - 1) * compute
    ]
)


def _ranks_rule(v: list[int]) -> bool:
    return len(v) <= 4096 and len(set(v)) == len(v) and all(0 <= r <= MAX_RANK for r in v)


KEYS = {
    "ranks": field(
        "int_list",
        [],
        (_ranks_rule, f"a list of at most 4096 distinct world ranks, each in [0, {MAX_RANK:_}]"),
        "world ranks slowed at every step by straggler.factor (each must be below the number of ranks)",
    ),
    "factor": field(
        "float",
        2.0,
        at_least(1.0, most=1000),
        "compute on straggler.ranks takes factor x its time (1.0: not slowed)",
    ),
    "probability": field(
        "float",
        0.0,
        within(0.0, 1.0),
        "p: each rank, at each step, is slowed independently with probability p, seeded by "
        "(run.seed, rank, step) (DSP Table 2: 1/3; 0: no random stragglers)",
    ),
    "percent": field(
        "float",
        100.0,
        at_least(0.0, most=100_000),
        "X, DSP Table 2's slow-down percentage: a randomly slowed step's compute takes "
        "(1 + X/100) x its time (the paper: 20, 50, 100, 150)",
    ),
}


def relevant(cfg: Config) -> set[str]:
    """The ``[straggler]`` keys a job reads: ``factor`` only with ``ranks``, ``percent``
    only with a ``probability`` above 0."""
    s = cfg.straggler
    out = {"ranks", "probability"}
    if s.ranks:
        out.add("factor")
    if s.probability > 0:
        out.add("percent")
    return out


def check(cfg: Config) -> None:
    """``straggler.ranks`` against ``run.world_size`` when the job names one (pure;
    the number of ranks it actually runs on is :func:`check_world`'s)."""
    if cfg.run.world_size:
        check_world(cfg, cfg.run.world_size)


def check_world(cfg: Any, world_size: int) -> None:
    """Every rank in ``straggler.ranks`` is below ``world_size``; ConfigError naming the
    field otherwise. Pure: the driver runs it with the layout's checks, under
    :func:`mpiml.comm.agree`, so every rank raises it before any collective."""
    bad = [r for r in cfg.straggler.ranks if r >= world_size]
    if bad:
        raise ConfigError(
            f"straggler.ranks must be world ranks below {world_size} (the job runs on {world_size} "
            f"rank{'s' * (world_size != 1)}; got {', '.join(map(str, bad))})"
        )


def slowed(seed: int, rank: int, step: int, probability: float) -> bool:
    """Whether ``rank`` is randomly slowed at ``step``: a uniform draw in [0, 1) of the
    stream (seed, STREAM, rank, step), below ``probability``. Pure and stateless (no
    generator to checkpoint); the draws of one rank are independent across steps and
    ranks, so over many steps about ``probability`` of them are slowed."""
    if probability <= 0.0:
        return False
    if probability >= 1.0:
        return True
    rng = np.random.default_rng(np.random.SeedSequence([seed, STREAM, rank, step]))
    return bool(rng.random() < probability)


class Straggler:
    """One rank's slow-down: a fixed ``factor`` (1.0: none) times, on randomly chosen
    steps, ``1 + percent / 100``.

    ``trace``: where :meth:`delay` records its events and rows (None: nothing recorded).
    Build it with :meth:`for_rank` from a job; the constructor is for tests and programs
    that have no job.
    """

    def __init__(
        self,
        rank: int,
        seed: int = 0,
        *,
        factor: float = 1.0,
        probability: float = 0.0,
        percent: float = 0.0,
        trace: Trace | None = None,
    ) -> None:
        if not factor >= 1.0:
            raise ValueError(f"Straggler: factor must be >= 1.0 (got {factor})")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"Straggler: probability must be in [0.0, 1.0] (got {probability})")
        if not percent >= 0.0:
            raise ValueError(f"Straggler: percent must be >= 0.0 (got {percent})")
        self.rank, self.seed = int(rank), int(seed)
        self.factor, self.probability, self.percent = float(factor), float(probability), float(percent)
        self.trace = trace

    @classmethod
    def for_rank(cls, cfg: Any, rank: int, trace: Trace | None = None) -> Straggler | None:
        """World rank ``rank``'s straggler under the job's ``[straggler]`` section, or
        None when the job never slows it (not in ``ranks``, ``probability`` 0, or every
        factor 1)."""
        s = cfg.straggler
        factor = float(s.factor) if rank in s.ranks else 1.0
        probability = float(s.probability) if s.percent > 0 else 0.0
        if factor == 1.0 and probability == 0.0:
            return None
        return cls(
            rank, int(cfg.run.seed), factor=factor, probability=probability, percent=s.percent, trace=trace
        )

    def multiplier(self, step: int) -> float:
        """How many times its time the compute of ``step`` takes (>= 1.0)."""
        m = self.factor
        if slowed(self.seed, self.rank, step, self.probability):
            m *= 1.0 + self.percent / 100.0
        return m

    def delay(self, step: int, compute_seconds: float, poll: Callable[[], Any] | None = None) -> float:
        """Slow down ``step``, whose compute took ``compute_seconds``: sleep the extra
        ``(multiplier(step) - 1) * compute_seconds`` seconds (in slices of
        :data:`SLICE_S`, calling ``poll`` between them when given), record it as a
        ``straggler`` event and a ``straggler`` table row, and return those seconds
        (0.0 on a step that is not slowed; the sleep itself may last a little longer,
        as the event's span shows)."""
        m = self.multiplier(step)
        extra = (m - 1.0) * compute_seconds
        if extra <= 0.0:
            return 0.0
        tr = self.trace
        t0 = tr.now() if tr is not None else 0.0
        _sleep(extra, poll)
        if tr is not None:
            tr.record(step, STRAGGLER, t0, tr.now())
            tr.add_row("straggler", DELAY_DTYPE, (step, m, compute_seconds, extra), always=True)
        return extra


def _sleep(seconds: float, poll: Callable[[], Any] | None) -> None:
    end = time.perf_counter() + seconds
    while True:
        if poll is not None:
            poll()
        left = end - time.perf_counter()
        if left <= 0.0:
            return
        time.sleep(min(left, SLICE_S) if poll is not None else left)


register_section("straggler", KEYS, after="backend", check=check, relevant=relevant)
