"""Pipeline sections of a run report: the bubble per stage (gpipe, 1f1b, dsp, sdpipe)
beside the schedule's ideal, and SDPIPE's group sizes.

The bubble reads each stage rank's events once, in chunks (the reader's
``iter_events``), keeping two numbers per wait kind; the ideal comes from replaying the
schedule in :mod:`mpiml.pipeline.simulate` with unit op costs. Group sizes read the
scheduler's two tables. No MPI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kinds import kinds_in
from ..pipeline import bubble_fraction, dsp, dsp_depths, gpipe, one_f_one_b, simulate
from .section import Cell, Section
from .staleness import dsp_config, stage_ranks

__all__ = ["bubble_section", "group_sizes_section", "ideal_bubble", "stage_wait"]

PIPELINES = ("gpipe", "1f1b", "dsp", "sdpipe")
SIM_STEPS = 64  # DSP batches replayed for its ideal (warm-up and drain amortised as in a short run)
WHY = {0: "all ready", 1: "deadline", 2: "connected", 3: "sync"}  # sdpipe_groups.why (docs/sdpipe.md)


def stage_wait(run: Any, r: int, wait_kinds: frozenset[str]) -> tuple[float, dict[str, float]]:
    """(wall, {wait kind: seconds}) of rank r over its training steps (events with
    step >= 0): wall = last end - first start; one pass over the rank's events."""
    t0, t1 = np.inf, -np.inf
    waits = dict.fromkeys(sorted(wait_kinds), 0.0)
    names = run.kind_names
    for ev in run.iter_columns(r, ("step", "kind", "t_start", "t_end")):
        train = ev["step"] >= 0
        if not train.any():
            continue
        t0, t1 = min(t0, float(ev["t_start"][train].min())), max(t1, float(ev["t_end"][train].max()))
        dur = np.bincount(
            ev["kind"][train], weights=(ev["t_end"] - ev["t_start"])[train], minlength=len(names)
        )
        for kind in waits:
            if kind in names:
                waits[kind] += float(dur[names.index(kind)])
    return (t1 - t0 if t1 > t0 else 0.0), waits


def ideal_bubble(run: Any) -> tuple[list[float] | None, str]:
    """Per stage, the idle fraction of the schedule replayed with unit forward and
    backward costs (None for sdpipe), and a note naming the schedule."""
    a = run.config.get("algorithm", {})
    name, K = run.algorithm, int(a.get("stages", 1))
    if name in ("gpipe", "1f1b"):
        m = int(a.get("micro_batches", 1))
        trace = simulate((gpipe if name == "gpipe" else one_f_one_b)(K, m))
        ideal = (K - 1) / (m + K - 1)
        note = (
            f"ideal: {name}(K={K}, m={m}) replayed with unit costs (mpiml.pipeline.simulate): "
            f"bubble {bubble_fraction(trace):.3f} = (K-1)/(m+K-1) = {ideal:.3f} (GPipe, Huang et al. 2019, §2.2)."
        )
    elif name == "dsp":
        p, m_ = dsp_config(run.config)
        steps = min(int(run.config["run"]["steps"]), SIM_STEPS)
        trace = simulate(dsp(p, m_, steps), depths=dsp_depths(p, m_))
        note = (
            f"ideal: DSP(p={p}; m={m_}) over {steps} batches replayed with unit costs (recompute 1 unit; "
            f"mpiml.pipeline.simulate with DSP's queue depths): bubble {bubble_fraction(trace):.3f}, "
            "warm-up and drain only (Xu et al., DSP, Figure 2)."
        )
    else:
        return None, "no ideal for sdpipe: its groups depend on timing (docs/sdpipe.md)."
    return [trace.idle(k) / trace.makespan for k in range(K)], note


