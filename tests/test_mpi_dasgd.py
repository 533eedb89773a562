"""``local_sgd`` and ``dasgd`` on real ranks against a serial float64 simulator of the
DaSGD paper's eq. (2), their exact special cases, the merge order in the trace, and
resume from a checkpoint taken while an average is in flight."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from mpi4py import MPI
from reference import small_job, workers  # tests/reference.py

from mpiml.io import load_run
from mpiml.testing import assert_all
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test


def _cfg(name: str, *extra: str):  # type: ignore[no-untyped-def]
    return small_job(name, *extra)


def simulate_eq2(cfg, m: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Eq. (2) for M = m workers, literally, in float64, with plain SGD:

    y_k = x_k - eta g(x_k);  x_{k+1} = xi y_k + (1 - xi) mean_j y_{k-d}^(j) when
    (k + 1 - d) mod tau = 0 and k - d >= 0 (no merge at k = d - 1), else x_{k+1} = y_k.

    Worker j draws its minibatches from the same shard and sampler as rank j, and
    the gradient is the model's own (tested apart); the oracle here is the update rule.
    """
    a = cfg.algorithm
    dasgd = a.name == "dasgd"
    tau, d, xi = a.tau, (a.delay if dasgd else 0), (a.xi if dasgd else 0.0)
    eta = cfg.optimizer.lr
    datas, model, x0 = workers(cfg, m)
    xs = [x0.copy() for _ in range(m)]
    g = np.empty_like(x0)
    started: dict[int, list[np.ndarray]] = {}
    for k in range(cfg.run.steps):
        ys = []
        for j in range(m):
            xb, yb = datas[j].sampler.next()
            model.loss_and_grad(xs[j], xb, yb, g)
            ys.append(xs[j] - eta * g)
        if (k + 1) % tau == 0:
            started[k] = [y.copy() for y in ys]
        if (k + 1 - d) % tau == 0 and k - d >= 0:
            old = started.pop(k - d)
            total = old[0].copy()
            for y in old[1:]:
                total += y  # rank order; MPI may associate differently for M > 2
            mean = total / m
            xs = [y * xi + mean * (1.0 - xi) for y in ys]
        else:
            xs = ys
    return xs


SETTINGS = [
    ("dasgd", 4, 1, 0.25),  # the paper's Table I (tau = 4, d = 1), xi of its §IV.C
    ("dasgd", 3, 2, 0.0),  # the full stale average, d = tau - 1
    ("dasgd", 2, 1, 1.0),  # xi = 1: the averages are computed and ignored
    ("dasgd", 4, 0, 0.5),  # d = 0: a partial average merged at once
    ("local_sgd", 5, 0, 0.0),
]


@pytest.mark.parametrize(
    ("alg", "tau", "delay", "xi"), SETTINGS, ids=[f"{s[0]}-{s[1]}-{s[2]}-{s[3]}" for s in SETTINGS]
)
def test_equals_serial_simulator_of_eq2(
    comm: MPI.Comm, shared_tmp, alg: str, tau: int, delay: int, xi: float
) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(
        f"sim-{alg}-{tau}-{delay}-{xi}",
        f"algorithm.name={alg}",
        f"algorithm.tau={tau}",
        f"algorithm.delay={delay}",
        f"algorithm.xi={xi}",
        "run.steps=31",  # an average in flight at the end (started at 27 or 29), never merged
    )
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    n = comm.Get_size()
    ref = simulate_eq2(cfg, n)[comm.Get_rank()]
    if n == 2:
        # Two addends commute exactly, and every other operation is the simulator's
        # own in the same order: bit for bit.
        ok = np.array_equal(res.params, ref)
        msg = f"not bit-for-bit: max diff {np.max(np.abs(res.params - ref)):.3e}"
    else:
        # For M > 2 the MPI library may associate the sum differently (e.g. (y0+y1)+(y2+y3)):
        # each average then differs by <= (M-1) ulp of sum |y_j|, ~1e-15 relative; a few
        # averages over 31 steps of lr 0.1 keep that far below 1e-11 of the weights' scale.
        err = float(np.max(np.abs(res.params - ref)))
        scale = float(np.max(np.abs(ref)))
        ok, msg = err <= 1e-11 * scale, f"max |mpiml - simulator| = {err:.3e} (scale {scale:.3f})"
    assert_all(comm, ok, msg)
    # the averages really mixed something: ranks differ (drift) unless they just merged fully
    if xi < 1.0:
        spread = comm.allreduce(
            float(np.max(np.abs(res.params - comm.bcast(res.params, root=0)))), op=MPI.MAX
        )
        assert_all(comm, spread > 0, "all ranks ended identical: the test would not see a wrong average")


