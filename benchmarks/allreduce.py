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

Verdict: per size from 1 MiB up, the 95 % order-statistic interval of the median paired
ratio; "meets" when every size's interval lies at or above 0.95, "MISSES" when some
size's lies below, "inconclusive at this noise" otherwise (too few repeats or too much
drift: add ``--rounds``/``--repeats``).

Run (not under mpiexec; it launches everything itself)::

    python benchmarks/allreduce.py --quick    # up to 4 MiB, 1 round of 7 short repeats: 10-25 s here
    python benchmarks/allreduce.py            # 2 ranks; results/benchmarks/allreduce.{json,md}
    python benchmarks/allreduce.py -n 4       # 4 ranks (oversubscribed on a 2-core machine)
    python benchmarks/allreduce.py --thread-level single   # allreduce_single.{json,md}
    python benchmarks/allreduce.py --device gpu            # gpu_allreduce.{json,md} (below)

Output: ``--out PATH`` (the JSON; the .md beside it), by default
results/benchmarks/<stem>.json, or a fresh temporary file with ``--quick``; rewritten
after every measured line with ``"complete": false`` until the end; an existing file is
replaced only with ``--overwrite``.

``--device gpu`` (needs cupy and a GPU; otherwise it prints "no GPU: skipped" and exits
0): float32 device buffers, ``mpiml.protocols.AllReduce`` staged through pinned host
buffers (``cuda_aware=False``) against the same with the device pointer handed to MPI
(``cuda_aware=True``), and the host-buffer AllReduce as a reference, taking turns in
each repeat as above; reported: the paired ratio staged time / CUDA-aware time per
size with its interval. A CUDA-aware MPI cannot be detected reliably, so a short probe
launch first allreduces one device buffer with ``cuda_aware=True`` and checks the
result: if that launch fails (an MPI that is not CUDA-aware may crash on a device
pointer), the CUDA-aware variant is left out and the reason recorded. No C baseline.

The driver compiles ``allreduce_c.c`` with the ``mpicc`` next to ``mpiexec`` into
``benchmarks/bin/`` (a program and a shared library), then alternates
``mpiexec -n N benchmarks/bin/allreduce_c`` and
``mpiexec -n N python -m mpi4py -rc thread_level=L benchmarks/allreduce.py --worker LIB``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _bench  # noqa: E402

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

    _bench.abort_on_error()
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


def gpu_worker(target: float, repeats: int, max_bytes: int, variants: list[str], xp_name: str) -> None:
    """``--device gpu`` on every rank: device-buffer AllReduce staged vs CUDA-aware (and
    the host AllReduce); rank 0 prints one JSON line per (variant, size).

    ``xp_name`` is "cupy"; "numpy" runs the same code on host arrays, which checks the
    plumbing (probe, variants, JSON, verdict) on a machine without a GPU and measures
    nothing about GPUs.
    """
    import numpy as np
    from mpi4py import MPI

    import mpiml
    from mpiml.protocols import AllReduce

    _bench.abort_on_error()
    xp: Any = np
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if xp_name == "cupy":
        import cupy

        xp = cupy
        dev = cupy.cuda.Device(MPI.COMM_WORLD.Get_rank() % cupy.cuda.runtime.getDeviceCount())
        dev.use()
        sync = dev.synchronize
    comm = MPI.COMM_WORLD.Dup()
    if comm.rank == 0:
        version = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
        info = {"mpi_library": version, "xp": xp_name, "mpiml": mpiml.__version__, "variants": variants}
        if xp_name == "cupy":
            props = xp.cuda.runtime.getDeviceProperties(0)
            info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            info["cupy"] = xp.__version__
        print(json.dumps({"info": info}), flush=True)
    nbytes = 4096
    while nbytes <= max_bytes:
        n = nbytes // 4
        host = np.ones(n, dtype=np.float32)
        dx = xp.ones(n, dtype=xp.float32)
        # only the variants asked for: a CUDA-aware one is built only after its probe passed
        options: dict[str, dict[str, Any]] = {
            "host": {},
            "staged": {"xp": xp, "cuda_aware": False},
            "cuda_aware": {"xp": xp, "cuda_aware": True},
        }
        ars = {name: AllReduce(comm, n, np.float32, op="sum", **options[name]) for name in variants}

        def batch(ar: Any, x: Any) -> Batch:
            def fn(k: int) -> None:
                for _ in range(k):
                    ar.run(x)
                sync()  # the device work is part of the call

            return fn

        calls = {name: batch(ars[name], host if name == "host" else dx) for name in variants}
        res = _measure(comm, calls, target, repeats)
        for name in variants:
            out = ars[name].recvbuf
            first, last = float(out[0]), float(out[-1])
            if first != comm.size or last != comm.size:
                raise RuntimeError(f"{name}: wrong allreduce result {first} (expected {comm.size})")
        if comm.rank == 0:
            for name, r in res.items():
                print(json.dumps({"impl": name, "bytes": nbytes, **r}), flush=True)
        nbytes *= 4
    comm.Free()