def bubble_section(run: Any) -> Section | None:
    """Bubble per stage rank: time in wait-category kinds over the rank's wall."""
    stages = stage_ranks(run)
    if run.algorithm not in PIPELINES or not stages:
        return None
    wait_kinds = kinds_in("wait", kinds=run.kinds)
    ideal, ideal_note = ideal_bubble(run)
    rows: list[list[Cell]] = []
    per_rank: dict[str, Any] = {}
    for r, (k, p) in sorted(stages.items(), key=lambda x: (x[1], x[0])):
        wall, waits = stage_wait(run, r, wait_kinds)
        waited = sum(waits.values())
        frac = waited / wall if wall > 0 else None
        shown = {kd: v for kd, v in waits.items() if v > 0}
        rows.append([r, k, p, wall, waited, frac, None if ideal is None else ideal[k]])
        per_rank[str(r)] = {"stage": k, "pipeline": p, "wall": wall, "wait": shown, "bubble": frac}
    kinds = ", ".join(sorted(wait_kinds)) or "none"
    notes = [
        "bubble = time in wait-category kinds / the stage's wall (first start to last end of its events at "
        f"steps >= 0); wait kinds from the run's kinds table: {kinds} (docs/run-file.md, 'Events').",
        ideal_note,
    ]
    if ideal is not None:
        notes.append(
            "measured and ideal differ by unequal stage costs, the loop's own time, evaluations and messages."
        )
    return Section(
        "bubble",
        f"Bubble per stage ({run.algorithm})",
        ["rank", "stage", "pipeline", "wall s", "wait s", "bubble", "ideal"],
        rows,
        notes,
        {"per_rank": per_rank, "ideal": ideal},
    )


def group_sizes_section(run: Any) -> Section | None:
    """SDPIPE's groups per stage, from the scheduler's sdpipe_groups and sdpipe_members."""
    groups = run.table("sdpipe_groups")
    if not groups:
        return None
    members = run.table("sdpipe_members")
    rows: list[list[Cell]] = []
    data: dict[str, Any] = {}
    notes = []
    for r, g in sorted(groups.items()):
        mem = members.get(r)
        for k in np.unique(g["stage"]).tolist():
            gs = g[g["stage"] == k]
            sizes = gs["size"].astype(np.int64)
            vals, counts = np.unique(sizes, return_counts=True)
            why = {
                WHY.get(int(w), str(w)): int(c)
                for w, c in zip(*np.unique(gs["why"], return_counts=True), strict=True)
            }
            if mem is not None:  # the members table must list as many replicas as each group's size
                ms = mem[mem["stage"] == k]
                n_mem = np.unique(ms["seq"], return_counts=True)
                by_seq = dict(zip(n_mem[0].tolist(), n_mem[1].tolist(), strict=True))
                bad = sum(by_seq.get(int(s), 0) != int(z) for s, z in zip(gs["seq"], sizes, strict=True))
                if bad:
                    notes.append(f"stage {k}: {bad} groups whose member rows disagree with their size")
            rows.append(
                [
                    k,
                    int(sizes.size),
                    float(sizes.mean()),
                    ", ".join(f"{v}: {c}" for v, c in zip(vals.tolist(), counts.tolist(), strict=True)),
                    ", ".join(f"{w} {c}" for w, c in why.items()),
                    int((gs["kind"] == 1).sum()),
                    int((gs["kind"] == 2).sum()),
                ]
            )
            data[f"stage {k}"] = {"values": vals.tolist(), "counts": counts.tolist()}
    notes.insert(
        0,
        "one row per stage: groups the scheduler closed (sdpipe_groups), their sizes (replicas averaged, of P), "
        "why each closed (all ready / deadline / connected: a bound round / sync), bound rounds (kind 1) and "
        "sync rounds (kind 2) (docs/sdpipe.md, 'What is recorded'; Miao et al., SDPipe, appendix B.1.1).",
    )
    return Section(
        "groups",
        "SDPIPE groups per stage",
        ["stage", "groups", "mean size", "sizes", "closed by", "bound rounds", "sync rounds"],
        rows,
        notes,
        {"sizes": data},
    )
