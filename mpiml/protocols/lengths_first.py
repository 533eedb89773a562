"""Variable-length payloads in two steps: the lengths first, then the bytes.

A compressed message's length differs by rank and by step, and a receiver must know
it to post a receive of the right size. :class:`LengthsFirst` is the split-phase
skeleton both compressed protocols share: ``start`` posts step 1 (the lengths) and
sets ``_phase = 0``; when step 1's requests complete, in ``test`` (so the ``test`` and
``thread`` progress modes drive both steps) or in ``finish``, the subclass's
:meth:`_post_payloads` posts step 2 into buffers sized from the lengths and replaces
``_reqs``. Receive buffers come from :func:`grow`: allocated once, grown only when a
larger total arrives, reused after that.

**Codec seeding.** A compressed protocol owns its codec's random stream: given a
``stream`` at construction (a seed prefix, e.g. (run seed, stream id, rank)), every
encode in ``start`` first reseeds the codec with ``(*stream, counter)``, the counter
being the gossip round when ``start`` gets one and the step otherwise. A message's random
draws then depend only on the job and its position in the run (a resumed run and a serial
simulator draw the same numbers), and no caller can forget to seed. ``stream=None``
leaves the codec's stream to the caller.

**Compiling at set-up.** A codec with compiled kernels (QSGD's numba kernels) would
compile them, or load them from numba's cache, inside its first encode: up to tens of
seconds on a fresh install, about a second from a warm cache, counted in step 1. So the
constructor readies them instead (collective over ``comm``): the ranks of each node
(``comm.Split_type(MPI.COMM_TYPE_SHARED)``) ask their first rank whether numba's cache
already holds the kernels; if so they all load them at once, if not the first rank
compiles and writes the cache while the others wait on a node-local barrier, then load
from it, so a node compiles once rather than once per rank. Each rank traces the span as
``codec_compile`` (category bookkeeping, step -1: before the first step), the
time spent waiting for the node's first rank included. Encode and decode are traced as
``encode`` and ``decode``, category ``codec``: neither compute nor communication.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array
from ..compress import Codec
from ..kinds import register_kind
from ..trace import Trace
from .base import Protocol

__all__ = ["CODEC_COMPILE", "DECODE", "ENCODE", "SETUP_STEP", "LengthsFirst", "grow", "warm_up"]

# the compressed protocols' codec work (the rank computes; nothing moves meanwhile)
ENCODE = register_kind("encode", "codec", "a codec encoding what this rank sends; nbytes = the payload")
DECODE = register_kind("decode", "codec", "decoding the received payloads and applying them")
CODEC_COMPILE = register_kind(
    "codec_compile",
    "bookkeeping",
    "compiling (or loading from numba's cache) a codec's kernels at set-up, step -1; one node rank first",
)
SETUP_STEP = -1  # the step of events traced at set-up, before the first step


def warm_up(comm: MPI.Comm, codec: Codec, dtype: Any, trace: Trace) -> None:
    """Ready ``codec``'s kernels for ``dtype`` on every rank of ``comm``, one compile per
    node (see the module docstring); traced as ``codec_compile``. Collective over
    ``comm``, whatever the codec (so ranks whose codecs differ cannot hang here). An
    error on a node's first rank (a bad ``MPIML_COMPRESS_KERNELS``) is raised after the
    node's barrier, never before it."""
    t0 = trace.now()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        first = node.Get_rank() == 0
        err: Exception | None = None
        cached = True
        if first:
            try:
                cached = codec.kernels_cached()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the node agreed
                err = e
        cached = bool(node.bcast(cached, root=0))  # a one-bool control message, at set-up
        if not cached:  # a compile: the node's first rank alone, the others then load it
            if first and err is None:
                try:
                    codec.warm_up(dtype)
                except Exception as e:  # noqa: BLE001 - re-raised below, after the barrier
                    err = e
            node.Barrier()
        if err is not None:
            raise err
        if cached or not first:
            codec.warm_up(dtype)  # a load from numba's cache: every rank at once
    finally:
        node.Free()
    if codec.kernels is not None:
        trace.record(SETUP_STEP, CODEC_COMPILE, t0, trace.now())


def grow(buf: np.ndarray, nbytes: int) -> np.ndarray:
    """``buf`` if it holds ``nbytes``, else a new uint8 buffer with 25% headroom (so a
    run settles on one buffer after the first few messages)."""
    if buf.size >= nbytes:
        return buf
    return np.empty(max(nbytes, buf.size + buf.size // 4), dtype=np.uint8)


class LengthsFirst(Protocol):
    """A protocol whose operation is lengths (``_phase`` 0), then payloads (1), of
    messages encoded by ``codec`` (seeded from ``stream``, see the module docstring)."""

    _phase = 0

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        codec: Codec,
        xp: Any = np,
        trace: Trace | None = None,
        progress: str = "test",
        stream: Sequence[int] | None = None,
    ) -> None:
        super().__init__(comm, size, dtype, xp, trace, progress)
        if not isinstance(codec, Codec):
            raise ValueError(f"codec must be a mpiml.compress.Codec (got {type(codec).__name__})")
        self.codec = codec
        self.stream = None if stream is None else [int(v) for v in stream]
        warm_up(comm, codec, self.dtype, self.trace)

    def _encode(self, x: Array, counter: int) -> np.ndarray:
        """The codec's payload of ``x``, the codec reseeded first for message ``counter``."""
        if self.stream is not None:
            self.codec.reseed([*self.stream, counter])
        return self.codec.encode(x)

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
