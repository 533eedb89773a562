"""Pipeline training (issue #13): GPipe, 1F1B and DSP side by side in one run: idle
fractions and throughput, DSP's Table 2 stragglers, accuracy against wall time.

Every point is a real training job (``mpiexec -n K python -m mpi4py -m mpiml.cli train``,
``checkpoint.every = 0``) whose run file (:func:`mpiml.io.load_run`) gives the numbers:

    python benchmarks/pipeline.py --quick     # K = 2, one straggler level, short runs: < 1 min here
    python benchmarks/pipeline.py [--out PATH] [--overwrite]

**The timed model** (``model.name = "timed"``, :class:`mpiml.models.timed.TimedStage`):
stage k of K sleeps ``compute_ms / (3K)`` per forward pass of a micro-batch (or batch),
twice that per backward pass and one forward more for DSP's recomputation (Eq. 5), so
4 ranks on 2 cores measure the schedule, not the CPU. ``compute_ms`` is one batch's
forward + backward through the whole, unpipelined model.

**Steps, windows and intervals.** A stage's step s starts at its first compute event
(forward, backward, recompute) of step s (receives are pre-posted, so their events start
early). The steady window runs from step ``warm`` (the pipeline full) to the last step
(DSP's last step drains the pipeline; it is left out). Time per step = the window's span
over its steps, averaged over the stages; its 95 % interval is the median of the mean
step time of 8 blocks of consecutive steps (:func:`_bench.median_ci`), ratios the
bootstrap of two such samples (:func:`_bench.ratio_ci`).

Parts:

1. *throughput*: K = 2 and 4 stages. GPipe and 1F1B with m = ``--micro`` micro-batches
   (``--sync-compute-ms`` per micro-batch pass): each stage's measured idle fraction
   1 - busy / span over the window (busy: its forward/backward/recompute events), next to
   (K-1)/(m+K-1) and the pure simulator's :func:`mpiml.pipeline.bubble_fraction` (the op
   lists with backward = 2 forwards). DSP (the default DSP(1,..,1,0; 2(K-1),..,2,0)) with
   ``--compute-ms`` per batch: batches/s against one process running the same timed model
   (``gpipe`` with K = 1, m = 1: a forward and a backward per batch). Goal (issue #13)
   >= 0.9K; DSP recomputes each batch's forward (one forward more per batch and stage),
   so its schedule bound here is K x 3/4 (a stage's 4 forward units per batch against
   the single process's 3 K units); both are reported.
2. *table2*: DSP's §5.2 protocol at K = 3: every stage slowed by X = 20, 50, 100, 150 %
   with probability 1/3 at each step (``[straggler] probability = 1/3, percent = X``;
   the draw is per rank per step: GPipe/1F1B one minibatch, DSP one global timestamp;
   a slowed step's every forward, recompute and backward takes X % longer, slept right
   after the op, before its send). Slowdown =
   time per batch slowed / unslowed - 1 for FR's stand-in (``1f1b``, m = ``--micro``:
   the paper's FR, Features Replay, is not built here; 1F1B is the synchronous schedule
   with flushes) and DSP(1,1,0;4,2,0), (2,2,0;6,3,0), (3,3,0;10,5,0), beside the paper's
   Table 2. Goal: each DSP figure at or below the paper's (verdict on the interval).
   A floor holds whatever the schedule: each stage's own compute grows by p X = X/3 on
   average, so with no idle time in the unslowed run no schedule slows less than X/3
   (the paper's 6.02 % at 20 % and 32.1 % at 100 % are below it: their GPUs had idle
   time to absorb delays); the .md shows it.
3. *accuracy*: BP (``sgd`` on 1 rank), 1F1B (K = 4) and DSP (K = 4) on digits with an MLP
   of 4 hidden layers, test accuracy against wall time (the run clock) and against
   batches, one plot (matplotlib, Agg): ``<stem>_accuracy.png`` beside the JSON. Real
   compute here: on 2 cores the 4 ranks share the CPU, so these times are this
   machine's, not a cluster's.

Writes the JSON (``--out``; default results/benchmarks/pipeline.json, or a fresh
temporary file with ``--quick``) after every run, ``"complete": false`` until the end,
and the .md and the PNG beside it; an existing file is replaced only with
``--overwrite``. The plot needs matplotlib (:mod:`mpiml.report.plots`): ``pip install -e .[plots]``;
``--redraw`` draws it again from the JSON, running nothing.
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

BLOCKS = 8
COMPUTE = ("forward", "backward", "recompute")
GOAL = 0.9  # DSP >= 0.9 K x one process (issue #13)
PROBABILITY = 1 / 3  # DSP §5.2
PERCENTS = (20, 50, 100, 150)
DSP3 = {  # Table 2's configurations, K = 3
    "DSP(1,1,0;4,2,0)": ([1, 1, 0], [4, 2, 0]),
    "DSP(2,2,0;6,3,0)": ([2, 2, 0], [6, 3, 0]),
    "DSP(3,3,0;10,5,0)": ([3, 3, 0], [10, 5, 0]),
}
PAPER = {  # Table 2, slowdown in % at X = 20, 50, 100, 150
    "FR": (8.977, 28.52, 97.06, 359.2),
    "DSP(1,1,0;4,2,0)": (6.017, 16.14, 37.44, 70.99),
    "DSP(2,2,0;6,3,0)": (7.465, 16.01, 36.57, 54.57),
    "DSP(3,3,0;10,5,0)": (7.391, 18.15, 32.10, 53.42),
}
FR = "FR (1f1b)"
HIDDEN = "[64, 64, 64, 64]"


# ---------------------------------------------------------------- launching and reading


class Bench:
    def __init__(self, a: argparse.Namespace, out: Path, res: _bench.Results) -> None:
        self.a, self.out, self.res = a, out, res

    def train(self, name: str, n: int, sets: dict[str, Any]) -> Path:
        return _bench.train_job(self.out, name, n, sets, self.a.timeout)

    def point(self, part: str, label: str, n: int, sets: dict[str, Any], **info: Any) -> dict:
        name = f"{part}-{label}".translate(str.maketrans(" (),;=", "______"))
        t0 = time.perf_counter()
        try:
            run_dir = self.train(name, n, sets)
            row = accuracy(run_dir) if part == "accuracy" else steps(run_dir, info.get("warm", 2))
        except RuntimeError as exc:
            row = {"error": str(exc)}
        row.update(part=part, label=label, ranks=n, job=sets, wall_s=time.perf_counter() - t0, **info)
        self.res.doc["rows"].append(row)
        self.res.save()
        if "error" in row:
            print(f"  {part:<10} {label:<32} FAILED: {row['error'][:300]}", flush=True)
        elif part == "accuracy":
            print(
                f"  {part:<10} {label:<32} final accuracy {row['final_accuracy']:.4f} ({row['wall_s']:.1f} s)"
            )
        else:
            st = row["step_s"]
            print(
                f"  {part:<10} {label:<32} step {1e3 * st['median']:7.2f} ms "
                f"[{1e3 * st['ci95'][0]:.2f}, {1e3 * st['ci95'][1]:.2f}]  idle {row['idle_mean']:.3f}  "
                f"({row['wall_s']:.1f} s)",
                flush=True,
            )
        return row


def steps(run_dir: Path, warm: int) -> dict:
    """Time per step in the steady window and each stage's idle fraction there."""
    from mpiml.io import load_run

    run = load_run(run_dir)
    n_steps = int(run.config["run"]["steps"])
    lo, hi = warm, n_steps - 1
    if hi - lo < BLOCKS:
        raise RuntimeError(f"{run_dir.name}: {n_steps} steps leave fewer than {BLOCKS} after warm-up {warm}")
    starts, idle, straggled = [], [], []
    for r in sorted(run.events):
        ev = run.events[r]
        comp = np.isin(ev["kind"], COMPUTE)
        s, t0, t1 = ev["step"][comp], ev["t_start"][comp], ev["t_end"][comp]
        first = np.full(n_steps, np.nan)
        np.fmin.at(first, s, t0)
        starts.append(first)
        inside = (s >= lo) & (s < hi)
        idle.append(1.0 - float((t1 - t0)[inside].sum()) / float(first[hi] - first[lo]))
        st = ev["kind"] == "straggler"
        straggled.append(
            float((ev["t_end"] - ev["t_start"])[st & (ev["step"] >= lo) & (ev["step"] < hi)].sum())
        )
    S = np.array(starts)  # stage x step
    edges = np.linspace(lo, hi, BLOCKS + 1).round().astype(int)
    blocks = [
        float(np.mean((S[:, b] - S[:, a]) / (b - a))) for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    med, clo, chi = _bench.median_ci(blocks)
    return {
        "algorithm": run.config["algorithm"]["name"],
        "stages": len(starts),
        "window_steps": [lo, hi],
        "step_s": {
            "median": med,
            "ci95": [clo, chi],
            "mean": float(np.mean((S[:, hi] - S[:, lo]) / (hi - lo))),
        },
        "block_step_s": blocks,
        "idle": idle,
        "idle_mean": float(np.mean(idle)),
        "straggler_s": straggled,
    }


def accuracy(run_dir: Path) -> dict:
    from mpiml.io import load_run

    run = load_run(run_dir)
    m = run.metrics["accuracy"]
    return {
        "algorithm": run.config["algorithm"]["name"],
        "steps": m["step"].tolist(),
        "time_s": m["time"].tolist(),
        "accuracy": m["value"].tolist(),
        "final_accuracy": float(m["value"][-1]),
        "run_s": float(m["time"][-1]),
    }


# ---------------------------------------------------------------- the parts


def timed(steps_: int, compute_ms: float, batch: int) -> dict[str, Any]:
    return {
        "run.steps": steps_,
        "run.eval_every": steps_,
        "model.name": "timed",
        "model.params": 100_000,
        "model.compute_ms": compute_ms,
        "model.compute": "sleep",
        "data.batch_size": batch,
        "optimizer.name": "sgd",
        "optimizer.lr": 0.01,
        "checkpoint.every": 0,
        "trace.flush_every": steps_,
    }


def dsp_warm(p: list[int], m: list[int]) -> int:
    """Global steps before every stage runs a forward and a backward each step."""
    return sum(p) + m[0] + 2


def throughput_part(b: Bench, ks: list[int]) -> None:
    a = b.a
    mb = a.micro
    for K in ks:
        for alg in ("gpipe", "1f1b"):
            sets = {"algorithm.name": alg, "algorithm.stages": K, "algorithm.micro_batches": mb}
            b.point(
                "throughput",
                f"{alg} K={K}",
                K,
                {**sets, **timed(a.sync_steps, a.sync_compute_ms, 4 * mb)},
                K=K,
                m=mb,
            )
    b.point(
        "throughput",
        "one process",
        1,
        {
            "algorithm.name": "gpipe",
            "algorithm.stages": 1,
            "algorithm.micro_batches": 1,
            **timed(a.base_steps, a.compute_ms, 16),
        },
        K=1,
        m=1,
    )
    for K in ks:
        p, m = [1] * (K - 1) + [0], [2 * (K - 1 - k) for k in range(K)]
        b.point(
            "throughput",
            f"dsp K={K}",
            K,
            {"algorithm.name": "dsp", "algorithm.stages": K, **timed(a.dsp_steps, a.compute_ms, 16)},
            K=K,
            warm=dsp_warm(p, m),
        )


def table2_part(b: Bench, percents: list[int], schedules: list[str], rounds: int) -> None:
    """Each schedule unslowed and at each X back to back (a shared machine's drift hits a
    schedule's runs alike), ``rounds`` times in rotated order, the rounds' blocks pooled;
    the straggler draws are the same in every run (seeded by run.seed, rank, step)."""
    a = b.a
    for rnd in range(rounds):
        for sched in schedules:
            if sched == FR:
                sets = {"algorithm.name": "1f1b", "algorithm.stages": 3, "algorithm.micro_batches": a.micro}
                sets.update(timed(a.fr_steps, a.t2_sync_compute_ms, 4 * a.micro))
                warm = 2
            else:
                p, m = DSP3[sched]
                sets = {
                    "algorithm.name": "dsp",
                    "algorithm.stages": 3,
                    "algorithm.dsp_p": str(p),
                    "algorithm.dsp_m": str(m),
                }
                sets.update(timed(a.t2_steps, a.t2_compute_ms, 16))
                warm = dsp_warm(p, m)
            xs = [0, *percents]
            xs = xs[rnd % len(xs) :] + xs[: rnd % len(xs)]
            for x in xs:
                extra = {"straggler.probability": PROBABILITY, "straggler.percent": x} if x else {}
                b.point(
                    "table2",
                    f"{sched} X={x}",
                    3,
                    {**sets, **extra},
                    schedule=sched,
                    percent=x,
                    warm=warm,
                    round=rnd,
                )


def accuracy_part(b: Bench) -> None:
    a = b.a
    job = {
        "run.steps": a.acc_steps,
        "run.eval_every": a.acc_eval,
        "model.name": "mlp",
        "model.hidden": HIDDEN,
        "model.activation": "relu",
        "data.name": "digits",
        "data.batch_size": 32,
        "optimizer.name": "momentum",
        "optimizer.lr": 0.02,
        "optimizer.momentum": 0.9,
        "checkpoint.every": 0,
        "trace.flush_every": a.acc_steps,
    }
    b.point("accuracy", "BP (sgd, 1 rank)", 1, {"algorithm.name": "sgd", **job})
    b.point(
        "accuracy",
        "1F1B K=4",
        4,
        {"algorithm.name": "1f1b", "algorithm.stages": 4, "algorithm.micro_batches": 4, **job},
    )
    b.point("accuracy", "DSP K=4", 4, {"algorithm.name": "dsp", "algorithm.stages": 4, **job})


# ---------------------------------------------------------------- verdicts and the outputs


def good(rows: list[dict], part: str, label: str) -> dict | None:
    """The measured rows of ``label`` pooled over rounds: blocks concatenated, the
    window's mean step time and the straggler seconds averaged."""
    got = [r for r in rows if r["part"] == part and r["label"] == label and "error" not in r]
    if not got:
        return None
    out = dict(got[0])
    out["block_step_s"] = [x for r in got for x in r["block_step_s"]]
    out["step_s"] = {**out["step_s"], "mean": float(np.mean([r["step_s"]["mean"] for r in got]))}
    out["straggler_s"] = np.mean([r["straggler_s"] for r in got], axis=0).tolist()
    out["rounds"] = len(got)
    return out


def verdicts(doc: dict) -> dict[str, list[dict]]:
    from mpiml.pipeline import bubble_fraction, gpipe, one_f_one_b, simulate

    rows = doc["rows"]
    idle, speed, t2 = [], [], []
    for r in rows:
        if r["part"] != "throughput" or "error" in r or r["algorithm"] not in ("gpipe", "1f1b") or r["K"] < 2:
            continue
        K, m = r["K"], r["m"]
        sched = gpipe if r["algorithm"] == "gpipe" else one_f_one_b
        sim = bubble_fraction(simulate(sched(K, m), depth=2, forward_cost=1, backward_cost=2))
        idle.append(
            {
                "label": r["label"],
                "K": K,
                "m": m,
                "measured_per_stage": r["idle"],
                "measured_mean": r["idle_mean"],
                "formula": (K - 1) / (m + K - 1),
                "simulator": sim,
            }
        )
    base = good(rows, "throughput", "one process")
    for r in rows:
        if r["part"] != "throughput" or "error" in r or r["algorithm"] != "dsp" or base is None:
            continue
        K = r["K"]
        ci = _bench.ratio_ci(base["block_step_s"], r["block_step_s"])
        speed.append(
            {
                "label": r["label"],
                "K": K,
                "batches_per_s": 1.0 / r["step_s"]["mean"],
                "one_process_batches_per_s": 1.0 / base["step_s"]["mean"],
                "ratio": {"median": ci[0], "ci95": [ci[1], ci[2]]},
                "goal": GOAL * K,
                "schedule_bound": 0.75 * K,
                "of_bound": ci[0] / (0.75 * K),
                "verdict": _bench.verdict(ci, GOAL * K, True, f"dsp K={K}: batches/s over one process's"),
            }
        )
    for sched in [FR, *DSP3]:
        unslowed = good(rows, "table2", f"{sched} X=0")
        if unslowed is None:
            continue
        for i, x in enumerate(PERCENTS):
            r = good(rows, "table2", f"{sched} X={x}")
            if r is None:
                continue
            q = _bench.ratio_ci(r["block_step_s"], unslowed["block_step_s"])
            pct = (100 * (q[0] - 1), 100 * (q[1] - 1), 100 * (q[2] - 1))
            v = {
                "schedule": sched,
                "percent": x,
                "slowdown_pct": {"median": pct[0], "ci95": [pct[1], pct[2]]},
                "slowdown_pct_mean": 100 * (r["step_s"]["mean"] / unslowed["step_s"]["mean"] - 1),
                "paper_pct": PAPER["FR" if sched == FR else sched][i],
                "floor_pct": 100 * PROBABILITY * x / 100,
                "straggler_s_per_stage": r["straggler_s"],
                "rounds": [unslowed["rounds"], r["rounds"]],
            }
            if sched != FR:
                v["verdict"] = _bench.verdict(pct, v["paper_pct"], False, f"{sched} X={x}%: slowdown in %")
            t2.append(v)
    return {"idle": idle, "dsp_speed": speed, "table2": t2}


def plot(doc: dict, path: Path) -> str:
    """The accuracy curves, accuracy against wall time and against batches, as a PNG
    (:func:`mpiml.report.plots.line_panels`); returns its path, or why it was not drawn."""
    try:
        from mpiml.report.plots import Panel, Series, line_panels
        from mpiml.report.plots.style import require

        require()
    except ImportError:
        return "not drawn: matplotlib is missing (pip install -e .[plots])"
    rows = [r for r in doc["rows"] if r["part"] == "accuracy" and "error" not in r]
    if not rows:
        return "not drawn: no accuracy run succeeded"
    m = doc["machine"]
    panels = [
        Panel(
            [Series(r["time_s"], r["accuracy"], r["label"]) for r in rows],
            title="digits, MLP 4 x 64 hidden",
            xlabel="wall time (s, run clock)",
            ylabel="test accuracy",
        ),
        Panel(
            [Series(r["steps"], r["accuracy"], r["label"]) for r in rows],
            title=f"{m['nproc']} CPUs, load {' '.join(m['loadavg_at_start'])}",
            xlabel="batches (of 32 rows)",
            ylabel="test accuracy",
        ),
    ]
    return str(line_panels(panels, path, ncols=2, size=(10.0, 4.0), sharey=True, legend="lower right"))


def redraw(path: Path) -> str:
    """Draw ``<stem>_accuracy.png`` again from the JSON at ``path``, running nothing."""
    import json

    return plot(json.loads(path.read_text()), path.with_name(f"{path.stem}_accuracy.png"))


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, spec)