def test_local_sgd_with_tau_1_is_minibatch_sgd(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    local = train(
        _cfg("tau1-local", "algorithm.name=local_sgd", "algorithm.tau=1"), comm, out=shared_tmp, stream=NULL
    )
    sgd = train(_cfg("tau1-sgd", "algorithm.name=sgd"), comm, out=shared_tmp, stream=NULL)
    # mean_j (x - eta g_j) vs x - eta sum_j g_j/(b n): equal in exact arithmetic; the
    # rounding of the two orders differs by a few ulp per step (1e-12 bound after 30 steps).
    err = float(np.max(np.abs(local.params - sgd.params)))
    scale = float(np.max(np.abs(sgd.params)))
    assert_all(comm, err <= 1e-12 * scale, f"max |local_sgd - sgd| = {err:.3e}")


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov"])
def test_dasgd_without_delay_or_local_share_is_local_sgd(comm: MPI.Comm, shared_tmp, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    extra = [f"optimizer.name={optimizer}", "algorithm.tau=3"]
    a = train(
        _cfg(f"d0-{optimizer}", "algorithm.name=dasgd", "algorithm.delay=0", "algorithm.xi=0", *extra),
        comm,
        out=shared_tmp,
        stream=NULL,
    )
    b = train(
        _cfg(f"local-{optimizer}", "algorithm.name=local_sgd", *extra), comm, out=shared_tmp, stream=NULL
    )
    assert_all(comm, np.array_equal(a.params, b.params), "dasgd (d=0, xi=0) differs from local_sgd")


def test_progress_modes_compute_the_same_model(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    base = ["algorithm.name=dasgd", "algorithm.tau=4", "algorithm.delay=2", "optimizer.name=nesterov"]
    runs = {
        m: train(_cfg(f"progress-{m}", *base, f"algorithm.progress={m}"), comm, out=shared_tmp, stream=NULL)
        for m in ("test", "thread", "none")
    }
    for m in ("thread", "none"):
        assert_all(
            comm, np.array_equal(runs[m].params, runs["test"].params), f"progress={m} changed the model"
        )


def test_merge_uses_only_completed_averages(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    tau, d, steps = 4, 2, 30
    cfg = _cfg(
        "order", "algorithm.name=dasgd", f"algorithm.tau={tau}", f"algorithm.delay={d}", f"run.steps={steps}"
    )
    train(cfg, comm, out=shared_tmp, stream=NULL)
    problems: list[str] = []
    if comm.Get_rank() == 0:
        ev = load_run(shared_tmp / "order").events
        for r in range(comm.Get_size()):
            e = ev[r]
            kind = e["kind"].astype(str)
            merges = e[kind == "merge"]
            averages = e[kind == "iallreduce"]
            waits = e[kind == "wait"]
            want = [t for t in range(steps) if (t + 1 - d) % tau == 0 and t - d >= 0]
            if list(merges["step"]) != want:
                problems.append(f"rank {r}: merges at {list(merges['step'])}, expected {want}")
            for mg in merges:
                av = averages[averages["step"] == mg["step"] - d]
                wt = waits[waits["step"] == mg["step"]]
                if len(av) != 1 or len(wt) != 1:
                    problems.append(
                        f"rank {r}: merge at {mg['step']} has {len(av)} averages, {len(wt)} waits"
                    )
                elif not (av["t_end"][0] <= wt["t_end"][0] <= mg["t_start"]):
                    problems.append(f"rank {r}: merge at {mg['step']} began before its average completed")
            # every average but one left in flight at the end was started tau apart, d before its merge
            if list(averages["step"]) != [t for t in range(steps) if (t + 1) % tau == 0]:
                problems.append(f"rank {r}: averages started at {list(averages['step'])}")
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))


@pytest.mark.parametrize("codec", ["none", "qsgd"])
@pytest.mark.parametrize("progress", ["thread", "none"])
def test_progress_thread_completes_every_average_during_compute(
    comm: MPI.Comm, shared_tmp, progress: str, codec: str
) -> None:  # type: ignore[no-untyped-def]
    """With ``algorithm.progress = 'thread'`` every average completes while the rank
    computes its d local steps: the traced average span (``iallreduce``, or the
    compressed AllReduce's) ends before the ``wait`` of its merge begins, i.e. before
    ``finish`` is called. With 'none', the control, every one ends inside it. A span
    ends when a test or wait of the protocol *observes* completion: in these modes only
    the progress thread or ``finish`` does, whatever else calls MPI meanwhile.

    The workload is the timed model (each step sleeps ``compute_ms``), and the run
    evaluates right after each average starts (a collective: every rank has then posted
    its part), so a working thread has the d * compute_ms = 0.4 s of two steps for
    milliseconds of work. Fails if the progress thread is never started or never tests."""
    tau, d, steps = 3, 2, 12
    kinds = ["iallreduce"] if codec == "none" else ["compressed_allreduce"]  # the average's span
    name = f"overlap-{progress}-{codec}"
    cfg = _cfg(
        name,
        "model.name=timed",
        "model.params=4096",
        "model.compute_ms=200",
        "algorithm.name=dasgd",
        f"algorithm.tau={tau}",
        f"algorithm.delay={d}",
        f"algorithm.progress={progress}",
        f"compression.codec={codec}",
        f"run.steps={steps}",
        f"run.eval_every={tau}",  # right after the step that starts an average
    )
    train(cfg, comm, out=shared_tmp, stream=NULL)
    problems: list[str] = []
    if comm.Get_rank() == 0:
        ev = load_run(shared_tmp / name).events
        want = [t for t in range(steps) if (t + 1 - d) % tau == 0 and t - d >= 0]
        for r in range(comm.Get_size()):
            e = ev[r]
            k = e["kind"].astype(str)
            merges, averages, waits = e[k == "merge"], e[np.isin(k, kinds)], e[k == "wait"]
            if list(merges["step"]) != want:
                problems.append(f"rank {r}: merges at {list(merges['step'])}, expected {want}")
            for mg in merges:
                av = averages[averages["step"] == mg["step"] - d]
                wt = waits[waits["step"] == mg["step"]]
                if len(av) != 1 or len(wt) != 1:
                    problems.append(
                        f"rank {r}: merge at {mg['step']} has {len(av)} averages, {len(wt)} waits"
                    )
                elif (av["t_end"][0] < wt["t_start"][0]) != (progress == "thread"):
                    when = "inside" if progress == "thread" else "before"
                    problems.append(
                        f"rank {r}: the average merged at {mg['step']} completed {when} finish "
                        f"(ended {av['t_end'][0]:.4f}, finish called {wt['t_start'][0]:.4f})"
                    )
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))


