"""SIGINT and SIGTERM: stop cleanly at an agreed step, or leave at once during start-up.

mpiexec (MPICH's Hydra, Open MPI's mpirun) and srun forward a SIGINT or SIGTERM they
receive to every rank; a rank may also be signalled alone (``kill`` of one process, a
node's OOM handling). Two phases, two behaviours:

- **Training** (:class:`StopSignals`, installed by :func:`mpiml.run.train` around the
  loop): the first signal only sets :attr:`StopSignals.signum`. The loop adds "a
  signal arrived here" to the stop request it agrees on every 10 steps
  (:class:`mpiml.run.loop.Loop`), so one rank's signal stops every rank after the
  same step; a checkpoint is written and :func:`train` returns with
  ``Result.stopped_by`` set. A second signal leaves at once: rank 0 prints one line
  and every rank that receives it exits with status 128 + signal (130 for SIGINT)
  without a checkpoint; the launcher ends the ranks that did not.
- **Start-up** (:class:`StartupSignals`, installed by the ``mpiml train`` command
  until the loop starts): a signal ends the rank at once with status 128 + signal
  (130 for SIGINT, 143 for SIGTERM); rank 0 prints one line, no rank a traceback.
  Nothing is trained yet, so nothing is lost.

Why a thread: Python runs a signal handler only when the main thread is back in the
interpreter, and a rank may be blocked inside an MPI call waiting for a rank that is
still importing. :func:`signal.set_wakeup_fd` writes the signal number to a pipe from
the C-level handler, at once; a daemon thread reading that pipe acts on it (mpi4py
releases the GIL inside blocking MPI calls). The Python-level handlers do nothing.

Handlers can only be installed from the main thread; elsewhere both classes are
no-ops (a :func:`train` called from another thread keeps the default behaviour).
Leaving the ``with`` block restores the previous handlers and wakeup fd.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType

__all__ = ["EX_INTERRUPTED", "EX_STOPPED", "STOP_SIGNALS", "StartupSignals", "StopSignals", "signal_name"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EX_STOPPED = 75  # EX_TEMPFAIL: stopped after a checkpoint (SIGTERM, MPIML_STOP_FILE); resume with --resume
EX_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's Ctrl-C status: stopped after a checkpoint by SIGINT


def signal_name(signum: int) -> str:
    """``SIGINT``, ``SIGTERM``, ..."""
    return signal.Signals(signum).name


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the watcher thread does the work."""


class _Watch:
    """Handlers for :data:`STOP_SIGNALS` whose work a daemon thread does (see the
    module docstring). ``react(signum)`` runs on that thread."""

    def __init__(self) -> None:
        self.active = False
        self._old: dict[int, object] = {}
        self._old_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None

    def react(self, signum: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> _Watch:
        if threading.current_thread() is not threading.main_thread():
            return self
        r, w = os.pipe()
        os.set_blocking(w, False)  # the C handler must never block on a full pipe
        self._pipe = (r, w)
        self._old = {s: signal.signal(s, _ignore) for s in STOP_SIGNALS}
        self._old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(r,), name="mpiml-signals", daemon=True)
        self._thread.start()
        self.active = True
        return self

    def _watch(self, r: int) -> None:
        wanted = {int(s) for s in STOP_SIGNALS}
        while True:
            try:
                got = os.read(r, 64)
            except OSError:
                return
            if not got:  # the write end was closed: uninstalled
                return
            for signum in got:
                if signum in wanted:
                    self.react(signum)

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.active or self._pipe is None:
            return
        signal.set_wakeup_fd(self._old_fd)
        for s, h in self._old.items():
            signal.signal(s, h)  # type: ignore[arg-type]
        r, w = self._pipe
        os.close(w)  # the thread reads end-of-file and returns
        if self._thread is not None:
            self._thread.join(timeout=5)
        os.close(r)
        self.active, self._pipe = False, None


def _leave(rank: int, line: str, status: int) -> None:
    """Print ``line`` on rank 0 and end this process at once (no cleanup, no traceback:
    the launcher ends the other ranks if they do not leave themselves)."""
    if rank == 0:
        try:
            sys.stdout.flush()
        except Exception:
            pass
        os.write(2, (line + "\n").encode())
    else:  # the launcher kills every rank once one exits: let rank 0 print first
        time.sleep(0.3)
    os._exit(status)


class StartupSignals(_Watch):
    """Start-up phase: the first SIGINT/SIGTERM ends this rank at once with status
    128 + signal; rank 0 prints ``mpiml: interrupted by SIGINT during start-up;
    nothing was trained``. ``rank``: this rank in COMM_WORLD (from the launcher's
    environment: MPI may not be initialised yet)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def react(self, signum: int) -> None:
        _leave(
            self.rank,
            f"mpiml: interrupted by {signal_name(signum)} during start-up; nothing was trained",
            128 + signum,
        )


class StopSignals(_Watch):
    """Training phase: :attr:`signum` is 0 until the first SIGINT/SIGTERM, then that
    signal's number (the loop reads it at its agreed stop points). A second signal
    ends this rank at once with status 128 + signal, without a checkpoint; rank 0
    prints ``mpiml: second SIGINT: aborted at once, no checkpoint``. ``rank``: this
    rank in COMM_WORLD."""

    def __init__(self, rank: int, on_second: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.rank = rank
        self.signum = 0
        self._on_second = on_second

    def react(self, signum: int) -> None:
        if not self.signum:
            self.signum = signum
            return
        if self._on_second is not None:
            self._on_second()
        _leave(
            self.rank, f"mpiml: second {signal_name(signum)}: aborted at once, no checkpoint", 128 + signum
        )
