"""AllReduce bandwidth: mpiml against mpi4py and a C program on the same MPI library.

What is measured: MPI_SUM allreduce of a float32 buffer, message sizes 4 KiB to 64 MiB (powers of
4), by five implementations, all over the MPI that ``mpiexec`` on PATH belongs to:

* ``c``           -- ``benchmarks/allreduce_c.c``: plain ``MPI_Allreduce`` in a launch of its own,
  on buffers placed roughly as numpy places its arrays (see that file);
* ``c_inproc``    -- the same C loop (``allreduce_loop``, that file built as a shared library)
  called through ctypes inside the Python launch on numpy buffers: the baseline of the ratios;
* ``mpi4py``      -- ``comm.Allreduce(send, recv, op=MPI.SUM)``;
* ``mpiml``       -- blocking ``mpiml.protocols.AllReduce(comm, n, np.float32, op="sum").run(x)``;
* ``mpiml_split`` -- split-phase ``ar.start(x); ar.finish()`` (MPI_Iallreduce + MPI_Wait).

Timing policy (the same in C and Python): 3 warm-up calls; the per-call time t is estimated from
k = 1, 2, 4, ... timed calls, doubling k until they take a quarter of one repeat; iters = target /
repeats / t, clamped to [1, 100000]; then ``repeats`` times: barrier, time iters back-to-back calls,
per-call time = elapsed / iters, max over ranks. In the Python launch the four variants take turns
within each repeat (in rotated order). The driver alternates the C and the Python launch for
``--rounds`` rounds. Reported bandwidth (algorithm bandwidth: message bytes / per-call seconds,
GB/s = 1e9 B/s) is, per implementation and size, the fastest round's median repeat; every round's
time is in the JSON. Reported ratios are paired: the median over all repeats of all rounds of
c_inproc time / variant time, each pair timed in the same repeat. Ranks are bound to cores
(``mpiexec -bind-to core``, Hydra's spelling; ``--bind-to none`` leaves them unbound).

Why paired and in-process: on the 2-vCPU VM this was written on, the machine's speed drifted
between a fast (~5.5 GB/s at 1 MiB) and a slow (~2.7 GB/s) state over seconds to minutes, whatever
the code, so a ratio between separate launches (or between medians) compared states rather than
implementations: 0.42x to 1.36x at 4 MiB for the same code. Calls timed side by side see one state.

Thread level: both sides initialise MPI at ``--thread-level`` (default ``multiple``, what mpi4py,
and so mpiml, asks for). It must match: MPICH runs its shared-memory ``release_gather`` allreduce
only below MPI_THREAD_MULTIPLE (here ~4x faster up to 64 KiB and ~3x slower from 256 KiB up than
the point-to-point algorithms it uses at MPI_THREAD_MULTIPLE), so a C program at
MPI_THREAD_SINGLE measures another algorithm than the one mpiml runs.

Run (not under mpiexec; it launches everything itself)::

    python benchmarks/allreduce.py            # 2 ranks; writes results/benchmarks/allreduce.{json,md}
    python benchmarks/allreduce.py -n 4       # 4 ranks (oversubscribed on a 2-core machine)
    python benchmarks/allreduce.py --quick    # sizes up to 4 MiB, 1 round, shorter timing; no files
    python benchmarks/allreduce.py --thread-level single   # writes allreduce_single.{json,md}

The driver compiles ``allreduce_c.c`` with the ``mpicc`` next to ``mpiexec`` into
``benchmarks/bin/`` (a program and a shared library), then alternates
``mpiexec -n N benchmarks/bin/allreduce_c`` and
``mpiexec -n N python -m mpi4py -rc thread_level=L benchmarks/allreduce.py --worker LIB``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 600  # per subprocess
TARGET_ABOVE, TARGET_RATIO = 1 << 20, 0.95  # the target: mpiml >= 0.95x C from 1 MiB up
IMPLS = ("c", "c_inproc", "mpi4py", "mpiml", "mpiml_split")
BASE = "c_inproc"  # what the ratios compare with
REPORTED = {
    "seconds": "fastest round of: median over repeats of per-call seconds (max over ranks)",
    "ratio": "median over all repeats of all rounds of (c_inproc seconds / impl seconds), same repeat",
}


# ---------------------------------------------------------------- worker (under mpiexec)


Batch = Callable[[int], None]  # runs k back-to-back allreduces


def _measure(comm: Any, calls: dict[str, Batch], target: float, repeats: int) -> dict[str, dict]:
    """Time each batch function with the policy of the module docstring; returns per-impl results."""
    from mpi4py import MPI

    def per_call(fn: Batch, iters: int) -> float:
        comm.Barrier()
        t0 = MPI.Wtime()
        fn(iters)
        return comm.allreduce((MPI.Wtime() - t0) / iters, op=MPI.MAX)

    iters = {}
    for name, fn in calls.items():
        fn(3)
        k, est = 1, per_call(fn, 1)
        while k * est < target / repeats / 4 and k < 100_000:  # same calibration as the C program
            k *= 2
            est = per_call(fn, k)
        iters[name] = min(max(round(target / repeats / est), 1), 100_000)
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotated: no fixed position
            times[name].append(per_call(calls[name], iters[name]))
    return {
        name: {"seconds": sorted(ts)[repeats // 2], "iters": iters[name], "times": ts}
        for name, ts in times.items()
    }


def _calls(comm: Any, lib: Any, x: Any, recvs: list[Any], ar: Any) -> dict[str, Batch]:
    """The in-process variants as batch functions, each allreducing ``x``."""
    from mpi4py import MPI

    fcomm, addr = comm.py2f(), lambda a: a.ctypes.data

    def c_inproc(k: int) -> None:
        lib.allreduce_loop(addr(x), addr(recvs[0]), x.size, k, fcomm)

    def raw(k: int) -> None:
        for _ in range(k):
            comm.Allreduce(x, recvs[1], op=MPI.SUM)

    def blocking(k: int) -> None:
        for _ in range(k):
            ar.run(x)

    def split(k: int) -> None:
        for _ in range(k):
            ar.start(x)
            ar.finish()

    return {"c_inproc": c_inproc, "mpi4py": raw, "mpiml": blocking, "mpiml_split": split}


def worker(target: float, repeats: int, max_bytes: int, lib_path: str) -> None:
    """Runs on every rank; rank 0 prints an info line, then one JSON line per (impl, size)."""
    import ctypes

    import mpi4py
    import numpy as np
    from mpi4py import MPI

    import mpiml
    from mpiml.protocols import AllReduce

    comm = MPI.COMM_WORLD.Dup()
    lib = ctypes.CDLL(lib_path)
    lib.allreduce_loop.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    if comm.rank == 0:
        level = {MPI.THREAD_SINGLE: "single", MPI.THREAD_MULTIPLE: "multiple"}.get(MPI.Query_thread())
        version = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
        info = {"thread_level": level, "mpi_library": version, "mpi4py": mpi4py.__version__}
        print(json.dumps({"info": {**info, "numpy": np.__version__, "mpiml": mpiml.__version__}}), flush=True)
    nbytes = 4096
    while nbytes <= max_bytes:
        n = nbytes // 4
        x, recvs = np.ones(n, dtype=np.float32), [np.zeros(n, dtype=np.float32) for _ in range(2)]
        ar = AllReduce(comm, n, np.float32, op="sum")
        res = _measure(comm, _calls(comm, lib, x, recvs, ar), target, repeats)
        for out in (*recvs, ar.recvbuf):
            if out[0] != comm.size or out[-1] != comm.size:
                raise RuntimeError(f"wrong allreduce result {out[0]} (expected {comm.size})")
        if comm.rank == 0:
            for name, r in res.items():
                print(json.dumps({"impl": name, "bytes": nbytes, **r}), flush=True)
        nbytes *= 4
    comm.Free()


# ---------------------------------------------------------------- driver


def _run(cmd: list[str], env: dict[str, str]) -> list[dict]:
    """Run ``cmd`` (with a timeout), echo its output on failure, return its JSON stdout lines."""
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def _machine() -> dict[str, Any]:
    cpus = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    return {
        "hostname": socket.gethostname(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpus[0] if cpus else "?",
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def _table(rows: list[dict]) -> str:
    head = "| size | C GB/s | C in-proc GB/s | mpi4py GB/s | mpiml GB/s | mpiml / C | mpiml split GB/s | split / C |"
    lines = [head, "|" + "---:|" * 8]
    for r in rows:
        bw = {k: r[k]["gbps"] for k in IMPLS}
        cells = [_size(r["bytes"]), *(f"{bw[k]:.2f}" for k in IMPLS[:4]), f"{r['mpiml']['ratio']:.3f}"]
        cells += [f"{bw['mpiml_split']:.2f}", f"{r['mpiml_split']['ratio']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> str:
    big = [r for r in rows if r["bytes"] >= TARGET_ABOVE]
    if not big:
        return "no sizes >= 1 MiB measured"
    out = []
    for impl, label in (("mpiml", "blocking"), ("mpiml_split", "split-phase")):
        ratio, nbytes = min((r[impl]["ratio"], r["bytes"]) for r in big)
        ok = "meets" if ratio >= TARGET_RATIO else "MISSES"
        worst = f"worst {ratio:.3f}x at {_size(nbytes)}"
        out.append(f"mpiml {label} {ok} the target (>= {TARGET_RATIO}x C in-process from 1 MiB up): {worst}")
    return "\n".join(out)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--ranks", type=int, default=2, help="MPI ranks (default 2: one per core here)")
    ap.add_argument("--quick", action="store_true", help="sizes up to 4 MiB, 1 round, short timing, no files")
    ap.add_argument("--rounds", type=int, default=5, help="alternating C and Python launches (fastest kept)")
    ap.add_argument("--thread-level", choices=("single", "multiple"), default="multiple", help="of all ranks")
    ap.add_argument("--bind-to", default="core", help="mpiexec -bind-to value (default core; none: unbound)")
    ap.add_argument("--out", type=Path, help="result folder (default results/benchmarks; none with --quick)")
    ap.add_argument("--target", type=float, default=0.35, help="seconds of timed calls per size and impl")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per size (median reported)")
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    ap.add_argument("--worker", metavar="LIB", help=argparse.SUPPRESS)  # the C shared library
    args = ap.parse_args()
    if args.quick:
        args.target, args.repeats, args.rounds, args.max_bytes = 0.1, 3, 1, min(args.max_bytes, 4 << 20)
    return args


def main() -> None:
    args = _args()
    if args.worker:
        worker(args.target, args.repeats, args.max_bytes, args.worker)
        return
    machine = _machine()
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found on PATH")
    mpicc, src, exe = Path(mpiexec).parent / "mpicc", HERE / "allreduce_c.c", HERE / "bin" / "allreduce_c"
    exe.parent.mkdir(exist_ok=True)
    for build in (["-o", exe], ["-shared", "-fPIC", "-o", f"{exe}.so"]):
        subprocess.run([mpicc, "-O2", *build, src], check=True, timeout=TIMEOUT_S)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [mpiexec, "-n", str(args.ranks)] + (["-bind-to", args.bind_to] if args.bind_to != "none" else [])
    policy = [str(args.target), str(args.repeats), str(args.max_bytes)]
    c_cmd = launch + [str(exe), *policy, args.thread_level]
    py_cmd = launch + [sys.executable, "-m", "mpi4py", "-rc", f"thread_level={args.thread_level}", __file__]
    py_cmd += ["--worker", f"{exe}.so", "--target", policy[0], "--repeats", policy[1]]
    py_cmd += ["--max-bytes", policy[2]]
    samples: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):
        c_lines, py_lines = _run(c_cmd, env), _run(py_cmd, env)
        info = next(line["info"] for line in py_lines if "info" in line)
        if {line["thread_level"] for line in c_lines} != {info["thread_level"]}:
            raise SystemExit(f"thread levels differ: C {c_lines[0]['thread_level']}, Python {info}")
        for line in c_lines + py_lines:
            if "impl" in line:
                samples.setdefault((line["impl"], line["bytes"]), []).append(line)
    report(args, {**machine, **info, "ranks": args.ranks, "bind_to": args.bind_to}, _rows(samples))


def _rows(samples: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """One row per size: per implementation the fastest round, every round, and the paired ratio."""
    rows = []
    for nbytes in sorted({b for _, b in samples}):
        row: dict[str, Any] = {"bytes": nbytes}
        for impl in IMPLS:
            runs = samples[(impl, nbytes)]
            best = min(r["seconds"] for r in runs)
            row[impl] = {"seconds": best, "gbps": nbytes / best / 1e9, "iters": [r["iters"] for r in runs]}
            row[impl]["seconds_per_round"] = [r["seconds"] for r in runs]
            if impl != "c":
                row[impl]["times_per_round"] = [r["times"] for r in runs]  # per repeat, in order
            if impl != "c":  # paired with c_inproc, timed in the same repeat of the same launch
                rounds = zip(samples[(BASE, nbytes)], runs, strict=True)
                ratios = [b / t for rb, ri in rounds for b, t in zip(rb["times"], ri["times"], strict=True)]
                row[impl]["ratio"] = sorted(ratios)[len(ratios) // 2]
        rows.append(row)
    return rows


def report(args: argparse.Namespace, machine: dict[str, Any], rows: list[dict]) -> None:
    """Print the table; write ``<stem>.json`` and ``<stem>.md`` unless --quick without --out."""
    command = shlex.join(["python", "benchmarks/allreduce.py", *sys.argv[1:]])
    table, verdict = _table(rows), _verdict(rows)
    print(table + "\n\n" + verdict)
    out_dir = args.out or (None if args.quick else ROOT / "results" / "benchmarks")
    if out_dir is None:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "allreduce" if args.thread_level == "multiple" else f"allreduce_{args.thread_level}"
    policy = {"target_s": args.target, "repeats": args.repeats, "rounds": args.rounds, "reported": REPORTED}
    doc = {"command": command, "machine": machine, "policy": policy, "results": rows}
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    mach = "\n".join(f"- {k}: {v}" for k, v in machine.items())
    level = f"MPI_THREAD_{args.thread_level.upper()}"
    title = f"AllReduce bandwidth (float32, MPI_SUM, {args.ranks} ranks, {level})"
    (out_dir / f"{stem}.md").write_text(
        f"# {title}\n\n{table}\n\n{verdict}\n\nGB/s = message bytes / per-call time (algorithm bandwidth): "
        f"per launch the median of {args.repeats} timed repeats (max over ranks), then the fastest of "
        f"{args.rounds} alternating C and Python launches (every round is in the JSON). C = MPI_Allreduce "
        "in benchmarks/allreduce_c.c, at the same thread level, in a launch of its own; C in-proc = the "
        "same C loop called through ctypes inside the Python launch, taking turns with the Python variants "
        "in every repeat. The ratio columns are paired: median over all repeats of all rounds of "
        "(C in-proc time / variant time) within the same repeat, so drift of the machine cancels. "
        "Details: the docstring of benchmarks/allreduce.py."
        f"\n\n## Machine\n\n{mach}\n\n## Command\n\n```\n{command}\n```\n"
    )
    print(f"wrote {out_dir / stem}.json and .md")


if __name__ == "__main__":
    main()