def gpu_probe(xp_name: str) -> None:
    """One CUDA-aware AllReduce of a small device buffer, checked; exits non-zero if wrong."""
    import numpy as np
    from mpi4py import MPI

    from mpiml.protocols import AllReduce

    xp: Any = np
    if xp_name == "cupy":
        import cupy

        xp = cupy
        cupy.cuda.Device(MPI.COMM_WORLD.Get_rank() % cupy.cuda.runtime.getDeviceCount()).use()
    comm = MPI.COMM_WORLD
    ar = AllReduce(comm, 1024, np.float32, op="sum", xp=xp, cuda_aware=True)
    got = float(ar.run(xp.ones(1024, dtype=xp.float32))[0])
    ok = comm.allreduce(got == comm.size, op=MPI.LAND)
    if comm.rank == 0:
        print(json.dumps({"probe": bool(ok), "got": got}), flush=True)
    if not ok:
        raise SystemExit(1)


# ---------------------------------------------------------------- driver


def _run(
    cmd: list[str], env: dict[str, str], each: Callable[[dict], None] | None = None, check: bool = True
) -> list[dict]:
    """Run ``cmd`` (with a timeout), handing each JSON stdout line to ``each`` as it comes;
    echo the output on failure (and exit, with ``check``); return the JSON lines."""
    import tempfile

    lines: list[dict] = []
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        watchdog = threading.Timer(TIMEOUT_S, proc.kill)  # a stuck launch is killed, not waited on
        watchdog.start()
        out = []
        try:
            assert proc.stdout is not None
            for text in proc.stdout:
                out.append(text)
                if text.startswith("{"):
                    lines.append(json.loads(text))
                    if each is not None:
                        each(lines[-1])
            proc.wait(timeout=TIMEOUT_S)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            err.seek(0)
            if not check:
                return [{"failed": proc.returncode, "stderr": err.read()[-2000:]}]
            sys.stderr.write("".join(out) + err.read())
            raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}")
    return lines


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def _table(rows: list[dict], impls: Sequence[str], base: str) -> str:
    head = "| size | " + " | ".join(f"{k} GB/s" for k in impls) + " | "
    head += " | ".join(f"{base} / {k} (95 % CI)" for k in impls if k not in (base, "c")) + " |"
    ncol = len(impls) + len([k for k in impls if k not in (base, "c")]) + 1
    lines = [head, "|" + "---:|" * ncol]
    for r in rows:
        cells = [_size(r["bytes"]), *(f"{r[k]['gbps']:.2f}" for k in impls)]
        for k in impls:
            if k not in (base, "c"):
                q = r[k]["ratio"]
                cells.append(f"{q['median']:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> str:
    """Per variant: meets when every size >= 1 MiB has its interval at/above the target,
    MISSES when some size has its interval below, else inconclusive (with the intervals)."""
    big = [r for r in rows if r["bytes"] >= TARGET_ABOVE]
    if not big:
        return "no sizes >= 1 MiB measured: no verdict"
    out = []
    for impl, label in (("mpiml", "blocking"), ("mpiml_split", "split-phase")):
        cis = [(r[impl]["ratio"], r["bytes"]) for r in big]
        lows = [q["ci95"][0] for q, _ in cis]
        highs = [q["ci95"][1] for q, _ in cis]
        detail = "; ".join(
            f"{_size(b)} {q['median']:.3f} [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}]" for q, b in cis
        )
        if any(h < TARGET_RATIO for h in highs):
            word = "MISSES"
        elif all(lo >= TARGET_RATIO for lo in lows):  # NaN (too few repeats) compares False
            word = "meets"
        else:
            word = "is inconclusive at this noise for"
        out.append(
            f"mpiml {label} {word} the target (>= {TARGET_RATIO}x C in-process from 1 MiB up; "
            f"median ratio and 95 % CI per size: {detail})"
        )
    return "\n".join(out)


def _gpu_verdict(rows: list[dict], variants: Sequence[str]) -> str:
    if "cuda_aware" not in variants:
        return "CUDA-aware variant not measured (see cuda_aware_probe in the JSON): staged and host only"
    out = []
    for r in rows:
        q = r["cuda_aware"]["ratio"]
        med, lo, hi = q["median"], q["ci95"][0], q["ci95"][1]
        word = (
            "CUDA-aware faster"
            if lo > 1
            else "staged faster"
            if hi < 1
            else "no difference resolved at this noise"
        )
        out.append(
            f"{_size(r['bytes'])}: {word} (staged / CUDA-aware time: median {med:.3f}, 95% CI [{lo:.3f}, {hi:.3f}])"
        )
    return "\n".join(out)


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--ranks", type=int, default=2, help="MPI ranks (default 2: one per core here)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating C and Python launches (fastest kept)")
    ap.add_argument("--thread-level", choices=("single", "multiple"), default="multiple", help="of all ranks")
    ap.add_argument("--bind-to", default="core", help="mpiexec -bind-to value (default core; none: unbound)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: staged vs CUDA-aware")
    ap.add_argument("--target", type=float, default=0.35, help="seconds of timed calls per size and impl")
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats per size (median reported)")
    ap.add_argument("--max-bytes", type=int, default=64 << 20)
    _bench.add_output_args(ap, "allreduce", "up to 4 MiB, 1 round of 7 repeats, 0.1 s per size: 10-25 s here")
    ap.add_argument("--worker", metavar="LIB", help=argparse.SUPPRESS)  # the C shared library
    ap.add_argument("--gpu-worker", metavar="VARIANTS", help=argparse.SUPPRESS)
    ap.add_argument("--gpu-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gpu-xp", default="cupy", choices=("cupy", "numpy"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.target, args.repeats, args.rounds, args.max_bytes = 0.1, 7, 1, min(args.max_bytes, 4 << 20)
    return args


def _stem(args: argparse.Namespace) -> str:
    if args.device == "gpu":
        return "gpu_allreduce"
    return "allreduce" if args.thread_level == "multiple" else f"allreduce_{args.thread_level}"


def main() -> None:
    args = _args()
    if args.worker:
        worker(args.target, args.repeats, args.max_bytes, args.worker)
        return
    if args.gpu_worker:
        gpu_worker(args.target, args.repeats, args.max_bytes, args.gpu_worker.split(","), args.gpu_xp)
        return
    if args.gpu_probe:
        gpu_probe(args.gpu_xp)
        return
    if args.device == "gpu" and args.gpu_xp == "cupy" and not _have_gpu():
        print("no GPU: skipped (cupy is not installed or sees no device)")
        return
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found on PATH")
    path = _bench.output_path(args.out, _stem(args), args.quick)
    _bench.claim_or_exit(path, overwrite=args.overwrite, prog="benchmarks/allreduce.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [mpiexec, "-n", str(args.ranks)] + (["-bind-to", args.bind_to] if args.bind_to != "none" else [])
    policy = {"target_s": args.target, "repeats": args.repeats, "rounds": args.rounds, "reported": REPORTED}
    command = shlex.join(["python", "benchmarks/allreduce.py", *sys.argv[1:]])
    machine = {**_bench.machine(), "ranks": args.ranks, "bind_to": args.bind_to}
    res = _bench.Results(path, {"command": command, "machine": machine, "policy": policy, "results": []})
    print(f"writing {path} as it goes", flush=True)
    if args.device == "gpu":
        _gpu_main(args, launch, env, res)
        return
    mpicc, src, exe = Path(mpiexec).parent / "mpicc", HERE / "allreduce_c.c", HERE / "bin" / "allreduce_c"
    exe.parent.mkdir(exist_ok=True)
    for build in (["-o", exe], ["-shared", "-fPIC", "-o", f"{exe}.so"]):
        subprocess.run([mpicc, "-O2", *build, src], check=True, timeout=TIMEOUT_S)
    sizes = [str(args.target), str(args.repeats), str(args.max_bytes)]
    c_cmd = launch + [str(exe), *sizes, args.thread_level]
    py_cmd = launch + [sys.executable, "-m", "mpi4py", "-rc", f"thread_level={args.thread_level}", __file__]
    py_cmd += ["--worker", f"{exe}.so", "--target", sizes[0], "--repeats", sizes[1], "--max-bytes", sizes[2]]
    samples: dict[tuple[str, int], list[dict]] = {}
    levels: dict[str, set] = {"c": set(), "python": set()}

    def take(line: dict) -> None:
        if "info" in line:
            res.doc["machine"].update(line["info"])
            levels["python"].add(line["info"]["thread_level"])
        elif "impl" in line:
            if line["impl"] == "c":
                levels["c"].add(line.get("thread_level"))
            samples.setdefault((line["impl"], line["bytes"]), []).append(line)
            res.doc["results"] = _rows(samples, IMPLS, BASE)
            res.save()

    for _ in range(args.rounds):
        _run(c_cmd, env, take)
        _run(py_cmd, env, take)
        if levels["c"] != levels["python"]:
            raise SystemExit(f"thread levels differ: C {levels['c']}, Python {levels['python']}")
    rows = _rows(samples, IMPLS, BASE)
    level = f"MPI_THREAD_{args.thread_level.upper()}"
    title = f"AllReduce bandwidth (float32, MPI_SUM, {args.ranks} ranks, {level})"
    report(args, res, rows, IMPLS, BASE, _verdict(rows), title, CPU_NOTE)


def _have_gpu() -> bool:
    sys.path.insert(0, str(ROOT))
    from mpiml.backend import cupy_available

    return bool(cupy_available())


def _gpu_main(args: argparse.Namespace, launch: list[str], env: dict[str, str], res: _bench.Results) -> None:
    base = [sys.executable, "-m", "mpi4py", __file__, "--gpu-xp", args.gpu_xp]
    probe = _run(launch + base + ["--gpu-probe"], {**env, "MPIML_CUDA_AWARE": "1"}, check=False)
    ok = any(line.get("probe") for line in probe)
    res.doc["cuda_aware_probe"] = probe[-1] if probe else {"failed": "no output"}
    variants = ["host", "staged", "cuda_aware"] if ok else ["host", "staged"]
    print(f"CUDA-aware probe: {'passed' if ok else 'failed: the CUDA-aware variant is left out'}", flush=True)
    samples: dict[tuple[str, int], list[dict]] = {}

    def take(line: dict) -> None:
        if "info" in line:
            res.doc["machine"].update(line["info"])
        elif "impl" in line:
            samples.setdefault((line["impl"], line["bytes"]), []).append(line)
            res.doc["results"] = _rows(samples, variants, "staged")
            res.save()

    cmd = launch + base + ["--gpu-worker", ",".join(variants), "--target", str(args.target)]
    cmd += ["--repeats", str(args.repeats), "--max-bytes", str(args.max_bytes)]
    for _ in range(args.rounds):
        _run(cmd, env, take)
    rows = _rows(samples, variants, "staged")
    title = f"AllReduce of device buffers: staged vs CUDA-aware (float32, MPI_SUM, {args.ranks} ranks)"
    note = (
        "host = the same AllReduce on host (numpy) buffers; staged = device buffers copied through pinned "
        "host buffers (cuda_aware=False); cuda_aware = the device pointer handed to MPI. Ratio columns: "
        "staged time / variant time, paired within each repeat, median and 95 % order-statistic interval."
    )
    if args.gpu_xp == "numpy":
        note += " Run with --gpu-xp numpy: host arrays stand in for device arrays (a plumbing check, not a GPU number)."
    report(args, res, rows, variants, "staged", _gpu_verdict(rows, variants), title, note)


def _rows(samples: dict[tuple[str, int], list[dict]], impls: Sequence[str], base: str) -> list[dict]:
    """One row per size measured by every impl: per implementation the fastest round,
    every round, and the paired ratio with ``base`` (median and 95 % interval)."""
    rows = []
    for nbytes in sorted({b for _, b in samples}):
        if any((impl, nbytes) not in samples for impl in impls):
            continue  # not every variant has reached this size yet
        row: dict[str, Any] = {"bytes": nbytes}
        for impl in impls:
            runs = samples[(impl, nbytes)]
            best = min(r["seconds"] for r in runs)
            row[impl] = {"seconds": best, "gbps": nbytes / best / 1e9, "iters": [r["iters"] for r in runs]}
            row[impl]["seconds_per_round"] = [r["seconds"] for r in runs]
            if impl != "c":
                row[impl]["times_per_round"] = [r["times"] for r in runs]  # per repeat, in order
            if impl not in ("c", base) and len(samples[(base, nbytes)]) == len(runs):
                rounds = zip(samples[(base, nbytes)], runs, strict=True)
                ratios = [b / t for rb, ri in rounds for b, t in zip(rb["times"], ri["times"], strict=True)]
                med, lo, hi = _bench.median_ci(ratios)
                row[impl]["ratio"] = {"median": med, "ci95": [lo, hi], "n": len(ratios)}
        rows.append(row)
    return rows


CPU_NOTE = (
    "GB/s = message bytes / per-call time (algorithm bandwidth): per launch the median of the timed repeats "
    "(max over ranks), then the fastest of the alternating C and Python launches (every round is in the "
    "JSON). c = MPI_Allreduce in benchmarks/allreduce_c.c, at the same thread level, in a launch of its own; "
    "c_inproc = the same C loop called through ctypes inside the Python launch, taking turns with the Python "
    "variants in every repeat. The ratio columns are paired: over all repeats of all rounds, "
    "(c_inproc time / variant time) within the same repeat, so drift of the machine cancels; median and 95 % "
    "order-statistic interval of the median (NaN: fewer than 6 repeats). Details: the docstring of "
    "benchmarks/allreduce.py."
)


def report(
    args: argparse.Namespace,
    res: _bench.Results,
    rows: list[dict],
    impls: Sequence[str],
    base: str,
    verdict: str,
    title: str,
    note: str,
) -> None:
    """Print the table and the verdict; finish the JSON and write the .md beside it."""
    table = _table(rows, impls, base)
    print(table + "\n\n" + verdict)
    res.doc["results"] = rows
    res.finish(verdict=verdict.splitlines())
    mach = "\n".join(f"- {k}: {v}" for k, v in res.doc["machine"].items())
    md = res.write_beside(
        ".md",
        f"# {title}\n\n{table}\n\n{verdict}\n\n{note}\n\n## Machine\n\n{mach}\n\n"
        f"## Command\n\n```\n{res.doc['command']}\n```\n",
    )
    print(f"wrote {res.path} and {md}")


if __name__ == "__main__":
    main()
