"""``async_ps`` trained on real ranks against serial oracles: one worker is serial SGD,
staleness 0 is synchronous minibatch SGD, any asynchronous run is the serial replay
of its servers' apply logs (tests/ps_replay.py); the metrics it records; accuracy.

Every test runs its job on the first n ranks of the launch (a sub-communicator; the
other ranks wait for the collective verdict), so one launch on 4 ranks covers the
layouts of 2, 3 and 4 ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from ps_ranks import check_on_rank_0, gather_model, paced, train_on  # tests/ps_ranks.py
from ps_replay import ReplayError, read_apply_logs, replay  # tests/ps_replay.py
from reference import small_job  # tests/reference.py

from mpiml.config import load_config
from mpiml.data import build_data
from mpiml.io import load_run
from mpiml.io.runfile import rank_file_name
from mpiml.models import build_model
from mpiml.optim import build_optimizer
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=4)
RANK_COUNTS = (4,)  # conftest: one launch; each test picks its ranks


def _ps_job(name: str, servers: int, *extra: str, steps: int = 30, eval_every: int = 10) -> Any:
    """small_job (float64, batch 8, Dirichlet shards, plain SGD) as async_ps."""
    return small_job(
        name,
        "algorithm.name=async_ps",
        f"algorithm.servers={servers}",
        *extra,
        steps=steps,
        eval_every=eval_every,
    )


def _model_and_data(cfg: Any, w: int) -> tuple[Any, list, np.ndarray]:
    datas = [build_data(cfg, i, w) for i in range(w)]
    m = cfg.model
    model = build_model(m.name, datas[0].n_features, datas[0].n_classes, m.hidden, m.activation, m.dtype)
    x0 = model.init(np.random.default_rng(np.random.SeedSequence([cfg.run.seed, 0])), np, m.init_scale)
    return model, datas, x0


# ---- 1. one worker, one server = serial SGD ------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov"])
def test_one_worker_one_server_equals_sgd_on_one_rank(
    comm: MPI.Comm, shared_tmp: Path, optimizer: str
) -> None:
    """2 ranks (worker, server) end bit for bit where ``sgd`` on 1 rank ends: the same
    minibatches, the gradient pushed as it is (scale 1/(batch * 1)), the optimizer and
    its state (nesterov: SUM's ys) applied on the server. float32, the default job."""
    extra = [
        "run.steps=40",
        "run.eval_every=20",
        "checkpoint.every=0",
        f"optimizer.name={optimizer}",
        "optimizer.lr=0.05",
    ]
    ps = load_config(None, ["run.name=ps", "algorithm.name=async_ps", *extra])
    sgd = load_config(None, ["run.name=sgd", "algorithm.name=sgd", *extra])
    a = train_on(comm, 2, ps, shared_tmp)
    b = train_on(comm, 1, sgd, shared_tmp)
    server, (worker,) = gather_model(comm, a, 2, 1)
    ref = comm.bcast(b.params if b is not None else None, root=0)
    assert_all(comm, server.dtype == np.float32 and ref.size == server.size, "dtype or size")
    assert_all(
        comm, np.array_equal(server, ref), f"server != sgd: max diff {np.max(np.abs(server - ref)):.3e}"
    )
    assert_all(comm, np.array_equal(worker, ref), "the worker's final model != sgd")
    accs = comm.bcast((a.accuracy, b.accuracy) if comm.Get_rank() == 0 else None, root=0)
    assert_all(comm, accs[0] == accs[1], f"accuracy {accs[0]} != sgd's {accs[1]}")


# ---- 2. staleness 0 = synchronous minibatch SGD (and 7: its metrics) -------------------


def _sync_reference(cfg: Any, w: int) -> tuple[np.ndarray, dict[int, tuple[float, float, float]]]:
    """Synchronous minibatch SGD in float64, literally: at every step each worker i =
    0..W-1 draws its next minibatch and computes g_i = grad f_i(x) / (batch * W); the
    sum ((g_0 + g_1) + g_2) + ... in worker order is one optimizer step. Returns the
    final x and, per evaluation step k, (accuracy, test loss, loss) of the model after
    k steps: test sums per worker slice added in worker order, the minibatch loss
    averaged over the workers and the steps since the previous evaluation."""
    model, datas, x = _model_and_data(cfg, w)
    opt = build_optimizer(cfg.optimizer)
    state = opt.init(x)
    scale = 1.0 / (cfg.data.batch_size * w)
    g, acc = np.empty_like(x), np.empty_like(x)
    metrics, loss_sum, loss_n = {}, 0.0, 0
    for k in range(1, cfg.run.steps + 1):
        for i, d in enumerate(datas):
            xb, yb = d.sampler.next()
            loss_sum += model.loss_and_grad(x, xb, yb, g, scale)
            loss_n += 1
            if i == 0:
                acc[...] = g
            else:
                acc += g
        opt.step(x, acc, state)
        if k % cfg.run.eval_every == 0 or k == cfg.run.steps:
            sums = [model.eval_sums(x, d.x_test, d.y_test) for d in datas]
            rows = sum(d.n_test_local for d in datas)
            metrics[k] = (sum(c for _, c in sums) / rows, sum(t for t, _ in sums) / rows, loss_sum / loss_n)
            loss_sum, loss_n = 0.0, 0
    return x, metrics


BSP = [(3, 1, "sgd"), (4, 1, "nesterov"), (4, 2, "nesterov"), (4, 2, "adam")]


@pytest.mark.parametrize(("n", "servers", "optimizer"), BSP, ids=[f"n{n}-S{s}-{o}" for n, s, o in BSP])
def test_staleness_0_equals_synchronous_minibatch_sgd(
    comm: MPI.Comm, shared_tmp: Path, n: int, servers: int, optimizer: str
) -> None:
    """Staleness 0 (BSP), W = n - S workers: bit for bit the float64 reference above.
    Order: each server adds the clock's W pushed gradient slices in worker order
    0, 1, ..., W-1 (the first copied, the others added one by one), then applies one
    optimizer step to its shard; elementwise, that is the reference's order on the
    whole vector. The recorded accuracy at every evaluation step k is the reference
    model's after k steps, exactly (integer counts); test loss and loss to 1e-12
    (the coordinator adds the workers' sums in arrival order)."""
    lr = "optimizer.lr=0.01" if optimizer == "adam" else "optimizer.lr=0.1"
    cfg = _ps_job(
        f"bsp-{n}-{servers}-{optimizer}", servers, "algorithm.staleness=0", f"optimizer.name={optimizer}", lr
    )
    res = train_on(comm, n, cfg, shared_tmp)
    model, workers = gather_model(comm, res, n, servers)
    ref, metrics = _sync_reference(cfg, n - servers)
    assert_all(
        comm, np.array_equal(model, ref), f"servers != reference: max diff {np.max(np.abs(model - ref)):.3e}"
    )
    assert_all(comm, all(np.array_equal(x, ref) for x in workers), "a worker's final model != reference")

    def check() -> list[str]:
        run = load_run(shared_tmp / cfg.run.name)
        steps, acc = run.metric("accuracy")
        bad = []
        if list(steps) != sorted(metrics):
            bad.append(f"accuracy recorded at steps {list(steps)}, expected {sorted(metrics)}")
        for name, col, tol in (("accuracy", 0, 0.0), ("test_loss", 1, 1e-12), ("loss", 2, 1e-12)):
            s, v = run.metric(name)
            for k, got in zip(s, v, strict=True):
                if int(k) not in metrics:
                    bad.append(f"{name} recorded at step {k}: not an evaluation step")
                    continue
                want = metrics[int(k)][col]
                if abs(got - want) > tol * abs(want):
                    bad.append(f"{name} at step {k}: {got!r} != reference {want!r}")
        logs = read_apply_logs(shared_tmp / cfg.run.name, n, servers)
        for log in logs:
            if np.any(log["version"] != log["version_read"]):
                bad.append("staleness 0 run logged a stale update")
            if len(log) != (n - servers) * cfg.run.steps or set(log["version"]) != set(range(cfg.run.steps)):
                bad.append(f"apply log of {len(log)} rows, versions {sorted(set(log['version']))[:5]}...")
        # the replay oracle reads a BSP log too (the rows of one version: one summed update)
        if not np.array_equal(np.concatenate(replay(cfg, logs, n - servers)), ref):
            bad.append("the replay of the BSP log != reference")
        return bad

    check_on_rank_0(comm, check)


# ---- 3. any interleaving = the serial replay of the apply log --------------------------

ASYNC = [
    # (ranks, servers, staleness, push, tau, optimizer, checkpoint.every)
    (3, 1, -1, "gradient", 1, "nesterov", 0),
    (4, 1, -1, "gradient", 1, "adam", 0),
    (4, 2, -1, "gradient", 1, "nesterov", 0),
    (4, 2, 1, "gradient", 1, "sgd", 0),
    (4, 2, 2, "gradient", 1, "nesterov", 0),
    (3, 1, -1, "delta", 3, "nesterov", 0),
    (4, 2, 1, "delta", 2, "sgd", 0),
    (3, 1, -1, "gradient", 1, "nesterov", 8),  # checkpoints at 8 and 16: quiesced, the run goes on
    (3, 1, -1, "delta", 3, "sgd", 8),
]

ASYNC_PARAMS = ASYNC  # with checkpoints too: the push after one logs the version its model was read at


@pytest.mark.parametrize(
    ("n", "servers", "staleness", "push", "tau", "optimizer", "every"),
    ASYNC_PARAMS,
    ids=[
        f"n{a[0]}-S{a[1]}-s{a[2]}-{a[3]}{a[4] if a[3] == 'delta' else ''}-{a[5]}{f'-every{a[6]}' if a[6] else ''}"
        for a in ASYNC
    ],
)
def test_an_asynchronous_run_is_the_serial_replay_of_its_apply_log(
    comm: MPI.Comm,
    shared_tmp: Path,
    n: int,
    servers: int,
    staleness: int,
    push: str,
    tau: int,
    optimizer: str,
    every: int,
) -> None:
    """Whatever order the servers applied the pushes in, a serial replay of their
    ps_apply logs (tests/ps_replay.py: each push recomputed at the shard versions its
    worker read, with its own minibatches) gives their final shards bit for bit
    (float32, the job's optimizer on the servers in gradient mode, on the workers in
    delta mode). Worker 1's first gradient waits until worker 0 has started its
    min(s + 1, 3)-th: some update is applied stale (checked), so the log's reads
    matter: a replay that reads the newest version instead must not match."""
    lr = "optimizer.lr=0.01" if optimizer == "adam" else "optimizer.lr=0.05"
    cfg = load_config(
        None,
        [
            f"run.name=async-{n}-{servers}-{staleness}-{push}-{optimizer}",
            "algorithm.name=async_ps",
            f"algorithm.servers={servers}",
            f"algorithm.push={push}",
            f"algorithm.tau={tau}",
            "run.steps=24",
            "run.eval_every=12",
            f"checkpoint.every={every}",
            "data.batch_size=8",
            f"optimizer.name={optimizer}",
            lr,
            *([f"algorithm.staleness={staleness}"] if staleness >= 0 else []),  # omitted: no bound
        ],
    )
    w = n - servers
    first = min(staleness + 1, 3) if staleness >= 0 else 3
    if push == "delta":
        # worker 0 pushes every tau steps; its pull at clock c is answered while c <= s
        first = tau * (min(staleness, 2) if staleness >= 0 else 2) + 1
    with paced(comm, shared_tmp, {1: first}):
        res = train_on(comm, n, cfg, shared_tmp)
    model, workers = gather_model(comm, res, n, servers)

    def check() -> list[str]:
        logs = read_apply_logs(shared_tmp / cfg.run.name, n, servers)
        shards = replay(cfg, logs, w)
        got = np.concatenate(shards)
        bad = []
        if not np.array_equal(got, model):
            bad.append(f"replay != servers: max diff {np.max(np.abs(got - model)):.3e}")
        if not all(np.array_equal(x, model) for x in workers):
            bad.append("a worker's final model != the servers'")
        pushes = w * (cfg.run.steps // tau)
        if any(len(log) != pushes for log in logs):
            bad.append(f"logs of {[len(log) for log in logs]} rows, expected {pushes} each")
        stale = int(max(np.max(log["version"] - log["version_read"]) for log in logs))
        if stale < 1:
            bad.append("no update was applied stale: the pacing did not take")
        if staleness >= 0:  # the SSP bound, seen from the pulls: step - slowest <= s
            for r in range(n - servers, n):
                with h5py.File(shared_tmp / cfg.run.name / rank_file_name(r), "r") as f:
                    pulls = f["ps_pull"][()]
                if np.any(pulls["clock"] - pulls["slowest"] > staleness):
                    bad.append(f"server rank {r} answered a pull beyond the bound {staleness}")
        fresh = [log.copy() for log in logs]  # the control: every push read the newest version
        for log in fresh:
            log["version_read"] = log["version"]
        try:
            wrong = np.concatenate(replay(cfg, fresh, w))
            if np.array_equal(wrong, model):
                bad.append("a replay that ignores the logged reads matches too: the oracle is blind")
        except ReplayError:
            pass  # a replay that ignores the reads may not even be causal: blind it is not
        return bad

    check_on_rank_0(comm, check)


# ---- 7. evaluation does not couple the workers ----------------------------------------


def test_evaluations_are_recorded_without_coupling_the_workers(comm: MPI.Comm, shared_tmp: Path) -> None:
    """3 workers, 1 server, no staleness bound, run.eval_every = 5 of 30 steps: worker 1
    does not start its first step until worker 0 has started its last, so worker 0
    passes every evaluation step (5, ..., 25) while worker 1 has done none (a
    collective evaluation, or any wait for the other workers, would hang here: the
    test fails after HOLD_TIMEOUT, tests/ps_ranks.py). Every evaluation is still recorded in the run file,
    once, at its step, with finite loss, test loss and accuracy."""
    cfg = _ps_job("uncoupled", 1, "run.steps=30", "run.eval_every=5", steps=30, eval_every=5)
    with paced(comm, shared_tmp, {1: 30, 2: 30}):
        train_on(comm, 4, cfg, shared_tmp)

    def check() -> list[str]:
        run = load_run(shared_tmp / "uncoupled")
        bad = []
        for name in ("loss", "test_loss", "accuracy"):
            s, v = run.metric(name)
            if list(s) != list(range(5, 35, 5)) or not np.all(np.isfinite(v)):
                bad.append(f"{name}: steps {list(s)}, values {list(v)}")
        with h5py.File(shared_tmp / "uncoupled" / rank_file_name(3), "r") as f:
            pulls = f["ps_pull"][()]
        ahead = pulls["clock"][pulls["worker"] == 0] - pulls["slowest"][pulls["worker"] == 0]
        if ahead.max() < 25:
            bad.append(f"worker 0 was at most {ahead.max()} pushes ahead of the slowest")
        return bad

    check_on_rank_0(comm, check)


# ---- 4. accuracy --------------------------------------------------------------------


def test_digits_reaches_95_percent_with_one_server_and_three_workers(
    comm: MPI.Comm, shared_tmp: Path
) -> None:
    """The default job (mlp on digits, nesterov lr 0.05, batch 16, 600 steps) as
    async_ps on 4 ranks, 1 server, no staleness bound: >= 0.95 test accuracy at the end."""
    cfg = load_config(None, ["run.name=acc", "algorithm.name=async_ps", "checkpoint.every=0"])
    res = train_on(comm, 4, cfg, shared_tmp)
    acc = comm.bcast(res.accuracy if res is not None and comm.Get_rank() == 0 else None, root=0)
    if comm.Get_rank() == 0:
        steps, v = load_run(shared_tmp / "acc").metric("accuracy")
        first = next((int(s) for s, a in zip(steps, v, strict=True) if a >= 0.95), None)
        print(
            f"\nasync_ps 1 server + 3 workers: accuracy {acc:.4f} at 600 steps; >= 0.95 first at step {first}"
        )
    assert_all(comm, cfg.run.steps == 600 and acc >= 0.95, f"test accuracy {acc:.4f} < 0.95 after 600 steps")
