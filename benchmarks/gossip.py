"""One gossip round vs one AllReduce vs two point-to-point exchanges of the same bytes.

Run under MPI (4 ranks by default; shared memory on one host unless launched
through ``launch/slownet``):

    mpiexec -n 4 python benchmarks/gossip.py --quick          # 4K,64K,1M, short timing: < 1 min here
    mpiexec -n 4 python benchmarks/gossip.py [--sizes 4K,64K,1M,16M,64M] [--repeats 9] [--out PATH]

For each message size (float32 buffers), side by side in one run:

- ``p2p x2``: the floor of a ring round: MPI_Irecv + MPI_Isend with both ring
  neighbours, MPI_Waitall (raw mpi4py, no mixing);
- ``ring``, ``torus``, ``exponential``: one ``mpiml.protocols.Gossip`` round (start +
  finish, mixing included), with ``method = "p2p"`` and ``"neighbor"``;
- ``allreduce``: one ``mpiml.protocols.AllReduce`` (mean).

Timing: one warm-up call each; the per-call time of each operation is estimated (max
over ranks, so every rank agrees) and ``reps`` = ``--target`` seconds / that time
(at least 1); then ``--repeats`` times: every operation in turn (rotated order), a
barrier, ``reps`` back-to-back calls, per-call time = elapsed / reps, the slowest
rank's. Reported: the median over repeats; the ratio ring/p2p ÷ p2p x2 is *paired*
(the two timed in the same repeat, so drift of a loaded machine cancels) with its
95 % order-statistic interval of the median. Target (issue #4): a ring round within
1.1x of the two point-to-point exchanges; "meets"/"MISSES" only when the interval
excludes 1.1, "inconclusive at this noise" otherwise.

Rank 0 writes the JSON (``--out``; default results/benchmarks/gossip.json, or a fresh
temporary file with ``--quick``) after every size, ``"complete": false`` until the
end, and the table as .md beside it; an existing file is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from mpi4py import MPI

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import _bench  # noqa: E402

from mpiml.protocols import AllReduce, Gossip  # noqa: E402
from mpiml.topology import build_schedule  # noqa: E402

TARGET = 1.1  # ring/p2p within 1.1x of p2p x2 (issue #4)
COLS = [
    "p2p_x2",
    "ring/p2p",
    "ring/neighbor",
    "torus/p2p",
    "torus/neighbor",
    "exponential/p2p",
    "exponential/neighbor",
    "allreduce",
]


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def timed(comm: MPI.Comm, ops: dict[str, Callable[[], None]], target: float, repeats: int) -> dict[str, dict]:
    """Per operation: reps, per-repeat per-call seconds (slowest rank), in rotated order."""

    def per_call(fn: Callable[[], None], reps: int) -> float:
        comm.Barrier()
        t0 = MPI.Wtime()
        for _ in range(reps):
            fn()
        return float(comm.allreduce((MPI.Wtime() - t0) / reps, op=MPI.MAX))

    reps = {}
    for name, fn in ops.items():
        fn()  # warm-up (first touch, connection set-up)
        reps[name] = max(1, min(10_000, round(target / max(per_call(fn, 1), 1e-7))))
    times: dict[str, list[float]] = {name: [] for name in ops}
    names = list(ops)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(per_call(ops[name], reps[name]))
    return {
        name: {"reps": reps[name], "times": times[name], "median": float(np.median(times[name]))}
        for name in ops
    }


def main() -> None:
    _bench.abort_on_error()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="comma list (default 4K,64K,1M,16M,64M; --quick: 4K,64K,1M)")
    ap.add_argument(
        "--repeats", type=int, help="timed repeats per size, median reported (default 9; --quick 7)"
    )
    ap.add_argument(
        "--target", type=float, help="seconds per operation per repeat (default 0.05; --quick 0.01)"
    )
    _bench.add_output_args(ap, "gossip", "sizes 4K,64K,1M, 7 repeats of 0.01 s: under a minute on 4 ranks")
    a = ap.parse_args()
    quick = {"sizes": "4K,64K,1M", "repeats": 7, "target": 0.01}
    full = {"sizes": "4K,64K,1M,16M,64M", "repeats": 9, "target": 0.05}
    for k, v in (quick if a.quick else full).items():  # what is given explicitly wins
        if getattr(a, k) is None:
            setattr(a, k, v)
    comm = MPI.COMM_WORLD.Dup()
    n, r = comm.Get_size(), comm.Get_rank()
    path = _bench.output_path(a.out, "gossip", a.quick)
    _bench.claim_or_exit(path, overwrite=a.overwrite, comm=comm, prog="benchmarks/gossip.py")
    meta = {
        "ranks": n,
        "mpi": MPI.Get_library_version().splitlines()[0],
        "machine": _bench.machine(),
        "network": os.environ.get("MPIML_NETWORK", "shared memory on one host (no emulation)"),
        "command": " ".join(["mpiexec", "-n", str(n), "python", *sys.argv]),
        "policy": {"target_s": a.target, "repeats": a.repeats, "quick": a.quick},
    }
    res = _bench.Results(path if r == 0 else None, {**meta, "rows": []})
    if r == 0:
        print(f"writing {path} as it goes", flush=True)
    left, right = (r - 1) % n, (r + 1) % n
    rows = res.doc["rows"]
    for label in a.sizes.split(","):
        nbytes = _size(label)
        d = max(1, nbytes // 4)
        x = np.random.default_rng(r).standard_normal(d).astype(np.float32)
        rl, rr = np.empty_like(x), np.empty_like(x)

        def p2p(x: np.ndarray = x, rl: np.ndarray = rl, rr: np.ndarray = rr) -> None:
            reqs = [
                comm.Irecv(rl, source=left, tag=1),
                comm.Irecv(rr, source=right, tag=2),
                comm.Isend(x, dest=right, tag=1),
                comm.Isend(x, dest=left, tag=2),
            ]
            MPI.Request.Waitall(reqs)

        ops: dict[str, Callable[[], None]] = {"p2p_x2": p2p}
        ar = AllReduce(comm, d, np.float32, op="mean")
        ops["allreduce"] = lambda ar=ar, x=x: ar.run(x)  # type: ignore[misc]
        for topo in ("ring", "torus", "exponential"):
            for method in ("p2p", "neighbor"):
                g = Gossip(comm, d, np.float32, build_schedule(topo, n), method=method)

                def round_(g: Gossip = g, x: np.ndarray = x) -> None:
                    g.start(x)
                    g.finish()

                ops[f"{topo}/{method}"] = round_
        t = timed(comm, ops, a.target, a.repeats)
        ratios = [g / p for g, p in zip(t["ring/p2p"]["times"], t["p2p_x2"]["times"], strict=True)]
        ci = _bench.median_ci(ratios)
        row = {
            "size": label,
            "bytes": d * 4,
            **{k: v["median"] for k, v in t.items()},
            "ratio_ring_p2p": {"median": ci[0], "ci95": [ci[1], ci[2]], "per_repeat": ratios},
            "verdict": _bench.verdict(ci, TARGET, False, f"{label}: ring/p2p ÷ p2p x2"),
            "detail": t,
        }
        rows.append(row)
        res.save()
        if r == 0:
            print(
                f"{label:>5}: p2p x2 {1e6 * row['p2p_x2']:10.1f} us  ring {1e6 * row['ring/p2p']:10.1f} us  "
                f"allreduce {1e6 * row['allreduce']:10.1f} us  | {row['verdict']}",
                flush=True,
            )
    if r == 0:
        write(res, n)


def write(res: _bench.Results, n: int) -> None:
    meta, rows = res.doc, res.doc["rows"]
    m = meta["machine"]
    lines = [
        f"# One gossip round vs two point-to-point exchanges vs AllReduce, {n} ranks (float32)",
        "",
        f"Machine: {m['hostname']}, {m['nproc']} CPUs, Python {m['python']}, {meta['mpi']}, {m['date']}.",
        f"Network: {meta['network']}. Command: `{meta['command']}`",
        "",
        "Microseconds per operation (median of repeats, slowest rank). The last columns: ring/p2p ÷ p2p x2, "
        "paired within each repeat, median and 95 % interval of the median; the issue's target is <= 1.1x.",
        "",
        "| size | " + " | ".join(COLS) + " | ring/p2p ÷ p2p x2 | 95 % CI |",
        "|---" * (len(COLS) + 3) + "|",
    ]
    for row in rows:
        rt = row["ratio_ring_p2p"]
        lines.append(
            f"| {row['size']} | "
            + " | ".join(f"{1e6 * row[c]:.1f}" for c in COLS)
            + f" | {rt['median']:.2f}x | [{rt['ci95'][0]:.2f}, {rt['ci95'][1]:.2f}] |"
        )
    lines += ["", *(f"- {row['verdict']}" for row in rows), ""]
    text = "\n".join(lines)
    res.finish()
    md = res.write_beside(".md", text)
    print(text)
    print(f"wrote {res.path} and {md}")


if __name__ == "__main__":
    main()
