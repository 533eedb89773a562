"""Pipelines trained on real ranks against unpipelined and serial oracles (issue 13):

- GPipe and 1F1B with one micro-batch are minibatch SGD bit for bit (every stage repeats
  mlp.py's operations in mlp.py's order; 0 + g is g); with m micro-batches the gradient
  is the same sum in another order: within 1e-12 after a step (float64);
- with P = 2 pipelines they are 2-replica ``sgd`` (AllReduce of the stage gradients);
- DSP with all staleness 0 is sequential backprop = ``sgd`` on one rank, bit for bit;
- DSP with staleness equals the serial float64 simulator of the paper's update
  (tests/dsp_reference.py) with the same data order, bit for bit, for the paper's K = 3
  and 4 configurations, with SUM momentum, and with P = 2.

Every test runs its job on the first n ranks of one 4-rank launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dsp_reference import dsp_reference  # tests/dsp_reference.py
from mpi4py import MPI
from ps_ranks import train_on  # tests/ps_ranks.py
from reference import small_job  # tests/reference.py

from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=4)
RANK_COUNTS = (4,)

HIDDEN = "model.hidden=[12, 10, 8, 6]"  # 5 layers: K = 2..5 stages


def _job(name: str, *extra: str, steps: int = 12) -> Any:
    return small_job(
        name, "model.name=mlp", HIDDEN, "model.activation=tanh", *extra, steps=steps, eval_every=6
    )


def _pipeline_model(comm: MPI.Comm, res: Any, n: int, K: int) -> list[np.ndarray]:
    """Each pipeline's whole parameters (its stages' slices in order), on every rank."""
    got = comm.allgather(res.params if res is not None else None)[:n]
    return [np.concatenate(got[q * K : (q + 1) * K]) for q in range(n // K)]


def _same(comm: MPI.Comm, got: np.ndarray, ref: np.ndarray, what: str, tol: float = 0.0) -> None:
    ok = got.shape == ref.shape and (
        np.array_equal(got, ref) if tol == 0 else np.allclose(got, ref, rtol=0, atol=tol)
    )
    diff = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else float("inf")
    assert_all(comm, ok, f"{what}: max |diff| = {diff:.3e} (tolerance {tol})")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("K", [2, 4])
def test_one_micro_batch_is_sgd_bit_for_bit(comm: MPI.Comm, shared_tmp: Path, schedule: str, K: int) -> None:
    extra = ["optimizer.name=nesterov", "optimizer.lr=0.05"]
    pipe = _job(
        f"{schedule}{K}",
        f"algorithm.name={schedule}",
        f"algorithm.stages={K}",
        "algorithm.micro_batches=1",
        *extra,
    )
    sgd = _job(f"sgd{K}", "algorithm.name=sgd", *extra)
    res = train_on(comm, K, pipe, shared_tmp)
    ref = train_on(comm, 1, sgd, shared_tmp)
    (got,) = _pipeline_model(comm, res, K, K)
    want = comm.bcast(ref.params if ref is not None else None, root=0)
    _same(comm, got, want, f"{schedule} K={K} m=1 vs sgd")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("K,m", [(2, 4), (4, 2), (4, 8)])
def test_micro_batches_give_the_minibatch_gradient(
    comm: MPI.Comm, shared_tmp: Path, schedule: str, K: int, m: int
) -> None:
    """One step from x_0: x_1 = x_0 - lr g, so (x_1 - x_1') / lr is the gradient's error."""
    lr = 0.5
    extra = [f"optimizer.lr={lr}", "run.eval_every=1"]
    pipe = _job(
        f"{schedule}{K}m{m}",
        f"algorithm.name={schedule}",
        f"algorithm.stages={K}",
        f"algorithm.micro_batches={m}",
        *extra,
        steps=1,
    )
    sgd = _job("sgd1", "algorithm.name=sgd", *extra, steps=1)
    res = train_on(comm, K, pipe, shared_tmp)
    ref = train_on(comm, 1, sgd, shared_tmp)
    (got,) = _pipeline_model(comm, res, K, K)
    want = comm.bcast(ref.params if ref is not None else None, root=0)
    _same(comm, got / lr, want / lr, f"{schedule} K={K} m={m} gradient vs the minibatch's", tol=1e-12)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "dsp"])
def test_two_pipelines_are_two_replica_sgd(comm: MPI.Comm, shared_tmp: Path, schedule: str) -> None:
    """P = 2, K = 2 (4 ranks) with m = 1 (and DSP with staleness 0) vs ``sgd`` on 2 ranks:
    pipeline q reads data shard q, the stage replicas sum their gradients (each scaled
    1/(batch * 2)) before the update, as sgd's AllReduce does: bit for bit; and the two
    pipelines' models are identical."""
    alg = [f"algorithm.name={schedule}", "algorithm.stages=2", "algorithm.pipelines=2"]
    alg += (
        ["algorithm.dsp_p=[0, 0]", "algorithm.dsp_m=[0, 0]"]
        if schedule == "dsp"
        else ["algorithm.micro_batches=1"]
    )
    extra = ["optimizer.name=momentum", "optimizer.lr=0.05"]
    res = train_on(comm, 4, _job(f"{schedule}P2", *alg, *extra), shared_tmp)
    ref = train_on(comm, 2, _job("sgdP2", "algorithm.name=sgd", *extra), shared_tmp)
    a, b = _pipeline_model(comm, res, 4, 2)
    want = comm.bcast(ref.params if ref is not None else None, root=0)
    _same(comm, a, b, f"{schedule}: pipeline 0 vs pipeline 1")
    _same(comm, a, want, f"{schedule} P=2 K=2 vs sgd on 2 ranks")


@pytest.mark.parametrize("K", [2, 4])
def test_dsp_without_staleness_is_backprop(comm: MPI.Comm, shared_tmp: Path, K: int) -> None:
    zeros = "[" + ", ".join("0" * K) + "]"
    extra = ["optimizer.name=momentum", "optimizer.lr=0.05"]
    dsp = _job(
        f"dsp0K{K}",
        "algorithm.name=dsp",
        f"algorithm.stages={K}",
        f"algorithm.dsp_p={zeros}",
        f"algorithm.dsp_m={zeros}",
        *extra,
    )
    res = train_on(comm, K, dsp, shared_tmp)
    ref = train_on(comm, 1, _job("bp", "algorithm.name=sgd", *extra), shared_tmp)
    (got,) = _pipeline_model(comm, res, K, K)
    want = comm.bcast(ref.params if ref is not None else None, root=0)
    _same(comm, got, want, f"dsp(0..0; 0..0) K={K} vs sgd on one rank")


@pytest.mark.parametrize(
    "K,p,m,optimizer",
    [
        (2, "[1, 0]", "[2, 0]", "sgd"),
        (3, "[1, 1, 0]", "[4, 2, 0]", "momentum"),
        (3, "[2, 2, 0]", "[6, 3, 0]", "nesterov"),
        (3, "[3, 3, 0]", "[10, 5, 0]", "momentum"),
        (4, "[1, 1, 1, 0]", "[6, 4, 2, 0]", "momentum"),
        (4, "[2, 2, 2, 0]", "[9, 6, 3, 0]", "sgd"),
        (4, "[3, 3, 3, 0]", "[15, 10, 5, 0]", "nesterov"),
    ],
)
def test_dsp_equals_the_serial_simulator(
    comm: MPI.Comm, shared_tmp: Path, K: int, p: str, m: str, optimizer: str
) -> None:
    """DSP(p; m) on K ranks ends bit for bit where tests/dsp_reference.py ends, and the
    last stage's losses are the simulator's; staleness makes it differ from backprop."""
    cfg = _job(
        f"dsp{K}{p}{m}",
        "algorithm.name=dsp",
        f"algorithm.stages={K}",
        f"algorithm.dsp_p={p}",
        f"algorithm.dsp_m={m}",
        f"optimizer.name={optimizer}",
        "optimizer.lr=0.05",
        steps=15,
    )
    res = train_on(comm, K, cfg, shared_tmp)
    (got,) = _pipeline_model(comm, res, K, K)
    ref, _ = dsp_reference(cfg) if comm.Get_rank() == 0 else (None, None)
    want = comm.bcast(ref[0] if ref is not None else None, root=0)
    _same(comm, got, want, f"DSP{p};{m} vs the serial simulator")
    bp = (
        dsp_reference(
            _job(
                "bp",
                "algorithm.name=dsp",
                f"algorithm.stages={K}",
                f"algorithm.dsp_p=[{', '.join('0' * K)}]",
                f"algorithm.dsp_m=[{', '.join('0' * K)}]",
                f"optimizer.name={optimizer}",
                "optimizer.lr=0.05",
                steps=15,
            )
        )[0][0]
        if comm.Get_rank() == 0
        else None
    )
    stale = comm.bcast(bp is not None and not np.array_equal(bp, want), root=0)
    assert_all(comm, stale, "the staleness changed nothing: the test would not see it ignored")


def test_dsp_two_pipelines_equal_the_simulator(comm: MPI.Comm, shared_tmp: Path) -> None:
    """DSP(1,0; 2,0) on P = 2 pipelines of K = 2: both pipelines end where the simulator's
    pipelines end (their stage replicas sum gradients before every update)."""
    cfg = _job(
        "dspP2",
        "algorithm.name=dsp",
        "algorithm.stages=2",
        "algorithm.pipelines=2",
        "algorithm.dsp_p=[1, 0]",
        "algorithm.dsp_m=[2, 0]",
        "optimizer.name=momentum",
        "optimizer.lr=0.05",
        steps=15,
    )
    res = train_on(comm, 4, cfg, shared_tmp)
    got = _pipeline_model(comm, res, 4, 2)
    ref = dsp_reference(cfg, P=2)[0] if comm.Get_rank() == 0 else None
    want = comm.bcast(ref, root=0)
    for q in range(2):
        _same(comm, got[q], want[q], f"DSP P=2: pipeline {q} vs the simulator")
