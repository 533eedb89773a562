"""Gradient codecs: identity, fp16, bf16, scaled sign, top-k, random-k.

Each codec is a small stateless-on-the-wire object (GRACE's compressor): ``encode(x)``
turns a flat float32/float64 array into one ``uint8`` payload (24-byte header from
:mod:`mpiml.compress.base`, then the body described in each class), ``decode(payload)``
turns it back into a numpy array of x's dtype and length. Error feedback lives apart,
in :mod:`mpiml.compress.feedback`; communication lives apart too.

``encode`` accepts numpy or cupy input (``xp`` is taken from the array; what crosses
the wire is copied to the host); the payload and the result of ``decode`` are always
numpy. ``decode(payload, out=None)`` takes a contiguous slice of a larger buffer as
well and, given ``out``, writes into it and returns it. ``decode`` checks the header, the
body's exact length, index ranges, and that every decoded value is finite: a
corrupted payload is a ``ValueError`` or, when only value bits changed, a different
but finite array, never another exception.

Bodies (little endian; ``T`` is x's dtype, ``I`` the index width of :func:`index_dtype`)::

    identity  d x T
    fp16      d x float16
    bf16      d x uint16 (the top half of float32, rounded to nearest even)
    sign      scale (float32) | ceil(d/8) bytes of np.packbits(x < 0), pad bits zero
    topk      k (uint64) | d (uint64) | k x I, strictly increasing | k x T
    randk     seed (uint64) | counter (uint64) | k (uint64) | d (uint64) | k x T

The sparse bodies repeat d: their length does not depend on d, so without the echo a
flipped bit in the header's d would decode to an array of another length (or ask for
terabytes); the dense bodies' length already pins d.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mpiml.backend import array_module, to_host
from mpiml.compress.base import (
    REGISTRY,
    UNCONFIRMED_D_MAX,
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

__all__ = [
    "BF16",
    "FP16",
    "Identity",
    "RandomK",
    "ScaledSign",
    "TopK",
    "build_codec",
    "index_dtype",
]

_U64 = np.dtype("<u8")
_F32 = np.dtype("<f4")
_FP16_MAX = float(np.finfo(np.float16).max)  # 65504


# ---------------------------------------------------------------------------- helpers


def _le(dt: np.dtype) -> np.dtype:
    return np.dtype(dt).newbyteorder("<")


def _check_input(x: Any, codec: str) -> bytes:
    """The header for ``x``, after checking dtype, shape and finiteness."""
    header = pack_header(codec, x)  # dtype and ndim checks, with the codec's name
    xp = array_module(x)
    if xp is np:
        check_finite(x, codec)
    elif not bool(xp.isfinite(x).all()):  # one device reduction; count on the host only on error
        check_finite(to_host(x), codec)
    return header


def _assemble(codec: str, header: bytes, *parts: np.ndarray) -> np.ndarray:
    """One contiguous uint8 payload: header then each part's bytes, copied once; sealed
    (the header's check field written)."""
    views = [np.ascontiguousarray(p).reshape(-1).view(np.uint8) for p in parts]
    out = np.empty(len(header) + sum(v.size for v in views), dtype=np.uint8)
    out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    pos = len(header)
    for v in views:
        out[pos : pos + v.size] = v
        pos += v.size
    return seal(out, codec)


def _body(
    payload: np.ndarray, codec: str, out: Any = None, d: int | None = None, dtype: Any = None
) -> tuple[np.dtype, int, np.ndarray]:
    """(dtype, d, body bytes) of a payload, checked against what the caller expects
    (``out``'s or the given ``d`` and ``dtype``)."""
    d_exp, dt_exp = expected(out, d, dtype, codec)
    dtype, d, body = read_header(payload, codec, d_exp, dt_exp)
    if payload[5:8].any():  # struct's pad bytes are skipped by unpack; the format says zero
        raise ValueError(f"{codec}: bad header: reserved bytes 5-7 are {payload[5:8].tolist()}, not zero")
    return dtype, d, np.frombuffer(body, dtype=np.uint8)


def _check_length(codec: str, body: np.ndarray, expected: int, what: str) -> None:
    if body.size != expected:
        raise ValueError(f"{codec}: bad length: body is {body.size} bytes, {what} needs {expected}")


def _u64(body: np.ndarray, offset: int) -> int:
    return int(np.frombuffer(body, dtype=_U64, count=1, offset=offset)[0])


def _finite_result(y: np.ndarray, codec: str) -> np.ndarray:
    if not np.isfinite(y).all():
        raise ValueError(f"{codec}: bad body: decodes to {int(np.sum(~np.isfinite(y)))} NaN/Inf values")
    return y


def _target(
    out: np.ndarray | None, dtype: np.dtype, d: int, codec: str, confirmed: bool = True
) -> np.ndarray:
    """Where decode writes: ``out`` (checked) or a new array. ``confirmed``: whether the
    caller or the body vouches for d; if not, d > UNCONFIRMED_D_MAX is refused rather than
    allocated on the header's word alone."""
    if out is not None:
        return check_out(out, dtype, d, codec)
    if not confirmed and d > UNCONFIRMED_D_MAX:
        raise ValueError(
            f"{codec}: bad header: d = {d} is more than the {UNCONFIRMED_D_MAX} coordinates decode "
            "allocates unless the receiver says how many it expects (decode(..., d=...) or out=...)"
        )
    return np.empty(d, dtype=dtype)


def index_dtype(d: int) -> np.dtype:
    """The smallest unsigned little-endian integer that holds d - 1 (uint8 for d <= 256)."""
    for dt in ("<u1", "<u2", "<u4"):
        if d - 1 <= np.iinfo(np.dtype(dt)).max:
            return np.dtype(dt)
    return _U64


def _resolve_k(codec: str, k: int | None, ratio: float, d: int) -> int:
    """k if given, else ceil(ratio * d) but at least 1; never more than d."""
    if k is None:
        k = max(1, math.ceil(ratio * d)) if d > 0 else 0
    return min(k, d)


def _check_k_ratio(params: Mapping[str, Any], d: int | None) -> None:
    """The sparse codecs' rules: ``k`` None or an integer >= 0, at most d when d is known
    (a larger k sends everything: no compression); ``ratio`` in (0, 1]."""
    k, ratio = params.get("k"), params.get("ratio", 0.01)
    if k is not None:
        int_param("k", k, 0)
        if d is not None and k > d:
            raise ValueError(
                f"k must be at most the model's {d} coordinates (got {k}: that sends all of them, "
                "uncompressed); lower it, or set k = 0 and use ratio"
            )
    if isinstance(ratio, bool) or not (isinstance(ratio, int | float) and 0.0 < float(ratio) <= 1.0):
        raise ValueError(f"ratio must be in (0, 1] (got {ratio!r})")


def _checked(codec: str, params: Mapping[str, Any]) -> None:
    try:
        _check_k_ratio(params, None)
    except ValueError as e:
        raise ValueError(f"{codec}.{e}") from None


# ---------------------------------------------------------------------------- codecs


@register
class Identity(Codec):
    """No compression: the body is x's raw bytes. Decode is exact."""

    name = "identity"

    def encode(self, x: Any) -> np.ndarray:
        header = _check_input(x, self.name)
        return _assemble(self.name, header, to_host(x).astype(_le(x.dtype), copy=False))

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        dtype, d, body = _body(payload, self.name, out, d, dtype)
        _check_length(self.name, body, d * dtype.itemsize, f"d = {d} values of {dtype}")
        y = _target(out, dtype, d, self.name)
        np.copyto(y, np.frombuffer(body, dtype=_le(dtype)))
        return _finite_result(y, self.name)


@register
class FP16(Codec):
    """IEEE half precision, round to nearest even.

    Error: |decode(x) - x| <= 2**-11 |x| + 2**-25 (relative in the normal range, absolute
    below it). A value that does not fit float16 (|x| rounds past 65504) is a
    ``ValueError``, not a silent clip: clipping would bias the gradient without a trace;
    the caller should scale first (as torch's fp16 hook divides before casting).
    """

    name = "fp16"

    def encode(self, x: Any) -> np.ndarray:
        header = _check_input(x, self.name)
        xp = array_module(x)
        with np.errstate(over="ignore"):  # overflow is reported below, by name
            h = x.astype(xp.float16)
        if not bool(xp.isfinite(h).all()):
            big = float(xp.abs(x).max())
            raise ValueError(
                f"fp16: value out of float16 range (max |x| = {big:g} > {_FP16_MAX:g}); scale x before encoding"
            )
        return _assemble(self.name, header, to_host(h).astype("<f2", copy=False))

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        dtype, d, body = _body(payload, self.name, out, d, dtype)
        _check_length(self.name, body, 2 * d, f"d = {d} float16 values")
        y = _target(out, dtype, d, self.name)
        with np.errstate(invalid="ignore"):
            np.copyto(y, np.frombuffer(body, dtype="<f2"))
        return _finite_result(y, self.name)


@register
class BF16(Codec):
    """bfloat16: the top 16 bits of float32, rounded to nearest even.

    Rounding is done on the uint32 view: add 0x7FFF plus the lowest kept bit, then
    shift (ties go to the even result). Error: |decode(x) - x| <= 2**-8 |x| (+ a tiny
    absolute term for float32 subnormals and for float64 input, which is cast to
    float32 first). A value that rounds past the float32/bfloat16 range is a ``ValueError``.
    """

    name = "bf16"

    def encode(self, x: Any) -> np.ndarray:
        header = _check_input(x, self.name)
        xp = array_module(x)
        with np.errstate(over="ignore"):
            u = x.astype(xp.float32).view(xp.uint32)
        bits = ((u + (xp.uint32(0x7FFF) + ((u >> 16) & xp.uint32(1)))) >> 16).astype(xp.uint16)
        if bool(((bits & xp.uint16(0x7F80)) == xp.uint16(0x7F80)).any()):  # exponent all ones: inf
            big = float(xp.abs(x).max())
            raise ValueError(
                f"bf16: value out of bfloat16 range (max |x| = {big:g}); scale x before encoding"
            )
        return _assemble(self.name, header, to_host(bits).astype("<u2", copy=False))

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        dtype, d, body = _body(payload, self.name, out, d, dtype)
        _check_length(self.name, body, 2 * d, f"d = {d} bfloat16 values")
        y = _target(out, dtype, d, self.name)
        h = np.frombuffer(body, dtype="<u2")
        if dtype == np.float32 and y.flags.c_contiguous:  # straight into out's bits: no temporary
            np.left_shift(h, 16, out=y.view(np.uint32), dtype=np.uint32)
        else:
            u = h.astype(np.uint32) << np.uint32(16)
            with np.errstate(invalid="ignore"):  # NaN bits from a corrupted body: reported below
                np.copyto(y, u.view(np.float32))
        return _finite_result(y, self.name)


@register
class ScaledSign(Codec):
    """Scaled sign (signSGD with a mean-magnitude scale; Bernstein et al. 2018,
    Karimireddy et al. 2019 "EF-SignSGD", eq. 3: C(x) = ||x||_1 / d * sign(x)).

    scale = mean |x| as float32 (0 for d = 0); one bit per coordinate, 1 for x < 0,
    so 0 (and -0.0) encodes as +. ``decode`` returns exactly scale * (+-1) in x's dtype.
    """

    name = "sign"

    def encode(self, x: Any) -> np.ndarray:
        header = _check_input(x, self.name)
        xp = array_module(x)
        d = int(x.size)
        mean = float(xp.abs(x).mean(dtype=xp.float64)) if d else 0.0
        with np.errstate(over="ignore"):
            scale = np.array([mean], dtype=_F32)
        if not np.isfinite(scale[0]):
            raise ValueError(f"sign: scale mean|x| = {mean:g} overflows float32; scale x before encoding")
        bits = np.packbits(to_host(x < 0))
        return _assemble(self.name, header, scale, bits)

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        dtype, d, body = _body(payload, self.name, out, d, dtype)
        nbytes = (d + 7) // 8
        _check_length(self.name, body, 4 + nbytes, f"scale + {d} sign bits")
        scale = np.frombuffer(body, dtype=_F32, count=1)[0]
        if not (np.isfinite(scale) and scale >= 0):
            raise ValueError(f"sign: bad body: scale {scale!r} is not finite and >= 0")
        packed = body[4:]
        if d % 8 and packed[-1] & np.uint8((1 << (8 - d % 8)) - 1):
            raise ValueError("sign: bad body: nonzero padding bits after the last sign")
        neg = np.unpackbits(packed, count=d).view(bool)
        s = dtype.type(scale)
        y = _target(out, dtype, d, self.name)
        y.fill(s)
        np.negative(y, out=y, where=neg)
        return y


@register
class TopK(Codec):
    """Top-k sparsification (Stich et al. 2018, "Sparsified SGD with memory", Def. 2.1).

    Keeps the k coordinates of largest |x| (ties broken arbitrarily); k is given, or
    ceil(ratio * d) but at least 1, and at most d. Body: k and d (uint64), the indices
    (strictly increasing, width :func:`index_dtype` of d), the values in x's dtype.
    ``decode`` is exact on the kept coordinates and zero elsewhere. Biased: use it
    with :class:`mpiml.compress.feedback.ErrorFeedback`.
    """

    name = "topk"

    @classmethod
    def check_params(cls, params: Mapping[str, Any], d: int | None = None) -> None:
        _check_k_ratio(params, d)

    def __init__(self, k: int | None = None, ratio: float = 0.01) -> None:
        _checked("topk", {"k": k, "ratio": ratio})
        self.k = None if k is None else int(k)
        self.ratio = float(ratio)

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, ratio={self.ratio})"

    def encode(self, x: Any) -> np.ndarray:
        header = _check_input(x, self.name)
        xp = array_module(x)
        d = int(x.size)
        k = _resolve_k(self.name, self.k, self.ratio, d)
        if k == d:
            idx = xp.arange(d)
        elif k == 0:
            idx = xp.zeros(0, dtype=xp.int64)
        else:
            idx = xp.sort(xp.argpartition(xp.abs(x), d - k)[d - k :])
        vals = x[idx]
        return _assemble(
            self.name,
            header,
            np.array([k, d], dtype=_U64),
            to_host(idx).astype(index_dtype(d)),
            to_host(vals).astype(_le(x.dtype), copy=False),
        )

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        confirmed = out is not None or d is not None  # else d is the header's word alone
        dtype, d, body = _body(payload, self.name, out, d, dtype)
        if body.size < 16:
            raise ValueError(f"topk: bad length: body is {body.size} bytes, shorter than k and d (16)")
        k = _u64(body, 0)
        if _u64(body, 8) != d:
            raise ValueError(f"topk: bad header or body: d = {d} in the header, {_u64(body, 8)} in the body")
        if k > d:
            raise ValueError(f"topk: bad body: k = {k} > d = {d}")
        it = index_dtype(d)
        _check_length(self.name, body, 16 + k * (it.itemsize + dtype.itemsize), f"k = {k} indices and values")
        idx = np.frombuffer(body, dtype=it, count=k, offset=16).astype(np.int64)
        if k and (idx[-1] >= d or np.any(idx[1:] <= idx[:-1])):
            raise ValueError(f"topk: bad body: indices must be strictly increasing and < d = {d}")
        vals = np.frombuffer(body, dtype=_le(dtype), count=k, offset=16 + k * it.itemsize)
        if not np.isfinite(vals).all():
            _finite_result(vals, self.name)
        y = _target(out, dtype, d, self.name, confirmed)
        y.fill(0)
        y[idx] = vals
        return y


