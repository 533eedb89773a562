"""AllReduce bandwidth: mpiml against mpi4py and a C program on the same MPI library.

What is measured: MPI_SUM allreduce of a float32 buffer, for message sizes 4 KiB to 64 MiB
(powers of 4), by four implementations, all over the MPI that ``mpiexec`` on PATH belongs to:

* ``c``          -- ``benchmarks/allreduce_c.c``: plain ``MPI_Allreduce`` (the baseline);
* ``mpi4py``     -- ``comm.Allreduce(send, recv, op=MPI.SUM)``;
* ``mpiml``      -- blocking ``mpiml.protocols.AllReduce(comm, n, np.float32, op="sum").run(x)``;
* ``mpiml_split``-- split-phase ``ar.start(x); ar.finish()`` (MPI_Iallreduce + MPI_Wait).

Timing policy (identical in C and Python): 3 warm-up calls; the per-call time t is estimated from
k = 1, 2, 4, ... timed calls, doubling k until they take a quarter of one repeat; iters = target /
repeats / t, clamped to [1, 100000]; then ``repeats`` times: barrier,
time iters back-to-back calls, per-call time = elapsed / iters, max over ranks. The reported
time is the median of the repeats (the minimum is kept too). Bandwidth is algorithm bandwidth:
message bytes / per-call seconds (GB/s = 1e9 B/s). Python variants are interleaved repeat by
repeat so slow drift of the machine does not favour one of them.

Run (not under mpiexec; it launches everything itself)::

    python benchmarks/allreduce.py            # 2 ranks; writes results/benchmarks/allreduce.{json,md}
    python benchmarks/allreduce.py -n 4       # 4 ranks (oversubscribed on a 2-core machine)
    python benchmarks/allreduce.py --quick    # sizes up to 4 MiB, shorter timing; writes nothing

The driver compiles the C program with the ``mpicc`` next to ``mpiexec`` into ``benchmarks/bin/``,
runs it, then runs ``mpiexec -n N python -m mpi4py benchmarks/allreduce.py --worker``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 600
TARGET_ABOVE = 1 << 20  # the target: mpiml >= 0.95x C from 1 MiB up
TARGET_RATIO = 0.95
IMPLS = ("c", "mpi4py", "mpiml", "mpiml_split")


# ---------------------------------------------------------------- worker (under mpiexec)

def _measure(comm: Any, calls: dict[str, Callable[[], Any]], target: float, repeats: int) -> dict[str, dict]:
    """Time each callable with the policy of the module docstring; returns per-impl results."""
    from mpi4py import MPI

    def per_call(fn: Callable[[], Any], iters: int) -> float:
        comm.Barrier()
        t0 = MPI.Wtime()
        for _ in range(iters):
            fn()
        return comm.allreduce((MPI.Wtime() - t0) / iters, op=MPI.MAX)

    iters = {}
    for name, fn in calls.items():
        for _ in range(3):
            fn()
        k, est = 1, per_call(fn, 1)
        while k * est < target / repeats / 4 and k < 100_000:  # same calibration as the C program
            k *= 2
            est = per_call(fn, k)
        iters[name] = min(max(round(target / repeats / est), 1), 100_000)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(per_call(fn, iters[name]))
    return {name: {"seconds": sorted(ts)[repeats // 2], "min_seconds": min(ts), "iters": iters[name],
                   "repeats": repeats} for name, ts in times.items()}


def worker(target: float, repeats: int, max_bytes: int) -> None:
    """Runs on every rank; rank 0 prints one JSON line per (impl, size), plus an info line."""
    import numpy as np
    from mpi4py import MPI

    import mpiml
    from mpiml.protocols import AllReduce

    comm = MPI.COMM_WORLD.Dup()
    if comm.rank == 0:
        print(json.dumps({"info": {"mpi_library": MPI.Get_library_version().strip().splitlines()[0],
                                   "mpi_vendor": list(MPI.get_vendor()), "mpi4py": __import__("mpi4py").__version__,
                                   "numpy": np.__version__, "mpiml": getattr(mpiml, "__version__", "?")}}), flush=True)
    nbytes = 4096
    while nbytes <= max_bytes:
        n = nbytes // 4
        x = np.ones(n, dtype=np.float32)
        recv = np.zeros(n, dtype=np.float32)
        ar = AllReduce(comm, n, np.float32, op="sum")

        def split() -> Any:
            ar.start(x)
            return ar.finish()

        calls = {"mpi4py": lambda: comm.Allreduce(x, recv, op=MPI.SUM), "mpiml": lambda: ar.run(x),
                 "mpiml_split": split}
        res = _measure(comm, calls, target, repeats)
        for out in (recv, ar.recvbuf):
            if out[0] != comm.size or out[-1] != comm.size:
                raise RuntimeError(f"wrong allreduce result {out[0]} (expected {comm.size})")
        if comm.rank == 0:
            for name, r in res.items():
                print(json.dumps({"impl": name, "bytes": nbytes, **r}), flush=True)
        nbytes *= 4
    comm.Free()


# ---------------------------------------------------------------- driver

def _run(cmd: list[str], env: dict[str, str] | None = None) -> list[dict]:
    """Run ``cmd`` (with a timeout), echo its stderr on failure, return its JSON stdout lines."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _machine() -> dict[str, Any]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"hostname": socket.gethostname(), "nproc": len(os.sched_getaffinity(0)), "cpu": cpu,
            "os": platform.platform(), "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def _table(rows: list[dict]) -> str:
    head = "| size | C GB/s | mpi4py GB/s | mpiml GB/s | mpiml / C | mpiml split GB/s | split / C |"
    lines = [head, "|" + "---:|" * 7]
    for r in rows:
        bw = {k: r["bytes"] / r[k]["seconds"] / 1e9 for k in IMPLS}
        lines.append(f"| {_size(r['bytes'])} | {bw['c']:.2f} | {bw['mpi4py']:.2f} | {bw['mpiml']:.2f} | "
                     f"{bw['mpiml'] / bw['c']:.3f} | {bw['mpiml_split']:.2f} | {bw['mpiml_split'] / bw['c']:.3f} |")
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> str:
    big = [r for r in rows if r["bytes"] >= TARGET_ABOVE]
    out = []
    for impl, label in (("mpiml", "blocking"), ("mpiml_split", "split-phase")):
        worst = min((r["c"]["seconds"] / r[impl]["seconds"], r["bytes"]) for r in big) if big else None
        if worst is None:
            out.append(f"mpiml {label}: no sizes >= 1 MiB measured")
        else:
            ok = "meets" if worst[0] >= TARGET_RATIO else "MISSES"
            out.append(f"mpiml {label} {ok} the target (>= {TARGET_RATIO}x C from 1 MiB up): "
                       f"worst {worst[0]:.3f}x at {_size(worst[1])}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--ranks", type=int, default=2, help="MPI ranks (default 2: one per core here)")
    ap.add_argument("--quick", action="store_true", help="sizes up to 4 MiB, shorter timing, no result files")
    ap.add_argument("--out", type=Path, help="result folder (default results/benchmarks; none with --quick)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=float, default=0.35, help="seconds of timed calls per size and impl")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per size (median reported)")
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    args = ap.parse_args()
    if args.quick:
        args.target, args.repeats, args.max_bytes = 0.1, 3, min(args.max_bytes, 4 << 20)
    if args.worker:
        worker(args.target, args.repeats, args.max_bytes)
        return
    out_dir = args.out or (None if args.quick else ROOT / "results" / "benchmarks")

    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found on PATH")
    mpicc = Path(mpiexec).parent / "mpicc"
    exe = HERE / "bin" / "allreduce_c"
    exe.parent.mkdir(exist_ok=True)
    subprocess.run([str(mpicc), "-O2", "-o", str(exe), str(HERE / "allreduce_c.c")], check=True, timeout=TIMEOUT_S)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [mpiexec, "-n", str(args.ranks)]
    policy = [str(args.target), str(args.repeats), str(args.max_bytes)]
    c_lines = _run(launch + [str(exe), *policy], env)
    py_lines = _run(launch + [sys.executable, "-m", "mpi4py", str(Path(__file__).resolve()), "--worker",
                              "--target", policy[0], "--repeats", policy[1], "--max-bytes", policy[2]], env)

    info = next(line["info"] for line in py_lines if "info" in line)
    by_size: dict[int, dict] = {}
    for line in c_lines + [p for p in py_lines if "impl" in p]:
        by_size.setdefault(line["bytes"], {"bytes": line["bytes"]})[line["impl"]] = {
            k: line[k] for k in ("seconds", "min_seconds", "iters", "repeats")}
    rows = [by_size[b] for b in sorted(by_size)]
    for r in rows:
        for k in IMPLS:
            r[k]["gbps"] = r["bytes"] / r[k]["seconds"] / 1e9

    command = shlex.join(["python", "benchmarks/allreduce.py", *sys.argv[1:]])
    machine = {**_machine(), **info, "ranks": args.ranks, "mpicc": shlex.join([str(mpicc), "-O2"])}
    table, verdict = _table(rows), _verdict(rows)
    print(table + "\n\n" + verdict)
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"command": command, "machine": machine, "policy": {"target_s": args.target, "repeats": args.repeats,
           "warmup": 3, "reported": "median over repeats of per-call seconds, max over ranks",
           "bandwidth": "message bytes / seconds (GB/s = 1e9 B/s)"}, "results": rows}
    (out_dir / "allreduce.json").write_text(json.dumps(doc, indent=2) + "\n")
    mach = "\n".join(f"- {k}: {v}" for k, v in machine.items())
    (out_dir / "allreduce.md").write_text(
        f"# AllReduce bandwidth (float32, MPI_SUM, {args.ranks} ranks)\n\n{table}\n\n{verdict}\n\n"
        f"Algorithm bandwidth = message bytes / per-call time (median of {args.repeats} repeats, "
        f"max over ranks). C = MPI_Allreduce in benchmarks/allreduce_c.c.\n\n## Machine\n\n{mach}\n\n"
        f"## Command\n\n```\n{command}\n```\n")
    print(f"wrote {out_dir / 'allreduce.json'} and {out_dir / 'allreduce.md'}")


if __name__ == "__main__":
    main()
