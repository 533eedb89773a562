"""Start-up: how long `mpiml train` takes to say its first line and to finish step 1.

Three measurements, side by side with the floor of the same work, the interpreter
importing what any mpiml rank needs (``python -c "import mpi4py.MPI, numpy, h5py"``):

- **imports**: the cumulative import time of each module (``python -X importtime -c
  "import MOD"`` in a fresh interpreter, the module's own line), median of the repeats;
- **print-job**: the wall time of ``mpiml train --print-job`` (one process, no data) and
  the heavy modules it imported (scipy, numba, sklearn, matplotlib, pandas);
- **launch**: ``mpiexec -n N mpiml train`` of the embedded default job with
  ``run.steps = 2, run.eval_every = 1``: from the launch to the first line rank 0
  prints (the header, or an error) and to the line of step 1 (set-up, the first step
  and its evaluation), next to ``mpiexec -n N python -c "import mpi4py.MPI, numpy,
  h5py"`` (launch + floor); with the CPU seconds all ranks used (user + system), a
  figure that depends less on the machine's load than the wall times.

    python benchmarks/startup.py [--quick] [-n 4] [--repeats 5] [--baseline DIR]
                                 [--also-env VAR=VALUE] [--out FILE] [--overwrite]

``--baseline DIR`` also measures the mpiml of another checkout (DIR first on
PYTHONPATH; e.g. the commit before a change), ``--also-env`` this checkout with an
environment variable set; the launches of all variants are interleaved, so they share
the machine's load. ``--quick`` (1 repeat) takes under a minute on an idle 2-core
machine for one variant. Writes ``--out`` (default
results/benchmarks/startup.json) after every measurement, so an interrupted run keeps
what it measured. Goal (issue #17 item 1): first line within 1 s of the ranks starting,
step 1 within 2 s, for the default job on 4 ranks. Timings are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# children run here, outside any checkout: `python -c` and `python -m` put the current
# folder first on sys.path, which would shadow the variant's mpiml
_CWD = tempfile.mkdtemp(prefix="mpiml-startup-cwd-")

from mpiml.testing import launch_env, mpiexec_command  # noqa: E402

FLOOR = "import mpi4py.MPI, numpy, h5py"
MODULES = [
    "mpi4py.MPI",
    "numpy",
    "h5py",
    "threadpoolctl",
    "scipy.linalg",
    "numba",
    "sklearn.datasets",
    "pandas",
    "mpiml.config",
    "mpiml.compress",
    "mpiml.data",
    "mpiml.run",
    "mpiml.cli",
]
HEAVY = ("scipy", "numba", "sklearn", "matplotlib", "pandas")


def _env(tree: Path | None) -> dict[str, str]:
    env = launch_env()
    # as an installed package runs: with its bytecode cached (pip compiles it at install;
    # without the cache every rank compiles mpiml's sources, ~0.3 s here)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH", "")])])
    return env


def _importtime(code: str, env: dict[str, str]) -> dict[str, int]:
    """Module -> cumulative import time (microseconds) of ``python -X importtime -c code``."""
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=_CWD,
    )
    if res.returncode != 0:
        return {}
    out: dict[str, int] = {}
    for line in res.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)$", line)
        if m:
            out[m.group(3)] = int(m.group(1))
    return out


def _wall(
    cmd: list[str], env: dict[str, str], cwd: str = _CWD
) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cwd)
    return time.perf_counter() - t0, res


def _launch(n: int, env: dict[str, str], out: str, run: int) -> dict[str, float]:
    """Seconds from the launch to rank 0's first line, to the step-1 line, to the end."""
    args = [
        sys.executable, "-m", "mpiml.cli", "train", "--out", out,
        "--set", f"run.name=startup-{run}", "--set", "run.steps=2", "--set", "run.eval_every=1",
    ]  # fmt: skip
    t0, cpu0 = time.perf_counter(), _cpu()
    proc = subprocess.Popen(
        mpiexec_command(n, args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=_CWD,
    )
    first = step1 = float("nan")
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - t0
        lines.append(line)
        if first != first:
            first = now
        if step1 != step1 and re.match(r"step\s+1/", line):
            step1 = now
    proc.wait(timeout=600)
    end = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"mpiml train failed ({proc.returncode}):\n{''.join(lines)}")
    return {"first_line_s": first, "step1_s": step1, "total_s": end, "cpu_s": _cpu() - cpu0}


