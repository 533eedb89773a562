"""What rank 0 prints: the header, a progress line per evaluation, the summary."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from ..config import Config
from ..layout import Layout
from ..trace import Trace

__all__ = ["header", "progress", "summary"]


def header(cfg: Config, layout: Layout, threads: int, run_dir: Path, stream: TextIO) -> None:
    roles = (
        ""
        if layout.name == "data_parallel"
        else (" (" + ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in layout.counts.items()) + ")")
    )
    print(
        f"mpiml: {cfg.algorithm.name} on {layout.size} rank{'s' * (layout.size != 1)}{roles} ({threads} BLAS thread(s) each), "
        f"model {cfg.model.name}, data {cfg.data.name}, optimizer {cfg.optimizer.name} lr={cfg.optimizer.lr}, "
        f"{cfg.run.steps} steps -> {run_dir}",
        file=stream,
        flush=True,
    )


def progress(
    done: int, steps: int, m: dict[str, float], trace: Trace, elapsed: float, stream: TextIO
) -> None:
    split = trace.split_totals()
    acc = f" acc {m['accuracy']:.4f}" if "accuracy" in m else ""
    print(
        f"step {done:>6}/{steps} loss {m['loss']:.4f} test_loss {m['test_loss']:.4f}{acc} | "
        f"compute {split['compute']:.2f}s comm {split['comm']:.2f}s wait {split['wait']:.2f}s"
        + (f" (in flight {split['in_flight']:.2f}s)" if split["in_flight"] else "")
        + f" | {elapsed:.1f}s",
        file=stream,
        flush=True,
    )


def summary(cfg: Config, m: dict[str, float], run_dir: Path, wall: float, stream: TextIO) -> None:
    acc = f", test accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""
    print(
        f"mpiml: done in {wall:.1f}s: {cfg.run.steps} steps, test loss {m.get('test_loss', float('nan')):.4f}{acc}, "
        f"{m.get('bytes_sent', 0) / 1e6:.1f} MB sent\nrun file: {run_dir / 'run.h5'}",
        file=stream,
        flush=True,
    )
