"""Pipeline parallelism: ``gpipe`` and ``1f1b`` (synchronous) and ``dsp`` (Diversely Stale
Parameters): the job keys, rules and layout; the program is
:class:`mpiml.algorithms.pipeline_stage.StageProgram`.

The model is cut into K = ``algorithm.stages`` consecutive blocks of layers
(:func:`mpiml.models.split`: at ``algorithm.partition``'s layer boundaries, or balanced by
parameter count, or, ``algorithm.balance = "cost"``, by each layer's forward + backward time
measured on rank 0 at start, :func:`mpiml.algorithms.pipeline_stage.measured_cut`); rank ``p*K + k`` runs stage k of pipeline p
(:func:`mpiml.layout.pipelines`), P = ``algorithm.pipelines`` copies (data parallel: the
replicas of stage k, one per pipeline, average their gradients by an AllReduce before
every update; pipeline p samples data shard p). Stage 0 reads x and the last stage y of
the same minibatch (the same sampler seed); middle stages read no data. Activations
travel forward and error gradients backward through bounded FIFO channels over MPI
(:mod:`mpiml.protocols.channel`).

- ``gpipe`` (Huang et al., GPipe, 2019) and ``1f1b`` (PipeDream-flush, Narayanan et al.
  2021): each step is one minibatch of ``data.batch_size`` rows, cut into m =
  ``algorithm.micro_batches`` micro-batches of batch_size / m rows, run through the
  stages in the schedule's order (:func:`mpiml.pipeline.gpipe`,
  :func:`mpiml.pipeline.one_f_one_b`); each stage sums its micro-batch gradients (each
  scaled 1/(batch_size * P)), averages over the P replicas, and takes one optimizer step.
  That is minibatch SGD on batch_size * P rows: the same gradient as the unpipelined
  model up to the order of the sums (bit for bit with m = 1 and P = 1).
- ``dsp`` (Xu, Huo & Huang, "On the Acceleration of Deep Learning Model Parallelism
  with Staleness", CVPR 2020, arXiv:1909.02625): DSP(p_0..p_{K-1}; m_0..m_{K-1}) =
  ``algorithm.dsp_p``, ``algorithm.dsp_m`` (§3.3; Appendix A's relations checked,
  :func:`mpiml.pipeline.dsp_queues`). Each step t is one global timestamp of Figure 2
  (:func:`mpiml.pipeline.dsp_timetable`): stage k forwards batch t - d_k
  (d_k = p_0 + ... + p_{k-1}) with its current parameters, and recomputes (Eq. 5) and
  backwards batch t - d_k - m_k, then updates its parameters at once (one update per
  batch and stage; the gradient of the batch mean, 1/batch_size, averaged over the P
  replicas). ``run.steps`` batches are fed; the last step drains the pipeline, so every
  batch is backwarded once on every stage. With all p_k = m_k = 0 it is sequential
  backprop, bit for bit. Momentum is the optimizer's: ``optimizer.name = "momentum"``
  (SUM, Eq. 3, s = 0) or ``"nesterov"`` (s = 1); the paper's settings are momentum 0.9,
  weight decay 5e-4, batch 128.

Evaluation sends the test set forward through the stages on channels of its own (no
training message is mixed in): stage 0 cuts its slice of the test set (slice p of P) into
chunks, the last stage adds up loss and correct predictions; the metrics are the sums over
the P pipelines.
"""

from __future__ import annotations

from typing import Any

from ..config import Config, at_least, choice, field
from ..errors import ConfigError
from ..layout import Layout, Role, pipelines
from ..pipeline import dsp_queues
from .base import Algorithm, Program, register

__all__ = ["DSP", "GPipe", "OneFOneB", "PipelineAlgorithm", "dsp_config", "n_layers"]

MAX_STAGES = 4096

MAX_LIST = 512  # entries of a per-stage list (partition, dsp_p, dsp_m)


def _int_list(lo: int, hi: int) -> tuple[Any, str]:
    """A rule for an ``int_list`` of per-stage values: at most MAX_LIST entries in [lo, hi]."""
    return (
        lambda v: len(v) <= MAX_LIST and all(lo <= b <= hi for b in v),
        f"a list of at most {MAX_LIST} integers, each in [{lo}, {hi:_}]",
    )


