"""``[straggler]`` on real ranks with ``sgd`` and ``dasgd``: the slowed rank's delays are
recorded (events and the ``straggler`` table) as (factor - 1) x its recorded compute,
the model is bit for bit the one trained without a straggler, the random mode slows
the seeded steps on every run, and a rank beyond the world is refused on every rank."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from mpi4py import MPI
from reference import small_job  # tests/reference.py

from mpiml.errors import ConfigError
from mpiml.io import load_run
from mpiml.straggler import DELAY_DTYPE, slowed
from mpiml.testing import assert_all
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test
STEPS = 24
DASGD = ["algorithm.name=dasgd", "algorithm.tau=4", "algorithm.delay=1", "algorithm.xi=0.25"]
ALGS = {"sgd": ["algorithm.name=sgd"], "dasgd": DASGD}


def _job(name: str, alg: str, *extra: str) -> Any:
    return small_job(name, *ALGS[alg], *extra, steps=STEPS, eval_every=8)


def _verdict(comm: MPI.Comm, check: Callable[[], list[str]]) -> None:
    """Run ``check`` (reading the run files) on rank 0 and assert on every rank that it
    found no problem; an exception in it is a problem too, never a rank left waiting."""
    problems: list[str] = []
    if comm.Get_rank() == 0:
        try:
            problems = check()
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            problems = [f"rank 0 could not check the run files: {type(exc).__name__}: {exc}"]
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))


def _delay_problems(run: Any, rank: int, steps: list[int], multiplier: float) -> list[str]:
    """What is wrong with ``rank``'s recorded delays, expected at ``steps`` with
    ``multiplier``: one ``straggler`` row and one ``straggler`` event per slowed step,
    the row's delay = (multiplier - 1) x that step's recorded compute event, the event
    right after that compute and at least as long as the delay it slept."""
    out: list[str] = []
    table = run.table("straggler").get(rank, np.zeros(0, dtype=DELAY_DTYPE))
    if table["step"].tolist() != steps:
        return [f"rank {rank}: delays at steps {table['step'].tolist()}, expected {steps}"]
    ev = run.events[rank]
    compute = ev[ev["kind"] == "compute"]
    slept = ev[ev["kind"] == "straggler"]
    if slept["step"].tolist() != steps:
        return [f"rank {rank}: straggler events at {slept['step'].tolist()}, expected {steps}"]
    if not np.all(table["multiplier"] == multiplier):
        out.append(f"rank {rank}: multipliers {set(table['multiplier'])}, expected {multiplier}")
    for row, sl in zip(table, slept, strict=True):
        c = compute[compute["step"] == row["step"]]
        if len(c) != 1:
            out.append(f"rank {rank} step {row['step']}: {len(c)} compute events")
            continue
        dur = float(c["t_end"][0] - c["t_start"][0])
        if not np.isclose(row["compute"], dur, rtol=1e-9, atol=1e-12):
            out.append(f"rank {rank} step {row['step']}: compute {row['compute']} but the event lasted {dur}")
        if not np.isclose(row["delay"], (multiplier - 1.0) * dur, rtol=1e-9, atol=1e-12):
            out.append(f"rank {rank} step {row['step']}: delay {row['delay']} != ({multiplier} - 1) x {dur}")
        # the sleep follows the compute it stretches and lasts at least the delay
        # (time.sleep never returns early; 1 us of slack for the clocks' rounding)
        if not (sl["t_start"] >= c["t_end"][0] and sl["t_end"] - sl["t_start"] >= row["delay"] - 1e-6):
            out.append(f"rank {rank} step {row['step']}: event {sl} does not hold the delay {row['delay']}")
    return out


@pytest.mark.parametrize("alg", ["sgd", "dasgd"])
def test_a_slow_rank_adds_recorded_compute_time_and_nothing_else(
    comm: MPI.Comm, shared_tmp, alg: str
) -> None:  # type: ignore[no-untyped-def]
    n, factor = comm.Get_size(), 3.0
    plain = train(_job(f"plain-{alg}", alg), comm, out=shared_tmp, stream=NULL)
    slow = train(
        _job(f"slow-{alg}", alg, f"straggler.ranks=[{n - 1}]", f"straggler.factor={factor}"),
        comm,
        out=shared_tmp,
        stream=NULL,
    )
    # a synchronous algorithm's result depends on the data and the order of operations,
    # not on time: bit for bit the run without a straggler
    assert_all(comm, np.array_equal(plain.params, slow.params), f"{alg}: the straggler changed the model")

    def check() -> list[str]:
        run = load_run(shared_tmp / f"slow-{alg}")
        problems = _delay_problems(run, n - 1, list(range(STEPS)), factor)
        for r in range(n - 1):  # the others were not slowed
            if r in run.table("straggler") or np.any(run.events[r]["kind"] == "straggler"):
                problems.append(f"rank {r} was slowed but is not in straggler.ranks")
        if run.config["straggler"]["ranks"] != [n - 1]:
            problems.append(f"the run file's config has straggler {run.config['straggler']}")
        if run.kinds.get("straggler") != "compute":
            problems.append(f"the kinds table says straggler is {run.kinds.get('straggler')!r}, not compute")
        return problems

    _verdict(comm, check)


def test_random_stragglers_slow_the_seeded_steps_on_every_run(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """DSP Table 2's protocol (each rank slowed by X % with probability p per step), on
    dasgd: two runs of the job slow the same steps, the steps :func:`slowed` draws."""
    n, p, percent, seed = comm.Get_size(), 0.3, 50.0, 7
    extra = [f"straggler.probability={p}", f"straggler.percent={percent}", f"run.seed={seed}"]
    a = train(_job("random-a", "dasgd", *extra), comm, out=shared_tmp, stream=NULL)
    b = train(_job("random-b", "dasgd", *extra), comm, out=shared_tmp, stream=NULL)
    assert_all(comm, np.array_equal(a.params, b.params), "the two runs of one job differ")

    def check() -> list[str]:
        ra, rb = load_run(shared_tmp / "random-a"), load_run(shared_tmp / "random-b")
        problems: list[str] = []
        slowed_steps = 0
        for r in range(n):
            want = [t for t in range(STEPS) if slowed(seed, r, t, p)]
            slowed_steps += len(want)
            problems += _delay_problems(ra, r, want, 1.0 + percent / 100.0)
            problems += _delay_problems(rb, r, want, 1.0 + percent / 100.0)
        if slowed_steps == 0:
            problems.append("no step was slowed: the test would not see a wrong draw")
        return problems

    _verdict(comm, check)


def test_a_straggler_rank_beyond_the_world_fails_on_every_rank(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    cfg = _job("beyond", "sgd", f"straggler.ranks=[0, {n}]")
    with pytest.raises(ConfigError, match=rf"straggler\.ranks must be world ranks below {n} .*got {n}\)"):
        train(cfg, comm, out=shared_tmp, stream=NULL)
    comm.Barrier()  # every rank raised (none is left in a collective)


def test_a_resumed_run_slows_the_steps_the_uninterrupted_run_slowed(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """Nothing of the straggler is checkpointed: the draw is a function of (seed, rank,
    step), so a run resumed at step 8 slows the same steps afterwards, and its table
    (truncated at the checkpoint, then continued) equals the uninterrupted run's."""
    n, p = comm.Get_size(), 0.4
    extra = [f"straggler.probability={p}", "straggler.percent=100", "checkpoint.every=8", "checkpoint.keep=5"]
    full = train(_job("resume-full", "sgd", *extra), comm, out=shared_tmp, stream=NULL)
    if comm.Get_rank() == 0:
        shutil.copytree(shared_tmp / "resume-full", shared_tmp / "resume-8")
        for d in (shared_tmp / "resume-8" / "checkpoints").iterdir():
            if int(d.name[5:]) > 8:
                shutil.rmtree(d)
    comm.Barrier()
    res = train(_job("resume-8", "sgd", *extra), comm, out=shared_tmp, resume=True, stream=NULL)
    assert_all(comm, np.array_equal(res.params, full.params), "the resumed run ended elsewhere")

    def check() -> list[str]:
        a, b = load_run(shared_tmp / "resume-full"), load_run(shared_tmp / "resume-8")
        problems: list[str] = []
        for r in range(n):
            want = [t for t in range(STEPS) if slowed(0, r, t, p)]
            problems += _delay_problems(a, r, want, 2.0)
            problems += _delay_problems(b, r, want, 2.0)
            steps_a, steps_b = (x.table("straggler")[r]["step"].tolist() for x in (a, b))
            if steps_a != steps_b:
                problems.append(f"rank {r}: slowed at {steps_a} uninterrupted, at {steps_b} resumed")
        if not any(t >= 8 for r in range(n) for t in range(STEPS) if slowed(0, r, t, p)):
            problems.append("no step after the checkpoint was slowed: the test would see nothing")
        return problems

    _verdict(comm, check)
