"""SDPIPE's group protocol beside AllReduce and gossip: measured t_mix against n, in one run.

    python -m mpiml.mixing.sdpipe_sweep                      # n = 2..4, results/mixing/sdpipe/
    python -m mpiml.mixing.sdpipe_sweep --n 2 3 --trials 5 --out /tmp/sdp

For every n: ``mpiml mixing --protocol allreduce`` and ``--protocol gossip --topology
ring`` on n ranks, and ``--protocol sdpipe`` on n + 1 ranks (n replicas and the
scheduler) in each of :data:`VARIANTS` (equal speeds; each batch's sleep jittered;
replica 0 twice as slow), each launched by :func:`mpiml.testing.run_ranks` (one
``mpiexec`` per measurement, killed on timeout). Then it reads the .h5 files back and
writes ``sdpipe.md`` (the table), ``sdpipe.json`` (the same rows and the machine) and
``sdpipe.png`` (matplotlib, :mod:`mpiml.report.plots`) into the output folder. Run it without mpiexec.

No file is replaced unless ``--overwrite`` is given: every file it would write is
checked before the first launch, and an existing one stops the sweep with one line
naming it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..testing import python_command, run_ranks
from .store import read_attrs, result_name
from .sweep import _under_mpiexec

__all__ = ["VARIANTS", "main", "outputs", "plan", "run_one", "sweep", "write_report"]

# (label, protocol, params) measured at every n; sdpipe's are beside the defaults of
# `mpiml mixing --protocol sdpipe` (period 0.01 s, 40 batches, the training job's waits)
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("AllReduce", "allreduce", {}),
    ("SyncDR (ring)", "gossip", {"topology": "ring"}),
    ("SDPIPE, equal speeds", "sdpipe", {}),
    ("SDPIPE, jitter 0.5", "sdpipe", {"jitter": 0.5}),
    ("SDPIPE, replica 0 2x slow, jitter 0.5", "sdpipe", {"slow": 2, "jitter": 0.5}),
)
TRIALS = {"allreduce": 50, "gossip": 50, "sdpipe": 20}
REPORT = ("sdpipe.md", "sdpipe.json", "sdpipe.png")


def plan(ns: Sequence[int]) -> list[tuple[str, str, dict[str, Any], int]]:
    """(label, protocol, params, n) of every measurement, in the order run."""
    return [(label, proto, params, n) for n in ns for label, proto, params in VARIANTS]


def outputs(ns: Sequence[int], out: str | Path) -> list[Path]:
    """Every file the sweep writes."""
    out = Path(out)
    return [out / result_name(proto, n, params) for _, proto, params, n in plan(ns)] + [
        out / name for name in REPORT
    ]


def run_one(
    protocol: str,
    n: int,
    params: dict[str, Any],
    out: Path,
    trials: int,
    timeout: float = 600.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """One measurement on n workers (n + 1 ranks for sdpipe); the result file's
    attributes (+ 'wall_s', 'ranks'). RuntimeError when the launch fails or times out
    (which includes refusing to replace an existing file without ``overwrite``)."""
    args = ["--protocol", protocol, "--trials", str(trials), "--out", str(out)]
    if overwrite:
        args.append("--overwrite")
    for k, v in params.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    ranks = n + 1 if protocol == "sdpipe" else n
    t0 = time.perf_counter()
    res = run_ranks(ranks, python_command("-m", "mpiml.mixing", *args), timeout)
    wall = time.perf_counter() - t0
    if res.timed_out or res.returncode != 0:
        why = f"timed out after {timeout:.0f} s" if res.timed_out else f"exit status {res.returncode}"
        raise RuntimeError(
            f"mpiml mixing {' '.join(args)} on {ranks} ranks: {why}\n{res.stdout}\n{res.stderr}"
        )
    attrs = read_attrs(out / result_name(protocol, n, params))
    attrs["wall_s"], attrs["ranks"] = wall, ranks
    return attrs


def sweep(
    ns: Sequence[int],
    out: str | Path,
    trials: int | None = None,
    overwrite: bool = False,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Measure every variant at every n; the rows (attributes + 'label').
    FileExistsError, before launching anything, when a file it would write exists and
    ``overwrite`` is false."""
    out = Path(out)
    if not overwrite and (there := [p for p in outputs(ns, out) if p.exists()]):
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        raise FileExistsError(
            f"{there[0]}{more} exists: pass --overwrite to replace, or --out DIR to write elsewhere"
        )
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, proto, params, n in plan(ns):
        a = run_one(proto, n, params, out, trials or TRIALS[proto], overwrite=overwrite)
        a["label"] = label
        log(f"{label:<40} n={n}  t_mix {a['t_mix']:g} (mean {a['t_mix_mean']:.1f})  {a['wall_s']:.1f} s")
        rows.append(a)
    return rows


def _cell(v: float) -> str:
    return "inf" if math.isinf(v) else (f"{v:g}" if v == int(v) else f"{v:.1f}")


