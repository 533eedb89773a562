"""The ``mpiml`` command: ``train``, ``layout``, ``info``, ``plan``, ``topology``, ``mixing``,
``examples``, ``launch``, ``report``, ``trace``.

    mpiexec -n 4 mpiml train [JOB.toml] [--set section.key=value]... [--out DIR] [--resume | --auto-resume]
    mpiml layout [JOB.toml] -n 8 [--set section.key=value]...
    mpiml info
    mpiml plan --preset resnet50-titanx | --tp MS --tc MS | --check results/RUN/run.h5
    mpiml topology ring --workers 8
    mpiexec -n 8 mpiml mixing --protocol gossip --topology ring
    mpiml examples [NAME... | all] [--to DIR]      (list, or copy out, the example jobs)
    mpiml launch [--to DIR]                        (where the launch scripts are, or copy them out)
    mpiml report results/RUN [RUN...] [--json | --markdown]   (what a run's trace says)
    mpiml trace export RUN --format chrome|perfetto|otf2 [--ranks 0,2-3] [--steps A:B] [--time A:B]
    mpiml --version

A job or argument error is one line on stderr (from rank 0), exit status 2, on
every rank, before any collective. An unhandled exception on any rank prints that
rank's traceback once and aborts the whole job (MPI_Abort), exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["RaisingParser", "UsageError", "main"]


class UsageError(Exception):
    """A sub-command's argument error, raised by :class:`RaisingParser` for the
    sub-command to print as its own one-line error (exit status 2)."""


class RaisingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _Parser(argparse.ArgumentParser):
    """Argument errors are printed by rank 0 only (every rank exits with status 2)."""

    def error(self, message: str) -> NoReturn:
        if _launcher_rank() == 0:
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _launcher_rank() -> int:
    """This process's rank as the launcher tells it, without initialising MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="mpiml", description="MPI toolkit for weakly consistent parallel learning")
    p.add_argument("--version", action="version", version=f"mpiml {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser("train", help="train a job (run under mpiexec/srun)")
    t.add_argument("job", nargs="?", help="job file (TOML); the embedded default job when omitted")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one job key (repeatable); VALUE is a TOML value or a bare word",
    )
    t.add_argument("--out", default="results", help="output folder (default: results)")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    mode.add_argument(
        "--auto-resume",
        action="store_true",
        help="--resume if the run has a checkpoint, else start anew and say so (for requeued SLURM jobs)",
    )
    mode.add_argument("--overwrite", action="store_true", help="replace an existing run of the same name")
    t.add_argument(
        "--print-job", action="store_true", help="print the validated job (every key) as TOML and exit"
    )
    t.add_argument(
        "--print-layout", action="store_true", help="print every rank's role on this many ranks and exit"
    )
    lay = sub.add_parser("layout", help="every rank's role for a job on N ranks (no mpiexec needed)")
    lay.add_argument("job", nargs="?", help="job file (TOML); the embedded default job when omitted")
    lay.add_argument("-n", type=int, required=True, metavar="N", help="number of ranks")
    lay.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    sub.add_parser("info", help="MPI library, ranks, thread level, CUDA-aware, parallel HDF5, cupy")
    ex = sub.add_parser("examples", help="list the example jobs, or copy some (or all) into a folder")
    ex.add_argument("names", nargs="*", metavar="NAME", help="example(s) to copy out; 'all' for every one")
    ex.add_argument("--to", default=".", metavar="DIR", help="folder to copy into (default: here)")
    ex.add_argument("--overwrite", action="store_true", help="replace files that exist in DIR")
    la = sub.add_parser("launch", help="where the mpirun/SLURM launch scripts are, or copy them out")
    la.add_argument("--to", metavar="DIR", help="copy the launch/ folder into DIR")
    la.add_argument("--overwrite", action="store_true", help="replace files that exist in DIR/launch")
    sub.add_parser("topology", help="a topology's W: degree, diameter, spectral gap rho", add_help=False)
    sub.add_parser("mixing", help="measure a protocol's mixing time (MixML), under mpiexec", add_help=False)
    sub.add_parser("trace", help="export a run's timeline: Chrome JSON, Perfetto, OTF2", add_help=False)
    sub.add_parser(
        "report", help="summarise runs from their traces (time, POP, stragglers, bytes)", add_help=False
    )
    sub.add_parser(
        "plan",
        help="DaSGD's analytic model: t_p, t_c, the delay that hides communication, time per epoch",
        add_help=False,
    )
    return p


