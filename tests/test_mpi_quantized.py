"""Quantized-PR-SGD on real ranks against serial float64 simulators of the paper's
Algorithm 1 (AllReduce) and Algorithm 2 (gossip, DCD copies), with the same random
streams; ``compression.codec`` with sgd, local_sgd, dasgd and dpsgd; bytes in the
trace; resume from checkpoints taken mid-period, error-feedback residual included."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from reference import small_job, workers  # tests/reference.py

from mpiml.algorithms.compression import STREAM, codec_from_config
from mpiml.config import load_config
from mpiml.io import load_run
from mpiml.testing import assert_all
from mpiml.topology import build_schedule
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test


def _cfg(name: str, *extra: str):  # type: ignore[no-untyped-def]
    return small_job(name, *extra, steps=26, eval_every=13)


def _local_steps(cfg, datas, model, xs):  # type: ignore[no-untyped-def]
    eta = cfg.optimizer.lr
    g = np.empty_like(xs[0])
    for j in range(len(xs)):
        xb, yb = datas[j].sampler.next()
        model.loss_and_grad(xs[j], xb, yb, g)
        xs[j] = xs[j] - eta * g


def simulate_algorithm1(cfg, m: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Algorithm 1 (pr_sgd / qpr_sgd), literally: K = tau local SGD steps from the
    anchor x~_n; g^(j) = Quantize(x~_n - x_{n;K}^(j)); Delta = mean_j g^(j) (rank
    order); x~_{n+1} = x~_n - Delta; every worker restarts from x~_{n+1}. Worker j's
    codec is seeded as rank j's is: (run.seed, STREAM, j, step)."""
    datas, model, x0 = workers(cfg, m)
    codecs = [codec_from_config(cfg) for _ in range(m)]
    anchor = x0.copy()
    xs = [x0.copy() for _ in range(m)]
    for t in range(cfg.run.steps):
        _local_steps(cfg, datas, model, xs)
        if (t + 1) % cfg.algorithm.tau == 0:
            decoded = []
            for j in range(m):
                g = anchor - xs[j]
                c = codecs[j]
                if c is None:
                    decoded.append(g)
                    continue
                c.reseed([cfg.run.seed, STREAM, j, t])
                decoded.append(c.decode(c.encode(g)))
            delta = decoded[0].copy()
            for g in decoded[1:]:
                delta += g
            delta /= m
            anchor -= delta
            xs = [anchor.copy() for _ in range(m)]
    return xs


