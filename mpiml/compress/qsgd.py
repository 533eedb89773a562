"""QSGD: s-level stochastic quantization (Alistarh et al.), Elias-gamma coded.

Quantization (eqs. (2)-(3) of the Quantized-PR-SGD paper): for each bucket ``v``
(``bucket`` consecutive coordinates; ``bucket=0`` is one bucket, the whole vector)
``Q_s(v_i) = ||v||_2 sgn(v_i) zeta_i / s`` where, with ``r = |v_i| s / ||v||_2``,
``l = floor(r)`` and ``p = r - l``, the level ``zeta_i`` is ``l + 1`` with probability
``p`` and ``l`` otherwise, so ``E[Q_s(v)] = v`` and every coordinate's error is at
most ``||v||_2 / s``. The default ``s`` is ``ceil(sqrt(n))`` (paper §6.1), ``n`` the
bucket length (``d`` when ``bucket=0``), and at least 1. The norm sent is the
float32 rounding of ``||v||_2`` *upwards*, and ``r`` is computed from that sent norm,
so the decode is unbiased about exactly what the receiver multiplies by and
``r <= s`` holds. The RNG (``np.random.Generator(seed)``) lives in the codec; give
each rank its own seed.

Wire layout of ``QSGD`` ("qsgd"), after the 16-byte header of :mod:`.base`::

    nb float32 norms (little endian), nb = ceil(d / bucket) (1 if bucket=0, 0 if d=0)
    one bitstream, MSB first within each byte, in three parts:
      U  unary part:    for each coordinate i, N_i zeros then a one
      M  mantissa part: for each coordinate i, the N_i low bits of zeta_i + 1, MSB first
      S  sign part:     one bit (1 = negative) per coordinate with zeta_i > 0
      zero padding to the next byte (fewer than 8 bits, all zero)

with ``N_i = floor(log2(zeta_i + 1))``. The unary and mantissa bits of coordinate i
together are exactly the Elias-gamma code of ``zeta_i + 1`` (gamma codes positive
integers), and the sign bit is the paper's per-coordinate sign bit, omitted for level
0 (its sign is meaningless). So each coordinate costs exactly what the paper's
"sign bit + gamma code" costs: level 0 costs 1 bit, level z > 0 costs
``2 floor(log2(z + 1)) + 1`` gamma bits plus 1 sign bit. The bits are only *permuted*
(all unary prefixes, then all mantissas, then all signs) so that decoding is
vectorized: the first d one-bits of the stream end the d unary prefixes, which
gives every N_i, hence every mantissa offset by a cumulative sum, hence the count
of sign bits. The norms are all put first (not interleaved per bucket) for the
same reason. ``s`` and ``bucket`` are not on the wire: encoder and decoder must be
built with the same ones (the default ``s`` derives from d, which is in the header).

``QSGDFixed`` ("qsgd_fixed") is the same quantization with a fixed-width body, for
comparison: the norms, then per coordinate ``w = ceil(log2(s + 1))`` level bits (MSB
first), then one sign bit per coordinate (0 for level 0), zero padded to a byte.

``decode`` raises ``ValueError`` naming what is wrong (header, length, code) on a
truncated, extended or corrupted payload wherever that is detectable: the gamma
stream or the sign bits running past the end, trailing bytes or nonzero padding
bits, levels above s, non-finite or negative norms, a nonzero level in a bucket of
norm 0, nonzero reserved header bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpiml.compress.base import Codec, check_finite, pack_header, read_header, register

__all__ = ["QSGD", "QSGDFixed", "bits_per_coordinate"]

_F32_MAX = float(np.finfo(np.float32).max)


def bits_per_coordinate(payload: np.ndarray, d: int) -> float:
    """Bits on the wire per coordinate: 8 * len(payload) / d (header and norms included)."""
    if d <= 0:
        raise ValueError(f"bits_per_coordinate: d must be positive (got {d})")
    return 8.0 * int(np.asarray(payload).size) / d


class _QSGDBase(Codec):
    name = "qsgd_base"

    def __init__(self, s: int | None = None, bucket: int = 0, seed: int = 0) -> None:
        if s is not None and (int(s) != s or s < 1):
            raise ValueError(f"{self.name}: s must be a positive integer (got {s})")
        if int(bucket) != bucket or bucket < 0:
            raise ValueError(f"{self.name}: bucket must be a non-negative integer (got {bucket})")
        self.s = None if s is None else int(s)
        self.bucket = int(bucket)
        self.rng = np.random.default_rng(seed)

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

    def _nbuckets(self, d: int) -> int:
        return 0 if d == 0 else -(-d // self._blen(d))

    # -- quantization -------------------------------------------------------------
    def _quantize(self, x: Any) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
        """(header, float32 norms, int64 levels, bool negative) of x."""
        x = np.asarray(x)
        header = pack_header(self.name, x)
        check_finite(x, self.name)
        d = x.size
        s = self.levels(d)
        if d == 0:
            return header, np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        b = self._blen(d)
        a = np.abs(x.astype(np.float64, copy=False))
        if b >= d:
            m = np.array([a.max()])
        else:
            m = np.maximum.reduceat(a, np.arange(0, d, b))
        # Scale by a power of two (exact) so that squaring cannot overflow.
        e = np.frexp(m)[1].astype(np.int64)
        if b >= d:
            sc = np.ldexp(a, -int(e[0]))
            norm64 = np.ldexp(np.sqrt(np.array([np.dot(sc, sc)])), e)
        else:
            sc = np.ldexp(a, -np.repeat(e, b)[:d])
            norm64 = np.ldexp(np.sqrt(np.add.reduceat(sc * sc, np.arange(0, d, b))), e)
        if np.any(norm64 > _F32_MAX):
            raise ValueError(
                f"{self.name}: a bucket norm {norm64.max():.3g} exceeds the float32 range of the norm field"
            )
        norm32 = norm64.astype(np.float32)
        low = norm32.astype(np.float64) < norm64
        if np.any(low):  # round the sent norm upwards so that r <= s
            norm32[low] = np.nextafter(norm32[low], np.float32(np.inf))
        nf = norm32.astype(np.float64)
        nfull = nf[0] if b >= d else np.repeat(nf, b)[:d]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(nfull > 0, (a * s) / nfull, 0.0)
        np.clip(r, 0.0, float(s), out=r)
        lvl = np.floor(r)
        p = r - lvl
        zeta = lvl.astype(np.int64) + (self.rng.random(d) < p)
        neg = np.signbit(x) & (zeta > 0)
        return header, norm32, zeta, neg

    def _dequantize(
        self, dtype: np.dtype, d: int, norms: np.ndarray, zeta: np.ndarray, neg: np.ndarray
    ) -> np.ndarray:
        if d == 0:
            return np.zeros(0, dtype)
        s = self.levels(d)
        b = self._blen(d)
        nf = norms.astype(np.float64)
        zb = np.zeros(nf.size, bool)
        if b >= d:
            zb[0] = nf[0] == 0 and bool(np.any(zeta))
            out = nf[0] * zeta.astype(np.float64) / s
        else:
            zb = (nf == 0) & (np.add.reduceat(zeta, np.arange(0, d, b)) > 0)
            out = np.repeat(nf, b)[:d] * zeta.astype(np.float64) / s
        if np.any(zb):
            raise ValueError(f"{self.name}: bad code: nonzero level in a bucket of norm 0")
        np.negative(out, out=out, where=neg)
        return out.astype(dtype)

    def _read(self, payload: np.ndarray) -> tuple[np.dtype, int, np.ndarray, np.ndarray]:
        """(dtype, d, norms, stream bits) of a payload, header and norms checked."""
        dtype, d, body = read_header(payload, self.name)
        if np.any(payload[5:8]):
            raise ValueError(f"{self.name}: bad header: reserved bytes 5-7 are not zero")
        nb = self._nbuckets(d)
        raw = np.frombuffer(body, dtype=np.uint8)
        if raw.size < 4 * nb:
            raise ValueError(
                f"{self.name}: bad length: body of {raw.size} bytes is shorter than the {nb} norms"
            )
        norms = raw[: 4 * nb].view("<f4").astype(np.float32)
        if not np.all(np.isfinite(norms)) or np.any(norms < 0):
            raise ValueError(f"{self.name}: bad code: a norm is negative, NaN or Inf")
        bits = np.unpackbits(raw[4 * nb :])
        return dtype, d, norms, bits


def _check_padding(name: str, bits: np.ndarray, end: int) -> None:
    t = bits.size
    if end > t:
        raise ValueError(f"{name}: bad length: the code needs {end} bits, the body has {t}")
    if t - end >= 8:
        raise ValueError(f"{name}: bad length: {(t - end) // 8} trailing byte(s) after the code")
    if np.any(bits[end:]):
        raise ValueError(f"{name}: bad code: nonzero padding bits")


@register
class QSGD(_QSGDBase):
    """QSGD with the Elias-gamma coded levels (see the module docstring for the layout)."""

    name = "qsgd"

    def encode(self, x: Any) -> np.ndarray:
        header, norms, zeta, neg = self._quantize(x)
        d = zeta.size
        n = zeta + 1
        nbits = (np.frexp(n.astype(np.float64))[1] - 1).astype(np.int64)  # N = floor(log2(n)), exact
        ulen = nbits + 1
        uend = np.cumsum(ulen)
        u_total = int(uend[-1]) if d else 0
        mstart = np.cumsum(nbits) - nbits  # exclusive
        m_total = int(nbits.sum())
        nz = zeta > 0
        n_sign = int(np.count_nonzero(nz))
        total = u_total + m_total + n_sign
        stream = np.zeros(total, bool)
        stream[uend - 1] = True  # the one ending each unary prefix
        # Mantissa: bit k (k = 0 is the most significant below the leading one), over a
        # shrinking set of coordinates; the loop is over bit positions, not elements.
        idx = np.flatnonzero(nbits > 0)
        k = 0
        while idx.size:
            nb_i = nbits[idx]
            stream[u_total + mstart[idx] + k] = ((n[idx] >> (nb_i - 1 - k)) & 1).astype(bool)
            k += 1
            idx = idx[nb_i > k]
        stream[u_total + m_total :] = neg[nz]
        body = np.packbits(stream)
        return np.concatenate([np.frombuffer(header, np.uint8), norms.astype("<f4").view(np.uint8), body])

    def decode(self, payload: np.ndarray) -> np.ndarray:
        dtype, d, norms, bits = self._read(payload)
        s = self.levels(d)
        if d == 0:
            _check_padding(self.name, bits, 0)
            return np.zeros(0, dtype)
        ones = np.flatnonzero(bits)
        if ones.size < d:
            raise ValueError(
                f"{self.name}: bad code: the gamma stream runs past the end ({ones.size} of {d} codes)"
            )
        ends = ones[:d]
        nbits = np.diff(ends, prepend=-1) - 1
        nmax = (s + 1).bit_length() - 1  # floor(log2(s + 1))
        if int(nbits.max()) > nmax:
            raise ValueError(f"{self.name}: bad code: a gamma code is longer than level s = {s} allows")
        u_total = int(ends[-1]) + 1
        m_total = int(nbits.sum())
        if u_total + m_total > bits.size:
            raise ValueError(f"{self.name}: bad code: the gamma stream runs past the end")
        mstart = u_total + np.cumsum(nbits) - nbits
        n = np.ones(d, np.int64)
        idx = np.flatnonzero(nbits > 0)
        k = 0
        while idx.size:
            nb_i = nbits[idx]
            n[idx] = (n[idx] << 1) | bits[mstart[idx] + k]
            k += 1
            idx = idx[nb_i > k]
        zeta = n - 1
        if int(zeta.max()) > s:
            raise ValueError(f"{self.name}: bad code: a level exceeds s = {s}")
        nz = zeta > 0
        n_sign = int(np.count_nonzero(nz))
        sstart = u_total + m_total
        _check_padding(self.name, bits, sstart + n_sign)
        neg = np.zeros(d, bool)
        neg[nz] = bits[sstart : sstart + n_sign].astype(bool)
        return self._dequantize(dtype, d, norms, zeta, neg)


@register
class QSGDFixed(_QSGDBase):
    """QSGD with fixed-width levels: ceil(log2(s+1)) level bits + 1 sign bit per coordinate."""

    name = "qsgd_fixed"

    def width(self, d: int) -> int:
        return max(1, self.levels(d).bit_length())  # = ceil(log2(s + 1))

    def encode(self, x: Any) -> np.ndarray:
        header, norms, zeta, neg = self._quantize(x)
        d = zeta.size
        w = self.width(d)
        stream = np.zeros(d * w + d, bool)
        lv = stream[: d * w].reshape(d, w)
        for j in range(w):  # loop over bit positions, vectorized over coordinates
            lv[:, j] = (zeta >> (w - 1 - j)) & 1
        stream[d * w :] = neg
        return np.concatenate(
            [np.frombuffer(header, np.uint8), norms.astype("<f4").view(np.uint8), np.packbits(stream)]
        )

    def decode(self, payload: np.ndarray) -> np.ndarray:
        dtype, d, norms, bits = self._read(payload)
        s = self.levels(d)
        w = self.width(d)
        _check_padding(self.name, bits, d * w + d)
        if d == 0:
            return np.zeros(0, dtype)
        lv = bits[: d * w].reshape(d, w)
        zeta = np.zeros(d, np.int64)
        for j in range(w):
            zeta = (zeta << 1) | lv[:, j]
        if int(zeta.max()) > s:
            raise ValueError(f"{self.name}: bad code: a level exceeds s = {s}")
        neg = bits[d * w : d * w + d].astype(bool)
        if np.any(neg & (zeta == 0)):
            raise ValueError(f"{self.name}: bad code: a sign bit is set on a level-0 coordinate")
        return self._dequantize(dtype, d, norms, zeta, neg)
