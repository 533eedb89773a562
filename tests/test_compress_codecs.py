"""Codecs and error feedback: round trips within each codec's stated error, corrupted
payloads (always ValueError or a finite decode), NaN/Inf input, EF conservation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mpiml.compress.base import CHECKSUMMED, HEADER, REGISTRY, Codec
from mpiml.compress.codecs import BF16, FP16, Identity, RandomK, ScaledSign, TopK, build_codec, index_dtype
from mpiml.compress.feedback import ErrorFeedback

BIG = 2**20 + 3
DTYPES = [np.float32, np.float64]

FACTORIES: dict[str, Callable[[], Codec]] = {
    "identity": Identity,
    "fp16": FP16,
    "bf16": BF16,
    "sign": ScaledSign,
    "topk": lambda: TopK(ratio=0.3),
    "randk": lambda: RandomK(ratio=0.3, seed=7),
}


def make_x(d: int, dtype: type, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "zeros":
        return np.zeros(d, dtype=dtype)
    x: np.ndarray = rng.standard_normal(d).astype(dtype)
    if kind == "spike" and d:
        x[rng.integers(d)] = 6.0e4  # huge, yet inside float16's range
    return x


def check_round_trip(name: str, codec: Codec, x: np.ndarray) -> None:
    """Each codec's stated error bound; every assertion here can fail."""
    p = codec.encode(x)
    assert p.dtype == np.uint8 and p.ndim == 1 and p.size >= HEADER.size
    y = codec.decode(p)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.all(np.isfinite(y))
    xd = x.astype(np.float64)
    err = np.abs(y.astype(np.float64) - xd)
    if name == "identity":
        assert np.array_equal(y, x)
    elif name == "fp16":
        assert np.all(err <= 2.0**-11 * np.abs(xd) + 2.0**-25)
    elif name == "bf16":
        assert np.all(err <= 2.0**-8 * (1 + 2.0**-20) * np.abs(xd) + 2.0**-133)
    elif name == "sign":
        s = x.dtype.type(np.float32(np.mean(np.abs(xd))) if x.size else 0.0)
        assert np.array_equal(y, np.where(x < 0, -s, s).astype(x.dtype))
    elif name == "topk":
        kept = y != 0
        k = int(np.frombuffer(p[HEADER.size : HEADER.size + 8].tobytes(), "<u8")[0])
        expect_k = min(max(1, int(np.ceil(0.3 * x.size))), x.size) if x.size else 0
        assert k == expect_k
        # exact where kept, zero elsewhere; kept coordinates of x that are themselves 0 are invisible
        assert np.array_equal(y[kept], x[kept])
        assert np.all(y[~kept] == 0)
        # the kept set is the k largest: every kept |x| >= every dropped |x|
        at = HEADER.size + 16
        idx = np.frombuffer(p[at : at + k * index_dtype(x.size).itemsize].tobytes(), index_dtype(x.size))
        mask = np.zeros(x.size, bool)
        mask[idx.astype(np.int64)] = True
        assert mask.sum() == k
        if 0 < k < x.size:
            assert np.abs(x[mask]).min() >= np.abs(x[~mask]).max()
        assert np.array_equal(y[mask], x[mask])
    elif name == "randk":
        seed, counter, k = np.frombuffer(p[HEADER.size : HEADER.size + 24].tobytes(), "<u8").tolist()
        idx = RandomK.indices(seed, counter, x.size, k)
        assert len(np.unique(idx)) == k
        assert np.array_equal(y[idx], x[idx])
        rest = np.ones(x.size, bool)
        rest[idx] = False
        assert np.all(y[rest] == 0)
    else:  # pragma: no cover
        raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    d=st.sampled_from([0, 1, 7, 300]),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["normal", "zeros", "spike"]),
    seed=st.integers(0, 2**16),
)
@example(d=0, dtype=np.float32, kind="zeros", seed=0)
def test_round_trip(name: str, d: int, dtype: type, kind: str, seed: int) -> None:
    check_round_trip(name, FACTORIES[name](), make_x(d, dtype, kind, seed))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_big(name: str, dtype: type) -> None:
    check_round_trip(name, FACTORIES[name](), make_x(BIG, dtype, "spike", 1))


@given(x=st.lists(st.floats(-1e4, 1e4, width=32), min_size=0, max_size=50))
@settings(max_examples=60, deadline=None)
def test_round_trip_arbitrary_floats(x: list[float]) -> None:
    a = np.array(x, dtype=np.float32)
    for name, f in FACTORIES.items():
        check_round_trip(name, f(), a)


