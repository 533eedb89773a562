"""MixML Figure 3: measured t_mix against the number of workers n, per protocol.

    python -m mpiml.mixing.sweep                       # n = 2..8, results/mixing/
    python -m mpiml.mixing.sweep --n 2 4 8 --trials 50 --protocols gossip async_gossip

For every protocol and n, one ``mpiexec -n N python -m mpi4py -m mpiml.mixing ...``
(:func:`mpiml.testing.run_ranks`, so an oversubscribed workstation works and a stuck
run is killed) writes its .h5 file; then :func:`write_figure` reads the files back and
writes ``figure3.png`` (matplotlib: :func:`mpiml.report.plots.line_panels`, the
``plots`` extra) and ``figure3.md``. ``--redraw`` draws figure3.png again from the
result files in ``--out`` without measuring anything. The
sweep process itself never initialises MPI (it launches the ranks; run it without
mpiexec); each launched measurement installs mpiml's abort handler, so an exception on
one of its ranks ends that launch at once.

No file is replaced unless ``--overwrite`` is given: every file the sweep would write is
checked before the first launch, and an existing one stops the sweep with one line
naming it (the committed results/mixing/ files stay as they are; use ``--out``). The
figure also draws the result files of the protocols not run that are already in the
folder at the same n (``--protocols async_ps --overwrite`` adds AsyncPS to the committed
figure without measuring the others again).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..testing import python_command, run_ranks
from .store import read_attrs, result_name

__all__ = [
    "LABELS",
    "TRIALS",
    "draw_figure",
    "existing_outputs",
    "figure_panel",
    "kept_rows",
    "main",
    "redraw",
    "run_one",
    "sweep",
    "write_figure",
]

# MixML §6 names
LABELS = {
    "allreduce": "AllReduce",
    "local_step": "Local Step (m={m})",
    "gossip": "SyncDR ({topology})",
    "async_gossip": "AsyncDR ({topology})",
    "async_ps": "AsyncPS",
}
# trials per run: the synchronous protocols are deterministic given X and cost two records
TRIALS = {"allreduce": 200, "local_step": 200, "gossip": 50, "async_gossip": 100, "async_ps": 20}
# AsyncPS: n workers and this many server ranks (n + PS_SERVERS ranks per launch)
PS_SERVERS = 1


def _params(protocol: str, topology: str, m: int) -> dict[str, Any]:
    if protocol in ("gossip", "async_gossip"):
        return {"topology": topology}
    if protocol == "async_ps":
        return {"servers": PS_SERVERS}
    return {"m": m} if protocol == "local_step" else {}


def run_one(
    protocol: str,
    n: int,
    out: Path,
    trials: int,
    topology: str = "ring",
    m: int = 2,
    timeout: float = 300.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Measure one protocol on n workers (n ranks; n + servers ranks for async_ps);
    returns the result file's attributes (+ 'wall_s').

    Raises RuntimeError when the launch fails or times out (its output attached), which
    includes the launch refusing to replace an existing file without ``overwrite``.
    """
    params = _params(protocol, topology, m)
    args = ["--protocol", protocol, "--trials", str(trials), "--out", str(out)]
    if overwrite:
        args.append("--overwrite")
    for k, v in params.items():
        args += [f"--{k}", str(v)]
    t0 = time.perf_counter()
    ranks = n + int(params.get("servers", 0))
    res = run_ranks(ranks, python_command("-m", "mpiml.mixing", *args), timeout)
    wall = time.perf_counter() - t0
    if res.timed_out or res.returncode != 0:
        why = f"timed out after {timeout:.0f} s" if res.timed_out else f"exit status {res.returncode}"
        raise RuntimeError(
            f"mpiml mixing --protocol {protocol} on {ranks} ranks: {why}\n{res.stdout}\n{res.stderr}"
        )
    attrs = read_attrs(out / result_name(protocol, n, params))
    attrs["wall_s"] = wall
    return attrs


