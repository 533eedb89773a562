"""Fuzzing the job schema: whatever a job holds, the checks before training answer with
one ConfigError line that names a key, never with another exception.

Jobs are generated for every key of :data:`mpiml.config.SCHEMA` (wrong types, extreme
magnitudes, NaN and infinities, empty and huge lists, unicode and control characters,
unknown keys and sections), given both as ``--set`` overrides (the TOML path a user
takes) and as parsed job tables, and run through everything that is checked before a
collective without touching the data: :func:`mpiml.config.load_config`,
:func:`mpiml.run.setup.job_layout` on 1 to 4 ranks and the memory estimate
(:func:`mpiml.budget.check_memory`). Seeded (``derandomize``): a failure repeats.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpiml.budget import DIGITS, DataShape, check_memory
from mpiml.config import SCHEMA, default_job_text, load_config, validate
from mpiml.errors import ConfigError
from mpiml.run.setup import job_layout

KEYS = [(sec, key) for sec, fields in SCHEMA.items() for key in fields]
NAMES = {f"{sec}.{key}" for sec, key in KEYS}

HUGE = [2**31, 2**32, 2**63 - 1, 2**63, 2**64 + 5, 10**30, -(2**63), -1, 0]
FLOATS = [math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324, 0.0, -0.0, 1e-300]

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_value = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(FLOATS),
    st.booleans(),
    _text,
    st.sampled_from(["", "\x00", "a/b", "..", "x" * 300, "é" * 150, "ring", "rign", "two_racks", "t.toml"]),
    st.lists(st.integers(-(2**64), 2**64), max_size=5),
    st.lists(st.sampled_from([1, 8, 2**40, 10**11, 0, -1]), max_size=4),
    st.just([1] * 200),
    st.lists(st.booleans() | _text | st.floats(), max_size=3),
    st.dictionaries(_text, st.integers(), max_size=2),
)


def _valid(sec: str, key: str) -> list[Any]:
    """Values the key accepts (its default, and every choice of a name), so that fuzzed
    jobs get past their first key and reach the rules across keys and the layout."""
    from mpiml.algorithms import REGISTRY
    from mpiml.compress import REGISTRY as CODECS
    from mpiml.optim import OPTIMIZERS

    names = {
        "algorithm.name": list(REGISTRY),
        "compression.codec": ["auto", "none", *CODECS],
        "optimizer.name": list(OPTIMIZERS),
        "model.name": ["softmax", "mlp", "linear", "timed"],
        "data.name": ["digits", "synthetic", "hdf5"],
        "data.partition": ["iid", "dirichlet"],
        "algorithm.topology": ["ring", "torus", "complete", "two_racks", "one_peer_exponential"],
    }
    return [SCHEMA[sec][key].default, *names.get(f"{sec}.{key}", [])]


def _job() -> Any:
    known = st.sampled_from(KEYS).flatmap(
        lambda sk: st.tuples(st.just(sk), st.one_of(_value, st.sampled_from(_valid(*sk))))
    )
    unknown = st.tuples(st.tuples(st.sampled_from([*SCHEMA, "nosuch"]), _text), _value)
    return st.lists(st.one_of(known, known, known, unknown), min_size=1, max_size=6)


def _toml(v: Any) -> str:
    """``v`` as a TOML value (what a user writes after ``--set key=``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {_toml(x)}" for k, x in v.items()) + "}"
        )
    return str(v)


def _checked(make: Any) -> None:
    """Run the checks; the only exception allowed is one ConfigError line naming a key."""
    try:
        cfg = make()
        for n in (1, 2, 3, 4):
            job_layout(cfg, n)
        check_memory(cfg, DIGITS if cfg.data.name == "digits" else DataShape(4096, 32, 0), 4, 64 * 2**30, 4)
    except ConfigError as exc:
        text = str(exc)
        assert text and "\n" not in text and "\r" not in text, f"not one line: {text!r}"
        assert len(text) < 600, f"a message of {len(text)} characters"
        named = set(re.findall(r"\b([a-z_]+\.[a-z_0-9]+)\b", text)) & NAMES
        assert named or "unknown key" in text or "unknown section" in text or "--set" in text, (
            f"names no key: {text!r}"
        )


@settings(max_examples=400, deadline=None, derandomize=True)
@given(job=_job())
def test_fuzz_set_overrides(job: list[tuple[tuple[str, str], Any]]) -> None:
    """``--set section.key=<TOML value>`` for any key and value."""
    sets = [f"{sec}.{key}={_toml(v)}" for (sec, key), v in job]
    _checked(lambda: load_config(None, sets))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(job=_job())
def test_fuzz_job_tables(job: list[tuple[tuple[str, str], Any]]) -> None:
    """A parsed job table (what a TOML file or a checkpoint's JSON gives), any values,
    including ones TOML cannot spell (integers past 64 bits)."""
    raw = tomllib.loads(default_job_text())
    for (sec, key), v in job:
        raw.setdefault(sec, {})
        if isinstance(raw[sec], dict):
            raw[sec][key] = v
    _checked(lambda: validate(raw))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    text=st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda a, b, c: a + b + c,
            st.sampled_from(["run.", "model.hidden", "algorithm.", "x.y.", "", ".", "data.path"]),
            st.text(max_size=6),
            st.sampled_from(["=1", "=[", "=", "", "=nan", "=[1,", '="', "==1"]),
        ),
    )
)
def test_fuzz_raw_set_text(text: str) -> None:
    """Whatever follows ``--set``: no dot, several dots, no value, unbalanced brackets."""
    _checked(lambda: load_config(None, [text]))


@pytest.mark.parametrize(
    "sets",
    [
        ["run.name=a\x00b"],
        ["model.hidden=[100000000000]"],
        ["optimizer.lr=1e300"],
        ["run.seed=18446744073709551621"],
        ["data.name=synthetic", "model.name=linear", "data.features=1099511627776"],
        ["algorithm.name=gossip", "algorithm.topology=rign"],
        ["data.partition=dirichlet", "data.alpha=nan"],
    ],
)
def test_known_bad_jobs_are_one_line(sets: list[str]) -> None:
    """Cases from the bad-job campaign (#16.11): each is refused before training."""
    with pytest.raises(ConfigError):
        cfg = load_config(None, sets)
        job_layout(cfg, 4)
        check_memory(
            cfg, DIGITS if cfg.data.name == "digits" else DataShape(4096, 1099511627776, 0), 4, 64 * 2**30, 4
        )