def _plain(v: Any) -> Any:
    """A JSON value (inf/NaN as strings, numpy scalars as numbers)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v.item() if hasattr(v, "item") else v


def write_report(rows: Sequence[dict[str, Any]], out: str | Path, command: str = "") -> tuple[Path, ...]:
    """sdpipe.md, sdpipe.json and sdpipe.png in ``out``; returns their paths."""
    out = Path(out)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    machine = {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_at_end": load,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    keys = (
        "label", "protocol", "n", "ranks", "trials", "t_mix", "t_mix_mean", "t_mix_q50", "t_mix_q90",
        "t_mix0_max", "estimate", "rho", "group_mean", "group_full", "wall_s", "params",
    )  # fmt: skip
    table = [{k: _plain(a[k]) for k in keys if k in a} for a in rows]
    md_path, json_path, png_path = (out / name for name in REPORT)
    json_path.write_text(json.dumps({"machine": machine, "command": command, "rows": table}, indent=1) + "\n")
    lines = [
        "# SDPIPE's group protocol beside AllReduce and gossip: t_mix against n",
        "",
        f"Machine: {machine['hostname']}, {machine['nproc']} CPUs (n + 1 ranks oversubscribed for "
        f"SDPIPE), Python {machine['python']}, {machine['date']}, load at the end {load}.",
        f"Command: `{command}`." if command else "",
        "",
        "t_mix in MixML time steps (one step = one worker's update; an iteration of every "
        "replica = n steps; docs/mixing.md, SDPIPE): max over trials (mean, q90; max from t = 0 "
        "only, random state). SDPIPE: n replicas of one stage + the scheduler rank, the training "
        "job's wait_ms 1, wait_max_ms 10, ssp_bound 10, no sync round in a trial; 40 batches "
        "per trial, each batch's compute a 10 ms sleep; t_mix = Assumption 2 on the "
        "scheduler's groups for the worst state; group mean = mean members per group, full = "
        "the fraction of groups of all n.",
        "",
        "| protocol | n | trials | t_mix max | mean | q90 | t=0 max | estimate | group mean | full | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in rows:
        est = "-" if math.isnan(a["estimate"]) else _cell(a["estimate"])
        gm = f"{a['group_mean']:.2f}" if "group_mean" in a else "-"
        gf = f"{a['group_full']:.2f}" if "group_full" in a else "-"
        lines.append(
            f"| {a['label']} | {a['n']} | {a['trials']} | {_cell(a['t_mix'])} | {a['t_mix_mean']:.1f} | "
            f"{_cell(a['t_mix_q90'])} | {_cell(a['t_mix0_max'])} | {est} | {gm} | {gf} | "
            f"{a.get('wall_s', math.nan):.1f} |"
        )
    lines += ["", "![t_mix against n](sdpipe.png)", ""]
    md_path.write_text("\n".join(lines))
    _plot(rows, png_path)
    return md_path, json_path, png_path


def _plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """t_mix (max over trials) against n, one line per variant, SDPIPE's mean over trials
    dashed in its colour (:func:`mpiml.report.plots.line_panels`)."""
    from ..report.plots import Panel, Series, line_panels
    from ..report.plots.style import PALETTE

    series = []
    for i, label in enumerate(dict.fromkeys(a["label"] for a in rows)):
        rs = sorted((a for a in rows if a["label"] == label), key=lambda a: a["n"])
        ns, colour = [a["n"] for a in rs], PALETTE[i % len(PALETTE)]
        # the first (AllReduce) dashed: the ring's line lies on it at small n
        series.append(Series(ns, [a["t_mix"] for a in rs], label, dashed=i == 0, color=colour))
        if rs[0]["protocol"] == "sdpipe":
            series.append(
                Series(ns, [a["t_mix_mean"] for a in rs], f"{label}, mean", dashed=True, color=colour)
            )
    panel = Panel(
        series,
        title="SDPIPE's groups vs AllReduce and gossip: mixing time",
        xlabel="workers n (SDPIPE: replicas; + 1 scheduler rank)",
        ylabel="t_mix (time steps; max over trials, SDPIPE's mean dashed)",
    )
    line_panels([panel], path, size=(9.0, 4.5), legend="outside")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mpiml.mixing.sdpipe_sweep", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n", type=int, nargs="+", default=[2, 3, 4], help="workers (default 2 3 4)")
    p.add_argument("--trials", type=int, help=f"trials per measurement (default {TRIALS})")
    p.add_argument("--out", default="results/mixing/sdpipe", help="folder (default results/mixing/sdpipe)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    args = p.parse_args(argv)
    if min(args.n) < 2:
        p.error(f"--n: workers must be >= 2 (got {min(args.n)})")
    if args.trials is not None and args.trials < 1:
        p.error(f"--trials must be >= 1 (got {args.trials})")
    if _under_mpiexec():
        p.error("run the sweep without mpiexec: it launches the ranks of each measurement itself")
    t0 = time.perf_counter()
    try:
        rows = sweep(args.n, args.out, args.trials, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"python -m mpiml.mixing.sdpipe_sweep: error: {exc}", file=sys.stderr)
        return 2
    command = "python -m mpiml.mixing.sdpipe_sweep " + " ".join(sys.argv[1:] if argv is None else argv)
    paths = write_report(rows, args.out, command.strip())
    print(f"wrote {', '.join(str(q) for q in paths)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
