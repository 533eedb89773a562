"""QSGD: s-level stochastic quantization (Alistarh et al.), Elias-gamma coded.

Quantization (eqs. (2)-(3) of the Quantized-PR-SGD paper): for each bucket ``v``
(``bucket`` consecutive coordinates; ``bucket=0`` is one bucket, the whole vector)
``Q_s(v_i) = ||v||_2 sgn(v_i) zeta_i / s`` where, with ``r = |v_i| s / ||v||_2``,
``l = floor(r)`` and ``p = r - l``, the level ``zeta_i`` is ``l + 1`` with probability
``p`` and ``l`` otherwise, so ``E[Q_s(v)] = v`` and every coordinate's error is at
most ``||v||_2 / s``. The default ``s`` is ``ceil(sqrt(n))`` (paper §6.1), ``n`` the
bucket length (``d`` when ``bucket=0``), and at least 1. The norm sent is the
float32 rounding of ``||v||_2`` *upwards*, and ``r`` is computed from that sent norm
(as ``|v_i| * fl(s / norm)``, clipped to s against a last-ulp rounding), so the decode
is unbiased about what the receiver multiplies by (it computes ``zeta * fl(norm / s)``,
within an ulp of it) and ``r <= s`` holds. The RNG (``np.random.default_rng(seed)``) lives in the codec; give
each rank its own seed, or :meth:`~mpiml.compress.base.Codec.reseed` it before each
encode.

Wire layout of ``QSGD`` ("qsgd"), after the 24-byte header of :mod:`.base`::

    s  (uint64, little endian), the number of levels, 1 <= s <= 2**32 - 1
    b  (uint64), the bucket length used: d for one bucket, 0 when d = 0, else 1..d
    nb float32 norms (little endian), nb = ceil(d / b) (0 if d = 0)
    one bitstream, MSB first within each byte, in three parts:
      U  unary part:    for each coordinate i, N_i zeros then a one
      M  mantissa part: for each coordinate i, the N_i low bits of zeta_i + 1, MSB first
      S  sign part:     one bit (1 = negative) per coordinate with zeta_i > 0
      zero padding to the next byte (fewer than 8 bits, all zero)

with ``N_i = floor(log2(zeta_i + 1))``. The unary and mantissa bits of coordinate i
together are exactly the Elias-gamma code of ``zeta_i + 1`` (gamma codes positive
integers, so level 0 is sent as gamma(1) = "1": one bit, and no sign), and the sign
bit is the paper's per-coordinate sign bit, omitted for level 0 (its sign is
meaningless). So each coordinate costs exactly what the paper's "sign bit + gamma
code" costs: level 0 costs 1 bit, level z > 0 costs ``2 floor(log2(z + 1)) + 1``
gamma bits plus 1 sign bit. The bits are only *permuted* (all unary prefixes, then
all mantissas, then all signs): the first d one-bits of the stream end the d unary
prefixes, which gives the length of U and of M (``|M| = |U| - d``), hence where
each part starts, so decoding needs no per-coordinate search and vectorizes
(numpy) or streams three cursors at once (numba). The norms are all put first
(not interleaved per bucket) for the same reason.

``s`` and ``b`` are on the wire (16 bytes), so a decoder needs no matching
configuration: any ``QSGD()`` decodes any "qsgd" payload; the decoder's own ``s``
and ``bucket`` are used only when it encodes. ``decode`` checks both fields
(``ValueError`` naming ``s`` or ``b``).

``QSGDFixed`` ("qsgd_fixed") is the same quantization with a fixed-width body, for
comparison: the same s, b and norms, then per coordinate ``w = ceil(log2(s + 1))``
level bits (MSB first), then one sign bit per coordinate (0 for level 0), zero
padded to a byte.

Kernels: the quantization and the bitstreams run in numba-compiled kernels
(:mod:`mpiml.compress._kernels`) when numba imports, else in the numpy reference
(:mod:`mpiml.compress._qsgd_numpy`), which defines the bytes; both give identical
payloads and decodes, and ``mpiml.compress.KERNELS`` says which one runs
(``MPIML_COMPRESS_KERNELS=numpy`` forces the reference). The random draws are
numpy's: coordinate i uses the i-th 32-bit half of
``rng.bit_generator.random_raw(ceil(d / 2))`` as its uniform (see
:mod:`mpiml.compress._qsgd_numpy`). The norms are computed by numpy on both paths.

``decode`` raises ``ValueError`` naming what is wrong (header, length, code) on a
truncated, extended or corrupted payload wherever that is detectable: the gamma
stream or the sign bits running past the end, trailing bytes or nonzero padding
bits, levels above s, s or b out of range, non-finite or negative norms, a nonzero
level in a bucket of norm 0, nonzero reserved header bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mpiml.backend import to_host
from mpiml.compress import _kernels
from mpiml.compress.base import (
    Codec,
    Seed,
    check_finite,
    check_out,
    expected,
    int_param,
    pack_header,
    read_header,
    register,
    rng_from_seed,
    seal,
)

__all__ = ["S_MAX", "QSGD", "QSGDFixed", "bits_per_coordinate"]

S_MAX = 2**32 - 1  # the paper's "full precision" s (§6.1); levels + 1 fit 33 bits
_F32_MAX = float(np.finfo(np.float32).max)
_FIELDS = np.dtype("<u8")
_CHUNK = 1 << 16  # coordinates per float64 temporary in the norm


def bits_per_coordinate(payload: np.ndarray, d: int) -> float:
    """Bits on the wire per coordinate: 8 * len(payload) / d (header, s, b and norms included)."""
    if d <= 0:
        raise ValueError(f"bits_per_coordinate: d must be positive (got {d})")
    return 8.0 * int(np.asarray(payload).size) / d


def _sum_squares(x: np.ndarray) -> float:
    """sum x_i**2 in float64, for float32 x (squares exact, no overflow possible),
    through a cache-sized float64 temporary rather than a d-sized one."""
    total = 0.0
    tmp = np.empty(min(x.size, _CHUNK), np.float64)
    for i in range(0, x.size, _CHUNK):
        c = tmp[: min(_CHUNK, x.size - i)]
        np.copyto(c, x[i : i + _CHUNK])
        total += float(np.dot(c, c))
    return total


def _scale(norms: np.ndarray, s: int) -> np.ndarray:
    """s / norm per bucket in float64, 0 for a zero norm: r_i = |x_i| * scale (one product
    per coordinate, on both kernel paths)."""
    nf = norms.astype(np.float64)
    out = np.zeros_like(nf)
    np.divide(float(s), nf, out=out, where=nf > 0)
    return out


class _QSGDBase(Codec):
    name = "qsgd_base"

    @classmethod
    def check_params(cls, params: Mapping[str, Any], d: int | None = None) -> None:
        """``s``: None (ceil(sqrt(bucket length))) or an integer in 1..2**32-1 (levels + 1
        must fit the 33-bit gamma codes); ``bucket``: an integer >= 0 (0: one bucket; a
        bucket longer than d is one bucket too)."""
        s = params.get("s")
        if s is not None:
            int_param("s", s, 1, S_MAX, "2**32-1")
        int_param("bucket", params.get("bucket", 0), 0)

    def __init__(self, s: int | None = None, bucket: int = 0, seed: Seed = 0) -> None:
        try:
            self.check_params({"s": s, "bucket": bucket})
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        self.s = None if s is None else int(s)
        self.bucket = int(bucket)
        self.rng = rng_from_seed(seed, self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(s={self.s}, bucket={self.bucket})"

    def reseed(self, seed: Seed) -> None:
        """A fresh ``numpy.random.default_rng(seed)``, as if built with ``seed``."""
        self.rng = rng_from_seed(seed, self.name)

    # -- geometry ---------------------------------------------------------------
    def _blen(self, d: int) -> int:
        """Bucket length for a vector of d coordinates (>= 1)."""
        if self.bucket == 0 or self.bucket >= d:
            return max(d, 1)
        return self.bucket

    def levels(self, d: int) -> int:
        """The number of levels s used for a vector of d coordinates."""
        if self.s is not None:
            return self.s
        return max(1, math.isqrt(self._blen(d) - 1) + 1) if d > 0 else 1  # ceil(sqrt(n))

    # -- encode -------------------------------------------------------------------
    def _prepare(self, x: Any) -> tuple[bytes, np.ndarray, np.ndarray, int, int]:
        """(header + s + b bytes, x on the host, float32 norms, s, b) after every input check."""
        x = to_host(x)  # cupy: one device-to-host copy; the kernels run on the CPU
        header = pack_header(self.name, x)
        x = np.ascontiguousarray(x)
        d = x.size
        s = self.levels(d)
        b = self._blen(d) if d else 0
        fields = np.array([s, b], _FIELDS).tobytes()
        if d == 0:
            return header + fields, x, np.zeros(0, np.float32), s, b
        norm64 = self._norms(x, b)
        if np.any(norm64 > _F32_MAX):
            raise ValueError(
                f"{self.name}: a bucket norm {norm64.max():.3g} exceeds the float32 range of the norm field"
            )
        norm32 = norm64.astype(np.float32)
        low = norm32.astype(np.float64) < norm64
        if np.any(low):  # round the sent norm upwards so that r <= s
            norm32[low] = np.nextafter(norm32[low], np.float32(np.inf))
        return header + fields, x, norm32, s, b

    def _norms(self, x: np.ndarray, b: int) -> np.ndarray:
        """float64 ||bucket||_2 of each bucket; NaN/Inf input is a ValueError."""
        d = x.size
        if x.dtype == np.float32:
            # float32 squares are exact in float64 and cannot overflow it: no scaling, and
            # a NaN/Inf anywhere shows in the sum, so the finiteness check costs no pass.
            if b >= d:
                ss = np.array([_sum_squares(x)])
            else:
                x64 = x.astype(np.float64)
                ss = np.add.reduceat(x64 * x64, np.arange(0, d, b))
            if not np.isfinite(ss).all():
                check_finite(x, self.name)
            return np.sqrt(ss)
        check_finite(x, self.name)
        a = np.abs(x)
        m = np.array([a.max()]) if b >= d else np.maximum.reduceat(a, np.arange(0, d, b))
        # Scale by a power of two (exact) so that squaring cannot overflow.
        e = np.frexp(m)[1].astype(np.int64)
        if b >= d:
            sc = np.ldexp(a, -int(e[0]))
            return np.ldexp(np.sqrt(np.array([np.dot(sc, sc)])), e)
        sc = np.ldexp(a, -np.repeat(e, b)[:d])
        return np.ldexp(np.sqrt(np.add.reduceat(sc * sc, np.arange(0, d, b))), e)

    def _assemble(self, head: bytes, norms: np.ndarray, stream: np.ndarray) -> np.ndarray:
        out = np.empty(len(head) + 4 * norms.size + stream.size, np.uint8)
        out[: len(head)] = np.frombuffer(head, np.uint8)
        out[len(head) : len(head) + 4 * norms.size] = norms.astype("<f4").view(np.uint8)
        out[len(head) + 4 * norms.size :] = stream
        return seal(out, self.name)

    # -- decode -------------------------------------------------------------------
    def _read(
        self, payload: np.ndarray, out: np.ndarray | None, d_exp: int | None, dt_exp: Any
    ) -> tuple[int, int, int, np.ndarray, np.ndarray, np.ndarray]:
        """(d, s, b, float64 norms, stream bytes, target) of a payload, header and fields
        checked, d and dtype against the caller's ``out`` or ``d_exp`` and ``dt_exp``."""
        dtype, d, body = read_header(payload, self.name, *expected(out, d_exp, dt_exp, self.name))
        if np.any(payload[5:8]):
            raise ValueError(f"{self.name}: bad header: reserved bytes 5-7 are not zero")
        raw = np.frombuffer(body, dtype=np.uint8)
        if raw.size < 16:
            raise ValueError(
                f"{self.name}: bad length: body of {raw.size} bytes is shorter than s and b (16)"
            )
        s, b = (int(v) for v in raw[:16].view(_FIELDS))
        if not 1 <= s <= S_MAX:
            raise ValueError(f"{self.name}: bad code: field s = {s} is not in [1, 2**32 - 1]")
        if (d == 0 and b != 0) or (d > 0 and not 1 <= b <= d):
            raise ValueError(f"{self.name}: bad code: field b = {b} (bucket length) is not in [1, d = {d}]")
        nb = 0 if d == 0 else -(-d // b)
        if raw.size < 16 + 4 * nb:
            raise ValueError(
                f"{self.name}: bad length: body of {raw.size} bytes is shorter than s, b and the {nb} norms"
            )
        norms = raw[16 : 16 + 4 * nb].view("<f4").astype(np.float64)
        if not np.isfinite(norms).all() or np.any(norms < 0):
            raise ValueError(f"{self.name}: bad code: a norm is negative, NaN or Inf")
        stream_bits = 8 * (raw.size - 16 - 4 * nb)
        if d > stream_bits:  # every coordinate costs at least one bit: d is confirmed before allocating
            raise ValueError(
                f"{self.name}: bad length: d = {d} coordinates need at least {d} bits, the code has {stream_bits}"
            )
        y = np.empty(d, dtype) if out is None else check_out(out, dtype, d, self.name)
        return d, s, b, norms, raw[16 + 4 * nb :], y

    def _run(self, kernel: str, *args: Any) -> Any:
        try:
            return _kernels.run(kernel, *args)
        except ValueError as e:  # the kernels' messages name length or code; add whose
            raise ValueError(f"{self.name}: {e}") from None


@register
class QSGD(_QSGDBase):
    """QSGD with the Elias-gamma coded levels (see the module docstring for the layout)."""

    name = "qsgd"
    kernels = "gamma"

    def encode(self, x: Any) -> np.ndarray:
        head, x, norms, s, b = self._prepare(x)
        stream = _kernels.run("gamma_encode", x, _scale(norms, s), s, b, rng=self.rng)
        return self._assemble(head, norms, stream)

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        """x of a payload (see :class:`mpiml.compress.base.Codec`: ``out``, ``d`` and ``dtype``
        are what the receiver expects)."""
        d, s, b, norms, raw, y = self._read(payload, out, d, dtype)
        return self._run("gamma_decode", raw, d, s, b, norms, y)


@register
class QSGDFixed(_QSGDBase):
    """QSGD with fixed-width levels: ceil(log2(s+1)) level bits + 1 sign bit per coordinate."""

    name = "qsgd_fixed"
    kernels = "fixed"

    def width(self, d: int) -> int:
        return self._width(self.levels(d))

    @staticmethod
    def _width(s: int) -> int:
        return max(1, s.bit_length())  # = ceil(log2(s + 1))

    def encode(self, x: Any) -> np.ndarray:
        head, x, norms, s, b = self._prepare(x)
        stream = _kernels.run("fixed_encode", x, _scale(norms, s), s, b, self._width(s), rng=self.rng)
        return self._assemble(head, norms, stream)

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        """x of a payload (see :class:`mpiml.compress.base.Codec`: ``out``, ``d`` and ``dtype``
        are what the receiver expects)."""
        d, s, b, norms, raw, y = self._read(payload, out, d, dtype)
        return self._run("fixed_decode", raw, d, s, b, self._width(s), norms, y)
