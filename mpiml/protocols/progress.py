"""Progress of a started (nonblocking) operation while the rank computes.

MPI libraries move a nonblocking collective forward only inside MPI calls unless
told otherwise: an ``MPI_Iallreduce`` of a large buffer started and then left alone
during compute mostly runs inside the final ``MPI_Wait``, and nothing is hidden.
Four ways to progress it, chosen by ``algorithm.progress``:

``test``
    the protocol's ``test()`` (one ``MPI_Test``) is called between chunks of compute:
    between layers of a model's forward and backward pass and between the chunks of a
    timed workload (the ``poll`` a program passes to ``loss_and_grad``). No extra thread.
``thread``
    a Python thread calls ``MPI_Test`` every ``interval`` seconds until the operation
    completes (needs ``MPI_THREAD_MULTIPLE``; mpi4py asks for it by default). The thread
    sleeps between tests, so it costs little CPU; it needs the GIL only for the test,
    which numpy compute and sleeps release.
``library``
    the MPI library's own progress thread: MPICH's ``MPIR_CVAR_ASYNC_PROGRESS=1``,
    exported before launch (it also needs ``MPI_THREAD_MULTIPLE`` and spins a core).
    mpiml makes no progress calls of its own.
``none``
    no progress until the wait at the merge: the baseline that shows what is lost.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from mpi4py import MPI

__all__ = ["MODES", "ProgressThread", "check_mode"]

MODES = ("test", "thread", "library", "none")


def check_mode(mode: str) -> str:
    """'' if ``mode`` can work in this process, else the reason (for a ConfigError).

    Pure local checks (no communication), so every rank reaches the same verdict.
    """
    if mode not in MODES:
        return f"algorithm.progress must be one of {', '.join(map(repr, MODES))} (got {mode!r})"
    if mode in ("thread", "library") and MPI.Query_thread() != MPI.THREAD_MULTIPLE:
        return (
            f"algorithm.progress = {mode!r} needs MPI_THREAD_MULTIPLE (MPI granted level "
            f"{MPI.Query_thread()}); leave mpi4py.rc.thread_level at its default 'multiple'"
        )
    if mode == "library":
        vendor = MPI.get_vendor()[0]
        if vendor == "MPICH" and os.environ.get("MPIR_CVAR_ASYNC_PROGRESS", "0") in ("", "0"):
            return (
                "algorithm.progress = 'library' needs MPICH's progress thread: export "
                "MPIR_CVAR_ASYNC_PROGRESS=1 before mpiexec (or choose 'test' or 'thread')"
            )
    return ""


class ProgressThread:
    """Calls ``test()`` every ``interval`` seconds in a background thread until it
    returns True or :meth:`stop` is called. One thread per operation in flight.

    While it runs, nobody else may test or wait on the same request (MPI forbids
    concurrent completion calls on one request): stop it first.
    """

    def __init__(self, test: Callable[[], bool], interval: float = 0.0005) -> None:
        self._test = test
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mpiml-progress", daemon=True)
        self.error: BaseException | None = None
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self._test():
                    return
                self._stop.wait(self._interval)
        except BaseException as exc:  # re-raised in the main thread by stop()
            self.error = exc

    def stop(self) -> None:
        """Stop testing and join; re-raise any error the thread met."""
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error
