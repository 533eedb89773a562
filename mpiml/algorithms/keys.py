"""``[algorithm]`` keys that several algorithms read: one :class:`~mpiml.config.Field`
each, so the schema holds each key once. The docs name the algorithms that read a
key (generated from their ``keys``); an algorithm's own keys live in its own file."""

from __future__ import annotations

from ..config import at_least, choice, field, within
from ..protocols.progress import MODES
from ..topology import REGISTRY as GRAPHS
from ..topology import TopologyError
from ..topology.files import _find

STEPS = 10**9  # the most local steps a period may hold (run.steps' own bound)


def _known_topology(name: str) -> bool:
    """A generator's name, a file of topologies/ by stem, or an existing .toml path: checked
    when the job is read, whichever algorithm runs (its size is checked with the layout)."""
    if name in GRAPHS:
        return True
    try:
        return _find(name) is not None
    except (TopologyError, OSError, ValueError):
        return False


__all__ = ["DELAY", "GAMMA", "GOSSIP_METHOD", "PERIOD", "PROGRESS", "TAU", "TOPOLOGY", "XI"]

TAU = field(
    "int",
    4,
    at_least(1, most=STEPS),
    "local steps between averages (DaSGD's tau, Quantized-PR-SGD's K) or between pushes (async_ps, push = 'delta')",
)
DELAY = field(
    "int",
    1,
    at_least(0, most=STEPS),
    "local steps d between starting an average and merging it (0 <= d < tau; eq. 2)",
)
XI = field(
    "float",
    0.25,
    within(0.0, 1.0),
    "share xi of the local model at a merge, x = xi x_local + (1 - xi) average (eq. 2)",
)
PROGRESS = field(
    "str",
    "test",
    choice(*MODES),
    "what progresses an average in flight: 'test' (MPI_Test between compute chunks), "
    "'thread' (a polling thread), 'library' (the MPI's own progress thread, e.g. MPICH "
    "MPIR_CVAR_ASYNC_PROGRESS=1), 'none' (only the wait at the merge)",
    resumable=True,  # how an average progresses, not what it computes
)
TOPOLOGY = field(
    "str",
    "ring",
    (
        _known_topology,
        "a topology name (mpiml topology --list: " + ", ".join(GRAPHS) + ", or a file of "
        "topologies/) or the path of a .toml file",
    ),
    "the graph and weights W (docs/topologies.md)",
)
PERIOD = field("int", 1, at_least(1, most=STEPS), "local steps between gossip rounds (exchanges)")
GAMMA = field(
    "float",
    1.0,
    (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "slack gamma, x_i + gamma sum_j W_ij (x_j - x_i) (MixML §6; 1: plain gossip)",
)
GOSSIP_METHOD = field(
    "str",
    "p2p",
    choice("p2p", "neighbor"),
    "Isend/Irecv pairs or MPI_Ineighbor_allgather on a graph communicator",
)
