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


# ---- every key has a stated range; strings are names, not bytes ----


def _numeric_fields() -> list[tuple[str, str]]:
    """Every int, float and int_list key, except [compression]'s codec parameters (their
    ranges are the codecs' rules, checked with the job by the codec's owner)."""
    return [
        (sec, key)
        for sec, fields in SCHEMA.items()
        for key, f in fields.items()
        if f.type in ("int", "float", "int_list") and sec != "compression"
    ]


@pytest.mark.parametrize(("sec", "key"), _numeric_fields())
def test_every_numeric_key_refuses_absurd_magnitudes(sec: str, key: str) -> None:
    """10**30 (or a 10**30 hidden width, or 1000 layers) is refused by the key's own rule,
    before any allocation, in one line that names the key; the docs state the range."""
    f = SCHEMA[sec][key]
    values = ["[1000000000000000000000000000000]", "[" + ", ".join(["8"] * 1000) + "]"]
    if f.type != "int_list":
        values = ["1000000000000000000000000000000", "-1000000000000000000000000000000"]
        values += ["1e300"] if f.type == "float" else []
    for text in values:
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"{sec}.{key}={text}"])
        msg = str(info.value)
        assert msg.startswith(f"{sec}.{key} must be") and "\n" not in msg, msg
    assert "<=" in f.allowed or "in [" in f.allowed or "in (" in f.allowed or "at most" in f.allowed, (
        f"{sec}.{key}: no upper bound stated ({f.allowed!r})"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ['run.name="a\\u0000b"'],
            r"run.name must not hold control characters \(got 'a\\x00b', with U\+0000\)",
        ),
        (['run.name="a\\nb"'], r"run.name must not hold control characters"),
        (['run.name="x\\u001bb"'], r"run.name must not hold control characters"),
        (["run.name=.."], r"run.name must be a non-empty folder name without '/', other than '.' and '..'"),
        (['run.name=""'], r"run.name must be a non-empty folder name"),
        ([f"run.name={'n' * 201}"], r"run.name must be .* of at most 200 bytes \(got 'nnnn"),
        ([f"run.name={'é' * 101}"], r"of at most 200 bytes"),  # 202 bytes in UTF-8
        (['data.path="/tmp/a\\u0000b"'], r"data.path must not hold control characters"),
        (["optimizer.lr=1e300"], r"optimizer.lr must be <= 1_000_000 \(got 1e\+300\)"),
        (["optimizer.lr=" + "9" * 400], r"optimizer.lr must be a finite number \(got 9999"),
        (["run.seed=4294967296"], r"run.seed must be in \[0, 4_294_967_295\] \(got 4294967296\)"),
        (["run.seed=-1"], r"run.seed must be in \[0, 4_294_967_295\]"),
        (["run.steps=10000000000"], r"run.steps must be <= 1_000_000_000 \(got 10000000000\)"),
        (["data.batch_size=100000000"], r"data.batch_size must be <= 16_777_216"),
        (["run.threads=100000"], r"run.threads must be <= 4096"),
        (["trace.flush_every=0"], r"trace.flush_every must be >= 1 \(got 0\)"),
        (["data.alpha=1e9"], r"data.alpha must be <= 1_000_000"),
        (["model.hidden=[1099511627777]"], r"model.hidden must be a list of at most 64 widths"),
        (["algorithm.tau=10000000000"], r"algorithm.tau must be <= 1_000_000_000"),
    ],
)
def test_names_strings_and_magnitudes_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["run.steps='x'"], r"^run.steps must be an integer \(got 'x', a string\)$"),
        (["run.steps=1.5"], r"^run.steps must be an integer \(got 1.5, a float\)$"),
        (["optimizer.lr=[1]"], r"^optimizer.lr must be a number \(got \[1\], a list\)$"),
        (["run.name=1"], r"^run.name must be a string \(got 1, an integer\)$"),
        (["data.standardize={a=1}"], r"^data.standardize must be true or false \(got \{'a': 1\}, a table\)$"),
        (["run.seed=1979-05-27"], r"^run.seed must be an integer \(got .*, a date\)$"),
    ],
)
def test_type_errors_read_as_english(overrides: list[str], message: str) -> None:
    """ "a string", "an integer", "a table": never "a str", "a int"."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_long_value_is_cut_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["model.hidden=[" + ", ".join(["0"] * 5000) + "]"])
    assert len(str(info.value)) < 300, str(info.value)


# ---- keys the job does not read: validated, then reported once as ignored ----


def test_a_key_the_algorithm_does_not_read_is_reported_and_still_validated() -> None:
    from mpiml.config import ignored_keys

    cfg = load_config(None, ["algorithm.topology=torus"])  # the default job is dasgd
    assert cfg.ignored() == ["algorithm.topology"]
    assert ignored_keys(cfg) == ["mpiml: note: algorithm.topology is not used by dasgd (ignored)"]
    with pytest.raises(
        ConfigError, match=r"algorithm.topology must be a topology name .*ring, torus.* \(got 'rign'\)"
    ):
        load_config(None, ["algorithm.topology=rign"])  # ignored by dasgd, refused all the same
    assert ignored_keys(load_config(None, ["algorithm.name=gossip", "algorithm.topology=torus"])) == []


def test_ignored_keys_are_the_users_and_name_what_decides() -> None:
    from mpiml.config import ignored_keys

    # the embedded default job sets tau, delay, xi, progress: not the user's keys, no notes
    assert ignored_keys(load_config(None, ["algorithm.name=sgd"])) == []
    cfg = load_config(
        None,
        ["data.alpha=0.3", "optimizer.beta1=0.5", "model.params=5", "algorithm.tau=4", "compression.s=3"],
    )
    assert ignored_keys(cfg) == [
        "mpiml: note: compression.s is not used by dasgd with compression.codec = 'auto' (ignored)",
        "mpiml: note: model.params is not used with model.name = 'mlp' (ignored)",
        "mpiml: note: data.alpha is not used with data.partition = 'iid' (ignored)",
        "mpiml: note: optimizer.beta1 is not used with optimizer.name = 'nesterov' (ignored)",
    ]
    read = load_config(None, ["optimizer.name=adam", "optimizer.beta1=0.5", "data.partition=dirichlet"])
    assert read.ignored() == []


def test_a_job_files_keys_count_as_set(tmp_path: Path) -> None:
    p = tmp_path / "j.toml"
    p.write_text('[algorithm]\nname = "sgd"\ntau = 8\n')
    assert load_config(p).ignored() == ["algorithm.tau"]
    assert load_config(p, ["algorithm.name=local_sgd"]).ignored() == []


def test_no_example_sets_a_key_it_does_not_read() -> None:
    from mpiml.config import ignored_keys

    for job in sorted(Path(__file__).parents[1].joinpath("examples").glob("*.toml")):
        assert ignored_keys(load_config(job)) == [], job.name
