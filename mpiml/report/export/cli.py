"""``mpiml trace export``: a run's timeline for Perfetto, chrome://tracing or Vampir.

    mpiml trace export RUN --format chrome|perfetto|otf2 [--ranks 0,2-3] [--steps A:B]
                       [--time A:B] [-o OUT]

RUN is a run folder or its run.h5. OUT defaults to ``RUN/trace.json`` (chrome),
``RUN/trace.pftrace`` (perfetto) or the folder ``RUN/otf2`` (otf2). Exit status: 0
written; 2 a bad option, a rank not in the run, an unreadable run or a missing optional
package (one line on stderr, naming the extra to install). A rank whose file is missing
or unreadable is left out with one line on stderr, and the rest is exported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...cli import RaisingParser, UsageError
from ..cli import join_window_values
from .window import ExportError, Window, parse_range, parse_ranks, scan

__all__ = ["FORMATS", "OTF2_PARTS", "check_otf2_folder", "export", "main"]


def _replace_file(out: Path, write: Callable[[Any], int], mode: str) -> int:
    """``write(fh)`` into a temporary file beside ``out``, renamed to ``out`` when it
    returns: a failure part way leaves ``out`` as it was and no partial file."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")  # created with the umask's mode
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
            n = write(fh)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return n


def _chrome(run: Any, ranks: list[int], window: Window, found: Any, out: Path) -> int:
    from .chrome import write_chrome

    return _replace_file(out, lambda fh: write_chrome(run, ranks, window, found, fh), "w")


def _perfetto(run: Any, ranks: list[int], window: Window, found: Any, out: Path) -> int:
    from .perfetto import write_perfetto

    return _replace_file(out, lambda fh: write_perfetto(run, ranks, window, found, fh), "wb")


OTF2_PARTS = ("traces.otf2", "traces.def", "traces")
"""What ``otf2.writer`` creates in an archive's folder (the anchor file, the global
definitions, the per-location files), and all that an export replaces there."""


def check_otf2_folder(out: Path) -> None:
    """ExportError (one line) unless ``out`` is absent, an empty folder or a folder
    holding only an OTF2 archive's parts (:data:`OTF2_PARTS`): the export replaces those
    and nothing else."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(f"-o {out}: exists and is not a folder; name a folder for the OTF2 archive")
    other = sorted(p.name for p in out.iterdir() if p.name not in OTF2_PARTS)
    if other:
        shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
        raise ExportError(
            f"-o {out}: holds files that are not an OTF2 archive's ({shown}); name another folder"
        )


def _otf2(run: Any, ranks: list[int], window: Window, found: Any, out: Path) -> int:
    from .otf2 import write_otf2

    check_otf2_folder(out)
    # the otf2 library writes only into a folder it creates: write the archive into a
    # temporary folder beside ``out``, then swap its parts in (an old archive's go)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        n = write_otf2(run, ranks, window, found, tmp / "archive")
        out.mkdir(exist_ok=True)
        for name in OTF2_PARTS:
            old = out / name
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            elif old.exists() or old.is_symlink():
                old.unlink()
        for name in OTF2_PARTS:
            if (tmp / "archive" / name).exists():
                os.replace(tmp / "archive" / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return n


Writer = Callable[[Any, list[int], Window, Any, Path], int]

# format -> (writer, default output name, the package it needs or None)
FORMATS: dict[str, tuple[Writer, str, str | None]] = {
    "chrome": (_chrome, "trace.json", None),
    "perfetto": (_perfetto, "trace.pftrace", "perfetto"),
    "otf2": (_otf2, "otf2", "otf2"),
}


def _need(package: str | None, fmt: str) -> None:
    """ExportError (one line, naming the extra) when ``package`` cannot be imported."""
    if package is None:
        return
    try:
        __import__(package)
    except ImportError:
        raise ExportError(
            f"{fmt} export needs the {package} package: pip install 'mpiml[{package}]'"
        ) from None


def export(
    run: Any, fmt: str, out: Path, window: Window | None = None, warn: Callable[[str], None] | None = None
) -> int:
    """Write ``run``'s events in ``window`` to ``out`` in format ``fmt``; returns the number
    of events written. ExportError for an unknown format, a rank not in the run or a
    missing package; ``warn`` gets one line per rank of the window whose file is missing
    or unreadable (those ranks are left out)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    writer, _, package = FORMATS[fmt]
    _need(package, fmt)
    window = Window() if window is None else window
    ranks = window.select(run)
    for r, why in window.absent(run):
        if warn is not None:
            warn(f"rank {r} left out: {why}")
    found = scan(run, ranks, window)
    for r, why in found.failed.items():
        if warn is not None:
            warn(f"rank {r} left out: its file could not be read ({why})")
    return writer(run, [r for r in ranks if r not in found.failed], window, found, out)


def _parser() -> argparse.ArgumentParser:
    ap = RaisingParser(
        prog="mpiml trace export", description="Export a run's timeline (Chrome JSON, Perfetto, OTF2)."
    )
    ap.add_argument("run", help="run folder or its run.h5")
    ap.add_argument("--format", "-f", required=True, help="chrome, perfetto or otf2")
    ap.add_argument("--ranks", help="ranks to export: a list with ranges, e.g. 0,2-3 (default: all)")
    ap.add_argument("--steps", help="steps A:B, half-open, 0-based (an end may be left out: 10:)")
    ap.add_argument("--time", help="seconds A:B on the run clock: the events overlapping [A, B)")
    ap.add_argument("-o", "--out", help="output file (otf2: folder); default in the run folder")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """``mpiml trace ...``; only ``export`` so far. Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["export"]:
        if argv[:1] in (["-h"], ["--help"]):
            print(
                "usage: mpiml trace export RUN --format chrome|perfetto|otf2 [options]; see mpiml trace export -h"
            )
            return 0
        print(
            "mpiml trace: error: the only subcommand is export (mpiml trace export RUN --format ...)",
            file=sys.stderr,
        )
        return 2
    try:
        args = _parser().parse_args(join_window_values(argv[1:]))
        window = Window(
            ranks=None if args.ranks is None else tuple(parse_ranks(args.ranks)),
            steps=None if args.steps is None else parse_range("--steps", args.steps, int),
            time=None if args.time is None else parse_range("--time", args.time, float),
        )
        if args.format not in FORMATS:
            raise ExportError(f"--format must be one of {', '.join(FORMATS)} (got {args.format!r})")
        _need(FORMATS[args.format][2], args.format)
        run = _open(args.run)
        folder = Path(run.path).parent
        out = Path(args.out) if args.out else folder / FORMATS[args.format][1]
        n = export(run, args.format, out, window, warn=lambda line: print(f"mpiml: {line}", file=sys.stderr))
    except (UsageError, ExportError) as exc:
        print(f"mpiml trace export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output cannot be written (no such folder, disk full...)
        print(f"mpiml trace export: error: {exc}", file=sys.stderr)
        return 2
    print(f"{out}: {n} events ({args.format})")
    return 0


def _open(path: str) -> Any:
    """The run, read lazily (ExportError, one line, when it cannot be read); the reader's
    warnings about missing ranks are left to :func:`export`'s lines."""
    import warnings

    from ...io import load_run

    if not os.path.exists(path):
        raise ExportError(f"{path}: no such run folder or file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_run(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{path}: cannot read the run ({type(exc).__name__}: {exc})") from None
