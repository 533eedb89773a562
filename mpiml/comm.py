"""Communicator helpers: mpiml's own communicator, agreement on errors, abort on failure.

mpiml never talks on the user's communicator: the default is a duplicate of
COMM_WORLD made once, lazily, on first use (as mpi4jax does), so tags and
collectives cannot collide with the user's own.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from mpi4py import MPI

from .errors import ConfigError

if TYPE_CHECKING:
    from .layout import Layout

__all__ = [
    "EX_DIVERGED",
    "Comms",
    "ConfigError",
    "agree",
    "default_comm",
    "exit_status",
    "install_abort_handler",
    "leave",
    "local_size",
    "split",
]

T = TypeVar("T")

_default: MPI.Comm | None = None


def default_comm() -> MPI.Comm:
    """A duplicate of COMM_WORLD, created on first use and reused afterwards."""
    global _default
    if _default is None:
        _default = MPI.COMM_WORLD.Dup()
        _default.Set_name("mpiml")
    return _default


def agreed_error(text: str) -> ConfigError:
    """A ConfigError that every rank raises identically (the CLI exits cleanly on it)."""
    err = ConfigError(text)
    err.agreed = True  # type: ignore[attr-defined]
    return err


def agree(comm: MPI.Comm, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised on any rank, raise on all.

    Collective over ``comm`` (one small allgather of the error texts; pickle is fine
    for this start-up control message); ``fn`` itself must make no collective call.
    A :class:`ConfigError` anywhere makes every rank raise the lowest rank's error (so
    the same one-line message is seen whatever rank prints it). Any other exception is
    re-raised with its traceback on the rank where it happened, and the others raise a
    RuntimeError naming that rank: no rank is left waiting in a collective.
    """
    result: T | None = None
    verdict: tuple[str, str] = ("", "")
    failure: BaseException | None = None
    try:
        result = fn()
    except ConfigError as exc:
        verdict = ("config", str(exc) or type(exc).__name__)
    except Exception as exc:
        verdict, failure = ("error", f"{type(exc).__name__}: {exc}"), exc
    verdicts = comm.allgather(verdict)
    for kind, text in verdicts:
        if kind == "config":
            raise agreed_error(text)
    for rank, (kind, text) in enumerate(verdicts):
        if kind == "error":
            if failure is not None:
                raise failure
            raise RuntimeError(f"rank {rank} failed while every rank was checking the job: {text}")
    return result  # type: ignore[return-value]


