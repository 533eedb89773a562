"""Pipelines stopped and resumed end bit for bit where an uninterrupted run ends (issue 13
item 6): GPipe and 1F1B stop at a minibatch boundary with nothing in flight; DSP stops with
activations and gradients in its queues and inputs in its stash, which the checkpoint holds
(checked: they are there) and the resumed run takes first. Checkpoints along the way
(which drain DSP's channels into local queues) change nothing either.

Every test runs its job on the first n ranks of one 4-rank launch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mpi4py import MPI
from ps_ranks import stop_then_resume, train_on  # tests/ps_ranks.py
from reference import small_job  # tests/reference.py

from mpiml.io import checkpoint as ckpt
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=4)
RANK_COUNTS = (4,)

CASES = {
    "gpipe-K2": (2, ["algorithm.name=gpipe", "algorithm.stages=2", "algorithm.micro_batches=4"]),
    "1f1b-K4": (4, ["algorithm.name=1f1b", "algorithm.stages=4", "algorithm.micro_batches=4"]),
    "1f1b-P2": (
        4,
        ["algorithm.name=1f1b", "algorithm.stages=2", "algorithm.pipelines=2", "algorithm.micro_batches=2"],
    ),
    "dsp-K3": (
        3,
        [
            "algorithm.name=dsp",
            "algorithm.stages=3",
            "algorithm.dsp_p=[1, 1, 0]",
            "algorithm.dsp_m=[4, 2, 0]",
        ],
    ),
    "dsp-K4": (
        4,
        [
            "algorithm.name=dsp",
            "algorithm.stages=4",
            "algorithm.dsp_p=[2, 2, 2, 0]",
            "algorithm.dsp_m=[9, 6, 3, 0]",
        ],
    ),
    "dsp-P2": (
        4,
        [
            "algorithm.name=dsp",
            "algorithm.stages=2",
            "algorithm.pipelines=2",
            "algorithm.dsp_p=[1, 0]",
            "algorithm.dsp_m=[2, 0]",
        ],
    ),
}


def _job(name: str, keys: list[str], *extra: str) -> Any:
    return small_job(
        name,
        "model.name=mlp",
        "model.hidden=[12, 10, 8, 6]",
        "optimizer.name=nesterov",
        "optimizer.lr=0.05",
        *keys,
        *extra,
        steps=24,
        eval_every=8,
    )


def _params(comm: MPI.Comm, res: Any, n: int) -> np.ndarray:
    got = comm.allgather(res.params if res is not None else None)[:n]
    return np.concatenate(got)


@pytest.mark.parametrize("case", list(CASES))
def test_stop_and_resume_bit_for_bit(comm: MPI.Comm, shared_tmp: Path, case: str) -> None:
    n, keys = CASES[case]
    whole = train_on(comm, n, _job(f"{case}-whole", keys), shared_tmp)
    cfg = _job(f"{case}-split", keys)
    at, res = stop_then_resume(comm, n, cfg, shared_tmp)
    a, b = _params(comm, whole, n), _params(comm, res, n)
    diff = float(np.max(np.abs(a - b)))
    assert_all(
        comm, np.array_equal(a, b), f"{case}: resumed at {at} ends {diff:.3e} away from the uninterrupted run"
    )
    if case.startswith("dsp") and comm.Get_rank() == 0:
        # the stop checkpoint really held in-flight state (else the test proves little)
        root = shared_tmp / f"{case}-split" / "checkpoints"
        held = 0
        for r in range(n):
            arrays, _ = ckpt.read_rank(ckpt.rank_path(root, at, r))
            held += sum(int(arrays[k].size) for k in arrays if k.endswith("/mb"))
        ok = held > 0
    else:
        ok = True
    assert_all(
        comm, comm.bcast(ok, root=0), f"{case}: the stop checkpoint held no queued message or stashed input"
    )


@pytest.mark.parametrize("case", ["dsp-K3", "dsp-P2", "1f1b-K4"])
def test_checkpoints_along_the_way_change_nothing(comm: MPI.Comm, shared_tmp: Path, case: str) -> None:
    n, keys = CASES[case]
    plain = train_on(comm, n, _job(f"{case}-plain", keys), shared_tmp)
    often = train_on(
        comm, n, _job(f"{case}-often", keys, "checkpoint.every=3", "checkpoint.keep=2"), shared_tmp
    )
    a, b = _params(comm, plain, n), _params(comm, often, n)
    assert_all(comm, np.array_equal(a, b), f"{case}: checkpoints every 3 steps changed the run")