def write(res: _bench.Results) -> None:
    doc = res.doc
    v, m = doc["verdicts"], doc["machine"]
    lines = [
        "# Pipeline training: GPipe, 1F1B, DSP",
        "",
        f"Machine: {m['hostname']}, {m['nproc']} CPUs ({doc['policy']['max_ranks']} ranks at most, oversubscribed; "
        f"the timed model sleeps, so its numbers are the schedules'), {m['cpu']}, Python {m['python']}, "
        f"{m['date']}, load {' '.join(m['loadavg_at_start'])} at start.",
        f"Command: `{doc['command']}`.",
        "",
        "## Idle fraction of GPipe and 1F1B (timed model)",
        "",
        f"m = {doc['policy']['micro']} micro-batches, {doc['policy']['sync_compute_ms']} ms per micro-batch "
        "pass of the whole model (forward 1/3, backward 2/3, split over K stages). Measured: per stage "
        "1 - (forward + backward time) / span over the steady steps. Simulator: "
        "`bubble_fraction(simulate(schedule(K, m), forward_cost=1, backward_cost=2))`.",
        "",
        "| schedule | K | m | measured idle, per stage | mean | (K-1)/(m+K-1) | simulator | step (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    steprow = {r["label"]: r for r in doc["rows"] if r["part"] == "throughput" and "error" not in r}
    for i in v["idle"]:
        st = steprow[i["label"]]["step_s"]
        lines.append(
            f"| {i['label'].split()[0]} | {i['K']} | {i['m']} | {', '.join(f'{x:.3f}' for x in i['measured_per_stage'])} | "
            f"{i['measured_mean']:.3f} | {i['formula']:.3f} | {i['simulator']:.3f} | {1e3 * st['mean']:.1f} |"
        )
    lines += [
        "",
        "## DSP throughput against one process (timed model)",
        "",
        f"{doc['policy']['compute_ms']} ms per batch (forward + backward) in one process; DSP's stages "
        "recompute each forward (Eq. 5), so a stage spends 4/3 of its share per batch: the schedule's "
        "bound is 3K/4 x one process.",
        "",
        "| run | K | batches/s | one process | ratio | 95 % CI | goal 0.9K | bound 3K/4 | ratio / bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in v["dsp_speed"]:
        q = s["ratio"]
        lines.append(
            f"| {s['label']} | {s['K']} | {s['batches_per_s']:.2f} | {s['one_process_batches_per_s']:.2f} | "
            f"{q['median']:.3f} | [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}] | {s['goal']:.2f} | "
            f"{s['schedule_bound']:.2f} | {s['of_bound']:.3f} |"
        )
    lines += ["", *(f"- {s['verdict']}" for s in v["dsp_speed"])]
    lines += [
        "",
        "## DSP Table 2: random stragglers, K = 3",
        "",
        f"Each stage slowed by X % of its compute with probability 1/3 per step; slowdown = time per "
        f"batch slowed / unslowed - 1 (median of {BLOCKS} blocks of steps per run, "
        f"pooled over {doc['policy']['rounds']} round(s); bootstrap 95 % CI; 'mean': of the runs' whole windows"
        f"). FR's stand-in: 1F1B, m = {doc['policy']['micro']} (the paper's Features Replay is not "
        "built here). Floor: X/3 %, each stage's own mean extra compute. A slowed step's every forward, "
        "recompute and backward takes X % longer (slept right after the op, before its send: "
        "mpiml.algorithms.pipeline_stage), as on a device computing every op slower.",
        "",
        "| schedule | X | slowdown % | 95 % CI | mean % | paper % | floor X/3 % | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in v["table2"]:
        s = t["slowdown_pct"]
        word = _bench.verdict_word(t["verdict"]) if "verdict" in t else "-"
        lines.append(
            f"| {t['schedule']} | {t['percent']} | {s['median']:.1f} | [{s['ci95'][0]:.1f}, {s['ci95'][1]:.1f}] | "
            f"{t['slowdown_pct_mean']:.1f} | {t['paper_pct']:.2f} | {t['floor_pct']:.1f} | {word} |"
        )
    lines += ["", *(f"- {t['verdict']}" for t in v["table2"] if "verdict" in t)]
    lines += [
        "",
        "## Accuracy against wall time (digits, MLP 4 x 64 hidden, batch 32, momentum 0.9, lr 0.02)",
        "",
        f"Plot: `{Path(doc['plot']).name if doc.get('plot', '').endswith('.png') else doc.get('plot')}`. "
        "Real compute: the 4 ranks share the CPUs.",
        "",
        "| run | ranks | final accuracy | run clock (s) | batches |",
        "|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        if r["part"] != "accuracy":
            continue
        if "error" in r:
            lines.append(f"| {r['label']} | {r['ranks']} | FAILED: {r['error'][:120]} | | |")
        else:
            lines.append(
                f"| {r['label']} | {r['ranks']} | {r['final_accuracy']:.4f} | {r['run_s']:.2f} | {r['steps'][-1]} |"
            )
    failed = [r for r in doc["rows"] if "error" in r and r["part"] != "accuracy"]
    lines += ["", *(f"- FAILED {r['part']} {r['label']}: {r['error'][:200]}" for r in failed)]
    text = "\n".join(lines) + "\n"
    res.finish()
    md = res.write_beside(".md", text)
    print(text)
    print(f"wrote {res.path}, {md} and {doc.get('plot')}")


def main() -> None:
    _bench.abort_on_error()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--micro", type=int, default=4, help="m, micro-batches of gpipe/1f1b (4)")
    ap.add_argument("--compute-ms", type=float, help="DSP vs one process: ms per batch (120; --quick 60)")
    ap.add_argument(
        "--sync-compute-ms", type=float, help="gpipe/1f1b: ms per micro-batch pass (40; --quick 20)"
    )
    ap.add_argument("--t2-compute-ms", type=float, help="Table 2, DSP: ms per batch (90; --quick 45)")
    ap.add_argument(
        "--t2-sync-compute-ms", type=float, help="Table 2, 1f1b: ms per micro-batch (30; --quick 15)"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per training run")
    _bench.add_output_args(ap, "pipeline", "K = 2, X = 50 %% only, short runs (< 1 min)")
    ap.add_argument(
        "--redraw", action="store_true", help="draw the PNG again from the --out JSON; run nothing"
    )
    a = ap.parse_args()
    if a.redraw:
        print(redraw(_bench.output_path(a.out, "pipeline", a.quick)))
        return
    full = {
        "ks": [2, 4],
        "compute_ms": 120.0,
        "sync_compute_ms": 40.0,
        "t2_compute_ms": 90.0,
        "t2_sync_compute_ms": 30.0,
        "percents": list(PERCENTS),
        "schedules": [FR, *DSP3],
        "sync_steps": 40,
        "base_steps": 60,
        "dsp_steps": 120,
        "fr_steps": 100,
        "t2_steps": 300,
        "acc_steps": 600,
        "rounds": 2,
        "acc_eval": 20,
    }
    quick = {
        "ks": [2],
        "compute_ms": 60.0,
        "sync_compute_ms": 20.0,
        "t2_compute_ms": 45.0,
        "t2_sync_compute_ms": 15.0,
        "percents": [50],
        "schedules": [FR, "DSP(1,1,0;4,2,0)"],
        "sync_steps": 14,
        "base_steps": 14,
        "dsp_steps": 20,
        "fr_steps": 14,
        "t2_steps": 24,
        "acc_steps": 60,
        "rounds": 1,
        "acc_eval": 20,
    }
    for k, val in (quick if a.quick else full).items():
        if getattr(a, k, None) is None:
            setattr(a, k, val)
    path = _bench.output_path(a.out, "pipeline", a.quick)
    png = path.with_name(f"{path.stem}_accuracy.png")
    if png.exists() and not a.overwrite:
        ap.exit(
            2,
            f"benchmarks/pipeline.py: error: {png} exists: pass --overwrite to replace it, or --out PATH "
            "to write elsewhere\n",
        )
    _bench.claim_or_exit(path, overwrite=a.overwrite, prog="benchmarks/pipeline.py")
    print(f"writing {path} as it goes", flush=True)
    res = _bench.Results(
        path,
        {
            "machine": _bench.machine(),
            "command": " ".join(["python", "benchmarks/pipeline.py", *sys.argv[1:]]),
            "policy": {
                "quick": a.quick,
                "ks": a.ks,
                "micro": a.micro,
                "compute_ms": a.compute_ms,
                "sync_compute_ms": a.sync_compute_ms,
                "t2_compute_ms": a.t2_compute_ms,
                "t2_sync_compute_ms": a.t2_sync_compute_ms,
                "percents": a.percents,
                "probability": PROBABILITY,
                "fr_stand_in": f"1f1b, m = {a.micro}",
                "steps": {
                    k: getattr(a, k)
                    for k in ("sync_steps", "base_steps", "dsp_steps", "fr_steps", "t2_steps", "acc_steps")
                },
                "blocks": BLOCKS,
                "rounds": a.rounds,
                "max_ranks": max(4, *a.ks),
            },
            "rows": [],
        },
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mpiml-pipebench-") as tmp:
        b = Bench(a, Path(tmp), res)
        throughput_part(b, a.ks)
        table2_part(b, a.percents, a.schedules, a.rounds)
        accuracy_part(b)
    res.doc["verdicts"] = verdicts(res.doc)
    res.doc["plot"] = plot(res.doc, png)
    res.doc["total_s"] = time.perf_counter() - t0
    write(res)


if __name__ == "__main__":
    main()