def existing_outputs(
    ns: Sequence[int], protocols: Sequence[str], out: str | Path, topology: str = "ring", m: int = 2
) -> list[Path]:
    """The files a sweep would write (one .h5 per protocol and n, figure3.png/.md) that exist."""
    out = Path(out)
    names = [result_name(p, n, _params(p, topology, m)) for p in protocols for n in ns]
    return [out / name for name in [*names, "figure3.png", "figure3.md"] if (out / name).exists()]


def kept_rows(
    ns: Sequence[int], protocols: Sequence[str], out: str | Path, topology: str = "ring", m: int = 2
) -> list[dict[str, Any]]:
    """The attributes of the result files already in ``out`` for ``protocols`` at ``ns``:
    a sweep of some protocols draws the others' earlier results in the same figure."""
    out = Path(out)
    paths = [out / result_name(p, n, _params(p, topology, m)) for p in protocols for n in ns]
    return [read_attrs(path) for path in paths if path.exists()]


def sweep(
    ns: Sequence[int],
    protocols: Sequence[str],
    out: str | Path = "results/mixing",
    trials: int | None = None,
    topology: str = "ring",
    m: int = 2,
    log: Any = print,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Run every protocol at every n (``trials`` for all, or :data:`TRIALS`).

    Raises FileExistsError, before launching anything, when a file it would write exists
    and ``overwrite`` is false.
    """
    out = Path(out)
    if not overwrite and (there := existing_outputs(ns, protocols, out, topology, m)):
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        raise FileExistsError(
            f"{there[0]}{more} exists: pass --overwrite to replace, or --out DIR to write elsewhere"
        )
    rows = []
    for protocol in protocols:
        for n in ns:
            a = run_one(protocol, n, out, trials or TRIALS[protocol], topology, m, overwrite=overwrite)
            log(
                f"{protocol:<13} n={n}  t_mix {a['t_mix']:g} (mean {a['t_mix_mean']:.1f}, "
                f"estimate {a['estimate']:g})  {a['wall_s']:.1f} s"
            )
            rows.append(a)
    return rows


def _label(a: dict[str, Any]) -> str:
    return LABELS[str(a["protocol"])].format(m=a.get("m", ""), topology=a.get("topology", ""))


def _cell(v: float) -> str:
    return "inf" if math.isinf(v) else (f"{v:g}" if v == int(v) else f"{v:.1f}")


def _wall(a: dict[str, Any]) -> str:
    return f"{a['wall_s']:.1f}" if "wall_s" in a else "-"  # a file read back has no wall time


def _by_label(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for a in rows:
        by.setdefault(_label(a), []).append(a)
    for rs in by.values():
        rs.sort(key=lambda a: a["n"])
    return by


def figure_panel(rows: Sequence[dict[str, Any]]) -> Any:
    """Figure 3 as a :class:`mpiml.report.plots.Panel`: t_mix (max over trials) against n,
    one line per protocol, the gossip spectral bound dashed."""
    from ..report.plots import Panel, Series

    by = _by_label(rows)
    series = [Series([a["n"] for a in rs], [a["t_mix"] for a in rs], label) for label, rs in by.items()]
    series += [
        Series(
            [a["n"] for a in rs],
            [a["estimate"] for a in rs],
            f"{label} spectral bound",
            dashed=True,
            color="black",
        )
        for label, rs in by.items()
        if rs[0]["protocol"] == "gossip"
    ]
    return Panel(
        series,
        title="Mixing time against workers (MixML Fig. 3)",
        xlabel="workers n",
        ylabel="t_mix (time steps, max over trials)",
    )


def draw_figure(rows: Sequence[dict[str, Any]], out: str | Path = "results/mixing") -> Path:
    """figure3.png in ``out`` (:func:`figure_panel`, 8 x 5 inches at 100 dpi); returns
    its Path. ImportError (naming the ``plots`` extra) without matplotlib."""
    from ..report.plots import line_panels

    return line_panels([figure_panel(rows)], Path(out) / "figure3.png", size=(8.0, 5.0), legend="outside")


def redraw(
    out: str | Path = "results/mixing", ns: Sequence[int] = range(2, 9), topology: str = "ring", m: int = 2
) -> Path:
    """Draw figure3.png again from the result files already in ``out`` (every protocol of
    :data:`LABELS` at ``ns``), measuring nothing; figure3.md is left as it is (it holds
    the sweep's wall times, which the files do not). Raises FileNotFoundError when
    ``out`` has none of them."""
    rows = kept_rows(ns, list(LABELS), out, topology, m)
    if not rows:
        raise FileNotFoundError(f"{out} has no result file of {', '.join(LABELS)} at n = {list(ns)}")
    return draw_figure(rows, out)


def write_figure(rows: Sequence[dict[str, Any]], out: str | Path = "results/mixing") -> tuple[Path, Path]:
    """figure3.png (:func:`draw_figure`) and figure3.md (the numbers, with mean and the
    t = 0 max); returns their Paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by = _by_label(rows)
    png = draw_figure(rows, out)
    lines = [
        "# Mixing time against the number of workers (MixML Figure 3)",
        "",
        "t_mix in MixML time steps (one step = one worker's update; docs/mixing.md): max over trials "
        "of the worst start (mean over trials; max from t = 0 only); estimate = n for AllReduce, "
        "m n for Local Step, the spectral bound n ceil(log(1/2)/log(rho)) for SyncDR, the model n "
        "for AsyncPS with a fixed order (2n - 1 when the order of a round changes; n workers and one "
        "server rank; t_mix = the longest gap between two pulls of a worker, the mean gap in the last "
        "column).",
        "",
        "| protocol | n | trials | t_mix max | mean | q90 | t=0 max | estimate | rho | wall s | mean gap |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, rs in by.items():
        for a in rs:
            est = "-" if math.isnan(a["estimate"]) else _cell(a["estimate"])
            rho = "-" if math.isnan(a["rho"]) else f"{a['rho']:.4f}"
            lines.append(
                f"| {label} | {a['n']} | {a['trials']} | {_cell(a['t_mix'])} | {a['t_mix_mean']:.1f} | "
                f"{_cell(a['t_mix_q90'])} | {_cell(a['t_mix0_max'])} | {est} | {rho} | {_wall(a)} | "
                + (f"{a['gap_mean']:.2f} |" if "gap_mean" in a else "- |")
            )
    lines += ["", "![t_mix against n](figure3.png)", ""]
    md = out / "figure3.md"
    md.write_text("\n".join(lines))
    return png, md


def _under_mpiexec() -> bool:
    """True when this process is one rank of several (MPICH/Hydra, srun with PMI, Open MPI)."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpiml.mixing.sweep", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=list(range(2, 9)), help="rank counts (default 2..8)")
    p.add_argument("--protocols", nargs="+", default=list(LABELS), choices=list(LABELS))
    p.add_argument("--trials", type=int, help=f"trials per run for every protocol (default {TRIALS})")
    p.add_argument("--topology", default="ring")
    p.add_argument("--m", type=int, default=2)
    p.add_argument("--out", default="results/mixing", help="result folder (default results/mixing)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument(
        "--redraw",
        action="store_true",
        help="draw figure3.png again from the result files in --out; measure nothing",
    )
    args = p.parse_args(argv)
    if args.redraw:
        try:
            print(f"wrote {redraw(args.out, args.n, args.topology, args.m)}")
        except FileNotFoundError as exc:
            print(f"python -m mpiml.mixing.sweep: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if min(args.n) < 1:
        p.error(f"--n: rank counts must be >= 1 (got {min(args.n)})")
    if _under_mpiexec():
        p.error("run the sweep without mpiexec: it launches the ranks of each measurement itself")
    t0 = time.perf_counter()
    try:
        rows = sweep(
            args.n, args.protocols, args.out, args.trials, args.topology, args.m, overwrite=args.overwrite
        )
    except FileExistsError as exc:
        print(f"python -m mpiml.mixing.sweep: error: {exc}", file=sys.stderr)
        return 2
    kept = kept_rows(args.n, [q for q in LABELS if q not in args.protocols], args.out, args.topology, args.m)
    order = list(LABELS)
    png, md = write_figure(sorted([*rows, *kept], key=lambda a: order.index(str(a["protocol"]))), args.out)
    also = f"; with {len(kept)} earlier result(s) of other protocols" if kept else ""
    print(f"wrote {png} and {md} ({time.perf_counter() - t0:.0f} s{also})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
