"""The job's ``[compression]`` section: its keys and rules, and the codec it makes, with
its random streams and its checkpointed state (shared by every algorithm that compresses).

The section belongs to the codecs, not to the config: it is registered here
(:func:`mpiml.config.register_section`) with the codec names of
:data:`mpiml.compress.REGISTRY`. What ``codec = "auto"`` means is the algorithm's
(:attr:`mpiml.algorithms.Algorithm.codec`): qsgd for the algorithms that exist to
quantize, none for the others.

Random streams: before each encode the compressed protocol reseeds the codec with
``(run.seed, STREAM, rank, counter)``, ``counter`` the step or round that sends
(:mod:`mpiml.protocols.lengths_first`; :attr:`Compression.stream` is the prefix), so the
stream depends only on the job and the position in the run: a resumed run and a serial
simulator draw exactly the same numbers, with no generator state to checkpoint. The
error-feedback residual, when there is one, is checkpointed as ``compression/residual``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import to_host
from ..compress import REGISTRY as CODECS
from ..compress import Codec, ErrorFeedback, build_codec
from ..config import Config, at_least, choice, field
from ..errors import ConfigError

__all__ = [
    "KEYS",
    "STREAM",
    "Compression",
    "check",
    "check_codec_for_size",
    "codec_from_config",
    "codec_params",
    "codec_of",
    "compression_for",
    "relevant",
]

KEYS = {
    "codec": field(
        "str",
        "auto",
        choice("auto", "none", *CODECS),
        "what crosses the wire (docs/compression.md): 'auto' is qsgd for qsgd, qpr_sgd and "
        "dqpr_sgd, 'none' for the others; any codec works with sgd (gradients), local_sgd "
        "and dasgd (differences from the last average), dpsgd and gossip (DCD differences)",
    ),
    "s": field("int", 0, at_least(0), "qsgd, qsgd_fixed: levels s (0: ceil(sqrt(bucket length)), §6.1)"),
    "bucket": field("int", 0, at_least(0), "qsgd, qsgd_fixed: coordinates per norm (0: one bucket)"),
    "k": field("int", 0, at_least(0), "topk, randk: coordinates kept (0: use ratio)"),
    "ratio": field(
        "float", 0.01, (lambda v: 0.0 < v <= 1.0, "in (0, 1]"), "topk, randk: share of coordinates kept"
    ),
    "error_feedback": field(
        "bool", False, None, "keep what the codec dropped and add it to the next message (EF-SGD)"
    ),
}


def codec_of(cfg: Config) -> str:
    """The codec a job uses: compression.codec with 'auto' resolved by the job's
    algorithm ('none': uncompressed)."""
    from .base import REGISTRY

    c = cfg.compression.codec
    return REGISTRY[cfg.algorithm.name].codec if c == "auto" else str(c)


def relevant(cfg: Config) -> set[str]:
    """The ``[compression]`` keys a job reads: the codec's own parameters only."""
    codec = codec_of(cfg)
    if codec == "none":
        return {"codec"}
    own = {
        "qsgd": {"s", "bucket"},
        "qsgd_fixed": {"s", "bucket"},
        "topk": {"k", "ratio"},
        "randk": {"k", "ratio"},
    }
    return {"codec", "error_feedback", *own.get(codec, set())}


def check(cfg: Config) -> None:
    """The job's codec against its algorithm (pure; ConfigError naming the keys)."""
    from .base import REGISTRY

    alg = REGISTRY[cfg.algorithm.name]
    name, c, codec = alg.name, cfg.compression.codec, codec_of(cfg)
    if alg.codec != "none" and c == "none":
        raise ConfigError(
            f"compression.codec = 'none' contradicts algorithm.name = {name!r}, which quantizes; "
            f"use algorithm.name = {alg.plain!r} to train uncompressed"
        )
    if codec != "none" and not alg.compressible and alg.codec == "none":
        if alg.compressed:
            raise ConfigError(
                f"compression.codec = {c!r} with algorithm.name = {name!r} (it is uncompressed): use "
                f"algorithm.name = {alg.compressed!r} for compressed messages"
            )
        able = [n for n, a in REGISTRY.items() if a.compressible or a.codec != "none"]
        raise ConfigError(
            f"compression.codec = {c!r} does not apply to algorithm.name = {name!r}; it works with {', '.join(able)}"
        )
    if cfg.compression.error_feedback and codec == "none":
        raise ConfigError("compression.error_feedback = true needs a codec (compression.codec is 'none')")
    if codec != "none":
        _check_params(cfg, codec, None)


def codec_params(cfg: Any) -> dict[str, Any]:
    """The keyword arguments the job's codec is built with, from ``[compression]``
    (``s = 0`` and ``k = 0`` mean "not set": None); {} when uncompressed."""
    name, c = codec_of(cfg), cfg.compression
    if name in ("qsgd", "qsgd_fixed"):
        return {"s": c.s or None, "bucket": c.bucket}
    if name in ("topk", "randk"):
        return {"k": c.k or None, "ratio": c.ratio}
    return {}


def _check_params(cfg: Any, codec: str, d: int | None) -> None:
    try:
        CODECS[codec].check_params(codec_params(cfg), d)  # type: ignore[attr-defined]
    except ValueError as e:
        raise ConfigError(f"compression.{e} (compression.codec = {codec!r})") from None


def check_codec_for_size(cfg: Config, d: int) -> None:
    """The rules of the job's codec that need the model's size ``d`` (e.g. ``compression.k``
    at most d); ConfigError naming the key. Pure: call it where d is known, before any
    collective (the driver's set-up, under ``agree``). A no-op when uncompressed."""
    codec = codec_of(cfg)
    if codec != "none":
        _check_params(cfg, codec, int(d))


STREAM = 0x5153  # "QS": keeps the codec's streams apart from the data samplers' (seed, rank)


def codec_from_config(cfg: Any) -> Codec | None:
    """The job's codec (``None`` when uncompressed), error feedback wrapped around it if asked."""
    name = codec_of(cfg)
    if name == "none":
        return None
    codec = build_codec(name, **codec_params(cfg))
    return ErrorFeedback(codec) if cfg.compression.error_feedback else codec


class Compression:
    """One rank's codec, the prefix of its random streams, and its checkpoint state."""

    def __init__(self, cfg: Any, rank: int) -> None:
        codec = codec_from_config(cfg)
        if codec is None:
            raise ValueError("Compression: the job has no codec (compression.codec is 'none')")
        self.codec: Codec = codec
        self.seed, self.rank = int(cfg.run.seed), rank

    @property
    def stream(self) -> tuple[int, int, int]:
        """(run.seed, STREAM, rank): the protocols reseed the codec with (*stream, counter)."""
        return (self.seed, STREAM, self.rank)

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
