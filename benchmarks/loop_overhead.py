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

    python benchmarks/loop_overhead.py [-n 4] [--steps 3000] [--repeats 3]

Writes results/benchmarks/loop_overhead.{json,md}. Target (issue #2): under 5 % of step time.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpiml.io import load_run  # noqa: E402
from mpiml.kinds import kinds_in  # noqa: E402
from mpiml.testing import launch_env, mpiexec_command  # noqa: E402


def run_job(n: int, steps: int, out: Path, events: bool) -> float:
    name = f"overhead-{'on' if events else 'off'}"
    args = [sys.executable, "-m", "mpiml.cli", "train", "--out", str(out), "--overwrite",
            "--set", f"run.name={name}", "--set", f"run.steps={steps}",
            "--set", f"trace.events={'true' if events else 'false'}"]
    t0 = time.perf_counter()
    res = subprocess.run(mpiexec_command(n, args), env=launch_env(), capture_output=True, text=True, timeout=600)
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
    return {"steps_measured": int(f.size), "median_step_ms": float(np.median(walls) * 1e3),
            "median_overhead_fraction": float(np.median(f)), "mean_overhead_fraction": float(f.mean()),
            "p90_overhead_fraction": float(np.percentile(f, 90)),
            "all_steps_mean_overhead_fraction": float(g.mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ons, offs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(a.repeats):
            ons.append(run_job(a.n, a.steps, out, events=True))
            offs.append(run_job(a.n, a.steps, out, events=False))
        stats = overhead(out / "overhead-on")
    loop_on, loop_off = float(np.median(ons)), float(np.median(offs))
    stats.update({"ranks": a.n, "steps": a.steps, "loop_seconds_events_on": loop_on, "loop_seconds_events_off": loop_off,
                  "loop_seconds_events_on_all": ons, "loop_seconds_events_off_all": offs,
                  "machine": platform.node(), "cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["python", *sys.argv])})
    res = ROOT / "results" / "benchmarks"
    res.mkdir(parents=True, exist_ok=True)
    (res / "loop_overhead.json").write_text(json.dumps(stats, indent=2) + "\n")
    table = (f"# Training-loop overhead, default job, {a.n} ranks, {a.steps} steps\n\n"
             f"Machine: {stats['machine']}, {stats['cpus']} CPUs, Python {stats['python']}, {stats['date']}.\n"
             f"Command: `{stats['command']}`\n\n"
             "| measure | value |\n|---|---|\n"
             f"| median step time | {stats['median_step_ms']:.3f} ms |\n"
             f"| loop overhead, median over steps and ranks | {100 * stats['median_overhead_fraction']:.2f} % |\n"
             f"| loop overhead, mean | {100 * stats['mean_overhead_fraction']:.2f} % |\n"
             f"| loop overhead, 90th percentile | {100 * stats['p90_overhead_fraction']:.2f} % |\n"
             f"| loop overhead, mean over all steps (eval/checkpoint/flush steps too) | {100 * stats['all_steps_mean_overhead_fraction']:.2f} % |\n"
             f"| loop wall time, events recorded (median of {a.repeats}) | {loop_on:.2f} s ({', '.join(f'{v:.2f}' for v in ons)}) |\n"
             f"| loop wall time, events off, baseline (median of {a.repeats}) | {loop_off:.2f} s ({', '.join(f'{v:.2f}' for v in offs)}) |\n\n"
             "Overhead = step wall time minus time inside traced events (plain steps: compute, update, allreduce, wait, merge;\n"
             "all steps: eval and checkpoint counted as work too). The default job as configured: eval every 50,\n"
             "checkpoint every 200, flush every 100 steps.\n")
    (res / "loop_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
