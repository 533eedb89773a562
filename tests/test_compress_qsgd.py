"""QSGD codec (mpiml.compress.qsgd): quantization eqs. (2)-(3), gamma layout, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpiml.compress.base import HEADER, REGISTRY
from mpiml.compress.qsgd import QSGD, QSGDFixed, bits_per_coordinate

CODECS = [QSGD, QSGDFixed]


def _bound_ok(x: np.ndarray, y: np.ndarray, codec: QSGD | QSGDFixed) -> bool:
    """Every coordinate's error is at most ||bucket||_2 / s (plus float rounding)."""
    d = x.size
    if d == 0:
        return y.size == 0
    b = codec._blen(d)
    x64 = x.astype(np.float64)
    norms = np.array([np.linalg.norm(x64[i : i + b]) for i in range(0, d, b)])
    bound = np.repeat(norms, b)[:d] / codec.levels(d)
    tol = bound * 1e-5 + np.abs(x64) * 1e-6 + 1e-300
    return bool(np.all(np.abs(y.astype(np.float64) - x64) <= bound + tol))


def test_registered() -> None:
    assert REGISTRY["qsgd"] is QSGD and REGISTRY["qsgd_fixed"] is QSGDFixed


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("levels", "s"),
    [([3, 4], 5), ([1, 2, 2], 3), ([2, 3, 6], 7), ([1] * 16, 4), ([0, 5, 0, 0], 5), ([4, 0, 3, 0, 0, 0], 5)],
)
def test_round_trip_exact_on_grid(cls: type, dtype: type, levels: list[int], s: int) -> None:
    # ||levels|| = s exactly, so v = 2^k sgn * levels has norm 2^k s and v_i s / ||v|| = levels_i exactly.
    rng = np.random.default_rng(5)
    z = np.array(levels, np.float64)
    sign = rng.choice([-1.0, 1.0], size=z.size)
    for k in (-3, 0, 7):
        v = (np.ldexp(z, k) * sign).astype(dtype)
        c = cls(s=s, seed=1)
        for _ in range(3):
            y = c.decode(c.encode(v))
            assert y.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(y, v)


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bucket", [0, 3, 64])
def test_edge_vectors(cls: type, dtype: type, bucket: int) -> None:
    c = cls(bucket=bucket, seed=2)
    for x in [np.zeros(0), np.zeros(1), np.zeros(257), np.array([5.0]), np.array([-2.5, 0.0, 0.0])]:
        x = x.astype(dtype)
        y = c.decode(c.encode(x))
        assert y.dtype == np.dtype(dtype) and y.shape == x.shape
        assert _bound_ok(x, y, c)
    huge: np.ndarray = np.zeros(257, dtype)
    huge[100] = 1e30
    huge[:5] = 1e-3
    y = c.decode(c.encode(huge))
    assert _bound_ok(huge, y, c)
    assert y[100] == pytest.approx(1e30, rel=1e-6)


_finite = st.floats(-(2.0**100), 2.0**100, allow_nan=False, allow_infinity=False, width=32)