def test_resume_mid_flight_ends_bit_for_bit(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    # tau = 4, d = 2: averages start at steps 3, 7, 11, ... and merge at 5, 9, 13, ...
    # Checkpoints every 5 steps: after step 4 (done = 5) the average of step 3 is in
    # flight, after 14 the one of 11 is, after 9 none is (it merged at 9).
    extra = [
        "algorithm.name=dasgd",
        "algorithm.tau=4",
        "algorithm.delay=2",
        "optimizer.name=nesterov",
        "model.dtype=float32",
        "run.steps=25",
        "checkpoint.every=5",
        "checkpoint.keep=10",
    ]
    full = train(_cfg("mid-full", *extra), comm, out=shared_tmp, stream=NULL)
    uninterrupted = train(
        _cfg("mid-plain", *extra[:-2], "checkpoint.every=0"), comm, out=shared_tmp, stream=NULL
    )
    assert_all(comm, np.array_equal(full.params, uninterrupted.params), "checkpointing changed the run")
    for s in (5, 10, 15):
        name = f"mid-resume-{s}"
        if comm.Get_rank() == 0:
            shutil.copytree(shared_tmp / "mid-full", shared_tmp / name)
            for p in (shared_tmp / name / "checkpoints").iterdir():
                if int(p.name[5:]) > s:
                    shutil.rmtree(p)
        comm.Barrier()
        res = train(_cfg(name, *extra), comm, out=shared_tmp, resume=True, stream=NULL)
        assert_all(comm, np.array_equal(res.params, full.params), f"resumed at {s}: final parameters differ")
