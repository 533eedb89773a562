"""Bad ``async_ps`` jobs: one line naming the field and what is allowed, on every rank,
before any communication.

The pure checks run here without MPI (:func:`mpiml.config.load_config`, the
algorithm's rules, :func:`mpiml.run.setup.job_layout` for a given world size); the
launched tests run ``mpiml train`` on 3 ranks and check the job's exit status 2 and
its one line (rank 0 prints it; every rank exits 2). That every rank raises the
same ConfigError is checked on real ranks in tests/test_mpi_ps_protocol.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mpiml.algorithms.base import check_job
from mpiml.config import SCHEMA, Config, load_config
from mpiml.errors import ConfigError
from mpiml.run.setup import job_layout
from mpiml.testing import run_ranks

TIMEOUT = 120.0
MPIML = [sys.executable, "-m", "mpiml.cli"]


def _check(sets: list[str], world_size: int = 3) -> None:
    """Every rule a rank checks before it talks to another (pure)."""
    cfg = load_config(None, ["algorithm.name=async_ps", *sets])
    check_job(cfg)
    job_layout(cfg, world_size)


@pytest.mark.parametrize(
    ("sets", "world", "message"),
    [
        (
            ["algorithm.servers=3"],
            3,
            "algorithm.servers = 3 leaves no worker: it must be at most 2 (world size - 1), or launch at least 4 ranks",
        ),
        (
            ["algorithm.servers=7"],
            4,
            "algorithm.servers = 7 leaves no worker: it must be at most 3 (world size - 1), or launch at least 8 ranks",
        ),
        (["algorithm.servers=0"], 3, "algorithm.servers must be >= 1 (got 0)"),
        (["algorithm.servers=-2"], 3, "algorithm.servers must be >= 1 (got -2)"),
        (["algorithm.servers=1.5"], 3, "algorithm.servers must be an integer"),
        (["algorithm.staleness=-2"], 3, "algorithm.staleness must be an integer in [0, 1_000_000_000]"),
        (["algorithm.staleness=-5"], 3, "(omit it for no bound) (got -5)"),
        (["algorithm.push=delta", "algorithm.tau=0"], 3, "algorithm.tau must be >= 1 (got 0)"),
        (["algorithm.push=delta", "algorithm.tau=-4"], 3, "algorithm.tau must be >= 1 (got -4)"),
        (["algorithm.push=weights"], 3, "algorithm.push must be one of 'gradient', 'delta' (got 'weights')"),
    ],
)
def test_bad_async_ps_job_is_one_line_naming_the_field(sets: list[str], world: int, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _check(sets, world)
    text = str(exc.value)
    assert message in text and "\n" not in text, text


def _codecs() -> list[str]:
    allowed = SCHEMA["compression"]["codec"].allowed
    return [
        c.strip("'")
        for c in allowed.removeprefix("one of ").split(", ")
        if c.strip("'") not in ("auto", "none")
    ]


@pytest.mark.parametrize("codec", _codecs())
def test_a_codec_with_async_ps_is_refused(codec: str) -> None:
    """The parameter server's messages carry raw shards: no codec can ride on them."""
    with pytest.raises(
        ConfigError, match=rf"compression.codec = '{codec}' does not apply to algorithm.name = 'async_ps'"
    ):
        _check([f"compression.codec={codec}"])


def test_good_async_ps_jobs_pass_the_same_checks() -> None:
    """Control: the checks above refuse the bad values only."""
    _check([])  # auto -> no codec, 1 server, fully asynchronous
    _check(["algorithm.servers=2", "algorithm.staleness=0"], 3)
    _check(["algorithm.servers=3", "algorithm.staleness=4", "algorithm.push=delta", "algorithm.tau=1"], 4)
    _check(["compression.codec=none"])


def test_servers_at_least_world_size_names_algorithm_servers() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.servers"):
        _check(["algorithm.servers=3"], 3)


