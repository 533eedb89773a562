"""mpiml.layout: pure rank -> role maps (no MPI)."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mpiml.layout
from mpiml.layout import Layout, Role, data_parallel, parameter_server, pipelines


def test_doctests() -> None:
    assert doctest.testmod(mpiml.layout).failed == 0


def test_data_parallel_every_rank_a_replica_reading_its_shard() -> None:
    lay = data_parallel(4)
    assert [r.kind for r in lay.roles] == ["replica"] * 4
    assert [r.shard for r in lay.roles] == [0, 1, 2, 3]
    assert lay.n_shards == 4 and lay.size == 4
    assert lay.peers(2) == [0, 1, 2, 3]
    assert lay.counts == {"replica": 4}


def test_parameter_server_servers_last() -> None:
    lay = parameter_server(5, servers=2)
    assert lay.ranks("worker") == [0, 1, 2]
    assert lay.ranks("server") == [3, 4]
    assert [lay.roles[r].group for r in (3, 4)] == [0, 1]
    assert [lay.roles[r].shard for r in range(5)] == [0, 1, 2, -1, -1]
    assert lay.n_shards == 3
    assert lay.peers(0) == [0, 1, 2] and lay.peers(4) == [4]


def test_pipelines_stage_major_within_pipeline_and_scheduler_last() -> None:
    lay = pipelines(7, stages=3, scheduler=True)
    assert [(r.kind, r.group, r.stage) for r in lay.roles[:6]] == [
        ("stage", 0, 0),
        ("stage", 0, 1),
        ("stage", 0, 2),
        ("stage", 1, 0),
        ("stage", 1, 1),
        ("stage", 1, 2),
    ]
    assert lay.roles[6] == Role("scheduler")
    # stage 0 reads x, the last stage y, of its pipeline's shard; the middle reads nothing
    assert [(r.reads, r.shard) for r in lay.roles[:3]] == [("x", 0), ("", -1), ("y", 0)]
    assert lay.peers(4) == [1, 4]  # stage 1 of both pipelines
    assert lay.n_shards == 2
    one = pipelines(2, stages=1)
    assert [(r.reads, r.shard) for r in one.roles] == [("xy", 0), ("xy", 1)]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: data_parallel(0), "n >= 1"),
        (lambda: parameter_server(1, servers=1), "at least 2 ranks (got 1)"),
        (lambda: parameter_server(4, servers=0), "servers >= 1"),
        (lambda: pipelines(5, stages=2), "P * K ranks for some P >= 1 (got 5)"),
        (lambda: pipelines(4, stages=2, scheduler=True), "P * K + 1 ranks for some P >= 1 (got 4)"),
        (lambda: pipelines(1, stages=2), "got 1"),
    ],
)
def test_sizes_that_do_not_fit_name_the_numbers(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(
        ValueError,
        match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*").replace("+", r"\+"),
    ):
        make()


def test_role_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="kind"):
        Role("boss")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="disagree"):
        Role("replica", shard=0, reads="")
    with pytest.raises(ValueError, match="not 0..1"):
        Layout("x", (Role("replica", shard=0, reads="xy"), Role("replica", shard=2, reads="xy")), 2)


layouts = st.one_of(
    st.integers(1, 40).map(data_parallel),
    st.tuples(st.integers(1, 8), st.integers(1, 30)).map(
        lambda a: parameter_server(a[0] + a[1], servers=a[0])
    ),
    st.tuples(st.integers(1, 6), st.integers(1, 6), st.booleans()).map(
        lambda a: pipelines(a[0] * a[1] + a[2], stages=a[0], scheduler=a[2])
    ),
)


@given(layouts)
def test_layout_properties(lay: Layout) -> None:
    assert Layout.from_json(lay.to_json()) == lay
    # every shard is read by exactly the ranks of one replica/worker/pipeline, and each
    # of x and y of a shard by exactly one rank
    for s in range(lay.n_shards):
        readers = [r for r in lay.roles if r.shard == s]
        assert sum("x" in r.reads for r in readers) == 1
        assert sum("y" in r.reads for r in readers) == 1
    for rank in range(lay.size):
        peers = lay.peers(rank)
        assert rank in peers and peers == sorted(peers)
        assert all(lay.peers(p) == peers for p in peers)  # "holds the same parameters" is an equivalence
    assert sum(lay.counts.values()) == lay.size
    assert lay.describe().count("\n") == lay.size


def test_a_world_size_that_does_not_fit_the_algorithms_layout_is_a_config_error(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The driver turns a layout constructor's refusal into a ConfigError naming the
    algorithm and the numbers (raised on every rank, before any collective)."""
    from mpiml.algorithms import REGISTRY
    from mpiml.config import load_config
    from mpiml.errors import ConfigError
    from mpiml.run import job_layout

    class ThreeStages(REGISTRY["sgd"]):  # type: ignore[misc,valid-type]
        @classmethod
        def layout(cls, cfg, world_size):  # type: ignore[no-untyped-def]
            return pipelines(world_size, stages=3)

    monkeypatch.setitem(REGISTRY, "sgd", ThreeStages)
    cfg = load_config(None, ["algorithm.name=sgd"])
    assert job_layout(cfg, 6)[1] == pipelines(6, stages=3)
    with pytest.raises(
        ConfigError, match=r"algorithm.name = 'sgd' on 4 ranks: .*P \* K ranks for some P >= 1 \(got 4\)"
    ):
        job_layout(cfg, 4)
    with pytest.raises(ConfigError, match=r"run.world_size = 6 but the job runs on 3 ranks"):
        job_layout(load_config(None, ["algorithm.name=sgd", "run.world_size=6"]), 3)


def test_mpiml_layout_command() -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "mpiml.cli", "layout"]
    ok = subprocess.run([*run, "-n", "3"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.splitlines()[0].startswith("layout data_parallel: 3 ranks"), ok
    assert "rank    2: replica (shard 2)" in ok.stdout
    bad = subprocess.run(
        [*run, "-n", "2", "--set", "algorithm.tau=0"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and bad.stderr.strip() == "mpiml: error: algorithm.tau must be >= 1 (got 0)", (
        bad
    )
