"""Does DaSGD's average really hide behind compute? sgd vs local_sgd vs dasgd, side by side.

A synthetic workload of ``--params`` parameters (25,530,472 = ResNet-50, the paper's
§V.B) with a set compute time per step (``model.name = "timed"``; ``compute = "sleep"``
leaves the host idle as while an accelerator computes) runs on ``-n`` ranks over a
real slow network (``launch/slownet``: network namespaces, veth pairs, tc shaping, MPI
over TCP; ``--network shm`` runs over shared memory instead). For each setting the
run file's events give, per step (mean over the measured steps and the ranks):

- compute: the traced compute + update + merge time;
- blocked: time blocked in communication (blocking allreduce, or the wait at a merge);
- other: the rest of the step (loop, skew between ranks);

and the step time itself, next to a compute-only run (local_sgd with tau > steps:
the same code, no average) in the same invocation. Settings:

1. t_c < d t_p: compute time per step = ``--hide-factor`` x the measured t_c (d = 1).
   Target: dasgd's step within 1.05x of compute-only; local_sgd pays about t_c/tau and
   sgd about t_c per step (eqs. 4-6).
2. t_c > d t_p: compute = ``--expose-factor`` x t_c: dasgd stops hiding, and waits
   about t_c - d t_p at each merge.
3. The progress options for dasgd at setting 1: test, thread, library, none.
4. Convergence (the paper's Table I, in small): test accuracy on digits after the same
   number of steps, same seeds, for the three algorithms (shared memory: accuracy does
   not depend on the link).

The planner (``mpiml.plan``, eqs. 4-6) is given the measured t_p (compute-only step)
and t_c (sgd's median allreduce) and its predicted step times are printed beside the
measured ones.

    python benchmarks/overlap.py --quick    # shm, d = 250k, 80 ms compute, compute-only vs dasgd: < 1 min
    python benchmarks/overlap.py [-n 4] [--params 25530472] [--rate 1gbit] [--network slownet|shm] \\
        [--out PATH] [--overwrite]

``--quick`` skips the probe and runs setting 1 only (compute-only and dasgd, compute
fixed at ``--quick-compute-ms``), over shared memory, no progress/spin/convergence parts.
Verdict (setting 1): dasgd's step / compute-only step, the ratio of the medians of the
per-step wall times with its 95 % bootstrap interval; "meets"/"MISSES" 1.05x only when
the interval excludes it.

Writes the JSON (``--out``; default results/benchmarks/overlap.json, or a fresh
temporary file with ``--quick``) after every training run, ``"complete": false`` until
the end, and the .md beside it; an existing file is replaced only with ``--overwrite``.
Needs root (or CAP_NET_ADMIN) for slownet.
"""

from __future__ import annotations

import argparse
import os
import platform
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


