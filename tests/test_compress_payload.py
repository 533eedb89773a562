"""Payload hardening (issue 16, item 15): every header field is pinned (the check field,
a crc32 of the header, and of the body for the codecs in CHECKSUMMED), decode refuses
what the receiver does not expect and never allocates more than the caller or the body
vouches for; every error is a ValueError."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mpiml.compress import build_codec
from mpiml.compress.base import CHECKSUMMED, CODEC_IDS, HEADER, UNCONFIRMED_D_MAX, seal

PARAMS = {
    "topk": {"ratio": 0.3},
    "randk": {"ratio": 0.3, "seed": 7},
    "qsgd": {"seed": 1},
    "qsgd_fixed": {"seed": 1},
}
NAMES = sorted(CODEC_IDS)
DTYPES = [np.float32, np.float64]


def codec(name: str):  # type: ignore[no-untyped-def]
    return build_codec(name, **PARAMS.get(name, {}))


def payload(name: str, d: int = 301, dtype: type = np.float32, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(d).astype(dtype)
    return codec(name).encode(x)  # type: ignore[no-any-return]


def with_d(p: np.ndarray, name: str, d: int) -> np.ndarray:
    """A consistent crafted payload claiming d coordinates: the header's d, the sparse
    bodies' echo of it, and the check recomputed."""
    q = p.copy()
    q[8:16] = np.frombuffer(struct.pack("<Q", d), np.uint8)
    echo = {"topk": 8, "randk": 24}.get(name)
    if echo is not None:
        q[HEADER.size + echo : HEADER.size + echo + 8] = np.frombuffer(struct.pack("<Q", d), np.uint8)
    if name in ("qsgd", "qsgd_fixed"):  # b = d: one bucket, one norm, as the encoder writes it
        q[HEADER.size + 8 : HEADER.size + 16] = np.frombuffer(struct.pack("<Q", d), np.uint8)
    return seal(q, name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_flipped_dtype_byte_is_refused(name: str, dtype: type) -> None:
    p = payload(name, dtype=dtype)
    for flip in (1, 2, 0xFF):
        q = p.copy()
        q[4] ^= np.uint8(flip)
        with pytest.raises(ValueError, match=name):
            codec(name).decode(q)
        # even resealed (a consistent forgery), the receiver's dtype pins it
        q = seal(q, name)
        other = np.float64 if dtype == np.float32 else np.float32
        with pytest.raises(ValueError, match=f"{name}: bad header: dtype"):
            codec(name).decode(q, dtype=dtype)
        with pytest.raises(ValueError, match=f"{name}: bad header: dtype"):
            codec(name).decode(q, out=np.empty(301, dtype))
        if flip == 1:  # code 0 <-> 1: a valid dtype code, so only the receiver can tell
            with pytest.raises(ValueError, match=r"expects"):
                codec(name).decode(p, dtype=other)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [2**33, 2**40, UNCONFIRMED_D_MAX + 1])
def test_a_huge_claimed_d_is_a_value_error_not_an_allocation(name: str, d: int) -> None:
    q = with_d(payload(name), name, d)
    with pytest.raises(ValueError, match=name) as err:
        codec(name).decode(q)
    assert not isinstance(err.value, MemoryError)
    with pytest.raises(ValueError, match=r"expects d = 301"):
        codec(name).decode(q, d=301)


@pytest.mark.parametrize("name", ["topk", "randk"])
def test_the_receiver_may_allow_a_large_sparse_d(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mpiml.compress import codecs

    monkeypatch.setattr(codecs, "UNCONFIRMED_D_MAX", 1000)  # the rule, at a size a test can hold
    d = 1005
    x = np.zeros(d, np.float32)
    x[[3, d - 1]] = [1.0, -2.0]
    c = build_codec(name, k=2, **({"seed": 1} if name == "randk" else {}))
    p = c.encode(x)
    with pytest.raises(ValueError, match="more than the"):
        c.decode(p)
    assert c.decode(p, d=d).shape == (d,)


@pytest.mark.parametrize("name", NAMES)
def test_truncation_is_a_value_error(name: str) -> None:
    p = payload(name, d=40)
    for n in range(p.size):
        with pytest.raises(ValueError, match=name):
            codec(name).decode(p[:n].copy())


def mutate(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-3 random edits of the body: a bit flip, a random byte, a cut, appended bytes."""
    q = bytearray(p.tobytes())
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(4))
        if op == 0 and len(q) > HEADER.size:
            q[int(rng.integers(HEADER.size, len(q)))] ^= 1 << int(rng.integers(8))
        elif op == 1 and len(q) > HEADER.size:
            q[int(rng.integers(HEADER.size, len(q)))] = int(rng.integers(256))
        elif op == 2:
            del q[int(rng.integers(HEADER.size, len(q) + 1)) :]
        else:
            q += rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
    return np.frombuffer(bytes(q), np.uint8).copy()


def reparsed(name: str, trials: int, seed: int = 5) -> tuple[int, int]:
    """(mutated payloads that decode to a different valid vector, trials that changed the
    bytes at all); every failure must be a ValueError."""
    rng = np.random.default_rng(seed)
    different, changed = 0, 0
    for t in range(trials):
        dtype = DTYPES[t % 2]
        p = payload(name, d=int(rng.integers(1, 200)), dtype=dtype, seed=t)
        y0 = codec(name).decode(p)
        q = mutate(p, rng)
        if q.size == p.size and np.array_equal(q, p):
            continue
        changed += 1
        try:
            y = codec(name).decode(q)
        except ValueError:
            continue
        if y.dtype != y0.dtype or y.shape != y0.shape or not np.array_equal(y, y0):
            different += 1
    return different, changed


@pytest.mark.parametrize("name", sorted(CHECKSUMMED))
def test_no_mutated_body_reparses_where_the_body_is_checked(name: str) -> None:
    different, changed = reparsed(name, 400)
    assert changed > 300
    assert different == 0, f"{name}: {different} of {changed} mutated payloads decoded to another vector"


@pytest.mark.parametrize("name", sorted(set(NAMES) - CHECKSUMMED))
def test_unchecked_bodies_fail_only_with_value_errors(name: str) -> None:
    reparsed(name, 120)  # value bits may change the decode; anything but ValueError fails here
