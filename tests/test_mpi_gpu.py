"""AllReduce of device (CuPy) buffers on real ranks: staged through host memory, or
handed to a CUDA-aware MPI directly when MPIML_CUDA_AWARE=1. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.backend import cupy_available
from mpiml.testing import assert_all

pytestmark = [
    pytest.mark.mpi(min_size=2),
    pytest.mark.skipif(not cupy_available(), reason="no GPU: cupy is not installed or sees no device"),
]


@pytest.mark.parametrize("cuda_aware", [False, True])
def test_device_allreduce_equals_host_allreduce(comm: MPI.Comm, cuda_aware: bool) -> None:
    import os

    import cupy as cp

    from mpiml.protocols import AllReduce

    if cuda_aware and os.environ.get("MPIML_CUDA_AWARE") != "1":
        pytest.skip("set MPIML_CUDA_AWARE=1 with a CUDA-aware MPI to test direct device buffers")
    x = np.random.default_rng(comm.Get_rank()).standard_normal(10_001)
    host = AllReduce(comm, x.size, np.float64).run(x).copy()
    dev = AllReduce(comm, x.size, np.float64, xp=cp, cuda_aware=cuda_aware)
    got = cp.asnumpy(dev.run(cp.asarray(x)))
    dev.start(cp.asarray(x))
    split = cp.asnumpy(dev.finish())
    assert_all(comm, np.array_equal(got, host) and np.array_equal(split, host), "device result differs")


@pytest.mark.parametrize(
    "alg",
    [
        "sgd",
        "local_sgd",
        "dasgd-test",
        "dasgd-thread",
        "qsgd",
        "qpr_sgd",
        "dqpr_sgd",
        "1f1b",
        "dsp",
        "sdpipe",
    ],
    ids=lambda a: a,
)
def test_algorithm_on_gpu_matches_cpu(comm: MPI.Comm, shared_tmp, alg: str) -> None:  # type: ignore[no-untyped-def]
    from mpiml.config import load_config
    from mpiml.trainer import train

    name, _, progress = alg.partition("-")
    base = ["run.steps=20", "run.eval_every=10", "model.dtype=float64", f"algorithm.name={name}"]
    if progress:
        base += [f"algorithm.progress={progress}", "algorithm.delay=2"]
    if name in ("1f1b", "dsp"):  # 2 stages of an MLP: activations and gradients staged through host buffers
        base += ["algorithm.stages=2", "model.name=mlp", "model.hidden=[32, 16, 16]"]
        base += (
            ["algorithm.micro_batches=4"]
            if name == "1f1b"
            else ["algorithm.dsp_p=[1, 0]", "algorithm.dsp_m=[2, 0]"]
        )
    if (
        name == "sdpipe"
    ):  # world - 1 pipelines of one stage + the scheduler; every group complete (deterministic)
        base += ["algorithm.stages=1", "model.name=mlp", "model.hidden=[32, 16]"]
        base += ["algorithm.wait_ms=60000", "algorithm.wait_max_ms=60000", "algorithm.sync_every=7"]
    cpu = train(
        load_config(None, [*base, f"run.name=cpu-{alg}"]), comm, out=shared_tmp, stream=open("/dev/null", "w")
    )
    gpu = train(
        load_config(None, [*base, f"run.name=gpu-{alg}", "backend.device=gpu"]),
        comm,
        out=shared_tmp,
        stream=open("/dev/null", "w"),
    )
    assert_all(
        comm, np.allclose(gpu.params, cpu.params, rtol=1e-9, atol=1e-11), "GPU run differs from CPU run"
    )
