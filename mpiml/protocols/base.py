"""The protocol interface: a communication event M_t, split into start and finish.

A protocol is *started* on a buffer and *finished* later (DaSGD overlaps the two
with computation); a blocking call is start followed by finish. Between the two,
``test()`` makes progress (MPI libraries progress a nonblocking operation only
inside MPI calls unless told otherwise) and says whether the operation is done.
Time spent blocked in ``finish`` is traced as a ``wait`` event, never assumed zero.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..backend import Array
from ..io.trace import Trace

__all__ = ["Protocol"]


class Protocol(ABC):
    """Base of every protocol. Subclasses implement ``start``, ``test`` and ``finish``."""

    name = "protocol"

    def __init__(self, trace: Trace | None = None) -> None:
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.step = 0

    @property
    @abstractmethod
    def in_flight(self) -> bool:
        """True between ``start`` and ``finish``."""

    @abstractmethod
    def start(self, x: Array, step: int = 0, *, snapshot: bool = False) -> None:
        """Begin communicating ``x``. With ``snapshot=False`` the caller must leave ``x``
        untouched until ``finish`` (as with MPI); with ``snapshot=True`` it is copied
        first into a buffer the protocol owns, and ``x`` may change meanwhile."""

    @abstractmethod
    def test(self) -> bool:
        """Progress the operation; True once it has completed."""

    @abstractmethod
    def finish(self, step: int | None = None) -> Array:
        """Wait for completion and return the result (owned by the protocol; valid until
        the next ``start``). The time blocked is traced at ``step`` (default: the step
        that started the operation)."""

    def run(self, x: Array, step: int = 0) -> Array:
        """Blocking form: start, then finish."""
        self.start(x, step)
        return self.finish()
