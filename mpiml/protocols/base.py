"""The protocol interface: a communication event M_t, split into start and finish.

A protocol is *started* on a buffer and *finished* later (DaSGD overlaps the two
with computation); a blocking call is start followed by finish. Between the two,
``test()`` makes progress (MPI libraries progress a nonblocking operation only
inside MPI calls unless told otherwise) and says whether the operation is done.
Time spent blocked in ``finish`` is traced as a ``wait`` event, never assumed zero.

**Who owns a returned buffer.** What ``finish`` (or ``run``) returns is a buffer the
protocol owns (allocated once, in the constructor): the caller may read it, and modify it
in place, until the next ``start`` (or ``run``) of the same protocol, which overwrites it.
To keep a result longer, copy it. What ``start`` is given is the caller's: with
``snapshot=False`` it must stay untouched until ``finish`` (as with MPI); with
``snapshot=True`` (implied by protocols that encode or copy in ``start``) it may change
at once.

**What a protocol carries** is checked where it is built, before any communication:
``size`` must be an int >= 1 (a zero-length buffer is refused, not sent), ``dtype``
one of the protocol's ``dtypes`` (:func:`check_spec`; a ``TypeError`` or ``ValueError``
naming the argument and what is allowed). The buffer given to ``start`` or ``run`` is
checked before anything is posted (:meth:`Protocol._check`): a C-contiguous 1-D array of
``size`` values of ``dtype``. These are local checks that raise on every rank given the
same arguments; a rank given a different buffer than the others raises alone, and
``python -m mpi4py`` turns that into an abort of the job, never a hang.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array
from ..kinds import register_kind
from ..trace import Trace
from .progress import MODES, ProgressThread

__all__ = ["FLOATS", "INTEGERS", "RECV", "SEND", "WAIT", "Messages", "Protocol", "check_spec"]

WAIT = register_kind("wait", "wait", "time blocked in a split-phase finish, at the step that finished it")
# a posted Isend/Irecv is under way while the rank does other work, from its post to its
# observed completion: in flight, like the round that holds it
SEND = register_kind(
    "send", "in_flight", "one point-to-point message sent: post to observed completion; peer = destination"
)
RECV = register_kind(
    "recv", "in_flight", "one point-to-point message received: post to observed completion; peer = source"
)

FLOATS = ("float16", "float32", "float64")
"""The dtypes every protocol carries unless it says otherwise (``Protocol.dtypes``)."""
INTEGERS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def check_spec(name: str, size: Any, dtype: Any, allowed: tuple[str, ...]) -> tuple[int, np.dtype]:
    """``(size, dtype)`` of the flat buffers protocol ``name`` will move, as (int, numpy
    dtype), checked before anything is allocated or sent.

    Raises ``ValueError`` unless ``size`` is an integer >= 1, and ``TypeError`` unless
    ``dtype`` is one of ``allowed`` (numpy dtype names); both messages name the argument,
    the value and what is allowed. Local: no MPI call.
    """
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(
            f"{name}: size must be an integer >= 1, the number of buffer elements (got {size!r})"
        )
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in allowed or not dt.isnative:
        raise TypeError(f"{name}: dtype must be one of {', '.join(allowed)} (got {dtype!r})")
    return int(size), dt


class Messages:
    """Message ids of one point-to-point channel of a protocol (its communicator and
    tags), for ``send`` and ``recv`` events that pair up by (source, destination, msg).

    ``sent[j]`` counts the messages this rank has sent to rank j on the channel,
    ``received[j]`` those it has received from j (int64 arrays allocated once, one
    entry per rank of the communicator). MPI's non-overtaking rule says two messages
    from one sender to one receiver on one (communicator, tag) are received in the
    order they were sent, so the sender's k-th message to j is j's k-th receive from
    the sender: both carry ``msg`` = k. A protocol whose one logical message is
    several MPI messages (a length, then a payload) records it once and counts it once.
    The counts start at ``first`` (0) with the protocol (a resumed run restarts them);
    channels on another tag between the same ranks take ids of their own by starting far
    apart (a pipeline's evaluation messages start at 2**40).
    """

    __slots__ = ("received", "sent", "trace")

    def __init__(self, trace: Trace, n: int, first: int = 0) -> None:
        self.trace = trace
        self.sent = np.full(n, first, dtype=np.int64)
        self.received = np.full(n, first, dtype=np.int64)

    def send(self, step: int, dest: int, t_start: float, t_end: float, nbytes: int) -> None:
        k = int(self.sent[dest])
        self.sent[dest] = k + 1
        self.trace.message(step, SEND, t_start, t_end, nbytes, dest, k)

    def recv(self, step: int, source: int, t_start: float, t_end: float, nbytes: int) -> None:
        k = int(self.received[source])
        self.received[source] = k + 1
        self.trace.message(step, RECV, t_start, t_end, nbytes, source, k)


class Protocol(ABC):
    """Base of every protocol. Subclasses implement ``start`` and ``finish``.

    What every protocol's constructor shares is set here: ``comm`` (collective over it),
    ``n`` and ``rank`` in it, ``size`` and ``dtype`` of the flat buffers it moves, the
    array module ``xp``, the ``trace`` (an untraced one when None) and the ``progress``
    mode. The split-phase bookkeeping lives here too: a subclass's ``start`` posts its
    nonblocking requests and calls :meth:`_posted`; its ``finish`` calls
    :meth:`_stop_thread` (then waits its own way, or with :meth:`_wait_all`) and
    :meth:`_done`. ``test`` and the ``progress`` modes (:mod:`mpiml.protocols.progress`)
    then work the same for every protocol.
    """

    name = "protocol"
    dtypes: tuple[str, ...] = FLOATS  # what the protocol carries (a subclass narrows or widens it)

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        xp: Any = np,
        trace: Trace | None = None,
        progress: str = "test",
    ) -> None:
        if progress not in MODES:
            raise ValueError(f"progress must be one of {', '.join(map(repr, MODES))} (got {progress!r})")
        self.size, self.dtype = check_spec(self.name, size, dtype, self._allowed())
        self.comm = comm
        self.n, self.rank = comm.Get_size(), comm.Get_rank()
        self.xp = xp
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.progress = progress
        self.step = 0
        self._reqs: list[MPI.Request] = []
        self._active = False
        self._t_start = 0.0
        self._t_done: float | None = None
        self._thread: ProgressThread | None = None
        self._span = 0

    def _allowed(self) -> tuple[str, ...]:
        """The dtypes this instance carries (``dtypes``; a subclass may decide per option,
        as AllReduce does per ``op``). Called first in ``__init__``, before any state is set."""
        return self.dtypes

    def _check(self, x: Array) -> None:
        """``x`` must be a C-contiguous flat array of ``size`` values of ``dtype``
        (``ValueError`` otherwise, before anything is posted)."""
        shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
        if shape != (self.size,) or dtype != self.dtype:
            raise ValueError(
                f"{self.name} expects a flat array of {self.size} {self.dtype} values (got {shape} {dtype})"
            )
        if not x.flags.c_contiguous:
            raise ValueError(
                f"{self.name} expects a contiguous buffer (got a strided view: pass a contiguous copy)"
            )

    @property
    def in_flight(self) -> bool:
        """True between ``start`` and ``finish``."""
        return self._active

    def _begin(self, step: int) -> None:
        """Start of ``start``: refuse a second operation, note the step and time."""
        if self._active:
            raise RuntimeError(f"{self.name}: start() called while the previous operation is still in flight")
        self.step = step
        self._t_start = self.trace.now()
        self._t_done = None

    def _posted(self, reqs: list[MPI.Request]) -> None:
        """End of ``start``: the requests are posted; hold the event table's order
        until the operation is recorded, and start the progress thread if asked."""
        self._reqs = reqs
        self._active = True
        self._span = self.trace.open(self._t_start)
        if self.progress == "thread":
            self._thread = ProgressThread(self._test)

    def _test(self) -> bool:
        if self._t_done is None and MPI.Request.Testall(self._reqs):
            self._t_done = self.trace.now()
        return self._t_done is not None

    def test(self) -> bool:
        """Progress by one MPI_Testall (when ``progress`` is 'test'); True once complete.

        With any other mode this only reports what is known: the progress thread (or
        the library) owns the requests, and a second completion call on them would race.
        """
        if not self._active:
            return True
        if self.progress == "test":
            return self._test()
        return self._t_done is not None

    def _stop_thread(self) -> None:
        """Beginning of ``finish``: nobody else may complete the requests from now on."""
        if not self._active:
            raise RuntimeError(f"{self.name}: finish() without start()")
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.stop()

    def _wait_all(self) -> float:
        """Wait for every request; the seconds blocked."""
        if self._t_done is not None:
            return 0.0
        t0 = self.trace.now()
        MPI.Request.Waitall(self._reqs)
        self._t_done = self.trace.now()
        return self._t_done - t0

    def _done(self, kind: str, nbytes: int, step: int | None, t_wait: float, blocked: float) -> None:
        """End of ``finish``: trace the operation's span (at the start step) and the time
        blocked (at ``step``), and release the event table's order."""
        self._active = False
        self._reqs = []
        assert self._t_done is not None
        self.trace.record(self.step, kind, self._t_start, self._t_done, nbytes)
        self.trace.close(self._span)
        self.trace.record(self.step if step is None else step, WAIT, t_wait, t_wait + blocked)

    @abstractmethod
    def start(self, x: Array, step: int = 0, *, snapshot: bool = False) -> None:
        """Begin communicating ``x``. With ``snapshot=False`` the caller must leave ``x``
        untouched until ``finish`` (as with MPI); with ``snapshot=True`` it is copied
        first into a buffer the protocol owns, and ``x`` may change meanwhile."""

    @abstractmethod
    def finish(self, step: int | None = None) -> Array:
        """Wait for completion and return the result (the protocol's buffer: the caller
        may use and modify it until the next ``start``). The time blocked is traced at
        ``step`` (default: the step that started the operation)."""

    def run(self, x: Array, step: int = 0) -> Array:
        """Blocking form: start, then finish."""
        self.start(x, step)
        return self.finish()
