"""``[straggler]`` without MPI: the seeded draw, the delay and what it records, the
section's rules and notes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpiml.config import ignored_keys, load_config
from mpiml.errors import ConfigError
from mpiml.kinds import category
from mpiml.straggler import DELAY_DTYPE, STRAGGLER, Straggler, check_world, slowed
from mpiml.trace import Trace


@pytest.mark.parametrize("p", [0.1, 1 / 3, 0.9])
def test_the_draw_is_seeded_and_slows_about_p_of_the_steps(p: float) -> None:
    steps = 4000
    draws = {r: [slowed(5, r, t, p) for t in range(steps)] for r in (0, 1)}
    assert draws[0] == [slowed(5, 0, t, p) for t in range(steps)]  # the same job slows the same steps
    assert draws[0] != draws[1]  # each rank draws its own
    assert draws[0] != [slowed(6, 0, t, p) for t in range(steps)]  # and the run seed matters
    for r, d in draws.items():
        # binomial(steps, p): 5 standard deviations (a false alarm about once in 3.5 million)
        k, sd = sum(d), math.sqrt(steps * p * (1 - p))
        assert abs(k - steps * p) <= 5 * sd, f"rank {r}: {k} of {steps} steps slowed, p = {p}"


def test_the_draw_is_independent_of_the_previous_step() -> None:
    """The steps slowed are not runs of one draw: P(slowed at t+1 | slowed at t) ~ p."""
    p, steps = 1 / 3, 6000
    d = np.array([slowed(0, 3, t, p) for t in range(steps)])
    both = np.sum(d[1:] & d[:-1])
    assert abs(both / d[:-1].sum() - p) <= 5 * math.sqrt(p * (1 - p) / d[:-1].sum())


def test_multiplier_composes_the_fixed_factor_and_the_random_percent() -> None:
    s = Straggler(2, seed=9, factor=2.0, probability=0.5, percent=50.0)
    assert {s.multiplier(t) for t in range(100)} == {2.0, 3.0}  # both kinds of step occur
    for t in range(100):
        want = 2.0 * (1.5 if slowed(9, 2, t, 0.5) else 1.0)
        assert s.multiplier(t) == want


def test_delay_sleeps_records_and_returns_the_seconds_added() -> None:
    tr = Trace()
    polls: list[float] = []
    s = Straggler(0, factor=3.0, trace=tr)
    added = s.delay(7, 0.01, poll=lambda: polls.append(tr.now()))
    assert added == pytest.approx(0.02, rel=1e-12)
    ev = tr.take()
    assert list(ev["kind"]) == [STRAGGLER.encode()] and list(ev["step"]) == [7]
    assert ev["t_end"][0] - ev["t_start"][0] >= 0.02 - 1e-6  # time.sleep never returns early
    assert len(polls) >= 4  # polled between 5 ms slices of the 20 ms
    rows = tr.take_tables()["straggler"]
    assert rows.dtype == DELAY_DTYPE
    assert rows.tolist() == [(7, 3.0, 0.01, added)]
    assert category(STRAGGLER) == "compute"  # reports count it as compute time
    assert tr.split_totals()["compute"] >= 0.02 - 1e-6


def test_a_step_not_slowed_adds_nothing() -> None:
    tr = Trace()
    s = Straggler(0, seed=1, probability=0.5, percent=100.0, trace=tr)
    t = next(t for t in range(100) if not slowed(1, 0, t, 0.5))
    assert s.delay(t, 0.5) == 0.0
    assert len(tr.take()) == 0 and tr.take_tables() == {}


def test_for_rank_from_the_job() -> None:
    cfg = load_config(None, ["straggler.ranks=[1, 3]", "straggler.factor=4"])
    assert Straggler.for_rank(cfg, 0) is None and Straggler.for_rank(cfg, 2) is None
    s = Straggler.for_rank(cfg, 3)
    assert s is not None and s.factor == 4.0 and s.probability == 0.0
    assert Straggler.for_rank(load_config(None), 0) is None  # the default job slows nobody
    cfg = load_config(None, ["straggler.probability=0.25", "straggler.percent=20", "run.seed=3"])
    s = Straggler.for_rank(cfg, 0)
    assert s is not None and (s.factor, s.probability, s.percent, s.seed) == (1.0, 0.25, 20.0, 3)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("straggler.factor=0.5", r"straggler\.factor must be >= 1\.0 \(got 0\.5\)"),
        ("straggler.probability=1.5", r"straggler\.probability must be in \[0\.0, 1\.0\] \(got 1\.5\)"),
        ("straggler.probability=-0.1", r"straggler\.probability must be in \[0\.0, 1\.0\] \(got -0\.1\)"),
        ("straggler.percent=-10", r"straggler\.percent must be >= 0\.0 \(got -10\.0\)"),
        ("straggler.ranks=[-1]", r"straggler\.ranks must be a list of at most 4096 distinct world ranks"),
        ("straggler.ranks=[2, 2]", r"straggler\.ranks must be a list of at most 4096 distinct world ranks"),
        ("straggler.ranks=2", r"straggler\.ranks must be a list of integers"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [setting])


def test_ranks_beyond_the_world() -> None:
    cfg = load_config(None, ["straggler.ranks=[0, 4, 5]"])
    check_world(cfg, 6)
    with pytest.raises(ConfigError, match=r"straggler\.ranks must be world ranks below 4 .*got 4, 5\)"):
        check_world(cfg, 4)
    with pytest.raises(ConfigError, match=r"straggler\.ranks must be world ranks below 2"):
        load_config(None, ["straggler.ranks=[3]", "run.world_size=2"])


def test_keys_the_job_does_not_read_are_noted() -> None:
    cfg = load_config(None, ["straggler.factor=3", "straggler.percent=50"])
    assert ignored_keys(cfg) == [
        "mpiml: note: straggler.factor is not used with straggler.ranks = [] (ignored)",
        "mpiml: note: straggler.percent is not used with straggler.probability = 0.0 (ignored)",
    ]
    cfg = load_config(None, ["straggler.ranks=[0]", "straggler.factor=3", "straggler.probability=0.3"])
    assert ignored_keys(cfg) == []