def _rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


def _fail(message: str) -> int:
    if _rank() == 0:
        print(f"mpiml: error: {message}", file=sys.stderr, flush=True)
    return 2


def _train(args: argparse.Namespace) -> int:
    """``mpiml train``. Exit status, the same on every rank: 0 done; 2 a job error (one
    line); 3 the run diverged (one line, no checkpoint of it); 75 stopped after a
    checkpoint by SIGTERM or MPIML_STOP_FILE; 130 stopped after a checkpoint by SIGINT
    (a signal before training started: 128 + signal, nothing written); 1 a crash
    (the traceback of the rank that failed, MPI_Abort). A non-zero status leaves
    through :func:`mpiml.comm.leave`, so ``python -m mpi4py`` adds no "Abort(N)" lines."""
    import signal

    stops = (signal.SIGINT, signal.SIGTERM)
    # MPI_Init (inside `import mpi4py.MPI`) holds the GIL while it waits for every rank:
    # no Python handler runs there, and a rank signalled in it would wait forever for a
    # peer that already left. The default action ends it instead (the launcher then
    # names the signal).
    old = {s: signal.signal(s, signal.SIG_DFL) for s in stops}
    try:
        from mpi4py import MPI  # noqa: F401  (MPI_Init)

        # then a plain handler: a KeyboardInterrupt inside numpy's import becomes an ImportError
        for s in stops:
            signal.signal(s, _interrupted)
        from .run.signals import StartupSignals  # imports the driver (numpy, h5py)

        with StartupSignals(_launcher_rank()):  # until the loop (even inside an MPI call)
            status = _train_job(args)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if status:
        from .comm import leave

        leave(status)
    return 0