def local_size(comm: MPI.Comm) -> int:
    """Number of ranks of ``comm`` on this node (collective over comm)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(node.Get_size())
    finally:
        node.Free()


@dataclass
class Comms:
    """The communicators of one rank, split from the layout once at set-up.

    ``world``: mpiml's duplicate of COMM_WORLD (every rank; driver hooks that need all
    ranks: checkpoints, the final barrier). ``peers``: the ranks holding the same
    parameters as this one (``Layout.peers``; averaging protocols run here).
    ``role``: the ranks of the same kind (metrics and evaluation of one role).
    In a data-parallel layout all three hold every rank (three communicators, so
    the algorithm's messages, evaluation and driver never share a context).
    """

    world: MPI.Comm
    peers: MPI.Comm
    role: MPI.Comm

    def free(self) -> None:
        """Free the split communicators (collective over world; ``world`` is kept)."""
        for c in (self.peers, self.role):
            if c != MPI.COMM_NULL:
                c.Free()


def split(world: MPI.Comm, layout: Layout) -> Comms:
    """Split ``world`` by ``layout`` (collective over world, once, at set-up).

    Ranks keep their relative order in every communicator (key = world rank), so rank
    r of ``peers`` is the r-th peer in rank order, the same on every member.
    """
    if layout.size != world.Get_size():
        raise ValueError(f"layout of {layout.size} ranks on a communicator of {world.Get_size()}")
    from .layout import KINDS

    rank = world.Get_rank()
    peers = world.Split(min(layout.peers(rank)), rank)
    peers.Set_name(f"mpiml-peers-{layout.roles[rank].kind}")
    role = world.Split(KINDS.index(layout.roles[rank].kind), rank)
    role.Set_name(f"mpiml-role-{layout.roles[rank].kind}")
    return Comms(world, peers, role)


_cleanups: list[Callable[[], None]] = []


def on_abort(fn: Callable[[], None]) -> None:
    """Register ``fn`` to run (best effort) before this rank aborts the job."""
    _cleanups.append(fn)


def off_abort(fn: Callable[[], None]) -> None:
    """Forget a cleanup registered with :func:`on_abort` (its resources are closed)."""
    if fn in _cleanups:
        _cleanups.remove(fn)


def install_abort_handler() -> None:
    """Make an unhandled exception on any rank abort the whole job (idempotent).

    Prints that rank's traceback once (prefixed with the rank), runs the
    registered cleanups (flushing trace files), then calls MPI_Abort, so the
    other ranks never hang in a collective or in finalize. Two exceptions that are
    not crashes get one line and no traceback: an error that every rank raised alike
    (``agreed``: a job error, status 2; a diverged run, :class:`DivergenceError`,
    status 3), printed by rank 0, each rank then leaving with that status; and a
    KeyboardInterrupt, status 130. :func:`mpiml.train` and the ``mpiml`` command
    install it; call it first in your own scripts run under mpiexec.
    """
    if getattr(sys.excepthook, "_mpiml_abort", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else 0
        if getattr(exc, "agreed", False) or issubclass(exc_type, KeyboardInterrupt):
            status = exit_status(exc)
            if rank == 0:
                lines = {
                    130: "interrupted (KeyboardInterrupt)",
                    EX_DIVERGED: f"error: training diverged: {exc}",
                }
                sys.stderr.write(f"mpiml: {lines.get(status, f'error: {exc}')}\n")
            leave(status)
        from .errors import DivergenceError, NonFiniteError

        if isinstance(exc, DivergenceError | NonFiniteError):  # seen on this rank only
            sys.stderr.write(
                f"mpiml: error: training diverged on rank {rank}: {exc} (try a smaller optimizer.lr)\n"
            )
            abort_status = EX_DIVERGED
        else:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            sys.stderr.write(f"[mpiml rank {rank}] unhandled exception, aborting the job:\n{text}")
            abort_status = 1
        sys.stderr.flush()
        for fn in reversed(_cleanups):
            try:
                fn()
            except Exception:
                pass
        # MPI_Abort kills every process at once; give mpiexec's I/O forwarding a moment
        # to pass the traceback on first (Hydra dropped it now and then without this).
        time.sleep(0.5)
        MPI.COMM_WORLD.Abort(abort_status)
        os._exit(abort_status)  # not reached with a conforming MPI

    hook._mpiml_abort = True  # type: ignore[attr-defined]
    sys.excepthook = hook


EX_DIVERGED = 3  # a run whose loss or model stopped being finite


def exit_status(exc: BaseException) -> int:
    """The process status for an exception mpiml reports in one line: 2 for a job
    error, 3 for a diverged run, 130 for a KeyboardInterrupt, 1 otherwise."""
    from .errors import DivergenceError

    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, DivergenceError):
        return EX_DIVERGED
    if isinstance(exc, ConfigError):
        return 2
    return 1


FINALIZE_GRACE = 10.0  # seconds leave() waits in MPI_Finalize before it exits anyway


def leave(status: int) -> None:
    """End this process with ``status`` when every rank leaves alike (an agreed
    error, a stop): flush stdio, MPI_Finalize, then the C library's ``exit``, so that
    ``python -m mpi4py``'s exit hook (which turns a non-zero SystemExit into
    MPI_Abort, one "Abort(N)" line per rank) does not run, and the launcher sees a
    clean exit.

    Why not ``os._exit``: Hydra (MPICH's mpiexec) kills every other rank with SIGKILL
    when one leaves without MPICH's exit handlers having run, even after
    MPI_Finalize; that lost rank 0's one-line message and turned the status into 9
    whenever another rank got there first. A rank that never returns from finalize
    (out of step with the others) cannot hang: after :data:`FINALIZE_GRACE` seconds a
    watchdog thread ends it with ``os._exit``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    import threading

    watchdog = threading.Timer(FINALIZE_GRACE, os._exit, args=(status,))
    watchdog.daemon = True
    watchdog.start()
    if MPI.Is_initialized() and not MPI.Is_finalized():
        try:
            MPI.Finalize()
        except Exception:
            pass
    try:
        import ctypes

        ctypes.CDLL(None).exit(status)  # C atexit handlers (MPICH's, HDF5's) run; Python's do not
    except Exception:
        pass
    os._exit(status)