def test_the_default_async_ps_job_round_trips_through_its_record() -> None:
    """A checkpoint stores the job as JSON and --resume validates it again
    (mpiml/run/resume.py): the default job must pass its own rules."""
    cfg = load_config(None, ["algorithm.name=async_ps"])
    assert Config.from_json(cfg.to_json()).algorithm.staleness == cfg.algorithm.staleness


# ---- launched: the job's exit status and its one line ----------------------------


def _train(tmp: Path, *sets: str, n: int = 3) -> tuple[int, str, str]:
    args = [*MPIML, "train", "--set", "algorithm.name=async_ps", "--set", "run.steps=4"]
    for s in sets:
        args += ["--set", s]
    res = run_ranks(n, [*args, "--out", str(tmp / "results")], TIMEOUT, cwd=str(tmp))
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["algorithm.servers=3"], "algorithm.servers = 3 leaves no worker: it must be at most 2"),
        (
            ["compression.codec=topk"],
            "compression.codec = 'topk' does not apply to algorithm.name = 'async_ps'",
        ),
    ],
)
def test_launched_bad_job_exits_2_with_one_line(tmp_path: Path, sets: list[str], message: str) -> None:
    code, out, err = _train(tmp_path, *sets)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("mpiml: error: ") and message in lines[0], err
    assert "Traceback" not in err + out and not (tmp_path / "results").exists()


def test_launched_more_servers_than_parameters_exits_2_with_one_line(tmp_path: Path) -> None:
    code, out, err = _train(
        tmp_path, "algorithm.servers=2", "model.name=timed", "model.params=1", "model.compute_ms=0"
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err[-3000:])
    assert len(lines) == 1 and "algorithm.servers = 2 is more than the model's 1 parameters" in lines[0], err
    assert "Traceback" not in err


# ---- stragglers, one rank, tau with push = "gradient" -----------------------------


@pytest.mark.parametrize(
    ("sets", "world", "message"),
    [
        (["straggler.ranks=[2]"], 3, "straggler.ranks lists rank 2, a parameter server"),
        (
            ["algorithm.servers=2", "straggler.ranks=[0, 2, 3]"],
            4,
            "straggler.ranks lists ranks 2, 3, a parameter server (it computes nothing to slow down): "
            "list worker ranks, 0..1",
        ),
        ([], 1, "algorithm.name = 'async_ps' needs at least 2 ranks (a server and a worker; got 1)"),
    ],
    ids=["server-slowed", "two-servers-slowed", "one-rank"],
)
def test_a_slowed_server_or_a_single_rank_is_one_line(sets: list[str], world: int, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _check(sets, world)
    text = str(exc.value)
    assert message in text and "\n" not in text, text


def test_a_slowed_worker_passes() -> None:
    """Control: a worker rank in straggler.ranks is allowed."""
    _check(["straggler.ranks=[0, 1]"], 3)


def test_launched_server_in_straggler_ranks_exits_2_with_one_line(tmp_path: Path) -> None:
    code, out, err = _train(tmp_path, "straggler.ranks=[2]")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, out, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("mpiml: error: ") and "straggler.ranks" in lines[0], err
    assert "Traceback" not in err + out


def test_launched_on_one_rank_says_it_needs_two(tmp_path: Path) -> None:
    code, out, err = _train(tmp_path, n=1)
    assert code == 2, (code, out, err[-3000:])
    assert "needs at least 2 ranks" in err and "Traceback" not in err + out, err


@pytest.mark.parametrize(("push", "noted"), [("gradient", True), ("delta", False)])
def test_tau_with_push_gradient_is_noted_as_ignored(tmp_path: Path, push: str, noted: bool) -> None:
    """A user-set algorithm.tau is read only in delta mode: with push = "gradient" the
    run says it ignores it (and runs); in delta mode it says nothing of it."""
    code, out, err = _train(
        tmp_path,
        f"algorithm.push={push}",
        "algorithm.tau=3",
        "model.name=timed",
        "model.params=8",
        "model.compute_ms=0",
    )
    assert code == 0, (code, out, err[-3000:])
    notes = [ln for ln in out.splitlines() if ln.startswith("mpiml: note: algorithm.tau")]
    assert len(notes) == (1 if noted else 0), out
