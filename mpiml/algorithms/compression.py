"""The job's ``[compression]`` section turned into a codec, its random streams and its
checkpointed state (shared by every algorithm that compresses).

Random streams: before each encode the codec is reseeded with
``(run.seed, STREAM, rank, counter)``, ``counter`` the step or round that sends, so the
stream depends only on the job and the position in the run: a resumed run and a serial
simulator draw exactly the same numbers, with no generator state to checkpoint. The
error-feedback residual, when there is one, is checkpointed as ``compression/residual``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_host
from ..compress import Codec, ErrorFeedback, build_codec
from ..config import codec_of

__all__ = ["STREAM", "Compression", "codec_from_config", "compression_for"]

STREAM = 0x5153  # "QS": keeps the codec's streams apart from the data samplers' (seed, rank)


def codec_from_config(cfg: Any) -> Codec | None:
    """The job's codec (``None`` when uncompressed), error feedback wrapped around it if asked."""
    name = codec_of(cfg)
    if name == "none":
        return None
    c = cfg.compression
    params: dict[str, Any] = {}
    if name in ("qsgd", "qsgd_fixed"):
        params = {"s": c.s or None, "bucket": c.bucket}
    elif name in ("topk", "randk"):
        params = {"k": c.k or None, "ratio": c.ratio}
    codec = build_codec(name, **params)
    return ErrorFeedback(codec) if c.error_feedback else codec


class Compression:
    """One rank's codec with its seeding rule and checkpoint state."""

    def __init__(self, cfg: Any, rank: int) -> None:
        codec = codec_from_config(cfg)
        if codec is None:
            raise ValueError("Compression: the job has no codec (compression.codec is 'none')")
        self.codec: Codec = codec
        self.seed, self.rank = int(cfg.run.seed), rank

    def reseed(self, counter: int) -> None:
        """Seed the codec's stream for the message sent at ``counter`` (a step or round)."""
        self.codec.reseed([self.seed, STREAM, self.rank, counter])

    def state_arrays(self) -> dict[str, np.ndarray]:
        if isinstance(self.codec, ErrorFeedback) and self.codec.residual is not None:
            return {"compression/residual": to_host(self.codec.residual).copy()}
        return {}

    def load_state(self, arrays: dict[str, np.ndarray], like: Any) -> None:
        """Restore the residual (``like``: an array of the residual's shape, dtype and module)."""
        if isinstance(self.codec, ErrorFeedback) and "compression/residual" in arrays:
            self.codec.restore(arrays["compression/residual"], like)


def compression_for(cfg: Any, rank: int) -> Compression | None:
    """The job's :class:`Compression` for ``rank``, or ``None`` when it sends plain buffers."""
    return None if codec_of(cfg) == "none" else Compression(cfg, rank)
