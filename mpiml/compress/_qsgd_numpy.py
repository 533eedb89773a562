"""The numpy reference of the QSGD kernels: quantize (eqs. 2-3), the §6.1 gamma
bitstream and the fixed-width one, and their decoders.

These define the bytes. :mod:`mpiml.compress._kernels` has numba versions of the
same four functions that must produce the same payloads and the same decodes bit
for bit (a test checks that on many inputs); this module is what runs when numba is
missing or ``MPIML_COMPRESS_KERNELS=numpy``. Layouts are in :mod:`mpiml.compress.qsgd`.

Randomness: coordinate i's uniform is ``u_i * 2**-32`` with ``u_i`` the i-th 32-bit
little-endian half of ``rng.bit_generator.random_raw(ceil(d / 2))`` (the low half of
each raw 64-bit output first), so an encode always takes ceil(d/2) raw draws and
chunked draws (the numba path) give the same stream. The level goes up when
``u_i * 2**-32 < p``, i.e. with probability ``ceil(p 2**32) / 2**32``, within
``2**-32`` of ``p``.

Errors are ``ValueError``s whose messages name "length" or "code"; the caller
prefixes the codec's name.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fixed_decode", "fixed_encode", "gamma_decode", "gamma_encode", "uniforms"]

TWO_M32 = 2.0**-32


def uniforms(rng: np.random.Generator, d: int) -> np.ndarray:
    """The d uint32 draws of one encode (see the module docstring)."""
    raw = rng.bit_generator.random_raw((d + 1) // 2)
    return np.asarray(raw, dtype="<u8").view("<u4")[:d]


def _per_coordinate(nf: np.ndarray, b: int, d: int) -> np.ndarray:
    return np.broadcast_to(nf[0], (d,)) if nf.size == 1 else np.repeat(nf, b)[:d]


def quantize(
    x: np.ndarray, scale: np.ndarray, s: int, b: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 levels zeta, bool negative) of x; ``scale`` is s / norm per bucket (0 for
    norm 0), so ``r = |x_i| * scale``, clipped to s (a rounding may pass it by an ulp)."""
    d = x.size
    u = uniforms(rng, d)
    r = np.abs(x.astype(np.float64)) * _per_coordinate(scale, b, d)
    np.minimum(r, float(s), out=r)
    lvl = np.floor(r)
    p = r - lvl
    zeta = lvl.astype(np.int64) + (u.astype(np.float64) * TWO_M32 < p)
    neg = np.signbit(x) & (zeta > 0)
    return zeta, neg


def dequantize(
    zeta: np.ndarray, neg: np.ndarray, nf: np.ndarray, s: int, b: int, out: np.ndarray
) -> np.ndarray:
    """out = sgn * zeta * (nf / s), in float64 then rounded to out's dtype."""
    d = zeta.size
    if d == 0:
        return out
    if nf.size == 1:
        bad = nf[0] == 0 and bool(np.any(zeta))
    else:
        bad = bool(np.any((nf == 0) & (np.add.reduceat(zeta, np.arange(0, d, b)) > 0)))
    if bad:
        raise ValueError("bad code: nonzero level in a bucket of norm 0")
    y = zeta.astype(np.float64) * _per_coordinate(nf / s, b, d)
    np.negative(y, out=y, where=neg)
    out[...] = y
    return out


def _check_padding(bits: np.ndarray, end: int) -> None:
    t = bits.size
    if end > t:
        raise ValueError(f"bad length: the code needs {end} bits, the body has {t}")
    if t - end >= 8:
        raise ValueError(f"bad length: {(t - end) // 8} trailing byte(s) after the code")
    if np.any(bits[end:]):
        raise ValueError("bad code: nonzero padding bits")


# ------------------------------------------------------------------------- gamma


