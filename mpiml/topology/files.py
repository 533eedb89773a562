"""Topologies from TOML files, and :func:`build_schedule`, the one entry point that turns
``algorithm.topology`` (a registry name, a file name in ``topologies/`` or a path) into
a checked :class:`Schedule`.

A file holds either an explicit matrix or an edge list and a weight rule::

    name = "ring8"                  # optional; default: the file's stem
    workers = 8                     # optional; if given, must equal the job's ranks
    W = [[0.5, 0.25, 0.25], ...]    # explicit, row i = weights rank i gives (x_i <- sum_j W_ij x_j)

    edges = [[0, 1], [1, 2]]        # or: undirected edges, ranks from 0
    weights = "metropolis"          # "metropolis" (default) or "uniform" (mpiml.topology.weights)

topologies/README.md in the repository describes the format with examples.
"""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from ..resources import resource_path
from .base import Schedule, Topology, TopologyError
from .checks import check_schedule
from .graphs import REGISTRY
from .weights import WEIGHTS, from_edges

__all__ = ["TOPOLOGY_DIR", "build_schedule", "load_topology", "named_files", "resolve"]


def _topology_dir() -> Path:
    """The named topology files: the installed package's copy, else the checkout's."""
    try:
        return resource_path("topologies")
    except FileNotFoundError:
        return Path(__file__).resolve().parents[2] / "topologies"  # named in "unknown topology" errors


# The repository's topologies/ folder (ring8_explicit, two_racks, ...), also in a wheel.
TOPOLOGY_DIR = _topology_dir()
_KEYS = {"name", "workers", "W", "edges", "weights"}


def named_files() -> dict[str, Path]:
    """Stem -> path of every .toml file in :data:`TOPOLOGY_DIR`."""
    if not TOPOLOGY_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(TOPOLOGY_DIR.glob("*.toml"))}


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def load_topology(path: str | Path, n: int | None = None) -> Topology:
    """The topology of a TOML file (format above), for ``n`` ranks (default: the file's
    ``workers``, or the size of its W). Checks the format and the size here; the weights
    are checked by :func:`~mpiml.topology.check_topology` (:func:`build_schedule` does)."""
    path = Path(path)
    where = path.name
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such topology file") from None
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{where}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise TopologyError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})"
        )
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise TopologyError(f"{where}: name must be a non-empty string (got {name!r})")
    workers = doc.get("workers")
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise TopologyError(f"{where}: workers must be an integer >= 1 (got {workers!r})")
        if n is not None and workers != n:
            raise TopologyError(f"{where} is for {workers} workers but the job has {n} rank{'s' * (n != 1)}")
    size = n if n is not None else workers
    if ("W" in doc) == ("edges" in doc):
        raise TopologyError(
            f"{where}: give either W (explicit weights) or edges (+ weights), not {'both' if 'W' in doc else 'neither'}"
        )
    if "W" in doc:
        if "weights" in doc:
            raise TopologyError(f"{where}: weights is a rule for edges; an explicit W needs none")
        return Topology(name, _matrix(where, doc["W"], size))
    rule = doc.get("weights", "metropolis")
    if rule not in WEIGHTS:
        raise TopologyError(f"{where}: weights must be one of {', '.join(map(repr, WEIGHTS))} (got {rule!r})")
    if size is None:
        raise TopologyError(f"{where}: an edge list needs the number of ranks: set workers, or pass n")
    edges = doc["edges"]
    if not isinstance(edges, list):
        raise TopologyError(f"{where}: edges must be a list of [i, j] pairs (got {edges!r})")
    try:
        return from_edges(size, edges, rule, name)
    except TopologyError as exc:
        raise TopologyError(f"{where}: {exc}") from None


def _matrix(where: str, W: object, n: int | None) -> np.ndarray:
    if not isinstance(W, list) or not W:
        raise TopologyError(f"{where}: W must be a non-empty list of rows")
    for i, row in enumerate(W):
        if not isinstance(row, list) or len(row) != len(W):
            got = f"{len(row)} entries" if isinstance(row, list) else repr(row)
            raise TopologyError(f"{where}: W row {i} must be a list of {len(W)} numbers (got {got})")
        for j, v in enumerate(row):
            if not _number(v):
                raise TopologyError(f"{where}: W[{i}, {j}] = {v!r} is not a number")
    if n is not None and len(W) != n:
        raise TopologyError(f"{where}: W is {len(W)}x{len(W)} but the job has {n} rank{'s' * (n != 1)}")
    return np.array(W, dtype=np.float64)


def _generate(name: str, n: int, params: dict[str, Any]) -> Topology | Schedule:
    builder = REGISTRY[name]
    accepted = [p for p in inspect.signature(builder).parameters if p != "n"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = f"takes {', '.join(accepted)}" if accepted else "takes no parameters"
        raise TopologyError(f"{name} {takes} (got {', '.join(unknown)})")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TopologyError(f"the number of ranks must be an integer >= 1 (got {n!r})")
    return builder(n, **params)


def _find(name: str) -> Path | None:
    """An existing .toml path; else a bare name or file name of TOPOLOGY_DIR."""
    path = Path(name)
    if path.suffix != ".toml":
        return named_files().get(name)
    if path.is_file():
        return path
    found = named_files().get(path.stem) if path.parent == Path(".") else None
    if found is None:
        raise TopologyError(f"{path}: no such topology file")
    return found


def resolve(name_or_path: str | Path, n: int | None, **params: Any) -> Schedule:
    """Like :func:`build_schedule` without the checks (``mpiml topology`` reports on a W
    that fails them); ``n`` may be None for a file that states its size."""
    key = str(name_or_path)
    if key in REGISTRY:
        if n is None:
            raise TopologyError(f"{key} needs the number of ranks")
        built = _generate(key, n, params)
        return built if isinstance(built, Schedule) else Schedule.of(built)
    path = _find(key)
    if path is None:
        names = ", ".join(REGISTRY)
        files = ", ".join(named_files()) or "none"
        raise TopologyError(
            f"unknown topology {key!r}: not one of {names}, nor a .toml file, "
            f"nor a file in {TOPOLOGY_DIR} ({files})"
        )
    if params:
        raise TopologyError(
            f"{path.name}: parameters apply to generated topologies only (got {', '.join(params)})"
        )
    return Schedule.of(load_topology(path, n))


def build_schedule(name_or_path: str | Path, n: int, *, check: bool = True, **params: Any) -> Schedule:
    """The checked schedule of ``name_or_path`` for ``n`` ranks.

    Resolution order: a :data:`~mpiml.topology.REGISTRY` name (``ring``, ``torus``, ...,
    with ``params`` passed to its generator), then an existing ``.toml`` path, then a file
    of :data:`TOPOLOGY_DIR` by stem (``two_racks``). Every W is then checked
    (:func:`~mpiml.topology.check_schedule`: size n, doubly stochastic, connected, rho < 1)
    unless ``check=False``. Errors are :class:`TopologyError`.

    >>> build_schedule("torus", 8).at(0).name
    'torus(2x4)'
    """
    schedule = resolve(name_or_path, n, **params)
    if check:
        check_schedule(schedule, n=n)
    return schedule
