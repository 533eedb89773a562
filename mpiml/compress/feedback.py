"""Error feedback: the memory that makes a biased codec converge.

GRACE's "memory" piece, kept apart from the codec and from communication
(Seide et al. 2014, 1-bit SGD; Karimireddy et al. 2019, EF-SGD, Alg. 2):

    p_t = C(x_t + e_t)          the payload sent
    e_{t+1} = x_t + e_t - D(p_t)

so sum_t D(p_t) + e_T = sum_t x_t: nothing is lost, only delayed. The residual stays
on the rank; only the payload crosses the wire.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpiml.backend import array_module
from mpiml.compress.base import Codec, Seed

__all__ = ["ErrorFeedback"]


class ErrorFeedback(Codec):
    """Wrap ``codec`` with an error-feedback residual ``e``.

    ``e`` is allocated on the first ``encode`` with x's shape, dtype and array module
    (numpy or cupy), and reused every step (as is the buffer for x + e). A later x of
    another shape or dtype is a ``ValueError``; call :meth:`reset` to start over.
    ``decode`` and ``reseed`` delegate to the codec (the receiver needs no residual).
    """

    def __init__(self, codec: Codec) -> None:
        if not isinstance(codec, Codec):
            raise ValueError(f"ErrorFeedback.codec must be a Codec (got {type(codec).__name__})")
        self.codec = codec
        self.name = codec.name
        self.kernels = codec.kernels
        self._e: Any = None
        self._acc: Any = None

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.codec!r})"

    @property
    def residual(self) -> Any:
        """The current residual e (None before the first encode or after reset)."""
        return self._e

    def reset(self) -> None:
        """Forget the residual (e.g. when the parameter layout changes)."""
        self._e = None
        self._acc = None

    def restore(self, residual: np.ndarray, like: Any) -> None:
        """Set the residual from a checkpoint's host copy, on ``like``'s array module,
        shape and dtype (a resumed run then sends what the uninterrupted one sends)."""
        if residual.shape != like.shape:
            raise ValueError(
                f"ErrorFeedback: checkpointed residual has shape {residual.shape}, the model {like.shape}"
            )
        xp = array_module(like)
        self._e = xp.asarray(residual).astype(like.dtype, copy=True)
        self._acc = xp.empty_like(like)

    def encode(self, x: Any) -> np.ndarray:
        xp = array_module(x)
        if self._e is None:
            self._e = xp.zeros_like(x)
            self._acc = xp.empty_like(x)
        elif self._e.shape != x.shape or self._e.dtype != x.dtype or array_module(self._e) is not xp:
            raise ValueError(
                f"ErrorFeedback: x has shape {x.shape} and dtype {x.dtype}, the residual "
                f"{self._e.shape} and {self._e.dtype}; call reset() to change them"
            )
        xp.add(x, self._e, out=self._acc)
        payload = self.codec.encode(self._acc)  # NaN/Inf raise here, leaving e untouched
        if xp is np and self._e.flags.c_contiguous:
            sent = self.codec.decode(payload, out=self._e)  # e = acc - D(p), in place
            np.subtract(self._acc, sent, out=self._e)
        else:
            xp.subtract(self._acc, xp.asarray(self.codec.decode(payload)), out=self._e)
        return payload

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        return self.codec.decode(payload, out=out, d=d, dtype=dtype)

    def reseed(self, seed: Seed) -> None:
        self.codec.reseed(seed)

    def warm_up(self, dtype: Any) -> bool:
        return self.codec.warm_up(dtype)
