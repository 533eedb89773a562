"""Bad pipeline jobs on real ranks: every rank raises the same one-line ConfigError from
:func:`mpiml.trainer.train`, and nothing is written (no rank got past the checks to
set-up, channels or collectives). The messages themselves: tests/test_pipeline_config.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi4py import MPI

from mpiml.config import load_config
from mpiml.errors import ConfigError
from mpiml.testing import assert_all
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test
DEEP = "model.hidden=[8, 8, 8, 8, 8, 8, 8, 8]"  # 9 layers: enough for K = world + 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["algorithm.name=1f1b", "algorithm.stages={n1}", DEEP],
            "algorithm.stages = {n1} is more than the {n} ranks",
        ),
        (
            ["algorithm.name=gpipe", "algorithm.stages=2", "algorithm.pipelines={n}", DEEP],
            "algorithm.pipelines * algorithm.stages = {n} * 2 = {n2} but the job runs on {n} ranks",
        ),
        (
            ["algorithm.name=dsp", "algorithm.stages={n}", DEEP, "algorithm.dsp_p=[{zeros}1]"],
            "algorithm.dsp_m = [] must hold K = algorithm.stages = {n} values",
        ),
        (
            ["algorithm.name=dsp", "algorithm.stages=2", "algorithm.dsp_p=[1,0]", "algorithm.dsp_m=[0,0]"],
            "q_1 = m_0 - p_0 - m_1 = 0 - 1 - 0 = -1 < 0",
        ),
        (
            ["algorithm.name=1f1b", "algorithm.stages=2", "model.hidden=[]"],
            "is more than the model's 1 layer",
        ),
        (
            ["algorithm.name=dsp", "compression.codec=topk"],
            "compression.codec = 'topk': algorithm.name = 'dsp'",
        ),
        (["algorithm.name=1f1b", "data.batch_size=10"], "data.batch_size = 10 is not a multiple of"),
    ],
)
def test_bad_pipeline_job_raises_the_same_config_error_on_every_rank(
    comm: MPI.Comm, shared_tmp: Path, overrides: list[str], message: str
) -> None:
    n = comm.Get_size()
    fill = {"n": n, "n1": n + 1, "n2": 2 * n, "zeros": "0," * (n - 1)}
    sets = ["run.steps=4", *(o.format(**fill) for o in overrides)]
    got = ""
    try:
        train(load_config(None, sets), comm, out=shared_tmp, stream=NULL)
    except ConfigError as exc:
        got = str(exc)
    seen = comm.allgather(got)
    assert_all(comm, message.format(**fill) in got and "\n" not in got, f"got {got!r}")
    assert_all(comm, len(set(seen)) == 1, f"different messages on different ranks: {seen}")
    assert_all(comm, not any(shared_tmp.iterdir()), "a run folder was written")
