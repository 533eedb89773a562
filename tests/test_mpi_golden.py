"""Nothing changes for users: fixed small jobs end with the recorded parameters, bit for bit.

The golden files (tests/golden/*.npz, see tests/golden.py) were recorded on 4 ranks
before the roles refactoring; every synchronous algorithm must reproduce them exactly
with the same MPI and rank count.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from golden import GOLDEN, JOBS, RANKS, job, versions  # tests/golden.py
from mpi4py import MPI

from mpiml.testing import assert_all
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=RANKS)
RANK_COUNTS = (RANKS,)


@pytest.mark.parametrize("name", list(JOBS))
def test_final_parameters_equal_golden(comm: MPI.Comm, shared_tmp, name: str) -> None:  # type: ignore[no-untyped-def]
    with open(os.devnull, "w") as null:
        res = train(job(name), comm, out=shared_tmp, stream=null)
    want = np.load(GOLDEN / f"{name}.npz")[f"rank{comm.Get_rank()}"]
    same = want.dtype == res.params.dtype and np.array_equal(want, res.params)
    err = (
        float(np.max(np.abs(want.astype(np.float64) - res.params)))
        if want.shape == res.params.shape
        else -1.0
    )
    recorded = json.loads((GOLDEN / "versions.json").read_text())
    now = versions()
    why = "" if recorded == now else f"; the golden files were recorded with {recorded}, this is {now}"
    assert_all(
        comm, same, f"{name}: final parameters differ from the golden file (max |diff| {err:.3e}){why}"
    )
