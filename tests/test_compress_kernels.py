"""The numba QSGD kernels against the numpy reference: the same payload bytes, the same
decodes, the same verdict (ValueError or not) on corrupted payloads."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpiml.compress import _kernels
from mpiml.compress.qsgd import QSGD, QSGDFixed

pytestmark = pytest.mark.skipif("numba" not in _kernels.available(), reason="numba does not import here")

CODECS = [QSGD, QSGDFixed]


@pytest.fixture(autouse=True)
def _restore_kernels() -> Iterator[None]:
    prev = _kernels.KERNELS
    yield
    _kernels.set_kernels(prev)


def both(fn):  # type: ignore[no-untyped-def]
    """fn() under each kernel set: {"numba": result or the ValueError, "numpy": ...}."""
    out = {}
    for k in ("numba", "numpy"):
        _kernels.set_kernels(k)
        try:
            out[k] = fn()
        except ValueError as e:
            out[k] = e
    return out


def test_default_is_numba_and_switch_checks() -> None:
    assert _kernels.available() == ["numba", "numpy"]
    with pytest.raises(ValueError, match="kernels must be one of"):
        _kernels.set_kernels("fortran")


_elem = st.floats(-(2.0**60), 2.0**60, allow_nan=False, allow_infinity=False, width=32)


@pytest.mark.parametrize("cls", CODECS)
@settings(max_examples=80, deadline=None)
@given(
    d=st.integers(0, 300),
    dtype=st.sampled_from([np.float32, np.float64]),
    bucket=st.sampled_from([0, 1, 3, 8, 64]),
    s=st.sampled_from([None, 1, 2, 5, 255, 2**16 + 1, 2**32 - 1]),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_same_bytes_and_decodes(
    cls: type, d: int, dtype: type, bucket: int, s: int | None, seed: int, data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(["normal", "arbitrary", "sparse", "zeros"]))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal(d).astype(dtype) * dtype(10.0 ** rng.integers(-20, 20))
    elif kind == "arbitrary":
        x = data.draw(arrays(dtype, d, elements=_elem))
    elif kind == "sparse":
        x = np.where(rng.random(d) < 0.05, rng.standard_normal(d), 0.0).astype(dtype)
    else:
        x = np.zeros(d, dtype)
    r = both(lambda: cls(s=s, bucket=bucket, seed=[seed, 1]).encode(x))
    np.testing.assert_array_equal(r["numba"], r["numpy"])
    y = both(lambda: cls().decode(r["numpy"]))
    np.testing.assert_array_equal(y["numba"], y["numpy"])
    assert y["numba"].dtype == np.dtype(dtype)


@pytest.mark.parametrize("cls", CODECS)
def test_same_bytes_large(cls: type) -> None:
    d = 3 * 2**16 + 12345  # several uniform chunks, the last one odd
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    for bucket in (0, 1000):
        r = both(lambda: cls(bucket=bucket, seed=7).encode(x))  # noqa: B023
        np.testing.assert_array_equal(r["numba"], r["numpy"])
        y = both(lambda: cls().decode(r["numba"]))  # noqa: B023
        np.testing.assert_array_equal(y["numba"], y["numpy"])


@pytest.mark.parametrize("cls", CODECS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_same_verdict_on_corruption(cls: type, data: st.DataObject) -> None:
    d = data.draw(st.sampled_from([0, 1, 7, 100]))
    bucket = data.draw(st.sampled_from([0, 3]))
    x = np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(d).astype(np.float32)
    q = bytearray(cls(bucket=bucket, s=data.draw(st.sampled_from([None, 3])), seed=1).encode(x).tobytes())
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow", "byte"]))
        if op == "flip" and len(q) > 32:
            q[data.draw(st.integers(32, len(q) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "byte" and len(q) > 32:
            q[data.draw(st.integers(32, len(q) - 1))] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del q[data.draw(st.integers(32, len(q))) :]
        else:
            q += bytes(data.draw(st.binary(min_size=1, max_size=9)))
    p = np.frombuffer(bytes(q), np.uint8)
    y = both(lambda: cls().decode(p))
    if isinstance(y["numpy"], ValueError):
        assert isinstance(y["numba"], ValueError), y["numpy"]
        assert any(w in str(y["numba"]) for w in ("header", "length", "code")), str(y["numba"])
    else:
        assert not isinstance(y["numba"], ValueError), y["numba"]
        np.testing.assert_array_equal(y["numba"], y["numpy"])


def test_env_forces_numpy() -> None:
    import subprocess
    import sys

    code = "import mpiml.compress as c; print(c.KERNELS)"
    for env, want in (("numpy", "numpy"), ("auto", "numba"), ("", "numba")):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={"MPIML_COMPRESS_KERNELS": env, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == want


def test_a_numba_failure_at_call_time_falls_back_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kernel that fails inside numba (here: after drawing its first uniforms, as a
    compile error on the first chunk would) makes the encode fall back to numpy from the
    same random state: the payload is the numpy reference's; one line on stderr."""
    import types

    from mpiml.compress import _numba_kernels, _qsgd_numpy

    def broken(*args: object) -> None:
        rng = args[-1]
        assert isinstance(rng, np.random.Generator)
        rng.bit_generator.random_raw(7)  # the draw moved on before the failure
        raise RuntimeError("LLVM ERROR: pretend compile failure\nsecond line")

    fake = types.ModuleType("fake_numba_kernels")
    fake.gamma_encode = broken  # type: ignore[attr-defined]
    fake.gamma_decode = _numba_kernels.gamma_decode  # type: ignore[attr-defined]
    monkeypatch.setitem(_kernels._MODULES, "numba", fake)
    monkeypatch.setattr(_kernels, "_chosen", "numba")
    x = np.random.default_rng(3).standard_normal(500).astype(np.float32)
    p = QSGD(seed=11).encode(x)
    assert _kernels.KERNELS == "numpy"
    _kernels.set_kernels("numpy")
    monkeypatch.setitem(_kernels._MODULES, "numba", _numba_kernels)
    np.testing.assert_array_equal(p, QSGD(seed=11).encode(x))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretend compile failure" in err[0] and "numpy kernels" in err[0], err
    assert _qsgd_numpy is _kernels._MODULES["numpy"]
