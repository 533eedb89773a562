"""The planner's formulas: the allreduce model, Table II's presets, the plan (eqs. 3-6).

From "DaSGD: Squeezing SGD Parallelization Performance in Distributed Training Using
Delayed Averaging" (Zhou et al., arXiv:2006.00441):

- eq. (3), §III.D: t_p = B_l FLOP / FLOPS; the averaging is hidden when t_c < d t_p, so
  the delay is the smallest integer d >= 1 with t_c < d t_p (strict): :func:`delay_for`;
- §VI.D: tau = d + 1;
- eqs. (4)-(6), §V.A: time per step (the bracket) and per epoch (bracket x n_s / B,
  B = m B_l) of minibatch SGD, local SGD and DaSGD: :func:`plan`, :class:`Plan`.

t_c is :func:`allreduce_time`, the two-level allreduce that reproduces all 28 t_c entries
of Table II (see :mod:`mpiml.plan` and docs/plan.md). Pure Python.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ALLREDUCE",
    "PRESETS",
    "SYSTEMS",
    "TABLE_II",
    "Plan",
    "System",
    "allreduce_time",
    "delay_for",
    "plan",
]


def _log2_ceil(k: int) -> int:
    return (k - 1).bit_length()


# Whole-message transfers on the critical path of an allreduce among k ranks.
ALLREDUCE: dict[str, Callable[[int], float]] = {
    "tree": lambda k: 2 * _log2_ceil(k),  # reduce up a binary tree, broadcast back down
    "butterfly": lambda k: _log2_ceil(k),  # recursive doubling: log2 k pairwise exchanges
    "ring": lambda k: 2 * (k - 1) / k,  # reduce-scatter + allgather (ours, not the paper's)
}


def allreduce_time(
    allreduce: str,
    nbytes: float,
    workers: int,
    bandwidth: float,
    gpus_per_node: int = 1,
    intra_bandwidth: float | None = None,
) -> float:
    """Seconds for one allreduce of ``nbytes`` among ``workers`` (bandwidths in bit/s).

    Two levels, the same algorithm at each: among the min(g, m) GPUs of a node over
    ``intra_bandwidth`` (default: ``bandwidth``), then among ceil(m / g) nodes over
    ``bandwidth``. With g = 1 it is the flat allreduce over the network.
    """
    transfers = ALLREDUCE[allreduce]
    local = min(gpus_per_node, workers)
    nodes = -(-workers // gpus_per_node)
    intra = bandwidth if intra_bandwidth is None else intra_bandwidth
    return 8.0 * nbytes * (transfers(local) / intra + transfers(nodes) / bandwidth)


# ---------------------------------------------------------------------------- Table II


@dataclass(frozen=True)
class System:
    label: str
    bandwidth: float  # bit/s between nodes (Ethernet)
    gpus_per_node: int
    intra_bandwidth: float  # bit/s inside a node (PCIe 3.0: 16 GB/s)


SYSTEMS = {
    "titanx": System("NVIDIA TITAN X, 20 Gbit/s Ethernet", 20e9, 8, 128e9),
    "k80": System("NVIDIA K80, 10 Gbit/s Ethernet", 10e9, 8, 128e9),
}
# model: (name, parameters, t_p in ms on TITAN X, t_p in ms on K80). t_p is PALEO's
# per-layer estimate, which no FLOP/FLOPS formula reproduces: the presets take it as given.
TABLE_II = {
    "nin": ("Network-in-Network", 7_595_176, 119.08, 129.80),
    "vgg16": ("VGG-16", 138_357_544, 2164.32, 2361.61),
    "vgg19": ("VGG-19", 143_667_240, 2684.73, 2932.49),
    "resnet50": ("ResNet-50", 25_530_472, 526.05, 575.29),
    "resnext50": ("ResNeXt-50", 167_153_128, 1640.05, 1795.83),
    "densenet121": ("DenseNet-121", 7_905_448, 358.23, 390.73),
    "densenet201": ("DenseNet-201", 17_900_106, 538.06, 587.64),
}
# Table II's setting: 256 workers, local batch 64, fp32, tree (its delay column follows
# the tree column; Fig. 7's 45.9 % / 17.5 % communication shares do too).
PRESETS: dict[str, dict[str, Any]] = {
    f"{key}-{sys_key}": {
        "label": f"{name} on {system.label} (Table II)",
        "params": n_p,
        "tp": (tp_titanx if sys_key == "titanx" else tp_k80) / 1e3,
        "bandwidth": system.bandwidth,
        "gpus_per_node": system.gpus_per_node,
        "intra_bandwidth": system.intra_bandwidth,
        "workers": 256,
        "local_batch": 64,
        "allreduce": "tree",
    }
    for key, (name, n_p, tp_titanx, tp_k80) in TABLE_II.items()
    for sys_key, system in SYSTEMS.items()
}


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """Inputs as used and predictions; times in seconds, per step and per epoch."""

    workers: int
    local_batch: int
    samples: int
    allreduce: str
    t_p: float  # one local step: (B_l / p) passes of (t_f + t_b), plus t_l
    t_c: float  # one allreduce of the model
    t_l: float
    delay: int
    tau: int
    tp_source: str
    tc_source: str
    delay_source: str
    steps_per_epoch: float  # n_s / (m B_l), fractional as in eqs. 4-6
    step_sgd: float  # eq. 4: t_p + t_c
    step_local_sgd: float  # eq. 5: t_p + t_c / tau
    step_dasgd: float  # eq. 6 when hidden; else t_p + (t_c - d t_p) / tau
    dasgd_wait: float  # seconds a rank waits once per tau steps: max(0, t_c - d t_p)
    params: int | None = None
    bytes_per_param: float = 4
    bandwidth: float | None = None
    flop_per_sample: float | None = None
    flops: float | None = None
    parallel: int | None = None
    gpus_per_node: int = 1
    intra_bandwidth: float | None = None

    @property
    def hidden(self) -> bool:
        """Eq. (3): the averaging is entirely overlapped with d local steps."""
        return self.t_c < self.delay * self.t_p

    def epoch(self, algorithm: str) -> float:
        return self.step(algorithm) * self.steps_per_epoch

    def step(self, algorithm: str) -> float:
        return {"sgd": self.step_sgd, "local_sgd": self.step_local_sgd, "dasgd": self.step_dasgd}[algorithm]

    def comm_share(self, algorithm: str) -> float:
        """Fraction of a step not spent in local steps (Fig. 7's communication share)."""
        s = self.step(algorithm)
        return (s - self.t_p) / s

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = self.hidden
        for alg in ("sgd", "local_sgd", "dasgd"):
            d[f"epoch_{alg}"] = self.epoch(alg)
            d[f"comm_share_{alg}"] = self.comm_share(alg)
            d[f"speedup_{alg}"] = self.step_sgd / self.step(alg)
        return d


def _check(name: str, value: Any, minimum: float, *, integer: bool = False, strict: bool = False) -> None:
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what} {'>' if strict else '>='} {minimum:g} (got {value!r})")


