"""How much of a training step is spent outside compute and communication.

Runs the embedded default job as it is configured (``mpiexec -n N mpiml train``; only
``run.steps`` is raised, for more samples) and reads its run file: for every step t of
every rank, the step's wall time is the time from the start of step t's first event to
the start of step t+1's first event, and the loop overhead is that wall time minus the
time inside the step's traced events (compute, update, allreduce, wait). Reported over
plain steps, and over all steps (evaluation, checkpoint and flush steps included, their
eval/checkpoint events counted as work). Side by side, the same job with event recording
off (``trace.events = false``), alternating on/off ``--repeats`` times, gives the cost
of tracing itself in loop wall time (medians).

    python benchmarks/loop_overhead.py --quick     # one 300-step run, events on: < 1 min here
    python benchmarks/loop_overhead.py [-n 4] [--steps 3000] [--repeats 3] [--out PATH] [--overwrite]

Target (issue #2): loop overhead under 5 % of step time. Verdict: the 95 %
order-statistic interval of the median overhead fraction over the plain steps of all
ranks; "meets"/"MISSES" only when it excludes 5 %. The on/off wall-time ratio (cost of
tracing) is given with its bootstrap interval when there are 2 or more repeats
(``--quick`` runs only the events-on job: no tracing cost).

Writes the JSON (``--out``; default results/benchmarks/loop_overhead.json, or a fresh
temporary file with ``--quick``) after every run, ``"complete": false`` until the end,
and the .md beside it; an existing file is replaced only with ``--overwrite``. The
training runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import _bench  # noqa: E402

from mpiml.io import load_run  # noqa: E402
from mpiml.kinds import kinds_in  # noqa: E402
from mpiml.testing import launch_env, mpiexec_command  # noqa: E402


def run_job(n: int, steps: int, out: Path, events: bool) -> float:
    name = f"overhead-{'on' if events else 'off'}"
    args = [
        sys.executable,
        "-m",
        "mpiml.cli",
        "train",
        "--out",
        str(out),
        "--overwrite",
        "--set",
        f"run.name={name}",
        "--set",
        f"run.steps={steps}",
        "--set",
        f"trace.events={'true' if events else 'false'}",
    ]
    t0 = time.perf_counter()
    res = subprocess.run(
        mpiexec_command(n, args), env=launch_env(), capture_output=True, text=True, timeout=600
    )
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    loop = re.findall(r"\| ([0-9.]+)s$", res.stdout, re.M)
    return float(loop[-1]) if loop else time.perf_counter() - t0


def overhead(run_dir: Path) -> dict[str, float]:
    run = load_run(run_dir)
    # compute, update, merge, allreduce, wait; not the in_flight kinds (iallreduce): they overlap compute
    traced_kinds = kinds_in("compute", "communication", "wait", kinds=run.kinds)
    work_kinds = traced_kinds | kinds_in("bookkeeping", kinds=run.kinds)  # + eval, checkpoint
    special_kinds = kinds_in("bookkeeping", kinds=run.kinds)
    plain, every, walls = [], [], []
    for ev in run.events.values():
        steps = ev["step"].astype(np.int64)
        first: dict[int, float] = {}
        traced: dict[int, float] = {}
        work: dict[int, float] = {}
        special: set[int] = set()
        for s, k, a, b in zip(steps, ev["kind"], ev["t_start"], ev["t_end"], strict=True):
            s = int(s)
            first.setdefault(s, a)
            if k in traced_kinds:
                traced[s] = traced.get(s, 0.0) + (b - a)
            if k in work_kinds:
                work[s] = work.get(s, 0.0) + (b - a)
            if k in special_kinds:
                special.add(s)
        for s in range(min(first) + 1, max(first)):  # the first step is warm-up
            if s + 1 not in first:
                continue
            wall = first[s + 1] - first[s]
            every.append((wall - work.get(s, 0.0)) / wall)
            if s not in special and (s + 1) % 100:  # plain: no eval/checkpoint event, no flush after it
                walls.append(wall)
                plain.append((wall - traced[s]) / wall)
    f, g = np.array(plain), np.array(every)
    med, lo, hi = _bench.median_ci(f)
    return {
        "steps_measured": int(f.size),
        "median_step_ms": float(np.median(walls) * 1e3),
        "median_overhead_ci95": [lo, hi],
        "verdict": _bench.verdict((med, lo, hi), TARGET, False, "loop overhead fraction (plain steps)"),
        "median_overhead_fraction": float(np.median(f)),
        "mean_overhead_fraction": float(f.mean()),
        "p90_overhead_fraction": float(np.percentile(f, 90)),
        "all_steps_mean_overhead_fraction": float(g.mean()),
    }


TARGET = 0.05  # issue #2: loop overhead under 5 % of step time


def main() -> None:
    _bench.abort_on_error()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    _bench.add_output_args(
        ap, "loop_overhead", "one 300-step run with events (no tracing-cost pair): under a minute on 4 ranks"
    )
    a = ap.parse_args()
    if a.quick:
        a.steps, a.repeats = 300, 1
    path = _bench.output_path(a.out, "loop_overhead", a.quick)
    _bench.claim_or_exit(path, overwrite=a.overwrite, prog="benchmarks/loop_overhead.py")
    print(f"writing {path} as it goes", flush=True)
    ons: list[float] = []
    offs: list[float] = []
    res = _bench.Results(
        path,
        {
            "ranks": a.n,
            "steps": a.steps,
            "machine": _bench.machine(),
            "command": " ".join(["python", *sys.argv]),
            "quick": a.quick,
            "loop_seconds_events_on_all": ons,
            "loop_seconds_events_off_all": offs,
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(a.repeats):
            ons.append(run_job(a.n, a.steps, out, events=True))
            res.save()
            if not a.quick:  # one pair gives no interval for the tracing cost: --quick skips it
                offs.append(run_job(a.n, a.steps, out, events=False))
                res.save()
        stats = overhead(out / "overhead-on")
    loop_on = float(np.median(ons))
    loop_off = float(np.median(offs)) if offs else float("nan")
    cost = _bench.ratio_ci(ons, offs) if offs else (float("nan"),) * 3
    stats.update(
        {
            "loop_seconds_events_on": loop_on,
            "loop_seconds_events_off": loop_off,
            "tracing_cost_ratio": {"median": cost[0], "ci95": [cost[1], cost[2]]},
        }
    )
    res.doc.update(stats)
    m = res.doc["machine"]
    table = (
        f"# Training-loop overhead, default job, {a.n} ranks, {a.steps} steps\n\n"
        f"Machine: {m['hostname']}, {m['nproc']} CPUs, Python {m['python']}, {m['date']}, "
        f"load {' '.join(m['loadavg_at_start'])}.\n"
        f"Command: `{res.doc['command']}`\n\n"
        "| measure | value |\n|---|---|\n"
        f"| median step time | {stats['median_step_ms']:.3f} ms |\n"
        f"| loop overhead, median over steps and ranks (95 % CI) | {100 * stats['median_overhead_fraction']:.2f} % "
        f"[{100 * stats['median_overhead_ci95'][0]:.2f}, {100 * stats['median_overhead_ci95'][1]:.2f}] |\n"
        f"| loop overhead, mean | {100 * stats['mean_overhead_fraction']:.2f} % |\n"
        f"| loop overhead, 90th percentile | {100 * stats['p90_overhead_fraction']:.2f} % |\n"
        f"| loop overhead, mean over all steps (eval/checkpoint/flush steps too) | {100 * stats['all_steps_mean_overhead_fraction']:.2f} % |\n"
        f"| loop wall time, events recorded (median of {a.repeats}) | {loop_on:.2f} s ({', '.join(f'{v:.2f}' for v in ons)}) |\n"
        f"| loop wall time, events off, baseline (median of {a.repeats}) | {loop_off:.2f} s ({', '.join(f'{v:.2f}' for v in offs)}) |\n"
        f"| on / off (95 % bootstrap CI; NaN with one repeat) | {cost[0]:.3f} [{cost[1]:.3f}, {cost[2]:.3f}] |\n\n"
        f"{stats['verdict']}\n\n"
        "Overhead = step wall time minus time inside traced events (plain steps: compute, update, allreduce, wait, merge;\n"
        "all steps: eval and checkpoint counted as work too). The default job as configured: eval every 50,\n"
        "checkpoint every 200, flush every 100 steps.\n"
    )
    res.finish()
    md = res.write_beside(".md", table)
    print(table)
    print(f"wrote {path} and {md}")


if __name__ == "__main__":
    main()