@register
class RandomK(Codec):
    """Random-k sparsification (Stich et al. 2018, Def. 2.1 "rand_k"); no indices sent.

    The k indices are ``numpy.random.default_rng([seed, counter]).choice(d, k,
    replace=False)``, sorted; ``counter`` counts this codec's encodes, so every step
    draws afresh. The body carries seed, counter, k, d (uint64 each) and the k values,
    unscaled; the receiver regenerates the same indices from the payload alone, so
    decode needs no state and a receiver built with another seed still decodes right.
    Sender and receiver need the same numpy (Generator streams are stable in practice
    but not promised across numpy versions).

    ``decode`` returns the sparse vector; with ``unbiased=True`` it scales the kept
    values by d / k, so that E[decode(encode(x))] = x. Keep ``unbiased=False`` under
    error feedback (the residual must be x - what was sent).
    """

    name = "randk"

    @classmethod
    def check_params(cls, params: Mapping[str, Any], d: int | None = None) -> None:
        _check_k_ratio(params, d)

    def __init__(
        self, k: int | None = None, ratio: float = 0.01, seed: int = 0, unbiased: bool = False
    ) -> None:
        _checked("randk", {"k": k, "ratio": ratio})
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
            raise ValueError(f"randk.seed must be an integer in [0, 2**64) (got {seed!r})")
        self.k = None if k is None else int(k)
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.unbiased = bool(unbiased)
        self.counter = 0

    def __repr__(self) -> str:
        return f"RandomK(k={self.k}, ratio={self.ratio}, seed={self.seed}, unbiased={self.unbiased})"

    def reseed(self, seed: Seed) -> None:
        """Restart the draws: ``counter = 0`` and, for an int, ``self.seed = seed`` (as if built
        with it); for a sequence, ``self.seed`` is the first uint64 of
        ``numpy.random.SeedSequence(seed).generate_state(1, uint64)``. The wire format keeps
        (seed, counter), so a receiver needs no reseed."""
        if isinstance(seed, int | np.integer) and not isinstance(seed, bool):
            if not 0 <= seed < 2**64:
                raise ValueError(f"randk.seed must be an integer in [0, 2**64) (got {seed!r})")
            self.seed = int(seed)
        else:
            rng_from_seed(seed, self.name)  # the same validation as every codec's
            self.seed = int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])
        self.counter = 0

    @staticmethod
    def indices(seed: int, counter: int, d: int, k: int) -> np.ndarray:
        """The sorted int64 indices drawn for (seed, counter): the same on every rank."""
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        if k == d:
            return np.arange(d, dtype=np.int64)
        rng = np.random.default_rng([seed, counter])
        return np.sort(rng.choice(d, size=k, replace=False)).astype(np.int64)

    def encode(self, x: Any) -> np.ndarray:
        header = _check_input(x, self.name)
        xp = array_module(x)
        d = int(x.size)
        k = _resolve_k(self.name, self.k, self.ratio, d)
        counter = self.counter
        self.counter = (self.counter + 1) % 2**64
        idx = self.indices(self.seed, counter, d, k)
        vals = x[xp.asarray(idx)] if xp is not np else x[idx]
        return _assemble(
            self.name,
            header,
            np.array([self.seed, counter, k, d], dtype=_U64),
            to_host(vals).astype(_le(x.dtype), copy=False),
        )

    def decode(
        self, payload: np.ndarray, out: np.ndarray | None = None, *, d: int | None = None, dtype: Any = None
    ) -> np.ndarray:
        confirmed = out is not None or d is not None  # else d is the header's word alone
        dtype, d, body = _body(payload, self.name, out, d, dtype)
        if body.size < 32:
            raise ValueError(
                f"randk: bad length: body is {body.size} bytes, shorter than seed, counter, k, d (32)"
            )
        seed, counter, k = _u64(body, 0), _u64(body, 8), _u64(body, 16)
        if _u64(body, 24) != d:
            raise ValueError(
                f"randk: bad header or body: d = {d} in the header, {_u64(body, 24)} in the body"
            )
        if k > d:
            raise ValueError(f"randk: bad body: k = {k} > d = {d}")
        _check_length(self.name, body, 32 + k * dtype.itemsize, f"k = {k} values")
        vals = np.frombuffer(body, dtype=_le(dtype), count=k, offset=32).astype(dtype)
        if self.unbiased and k:
            with np.errstate(over="ignore"):
                vals = vals * dtype.type(d / k)
        if not np.isfinite(vals).all():
            _finite_result(vals, self.name)
        y = _target(out, dtype, d, self.name, confirmed)
        y.fill(0)
        y[self.indices(seed, counter, d, k)] = vals
        return y


def build_codec(name: str, **params: Any) -> Codec:
    """The registered codec ``name`` built with ``params`` (e.g. ``build_codec("topk", ratio=0.1)``)."""
    try:
        factory = REGISTRY[name]
    except KeyError:
        raise ValueError(f"codec must be one of {sorted(REGISTRY)} (got {name!r})") from None
    try:
        return factory(**params)
    except TypeError as e:
        raise ValueError(f"codec {name!r}: bad parameters {sorted(params)}: {e}") from None