@pytest.mark.parametrize("cls", CODECS)
@settings(max_examples=40, deadline=None)
@given(
    d=st.sampled_from([0, 1, 7, 257]),
    dtype=st.sampled_from([np.float32, np.float64]),
    bucket=st.sampled_from([0, 1, 5, 100]),
    s=st.sampled_from([None, 1, 3, 255]),
    data=st.data(),
)
def test_error_bound_hypothesis(
    cls: type, d: int, dtype: type, bucket: int, s: int | None, data: st.DataObject
) -> None:
    x: np.ndarray = data.draw(arrays(dtype, d, elements=_finite))
    c = cls(s=s, bucket=bucket, seed=data.draw(st.integers(0, 2**31)))
    y = c.decode(c.encode(x))
    assert y.dtype == np.dtype(dtype) and y.shape == (d,)
    assert _bound_ok(x, y, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_bound_large(dtype: type) -> None:
    d = 2**20 + 3
    x: np.ndarray = np.random.default_rng(0).standard_normal(d).astype(dtype)
    for c in (QSGD(seed=1), QSGD(bucket=512, seed=1), QSGDFixed(seed=1)):
        assert _bound_ok(x, c.decode(c.encode(x)), c)


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize(("d", "s", "bucket"), [(7, None, 0), (50, 2, 0), (64, 4, 16), (300, 1, 0)])
def test_unbiased_and_variance(cls: type, d: int, s: int | None, bucket: int) -> None:
    rng = np.random.default_rng(d)
    v = rng.standard_normal(d)
    v[0] = 3.0
    c = cls(s=s, bucket=bucket, seed=11)
    n = 4000
    draws = np.stack([c.decode(c.encode(v)) for _ in range(n)])
    # Per coordinate, Q_i - v_i is a scaled Bernoulli: variance <= (||b|| / s)^2 / 4.
    # The mean of n draws is then within 5 sigma = 5 ||b|| / (2 s sqrt(n)).
    b = c._blen(d)
    sv = c.levels(d)
    bn = np.repeat([np.linalg.norm(v[i : i + b]) for i in range(0, d, b)], b)[:d]
    sigma = bn / (2 * sv * math.sqrt(n))
    assert np.all(np.abs(draws.mean(0) - v) <= 5 * sigma + 1e-12)
    # QSGD Lemma 3.1: E||Q(v) - v||^2 <= min(n_b / s^2, sqrt(n_b) / s) ||v||^2 per bucket;
    # the empirical mean of n draws is allowed a 10 % excess for sampling noise.
    bound = sum(
        min(len(v[i : i + b]) / sv**2, math.sqrt(len(v[i : i + b])) / sv) * np.sum(v[i : i + b] ** 2)
        for i in range(0, d, b)
    )
    err = np.mean(np.sum((draws - v) ** 2, axis=1))
    assert err <= 1.1 * bound


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(cls: type, bad: float) -> None:
    x = np.ones(9, np.float32)
    x[4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        cls().encode(x)


def test_norm_out_of_float32_range() -> None:
    with pytest.raises(ValueError, match="float32"):
        QSGD().encode(np.full(4, 1e300))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        QSGD(s=0)
    with pytest.raises(ValueError):
        QSGD(bucket=-1)
    with pytest.raises(ValueError):
        QSGD().encode(np.ones((2, 2)))
    with pytest.raises(ValueError):
        QSGD().encode(np.ones(3, np.int64))


def _payload(cls: type, bucket: int = 0) -> tuple[np.ndarray, np.ndarray, type]:
    x = np.random.default_rng(3).standard_normal(97).astype(np.float32)
    p = cls(bucket=bucket, seed=4).encode(x)
    return p, cls(bucket=bucket).decode(p), cls


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("bucket", [0, 10])
def test_truncated(cls: type, bucket: int) -> None:
    p, _, _ = _payload(cls, bucket)
    for k in range(p.size):
        with pytest.raises(ValueError, match="header|length|code"):
            cls(bucket=bucket).decode(p[:k].copy())


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("extra", [b"\x00", b"\x01", b"\xff\x00", bytes(9)])
def test_extended(cls: type, extra: bytes) -> None:
    p, _, _ = _payload(cls)
    q = np.concatenate([p, np.frombuffer(extra, np.uint8)])
    with pytest.raises(ValueError, match="length|code|check"):
        cls().decode(q)


@pytest.mark.parametrize("cls", CODECS)
@pytest.mark.parametrize("bucket", [0, 10])
def test_bit_flips(cls: type, bucket: int) -> None:
    p, y0, _ = _payload(cls, bucket)
    codec = cls(bucket=bucket)
    for bit in range(8 * p.size):
        q = p.copy()
        q[bit // 8] ^= np.uint8(1 << (bit % 8))
        try:
            y = codec.decode(q)
        except ValueError as e:
            assert any(w in str(e) for w in ("header", "length", "code")), str(e)
            continue
        assert y.dtype != y0.dtype or y.shape != y0.shape or not np.array_equal(y, y0), (
            f"bit {bit} undetected"
        )


@pytest.mark.parametrize("cls", CODECS)
def test_wrong_codec_and_types(cls: type) -> None:
    other = QSGDFixed if cls is QSGD else QSGD
    p = other().encode(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="header"):
        cls().decode(p)
    with pytest.raises(ValueError):
        cls().decode(p.astype(np.int16))


def test_bits_per_coordinate_gaussian() -> None:
    d = 10**6
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    gamma = bits_per_coordinate(QSGD(seed=1).encode(x), d)
    fixed = bits_per_coordinate(QSGDFixed(seed=1).encode(x), d)
    assert gamma < 3.0
    assert fixed > gamma
    assert fixed == pytest.approx(1 + math.ceil(math.log2(1000 + 1)), abs=1e-3)
    with pytest.raises(ValueError):
        bits_per_coordinate(np.zeros(16, np.uint8), 0)


def test_level_costs() -> None:
    # Level z costs 2 floor(log2(z + 1)) + 1 gamma bits, plus one sign bit when z > 0;
    # x = (1, 0, ..., 0) with s = z puts coordinate 0 on level z, the 7 others on level 0 (1 bit each).
    for z in range(0, 40):
        x = np.zeros(8)
        x[0] = 1.0 if z else 0.0
        p = QSGD(s=max(z, 1)).encode(x)
        nbits = 2 * int(math.floor(math.log2(z + 1))) + 1 + (z > 0) + 7
        assert p.size == HEADER.size + 16 + 4 + math.ceil(nbits / 8)  # header, s and b, the norm, the bits


def test_reserved_header_bytes() -> None:
    p = QSGD().encode(np.ones(4, np.float32))
    p[6] = 1
    with pytest.raises(ValueError, match="header"):
        QSGD().decode(p)


def test_rng_state_advances() -> None:
    x = np.random.default_rng(0).standard_normal(100)
    c = QSGD(seed=0)
    assert not np.array_equal(c.encode(x), c.encode(x))
    assert np.array_equal(QSGD(seed=9).encode(x), QSGD(seed=9).encode(x))