def _cpu() -> float:
    """User + system CPU seconds of this process's finished children (mpiexec and, as
    each waits for its own, the ranks): the work, whatever the machine's load."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _measure_static(env: dict[str, str], repeats: int) -> dict[str, Any]:
    """Imports (fresh interpreters) and `mpiml train --print-job`, for one variant."""
    floor = [_wall([sys.executable, "-c", FLOOR], env)[0] for _ in range(repeats)]
    imports: dict[str, list[float]] = {m: [] for m in MODULES}
    for _ in range(repeats):
        for mod in MODULES:
            t = _importtime(f"import {mod}", env).get(mod)
            if t is not None:
                imports[mod].append(t / 1e6)
    walls = [
        _wall([sys.executable, "-m", "mpiml.cli", "train", "--print-job"], env)[0] for _ in range(repeats)
    ]
    loaded = _importtime("from mpiml.cli import main; main(['train', '--print-job'])", env)
    return {
        "floor_import_s": round(_median(floor), 4),
        "import_s": {m: round(_median(v), 4) if v else None for m, v in imports.items()},
        "print_job": {
            "wall_s": round(_median(walls), 4),
            "heavy_modules_imported": sorted(h for h in HEAVY if h in loaded),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=4, help="ranks for the launch measurements (default 4)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of each measurement (median)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, under a minute")
    ap.add_argument(
        "--baseline", type=Path, help="also measure this checkout's mpiml (e.g. the commit before)"
    )
    ap.add_argument(
        "--also-env",
        action="append",
        default=[],
        metavar="VAR=VALUE",
        help="also measure this checkout with VAR=VALUE set (e.g. MPIML_COMPRESS_KERNELS=numpy)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "startup.json")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:  # never replace a file this run did not create
        ap.error(f"{args.out} exists: pass --overwrite to replace it, or --out FILE to write elsewhere")
    repeats = 1 if args.quick else max(1, args.repeats)
    variants: list[tuple[str, dict[str, str]]] = [("this checkout", _env(None))]
    if args.baseline is not None:
        variants.insert(0, (f"baseline {args.baseline}", _env(args.baseline)))
    for item in args.also_env:
        var, _, value = item.partition("=")
        variants.append((f"this checkout, {var}={value}", {**_env(None), var: value}))
    probe = subprocess.run(
        [sys.executable, "-c", "import mpi4py.MPI as M; print(M.Get_library_version().splitlines()[0])"],
        env=variants[0][1], capture_output=True, text=True, timeout=120, cwd=_CWD,
    )  # fmt: skip
    result: dict[str, Any] = {
        "benchmark": "startup",
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "mpi_library": probe.stdout.strip(),
        },
        "ranks": args.n,
        "repeats": repeats,
        "floor": FLOOR,
        "goal": "first line < 1 s after the ranks start; step 1 < 2 s (default job, 4 ranks)",
        "variants": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    # warm-up, untimed: bytecode caches written, files in the page cache
    with tempfile.TemporaryDirectory(prefix="mpiml-startup-") as tmp:
        for i, (_, env) in enumerate(variants):
            subprocess.run(
                [sys.executable, "-m", "mpiml.cli", "train", "--print-job"],
                env=env,
                capture_output=True,
                timeout=300,
                cwd=_CWD,
            )
            _launch(args.n, env, tmp, -1 - i)
    for label, env in variants:
        where = subprocess.run(
            [sys.executable, "-c", "import mpiml; print(mpiml.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=_CWD,
        )
        if label.startswith("baseline") and not where.stdout.startswith(str(args.baseline.resolve())):
            raise SystemExit(f"{label}: mpiml comes from {where.stdout.strip()!r}, not from the baseline")
        result["variants"].append(
            {"label": label, "mpiml": where.stdout.strip(), **_measure_static(env, repeats)}
        )
        save()
    # launches, the variants interleaved so that they share the machine's load
    bare: list[float] = []
    runs: list[list[dict[str, float]]] = [[] for _ in variants]
    with tempfile.TemporaryDirectory(prefix="mpiml-startup-") as tmp:
        for r in range(repeats):
            bare.append(_wall(mpiexec_command(args.n, [sys.executable, "-c", FLOOR]), variants[0][1])[0])
            for i, (_, env) in enumerate(variants):
                runs[i].append(_launch(args.n, env, tmp, r * len(variants) + i))
                result["mpiexec_floor_s"] = round(_median(bare), 3)
                result["variants"][i]["launch"] = {
                    **{k: round(_median([x[k] for x in runs[i]]), 3) for k in runs[i][0]},
                    "runs": runs[i],
                }
                save()
    result["load_avg_at_end"] = os.getloadavg()
    save()

    w = 34
    print(
        f"start-up of `mpiexec -n {args.n} mpiml train` (median of {repeats}; load {result['machine']['load_avg_at_start'][0]:.1f} on {os.cpu_count()} cpus)"
    )
    print(f"{'':{w}}" + "".join(f"{v['label'][:28]:>30}" for v in result["variants"]))

    def row(name: str, values: list[str]) -> None:
        print(f"{name:{w}}" + "".join(f"{x:>30}" for x in values))

    vs = result["variants"]
    row(f"floor: {FLOOR}"[:w], [f"{v['floor_import_s']:.3f} s" for v in vs])
    for m in MODULES:
        row(f"  import {m}", ["-" if v["import_s"][m] is None else f"{v['import_s'][m]:.3f} s" for v in vs])
    row("mpiml train --print-job", [f"{v['print_job']['wall_s']:.3f} s" for v in vs])
    row(
        "  heavy modules it imports",
        [",".join(v["print_job"]["heavy_modules_imported"]) or "none" for v in vs],
    )
    row(f"mpiexec -n {args.n} python -c floor", [f"{result['mpiexec_floor_s']:.3f} s" for _ in vs])
    row("first line (header)", [f"{v['launch']['first_line_s']:.3f} s" for v in vs])
    row("step 1", [f"{v['launch']['step1_s']:.3f} s" for v in vs])
    row("whole run (2 steps)", [f"{v['launch']['total_s']:.3f} s" for v in vs])
    row("  CPU time of all ranks", [f"{v['launch']['cpu_s']:.3f} s" for v in vs])
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