def simulate_algorithm2(cfg, m: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Algorithm 2 (dqpr_sgd), literally, with every worker's copies x~^(j) of its
    neighbours: K local steps from x~^(m); x_half = sum_j W_mj x~^(j) - x~^(m) + x_K
    (line 7, j = m first, then ascending); g^(m) = Q(x~^(m) - x_half) (line 8);
    x~^(j) -= g^(j) for j = m and each neighbour (line 10); restart from x~^(m)."""
    datas, model, x0 = workers(cfg, m)
    codecs = [codec_from_config(cfg) for _ in range(m)]
    top = build_schedule(cfg.algorithm.topology, m).at(0)
    w_in = [sorted(top.weights_from(i).items()) for i in range(m)]
    own = [x0.copy() for _ in range(m)]
    copies = [{j: x0.copy() for j, _ in w_in[i]} for i in range(m)]
    xs = [x0.copy() for _ in range(m)]
    K = cfg.algorithm.tau
    for t in range(cfg.run.steps):
        _local_steps(cfg, datas, model, xs)
        if (t + 1) % K == 0:
            r = (t + 1) // K - 1
            dec = []
            for i in range(m):
                half = own[i] * top.self_weight(i)
                for j, w in w_in[i]:
                    half += copies[i][j] * w
                half -= own[i]
                half += xs[i]
                c = codecs[i]
                c.reseed([cfg.run.seed, STREAM, i, r])
                dec.append(c.decode(c.encode(own[i] - half)))
            for i in range(m):
                own[i] -= dec[i]
                for j, _ in w_in[i]:
                    copies[i][j] -= dec[j]
            xs = [o.copy() for o in own]
    return xs


def _equal_to(comm: MPI.Comm, got: np.ndarray, ref: np.ndarray, what: str) -> None:
    err = float(np.max(np.abs(got - ref)))
    assert_all(comm, np.array_equal(got, ref), f"{what}: not bit for bit (max diff {err:.3e})")


ALG1 = [
    ("qpr_sgd", "auto"),  # Quantized-PR-SGD: QSGD with Elias coding
    ("qpr_sgd", "qsgd_fixed"),
    ("qpr_sgd", "topk"),
    ("pr_sgd", "auto"),  # PR-SGD, uncompressed
    ("local_sgd", "qsgd"),  # local_sgd with a codec is Algorithm 1
]


@pytest.mark.parametrize(("alg", "codec"), ALG1, ids=[f"{a}-{c}" for a, c in ALG1])
def test_algorithm1_equals_serial_simulator(comm: MPI.Comm, shared_tmp, alg: str, codec: str) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(f"alg1-{alg}-{codec}", f"algorithm.name={alg}", f"compression.codec={codec}")
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    ref = simulate_algorithm1(cfg, comm.Get_size())[comm.Get_rank()]
    if alg == "pr_sgd" and comm.Get_size() > 2:
        # the plain AllReduce may associate the sum differently from rank order
        err = float(np.max(np.abs(res.params - ref)))
        assert_all(comm, err <= 1e-12 * float(np.max(np.abs(ref))), f"pr_sgd: {err:.3e}")
    else:
        _equal_to(comm, res.params, ref, f"{alg} with {codec}")
    # Algorithm 1 keeps every rank on the same model after the last average (step 23)
    # and the two local steps since then differ by rank: the test sees real drift
    spread = comm.allreduce(float(np.max(np.abs(res.params - comm.bcast(res.params, root=0)))), op=MPI.MAX)
    assert_all(comm, spread > 0, "no drift: the test could not fail")


@pytest.mark.parametrize("codec", ["auto", "identity", "topk"])
def test_algorithm2_equals_serial_simulator(comm: MPI.Comm, shared_tmp, codec: str) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(f"alg2-{codec}", "algorithm.name=dqpr_sgd", f"compression.codec={codec}")
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    ref = simulate_algorithm2(cfg, comm.Get_size())[comm.Get_rank()]
    _equal_to(comm, res.params, ref, f"dqpr_sgd with {codec}")
    spread = comm.allreduce(float(np.max(np.abs(res.params - comm.bcast(res.params, root=0)))), op=MPI.MAX)
    assert_all(comm, spread > 0, "all ranks ended identical: gossip would look like an average")


def test_dpsgd_with_a_codec_is_algorithm2_with_one_local_step(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    a = train(
        _cfg("dcd-dpsgd", "algorithm.name=dpsgd", "compression.codec=qsgd"), comm, out=shared_tmp, stream=NULL
    )
    cfg = _cfg("dcd-dqpr", "algorithm.name=dqpr_sgd", "algorithm.tau=1")
    b = train(cfg, comm, out=shared_tmp, stream=NULL)
    _equal_to(comm, a.params, b.params, "dpsgd+qsgd vs dqpr_sgd(tau=1)")


def test_qsgd_equals_sgd_on_decoded_gradients(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg("qsgd", "algorithm.name=qsgd")
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    m, eta = comm.Get_size(), cfg.optimizer.lr
    datas, model, x0 = workers(cfg, m)
    codecs = [codec_from_config(cfg) for _ in range(m)]
    x = x0.copy()
    g = np.empty_like(x)
    scale = 1.0 / (cfg.data.batch_size * m)
    for t in range(cfg.run.steps):
        dec = []
        for j in range(m):
            xb, yb = datas[j].sampler.next()
            model.loss_and_grad(x, xb, yb, g, scale)
            codecs[j].reseed([cfg.run.seed, STREAM, j, t])
            dec.append(codecs[j].decode(codecs[j].encode(g)))
        total = dec[0].copy()
        for y in dec[1:]:
            total += y
        x = x - eta * total
    _equal_to(comm, res.params, x, "qsgd")


@pytest.mark.parametrize("codec", ["identity", "qsgd"])
def test_dasgd_with_a_codec_averages_differences_from_the_last_average(
    comm: MPI.Comm, shared_tmp, codec: str
) -> None:  # type: ignore[no-untyped-def]
    extra = ["algorithm.name=dasgd", "algorithm.tau=4", "algorithm.delay=1", "algorithm.xi=0.25"]
    plain = train(_cfg("dasgd-plain", *extra), comm, out=shared_tmp, stream=NULL)
    comp = train(
        _cfg(f"dasgd-{codec}", *extra, f"compression.codec={codec}"), comm, out=shared_tmp, stream=NULL
    )
    err = float(np.max(np.abs(comp.params - plain.params)))
    scale = float(np.max(np.abs(plain.params)))
    if codec == "identity":  # r + mean(y - r) = mean(y) up to rounding
        assert_all(comm, err <= 1e-12 * scale, f"dasgd identity vs plain: {err:.3e}")
    else:  # quantized: different, but close and still training
        assert_all(comm, 0 < err <= 0.5 * scale, f"dasgd qsgd vs plain: {err:.3e} (scale {scale:.3f})")


def test_trace_counts_the_bytes_actually_sent(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    runs = {
        a: train(_cfg(f"bytes-{a}", f"algorithm.name={a}"), comm, out=shared_tmp, stream=NULL)
        for a in ("pr_sgd", "qpr_sgd", "dqpr_sgd")
    }
    problems: list[str] = []
    if comm.Get_rank() == 0:
        n = comm.Get_size()
        d = runs["pr_sgd"].params.size
        for alg, kind in (("qpr_sgd", "compressed_allreduce"), ("dqpr_sgd", "compressed_gossip")):
            run = load_run(shared_tmp / f"bytes-{alg}")
            total = 0
            with h5py.File(shared_tmp / f"bytes-{alg}" / "run.h5", "r") as f:
                per_rank = [int(f[f"ranks/{r}/bytes_sent"]["bytes"][-1]) for r in range(n)]
            for r in range(n):
                e = run.events[r]
                kinds = e["kind"].astype(str)
                msgs = e[kinds == kind]
                enc = e[kinds == "encode"]
                if len(msgs) != 26 // 4 or len(enc) != len(msgs):
                    problems.append(f"{alg} rank {r}: {len(msgs)} {kind} and {len(enc)} encode events")
                if not np.all(msgs["nbytes"] > 0) or not np.all(msgs["nbytes"] < 8 * d // 4):
                    problems.append(f"{alg} rank {r}: message sizes {list(msgs['nbytes'])} vs {8 * d} raw")
                mine = int(np.sum(msgs["nbytes"]))  # gossip: out-degree x (payload + 8)
                if alg == "qpr_sgd":
                    mine += 8 * len(msgs)  # the length sent first
                if per_rank[r] != mine:
                    problems.append(
                        f"{alg} rank {r}: /ranks/{r}/bytes_sent ends at {per_rank[r]}, events say {mine}"
                    )
                total += mine
            got = float(run.metrics["bytes_sent"]["value"][-1])  # the evaluation's sums are not counted
            if got != total:
                problems.append(f"{alg}: metric bytes_sent {got} != {total} summed from the events")
        plain = float(load_run(shared_tmp / "bytes-pr_sgd").metrics["bytes_sent"]["value"][-1])
        quant = float(load_run(shared_tmp / "bytes-qpr_sgd").metrics["bytes_sent"]["value"][-1])
        if not quant < 0.25 * plain:
            problems.append(f"qpr_sgd sent {quant} bytes, pr_sgd {plain}: not compressed")
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))


RESUME = [
    ("qpr_sgd", "topk", True),  # error feedback: the residual is checkpointed
    ("dqpr_sgd", "auto", False),  # the DCD copies
    ("dasgd", "qsgd", True),  # the reference, an average in flight, the residual
    ("sgd", "sign", True),
]


@pytest.mark.parametrize(("alg", "codec", "ef"), RESUME, ids=[f"{a}-{c}-ef{int(e)}" for a, c, e in RESUME])
def test_resume_mid_period_ends_bit_for_bit(
    comm: MPI.Comm, shared_tmp, alg: str, codec: str, ef: bool
) -> None:  # type: ignore[no-untyped-def]
    extra = [
        f"algorithm.name={alg}",
        f"compression.codec={codec}",
        f"compression.error_feedback={str(ef).lower()}",
        "algorithm.tau=4",
        "algorithm.delay=2",
        "optimizer.name=nesterov",
        "model.dtype=float32",
        "run.steps=22",
    ]
    tag = f"{alg}-{codec}-{int(ef)}"
    full = train(
        _cfg(f"r-full-{tag}", *extra, "checkpoint.every=5", "checkpoint.keep=10"),
        comm,
        out=shared_tmp,
        stream=NULL,
    )
    plain = train(_cfg(f"r-plain-{tag}", *extra), comm, out=shared_tmp, stream=NULL)
    _equal_to(comm, full.params, plain.params, "checkpointing changed the run")
    for s in (5, 10, 15):  # mid-period: tau = 4
        name = f"r-{s}-{tag}"
        if comm.Get_rank() == 0:
            shutil.copytree(shared_tmp / f"r-full-{tag}", shared_tmp / name)
            for p in (shared_tmp / name / "checkpoints").iterdir():
                if int(p.name[5:]) > s:
                    shutil.rmtree(p)
        comm.Barrier()
        res = train(
            _cfg(name, *extra, "checkpoint.every=5", "checkpoint.keep=10"),
            comm,
            out=shared_tmp,
            resume=True,
            stream=NULL,
        )
        _equal_to(comm, res.params, full.params, f"resumed at {s}")


@pytest.mark.parametrize("alg", ["qpr_sgd", "dqpr_sgd", "qsgd"])
def test_quantized_algorithms_train(comm: MPI.Comm, shared_tmp, alg: str) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(
        None,
        [
            f"run.name=train-{alg}",
            f"algorithm.name={alg}",
            "run.steps=300",
            "run.eval_every=100",
            "optimizer.name=sgd",
            "optimizer.lr=0.1",
        ],
    )
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    acc = res.accuracy
    assert_all(comm, acc >= 0.9, f"{alg}: test accuracy {acc:.3f} after 300 steps")


def test_resume_from_a_checkpoint_written_before_difference_average(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """Checkpoints written before the anchor moved into DifferenceAverage held it as
    ``prsgd/anchor``; they still resume, bit for bit."""
    from mpiml.io import checkpoint as ckpt

    extra = ["algorithm.name=qpr_sgd", "algorithm.tau=4", "run.steps=12", "checkpoint.keep=10"]
    full = train(_cfg("old-full", *extra, "checkpoint.every=6"), comm, out=shared_tmp, stream=NULL)
    if comm.Get_rank() == 0:
        shutil.copytree(shared_tmp / "old-full", shared_tmp / "old-cut")
        shutil.rmtree(shared_tmp / "old-cut" / "checkpoints" / "step-000000012")
    comm.Barrier()
    root = shared_tmp / "old-cut" / "checkpoints"
    arrays, meta = ckpt.read_rank(ckpt.rank_path(root, 6, comm.Get_rank()))
    arrays["prsgd/anchor"] = arrays.pop("difference/reference")  # the old key
    ckpt.write_rank(root, 6, comm.Get_rank(), arrays, meta)
    comm.Barrier()
    res = train(_cfg("old-cut", *extra, "checkpoint.every=6"), comm, out=shared_tmp, resume=True, stream=NULL)
    _equal_to(comm, res.params, full.params, "resumed from an old-format checkpoint")


@pytest.mark.parametrize("alg", ["qpr_sgd", "dqpr_sgd"])
def test_codec_time_has_its_own_kinds_and_compiles_before_step_one(
    comm: MPI.Comm, shared_tmp, alg: str
) -> None:
    """encode and decode are category codec (not compute, not communication), the
    codec's kernels are readied once per rank at set-up (codec_compile, step -1, ended
    before the rank's first training event), and the progress columns keep them apart."""
    from mpiml.kinds import kinds_in
    from mpiml.run import console

    name = f"codec-kinds-{alg}"
    train(_cfg(name, f"algorithm.name={alg}"), comm, out=shared_tmp, stream=NULL)
    problems: list[str] = []
    if comm.Get_rank() == 0:
        run = load_run(shared_tmp / name)
        cats = run.kinds
        if not (cats["encode"] == cats["decode"] == "codec" and cats["codec_compile"] == "bookkeeping"):
            problems.append(f"categories {cats}")
        comm_kinds = kinds_in("communication", kinds=cats)
        if {"encode", "decode", "codec_compile"} & comm_kinds:
            problems.append(f"communication kinds {sorted(comm_kinds)} hold codec work")
        for r, e in run.events.items():
            kinds = e["kind"].astype(str)
            compiled = e[kinds == "codec_compile"]
            train_rows = e[~np.isin(kinds, sorted(kinds_in("bookkeeping", kinds=cats)))]
            if len(compiled) != 1 or int(compiled["step"][0]) != -1:
                problems.append(f"rank {r}: codec_compile events {compiled}")
            elif not compiled["t_end"][0] <= train_rows["t_start"].min():
                problems.append(f"rank {r}: codec_compile ends after the first training event")
            if not (np.count_nonzero(kinds == "encode") and np.count_nonzero(kinds == "decode")):
                problems.append(f"rank {r}: no encode/decode events")
    # the console's columns: codec apart from compute and comm
    from mpiml.trace import Trace

    tr = Trace()
    tr.record(0, "encode", 0.0, 2.0)
    tr.record(0, "decode", 2.0, 3.0)
    tr.record(-1, "codec_compile", -5.0, -1.0)
    t = console.times(tr)
    if (t["codec"], t["compute"], t["comm"], t["codec_compile"]) != (3.0, 0.0, 0.0, 4.0):
        problems.append(f"console columns {t}")
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))