STAGES = field(
    "int", 2, at_least(1, most=MAX_STAGES), "K: ranks (stages) per pipeline, one block of layers each"
)
PIPELINES = field(
    "int",
    -1,
    at_least(1, most=10**6),
    "P: copies of the pipeline (data parallel; world size = P * K, sdpipe P * K + 1; omitted, shown as -1: "
    "the most that fit)",
    unset=True,
)
MICRO_BATCHES = field(
    "int",
    4,
    at_least(1, most=10**6),
    "m: micro-batches per minibatch (data.batch_size must be a multiple of m)",
)
PARTITION = field(
    "int_list",
    [],
    _int_list(1, 10**6),
    "the K-1 layer indices where stages 1..K-1 start ([]: balanced by parameter count)",
)
BALANCE = field(
    "str",
    "params",
    choice("params", "cost"),
    "without algorithm.partition: cut the layers to balance the stages' parameter counts, or "
    "their forward + backward time measured on rank 0 at start (printed; pin it with partition)",
)
DSP_P = field(
    "int_list",
    [],
    _int_list(0, 10**6),
    "DSP(p; m)'s p_0..p_{K-1}: output-queue lengths - 1 ([] with dsp_m = []: 1,..,1,0)",
)
DSP_M = field(
    "int_list",
    [],
    _int_list(0, 10**6),
    "DSP(p; m)'s m_0..m_{K-1}: layer-wise staleness = input-queue lengths - 1 ([] with dsp_p = []: "
    "2(K-1),..,2,0)",
)


def n_layers(cfg: Config) -> int:
    """Layers of the job's model (an MLP of h hidden layers has h + 1; softmax 1)."""
    name = cfg.model.name
    return len(cfg.model.hidden) + 1 if name == "mlp" else 1


