"""SDPIPE under heterogeneity (issue #14): throughput of ``sdpipe`` against synchronous
AllReduce of stage replicas (``1f1b`` with P pipelines, #9's baseline) and DSP with P
pipelines (gradient AllReduce at every update), with one pipeline 2x slower and with
random stragglers; SDPIPE's group-size distribution, why its groups closed, its waits.

Every point is a real training job (``mpiexec -n N python -m mpi4py -m mpiml.cli train``,
``checkpoint.every = 0``) whose run file (:func:`mpiml.io.load_run`) gives the numbers:

    python benchmarks/sdpipe.py --quick     # P = 3, K = 1 only, one round, short runs: ~1-2 min
    python benchmarks/sdpipe.py [--out PATH] [--overwrite] [--rounds R]

**Layouts.** P = 3 pipelines of K = 1 stage (sdpipe: 3 + 1 scheduler = 4 ranks; the
baselines 3 ranks) and P = 2 pipelines of K = 2 stages (5 ranks; baselines 4).

**The timed model** (``model.name = "timed"``, :class:`mpiml.models.timed.TimedStage`):
ranks sleep instead of computing, so 4-5 ranks on 2 cores measure the protocols, not the
CPU. ``--compute-ms`` C is one batch's forward + backward through the whole model:
stage k sleeps C/(3K) per forward, 2C/(3K) per backward (DSP and SDPIPE recompute the
forward of stages before the last: one forward more). ``1f1b`` runs m = 1 micro-batch
at K = 1 (plain synchronous data parallelism) and m = 2 at K = 2, with C/m per
micro-batch pass, so a batch costs C of compute in every algorithm (plus DSP's
recompute).

**Conditions** (``[straggler]``, :mod:`mpiml.straggler`), each run against the same
algorithm's run without stragglers, in the same benchmark run:

- *slow pipeline*: every rank of pipeline P-1 (world ranks (P-1)K .. PK-1) computes 2x
  slower throughout (``straggler.ranks``, ``factor = 2``);
- *random*: each rank, at each step, with probability 0.1, computes every op of that
  step ``--percent`` % slower (default 100 %: h = the op's own time, i.e. C/(3K) ms more
  for a forward and 2C/(3K) ms more for a backward: 20 and 40 ms at K = 1, C = 60). The
  artifact draws per forward/backward; mpiml's straggler draws per rank and step and
  slows all of the step's ops, the same mean extra (p h per op) in coarser lumps.

SDPIPE's keys: ``wait_ms`` 1, ``wait_max_ms`` 10, ``ssp_bound`` 10 (the defaults);
``sync_every = run.steps`` (one sync round, at the last batch: the default, one epoch of a
shard, would add a meeting point every epoch) and ``run.eval_every = run.steps`` (an
evaluation is a meeting point too). A fourth algorithm, *sdpipe, no bound rounds*
(``ssp_bound = run.steps``; not the issue's setting), runs without stragglers and with
the slow pipeline only: it measures what the bound rounds cost the fast pipelines (a
bound round is aligned on a batch id, so a period in which the slow replica met no fast
one ends when the slow replica reaches that batch: the fast ones wait for it to catch up).

**Throughput.** A batch of pipeline p is completed at the end of its update on the
pipeline's stage 0 (the ``stage_update`` event of world rank pK: the optimizer step, the
last compute of a batch through the pipeline). Time 0 of a run is its first compute event
(forward) on any stage. The *window* runs from there to T, the moment the first pipeline
completes its second-to-last batch (the last batch is a sync round for SDPIPE and a drain
for DSP: a meeting point, left out). For the synchronous baseline every pipeline completes
each batch at once, so the window is the whole run; under SDPIPE the fast pipelines reach
the end first, and the window is the time all P pipelines are still training.

- (a) *aggregate*: batches completed by all pipelines in the window / its length;
- (b) *peers*: batches completed by pipelines 0..P-2 (the slow one's peers) in the
  window / its length, i.e. their mean rate x (P-1).

Each as a ratio to the same algorithm's run without stragglers. Interval: the window is
cut into ``BLOCKS`` equal spans of time, each span's rate is a sample; the rounds'
samples are pooled; the ratio's 95 % interval is the bootstrap of the two samples
(:func:`_bench.ratio_ci`), the rates' intervals the median's (:func:`_bench.median_ci`).

**The arithmetic bound.** With one of P pipelines at half speed, the aggregate cannot
exceed (P - 1/2)/P of the no-straggler rate whatever the protocol (0.83 for P = 3, 0.75 for
P = 2): the slow pipeline completes half as many batches in the same time. The issue's
goal "sdpipe keeps >= 0.9x of its no-straggler throughput" cannot hold for the aggregate;
it is judged where it can mean something: (b) the peers' rate (the fast pipelines are
not dragged down: >= 0.9), and the aggregate against 0.9 x the bound. The synchronous
baseline's aggregate "drops to about 0.5x" is reported beside.

**Groups** (SDPIPE only, the scheduler's table ``sdpipe_groups``,
:data:`mpiml.protocols.sdpipe.GROUP_DTYPE`): group sizes and why each closed (all P
ready, deadline, connected at a bound round, sync round), over the groups opened in the
window (after it, the fast pipelines wait at the final sync round and the slow one
averages alone); the whole run's counts are in the JSON. Mean wait per update: the
stage ranks' ``sdpipe_average.waited`` (ready signal to reply), over the updates of the
window's batches (the last batch's sync round left out).

Writes the JSON (``--out``; default results/benchmarks/sdpipe.json, or a fresh temporary
file with ``--quick``) after every run, ``"complete": false`` until the end, and the .md
and the PNG (ratios and group sizes; matplotlib, Agg) beside it; an existing file is
replaced only with ``--overwrite``. The plot needs matplotlib (:mod:`mpiml.report.plots`):
``pip install -e .[plots]``; ``--redraw`` draws it again from the JSON, running nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import _bench  # noqa: E402

from mpiml.pipeline.groups import WHY  # noqa: E402

BLOCKS = 8
GOAL = 0.9  # sdpipe keeps >= 0.9x of its no-straggler throughput (issue #14)
SYNC_DROP = 0.5  # "the synchronous baseline drops to about 0.5x"
PROBABILITY = 0.1  # the artifact's knob
NO_BOUND = "sdpipe, no bound rounds"  # ssp_bound = run.steps: the bound rounds' share, measured
ALGORITHMS = ("sdpipe", "1f1b", "dsp", NO_BOUND)
CONDITIONS = ("none", "random", "slow pipeline")


# ---------------------------------------------------------------- launching and reading


class Bench:
    def __init__(self, a: argparse.Namespace, out: Path, res: _bench.Results) -> None:
        self.a, self.out, self.res = a, out, res

    def train(self, name: str, n: int, sets: dict[str, Any]) -> Path:
        return _bench.train_job(self.out, name, n, sets, self.a.timeout)

    def point(self, alg: str, P: int, K: int, cond: str, rnd: int) -> dict:
        a = self.a
        n = P * K + alg.startswith("sdpipe")
        sets = job(alg, P, K, a.compute_ms, a.steps, seed=1 + rnd)
        sets.update(straggler(cond, P, K, a.percent))
        label = f"{alg} P={P} K={K} {cond}"
        name = f"{label} r{rnd}".translate(str.maketrans(" =", "__"))
        t0 = time.perf_counter()
        try:
            row = measure(self.train(name, n, sets), P, K)
        except RuntimeError as exc:
            row = {"error": str(exc)}
        row.update(
            label=label, algorithm=alg, P=P, K=K, condition=cond, round=rnd, ranks=n, job=sets,
            wall_s=time.perf_counter() - t0,
        )  # fmt: skip
        self.res.doc["rows"].append(row)
        self.res.save()
        if "error" in row:
            print(f"  {label:<32} r{rnd} FAILED: {row['error'][:400]}", flush=True)
        else:
            g = row.get("groups")
            extra = f"  groups mean size {g['mean_size']:.2f}, wait {1e3 * row['wait_s']:.1f} ms" if g else ""
            print(
                f"  {label:<32} r{rnd} aggregate {row['aggregate']:6.2f} b/s  peers {row['peers']:6.2f} b/s  "
                f"window {row['window_s']:.2f} s{extra}  ({row['wall_s']:.1f} s)",
                flush=True,
            )
        return row


def job(alg: str, P: int, K: int, compute_ms: float, steps: int, seed: int) -> dict[str, Any]:
    sets: dict[str, Any] = {
        "algorithm.name": alg,
        "algorithm.stages": K,
        "algorithm.pipelines": P,
        "run.seed": seed,
        "run.steps": steps,
        "run.eval_every": steps,
        "model.name": "timed",
        "model.params": 20_000,
        "model.compute_ms": compute_ms,
        "model.compute": "sleep",
        "data.batch_size": 32,
        "optimizer.name": "sgd",
        "optimizer.lr": 0.01,
        "checkpoint.every": 0,
        "trace.flush_every": steps,
    }
    if alg == "1f1b":
        m = 1 if K == 1 else 2
        sets.update({"algorithm.micro_batches": m, "model.compute_ms": compute_ms / m})
    if alg.startswith("sdpipe"):
        sets.update(
            {
                "algorithm.name": "sdpipe",
                "algorithm.sync_every": steps,
                "algorithm.wait_ms": 1.0,
                "algorithm.wait_max_ms": 10.0,
                "algorithm.ssp_bound": steps if alg == NO_BOUND else 10,
            }
        )
    return sets


def straggler(cond: str, P: int, K: int, percent: float) -> dict[str, Any]:
    if cond == "slow pipeline":
        ranks = list(range((P - 1) * K, P * K))
        return {"straggler.ranks": f"[{', '.join(map(str, ranks))}]", "straggler.factor": 2.0}
    if cond == "random":
        return {"straggler.probability": PROBABILITY, "straggler.percent": percent}
    return {}


def measure(run_dir: Path, P: int, K: int) -> dict:
    """The window, the rates (aggregate and the peers') and their blocks; for sdpipe the
    groups and the waits (see the module docstring)."""
    from mpiml.io import load_run

    run = load_run(run_dir)
    n = int(run.config["run"]["steps"])
    if n < 2 * BLOCKS:
        raise RuntimeError(f"{run_dir.name}: {n} steps: need at least {2 * BLOCKS}")
    t0 = min(
        float(run.events[r]["t_start"][run.events[r]["kind"] == "forward"].min())
        for r in range(P * K)
        if np.any(run.events[r]["kind"] == "forward")
    )
    done = []  # per pipeline: completion times of its batches (stage 0's updates)
    for p in range(P):
        ev = run.events[p * K]
        t = np.sort(ev["t_end"][ev["kind"] == "stage_update"])
        if t.size != n:
            raise RuntimeError(f"{run_dir.name}: pipeline {p} has {t.size} stage-0 updates, not {n}")
        done.append(t)
    T = min(float(t[n - 2]) for t in done)
    span = T - t0
    edges = np.linspace(t0, T, BLOCKS + 1)
    per_block = np.array([np.histogram(t[t <= T], bins=edges)[0] for t in done])  # pipeline x block
    width = span / BLOCKS
    agg_blocks = per_block.sum(axis=0) / width
    peer_blocks = per_block[: P - 1].sum(axis=0) / width
    counts = [int(np.sum(t <= T)) for t in done]
    row: dict[str, Any] = {
        "window_s": span,
        "t0": t0,
        "T": T,
        "batches_in_window": counts,
        "aggregate": sum(counts) / span,
        "peers": sum(counts[: P - 1]) / span,
        "aggregate_blocks": agg_blocks.tolist(),
        "peer_blocks": peer_blocks.tolist(),
        "finish_s": [float(t[-1]) - t0 for t in done],
    }
    if run.config["algorithm"]["name"] == "sdpipe":
        row.update(groups_of(run, P, K, t0, T, n, [c - 1 for c in counts]))
    return row


def groups_of(run: Any, P: int, K: int, t0: float, T: float, n: int, last: list[int]) -> dict:
    """Group sizes and why they closed (groups opened in [t0, T]); waits per update; the
    bound rounds that waited, and the peers' seconds waited at bound batches in the window
    (``last[p]``: pipeline p's last batch completed by T)."""
    sched = P * K
    bound = int(run.config["algorithm"]["ssp_bound"])
    g = run.tables[sched]["sdpipe_groups"]
    inside = (g["opened"] >= t0) & (g["opened"] <= T)

    def stats(sel: np.ndarray) -> dict:
        sizes = g["size"][sel]
        return {
            "n": int(sel.sum()),
            "mean_size": float(sizes.mean()) if sizes.size else float("nan"),
            "sizes": {str(s): int(np.sum(sizes == s)) for s in range(1, P + 1)},
            "why": {w: int(np.sum(g["why"][sel] == i)) for i, w in enumerate(WHY)},
        }

    waits, waits_peers = [], []
    for p in range(P):
        for k in range(K):
            a = run.tables[p * K + k]["sdpipe_average"]
            w = a["waited"][a["batch"] < n - 1]
            waits.append(w)
            if p < P - 1:
                waits_peers.append(w)
    allw = np.concatenate(waits)
    peerw = np.concatenate(waits_peers)
    # bound rounds that waited (a round met at its first arrival is a regular group, not here)
    rounds = g[inside & (g["kind"] == 1)]
    bound_wait = []  # per peer pipeline's stage ranks: seconds waited in the updates of bound batches
    for p in range(P - 1):
        for k in range(K):
            a = run.tables[p * K + k]["sdpipe_average"]
            b = a["batch"]
            at = ((b + 1) % bound == 0) & (b < n - 1) & (b <= last[p])
            bound_wait.append(float(a["waited"][at].sum()))
    return {
        "groups": {**stats(inside), "per_stage": [stats(inside & (g["stage"] == k)) for k in range(K)]},
        "groups_whole_run": stats(np.ones(g.size, dtype=bool)),
        "wait_s": float(allw.mean()),
        "wait_s_peers": float(peerw.mean()),
        "wait_s_slow": float(np.concatenate(waits[(P - 1) * K :]).mean()),
        "bound_rounds_waited": int(rounds.size),
        "bound_round_s": float((rounds["closed"] - rounds["opened"]).sum()),
        "peers_bound_wait_s": float(np.mean(bound_wait)) if bound_wait else 0.0,
    }


# ---------------------------------------------------------------- verdicts


def pooled(rows: list[dict], label: str) -> dict | None:
    got = [r for r in rows if r["label"] == label and "error" not in r]
    if not got:
        return None
    out = dict(got[0])
    for key in ("aggregate_blocks", "peer_blocks"):
        out[key] = [x for r in got for x in r[key]]
    for key in ("aggregate", "peers", "window_s"):
        out[key] = float(np.mean([r[key] for r in got]))
    if "groups" in out:
        for key in ("wait_s", "wait_s_peers", "wait_s_slow", "bound_rounds_waited", "peers_bound_wait_s"):
            out[key] = float(np.mean([r[key] for r in got]))
        g = [r["groups"] for r in got]
        n = sum(x["n"] for x in g)
        sizes = {s: sum(x["sizes"][s] for x in g) for s in g[0]["sizes"]}
        out["groups"] = {
            "n": n,
            "sizes": sizes,
            "mean_size": sum(int(s) * c for s, c in sizes.items()) / n if n else float("nan"),
            "why": {w: sum(x["why"][w] for x in g) for w in WHY},
        }
    out["rounds"] = len(got)
    return out


def verdicts(doc: dict) -> list[dict]:
    rows = doc["rows"]
    out = []
    for P, K in doc["policy"]["layouts"]:
        bound = (P - 0.5) / P
        for alg in ALGORITHMS:
            base = pooled(rows, f"{alg} P={P} K={K} none")
            if base is None:
                continue
            for cond in CONDITIONS:
                r = pooled(rows, f"{alg} P={P} K={K} {cond}")
                if r is None:
                    continue
                agg = _bench.ratio_ci(r["aggregate_blocks"], base["aggregate_blocks"])
                peer = _bench.ratio_ci(r["peer_blocks"], base["peer_blocks"])
                v: dict[str, Any] = {
                    "algorithm": alg,
                    "P": P,
                    "K": K,
                    "condition": cond,
                    "rounds": r["rounds"],
                    "aggregate": {
                        "batches_per_s": r["aggregate"],
                        "median_ci": _bench.median_ci(r["aggregate_blocks"]),
                        "ratio": {"median": agg[0], "ci95": [agg[1], agg[2]]},
                        "ratio_of_means": r["aggregate"] / base["aggregate"],
                    },
                    "peers": {
                        "batches_per_s": r["peers"],
                        "median_ci": _bench.median_ci(r["peer_blocks"]),
                        "ratio": {"median": peer[0], "ci95": [peer[1], peer[2]]},
                        "ratio_of_means": r["peers"] / base["peers"],
                    },
                    "window_s": r["window_s"],
                }
                if "groups" in r:
                    v["groups"] = r["groups"]
                    v["wait_ms"] = 1e3 * r["wait_s"]
                    v["wait_ms_peers"] = 1e3 * r["wait_s_peers"]
                    v["wait_ms_slow"] = 1e3 * r["wait_s_slow"]
                    v["bound_rounds_waited"] = r["bound_rounds_waited"]  # per run, mean over rounds
                    v["peers_bound_wait_share"] = r["peers_bound_wait_s"] / r["window_s"]
                if cond == "slow pipeline":
                    v["bound"] = bound
                    if alg == NO_BOUND:
                        v["verdict_peers"] = _bench.verdict(
                            peer, GOAL, True, f"{NO_BOUND} P={P} K={K}: the peers' rate, slowed / not"
                        )
                    if alg == "sdpipe":
                        v["verdict_peers"] = _bench.verdict(
                            peer,
                            GOAL,
                            True,
                            f"sdpipe P={P} K={K}: the slow pipeline's peers' rate, slowed / not",
                        )
                        v["verdict_aggregate"] = _bench.verdict(
                            agg,
                            GOAL * bound,
                            True,
                            f"sdpipe P={P} K={K}: aggregate rate, slowed / not (0.9 x the bound {bound:.3f})",
                        )
                        v["verdict_literal"] = _bench.verdict(
                            agg, GOAL, True, f"sdpipe P={P} K={K}: aggregate rate, slowed / not (literal 0.9)"
                        )
                out.append(v)
    return out


# ---------------------------------------------------------------- the outputs


def plot(doc: dict, path: Path) -> str:
    """Left: the aggregate ratio (slowed / not) per algorithm and condition; right:
    SDPIPE's group sizes per condition (share of groups in the window)."""
    try:
        from mpiml.report.plots import style
        from mpiml.report.plots.style import require

        require()
    except ImportError:
        return "not drawn: matplotlib is missing (pip install -e .[plots])"
    vs = [v for v in doc["verdicts"] if v["condition"] != "none"]
    if not vs:
        return "not drawn: no run pair succeeded"
    layouts = doc["policy"]["layouts"]
    fig, axes = style.figure((11.0, 4.0), 1, 2)
    ax = axes[0]
    labels: list[tuple[float, str]] = []
    seen: set[str] = set()  # legend entries drawn
    x = 0.0
    pal = style.PALETTE
    colors = {"sdpipe": pal[0], "1f1b": pal[1], "dsp": pal[2], NO_BOUND: pal[5]}
    for P, K in layouts:
        for cond in CONDITIONS[1:]:
            for i, alg in enumerate(ALGORITHMS):
                v = next(
                    (v for v in vs if (v["P"], v["K"], v["algorithm"], v["condition"]) == (P, K, alg, cond)),
                    None,
                )
                if v is None:
                    continue
                q = v["aggregate"]["ratio"]
                lo, hi = q["ci95"]
                err = None if not np.isfinite(lo) else [[q["median"] - lo], [hi - q["median"]]]
                ax.bar(x + 0.2 * i, q["median"], 0.18, yerr=err, color=colors[alg],
                       label=None if alg in seen else alg)  # fmt: skip
                ax.plot(x + 0.2 * i, v["peers"]["ratio"]["median"], "kx",
                        label=None if seen else "peers' rate")  # fmt: skip
                seen.add(alg)
            labels.append((x + 0.3, f"P={P} K={K}\n{cond}"))
            if cond == "slow pipeline":
                ax.hlines((P - 0.5) / P, x - 0.1, x + 0.7, colors="k", linestyles="--")
            x += 1.0
    ax.set_xticks([p for p, _ in labels], [s for _, s in labels], fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set(
        ylabel="aggregate batches/s, slowed / not",
        title="throughput ratio (x: peers; dashed: (P-1/2)/P bound)",
    )
    ax.set_ylim(0.0, 1.3)  # room for the legend above the bars
    ax.legend(loc="upper center", ncol=3, fontsize=8)
    ax = axes[1]
    x = 0.0
    ticks: list[tuple[float, str]] = []
    for P, K in layouts:
        for cond in CONDITIONS:
            v = next(
                (
                    v
                    for v in doc["verdicts"]
                    if (v["P"], v["K"], v["algorithm"], v["condition"]) == (P, K, "sdpipe", cond)
                ),
                None,
            )
            if v is None or not v["groups"]["n"]:
                continue
            g = v["groups"]
            for s in range(1, P + 1):
                ax.bar(x + 0.8 * (s - 1) / P, g["sizes"][str(s)] / g["n"], 0.8 / P, color=style.PALETTE[(s + 2) % len(style.PALETTE)],
                       label=f"size {s}" if not ticks else None)  # fmt: skip
            ticks.append((x + 0.3, f"P={P} K={K}\n{cond}"))
            x += 1.0
    ax.set_xticks([p for p, _ in ticks], [s for _, s in ticks], fontsize=8)
    ax.set(ylabel="share of groups in the window", title="sdpipe group sizes")
    handles, names = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=8)
    return str(style.save(fig, path))


def redraw(path: Path) -> str:
    """Draw the PNG again from the JSON at ``path`` (beside it), running nothing."""
    import json

    return plot(json.loads(path.read_text()), path.with_suffix(".png"))


def ci(q: dict) -> str:
    lo, hi = q["ci95"]
    return f"{q['median']:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else f"{q['median']:.3f} [-]"


def find(vs: list[dict], alg: str, P: int, K: int, cond: str) -> dict | None:
    return next(
        (v for v in vs if (v["algorithm"], v["P"], v["K"], v["condition"]) == (alg, P, K, cond)), None
    )


def summary(vs: list[dict]) -> list[str]:
    """The plain verdict per layout: the literal goal, the goal where it means something."""
    out = []
    for v in vs:
        if v["algorithm"] != "sdpipe" or v["condition"] != "slow pipeline":
            continue
        P, K = v["P"], v["K"]
        agg, peer = v["aggregate"]["ratio"], v["peers"]["ratio"]
        sync = [find(vs, a, P, K, "slow pipeline") for a in ("1f1b", "dsp")]
        said = "; ".join(f"{s['algorithm']} {s['aggregate']['ratio']['median']:.2f}" for s in sync if s)
        word = {"meets": "MET", "MISSES": "MISSED", "inconclusive": "INCONCLUSIVE"}
        out.append(
            f"**P = {P}, K = {K}.** Literal goal (aggregate >= 0.9x): NOT MEANINGFUL, the bound is "
            f"{v['bound']:.3f} (measured {agg['median']:.3f}). Peers' rate >= 0.9x: "
            f"{word[_bench.verdict_word(v['verdict_peers'])]} (median {peer['median']:.3f}, CI "
            f"[{peer['ci95'][0]:.3f}, {peer['ci95'][1]:.3f}]). Aggregate >= 0.9 x bound = {0.9 * v['bound']:.3f}: "
            f"{word[_bench.verdict_word(v['verdict_aggregate'])]}. Synchronous baselines' aggregate: {said} "
            f"(issue: about {SYNC_DROP}). Peers' time in bound rounds: {v['peers_bound_wait_share']:.1%} of the "
            f"window, {v['bound_rounds_waited']:.1f} rounds waited per run."
        )
        out.append("")
    return out


def bound_note(vs: list[dict]) -> list[str]:
    """Why sdpipe's peers lose time at bound rounds under a persistent straggler."""
    rows = []
    for v in vs:
        nb = find(vs, NO_BOUND, v["P"], v["K"], "slow pipeline")
        if v["algorithm"] == "sdpipe" and v["condition"] == "slow pipeline" and nb is not None:
            rows.append(
                f"P = {v['P']}, K = {v['K']}: peers' ratio {v['peers']['ratio']['median']:.3f} with bound rounds "
                f"(they spent {v['peers_bound_wait_share']:.1%} of the window waiting in them), "
                f"{nb['peers']['ratio']['median']:.3f} without"
            )
    if not rows:
        return []
    return [
        "**Bound rounds under a persistent straggler.** With one stage per pipeline (K = 1) any arrival "
        "joins an open bound round, whatever its batch (`StageGroups(join_any=True)`: no stage waits on "
        "another, so this cannot deadlock): a round waits at most for the slow replica's next update. With "
        "K >= 2 mpiml aligns a bound round on a batch id (the round of batch b takes only arrivals of batch b: "
        "letting lagging replicas in deadlocks in the simulator, docs/sdpipe.md). While the fast replicas "
        "wait in the round of batch b, the slow replica's arrivals of earlier batches go to regular groups, "
        "where it is alone; a period in which the slow replica met no fast one therefore closes only when the "
        "slow replica itself reaches batch b (closed as 'all'): the fast pipelines wait until it catches up "
        "(at 2x the slow replica falls one batch behind every two fast batches). Measured, "
        "same benchmark run: " + "; ".join(rows) + ".",
    ]


def write(res: _bench.Results) -> None:
    doc = res.doc
    pol, m = doc["policy"], doc["machine"]
    vs = doc["verdicts"]
    lines = [
        "# SDPIPE under heterogeneity: sdpipe vs synchronous AllReduce (1f1b) vs DSP",
        "",
        f"Machine: {m['hostname']}, {m['nproc']} CPUs (up to 5 ranks, oversubscribed; the timed model sleeps, "
        f"so the numbers are the protocols'), {m['cpu']}, Python {m['python']}, {m['date']}, load "
        f"{' '.join(m['loadavg_at_start'])} at start. Command: `{doc['command']}`.",
        "",
        f"Timed model, {pol['compute_ms']} ms of compute per batch (forward 1/3, backward 2/3, split over K "
        f"stages; DSP and sdpipe recompute the forward on stages before the last), {pol['steps']} batches per "
        f"run, {pol['rounds']} round(s) per point. sdpipe: wait_ms 1, wait_max_ms 10, ssp_bound 10, "
        "sync_every = run.steps (one sync round, the last batch; the default, an epoch of a shard, adds a "
        "meeting point every epoch), eval_every = run.steps. 1f1b: m = 1 at K = 1 (synchronous data "
        "parallelism), m = 2 at K = 2, C/m per micro-batch pass. dsp: default DSP(1,..,1,0; 2(K-1),..,2,0), "
        "gradient AllReduce over the P replicas at every update.",
        "",
        "Conditions: *slow pipeline*: every rank of pipeline P-1 computes 2x slower throughout "
        "(`straggler.ranks`, factor 2). *random*: each rank, each step, with probability 0.1, computes every "
        f"op of that step {pol['percent']:g} % slower (h = {pol['percent'] / 100:g} x the op's time: "
        f"{pol['compute_ms'] / 3 * pol['percent'] / 100:.0f} ms per forward, "
        f"{2 * pol['compute_ms'] / 3 * pol['percent'] / 100:.0f} ms per backward at K = 1, half that at K = 2; "
        "the artifact draws per op, mpiml per rank and step).",
        "",
        "**Throughput.** A batch of pipeline p completes at the end of its update on the pipeline's stage 0 "
        "(`stage_update` events). Window: from the first forward on any stage to T, when the first pipeline "
        "completes its second-to-last batch (the last is sdpipe's sync round / DSP's drain); for the "
        "synchronous baseline that is the whole run, under sdpipe the time all P pipelines still train. "
        "(a) aggregate = batches completed by all pipelines in the window / its length; (b) peers = the same "
        "for pipelines 0..P-2 (the slow one's peers). Ratios: to the same algorithm's run without stragglers "
        f"in this benchmark run; median of {BLOCKS} equal time blocks of the window per run (pooled over rounds), "
        "bootstrap 95 % CI.",
        "",
        "**The arithmetic bound.** With one of P pipelines at half speed the aggregate cannot exceed "
        "(P - 1/2)/P of the no-straggler rate whatever the protocol: 0.833 for P = 3, 0.75 for P = 2. The "
        "issue's '>= 0.9x of its no-straggler throughput' is therefore impossible for the aggregate; it is "
        "judged on what it can mean: the peers' rate >= 0.9 (the fast pipelines are not dragged down) and "
        "the aggregate >= 0.9 x the bound.",
        "",
        "## Throughput",
        "",
        "| P | K | algorithm | condition | aggregate b/s | ratio [95 % CI] | peers b/s | peers ratio [95 % CI] | "
        "bound | window (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in vs:
        a, p = v["aggregate"], v["peers"]
        lines.append(
            f"| {v['P']} | {v['K']} | {v['algorithm']} | {v['condition']} | {a['batches_per_s']:.2f} | "
            f"{ci(a['ratio']) if v['condition'] != 'none' else '1'} | {p['batches_per_s']:.2f} | "
            f"{ci(p['ratio']) if v['condition'] != 'none' else '1'} | "
            f"{format(v['bound'], '.3f') if 'bound' in v else '-'} | {v['window_s']:.2f} |"
        )
    lines += ["", "## Verdicts (one 2x-slow pipeline)", "", *summary(vs), ""]
    for v in vs:
        if v["algorithm"] == "sdpipe" and v["condition"] == "slow pipeline":
            lines += [f"- {v['verdict_peers']}", f"- {v['verdict_aggregate']}", f"- {v['verdict_literal']}"]
    for v in vs:
        if v["algorithm"] == NO_BOUND and v["condition"] == "slow pipeline":
            lines.append(
                f"- {v['verdict_peers']} (ssp_bound = run.steps: no bound round; not the issue's setting)"
            )
    for v in vs:
        if v["algorithm"] in ("1f1b", "dsp") and v["condition"] == "slow pipeline":
            lines.append(
                f"- {v['algorithm']} P={v['P']} K={v['K']} (synchronous in its updates): aggregate ratio "
                f"{ci(v['aggregate']['ratio'])} (the issue expects about {SYNC_DROP})"
            )
    lines += [
        "",
        "## sdpipe's groups (in the window) and waits",
        "",
        "Groups opened in the window (after it the fast pipelines wait at the final sync round and the slow "
        "one averages alone; whole-run counts in the JSON). Why each closed: all ready (all P in the group: a "
        "regular group, or a bound round that waited until the slow replica reached its batch) / deadline / "
        "bound round (closed once connected, with fewer than P) / sync round. Bound rounds met at their first "
        "arrival (the period already connected) are no group: they are not counted. Wait: ready signal to reply (`sdpipe_average.waited`), mean per update "
        "over the batches before the last.",
        "",
        "| P | K | sdpipe | condition | groups | mean size | sizes 1..P (share) | all ready | deadline | connected | "
        "sync | wait ms (all / peers / slow pipeline) | bound rounds that waited, per run | peers' bound-round "
        "wait / window |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in vs:
        if "groups" not in v:
            continue
        g = v["groups"]
        n = max(g["n"], 1)
        sizes = ", ".join(f"{g['sizes'][str(s)] / n:.2f}" for s in range(1, v["P"] + 1))
        w = g["why"]
        lines.append(
            f"| {v['P']} | {v['K']} | {'ssp_bound 10' if v['algorithm'] == 'sdpipe' else 'no bound rounds'} | "
            f"{v['condition']} | {g['n']} | {g['mean_size']:.2f} | {sizes} | "
            f"{w['all'] / n:.2f} | {w['deadline'] / n:.2f} | {w['connected'] / n:.2f} | {w['sync'] / n:.2f} | "
            f"{v['wait_ms']:.1f} / {v['wait_ms_peers']:.1f} / {v['wait_ms_slow']:.1f} | "
            f"{v['bound_rounds_waited']:.1f} | {v['peers_bound_wait_share']:.3f} |"
        )
    lines += ["", *bound_note(vs)]
    lines += [
        "",
        f"Plot: `{Path(doc['plot']).name if str(doc.get('plot', '')).endswith('.png') else doc.get('plot')}`.",
    ]
    failed = [r for r in doc["rows"] if "error" in r]
    lines += ["", *(f"- FAILED {r['label']} r{r['round']}: {r['error'][:300]}" for r in failed)]
    text = "\n".join(lines) + "\n"
    res.finish()
    md = res.write_beside(".md", text)
    print(text)
    print(f"wrote {res.path}, {md} and {doc.get('plot')}")


def main() -> None:
    _bench.abort_on_error()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--compute-ms", type=float, help="C: ms of compute per batch, whole model (60; --quick 45)"
    )
    ap.add_argument("--steps", type=int, help="batches per run (100; --quick 48)")
    ap.add_argument("--rounds", type=int, help="runs per point (2; --quick 1)")
    ap.add_argument(
        "--percent", type=float, default=100.0, help="random knob: X %% slower (100: h = op time)"
    )
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per training run")
    ap.add_argument(
        "--layout",
        dest="layouts",
        action="append",
        type=lambda v: [int(x) for x in v.split(",")],
        help="P,K (repeatable; default 3,1 and 2,2; --quick 3,1)",
    )
    _bench.add_output_args(ap, "sdpipe", "P = 3, K = 1 only, one round, short runs (~1-2 min)")
    ap.add_argument(
        "--redraw", action="store_true", help="draw the PNG again from the --out JSON; run nothing"
    )
    a = ap.parse_args()
    if a.redraw:
        print(redraw(_bench.output_path(a.out, "sdpipe", a.quick)))
        return
    full = {"compute_ms": 80.0, "steps": 80, "rounds": 2, "layouts": [[3, 1], [2, 2]]}
    quick = {"compute_ms": 45.0, "steps": 48, "rounds": 1, "layouts": [[3, 1]]}
    for k, val in (quick if a.quick else full).items():
        if getattr(a, k, None) is None:
            setattr(a, k, val)
    path = _bench.output_path(a.out, "sdpipe", a.quick)
    _bench.claim_or_exit(path, companions=(".md", ".png"), overwrite=a.overwrite, prog="benchmarks/sdpipe.py")
    print(f"writing {path} as it goes", flush=True)
    res = _bench.Results(
        path,
        {
            "machine": _bench.machine(),
            "command": " ".join(["python", "benchmarks/sdpipe.py", *sys.argv[1:]]),
            "policy": {
                "quick": a.quick,
                "compute_ms": a.compute_ms,
                "steps": a.steps,
                "rounds": a.rounds,
                "layouts": a.layouts,
                "probability": PROBABILITY,
                "percent": a.percent,
                "blocks": BLOCKS,
                "sdpipe": {"wait_ms": 1.0, "wait_max_ms": 10.0, "ssp_bound": 10, "sync_every": a.steps},
            },
            "rows": [],
        },
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpiml-sdpipebench-") as tmp:
        b = Bench(a, Path(tmp), res)
        for rnd in range(a.rounds):
            for P, K in a.layouts:
                for alg in ALGORITHMS:
                    for cond in CONDITIONS:
                        if alg != NO_BOUND or cond != "random":
                            b.point(alg, P, K, cond, rnd)
    res.doc["verdicts"] = verdicts(res.doc)
    res.doc["plot"] = plot(res.doc, path.with_suffix(".png"))
    res.doc["total_s"] = time.perf_counter() - t0
    write(res)


if __name__ == "__main__":
    main()
