"""The report's sections about the protocol a run used: staleness (parameter server,
async gossip, DSP, SDPIPE), consensus distance over time, SDPIPE's group sizes and the
bubble per pipeline stage.

:func:`protocol_sections` returns only those that apply to the run, decided from what
it recorded (its algorithm, layout, tables and metrics), never an empty one. Each
section's notes give its definition and source. Reading is per rank and per table;
events are streamed through the reader. No MPI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .pipelines import bubble_section, group_sizes_section
from .section import Cell, Section
from .staleness import staleness_section

__all__ = ["consensus_section", "protocol_sections"]


def consensus_section(run: Any) -> Section | None:
    """Consensus distance over time: the ``consensus_distance`` metric's finite rows;
    None when it is absent or NaN everywhere (async_ps)."""
    rows = run.metrics.get("consensus_distance")
    if rows is None or rows.size == 0:
        return None
    rows = rows[np.isfinite(rows["value"])]
    if rows.size == 0:
        return None
    n = rows.size
    points = {"first": 0, "25%": (n - 1) // 4, "median": (n - 1) // 2, "75%": 3 * (n - 1) // 4, "last": n - 1}
    seen: set[int] = set()
    table: list[list[Cell]] = []
    for label, i in points.items():
        if i in seen:
            continue
        seen.add(i)
        table.append([label, int(rows["step"][i]), float(rows["time"][i]), float(rows["value"][i])])
    notes = [
        "consensus distance = (1/n) Σ_i ‖x_i − x̄‖² over the n replicas' parameters, in float64, at each "
        "evaluation (MixML §6; docs/run-file.md, 'Metrics'); rows at the first, quartile and last evaluations, "
        "the whole series in the JSON data."
    ]
    if not np.any(rows["value"]):
        notes.append("0 at every evaluation: the replicas hold the same parameters (synchronous training).")
    series = {k: rows[k].tolist() for k in ("step", "time", "value")}
    return Section(
        "consensus",
        "Consensus distance over time",
        ["point", "step", "time s", "distance"],
        table,
        notes,
        {"series": series},
    )


def protocol_sections(run: Any) -> list[Section]:
    """The protocol sections that apply to ``run`` (a :class:`mpiml.io.Run`), in order:
    staleness, consensus, groups, bubble."""
    built = (staleness_section(run), consensus_section(run), group_sizes_section(run), bubble_section(run))
    return [s for s in built if s is not None]
