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
  h5py"`` (launch + floor).

    python benchmarks/startup.py [--quick] [-n 4] [--repeats 5] [--tree DIR] [--out FILE]

``--tree DIR`` runs the mpiml of another checkout (DIR first on PYTHONPATH; e.g. the
commit before a change, for a before/after). ``--quick`` (1 repeat) takes under a
minute on an idle 2-core machine. Writes ``--out`` (default
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
        [sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True, timeout=300
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
    cmd: list[str], env: dict[str, str], cwd: str | None = None
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
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        mpiexec_command(n, args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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
    return {"first_line_s": first, "step1_s": step1, "total_s": end}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=4, help="ranks for the launch measurements (default 4)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of each measurement (median)")
    ap.add_argument("--quick", action="store_true", help="1 repeat, under a minute")
    ap.add_argument("--tree", type=Path, help="a checkout whose mpiml to measure (first on PYTHONPATH)")
    ap.add_argument("--label", default="", help="a name for this measurement in the results")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "startup.json")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    env = _env(args.tree)
    probe = subprocess.run(
        [sys.executable, "-c", "import mpiml, mpi4py.MPI as M; print(mpiml.__file__); print(M.Get_library_version().splitlines()[0])"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    mpiml_file, mpi_library = (probe.stdout.splitlines() + ["?", "?"])[:2]
    # warm-up, untimed: writes the bytecode caches, loads the files into the page cache
    subprocess.run(
        [sys.executable, "-m", "mpiml.cli", "train", "--print-job"], env=env, capture_output=True, timeout=300
    )
    with tempfile.TemporaryDirectory(prefix="mpiml-startup-") as tmp:
        _launch(args.n, env, tmp, -1)
    result: dict[str, Any] = {
        "benchmark": "startup",
        "label": args.label or (str(args.tree) if args.tree else "this checkout"),
        "mpiml": mpiml_file,
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_avg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "mpi_library": mpi_library,
        },
        "ranks": args.n,
        "repeats": repeats,
        "goal": "first line < 1 s after the ranks start; step 1 < 2 s (default job, 4 ranks)",
        "MPIML_COMPRESS_KERNELS": os.environ.get("MPIML_COMPRESS_KERNELS", ""),
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    # 1. the floor and the modules, each in a fresh interpreter
    floor = [_wall([sys.executable, "-c", FLOOR], env)[0] for _ in range(repeats)]
    result["floor_import_s"] = _median(floor)
    imports: dict[str, list[float]] = {m: [] for m in MODULES}
    for _ in range(repeats):
        for mod in MODULES:
            t = _importtime(f"import {mod}", env).get(mod)
            if t is not None:
                imports[mod].append(t / 1e6)
    result["import_s"] = {m: round(_median(v), 4) if v else None for m, v in imports.items()}
    save()

    # 2. mpiml train --print-job: wall time and heavy imports
    walls = []
    for _ in range(repeats):
        w, res = _wall([sys.executable, "-m", "mpiml.cli", "train", "--print-job"], env)
        walls.append(w)
    loaded = _importtime("import sys; from mpiml.cli import main; main(['train', '--print-job'])", env)
    result["print_job"] = {
        "wall_s": round(_median(walls), 4),
        "heavy_modules_imported": sorted(h for h in HEAVY if h in loaded),
    }
    save()

    # 3. launches: the floor under mpiexec, then the default job to step 1
    bare = [_wall(mpiexec_command(args.n, [sys.executable, "-c", FLOOR]), env)[0] for _ in range(repeats)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="mpiml-startup-") as tmp:
        for r in range(repeats):
            runs.append(_launch(args.n, env, tmp, r))
            result["launch"] = {
                "mpiexec_floor_s": round(_median(bare), 3),
                **{k: round(_median([x[k] for x in runs]), 3) for k in runs[0]},
                "runs": runs,
            }
            save()

    L = result["launch"]
    print(f"start-up of `mpiexec -n {args.n} mpiml train` ({result['label']}; median of {repeats})")
    print(f"  floor: python -c '{FLOOR}'            {result['floor_import_s']:.3f} s")
    for m, t in result["import_s"].items():
        print(f"  import {m:<18} {'-' if t is None else f'{t:.3f} s'}")
    pj = result["print_job"]
    print(
        f"  mpiml train --print-job          {pj['wall_s']:.3f} s  (imports {', '.join(pj['heavy_modules_imported']) or 'none of ' + '/'.join(HEAVY)})"
    )
    print(f"  mpiexec -n {args.n} python -c floor      {L['mpiexec_floor_s']:.3f} s")
    print(f"  first line (header)              {L['first_line_s']:.3f} s")
    print(f"  step 1                           {L['step1_s']:.3f} s")
    print(f"  whole run (2 steps)              {L['total_s']:.3f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