def delay_for(t_c: float, t_p: float) -> int:
    """Eq. (3): the smallest integer d >= 1 with t_c < d t_p (strict, so t_c = 2 t_p gives 3).

    A ratio within 1e-9 (relative) of an integer k counts as k, so that decimal inputs
    equal on paper (t_c = 300 ms, t_p = 100 ms: 0.3 / 0.1 = 2.9999999999999996) give k + 1.
    """
    r = t_c / t_p
    k = round(r)
    if abs(r - k) <= 1e-9 * max(1, k):
        return k + 1
    return math.floor(r) + 1


def plan(
    *,
    workers: int,
    local_batch: int,
    params: int | None = None,
    flop_per_sample: float | None = None,
    flops: float | None = None,
    bandwidth: float | None = None,
    allreduce: str = "tree",
    bytes_per_param: float = 4,
    samples: int = 50_000,
    parallel: int | None = None,
    t_l: float = 0.0,
    tp: float | None = None,
    tc: float | None = None,
    gpus_per_node: int = 1,
    intra_bandwidth: float | None = None,
    delay: int | None = None,
    tau: int | None = None,
) -> Plan:
    """Predict t_p, t_c, d, tau and the time per step and epoch of SGD, local SGD, DaSGD.

    t_p: ``tp`` (seconds) if given, else eq. (3)'s B_l FLOP / FLOPS, computed as
    ceil(B_l / p) passes of p samples in parallel, a pass costing t_f + t_b =
    p FLOP / FLOPS (a partial pass costs a whole one); p = ``parallel`` defaults to B_l,
    one pass per batch. ``t_l`` (local update, §V.B.1: negligible, default 0) is added
    in either case. t_c: ``tc`` if given, else :func:`allreduce_time` of
    ``params x bytes_per_param`` bytes. ``delay`` and ``tau`` default to eq. (3)'s d and
    d + 1 (§VI.D); given, they must keep the bounded age d < tau (§IV).

    >>> p = plan(workers=256, local_batch=64, tp=0.52605, params=25_530_472,
    ...          bandwidth=20e9, gpus_per_node=8, intra_bandwidth=128e9)
    >>> round(p.t_c * 1e3, 2), p.delay, p.tau
    (446.78, 1, 2)
    """
    _check("workers", workers, 1, integer=True)
    _check("local_batch", local_batch, 1, integer=True)
    _check("samples", samples, 1, integer=True)
    _check("bytes_per_param", bytes_per_param, 0, strict=True)
    _check("gpus_per_node", gpus_per_node, 1, integer=True)
    _check("t_l", t_l, 0)
    if allreduce not in ALLREDUCE:
        raise ValueError(f"allreduce must be one of {', '.join(ALLREDUCE)} (got {allreduce!r})")
    p = local_batch if parallel is None else parallel
    _check("parallel", p, 1, integer=True)
    if p > local_batch:
        raise ValueError(f"parallel must be <= local_batch (got parallel={p}, local_batch={local_batch})")
    for name, value in (("params", params), ("flop_per_sample", flop_per_sample)):
        if value is not None:
            _check(
                name, value, 1 if name == "params" else 0, integer=name == "params", strict=name != "params"
            )
    for name, value in (("flops", flops), ("bandwidth", bandwidth), ("intra_bandwidth", intra_bandwidth)):
        if value is not None:
            _check(name, value, 0, strict=True)

    if tp is not None:
        _check("tp", tp, 0, strict=True)
        compute, tp_source = float(tp), "given"
    elif flop_per_sample is not None and flops is not None:
        compute = -(-local_batch // p) * p * flop_per_sample / flops
        tp_source = "eq. 3: B_l FLOP / FLOPS"
    else:
        raise ValueError("t_p needs tp, or flop_per_sample and flops")
    t_p = compute + t_l

    if tc is not None:
        _check("tc", tc, 0)
        t_c, tc_source = float(tc), "given"
    elif params is not None and bandwidth is not None:
        t_c = allreduce_time(
            allreduce, params * bytes_per_param, workers, bandwidth, gpus_per_node, intra_bandwidth
        )
        tc_source = f"{allreduce} allreduce model"
    else:
        raise ValueError("t_c needs tc, or params and bandwidth")

    if delay is None:
        d, delay_source = delay_for(t_c, t_p), "eq. 3: smallest d with t_c < d t_p"
    else:
        _check("delay", delay, 0, integer=True)
        d, delay_source = int(delay), "given"
    if tau is None:
        tau = d + 1
    _check("tau", tau, 1, integer=True)
    if tau <= d:
        raise ValueError(f"tau must be > delay, the bounded age d < tau of §IV (got tau={tau}, delay={d})")

    wait = max(0.0, t_c - d * t_p)  # once per tau steps: the averaging not hidden by d steps
    return Plan(
        workers=workers,
        local_batch=local_batch,
        samples=samples,
        allreduce=allreduce,
        t_p=t_p,
        t_c=t_c,
        t_l=t_l,
        delay=d,
        tau=int(tau),
        tp_source=tp_source,
        tc_source=tc_source,
        delay_source=delay_source,
        steps_per_epoch=samples / (workers * local_batch),
        step_sgd=t_p + t_c,
        step_local_sgd=t_p + t_c / tau,
        step_dasgd=t_p + wait / tau,
        dasgd_wait=wait,
        params=params,
        bytes_per_param=bytes_per_param,
        bandwidth=bandwidth,
        flop_per_sample=flop_per_sample,
        flops=flops,
        parallel=p,
        gpus_per_node=gpus_per_node,
        intra_bandwidth=intra_bandwidth,
    )
