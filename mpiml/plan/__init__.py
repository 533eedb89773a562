"""The DaSGD paper's analytic planner: t_p, t_c, the delay d, tau, and time per epoch.

From "DaSGD: Squeezing SGD Parallelization Performance in Distributed Training Using
Delayed Averaging" (Zhou et al., arXiv:2006.00441):

- eq. (3), §III.D: t_p = B_l FLOP / FLOPS; the averaging is hidden when t_c < d t_p, so
  the delay is the smallest integer d >= 1 with t_c < d t_p (strict);
- §VI.D: tau = d + 1;
- eqs. (4)-(6), §V.A: time per step (the bracket) and per epoch (bracket x n_s / B,
  B = m B_l) of minibatch SGD, local SGD and DaSGD.

t_c is not eq. (3)'s ``m n_p / BW`` (linear in m, and it reproduces no number of the
paper): it is the model that reproduces all 28 t_c entries of Table II, a two-level
allreduce whose every step moves the whole message, ``transfers(k) x n_p x bytes x 8 /
bandwidth`` summed over the GPUs of a node (PCIe) and over the nodes (Ethernet), with
``transfers`` = 2 ceil(log2 k) for a tree and ceil(log2 k) for a butterfly. The ring
(2 (k-1)/k) is our addition. docs/plan.md has the derivation and the discrepancies.

Pure Python: no MPI; h5py only inside :func:`measured_step_times`.

Layout: :mod:`~mpiml.plan.model` (the formulas: :func:`allreduce_time`,
:func:`delay_for`, :func:`plan`, :class:`Plan`, Table II's :data:`PRESETS`),
:mod:`~mpiml.plan.measure` (:func:`measured_step_times`, reading a run file) and
:mod:`~mpiml.plan.cli` (:func:`main`, :func:`format_plan`, :func:`parse_bandwidth`,
the ``--check`` report).
"""

from .cli import format_plan, main, parse_bandwidth
from .measure import measured_step_times
from .model import ALLREDUCE, PRESETS, Plan, allreduce_time, delay_for, plan

__all__ = [
    "ALLREDUCE",
    "PRESETS",
    "Plan",
    "allreduce_time",
    "delay_for",
    "format_plan",
    "main",
    "measured_step_times",
    "parse_bandwidth",
    "plan",
]
