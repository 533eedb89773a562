"""What every script in benchmarks/ shares: its output file, partial results, verdicts.

- **Output** (``--out PATH``, ``--overwrite``, ``--quick``): a full run writes
  ``results/benchmarks/<name>.json`` (and ``.md`` beside it) by default; a ``--quick``
  run writes to a fresh file under the system's temporary folder unless ``--out`` says
  otherwise. A file this run did not create is never replaced without ``--overwrite``:
  the check comes first (on rank 0, agreed by every rank, before any measurement), and
  the JSON file is claimed at once (``O_EXCL``), so two runs cannot both take it.
- **Partial results**: :class:`Results` rewrites the JSON file atomically (temporary
  name + ``os.replace``) after each measured point, with ``"complete": false`` until the
  run ends; an interrupted run leaves every point measured so far.
- **Verdicts with their confidence interval**: :func:`median_ci` (the order-statistic
  interval of the median), :func:`ratio_ci` (bootstrap, two independent samples) and
  :func:`verdict`, which says "meets" or
  "MISSES" only when the interval lies wholly on one side of the target, and otherwise
  "inconclusive at this noise".
- **Abort on error**: :func:`abort_on_error` installs mpiml's abort handler in a process
  that mpiexec started, so an exception on one rank ends the job (issue #16.8). A driver
  that only launches mpiexec itself is a plain process and does not initialise MPI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "benchmarks"
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
LEVEL = 0.95


def train_job(out: Path, name: str, n: int, sets: dict[str, Any], timeout: float) -> Path:
    """Train one job on ``n`` ranks (``mpiexec ... python -m mpiml.cli train``, run.name =
    ``name``, every ``--set`` of ``sets``) into ``out``; its run folder. RuntimeError with
    the output's tail when it fails or times out."""
    from mpiml.testing import python_command, run_ranks

    args = ["train", "--out", str(out), "--overwrite", "--set", f"run.name={name}"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    r = run_ranks(n, python_command("-m", "mpiml.cli", *args), timeout, cwd=str(ROOT))
    if r.returncode != 0:
        tail = (r.stdout[-1500:] + "\n" + r.stderr[-2500:]).strip()
        raise RuntimeError(f"{name}: exit {r.returncode}{' (timed out)' if r.timed_out else ''}: {tail}")
    return out / name


def launched_by_mpiexec() -> bool:
    """True in a process that mpiexec (or srun) started as an MPI rank."""
    return any(v in os.environ for v in RANK_VARS)


def abort_on_error(force: bool = False) -> None:
    """Install mpiml's abort handler if this process is an MPI rank (or ``force``)."""
    if force or launched_by_mpiexec():
        from mpiml.comm import install_abort_handler

        install_abort_handler()


def add_output_args(ap: argparse.ArgumentParser, name: str, quick_help: str) -> None:
    """--quick, --out PATH, --overwrite."""
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument(
        "--out",
        type=Path,
        help=f"JSON result file (a .md beside it); default results/benchmarks/{name}.json, "
        f"or a fresh file in {tempfile.gettempdir()} with --quick; a folder takes {name}.json inside",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def output_path(out: Path | None, name: str, quick: bool) -> Path:
    """Where the JSON goes (see the module docstring)."""
    if out is None:
        if not quick:
            return RESULTS / f"{name}.json"
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.gettempdir()) / f"mpiml-bench-{name}-quick-{stamp}-{os.getpid()}.json"
    if out.is_dir() or str(out).endswith(os.sep):
        return out / f"{name}.json"
    return out


def machine() -> dict[str, Any]:
    """Where and when it ran."""
    cpus = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    return {
        "hostname": socket.gethostname(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpus[0] if cpus else platform.processor() or "?",
        "os": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class Results:
    """One JSON result file, rewritten atomically after each point.

    ``doc`` is the whole document (``"complete"``, ``"command"``, ``"machine"`` plus
    whatever the benchmark adds); ``save()`` writes it; ``finish()`` marks it complete.
    Construct it on the rank that writes (``path=None`` elsewhere: every method is then
    a no-op), after :func:`claim` has agreed that the path may be written.
    """

    def __init__(self, path: Path | None, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc  # the caller's dict: what it adds later is saved too
        doc["complete"] = False
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(_compact(json.dumps(self.doc, indent=1, default=_plain)) + "\n")
        os.replace(tmp, self.path)

    def finish(self, **extra: Any) -> None:
        self.doc.update(extra, complete=True)
        self.save()

    def write_beside(self, suffix: str, text: str) -> Path | None:
        """Write ``<stem><suffix>`` (e.g. the .md table) beside the JSON, atomically."""
        if self.path is None:
            return None
        path = self.path.with_suffix(suffix)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        return path


def claim(path: Path, companions: Sequence[str] = (".md",), overwrite: bool = False) -> str | None:
    """Check that ``path`` (and ``<stem><suffix>`` for each companion) may be written,
    and create ``path`` exclusively; returns the one-line error, or None when claimed."""
    paths = [path, *(path.with_suffix(s) for s in companions)]
    there = [p for p in paths if p.exists() or p.is_symlink()]
    if there and not overwrite:
        more = f" (and {len(there) - 1} more)" if len(there) > 1 else ""
        return f"{there[0]}{more} exists: pass --overwrite to replace it, or --out PATH to write elsewhere"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            return None
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return f"{path} exists: pass --overwrite to replace it, or --out PATH to write elsewhere"
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror}"
    return None


def claim_or_exit(
    path: Path,
    companions: Sequence[str] = (".md",),
    overwrite: bool = False,
    comm: Any = None,
    prog: str = "",
) -> None:
    """:func:`claim` on rank 0 of ``comm`` (or here), the verdict shared by every rank;
    on refusal every rank exits with status 2 and rank 0 prints the one line."""
    rank = 0 if comm is None else comm.Get_rank()
    error = claim(path, companions, overwrite) if rank == 0 else None
    if comm is not None:
        error = comm.bcast(error, root=0)
    if error:
        if rank == 0:
            print(f"{prog or Path(sys.argv[0]).name}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def median_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(median, low, high): the distribution-free ``level`` interval of the median.

    The interval [x_(k), x_(n+1-k)] of the sorted sample, with the largest k whose
    coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least ``level`` (no assumption on the
    distribution of the times, which are skewed). Below 6 samples no such k exists at
    95 % and the bounds are NaN: :func:`verdict` then says "too few samples".
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[np.isfinite(x)]
    n = x.size
    if n == 0:
        return (float("nan"),) * 3
    med = float(np.median(x))
    best = None
    for k in range(1, n // 2 + 1):
        below = sum(math.comb(n, i) for i in range(k)) / 2**n  # P(Bin(n, 1/2) < k)
        if 1 - 2 * below >= level:
            best = k
    if best is None:
        return med, float("nan"), float("nan")
    return med, float(x[best - 1]), float(x[n - best])


def ratio_ci(
    num: Sequence[float], den: Sequence[float], level: float = LEVEL, seed: int = 0
) -> tuple[float, float, float]:
    """(median(num)/median(den), low, high) for two independent samples (percentile
    bootstrap, each resampled on its own)."""
    a, b = np.asarray(num, np.float64), np.asarray(den, np.float64)
    ratio = float(np.median(a) / np.median(b))
    if a.size < 2 or b.size < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = np.median(rng.choice(a, (2000, a.size)), axis=1) / np.median(
        rng.choice(b, (2000, b.size)), axis=1
    )
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return ratio, float(lo), float(hi)


def verdict(ci: tuple[float, float, float], target: float, higher_is_better: bool, what: str) -> str:
    """One line: '<what> meets/MISSES the target (...)' only when the interval excludes
    the target; otherwise 'inconclusive at this noise'. Always with the interval."""
    med, lo, hi = ci
    side = ">=" if higher_is_better else "<="
    stated = f"median {med:.3f}, {int(LEVEL * 100)}% CI [{lo:.3f}, {hi:.3f}]"
    if not np.isfinite(lo) or not np.isfinite(hi):
        return f"{what}: inconclusive (too few samples for an interval; median {med:.3f}; target {side} {target})"
    good = lo >= target if higher_is_better else hi <= target
    bad = hi < target if higher_is_better else lo > target
    word = "meets" if good else "MISSES" if bad else "inconclusive at this noise for"
    return f"{what} {word} the target ({side} {target}): {stated}"


def verdict_word(line: str) -> str:
    """'meets', 'MISSES' or 'inconclusive' from a :func:`verdict` line."""
    return "meets" if " meets " in line else "MISSES" if " MISSES " in line else "inconclusive"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON: {type(v).__name__}")


def _compact(text: str) -> str:
    """JSON text with each list of scalars on one line (series are long)."""
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