def test_registry_and_build_codec() -> None:
    assert set(FACTORIES) <= set(REGISTRY)
    assert isinstance(build_codec("topk", k=3), TopK)
    assert build_codec("randk", ratio=0.5, seed=3).seed == 3  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="codec must be one of"):
        build_codec("nope")
    with pytest.raises(ValueError, match="topk"):
        build_codec("topk", kk=3)
    with pytest.raises(ValueError, match="topk.ratio"):
        TopK(ratio=0.0)
    with pytest.raises(ValueError, match="randk.k"):
        RandomK(k=-1)


def test_index_width() -> None:
    assert [index_dtype(d).itemsize for d in (0, 1, 256, 257, 65536, 65537, 2**32, 2**32 + 1)] == [
        1, 1, 1, 2, 2, 4, 4, 8,
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_input_is_value_error(name: str, bad: float) -> None:
    x = np.ones(9)
    x[4] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        FACTORIES[name]().encode(x)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_bad_input_dtype_or_shape(name: str) -> None:
    with pytest.raises(ValueError, match="dtype"):
        FACTORIES[name]().encode(np.ones(3, dtype=np.int32))
    with pytest.raises(ValueError, match="flat"):
        FACTORIES[name]().encode(np.ones((2, 2)))


def test_out_of_range_is_value_error() -> None:
    with pytest.raises(ValueError, match="fp16: value out of float16 range"):
        FP16().encode(np.array([1.0, 7e4]))
    with pytest.raises(ValueError, match="bf16: value out of bfloat16 range"):
        BF16().encode(np.array([1.0, 1e300]))
    with pytest.raises(ValueError, match="bf16"):
        BF16().encode(np.array([np.finfo(np.float32).max], dtype=np.float32))
    with pytest.raises(ValueError, match="sign: scale"):
        ScaledSign().encode(np.array([1e300, 1e300]))


def test_bf16_rounds_to_nearest_even() -> None:
    one = np.uint32(0x3F800000)
    u = np.array([one + 0x8000, one + 0x18000, one + 0x8001, one + 0x7FFF], dtype=np.uint32)
    y = BF16().decode(BF16().encode(u.view(np.float32)))
    expect = np.array([one, one + 0x20000, one + 0x10000, one], dtype=np.uint32).view(np.float32)
    assert np.array_equal(y, expect)


def test_sign_zero_is_plus() -> None:
    y = ScaledSign().decode(ScaledSign().encode(np.array([0.0, -0.0, -3.0])))
    assert np.array_equal(y, [1.0, 1.0, -1.0])


def test_randk_unbiased_and_fresh_draws() -> None:
    x = np.arange(1.0, 101.0)
    enc, dec = RandomK(k=10, seed=5), RandomK(k=10, seed=99, unbiased=True)  # receiver's seed is irrelevant
    p1, p2 = enc.encode(x), enc.encode(x)
    y1 = dec.decode(p1)
    assert np.count_nonzero(y1) == 10
    assert np.allclose(y1[y1 != 0], 10 * x[y1 != 0])
    assert not np.array_equal(RandomK(k=10).decode(p1), RandomK(k=10).decode(p2))
    # E[decode] = x with unbiased=True: average over many draws
    acc = np.zeros_like(x)
    for _ in range(2000):
        acc += dec.decode(enc.encode(x))
    assert np.allclose(acc / 2000, x, rtol=0.25)


def test_topk_explicit_k_and_ties() -> None:
    x = np.array([1.0, -5.0, 3.0, 5.0, 0.5])
    y = TopK(k=2).decode(TopK(k=2).encode(x))
    assert np.array_equal(y, [0, -5.0, 0, 5.0, 0])
    assert np.array_equal(TopK(k=99).decode(TopK(k=99).encode(x)), x)
    assert np.array_equal(TopK(k=0).decode(TopK(k=0).encode(x)), np.zeros(5))


# ---------------------------------------------------------------- corrupted payloads


def decode_or_value_error(codec: Codec, p: np.ndarray, d: int, dtype: np.dtype) -> bool:
    """True if decode raised ValueError; else the decode must be finite, of the right kind."""
    try:
        y = codec.decode(p)
    except ValueError:
        return True
    assert y.dtype in (np.float32, np.float64) and y.ndim == 1
    assert np.all(np.isfinite(y))
    return False


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_truncated_and_extended(name: str, dtype: type) -> None:
    codec = FACTORIES[name]()
    p = codec.encode(make_x(37, dtype, "normal", 3))
    for n in range(p.size):
        with pytest.raises(ValueError, match=name):
            codec.decode(p[:n].copy())
    for extra in (1, 7, 8, 100):
        with pytest.raises(ValueError, match=name):
            codec.decode(np.concatenate([p, np.zeros(extra, np.uint8)]))
    with pytest.raises(ValueError, match="payload must be a flat uint8"):
        codec.decode(p.view(np.int8))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_bit_flip(name: str, dtype: type) -> None:
    """Every single-bit flip: ValueError, or (value bits) a different but finite decode."""
    codec = FACTORIES[name]()
    x = make_x(29, dtype, "normal", 4)
    p = codec.encode(x)
    y0 = codec.decode(p)
    for byte in range(p.size):
        for bit in range(8):
            q = p.copy()
            q[byte] ^= np.uint8(1 << bit)
            if byte < HEADER.size or name in CHECKSUMMED:
                # the check field pins every header byte of every codec, and the body of
                # the checksummed ones
                with pytest.raises(ValueError, match=name):
                    codec.decode(q)
            elif not decode_or_value_error(codec, q, x.size, np.dtype(dtype)):
                assert not np.array_equal(codec.decode(q), y0), (byte, bit)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_random_corruption(name: str, data: st.DataObject) -> None:
    codec = FACTORIES[name]()
    d = data.draw(st.sampled_from([0, 1, 7, 300]))
    dtype = data.draw(st.sampled_from(DTYPES))
    p = codec.encode(make_x(d, dtype, "normal", data.draw(st.integers(0, 99))))
    q = bytearray(p.tobytes())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow", "byte"]))
        if op == "flip" and q:
            q[data.draw(st.integers(0, len(q) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "byte" and q:
            q[data.draw(st.integers(0, len(q) - 1))] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del q[data.draw(st.integers(0, len(q))) :]
        else:
            q += bytes(data.draw(st.binary(min_size=1, max_size=16)))
    decode_or_value_error(codec, np.frombuffer(bytes(q), np.uint8).copy(), d, np.dtype(dtype))


def test_wrong_codec_payload() -> None:
    p = Identity().encode(np.ones(4))
    with pytest.raises(ValueError, match="fp16: bad header: payload is from codec 'identity'"):
        FP16().decode(p)


# ---------------------------------------------------------------- error feedback


@pytest.mark.parametrize("name", ["topk", "sign", "randk"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_error_feedback_conserves_the_sum(name: str, dtype: type) -> None:
    ef = ErrorFeedback(FACTORIES[name]())
    rng = np.random.default_rng(11)
    d, steps = 513, 40
    total_in = np.zeros(d)
    total_out = np.zeros(d)
    for _ in range(steps):
        x: np.ndarray = rng.standard_normal(d).astype(dtype)
        total_in += x
        total_out += ef.decode(ef.encode(x))
    assert ef.residual is not None and ef.residual.dtype == dtype
    gap = np.abs(total_out + ef.residual - total_in).max()
    tol = 1e-3 if dtype == np.float32 else 1e-10
    assert gap < tol, gap
    # and the residual is not trivially zero: the codec did drop something
    assert np.abs(ef.residual).max() > 1e-3


def residual(ef: ErrorFeedback) -> Any:
    """ef.residual, unnarrowed (mypy would keep `ef.residual is None` across encode calls)."""
    return ef.residual


def test_error_feedback_state() -> None:
    ef = ErrorFeedback(TopK(k=1))
    assert ef.residual is None
    ef.encode(np.array([3.0, 1.0, 2.0]))
    assert np.array_equal(residual(ef), [0.0, 1.0, 2.0])
    p = ef.encode(np.array([0.0, 0.0, 0.0]))
    assert np.array_equal(ef.decode(p), [0.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="reset"):
        ef.encode(np.zeros(4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        ef.encode(np.array([np.nan, 0.0, 0.0]))
    assert np.array_equal(residual(ef), [0.0, 1.0, 0.0])  # untouched by the failed step
    ef.reset()
    assert residual(ef) is None
    ef.encode(np.zeros(4, dtype=np.float32))
    assert residual(ef).dtype == np.float32
    with pytest.raises(ValueError, match="ErrorFeedback.codec"):
        ErrorFeedback("topk")  # type: ignore[arg-type]