def n_pipelines(cfg: Config, world_size: int) -> int:
    """P: ``algorithm.pipelines``, or world size / K when omitted."""
    P = int(cfg.algorithm.pipelines)
    return P if P > 0 else max(1, world_size // int(cfg.algorithm.stages))


def dsp_config(cfg: Config) -> tuple[list[int], list[int]]:
    """DSP(p; m) of the job: ``algorithm.dsp_p`` and ``dsp_m``, or, both omitted, the
    paper's smallest configuration for K stages, p_k = 1 (k < K-1), m_k = 2 (K-1-k)
    (DSP(1,1,0; 4,2,0) for K = 3, DSP(1,1,1,0; 6,4,2,0) for K = 4: q_k = 1)."""
    K = int(cfg.algorithm.stages)
    p, m = list(cfg.algorithm.dsp_p), list(cfg.algorithm.dsp_m)
    if not p and not m:
        return [1] * (K - 1) + [0], [2 * (K - 1 - k) for k in range(K)]
    return p, m


class PipelineAlgorithm(Algorithm):
    """What the three pipeline algorithms share: keys, rules, layout, program."""

    keys = {"stages": STAGES, "pipelines": PIPELINES, "partition": PARTITION, "balance": BALANCE}
    schedule = ""

    @classmethod
    def check(cls, cfg: Config) -> None:
        K = int(cfg.algorithm.stages)
        name = f"algorithm.name = {cls.name!r}"
        if cfg.model.name not in ("mlp", "softmax", "timed"):
            raise ConfigError(
                f"{name} needs model.name = 'mlp' (or 'softmax', 'timed'); a {cfg.model.name!r} model "
                "has no layers to cut into stages"
            )
        L = n_layers(cfg)
        if cfg.model.name != "timed" and K > L:
            raise ConfigError(
                f"algorithm.stages = {K} is more than the model's {L} layer{'s' * (L != 1)} "
                + (
                    f"(model.hidden = {list(cfg.model.hidden)})"
                    if cfg.model.name == "mlp"
                    else "(model.name = 'softmax' is one layer; use 'mlp')"
                )
                + ": a stage holds at least one layer"
            )
        part = list(cfg.algorithm.partition)
        if part:
            if cfg.model.name == "timed":
                raise ConfigError("algorithm.partition cuts layers; a 'timed' model has none (leave it out)")
            if (
                len(part) != K - 1
                or any(b <= a for a, b in zip([0, *part], part, strict=False))
                or part[-1] >= L
            ):
                raise ConfigError(
                    f"algorithm.partition = {part} must list K-1 = {K - 1} strictly increasing layer "
                    f"indices in 1..{L - 1} (where stages 1..{K - 1} start)"
                )
        if cfg.compression.codec not in ("none", "auto"):
            raise ConfigError(
                f"compression.codec = {cfg.compression.codec!r}: {name} sends activations and error "
                "gradients uncompressed (set compression.codec = 'none')"
            )

    @classmethod
    def layout(cls, cfg: Config, world_size: int) -> Layout:
        K = int(cfg.algorithm.stages)
        P = int(cfg.algorithm.pipelines)
        if K > world_size:
            raise ConfigError(
                f"algorithm.stages = {K} is more than the {world_size} rank{'s' * (world_size != 1)} "
                f"of the job: launch P * K = {K} ranks per pipeline"
            )
        if P > 0 and P * K != world_size:
            raise ConfigError(
                f"algorithm.pipelines * algorithm.stages = {P} * {K} = {P * K} but the job runs on "
                f"{world_size} rank{'s' * (world_size != 1)}: launch {P * K}, or change them"
            )
        if world_size % K:
            raise ConfigError(
                f"the world size {world_size} is not a multiple of algorithm.stages = {K}: "
                f"launch P * {K} ranks (P pipelines of {K} stages)"
            )
        return pipelines(world_size, stages=K)

    @classmethod
    def check_layout(cls, cfg: Config, layout: Layout) -> None:
        if cfg.model.name == "timed" and int(cfg.model.params) < int(cfg.algorithm.stages):
            raise ConfigError(
                f"model.params = {cfg.model.params} is fewer than algorithm.stages = {cfg.algorithm.stages}: "
                "a stage holds at least one parameter"
            )

    @classmethod
    def program_for(cls, role: Role) -> type[Program]:
        if role.kind == "stage":
            from .pipeline_stage import StageProgram

            return StageProgram
        raise ConfigError(f"algorithm.name = {cls.name!r} has no program for a {role.kind} rank")


@register
class GPipe(PipelineAlgorithm):
    """GPipe: all m forwards, then all m backwards, one update per minibatch."""

    name = "gpipe"
    schedule = "gpipe"
    keys = {**PipelineAlgorithm.keys, "micro_batches": MICRO_BATCHES}

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        m, b = int(cfg.algorithm.micro_batches), int(cfg.data.batch_size)
        if b % m:
            raise ConfigError(
                f"data.batch_size = {b} is not a multiple of algorithm.micro_batches = {m}: "
                "every micro-batch has batch_size / m rows"
            )


@register
class OneFOneB(GPipe):
    """1F1B (PipeDream-flush): warm-up forwards, then one forward one backward, flush."""

    name = "1f1b"
    schedule = "1f1b"


@register
class DSP(PipelineAlgorithm):
    """DSP(p; m): stages run Figure 2's timetable; each updates once per batch."""

    name = "dsp"
    schedule = "dsp"
    keys = {**PipelineAlgorithm.keys, "dsp_p": DSP_P, "dsp_m": DSP_M}

    @classmethod
    def check(cls, cfg: Config) -> None:
        super().check(cfg)
        K = int(cfg.algorithm.stages)
        p, m = dsp_config(cfg)
        for key, v in (("dsp_p", p), ("dsp_m", m)):
            if len(v) != K:
                raise ConfigError(
                    f"algorithm.{key} = {list(v)} must hold K = algorithm.stages = {K} values "
                    f"(DSP(p_0..p_{K - 1}; m_0..m_{K - 1}))"
                )
        try:
            dsp_queues(p, m)
        except ValueError as exc:
            raise ConfigError(f"algorithm.dsp_p = {p}, algorithm.dsp_m = {m}: {exc}") from None
        if m[-1]:  # the last stage's loss takes the y of the batch it forwards in the same step
            raise ConfigError(
                f"algorithm.dsp_m = {m}: m_{{K-1}} must be 0: the last stage backwards each batch in the "
                f"step it forwards it (got m_{K - 1} = {m[-1]})"
            )
