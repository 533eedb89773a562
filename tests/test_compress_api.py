"""The codec contract the compressed collectives rely on: decode(payload, out=...) into a
caller's buffer from a slice of a larger receive buffer, reseed(seed) reproducing a
stream, and QSGD's s and b travelling in the payload."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from mpiml.compress import ErrorFeedback, build_codec
from mpiml.compress.base import HEADER, Codec, seal
from mpiml.compress.codecs import RandomK
from mpiml.compress.qsgd import QSGD, QSGDFixed

FACTORIES: dict[str, Callable[[], Codec]] = {
    "identity": lambda: build_codec("identity"),
    "fp16": lambda: build_codec("fp16"),
    "bf16": lambda: build_codec("bf16"),
    "sign": lambda: build_codec("sign"),
    "topk": lambda: build_codec("topk", ratio=0.3),
    "randk": lambda: build_codec("randk", ratio=0.3, seed=7),
    "qsgd": lambda: build_codec("qsgd", seed=3),
    "qsgd_bucket": lambda: build_codec("qsgd", bucket=16, seed=3),
    "qsgd_fixed": lambda: build_codec("qsgd_fixed", seed=3),
    "ef_topk": lambda: ErrorFeedback(build_codec("topk", ratio=0.3)),
}
RANDOM = ("randk", "qsgd", "qsgd_bucket", "qsgd_fixed")


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [0, 1, 13, 1000])
def test_decode_into_out_from_a_slice(name: str, dtype: type, d: int) -> None:
    x = np.random.default_rng(d).standard_normal(d).astype(dtype)
    codec = FACTORIES[name]()
    p = codec.encode(x)
    expect = codec.decode(p)
    # the payload lives at an odd offset inside a larger receive buffer
    buf = np.full(p.size + 11, 0xAB, np.uint8)
    buf[5 : 5 + p.size] = p
    view = buf[5 : 5 + p.size]
    out = np.full(d, np.nan, dtype)
    y = codec.decode(view, out=out)
    assert y is out
    np.testing.assert_array_equal(out, expect)
    np.testing.assert_array_equal(codec.decode(view), expect)  # and without out
    assert np.all(buf[:5] == 0xAB) and np.all(buf[5 + p.size :] == 0xAB)  # read, never written


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_decode_out_checked(name: str) -> None:
    codec = FACTORIES[name]()
    p = codec.encode(np.ones(8, np.float32))
    for bad in (np.empty(8, np.float64), np.empty(7, np.float32), np.empty((2, 4), np.float32), [0.0] * 8):
        with pytest.raises(ValueError, match="out"):
            codec.decode(p, out=bad)  # type: ignore[arg-type]
    ro = np.empty(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        codec.decode(p, out=ro)
    with pytest.raises(ValueError, match="contiguous"):
        codec.decode(np.repeat(p, 2)[::2])


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_reseed_reproduces_the_stream(name: str) -> None:
    x = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    a, b = FACTORIES[name](), FACTORIES[name]()
    a.encode(x)  # advance a's stream; reseed must forget that
    if isinstance(a, ErrorFeedback):
        a.reset()  # (the residual is not the random stream: reseed keeps it)
    a.reseed([12, 3, 40])
    b.reseed([12, 3, 40])
    pa, pb = a.encode(x), b.encode(x)
    np.testing.assert_array_equal(pa, pb)
    if isinstance(a, ErrorFeedback):
        a.reset()
    a.reseed([12, 3, 41])
    pc = a.encode(x)
    if name in RANDOM:
        assert not np.array_equal(pa, pc)
    else:
        np.testing.assert_array_equal(pa, pc)  # deterministic codecs ignore the seed


@pytest.mark.parametrize("name", ["qsgd", "qsgd_fixed"])
def test_reseed_int_is_construction(name: str) -> None:
    x = np.random.default_rng(1).standard_normal(300)
    c = build_codec(name, seed=5)
    c.encode(x)
    c.reseed(9)
    np.testing.assert_array_equal(c.encode(x), build_codec(name, seed=9).encode(x))


def test_randk_reseed() -> None:
    x = np.arange(1.0, 101.0)
    c = RandomK(k=10, seed=5)
    c.encode(x)
    c.reseed(5)
    assert c.counter == 0
    np.testing.assert_array_equal(c.encode(x), RandomK(k=10, seed=5).encode(x))
    c.reseed([1, 2, 3])
    seed = int(np.random.SeedSequence([1, 2, 3]).generate_state(1, np.uint64)[0])
    assert (c.seed, c.counter) == (seed, 0)
    p = c.encode(x)
    assert np.frombuffer(p[HEADER.size : HEADER.size + 16].tobytes(), "<u8").tolist() == [seed, 0]
    # any RandomK decodes it: the indices come from the payload
    np.testing.assert_array_equal(RandomK(k=10).decode(p), c.decode(p))


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("seed", [-1, "x", 1.5, True, [1, -2]])
def test_reseed_bad_seed(name: str, seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        FACTORIES[name]().reseed(seed)  # type: ignore[arg-type]


def test_error_feedback_delegates() -> None:
    ef = ErrorFeedback(QSGD(seed=1))
    x = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    ef.reseed([1, 2])
    p = ef.encode(x)
    q = QSGD()
    q.reseed([1, 2])
    np.testing.assert_array_equal(p, q.encode(x))  # first step: e = 0, so the same payload
    out = np.empty(64, np.float32)
    assert ef.decode(p, out=out) is out
    np.testing.assert_allclose(ef.residual, x - out)


# ---------------------------------------------------------------- s and b on the wire


@pytest.mark.parametrize("cls", [QSGD, QSGDFixed])
@pytest.mark.parametrize(("s", "bucket"), [(None, 0), (3, 0), (None, 10), (7, 5), (2**32 - 1, 0)])
def test_s_and_b_on_the_wire(cls: type, s: int | None, bucket: int) -> None:
    x = np.random.default_rng(4).standard_normal(97).astype(np.float32)
    enc = cls(s=s, bucket=bucket, seed=2)
    p = enc.encode(x)
    s_wire, b_wire = np.frombuffer(p[HEADER.size : HEADER.size + 16].tobytes(), "<u8").tolist()
    assert s_wire == enc.levels(97)
    assert b_wire == (bucket or 97)
    # a decoder built with other s and bucket decodes it the same
    np.testing.assert_array_equal(cls(s=2, bucket=3).decode(p), enc.decode(p))


@pytest.mark.parametrize("cls", [QSGD, QSGDFixed])
def test_bad_s_and_b_fields(cls: type) -> None:
    p = cls(bucket=10, seed=1).encode(np.random.default_rng(5).standard_normal(97).astype(np.float32))

    def with_fields(s: int, b: int) -> np.ndarray:
        q = p.copy()
        q[HEADER.size : HEADER.size + 16] = np.frombuffer(np.array([s, b], "<u8").tobytes(), np.uint8)
        return seal(q, cls.name)  # a consistent payload: the check recomputed

    for s, b, field in [(0, 10, "field s"), (2**32, 10, "field s"), (10, 0, "field b"), (10, 98, "field b")]:
        with pytest.raises(ValueError, match=field):
            cls().decode(with_fields(s, b))
    with pytest.raises(ValueError, match="s must be an integer"):
        cls(s=2**32)
