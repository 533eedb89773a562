"""Variable-length payloads in two steps: the lengths first, then the bytes.

A compressed message's length differs by rank and by step, and a receiver must know
it to post a receive of the right size. :class:`LengthsFirst` is the split-phase
skeleton both compressed protocols share: ``start`` posts step 1 (the lengths) and
sets ``_phase = 0``; when step 1's requests complete, in ``test`` (so the ``test`` and
``thread`` progress modes drive both steps) or in ``finish``, the subclass's
:meth:`_post_payloads` posts step 2 into buffers sized from the lengths and replaces
``_reqs``. Receive buffers come from :func:`grow`: allocated once, grown only when a
larger total arrives, reused after that.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
from mpi4py import MPI

from ..kinds import register_kind
from .base import Protocol

__all__ = ["DECODE", "ENCODE", "LengthsFirst", "grow"]

# the compressed protocols' codec work (the rank computes; nothing moves meanwhile)
ENCODE = register_kind("encode", "compute", "a codec encoding what this rank sends; nbytes = the payload")
DECODE = register_kind("decode", "compute", "decoding the received payloads and applying them")


def grow(buf: np.ndarray, nbytes: int) -> np.ndarray:
    """``buf`` if it holds ``nbytes``, else a new uint8 buffer with 25% headroom (so a
    run settles on one buffer after the first few messages)."""
    if buf.size >= nbytes:
        return buf
    return np.empty(max(nbytes, buf.size + buf.size // 4), dtype=np.uint8)


class LengthsFirst(Protocol):
    """A protocol whose operation is lengths (``_phase`` 0), then payloads (1)."""

    _phase = 0

    @abstractmethod
    def _post_payloads(self) -> None:
        """Step 2: the lengths are in; post the payload requests as ``self._reqs`` and
        set ``self._phase = 1``."""

    def _test(self) -> bool:
        if self._t_done is None and MPI.Request.Testall(self._reqs):
            if self._phase == 0:
                self._post_payloads()
                if not MPI.Request.Testall(self._reqs):
                    return False
            self._t_done = self.trace.now()
        return self._t_done is not None

    def _wait_all(self) -> float:
        if self._t_done is not None:
            return 0.0
        t0 = self.trace.now()
        if self._phase == 0:
            MPI.Request.Waitall(self._reqs)
            self._post_payloads()
        MPI.Request.Waitall(self._reqs)
        self._t_done = self.trace.now()
        return self._t_done - t0