def gamma_encode(x: np.ndarray, scale: np.ndarray, s: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """The packed U | M | S bitstream of x (zero padded to a byte)."""
    zeta, neg = quantize(x, scale, s, b, rng)
    d = zeta.size
    if d == 0:
        return np.zeros(0, np.uint8)
    n = zeta + 1
    nbits = (np.frexp(n.astype(np.float64))[1] - 1).astype(np.int64)  # N = floor(log2(n)), exact
    uend = np.cumsum(nbits + 1)
    u_total = int(uend[-1])
    mstart = np.cumsum(nbits) - nbits  # exclusive
    m_total = int(nbits.sum())
    nz = zeta > 0
    stream = np.zeros(u_total + m_total + int(np.count_nonzero(nz)), bool)
    stream[uend - 1] = True  # the one ending each unary prefix
    # Mantissa bit k (k = 0 the most significant below the leading one), over a shrinking
    # set of coordinates: the loop is over bit positions, not elements.
    idx = np.flatnonzero(nbits > 0)
    k = 0
    while idx.size:
        nb_i = nbits[idx]
        stream[u_total + mstart[idx] + k] = ((n[idx] >> (nb_i - 1 - k)) & 1).astype(bool)
        k += 1
        idx = idx[nb_i > k]
    stream[u_total + m_total :] = neg[nz]
    return np.packbits(stream)


def gamma_decode(raw: np.ndarray, d: int, s: int, b: int, nf: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Decode the bitstream ``raw`` (bytes) of d coordinates into ``out``."""
    bits = np.unpackbits(raw)
    if d == 0:
        _check_padding(bits, 0)
        return out
    ones = np.flatnonzero(bits)
    if ones.size < d:
        raise ValueError(f"bad code: the gamma stream runs past the end ({ones.size} of {d} codes)")
    ends = ones[:d]
    nbits = np.diff(ends, prepend=-1) - 1
    nmax = (s + 1).bit_length() - 1  # floor(log2(s + 1))
    if int(nbits.max()) > nmax:
        raise ValueError(f"bad code: a gamma code is longer than level s = {s} allows")
    u_total = int(ends[-1]) + 1
    m_total = u_total - d
    if u_total + m_total > bits.size:
        raise ValueError("bad code: the gamma stream runs past the end")
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
        raise ValueError(f"bad code: a level exceeds s = {s}")
    nz = zeta > 0
    n_sign = int(np.count_nonzero(nz))
    sstart = u_total + m_total
    _check_padding(bits, sstart + n_sign)
    neg = np.zeros(d, bool)
    neg[nz] = bits[sstart : sstart + n_sign].astype(bool)
    return dequantize(zeta, neg, nf, s, b, out)


# ------------------------------------------------------------------------- fixed width


def fixed_encode(
    x: np.ndarray, scale: np.ndarray, s: int, b: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    """d w-bit levels (MSB first), then d sign bits, zero padded to a byte."""
    zeta, neg = quantize(x, scale, s, b, rng)
    d = zeta.size
    stream = np.zeros(d * w + d, bool)
    lv = stream[: d * w].reshape(d, w)
    for j in range(w):  # loop over bit positions, vectorized over coordinates
        lv[:, j] = (zeta >> (w - 1 - j)) & 1
    stream[d * w :] = neg
    return np.packbits(stream)


def fixed_decode(
    raw: np.ndarray, d: int, s: int, b: int, w: int, nf: np.ndarray, out: np.ndarray
) -> np.ndarray:
    bits = np.unpackbits(raw)
    _check_padding(bits, d * w + d)
    if d == 0:
        return out
    lv = bits[: d * w].reshape(d, w)
    zeta = np.zeros(d, np.int64)
    for j in range(w):
        zeta = (zeta << 1) | lv[:, j]
    if int(zeta.max()) > s:
        raise ValueError(f"bad code: a level exceeds s = {s}")
    neg = bits[d * w : d * w + d].astype(bool)
    if np.any(neg & (zeta == 0)):
        raise ValueError("bad code: a sign bit is set on a level-0 coordinate")
    return dequantize(zeta, neg, nf, s, b, out)
