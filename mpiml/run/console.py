"""What rank 0 prints: the header, a progress line per evaluation, the summary.

Times on the progress line and in the summary are rank 0's, grouped by the categories of
:mod:`mpiml.kinds`: ``compute``, ``codec`` (a codec's encode and decode; shown only when
the job compresses), ``comm`` (blocking communication), ``wait`` (blocked in a
split-phase finish), ``in flight`` (split-phase operations under way meanwhile). The
summary adds the set-up's ``codec_compile`` time (the kernels compiled or loaded before
step 1) when there was one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..config import Config
from ..kinds import kinds_in
from ..layout import Layout
from ..trace import Trace

__all__ = ["header", "progress", "summary"]


def header(cfg: Config, layout: Layout, threads: int, run_dir: Path, stream: TextIO) -> None:
    roles = "" if layout.name == "data_parallel" else f" ({layout.roles_line()})"
    print(
        f"mpiml: {cfg.algorithm.name} on {layout.size} rank{'s' * (layout.size != 1)}{roles} ({threads} BLAS thread(s) each), "
        f"model {cfg.model.name}, data {cfg.data.name}, optimizer {cfg.optimizer.name} lr={cfg.optimizer.lr}, "
        f"{cfg.run.steps} steps -> {run_dir}",
        file=stream,
        flush=True,
    )


def times(trace: Trace) -> dict[str, float | None]:
    """Rank 0's seconds per column: ``compute``, ``codec`` (None when no codec event was
    traced), ``comm``, ``wait``, ``in_flight``, and ``codec_compile`` (None when none)."""
    split: dict[str, float | None] = dict(trace.split_totals())
    codec = [k for k in kinds_in("codec") if k in trace.totals]
    split["codec"] = sum(trace.totals[k] for k in codec) if codec else None
    split["codec_compile"] = trace.totals.get("codec_compile")
    return split


def _columns(t: dict[str, float | None]) -> str:
    codec = "" if t["codec"] is None else f" codec {t['codec']:.2f}s"
    return f"compute {t['compute']:.2f}s{codec} comm {t['comm']:.2f}s wait {t['wait']:.2f}s" + (
        f" (in flight {t['in_flight']:.2f}s)" if t["in_flight"] else ""
    )


def progress(
    done: int, steps: int, m: dict[str, float], trace: Trace, elapsed: float, stream: TextIO
) -> None:
    acc = f" acc {m['accuracy']:.4f}" if "accuracy" in m else ""
    print(
        f"step {done:>6}/{steps} loss {m['loss']:.4f} test_loss {m['test_loss']:.4f}{acc} | "
        f"{_columns(times(trace))} | {elapsed:.1f}s",
        file=stream,
        flush=True,
    )


def summary(
    cfg: Config, m: dict[str, float], run_dir: Path, wall: float, stream: TextIO, trace: Trace | None = None
) -> None:
    """The closing lines; with ``trace`` (rank 0's), its time split and the codec's
    set-up compile time."""
    acc = f", test accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""
    split = ""
    if trace is not None:
        t = times(trace)
        compiled = (
            ""
            if t["codec_compile"] is None
            else f"; codec kernels ready in {t['codec_compile']:.2f}s at set-up"
        )
        split = f"\nrank 0: {_columns(t)}{compiled}"
    print(
        f"mpiml: done in {wall:.1f}s: {cfg.run.steps} steps, test loss {m.get('test_loss', float('nan')):.4f}{acc}, "
        f"{m.get('bytes_sent', 0) / 1e6:.1f} MB sent{split}\nrun file: {run_dir / 'run.h5'}",
        file=stream,
        flush=True,
    )
