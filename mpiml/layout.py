"""Layouts: which part each rank plays. Pure functions of sizes; no MPI.

A :class:`Layout` maps every rank of a job to a :class:`Role`: a *replica* (data
parallelism: the whole model, its own data shard), a *worker* or a *server* (a
parameter server: workers read data and hold the whole model, server s holds shard s
of the parameters), a *stage* (stage k of pipeline p: one block of layers), or the
*scheduler* (SDPIPE's central rank). An algorithm derives its layout from the job and
the world size (:meth:`mpiml.algorithms.Algorithm.layout`); set-up splits the
communicators from it once (:func:`mpiml.comm.split`), and the run file and every
checkpoint record it, so a resume on a different layout is refused.

Conventions (chosen so that rank 0, which prints and writes the run file, is always a
rank that trains):

- ``parameter_server(n, servers=S)``: workers are ranks 0..n-S-1 (data shards
  0..n-S-1), servers the last S ranks (shard indices 0..S-1 in ``group``).
- ``pipelines(n, stages=K)``: rank ``p*K + k`` is stage k of pipeline p (a pipeline's
  stages are neighbours in rank order, so a node holds whole pipelines when ranks fill
  nodes in order); stage 0 reads x and the last stage reads y of data shard p, middle
  stages read nothing. With ``scheduler=True`` the last rank is the scheduler.

>>> data_parallel(2).roles
(Role(kind='replica', stage=0, group=0, shard=0, reads='xy'), Role(kind='replica', stage=0, group=0, shard=1, reads='xy'))
>>> pipelines(5, stages=2, scheduler=True).ranks("stage", stage=1)
[1, 3]
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["KINDS", "Kind", "Layout", "Role", "data_parallel", "parameter_server", "pipelines"]

Kind = Literal["replica", "worker", "server", "stage", "scheduler"]
KINDS: tuple[str, ...] = ("replica", "worker", "server", "stage", "scheduler")
_READS = ("xy", "x", "y", "")


@dataclass(frozen=True)
class Role:
    """One rank's part in a job.

    ``kind``: replica, worker, server, stage or scheduler. ``stage``: pipeline stage k
    (0 for every other kind). ``group``: pipeline index p for stages, shard index s for
    servers, 0 otherwise. ``shard``: the data shard this rank samples (-1: reads no
    data). ``reads``: what it reads of that shard's minibatches: "xy" (inputs and
    labels), "x" (a first pipeline stage), "y" (a last stage) or "" (nothing).
    """

    kind: Kind
    stage: int = 0
    group: int = 0
    shard: int = -1
    reads: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Role.kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.reads not in _READS:
            raise ValueError(f"Role.reads must be one of {_READS} (got {self.reads!r})")
        if (self.shard < 0) != (self.reads == ""):
            raise ValueError(
                f"Role: shard {self.shard} and reads {self.reads!r} disagree (no shard: reads '')"
            )

    def describe(self) -> str:
        """``replica (shard 2)``, ``stage 1 of pipeline 0 (reads y of shard 0)``, ``server of
        shard 1``, ``scheduler``."""
        if self.kind == "stage":
            head = f"stage {self.stage} of pipeline {self.group}"
        elif self.kind == "server":
            head = f"server of shard {self.group}"
        else:
            head = self.kind
        if self.shard < 0:
            return head
        what = "" if self.reads == "xy" else f"reads {self.reads} of "
        return f"{head} ({what}shard {self.shard})"


@dataclass(frozen=True)
class Layout:
    """The role of every rank (``roles[rank]``) and the number of data shards.

    Pure and immutable; equal layouts compare equal, and :meth:`to_json` /
    :meth:`from_json` round-trip (the run file and checkpoint markers store it).
    """

    name: str
    roles: tuple[Role, ...]
    n_shards: int

    def __post_init__(self) -> None:
        if not self.roles:
            raise ValueError("a layout needs at least one rank")
        shards = {r.shard for r in self.roles if r.shard >= 0}
        if shards != set(range(self.n_shards)):
            raise ValueError(
                f"layout {self.name!r}: data shards {sorted(shards)} are not 0..{self.n_shards - 1}"
            )

    @property
    def size(self) -> int:
        """Number of ranks (the world size the layout was made for)."""
        return len(self.roles)

    def ranks(
        self, kind: str | None = None, *, stage: int | None = None, group: int | None = None
    ) -> list[int]:
        """Ranks whose role matches every given field, in rank order."""
        return [
            r
            for r, role in enumerate(self.roles)
            if (kind is None or role.kind == kind)
            and (stage is None or role.stage == stage)
            and (group is None or role.group == group)
        ]

    def peers(self, rank: int) -> list[int]:
        """Ranks holding the same parameters as ``rank`` (itself included), in rank order:
        every replica; every worker (each holds a copy of the whole model); the servers
        of the same shard; the same stage of every pipeline; the scheduler alone."""
        role = self.roles[rank]
        if role.kind in ("replica", "worker"):
            return self.ranks(role.kind)
        if role.kind == "server":
            return self.ranks("server", group=role.group)
        if role.kind == "stage":
            return self.ranks("stage", stage=role.stage)
        return [rank]

    @property
    def counts(self) -> dict[str, int]:
        """Ranks per kind, e.g. ``{"worker": 3, "server": 1}``."""
        return dict(Counter(r.kind for r in self.roles))

    def to_json(self) -> str:
        return json.dumps(
            {"name": self.name, "n_shards": self.n_shards, "roles": [asdict(r) for r in self.roles]},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Layout:
        d = json.loads(text)
        return cls(str(d["name"]), tuple(Role(**r) for r in d["roles"]), int(d["n_shards"]))

    def roles_line(self) -> str:
        """The roles in a few words: ``3 workers, 1 server``; for pipelines ``2 pipelines x
        2 stages`` (and ``, 1 scheduler``)."""
        if self.name == "pipelines":
            K = 1 + max(r.stage for r in self.roles)
            P = self.n_shards
            text = f"{P} pipeline{'s' * (P != 1)} x {K} stage{'s' * (K != 1)}"
            if "scheduler" in self.counts:
                text += ", 1 scheduler"
            return text
        return ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in self.counts.items())

    def describe(self) -> str:
        """A table of ranks and roles (``mpiml layout`` prints it)."""
        counts = self.roles_line()
        ranks = f"{self.size} rank{'s' if self.size > 1 else ''}"
        shards = f"{self.n_shards} data shard{'s' if self.n_shards != 1 else ''}"
        lines = [f"layout {self.name}: {ranks} ({counts}), {shards}"]
        lines += [f"  rank {r:>4}: {role.describe()}" for r, role in enumerate(self.roles)]
        return "\n".join(lines)


def data_parallel(n: int) -> Layout:
    """``n`` replicas, replica r reading data shard r (today's algorithms)."""
    if n < 1:
        raise ValueError(f"data_parallel needs n >= 1 ranks (got {n})")
    return Layout("data_parallel", tuple(Role("replica", shard=r, reads="xy") for r in range(n)), n)


def parameter_server(n: int, *, servers: int = 1) -> Layout:
    """``n - servers`` workers (ranks 0.., data shard = rank) and ``servers`` servers
    (the last ranks; server s holds parameter shard s)."""
    if servers < 1:
        raise ValueError(f"parameter_server needs servers >= 1 (got {servers})")
    if n < servers + 1:
        raise ValueError(
            f"parameter_server with {servers} server(s) needs at least {servers + 1} ranks (got {n})"
        )
    workers = n - servers
    roles = [Role("worker", shard=r, reads="xy") for r in range(workers)]
    roles += [Role("server", group=s) for s in range(servers)]
    return Layout("parameter_server", tuple(roles), workers)


def pipelines(n: int, *, stages: int, scheduler: bool = False) -> Layout:
    """``P = (n - scheduler) / stages`` pipelines of ``stages`` ranks; rank ``p*K + k`` is
    stage k of pipeline p; the last rank is the scheduler when asked for."""
    if stages < 1:
        raise ValueError(f"pipelines needs stages >= 1 (got {stages})")
    extra = 1 if scheduler else 0
    body = n - extra
    if body < stages or body % stages:
        need = "P * K + 1" if scheduler else "P * K"
        raise ValueError(
            f"pipelines of {stages} stages{' and a scheduler' if scheduler else ''} need {need} ranks "
            f"for some P >= 1 (got {n})"
        )
    roles = []
    for p in range(body // stages):
        for k in range(stages):
            reads = "xy" if stages == 1 else "x" if k == 0 else "y" if k == stages - 1 else ""
            roles.append(Role("stage", stage=k, group=p, shard=p if reads else -1, reads=reads))
    if scheduler:
        roles.append(Role("scheduler"))
    return Layout("pipelines", tuple(roles), body // stages)