class Bench:
    def __init__(self, a: argparse.Namespace, out: Path, res: _bench.Results | None = None) -> None:
        self.a, self.out, self.res = a, out, res
        self.network = "shared memory (no emulation)"
        if a.network == "slownet":
            self.network = (
                f"launch/slownet: netns+veth+bridge, tbf {a.rate}"
                + (f", netem delay {a.delay}" if a.delay else "")
                + ", MPI over TCP (MPICH ofi/tcp)"
            )

    def launch(self, n: int, args: list[str], env_extra: dict[str, str] | None = None) -> str:
        cmd = [sys.executable, "-m", "mpi4py", "-m", "mpiml.cli", *args]
        env = launch_env()
        env.update(env_extra or {})
        if self.a.network == "slownet":
            full = [
                str(ROOT / "launch" / "slownet"),
                "run",
                str(n),
                "--rate",
                self.a.rate,
                "--prefix",
                f"mpiml-ov{os.getpid()}",
            ]
            if self.a.delay:
                full += ["--delay", self.a.delay]
            full += ["--", *cmd]
        else:
            env["MPIML_NETWORK"] = self.network
            full = mpiexec_command(n, cmd)
        res = subprocess.run(full, env=env, capture_output=True, text=True, timeout=self.a.timeout, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(f"failed: {' '.join(full)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res.stdout

    def timed(
        self,
        name: str,
        alg: str,
        compute_ms: float,
        tau: int,
        delay: int = 1,
        progress: str = "test",
        steps: int | None = None,
        env_extra: dict[str, str] | None = None,
        compute: str = "sleep",
    ) -> dict:
        a = self.a
        steps = steps or a.steps
        sets = {
            "run.name": name,
            "run.steps": steps,
            "run.eval_every": steps,
            "algorithm.name": alg,
            "algorithm.tau": tau,
            "algorithm.delay": delay,
            "algorithm.xi": 0.25,
            "algorithm.progress": progress,
            "model.name": "timed",
            "model.params": a.params,
            "model.compute_ms": compute_ms,
            "model.compute": compute,
            "optimizer.name": "sgd",
            "optimizer.lr": 0.1,
            "data.batch_size": 16,
            "checkpoint.every": 0,
            "trace.flush_every": steps,
        }
        args = ["train", "--out", str(self.out), "--overwrite"]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        t0 = time.perf_counter()
        self.launch(a.n, args, env_extra)
        r = split(self.out / name, steps, a.warmup)
        r.update(
            algorithm=alg,
            tau=tau,
            delay=delay if alg == "dasgd" else None,
            progress=progress,
            compute_ms=compute_ms,
            compute_mode=compute,
            wall_s=time.perf_counter() - t0,
        )
        if self.res is not None:
            self.res.doc.setdefault("runs", {})[name] = r
            self.res.save()
        print(
            f"  {name:<28} step {r['step_ms']:8.1f} ms  compute {r['compute_ms_per_step']:8.1f}  "
            f"blocked {r['blocked_ms_per_step']:8.1f}  other {r['other_ms_per_step']:7.1f}",
            flush=True,
        )
        return r


def split(run_dir: Path, steps: int, warmup: int) -> dict:
    """Mean per-step times over steps [warmup, steps - 1): from the start of step
    ``warmup``'s first event to the start of step ``steps - 1``'s (the last step holds
    the evaluation), per rank, then averaged over ranks."""
    run = load_run(run_dir)
    compute = sorted(kinds_in("compute", kinds=run.kinds))  # compute, update, merge
    blocked_kinds = sorted(kinds_in("communication", "wait", kinds=run.kinds))  # blocking allreduce, wait
    per_rank = []
    allreduce = []
    walls = []
    for ev in run.events.values():
        s = ev["step"]
        first = {int(k): float(ev["t_start"][s == k].min()) for k in np.unique(s)}
        lo, hi = warmup, steps - 1
        window = (s >= lo) & (s < hi)
        n = hi - lo
        wall = first[hi] - first[lo]
        walls.append([first[k + 1] - first[k] for k in range(lo, hi)])
        kinds = ev["kind"]
        dur = ev["t_end"] - ev["t_start"]
        comp = float(dur[window & np.isin(kinds, compute)].sum())
        blocked = float(dur[window & np.isin(kinds, blocked_kinds)].sum())
        per_rank.append((wall / n, comp / n, blocked / n))
        allreduce += list(dur[window & (kinds == "allreduce")]) + list(dur[window & (kinds == "iallreduce")])
    w, c, b = np.mean(per_rank, axis=0)
    return {
        "steps_measured": steps - 1 - warmup,
        "step_ms": 1e3 * w,
        "compute_ms_per_step": 1e3 * c,
        "blocked_ms_per_step": 1e3 * b,
        "other_ms_per_step": 1e3 * (w - c - b),
        "comm_op_median_ms": 1e3 * float(np.median(allreduce)) if allreduce else None,
        "step_walls_ms": (1e3 * np.mean(walls, axis=0)).tolist(),  # per step, mean over ranks
        "network": str(run.attrs.get("network", "")),
    }


def convergence(b: Bench, steps: int) -> list[dict]:
    """Test accuracy on digits after ``steps`` steps, same seeds, three algorithms (shm)."""
    rows = []
    for alg, extra in (
        ("sgd", []),
        ("local_sgd", ["algorithm.tau=4"]),
        ("dasgd", ["algorithm.tau=4", "algorithm.delay=1", "algorithm.xi=0.25"]),
    ):
        args = [
            "train",
            "--out",
            str(b.out),
            "--overwrite",
            "--set",
            f"run.name=conv-{alg}",
            "--set",
            f"run.steps={steps}",
            "--set",
            "checkpoint.every=0",
            "--set",
            f"algorithm.name={alg}",
        ]
        for e in extra:
            args += ["--set", e]
        cmd = mpiexec_command(b.a.n, [sys.executable, "-m", "mpi4py", "-m", "mpiml.cli", *args])
        res = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        m = load_run(b.out / f"conv-{alg}").metrics
        rows.append(
            {
                "algorithm": alg,
                "steps": steps,
                "accuracy": float(m["accuracy"]["value"][-1]),
                "test_loss": float(m["test_loss"]["value"][-1]),
                "bytes_sent_MB": float(m["bytes_sent"]["value"][-1]) / 1e6,
                **dict(e.split("=") for e in extra),
            }
        )
        print(f"  convergence {alg:<10} acc {rows[-1]['accuracy']:.4f}", flush=True)
    return rows


def predict(n: int, tp_s: float, tc_s: float, tau: int, d: int) -> dict[str, float]:
    from mpiml.plan import plan

    p = plan(workers=n, local_batch=16, tp=tp_s, tc=tc_s, tau=tau, delay=d)
    return {"compute_only": 1e3 * p.t_p, **{k: 1e3 * p.step(k) for k in ("sgd", "local_sgd", "dasgd")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--params", type=int, default=25_530_472)
    ap.add_argument("--network", choices=["slownet", "shm"], default="slownet")
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--delay", default="")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tau", type=int, default=2, help="local_sgd and dasgd; dasgd uses d = tau - 1 (§VI.D)")
    ap.add_argument("--hide-factor", type=float, default=1.5, help="setting 1: t_p = factor x t_c")
    ap.add_argument("--expose-factor", type=float, default=0.4, help="setting 2: t_p = factor x t_c")
    ap.add_argument("--conv-steps", type=int, default=600)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: progress,spin,convergence")
    ap.add_argument("--quick-compute-ms", type=float, default=80.0, help="--quick: compute per step")
    _bench.add_output_args(ap, "overlap", "shm, d = 250k, setting 1 (compute-only vs dasgd) only: < 1 min")
    a = ap.parse_args()
    _bench.abort_on_error()
    if a.quick:
        a.network, a.params, a.steps, a.skip = "shm", 250_000, 10, "progress,spin,convergence"
    skip = set(filter(None, a.skip.split(",")))
    path = _bench.output_path(a.out, "overlap", a.quick)
    _bench.claim_or_exit(path, overwrite=a.overwrite, prog="benchmarks/overlap.py")
    print(f"writing {path} as it goes", flush=True)
    d = a.tau - 1
    results: dict = {
        "ranks": a.n,
        "params": a.params,
        "tau": a.tau,
        "delay": d,
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", *sys.argv]),
        "quick": a.quick,
    }
    res = _bench.Results(path, results)
    with tempfile.TemporaryDirectory(prefix="mpiml-overlap-") as tmp:
        b = Bench(a, Path(tmp), res)
        results["network"] = b.network
        if a.quick:
            cms = a.quick_compute_ms
            print(f"quick: compute {cms} ms per step, compute-only vs dasgd (no probe)", flush=True)
            rows = {
                "compute_only": b.timed("hide-compute-only", "local_sgd", cms, 10**6),
                "dasgd": b.timed("hide-dasgd", "dasgd", cms, a.tau, d),
            }
            results["settings"] = {"hide": _setting(a, cms, rows, quick=True)}
            write(res)
            return
        print(f"network: {b.network}; probing t_c with sgd and no compute", flush=True)
        probe = b.timed("probe", "sgd", 0.0, 1, steps=6)
        tc_ms = probe["comm_op_median_ms"]
        results["probe"] = probe
        settings = {"hide": a.hide_factor * tc_ms / d, "expose": a.expose_factor * tc_ms / d}
        results["settings"] = {}
        for label, cms in settings.items():
            cms = round(cms, 1)
            print(f"setting {label}: compute {cms} ms per step (t_c ~ {tc_ms:.1f} ms)", flush=True)
            rows = {
                "compute_only": b.timed(f"{label}-compute-only", "local_sgd", cms, 10**6),
                "sgd": b.timed(f"{label}-sgd", "sgd", cms, 1),
                "local_sgd": b.timed(f"{label}-local", "local_sgd", cms, a.tau),
                "dasgd": b.timed(f"{label}-dasgd", "dasgd", cms, a.tau, d),
            }
            results["settings"][label] = _setting(a, cms, rows)
        if "progress" not in skip:
            cms = round(settings["hide"], 1)
            prog = {}
            for mode in ("test", "thread", "library", "none"):
                env = {"MPIR_CVAR_ASYNC_PROGRESS": "1"} if mode == "library" else None
                prog[mode] = b.timed(f"progress-{mode}", "dasgd", cms, a.tau, d, progress=mode, env_extra=env)
            results["progress"] = {"compute_ms": cms, "rows": prog}
        if "spin" not in skip:
            cms = round(settings["hide"], 1)
            results["spin"] = {
                "compute_ms": cms,
                "rows": {
                    "compute_only": b.timed("spin-compute-only", "local_sgd", cms, 10**6, compute="spin"),
                    "dasgd": b.timed("spin-dasgd", "dasgd", cms, a.tau, d, compute="spin"),
                },
            }
        if "convergence" not in skip:
            results["convergence"] = convergence(b, a.conv_steps)
    write(res)


TARGET = 1.05  # setting 1: dasgd's step within 1.05x of compute-only


def _setting(a: argparse.Namespace, cms: float, rows: dict, quick: bool = False) -> dict:
    """One setting's numbers: t_p, t_c, the planner's prediction, the dasgd verdict."""
    d = a.tau - 1
    tp = rows["compute_only"]["step_ms"] / 1e3
    tc = (rows["sgd"] if "sgd" in rows else rows["dasgd"])["comm_op_median_ms"] / 1e3
    ci = _bench.ratio_ci(rows["dasgd"]["step_walls_ms"], rows["compute_only"]["step_walls_ms"])
    out = {
        "compute_ms": cms,
        "t_p_ms": 1e3 * tp,
        "t_c_ms": 1e3 * tc,
        "hides": bool(tc < d * tp),
        "rows": rows,
        "predicted_step_ms": {} if quick else predict(a.n, tp, tc, a.tau, d),
        "dasgd_vs_compute_only": {"median": ci[0], "ci95": [ci[1], ci[2]]},
        "verdict": _bench.verdict(ci, TARGET, False, "dasgd step / compute-only step"),
    }
    if tc >= d * tp:  # the target is about hiding: it does not apply where t_c > d t_p
        out["verdict"] = (
            f"no verdict on the 1.05x target: t_c = {1e3 * tc:.1f} ms >= d t_p = {1e3 * d * tp:.1f} ms, so dasgd "
            f"cannot hide the average here (raise the compute time); dasgd / compute-only step: median "
            f"{ci[0]:.3f}, 95% CI [{ci[1]:.3f}, {ci[2]:.3f}]"
        )
    if quick:
        out["t_c_note"] = "t_c here: dasgd's median iallreduce (no sgd run in --quick)"
    return out


def write(res: _bench.Results) -> None:
    r = res.doc
    lines = [
        f"# Overlap: sgd vs local_sgd vs dasgd, {r['ranks']} ranks, d = {r['params']:,} parameters (float32)",
        "",
        f"Machine: {r['machine']}, {r['cpus']} CPUs, Python {r['python']}, {r['date']}.",
        f"Network (real, not modelled): {r['network']}.",
        f"Command: `{r['command']}`",
        "",
        f"local_sgd and dasgd: tau = {r['tau']}; dasgd: d = {r['delay']}, xi = 0.25. Times are ms per step, mean "
        "over the measured steps and ranks; compute = compute + update + merge; blocked = blocking allreduce "
        "or the wait at a merge; other = the rest (loop, skew). Predicted = `mpiml plan` (eqs. 4-6) from the "
        "measured t_p (compute-only step) and t_c (sgd's median allreduce).",
        "",
    ]
    for label, s in r.get("settings", {}).items():
        co = s["rows"]["compute_only"]["step_ms"]
        lines += [
            f"## Setting '{label}': compute {s['compute_ms']} ms/step, t_p = {s['t_p_ms']:.1f} ms, "
            f"t_c = {s['t_c_ms']:.1f} ms, t_c {'<' if s['hides'] else '>'} d t_p",
            "",
            s.get("verdict", ""),
            "",
            "| algorithm | step | vs compute-only | compute | blocked | other | predicted step |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, row in s["rows"].items():
            pred = s["predicted_step_ms"].get(name)
            lines.append(
                f"| {name} | {row['step_ms']:.1f} | {row['step_ms'] / co:.3f}x | "
                f"{row['compute_ms_per_step']:.1f} | {row['blocked_ms_per_step']:.1f} | "
                f"{row['other_ms_per_step']:.1f} | {'' if pred is None else f'{pred:.1f}'} |"
            )
        lines.append("")
    if "progress" in r:
        p = r["progress"]
        lines += [
            f"## dasgd progress options (compute {p['compute_ms']} ms/step)",
            "",
            "| algorithm.progress | step | blocked (wait at merges) | average in flight (median) |",
            "|---|---|---|---|",
        ]
        for mode, row in p["rows"].items():
            lines.append(
                f"| {mode} | {row['step_ms']:.1f} | {row['blocked_ms_per_step']:.1f} | "
                f"{row['comm_op_median_ms']:.1f} |"
            )
        lines.append("")
    if "spin" in r:
        s = r["spin"]
        lines += [
            f"## Host-CPU compute (model.compute = 'spin', {s['compute_ms']} ms/step)",
            "",
            "| run | step | compute | blocked |",
            "|---|---|---|---|",
        ]
        for name, row in s["rows"].items():
            lines.append(
                f"| {name} | {row['step_ms']:.1f} | {row['compute_ms_per_step']:.1f} | "
                f"{row['blocked_ms_per_step']:.1f} |"
            )
        lines.append("")
    if "convergence" in r:
        lines += [
            "## Convergence on digits (the default job's model; same seeds and steps; shared memory)",
            "",
            "| algorithm | steps | test accuracy | test loss | MB sent (all ranks) |",
            "|---|---|---|---|---|",
        ]
        for row in r["convergence"]:
            lines.append(
                f"| {row['algorithm']} | {row['steps']} | {row['accuracy']:.4f} | {row['test_loss']:.4f} | "
                f"{row['bytes_sent_MB']:.1f} |"
            )
        lines.append("")
    text = "\n".join(lines)
    res.finish()
    md = res.write_beside(".md", text)
    print(text)
    print(f"wrote {res.path} and {md}")


if __name__ == "__main__":
    main()
