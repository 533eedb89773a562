"""The staleness section of a run report: how old the parameters were that an update
used, in each protocol's own terms (parameter server, async gossip, DSP, SDPIPE).

Each measure is computed from what the run recorded (or, for DSP, from the schedule the
run's config fixes) and cited in the section's notes; a run whose algorithm has no
staleness (sgd, 1f1b, gpipe, ...) gets no section. Pure numpy over one table at a time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipeline.dsp import Timetable
from .section import Cell, Section

__all__ = ["dsp_staleness", "histogram", "staleness_section", "summary"]

COLUMNS = ["protocol", "scope", "n", "min", "median", "p95", "max", "mean"]


def stage_ranks(run: Any) -> dict[int, tuple[int, int]]:
    """{rank: (stage k, pipeline p)} of every pipeline stage rank that was read."""
    out = {}
    for r in run.ranks:
        ro = run.role_info(r)
        if ro is not None and ro.get("kind") == "stage":
            out[r] = (int(ro.get("stage", 0)), int(ro.get("group", 0)))
    return out


def histogram(values: np.ndarray) -> dict[str, list[int]]:
    """Counts of integer values: {"values": [v, ...], "counts": [c, ...]} over the values
    that occur (ascending); floats are floored to whole units first."""
    v = np.floor(np.asarray(values, dtype=np.float64)).astype(np.int64)
    vals, counts = np.unique(v, return_counts=True)
    return {"values": vals.tolist(), "counts": counts.tolist()}


def summary(protocol: str, scope: str, values: np.ndarray) -> list[Cell]:
    """One table row: n, min, median, p95, max, mean of ``values`` (None when empty)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [protocol, scope, 0, None, None, None, None, None]
    q = np.percentile(v, [0, 50, 95, 100])
    return [protocol, scope, int(v.size), *(float(x) for x in q), float(v.mean())]


def _ps(run: Any, rows: list[list[Cell]], data: dict[str, Any], notes: list[str]) -> None:
    """Parameter server: staleness = version - version_read of every ps_apply row."""
    logs = run.table("ps_apply")
    if not logs:
        return
    every = []
    for r, log in logs.items():
        ro = run.role_info(r)
        shard = f"shard {ro['group']}" if ro and ro.get("kind") == "server" else f"rank {r}"
        s = (log["version"] - log["version_read"]).astype(np.int64)
        every.append(s)
        rows.append(summary("parameter server", shard, s))
        for w in np.unique(log["worker"]):
            rows.append(summary("parameter server", f"{shard}, worker {int(w)}", s[log["worker"] == w]))
        data.setdefault("histograms", {})[shard] = histogram(s)
    data["histogram"] = histogram(np.concatenate(every))
    notes.append(
        "parameter server: staleness of an applied update = version - version_read (updates applied to the "
        "shard between the pull it was computed from and its apply), from each server's ps_apply table "
        "(docs/run-file.md, 'The parameter server's tables'; SSP: Ho et al. 2013)."
    )


def _gossip(run: Any, rows: list[list[Cell]], data: dict[str, Any], notes: list[str]) -> None:
    """Async gossip: the age of the drained pushes (exchanges rows with peer -1)."""
    logs = run.table("exchanges")
    if not logs:
        return
    every, empty = [], 0
    for r, log in sorted(logs.items()):
        drains = log[log["peer"] == -1]
        got = drains[drains["pushes"] > 0]
        empty += int(drains.size - got.size)
        every.append(got["age"])
        rows.append(summary("async gossip", f"rank {r}", got["age"]))
    ages = np.concatenate(every)
    data["histogram"] = histogram(ages)
    notes.append(
        "async gossip: staleness of a drain = the draining rank's step minus the mean step at which the "
        "pushes it took were sent (in steps; the exchanges table's 'age', mpiml/protocols/async_gossip.py); "
        f"histogram by whole steps (floored). {empty} drains found nothing and are left out."
    )


def dsp_config(cfg: dict[str, Any]) -> tuple[list[int], list[int]]:
    """DSP(p; m) of a run's config dict: ``algorithm.dsp_p`` / ``dsp_m``, or both empty,
    the default of :func:`mpiml.algorithms.pipeline.dsp_config` (p_k = 1, m_k = 2(K-1-k);
    repeated here so that reading a report does not import the MPI programs)."""
    a = cfg["algorithm"]
    K = int(a.get("stages", 1))
    p, m = list(a.get("dsp_p") or []), list(a.get("dsp_m") or [])
    if not p and not m:
        return [1] * (K - 1) + [0], [2 * (K - 1 - k) for k in range(K)]
    return [int(x) for x in p], [int(x) for x in m]