def _interrupted(
    signum: int, frame: object = None, when: str = " during start-up; nothing was trained"
) -> None:
    """Leave at once with 128 + signal; rank 0 says so in one line."""
    import signal

    if _launcher_rank() == 0:
        print(f"mpiml: interrupted by {signal.Signals(signum).name}{when}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + signum)


def _quiet_interrupt(fn: Callable[..., int]) -> Callable[..., int]:
    """A Ctrl-C that nothing else handles (arguments, imports; a command other than
    ``train``): one line from rank 0, no traceback, status 130 on every rank."""

    @functools.wraps(fn)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return fn(argv)
        except KeyboardInterrupt:
            _interrupted(2, when="")  # SIGINT
            raise

    return wrapped


def _train_job(args: argparse.Namespace) -> int:
    from .comm import EX_DIVERGED, agree, default_comm, install_abort_handler
    from .config import load_config
    from .errors import ConfigError, DivergenceError
    from .run.signals import EX_INTERRUPTED, EX_STOPPED

    install_abort_handler()
    comm = default_comm()
    try:
        cfg = agree(comm, lambda: load_config(args.job, args.overrides))
        if args.print_job:
            if comm.Get_rank() == 0:
                print(cfg.to_toml(), end="")
            return 0
        if args.print_layout:
            from .run import job_layout

            _, layout = agree(comm, lambda: job_layout(cfg, comm.Get_size()))
            if comm.Get_rank() == 0:
                print(layout.describe())
            return 0
        from .run import train

        resume: bool | str = "auto" if args.auto_resume else args.resume
        result = train(cfg, comm, out=args.out, resume=resume, overwrite=args.overwrite)
        if result.stopped_at is not None:  # after a checkpoint; resume with --resume
            return EX_INTERRUPTED if result.stopped_by == "SIGINT" else EX_STOPPED
    except ConfigError as exc:
        if not getattr(exc, "agreed", False):
            raise  # seen on this rank only: abort the job rather than leave others waiting
        return _fail(str(exc))  # raised on every rank by agree(): a clean exit everywhere
    except DivergenceError as exc:  # agreed by the loop on every rank
        if comm.Get_rank() == 0:
            print(f"mpiml: error: training diverged: {exc}", file=sys.stderr, flush=True)
        return EX_DIVERGED
    return 0


def _layout(args: argparse.Namespace) -> int:
    """Pure: the job's layout on ``-n`` ranks, with the rules that need it checked."""
    from .config import load_config
    from .errors import ConfigError
    from .run.setup import job_layout

    if args.n < 1:
        print(f"mpiml: error: -n must be >= 1 (got {args.n})", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.job, args.overrides)
        _, layout = job_layout(cfg, args.n)
    except ConfigError as exc:
        print(f"mpiml: error: {exc}", file=sys.stderr)
        return 2
    print(layout.describe())
    return 0


def _one_rank_hint(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """A one-line note on stderr when ``mpiml train`` runs on a single rank (no mpiexec)
    and the job does not ask for one (``run.world_size = 1``)."""
    if args.print_job or args.print_layout:
        return
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_size() != 1:
        return
    from .config import load_config
    from .errors import ConfigError

    try:
        if load_config(args.job, args.overrides).run.world_size == 1:
            return
    except ConfigError:
        return  # _train reports it
    import shlex

    print(
        f"mpiml: note: running on 1 rank; launch with `mpiexec -n 4 mpiml {shlex.join(argv)}` "
        "to train in parallel",
        flush=True,  # on stdout: an error after it is still the one line on stderr
    )


def _examples(args: argparse.Namespace) -> int:
    """List the example jobs (name and first line), or copy the named ones into --to."""
    from pathlib import Path

    from .resources import copy_out, examples

    found = examples()
    if not args.names:
        width = max(map(len, found), default=0)
        for name, path in found.items():
            first = path.read_text().splitlines()[:1]
            about = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            print(f"{name:<{width}}  {about}")
        print(
            f"({len(found)} jobs in {next(iter(found.values())).parent if found else '-'}; "
            "`mpiml examples NAME --to DIR` copies one, `all` every one)"
        )
        return 0
    names = list(found) if args.names == ["all"] else args.names
    unknown = [n for n in names if n.removesuffix(".toml") not in found]
    if unknown:
        print(f"mpiml: error: no example {unknown[0]!r} (known: {', '.join(found)}, or all)", file=sys.stderr)
        return 2
    try:
        sources = [found[n.removesuffix(".toml")] for n in names]
        for written in copy_out(sources, Path(args.to), overwrite=args.overwrite):  # all or nothing
            print(written)
    except OSError as exc:
        print(f"mpiml: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Say where the launch scripts are, or copy the launch/ folder into --to."""
    from pathlib import Path

    from .resources import copy_out, resource_path

    src = resource_path("launch")
    if args.to is None:
        for p in sorted(q for q in src.rglob("*") if q.is_file() and "__pycache__" not in q.parts):
            print(p)
        print("(`mpiml launch --to DIR` copies them into DIR/launch)")
        return 0
    try:
        for written in copy_out(src, Path(args.to), overwrite=args.overwrite):
            print(written)
    except OSError as exc:
        print(f"mpiml: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _info() -> int:
    from .info import collect, format_info

    report = collect()
    if report["rank"] == 0:
        print(format_info(report))
    return 0


@_quiet_interrupt
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["plan"]:  # its own parser (mpiml.plan); no MPI needed
        from .plan import main as plan_main

        return plan_main(argv[1:])
    if argv[:1] == ["topology"]:  # pure: no MPI
        from .topology.cli import main as topology_main

        return topology_main(argv[1:])
    if argv[:1] == ["mixing"]:  # under mpiexec
        from .mixing.cli import main as mixing_main

        return mixing_main(argv[1:])
    if argv[:1] == ["report"]:  # reads run files: no MPI
        from .report.cli import main as report_main

        return report_main(argv[1:])
    if argv[:1] == ["trace"]:  # post-processing a run file: no MPI
        from .report.export import main as trace_main

        return trace_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "train":
        _one_rank_hint(args, argv)
        return _train(args)
    if args.command == "examples":
        return _examples(args)
    if args.command == "launch":
        return _launch(args)
    if args.command == "info":
        return _info()
    if args.command == "layout":
        return _layout(args)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
