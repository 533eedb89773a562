"""How much of a training step is spent outside compute and communication.

Runs the embedded default job (``mpiexec -n N mpiml train``) and reads its run file:
for every step t of every rank, the step's wall time is the time from the start of
step t's first event to the start of step t+1's first event, and the loop overhead is
that wall time minus the time inside the step's traced events (compute, update,
allreduce, wait). Steps that also evaluate, checkpoint or flush are left out (they are
reported apart by the progress line). Side by side, the same job with event recording
off (``trace.events = false``) gives the cost of tracing itself in wall time per step.

    python benchmarks/loop_overhead.py [-n 4] [--steps 2000]

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
from mpiml.testing import launch_env, mpiexec_command  # noqa: E402

TRACED = {"compute", "update", "allreduce", "wait"}


def run_job(n: int, steps: int, out: Path, events: bool) -> float:
    name = f"overhead-{'on' if events else 'off'}"
    args = [sys.executable, "-m", "mpiml.cli", "train", "--out", str(out), "--set", f"run.name={name}",
            "--set", f"run.steps={steps}", "--set", "run.eval_every=500", "--set", "checkpoint.every=0",
            "--set", f"trace.events={'true' if events else 'false'}", "--set", "trace.flush_every=1000"]
    t0 = time.perf_counter()
    res = subprocess.run(mpiexec_command(n, args), env=launch_env(), capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise SystemExit(res.stderr)
    loop = re.findall(r"\| ([0-9.]+)s$", res.stdout, re.M)
    return float(loop[-1]) if loop else time.perf_counter() - t0


def overhead(run_dir: Path) -> dict[str, float]:
    run = load_run(run_dir)
    fractions, walls = [], []
    for ev in run.events.values():
        steps = ev["step"]
        special = set(steps[~np.isin(ev["kind"], list(TRACED))])
        first = {}
        covered: dict[int, float] = {}
        for s, k, a, b in zip(steps, ev["kind"], ev["t_start"], ev["t_end"], strict=True):
            first.setdefault(int(s), a)
            if k in TRACED:
                covered[int(s)] = covered.get(int(s), 0.0) + (b - a)
        for s in range(min(first) + 1, max(first)):  # skip the first step (warm-up)
            if s in special or s + 1 not in first:
                continue
            wall = first[s + 1] - first[s]
            walls.append(wall)
            fractions.append((wall - covered[s]) / wall)
    f = np.array(fractions)
    return {"steps_measured": int(f.size), "median_step_ms": float(np.median(walls) * 1e3),
            "median_overhead_fraction": float(np.median(f)), "mean_overhead_fraction": float(f.mean()),
            "p90_overhead_fraction": float(np.percentile(f, 90))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        loop_on = run_job(a.n, a.steps, out, events=True)
        loop_off = run_job(a.n, a.steps, out, events=False)
        stats = overhead(out / "overhead-on")
    stats.update({"ranks": a.n, "steps": a.steps, "loop_seconds_events_on": loop_on, "loop_seconds_events_off": loop_off,
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
             f"| loop wall time, events recorded | {loop_on:.2f} s |\n"
             f"| loop wall time, events off (baseline) | {loop_off:.2f} s |\n\n"
             "Overhead = step wall time minus time inside traced compute, update, allreduce and wait events.\n")
    (res / "loop_overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
