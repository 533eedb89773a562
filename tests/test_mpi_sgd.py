"""``sgd`` on real ranks: equal to serial large-batch SGD, repeatable, resumable bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from mpi4py import MPI
from reference import workers  # tests/reference.py

from mpiml.config import load_config
from mpiml.optim import build_optimizer
from mpiml.testing import assert_all
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)


def _cfg(name: str, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"run.name={name}",
            "algorithm.name=sgd",
            "run.steps=30",
            "run.eval_every=10",
            "model.dtype=float64",
            "data.batch_size=8",
            "checkpoint.every=0",
            *extra,
        ],
    )


def _serial_reference(cfg, n: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Serial SGD on the global batch: the union of the n ranks' minibatches, in float64."""
    datas, model, x = workers(cfg, n)
    opt = build_optimizer(cfg.optimizer)
    state = opt.init(x)
    g = np.empty_like(x)
    for _ in range(cfg.run.steps):
        batches = [d.sampler.next() for d in datas]
        xb = np.concatenate([b[0] for b in batches])
        yb = np.concatenate([b[1] for b in batches])
        model.loss_and_grad(x, xb, yb, g)
        opt.step(x, g, state)
    return x


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
def test_sgd_equals_serial_large_batch(comm: MPI.Comm, shared_tmp, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    cfg = _cfg(
        f"eq-{optimizer}",
        f"optimizer.name={optimizer}",
        "optimizer.lr=0.01" if optimizer == "adam" else "optimizer.lr=0.1",
    )
    res = train(cfg, comm, out=shared_tmp, stream=open("/dev/null", "w"))
    ref = _serial_reference(cfg, comm.Get_size())
    # Tolerance: the two differ only in summation order (the mean of n per-rank mean
    # gradients vs one mean over the union; MPI's reduction order). Each gradient then
    # differs by a few ulps (~1e-15 relative); 30 steps of lr <= 0.1 on this loss grow
    # that by well under 1e3, so 1e-10 relative to the weights' scale is a safe, tight bound.
    err = float(np.max(np.abs(res.params - ref)))
    scale = float(np.max(np.abs(ref)))
    assert_all(comm, err <= 1e-10 * scale, f"max |mpiml - serial| = {err:.3e} (scale {scale:.3f})")


def test_sgd_repeats_bit_for_bit(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    a = train(_cfg("rep-a", "model.dtype=float32"), comm, out=shared_tmp, stream=open("/dev/null", "w"))
    b = train(_cfg("rep-b", "model.dtype=float32"), comm, out=shared_tmp, stream=open("/dev/null", "w"))
    assert_all(comm, np.array_equal(a.params, b.params), "two runs of the same job differ")
    # and all ranks hold the same model (synchronous SGD)
    first = comm.bcast(a.params, root=0)
    assert_all(comm, np.array_equal(first, a.params), "ranks disagree on the model")
    from mpiml.io import load_run

    dist = load_run(shared_tmp / "rep-a").metric("consensus_distance")[1] if comm.Get_rank() == 0 else None
    zero = comm.bcast(dist is None or bool(np.all(dist == 0.0)), root=0)
    assert_all(comm, zero, "sgd: the consensus distance metric should be exactly 0")


@pytest.mark.parametrize("optimizer", ["nesterov", "amsgrad"])
def test_resume_at_every_checkpoint_ends_bit_for_bit(comm: MPI.Comm, shared_tmp, optimizer: str) -> None:  # type: ignore[no-untyped-def]
    extra = [
        "run.steps=40",
        "run.eval_every=15",
        "checkpoint.every=10",
        "checkpoint.keep=10",
        "model.dtype=float32",
        "data.partition=dirichlet",
        "data.alpha=1.0",
        f"optimizer.name={optimizer}",
        "optimizer.lr=0.01",
    ]
    full = train(_cfg("full", *extra), comm, out=shared_tmp, stream=open("/dev/null", "w"))
    for s in (10, 20, 30):
        name = f"resume-{s}"
        if comm.Get_rank() == 0:
            shutil.copytree(shared_tmp / "full", shared_tmp / name)
            for d in (shared_tmp / name / "checkpoints").iterdir():
                if int(d.name[5:]) > s:
                    shutil.rmtree(d)
        comm.Barrier()
        res = train(_cfg(name, *extra), comm, out=shared_tmp, resume=True, stream=open("/dev/null", "w"))
        assert_all(comm, np.array_equal(res.params, full.params), f"resumed at {s}: final parameters differ")
    # the resumed run file holds every metric row once, as the uninterrupted one does
    from mpiml.io import load_run

    a, b = load_run(shared_tmp / "full"), load_run(shared_tmp / "resume-10")
    same = all(np.array_equal(a.metrics[k]["value"], b.metrics[k]["value"]) for k in ("loss", "accuracy"))
    assert_all(comm, same, "metrics of the resumed run differ from the uninterrupted run")


def test_reported_metrics_are_the_average_model_on_the_whole_test_set(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """Each replica evaluates its own slice of the test set: together, the whole set once.
    The reported test loss and accuracy equal a serial evaluation of the (here common)
    model on all test rows."""
    from mpiml.data import build_data

    cfg = _cfg("metrics", "data.partition=dirichlet")
    res = train(cfg, comm, out=shared_tmp, stream=open("/dev/null", "w"))
    n = comm.Get_size()
    datas = [build_data(cfg, r, n) for r in range(n)]
    x = np.concatenate([d.x_test for d in datas])
    y = np.concatenate([d.y_test for d in datas])
    _, model, _ = workers(cfg, n)
    loss, correct = model.eval_sums(res.params, x, y)
    want_loss, want_acc = loss / len(y), correct / len(y)
    full = build_data(cfg, 0, 1)  # one shard: the whole test set, in order
    assert_all(comm, np.array_equal(x, full.x_test), "the replicas' test slices are not the test set")
    assert_all(
        comm,
        abs(res.test_loss - want_loss) <= 1e-12 * abs(want_loss) and res.accuracy == want_acc,
        f"reported ({res.test_loss!r}, {res.accuracy!r}) != serial ({want_loss!r}, {want_acc!r})",
    )
