"""``mpiml report RUN [RUN ...]``: what a run's trace says (docs/report.md).

    mpiml report results/dasgd                       # aligned text tables
    mpiml report results/a results/b --markdown      # side by side: one summary table
    mpiml report results/a --json --steps 100:200 --straggler-threshold 0.2
    mpiml report results/a --plots figures/          # PNGs (mpiml.report.plots)

No MPI. A path that is not a run file, or a ``--plots`` DIR that is a file or cannot be
created: one line on stderr, exit status 2, before anything is printed. A window value
may start with a minus (``--steps -1:5``, ``--time -1:2``). A damaged run
(a rank file missing or unreadable) is reported for what is there, with a line per
rank that could not be read.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["join_window_values", "main"]

WINDOW_OPTIONS = ("--steps", "--time", "--ranks")
_NEGATIVE = re.compile(r"-[0-9.]")


def join_window_values(argv: Sequence[str], options: Iterable[str] = WINDOW_OPTIONS) -> list[str]:
    """``argv`` with ``OPT VALUE`` written ``OPT=VALUE`` for each of ``options`` whose
    value starts with a minus and a digit (``--steps -1:5``): argparse would take such a
    value for an option and fail with "expected one argument". Arguments after ``--``
    are left as they are."""
    opts, out = set(options), list(argv)
    i = 0
    while i < len(out) - 1:
        if out[i] == "--":
            break
        if out[i] in opts and _NEGATIVE.match(out[i + 1]):
            out[i : i + 2] = [f"{out[i]}={out[i + 1]}"]
        i += 1
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _window(text: str, kind: type) -> tuple:
    a, sep, b = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected A:B (got {text!r})")
    try:
        lo, hi = kind(a), kind(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two {kind.__name__}s A:B (got {text!r})") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"A must be < B (got {text!r})")
    return lo, hi


def _threshold(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (got {text!r})") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {text!r})")
    return v


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mpiml report", description="Summarise runs from their traces (run.h5).")
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="a run folder or its run.h5 (several: side by side)"
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument(
        "--json", action="store_true", help="one JSON document {runs: [{path, sections, missing}]}"
    )
    fmt.add_argument("--markdown", action="store_true", help="Markdown tables")
    p.add_argument(
        "--straggler-threshold",
        type=_threshold,
        default=0.1,
        metavar="F",
        help="a rank is a straggler when its median step time exceeds its role's median by more than F "
        "(fraction; default 0.1)",
    )
    p.add_argument(
        "--steps", type=lambda t: _window(t, int), metavar="A:B", help="only steps A..B-1 (0-based)"
    )
    p.add_argument(
        "--time", type=lambda t: _window(t, float), metavar="A:B", help="only seconds A..B of the run clock"
    )
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR (mpiml.report.plots)")
    return p


def _plots_folder(path: str) -> str | None:
    """Create the --plots folder; None when done, else the one-line error."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        return f"--plots {path}: exists and is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--plots {path}: cannot create the folder ({exc.strerror or exc})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(join_window_values(sys.argv[1:] if argv is None else argv))
    from .analysis import build_report, load
    from .render import render_json, render_markdown, render_text

    if args.plots:
        try:
            import matplotlib  # noqa: F401  (checked before anything is read or printed)
        except ImportError:
            sys.stderr.write("mpiml report: error: --plots needs matplotlib: pip install 'mpiml[plots]'\n")
            return 2
        why = _plots_folder(args.plots)
        if why is not None:
            sys.stderr.write(f"mpiml report: error: {why}\n")
            return 2
    runs = []
    for path in args.runs:
        if not os.path.exists(path):
            sys.stderr.write(f"mpiml report: error: {path}: no such run folder or file\n")
            return 2
        try:
            runs.append(load(path))
        except (OSError, ValueError, KeyError) as exc:
            sys.stderr.write(f"mpiml report: error: {path}: not a readable mpiml run file ({exc})\n")
            return 2
    reports = [
        build_report(run, steps=args.steps, time=args.time, straggler_threshold=args.straggler_threshold)
        for run in runs
    ]
    render = render_json if args.json else render_markdown if args.markdown else render_text
    sys.stdout.write(render(reports))
    if args.plots:
        from .plots import write_plots

        write_plots(runs, [rep.sections for rep in reports], args.plots, steps=args.steps, time=args.time)
    return 0


if __name__ == "__main__":
    sys.exit(main())
