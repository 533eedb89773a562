"""OTF2 archives (Vampir, Scalasca's and Score-P's tools, otf2-print), through the
``otf2`` package, the Score-P team's Python bindings (extra ``otf2``).

Layout: one location group (an MPI process) per rank, named by its role; in it one
location per activity and lane (:mod:`.tracks`: ``compute``, ``in_flight 2``, ``send``...)
holding Enter/Leave records of regions named after the kinds, and one location ``MPI``
holding the rank's point-to-point records: ``MpiSend`` at a send's post and ``MpiRecv``
at its receive's completion, for each message whose both ends are in the window
(communicator: the exported ranks, in rank order; tag: 0; length: the bytes).

Why several locations per rank: OTF2 needs Enter/Leave properly nested and timestamps
monotone on each location, but a rank's in-flight spans (split-phase operations, the
messages of a round) overlap its other work and each other; lanes keep every location's
regions disjoint. Timestamps are integer ns since the window's earliest event (clock
properties: resolution 1e9 ticks/s); the run clock's time of tick 0 is in the archive's
description.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .tracks import GROUPS, placed, track_name
from .window import Scan, Window

__all__ = ["write_otf2"]

TICKS = 10**9  # timer resolution: ns
CHUNK_BYTES = 256 * 1024  # an event writer's buffer chunk (OTF2's smallest; its default, 1 MiB, x locations)


def write_otf2(run: Any, ranks: Sequence[int], window: Window, found: Scan, out: Path) -> int:
    """Write ``ranks``' events in ``window`` as the OTF2 archive ``out`` (a folder holding
    ``traces.otf2``, ``traces.def`` and ``traces/``); returns the number of regions
    (events) written. ImportError without the ``otf2`` package. Memory: one chunk of
    events, the rank's messages in flight (MpiRecv records wait in a heap until their
    time comes) and ``found.paired``."""
    import otf2
    from otf2.enums import GroupType, Paradigm

    index = {r: i for i, r in enumerate(ranks)}  # rank in the exported communicator
    t_zero = found.t0

    def tick(t: float) -> int:
        return max(0, round((t - t_zero) * TICKS))

    n = 0
    with otf2.writer.open(str(out), timer_resolution=TICKS, chunk_size_events=CHUNK_BYTES) as archive:
        archive.description = f"mpiml run {run.path}; tick 0 = {t_zero!r} s on the run clock"
        archive.creator = "mpiml trace export"
        defs = archive.definitions
        root = defs.system_tree_node("mpiml run")
        groups = {r: defs.location_group(found.names[r], system_tree_parent=root) for r in ranks}
        mpi = {r: archive.event_writer("MPI", group=groups[r]) for r in ranks}
        locations = [w._location for w in mpi.values()]  # noqa: SLF001 (the package exposes no getter)
        defs.group(
            "mpiml locations", group_type=GroupType.COMM_LOCATIONS, paradigm=Paradigm.MPI, members=locations
        )
        members = defs.group(
            "exported ranks", group_type=GroupType.COMM_GROUP, paradigm=Paradigm.MPI, members=locations
        )
        comm = defs.comm("exported ranks", group=members)
        regions: dict[str, Any] = {}
        for r in ranks:
            writers: dict[tuple[str, int], Any] = {}
            pending: list[tuple[int, int, int, int]] = []  # (tick, order, sender, bytes) of MpiRecv
            order = 0
            for rows in placed(run, r, window, found):
                for (_step, kind, t0, t1, nbytes, peer, _msg), is_send, fid, g, lane, new in rows:
                    group = GROUPS[g]
                    if new:
                        writers[group, lane] = archive.event_writer(track_name(group, lane), group=groups[r])
                    w = writers[group, lane]
                    region = regions.get(kind)
                    if region is None:
                        region = regions[kind] = defs.region(kind, description=run.kinds.get(kind, "other"))
                    a, b = tick(t0), tick(t1)
                    w.enter(a, region)
                    while pending and pending[0][0] <= a:
                        at, _, sender, length = heapq.heappop(pending)
                        mpi[r].mpi_recv(at, index[sender], comm, 0, length)
                    if fid and is_send:
                        mpi[r].mpi_send(a, index[peer], comm, 0, nbytes)
                    elif fid:
                        heapq.heappush(pending, (b, order, peer, nbytes))
                        order += 1
                    w.leave(b, region)
                    n += 1
            for at, _, sender, length in sorted(pending):
                mpi[r].mpi_recv(at, index[sender], comm, 0, length)
    return n
