"""The codec contract: ``encode(x) -> payload``, ``decode(payload) -> x``.

A payload is one contiguous ``uint8`` array: a 24-byte header, then the codec's body.
Only the payload crosses the wire; a codec's state (error-feedback residuals, RNG)
stays on the rank. Header (little endian)::

    bytes 0-1   magic b"MQ"
    byte  2     format version (2)
    byte  3     codec id (CODEC_IDS)
    byte  4     dtype code of x (DTYPES: 0 float32, 1 float64)
    bytes 5-7   zero
    bytes 8-15  d, the number of coordinates (uint64)
    bytes 16-19 check: zlib.crc32 of bytes 0-15, continued over the body for the codecs
                in CHECKSUMMED (uint32)
    bytes 20-23 zero

The check pins every header field for every codec (a flipped dtype byte of an fp16
payload, whose body cannot tell float32 from float64, no longer decodes as float64),
and the body too where that costs under 5% of encode + decode at d = 25.5M
(``benchmarks/payload_checksum.py``, ``results/benchmarks/payload_checksum.md``): qsgd,
sign, topk, randk. identity, fp16, bf16 and qsgd_fixed bodies are not covered (a crc32
of them costs 6% (qsgd_fixed) to 120% (identity) of their encode + decode): a changed value bit there decodes to a
different finite array, as before.

``decode`` checks every field and the body's length and raises ``ValueError``
naming what is wrong (header, length, code, check); NaN or Inf input to ``encode`` is a
``ValueError`` too. The receiver knows what it expects: ``decode(payload, out=...)``
or ``decode(payload, d=..., dtype=...)`` refuses a payload of another d or dtype before
allocating anything, and ``decode`` never allocates more than the caller's ``out``,
``d``, or what the body itself confirms (dense bodies pin d by their length; the sparse
codecs' d is confirmed by nothing, so without ``out`` or ``d`` they refuse
d > :data:`UNCONFIRMED_D_MAX`). Codecs register by name in ``REGISTRY``.

The contract every codec keeps:

- ``encode(x)`` takes a flat float32/float64 numpy or cupy array (cupy is copied to
  the host where the codec needs it) and returns a fresh numpy ``uint8`` payload;
- ``decode(payload, out=None, *, d=None, dtype=None)`` takes any contiguous flat
  ``uint8`` numpy array, a slice view ``buf[off:off + n]`` of a larger receive buffer
  included; with ``out`` (a writeable numpy array of the payload's dtype and d
  elements) it writes the result there and returns ``out``, else it returns a new
  array. ``d`` and ``dtype`` (or ``out``'s) are what the caller expects: a payload
  that says otherwise is a ``ValueError`` naming the field. On a ``ValueError`` the
  contents of ``out`` are unspecified;
- ``reseed(seed)`` resets the codec's random stream as if it had been built with
  ``seed`` (an int or a sequence of ints, as ``numpy.random.default_rng`` takes);
  deterministic codecs ignore it. A caller that reseeds with
  ``[run_seed, rank, round]`` before each encode makes the stream reproducible by a
  serial simulator.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import NonFiniteError

__all__ = [
    "CHECKSUMMED",
    "CODEC_IDS",
    "DTYPES",
    "HEADER",
    "UNCONFIRMED_D_MAX",
    "REGISTRY",
    "Codec",
    "check_finite",
    "check_out",
    "int_param",
    "rng_from_seed",
    "pack_header",
    "read_header",
    "register",
    "seal",
]

HEADER = struct.Struct("<2sBBB3sQI4s")  # 24 bytes
MAGIC = b"MQ"
VERSION = 2
_CHECK = slice(16, 20)  # the check field
# codecs whose body the check covers: a crc32 of it costs under 5% of their encode +
# decode at d = 25.5M (benchmarks/payload_checksum.py); the others' bodies cost 5-160%
CHECKSUMMED = frozenset({"qsgd", "sign", "topk", "randk"})
# the largest d a decode allocates on the header's word alone (sparse codecs, whose
# body cannot confirm d) when the caller gives neither out nor d: 2**27 coordinates
UNCONFIRMED_D_MAX = 2**27
DTYPES: dict[np.dtype, int] = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
_DTYPE_OF: dict[int, np.dtype] = {v: k for k, v in DTYPES.items()}
CODEC_IDS = {
    "identity": 0,
    "fp16": 1,
    "bf16": 2,
    "sign": 3,
    "topk": 4,
    "randk": 5,
    "qsgd": 6,
    "qsgd_fixed": 7,
}


Seed = int | Sequence[int]


class Codec:
    """Base of every codec: ``name`` (in CODEC_IDS), ``encode``, ``decode``, ``reseed``;
    ``kernels`` names the compiled kernels it runs ("gamma", "fixed"; None for the codecs
    that are plain numpy) and :meth:`warm_up` readies them."""

    name = "codec"
    kernels: str | None = None

    @classmethod
    def check_params(cls, params: Mapping[str, Any], d: int | None = None) -> None:
        """The codec's own rules for its parameters (the keyword arguments of its
        constructor), and, with ``d`` (the length of the vectors it will encode), the
        rules that need it: ``ValueError`` naming the first bad one, as "k must be ..."
        (the constructor prefixes the codec's name, the job check ``compression.``).
        Pure: the constructor and the job check (:mod:`mpiml.algorithms.compression`)
        ask the same rules. Codecs without parameters accept none."""

    def encode(self, x: Any) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def reseed(self, seed: Seed) -> None:
        """Reset the random stream as if built with ``seed``; a no-op for deterministic codecs."""
        rng_from_seed(seed, self.name)  # validate all the same, so a bad seed fails everywhere

    def warm_up(self, dtype: Any) -> bool:
        """Compile (or load from numba's cache) the kernels that encoding and decoding
        arrays of ``dtype`` need, so that the first real encode does not; True if it did
        any work. A numba failure falls back to the numpy kernels (one line on stderr),
        never raises. Pure: no MPI (the protocols order it per node,
        :mod:`mpiml.protocols.lengths_first`)."""
        if self.kernels is None:
            return False
        from . import _kernels

        return _kernels.warm_up(self.kernels, dtype)

    def kernels_cached(self) -> bool:
        """Whether :meth:`warm_up` would only load compiled code (numba's cache holds the
        kernels, or there is nothing to compile), so ranks may do it at once."""
        if self.kernels is None:
            return True
        from . import _kernels

        return _kernels.cached(self.kernels)


def int_param(name: str, value: Any, lo: int, hi: int | None = None, what: str = "") -> None:
    """ValueError "``name`` must be an integer in lo..hi (got value)" unless ``value`` is an
    integer (not a bool) in [lo, hi] (no upper bound when ``hi`` is None)."""
    ok = not isinstance(value, bool) and isinstance(value, int | np.integer)
    ok = ok and lo <= value and (hi is None or value <= hi)
    if not ok:
        span = f">= {lo}" if hi is None else f"in {lo}..{what or hi}"
        raise ValueError(f"{name} must be an integer {span} (got {value!r})")


def rng_from_seed(seed: Seed, codec: str) -> np.random.Generator:
    """``numpy.random.default_rng(seed)``, with a bad seed a ValueError naming ``seed``."""
    if isinstance(seed, bool) or isinstance(seed, np.random.Generator | np.random.BitGenerator):
        raise ValueError(f"{codec}.seed must be an int or a sequence of ints (got {seed!r})")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{codec}.seed must be a non-negative int or a sequence of them (got {seed!r}): {e}"
        ) from None


def check_out(out: Any, dtype: np.dtype, d: int, codec: str) -> np.ndarray:
    """``out`` if it can take a decode of d values of ``dtype``, else ValueError naming ``out``."""
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{codec}: out must be a numpy array (got {type(out).__name__})")
    if out.dtype != dtype or out.shape != (d,):
        raise ValueError(
            f"{codec}: out must be a flat {dtype} array of {d} elements, like the payload "
            f"(got {out.dtype}, shape {out.shape})"
        )
    if not out.flags.writeable:
        raise ValueError(f"{codec}: out is read-only")
    return out


def check_finite(x: np.ndarray, codec: str) -> None:
    if not np.all(np.isfinite(x)):
        raise NonFiniteError(
            f"{codec}: cannot encode NaN or Inf (the input has {int(np.sum(~np.isfinite(x)))})"
        )


def pack_header(codec: str, x: np.ndarray) -> bytes:
    dt = np.dtype(x.dtype)
    if dt not in DTYPES:
        raise ValueError(f"{codec}: dtype must be float32 or float64 (got {dt})")
    if x.ndim != 1:
        raise ValueError(f"{codec}: x must be a flat array (got shape {x.shape})")
    return HEADER.pack(MAGIC, VERSION, CODEC_IDS[codec], DTYPES[dt], b"\0\0\0", x.size, 0, b"\0" * 4)


def _check_value(payload: np.ndarray, codec: str) -> int:
    crc = zlib.crc32(payload[: _CHECK.start].data)
    if codec in CHECKSUMMED:
        crc = zlib.crc32(payload[HEADER.size :].data, crc)
    return crc


def seal(payload: np.ndarray, codec: str) -> np.ndarray:
    """Write the check field (bytes 16-19) of a finished payload of ``codec``; returns it."""
    payload[_CHECK] = np.frombuffer(struct.pack("<I", _check_value(payload, codec)), np.uint8)
    return payload


def expected(out: Any, d: int | None, dtype: Any, codec: str) -> tuple[int | None, np.dtype | None]:
    """(d, dtype) a caller of decode expects: ``out``'s, else the ``d`` and ``dtype`` given
    (None where not given); ValueError when ``out`` and ``d``/``dtype`` disagree."""
    dt = None if dtype is None else np.dtype(dtype)
    if out is not None and isinstance(out, np.ndarray):
        if (d is not None and d != out.size) or (dt is not None and dt != out.dtype):
            raise ValueError(
                f"{codec}: decode got out of {out.size} {out.dtype} values but d={d}, dtype={dt}"
            )
        return int(out.size), np.dtype(out.dtype)
    if d is not None and (isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0):
        raise ValueError(f"{codec}: decode's d must be a non-negative integer (got {d!r})")
    return (None if d is None else int(d)), dt


def read_header(
    payload: np.ndarray, codec: str, d_expected: int | None = None, dtype_expected: np.dtype | None = None
) -> tuple[np.dtype, int, memoryview]:
    """(dtype, d, body) of a payload, every header field checked, the check field
    included, and d and dtype against what the caller expects (where it says)."""
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8 or payload.ndim != 1:
        raise ValueError(f"{codec}: payload must be a flat uint8 array")
    if not payload.flags.c_contiguous:
        raise ValueError(
            f"{codec}: payload must be contiguous (a slice buf[off:off + n] is; buf[::2] is not)"
        )
    if payload.size < HEADER.size:
        raise ValueError(f"{codec}: truncated header ({payload.size} of {HEADER.size} bytes)")
    magic, version, cid, dcode, reserved, d, check, reserved2 = HEADER.unpack_from(
        payload[: HEADER.size].tobytes()
    )
    if magic != MAGIC:
        raise ValueError(f"{codec}: bad header: magic {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"{codec}: bad header: format version {version}, this reader knows {VERSION}")
    if cid != CODEC_IDS[codec]:
        names = {v: k for k, v in CODEC_IDS.items()}
        raise ValueError(f"{codec}: bad header: payload is from codec {names.get(cid, cid)!r}")
    if check != _check_value(payload, codec):
        covers = "header and body" if codec in CHECKSUMMED else "header"
        raise ValueError(f"{codec}: bad check: the crc32 of the {covers} does not match the check field")
    if reserved != b"\0\0\0" or reserved2 != b"\0" * 4:
        raise ValueError(f"{codec}: bad header: reserved bytes 5-7 or 20-23 are not zero")
    if dcode not in _DTYPE_OF:
        raise ValueError(f"{codec}: bad header: dtype code {dcode}")
    if d > 2**40:
        raise ValueError(f"{codec}: bad header: d = {d} is implausible")
    dtype = _DTYPE_OF[dcode]
    if dtype_expected is not None and dtype != dtype_expected:
        raise ValueError(
            f"{codec}: bad header: dtype {dtype}, the receiver (out or dtype) expects {dtype_expected}"
        )
    if d_expected is not None and d != d_expected:
        raise ValueError(f"{codec}: bad header: d = {d}, the receiver (out or d) expects d = {d_expected}")
    return dtype, int(d), payload.data[HEADER.size :]


REGISTRY: dict[str, Callable[..., Codec]] = {}


def register(factory: Callable[..., Codec]) -> Callable[..., Codec]:
    REGISTRY[factory.name] = factory  # type: ignore[attr-defined]
    return factory
