"""Gossip topologies: pure graph and weight-matrix functions, no MPI.

A :class:`Topology` is a gossip matrix W with the convention x_i <- sum_j W[i, j] x_j
(row i: the weights rank i gives to what it receives); a :class:`Schedule` gives the
topology of every round t (static, or time-varying and periodic). From
Quantized-PR-SGD (Wu et al., arXiv:2004.09125) §5: W doubly stochastic, and Assumption 2's spectral gap
rho = max(|lambda_2(W)|, |lambda_n(W)|) < 1, the factor by which one round shrinks the
consensus error ||X - mean||; MixML §6 gossips on a ring ("SyncDR").

Layout: :mod:`~mpiml.topology.base` (:class:`Topology`, :class:`Schedule`,
:class:`TopologyError`), :mod:`~mpiml.topology.weights` (edge list -> W: ``metropolis``,
``uniform``), :mod:`~mpiml.topology.graphs` (the generators and :data:`REGISTRY`),
:mod:`~mpiml.topology.checks` (doubly stochastic, symmetric, connected, rho < 1),
:mod:`~mpiml.topology.files` (TOML files, :func:`build_schedule`) and
:mod:`~mpiml.topology.cli` (``mpiml topology``). docs/topologies.md has the formulas.

>>> from mpiml.topology import build_schedule
>>> s = build_schedule("ring", 8)        # checked; TopologyError names what fails
>>> top = s.at(0)
>>> top.self_weight(3), top.weights_from(3)
(0.3333333333333333, {2: 0.3333333333333333, 4: 0.3333333333333333})
"""

from .base import Schedule, Topology, TopologyError
from .checks import (
    check,
    check_connected,
    check_converges,
    check_finite,
    check_nonnegative,
    check_schedule,
    check_size,
    check_square,
    check_stochastic,
    check_symmetric,
    check_topology,
    doubly_stochastic,
)
from .cli import main
from .files import TOPOLOGY_DIR, build_schedule, load_topology, named_files, resolve
from .graphs import (
    REGISTRY,
    complete,
    exponential,
    hypercube,
    one_peer_exponential,
    random_regular,
    ring,
    star,
    torus,
)
from .weights import WEIGHTS, from_edges, metropolis, uniform

__all__ = [
    "REGISTRY",
    "TOPOLOGY_DIR",
    "WEIGHTS",
    "Schedule",
    "Topology",
    "TopologyError",
    "build_schedule",
    "check",
    "check_connected",
    "check_converges",
    "check_finite",
    "check_nonnegative",
    "check_schedule",
    "check_size",
    "check_square",
    "check_stochastic",
    "check_symmetric",
    "check_topology",
    "complete",
    "doubly_stochastic",
    "exponential",
    "from_edges",
    "hypercube",
    "load_topology",
    "main",
    "metropolis",
    "named_files",
    "one_peer_exponential",
    "random_regular",
    "resolve",
    "ring",
    "star",
    "torus",
    "uniform",
]
