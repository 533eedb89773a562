"""Codec parameters are checked by the codec's own rules at job-check time (issue 16,
item 11): one line naming the key and the value, before training; the codec's
constructor asks the same rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpiml.algorithms.compression import check_codec_for_size, codec_from_config
from mpiml.compress import REGISTRY, build_codec
from mpiml.config import load_config
from mpiml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["compression.codec=qsgd", "compression.s=4294967296"],
            "compression.s must be an integer in 1..2**32-1 (got 4294967296)",
        ),
        (
            ["compression.codec=qsgd_fixed", "compression.s=4294967296"],
            "compression.s must be an integer in 1..2**32-1",
        ),
        (
            ["algorithm.name=qsgd", "compression.s=18446744073709551615"],
            "compression.s must be an integer in 1..2**32-1",
        ),
    ],
)
def test_bad_codec_parameters_are_one_config_error(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algorithm.name=sgd", *sets] if "algorithm.name=qsgd" not in sets else sets)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_largest_s_is_accepted_and_builds() -> None:
    cfg = load_config(None, ["algorithm.name=sgd", "compression.codec=qsgd", "compression.s=4294967295"])
    codec = codec_from_config(cfg)
    assert codec is not None and codec.s == 2**32 - 1  # type: ignore[attr-defined]


def test_the_constructor_asks_the_same_rules() -> None:
    with pytest.raises(ValueError, match=r"qsgd: s must be an integer in 1\.\.2\*\*32-1 \(got 4294967296\)"):
        build_codec("qsgd", s=2**32)
    with pytest.raises(ValueError, match=r"topk\.k must be an integer >= 0 \(got -3\)"):
        build_codec("topk", k=-3)
    for name in REGISTRY:  # every codec has the classmethod, and accepts its defaults
        REGISTRY[name].check_params({}, 10)  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", ["topk", "randk"])
def test_k_larger_than_the_model_is_refused_where_d_is_known(codec: str) -> None:
    cfg = load_config(None, ["algorithm.name=sgd", f"compression.codec={codec}", "compression.k=100000"])
    with pytest.raises(
        ConfigError, match=r"compression\.k must be at most the model's 2410 coordinates \(got 100000"
    ):
        check_codec_for_size(cfg, 2410)
    check_codec_for_size(cfg, 100000)  # k = d: allowed
    plain = load_config(None, ["algorithm.name=sgd"])
    check_codec_for_size(plain, 1)  # uncompressed: nothing to check


def test_cli_prints_one_line_before_training(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "mpiml.cli", "train", "--out", str(tmp_path)]
    cmd += [
        "--set",
        "algorithm.name=sgd",
        "--set",
        "compression.codec=qsgd",
        "--set",
        "compression.s=4294967296",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert (
        len(lines) == 1 and "compression.s must be an integer in 1..2**32-1 (got 4294967296)" in lines[0]
    ), res.stderr
    assert "Traceback" not in res.stderr and "step" not in res.stdout


def test_cli_refuses_k_larger_than_the_model_before_training(tmp_path: Path) -> None:
    """The driver asks the codec's size rules once the model is built (prepare())."""
    cmd = [sys.executable, "-m", "mpiml.cli", "train", "--out", str(tmp_path), "--set", "algorithm.name=sgd"]
    cmd += ["--set", "compression.codec=topk", "--set", "compression.k=100000", "--set", "run.steps=2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("mpiml: note:")]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and "compression.k must be at most the model's" in lines[0], res.stderr
    assert not any(ln.startswith("step") for ln in res.stdout.splitlines()), res.stdout  # nothing trained