def dsp_staleness(p: list[int], m: list[int], steps: int) -> list[np.ndarray]:
    """Per stage k, per batch n = 0..steps-1: the updates of stage k applied between
    batch n's forward and its backward, from DSP's timetable (Figure 2): stage k forwards
    n at global step F = n + d_k and backwards it at B = F + m_k, and it updates once per
    backward, so the count is backwards(B - 1) - backwards(F - 1) = min(n, m_k)
    (:meth:`Timetable.counts`). In the steady state it is m_k = Δt_k (§3.1)."""
    table = Timetable(p, m, steps)
    out = []
    for k in range(len(p)):
        n = np.arange(steps)
        f, b = n + table.d[k], n + table.d[k] + table.m[k]
        # Timetable.counts(k, upto)[1] as arithmetic over all n: clip(upto - d_k - m_k + 1, 0, steps)
        done = lambda upto, k=k: np.clip(upto - table.d[k] - table.m[k] + 1, 0, steps)  # noqa: E731
        out.append(done(b - 1) - done(f - 1))
    return out


def _dsp(run: Any, rows: list[list[Cell]], data: dict[str, Any], notes: list[str]) -> None:
    name = run.algorithm
    K = int(run.config.get("algorithm", {}).get("stages", 1))
    if name not in ("dsp", "sdpipe") or K < 2:
        return
    p, m = dsp_config(run.config)
    per = dsp_staleness(p, m, int(run.config["run"]["steps"]))
    hist = data.setdefault("histograms", {})
    for k, s in enumerate(per):
        rows.append(summary("dsp", f"stage {k} (m_{k} = {m[k]})", s))
        hist[f"stage {k}"] = histogram(s)
    if "histogram" not in data:
        data["histogram"] = histogram(np.concatenate(per))
    notes.append(
        f"dsp: Layer-wise Staleness Δt_k = t_(2K-1-k) - t_k = m_k (Xu et al., DSP, §3.1 and §3.3: 'm_k also "
        f"represents the Layer-wise Staleness Δt_k'), here DSP(p={p}; m={m}); per batch, the updates of the "
        "stage applied between its forward and its backward, min(n, m_k), from the run's config and the "
        "timetable (mpiml.pipeline.dsp.Timetable, Figure 2), not measured."
        + (
            " SDPIPE restarts the timetable at each sync round, so its warm-up rows recur."
            if name == "sdpipe"
            else ""
        )
    )


def _sdpipe(run: Any, rows: list[list[Cell]], data: dict[str, Any], notes: list[str]) -> None:
    """SDPIPE: batch-id spread of the members of a group (the replicas' clock difference)."""
    logs = run.table("sdpipe_average")
    if not logs:
        return
    stages = stage_ranks(run)
    by_group: dict[tuple[int, int], list[int]] = {}
    for r, log in logs.items():
        k = stages.get(r, (0, 0))[0]
        for seq, batch in zip(log["seq"].tolist(), log["batch"].tolist(), strict=True):
            by_group.setdefault((k, seq), []).append(batch)
    spread: dict[int, list[int]] = {}
    singles = 0
    for (k, _), batches in sorted(by_group.items()):
        if len(batches) < 2:
            singles += 1
            continue
        spread.setdefault(k, []).append(max(batches) - min(batches))
    if not spread:
        return
    allv = np.concatenate([np.asarray(v) for v in spread.values()])
    for k, v in sorted(spread.items()):
        rows.append(summary("sdpipe", f"stage {k}", np.asarray(v)))
    data.setdefault("histograms", {})["sdpipe"] = histogram(allv)
    data["histogram"] = histogram(allv)
    bound = run.config.get("algorithm", {}).get("ssp_bound")
    notes.append(
        "sdpipe: staleness of a group = max - min of its members' batch ids (how many updates apart the "
        "averaged replicas' parameters are; SSP's clock difference), from every stage's sdpipe_average "
        f"(batch, seq) joined by group; {singles} groups of one member have none. Bound rounds every "
        f"ssp_bound = {bound} batches connect all replicas (docs/sdpipe.md, 'How the scheduler forms groups'; "
        "the condition of the SDPIPE appendix's Lemma 2, Eq. 7, on the product of the W_k)."
    )


def staleness_section(run: Any) -> Section | None:
    """The staleness section, or None when the run records no staleness."""
    rows: list[list[Cell]] = []
    data: dict[str, Any] = {}
    notes: list[str] = []
    for part in (_ps, _gossip, _dsp, _sdpipe):
        part(run, rows, data, notes)
    if not rows:
        return None
    title = "Staleness (" + ", ".join(dict.fromkeys(str(r[0]) for r in rows)) + ")"
    notes.append(
        "n: updates (or drains, groups, batches) measured; min/median/p95/max/mean in updates (steps)."
    )
    return Section("staleness", title, list(COLUMNS), rows, notes, data)
