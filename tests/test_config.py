"""Job validation: every bad field is named with what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpiml.config import SCHEMA, load_config, parse_set
from mpiml.errors import ConfigError


def test_default_job_is_valid_and_complete() -> None:
    cfg = load_config(None)
    for sec, fields in SCHEMA.items():
        assert set(cfg[sec]) == set(fields)
    assert cfg.run.steps > 0 and cfg.algorithm.name == "dasgd"


def test_set_overrides_parse_toml_values_and_bare_words() -> None:
    cfg = load_config(None, ["run.steps=7", "model.hidden=[8, 4]", "run.name=my-run", "optimizer.lr=0.5"])
    assert (
        cfg.run.steps == 7
        and cfg.model.hidden == [8, 4]
        and cfg.run.name == "my-run"
        and cfg.optimizer.lr == 0.5
    )
    assert parse_set(["data.standardize=false"]) == {"data": {"standardize": False}}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run.steps=0"], r"run.steps must be >= 1 \(got 0\)"),
        (["optimizer.lr=-0.1"], r"optimizer.lr must be > 0.0 \(got -0.1\)"),
        (["run.steps=1.5"], r"run.steps must be an integer"),
        (["run.steps=true"], r"run.steps must be an integer"),
        (["model.hidden=[8, 'a']"], r"model.hidden must be a list of integers"),
        (["model.hidden=[0]"], r"model.hidden must be a list of at most 64 widths, each in \[1, "),
        (["optimizer.name=lion"], r"optimizer.name must be one of 'sgd', .*'padam' \(got 'lion'\)"),
        (["algorithm.name=nope"], r"algorithm.name must be one of 'sgd'"),
        (["optimizer.momentum=1.0"], r"optimizer.momentum must be in \[0.0, 1.0\)"),
        (["run.bogus=1"], r"unknown key run.bogus; allowed keys in \[run\]: name, seed, steps"),
        (["nosuch.key=1"], r"unknown section \[nosuch\]"),
        (["run.name=a/b"], r"run.name must be a non-empty folder name"),
        (["optimizer.lr=nan"], r"optimizer.lr must be a finite number"),
        (["data.name=hdf5"], r"data.path must name an HDF5 file"),
        (["data.name=synthetic"], r"model.name must be 'linear' for data.name = 'synthetic'"),
        (["compression.codec=zip"], r"compression.codec must be one of 'auto', 'none', 'identity'"),
        (["compression.ratio=0"], r"compression.ratio must be in \(0, 1\]"),
        (
            ["algorithm.name=qpr_sgd", "compression.codec=none"],
            r"compression.codec = 'none' contradicts algorithm.name = 'qpr_sgd'.*'pr_sgd'",
        ),
        (["algorithm.name=pr_sgd", "compression.codec=qsgd"], r"use algorithm.name = 'qpr_sgd'"),
        (
            ["algorithm.name=async_gossip", "compression.codec=qsgd"],
            r"compression.codec = 'qsgd' does not apply to algorithm.name = 'async_gossip'",
        ),
        (
            ["algorithm.name=dqpr_sgd", "algorithm.gossip_method=neighbor"],
            r"algorithm.gossip_method must be 'p2p' for compressed gossip",
        ),
        (["compression.error_feedback=true"], r"compression.error_feedback = true needs a codec"),
        (["run.steps"], r"--set expects section.key=value"),
        (["steps=3"], r"--set expects section.key=value with one dot"),
    ],
)
def test_bad_values_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nsteps = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_section_must_be_a_table(tmp_path: Path) -> None:
    p = tmp_path / "j.toml"
    p.write_text("run = 3\n")
    with pytest.raises(ConfigError, match=r"\[run\] must be a table"):
        load_config(p)


def test_examples_are_valid() -> None:
    jobs = sorted(Path(__file__).parents[1].joinpath("examples").glob("*.toml"))
    assert jobs, "examples/ holds no job"
    for job in jobs:
        load_config(job)


def test_docs_jobs_md_matches_the_schema() -> None:
    from mpiml.config import schema_markdown

    doc = Path(__file__).parents[1] / "docs" / "jobs.md"
    assert doc.read_text() == schema_markdown(), (
        "docs/jobs.md is stale: python -m mpiml.config > docs/jobs.md"
    )


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["model.hidden=[3, 2]", "data.standardize=false", "run.name=x y"])
    p = tmp_path / "j.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg


def test_choices_come_from_the_registries() -> None:
    """config.py names no algorithm, codec or progress mode: the choices are the registries'."""
    from mpiml.algorithms import REGISTRY as ALGORITHMS
    from mpiml.compress import REGISTRY as CODECS
    from mpiml.optim import OPTIMIZERS
    from mpiml.protocols.progress import MODES

    for sec, key, names in [
        ("algorithm", "name", ALGORITHMS),
        ("compression", "codec", ["auto", "none", *CODECS]),
        ("optimizer", "name", OPTIMIZERS),
        ("algorithm", "progress", MODES),
    ]:
        f = SCHEMA[sec][key]
        assert f.allowed == "one of " + ", ".join(repr(n) for n in names), (sec, key)
    text = (Path(__file__).parents[1] / "mpiml" / "config.py").read_text()
    for name in [*(set(ALGORITHMS) - set(OPTIMIZERS)), *CODECS]:
        assert f"'{name}'" not in text and f'"{name}"' not in text, f"config.py names {name!r}"


@pytest.mark.parametrize(
    ("alg", "codec", "want"),
    [
        ("qpr_sgd", "auto", "qsgd"),
        ("dqpr_sgd", "auto", "qsgd"),
        ("qsgd", "auto", "qsgd"),
        ("sgd", "auto", "none"),
        ("pr_sgd", "auto", "none"),
        ("dasgd", "topk", "topk"),
        ("qpr_sgd", "qsgd_fixed", "qsgd_fixed"),
    ],
)
def test_auto_codec_is_qsgd_for_the_quantized_algorithms(alg: str, codec: str, want: str) -> None:
    from mpiml.algorithms.compression import codec_of

    cfg = load_config(None, [f"algorithm.name={alg}", f"compression.codec={codec}"])
    assert codec_of(cfg) == want


def test_resume_compares_only_the_keys_the_job_reads() -> None:
    """A key no algorithm of either job reads (dasgd has no topology; without a codec, no
    qsgd levels) may differ on --resume; one it reads may not."""
    base = ["algorithm.name=dasgd"]
    a = load_config(None, base)
    assert a.differences(load_config(None, [*base, "algorithm.topology=torus", "compression.s=7"])) == []
    assert [d.split(" ")[0] for d in a.differences(load_config(None, [*base, "algorithm.tau=8"]))] == [
        "algorithm.tau"
    ]
    assert [d.split(" ")[0] for d in a.differences(load_config(None, ["algorithm.name=sgd"]))] == [
        "algorithm.name"
    ]
    q = load_config(None, ["algorithm.name=qsgd"])
    assert [
        d.split(" ")[0] for d in q.differences(load_config(None, ["algorithm.name=qsgd", "compression.s=3"]))
    ] == ["compression.s"]
    assert q.differences(load_config(None, ["algorithm.name=qsgd", "compression.ratio=0.5"])) == []
