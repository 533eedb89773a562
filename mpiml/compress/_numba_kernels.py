"""numba-compiled QSGD kernels: the same bytes as :mod:`._qsgd_numpy`, much faster.

One core (``parallel=False``; the other cores belong to the other ranks). Encode, per
chunk of ``_CHUNK`` coordinates: draw the chunk's uniforms, quantize into signed levels
(a plain loop LLVM vectorizes), then append each level to the bit writers (U, M, S parts
of the gamma stream; levels and signs of the fixed one); at the end concatenate the
parts at their bit offsets. A writer keeps its unfinished bits left aligned in a 64-bit
word and stores the whole word, big endian, at every append: no branch per bit.
Decode: find where U ends (the d-th one bit: |U|, hence |M| = |U| - d and where S
starts), then read the three parts with three cursors at once, one unaligned 64-bit
load and a count-leading-zeros per code. Every check of the numpy reference is made
here too and reported as an error code that :func:`_raise` turns into the same kind of
message.

The uniforms are drawn by numpy, chunk by chunk (``_CHUNK`` coordinates, so they stay
in cache), from the codec's own Generator: ``random_raw`` of the chunk's halves, which
concatenate to exactly the reference's single draw.

``cache=True`` keeps the machine code in ``__pycache__`` (numba writes it by atomic
rename, so ranks compiling at once are safe; where that folder is read-only numba uses
its user-wide cache); ``nogil=True`` lets a progress thread run meanwhile. No
``fastmath``: the arithmetic must round exactly as numpy's does.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["fixed_decode", "fixed_encode", "gamma_decode", "gamma_encode"]

_CHUNK = 1 << 16  # coordinates per draw of uniforms (256 KiB of uint32): even, so halves align
_TWO_M32 = 2.0**-32

# error codes of the decode kernels -> message (the caller prefixes the codec's name)
_ERRORS = {
    1: "bad code: the gamma stream runs past the end ({0} of {1} codes)",
    2: "bad code: a gamma code is longer than level s = {0} allows",
    3: "bad code: the gamma stream runs past the end",
    4: "bad code: a level exceeds s = {0}",
    5: "bad length: the code needs {0} bits, the body has {1}",
    6: "bad length: {0} trailing byte(s) after the code",
    7: "bad code: nonzero padding bits",
    8: "bad code: nonzero level in a bucket of norm 0",
    9: "bad code: a sign bit is set on a level-0 coordinate",
}


def _raise(err: np.ndarray) -> None:
    code = int(err[0])
    if code:
        raise ValueError(_ERRORS[code].format(int(err[1]), int(err[2])))


# ------------------------------------------------------------------------- bit helpers
# Three LLVM instructions numba does not expose: count leading zeros, and an unaligned
# big-endian 64-bit load and store (bswap), so that the bit writers and readers move a
# whole word per coordinate without branches. Buffers carry 8 bytes of slack for them.


@intrinsic
def _clz(typingctx, x):
    """Leading zeros of the 64-bit pattern of x (64 for 0)."""
    sig = types.int64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))

    return sig, codegen


@intrinsic
def _lshr(typingctx, x, n):
    """Logical (unsigned) right shift of x's 64-bit pattern by n in [0, 63]."""
    sig = types.int64(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        return builder.lshr(args[0], args[1])

    return sig, codegen


@intrinsic
def _load_be64(typingctx, arr, idx):
    """Bytes arr[idx: idx + 8] as one big-endian 64-bit pattern (no bounds check)."""
    sig = types.int64(arr, types.int64)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.bswap(builder.load(ptr, align=1))

    return sig, codegen


@intrinsic
def _store_be64(typingctx, arr, idx, val):
    """arr[idx: idx + 8] = val's 64-bit pattern, big endian (no bounds check)."""
    sig = types.void(arr, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(a.data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(builder.bswap(args[2]), ptr, align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def _put(buf, pos, acc, nacc, v, n):
    """Append the n (<= 33) low bits of v to a writer whose acc holds nacc (<= 7) bits,
    left aligned; write the whole word and keep the unfinished byte. Returns the writer."""
    acc |= (v << 1) << (63 - nacc - n)  # two shifts: n = 0 (v = 0) must not shift by 64
    nacc += n
    _store_be64(buf, pos, acc)
    nb = nacc >> 3
    return pos + nb, acc << (nb * 8), nacc & 7


@njit(cache=True, nogil=True)
def _append_bits(dst, off, src, nbits):
    """Copy the first nbits bits of src into dst from bit offset off on. dst's bits
    before off are kept; its byte holding bit off must be zero from there on."""
    nbytes = (nbits + 7) >> 3
    k = off >> 3
    sh = off & 7
    if sh == 0:
        dst[k : k + nbytes] = src[:nbytes]
        return
    n = dst.size
    for j in range(nbytes):
        v = np.int64(src[j])
        dst[k + j] |= v >> sh
        if k + j + 1 < n:
            dst[k + j + 1] = (v << (8 - sh)) & 0xFF


@njit(cache=True, nogil=True)
def _levels(x, scale, s, b, u, lo, z):
    """z[j] = +-zeta of coordinate lo + j (eqs. 2-3, as _qsgd_numpy.quantize; the sign
    is x's where zeta > 0). A plain loop over the chunk, so LLVM vectorizes it."""
    sf = np.float64(s)
    n = u.size
    j = 0
    while j < n:
        i = lo + j
        bi = i // b
        hi = min(n, (bi + 1) * b - lo)  # the rest of this bucket within the chunk
        sc = scale[bi]
        for jj in range(j, hi):
            xi = np.float64(x[lo + jj])
            r = min(abs(xi) * sc, sf)
            lvl = np.floor(r)
            zeta = np.int64(lvl) + np.int64(np.float64(u[jj]) * _TWO_M32 < r - lvl)
            z[jj] = -zeta if xi < 0 else zeta
        j = hi


# ------------------------------------------------------------------------- gamma


@njit(cache=True, nogil=True)
def _gamma_chunk(z, ubuf, mbuf, sbuf, st):
    """Append the gamma codes of the signed levels z; st holds the three writers
    (pos, acc, nacc each) between calls."""
    upos, uacc, unacc = st[0], st[1], st[2]
    mpos, macc, mnacc = st[3], st[4], st[5]
    spos, sacc, snacc = st[6], st[7], st[8]
    for j in range(z.size):
        zj = z[j]
        neg = np.int64(zj < 0)
        zeta = abs(zj)
        n = zeta + 1
        nb = 63 - _clz(n)  # floor(log2(n))
        upos, uacc, unacc = _put(ubuf, upos, uacc, unacc, np.int64(1), nb + 1)  # nb zeros, a one
        mpos, macc, mnacc = _put(mbuf, mpos, macc, mnacc, n ^ (np.int64(1) << nb), nb)  # n below its top bit
        k = np.int64(zeta > 0)  # a sign bit only for a nonzero level
        spos, sacc, snacc = _put(sbuf, spos, sacc, snacc, neg, k)
    st[0], st[1], st[2] = upos, uacc, unacc
    st[3], st[4], st[5] = mpos, macc, mnacc
    st[6], st[7], st[8] = spos, sacc, snacc


@njit(cache=True, nogil=True)
def _concat(bufs, nbits):
    total = 0
    for nb in nbits:
        total += nb
    out = np.zeros((total + 7) >> 3, np.uint8)
    off = 0
    for i in range(len(bufs)):
        _append_bits(out, off, bufs[i], nbits[i])
        off += nbits[i]
    return out


def _draw(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.asarray(rng.bit_generator.random_raw((n + 1) // 2), dtype="<u8").view("<u4")[:n]


def _level_chunks(
    x: np.ndarray, scale: np.ndarray, s: int, b: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """The signed levels of x, ``_CHUNK`` coordinates at a time, in one reused buffer
    (the uniforms drawn chunk by chunk, in the reference's order)."""
    d = x.size
    z = np.empty(min(d, _CHUNK), np.int64)
    for lo in range(0, d, _CHUNK):
        u = _draw(rng, min(_CHUNK, d - lo))
        _levels(x, scale, s, b, u, lo, z)
        yield z[: u.size]


def gamma_encode(x: np.ndarray, scale: np.ndarray, s: int, b: int, rng: np.random.Generator) -> np.ndarray:
    d = x.size
    if d == 0:
        return np.zeros(0, np.uint8)
    nmax = (s + 1).bit_length() - 1
    # worst-case part sizes (np.empty: only the pages written are touched), + 8 of slack
    ubuf = np.empty((d * (nmax + 1) + 7) // 8 + 8, np.uint8)
    mbuf = np.empty((d * nmax + 7) // 8 + 8, np.uint8)
    sbuf = np.empty((d + 7) // 8 + 8, np.uint8)
    st = np.zeros(9, np.int64)
    for z in _level_chunks(x, scale, s, b, rng):
        _gamma_chunk(z, ubuf, mbuf, sbuf, st)
    nbits = np.array([st[0] * 8 + st[2], st[3] * 8 + st[5], st[6] * 8 + st[8]], np.int64)
    return _concat((ubuf, mbuf, sbuf), nbits)


@njit(cache=True, nogil=True)
def _popcount_table():
    t = np.zeros(256, np.int64)
    for i in range(256):
        t[i] = (i & 1) + t[i >> 1]
    return t


@njit(cache=True, nogil=True)
def _check_tail(raw, end, err):
    """Padding after bit ``end``: fewer than 8 bits, all zero (codes 5-7)."""
    t = raw.size * 8
    if end > t:
        err[0], err[1], err[2] = 5, end, t
        return
    if t - end >= 8:
        err[0], err[1] = 6, (t - end) // 8
        return
    if end < t and (np.int64(raw[end >> 3]) & ((1 << (8 - (end & 7))) - 1)) != 0:
        err[0] = 7


@njit(cache=True, nogil=True)
def _padded(raw):
    """raw and 8 zero bytes, for the word loads."""
    buf = np.zeros(raw.size + 8, np.uint8)
    buf[: raw.size] = raw
    return buf


@njit(cache=True, nogil=True)
def _gamma_decode(raw, d, s, b, nf, step, out, err):
    nbytes = raw.size
    t = nbytes * 8
    # where U ends: just after the d-th one bit
    pop = _popcount_table()
    cnt = 0
    i = 0
    while i < nbytes and cnt + pop[raw[i]] < d:
        cnt += pop[raw[i]]
        i += 1
    if i == nbytes:
        err[0], err[1], err[2] = 1, cnt, d
        return
    v = np.int64(raw[i])
    need = d - cnt
    bit = 0
    for bit in range(8):
        need -= (v >> (7 - bit)) & 1
        if need == 0:
            break
    u_total = i * 8 + bit + 1
    sstart = 2 * u_total - d  # |M| = |U| - d
    if sstart > t:
        err[0] = 3
        return
    nmax = 63 - _clz(s + 1)
    buf = _padded(raw)
    slast = nbytes  # sign reads past the end read the zero slack (an error below)
    upos = 0
    mpos = u_total
    spos = sstart
    zmax = 0
    for bi in range(nf.size):
        lo = bi * b
        hi = min(lo + b, d)
        stp = step[bi]
        zsum = 0
        for j in range(lo, hi):
            nb = _clz(_load_be64(buf, upos >> 3) << (upos & 7))
            if nb > nmax:  # also a run past the 57 bits a word load sees
                err[0], err[1] = 2, s
                return
            upos += nb + 1
            m = _lshr(_lshr(_load_be64(buf, mpos >> 3) << (mpos & 7), 1), 63 - nb)
            mpos += nb
            z = ((np.int64(1) << nb) | m) - 1
            zmax = max(zmax, z)
            zsum += z
            k = np.int64(z > 0)
            sb = np.int64(buf[min(spos >> 3, slast)])
            neg = (sb >> (7 - (spos & 7))) & k
            spos += k
            y = np.float64(z) * stp
            out[j] = -y if neg else y
        if nf[bi] == 0 and zsum > 0:
            err[0] = 8
            return
    if zmax > s:
        err[0], err[1] = 4, s
        return
    _check_tail(raw, spos, err)


def gamma_decode(raw: np.ndarray, d: int, s: int, b: int, nf: np.ndarray, out: np.ndarray) -> np.ndarray:
    err = np.zeros(3, np.int64)
    if d == 0:
        _check_tail(raw, 0, err)
    else:
        _gamma_decode(raw, d, s, b, nf, nf / s, out, err)
    _raise(err)
    return out


# ------------------------------------------------------------------------- fixed width


@njit(cache=True, nogil=True)
def _fixed_chunk(z, w, lbuf, sbuf, st):
    lpos, lacc, lnacc = st[0], st[1], st[2]
    spos, sacc, snacc = st[3], st[4], st[5]
    for j in range(z.size):
        zj = z[j]
        lpos, lacc, lnacc = _put(lbuf, lpos, lacc, lnacc, abs(zj), w)
        spos, sacc, snacc = _put(sbuf, spos, sacc, snacc, np.int64(zj < 0), np.int64(1))
    st[0], st[1], st[2] = lpos, lacc, lnacc
    st[3], st[4], st[5] = spos, sacc, snacc


def fixed_encode(
    x: np.ndarray, scale: np.ndarray, s: int, b: int, w: int, rng: np.random.Generator
) -> np.ndarray:
    d = x.size
    if d == 0:
        return np.zeros(0, np.uint8)
    lbuf = np.empty((d * w + 7) // 8 + 8, np.uint8)
    sbuf = np.empty((d + 7) // 8 + 8, np.uint8)
    st = np.zeros(6, np.int64)
    for z in _level_chunks(x, scale, s, b, rng):
        _fixed_chunk(z, w, lbuf, sbuf, st)
    nbits = np.array([st[0] * 8 + st[2], st[3] * 8 + st[5]], np.int64)
    return _concat((lbuf, sbuf), nbits)


@njit(cache=True, nogil=True)
def _fixed_decode(raw, d, s, b, w, nf, step, out, err):
    buf = _padded(raw)
    lpos = 0
    spos = d * w
    zmax = 0
    bad_sign = False
    for bi in range(nf.size):
        lo = bi * b
        hi = min(lo + b, d)
        stp = step[bi]
        zsum = 0
        for j in range(lo, hi):
            z = _lshr(_lshr(_load_be64(buf, lpos >> 3) << (lpos & 7), 1), 63 - w)
            lpos += w
            neg = (np.int64(buf[spos >> 3]) >> (7 - (spos & 7))) & 1
            spos += 1
            zmax = max(zmax, z)
            zsum += z
            bad_sign |= (neg == 1) & (z == 0)
            y = np.float64(z) * stp
            out[j] = -y if neg else y
        if nf[bi] == 0 and zsum > 0:
            err[0] = 8
            return
    if zmax > s:
        err[0], err[1] = 4, s
        return
    if bad_sign:
        err[0] = 9


def fixed_decode(
    raw: np.ndarray, d: int, s: int, b: int, w: int, nf: np.ndarray, out: np.ndarray
) -> np.ndarray:
    err = np.zeros(3, np.int64)
    _check_tail(raw, d * w + d, err)  # first, as the reference: the length is known up front
    if not err[0] and d:
        _fixed_decode(raw, d, s, b, w, nf, nf / s, out, err)
    _raise(err)
    return out


# the compiled functions each kernel family calls from Python: numba caches each of them
# under its own index file, so the family is cached when all of their index files exist
ENTRY_POINTS = {
    "gamma": (_levels, _gamma_chunk, _concat, _gamma_decode, _check_tail),
    "fixed": (_levels, _fixed_chunk, _concat, _fixed_decode, _check_tail),
}
