"""A pipeline stage raising ends the whole job: non-zero status, well within the
timeout, the error once (issue #13, "A stage raising aborts the job within the timeout").

The stage's neighbours are blocked in a channel's receive (or in a send into a full
channel) when it fails; only the abort (mpiml.comm's handler, MPI_Abort) frees them.
Launched ``mpiml train`` on 3 and 4 ranks, each under run_ranks' timeout, which kills
every rank and fails the test as "hung". No MPI in this process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from ps_launched import MPIML, REPO  # tests/ps_launched.py

from mpiml.testing import Completed, run_ranks

TIMEOUT = 90.0  # seconds; the failing stage's neighbours wait on it until the abort

LONG = ["run.steps=1000", "run.eval_every=1000", "model.hidden=[16, 16, 16]", "data.batch_size=8"]


def _train(n: int, tmp: Path, sets: list[str], env: dict[str, str], cmd: list[str] = MPIML) -> Completed:
    args = [*cmd, "train"]
    for s in [*LONG, *sets]:
        args += ["--set", s]
    res = run_ranks(
        n,
        [*args, "--out", str(tmp / "results")],
        TIMEOUT,
        cwd=str(tmp),
        env=dict(os.environ, PYTHONPATH=str(REPO), **env),
    )
    assert not res.timed_out, f"the job hung:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.parametrize(
    ("n", "sets", "fail"),
    [
        (4, ["algorithm.name=1f1b", "algorithm.stages=4", "algorithm.micro_batches=4"], "1:7"),
        (3, ["algorithm.name=dsp", "algorithm.stages=3"], "1:9"),  # DSP(1,1,0; 4,2,0): in steady state
        (4, ["algorithm.name=gpipe", "algorithm.stages=2", "algorithm.micro_batches=2"], "3:5"),  # P = 2
    ],
    ids=["1f1b-K4-stage1", "dsp-K3-stage1", "gpipe-P2-K2-last-stage-of-pipeline-1"],
)
def test_a_stage_failing_mid_run_ends_the_whole_job(
    tmp_path: Path, n: int, sets: list[str], fail: str
) -> None:
    """MPIML_FAIL_AT=RANK:STEP on a stage in the middle (its neighbours wait on it)."""
    res = _train(n, tmp_path, sets, {"MPIML_FAIL_AT": fail})
    rank, step = fail.split(":")
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert res.stderr.count(f"injected failure on rank {rank} at step {step}") == 1, res.stderr
    assert res.stderr.count("Traceback") == 1, res.stderr
    assert f"[mpiml rank {rank}]" in res.stderr, res.stderr


# A stage program whose backward (or forward) raises on one rank at one step: a bug inside
# the stage, not the loop's injected failure. The wrapper replaces the method, then runs
# the ordinary command.
WRAPPER = """\
import os, sys
from mpiml.algorithms.pipeline_stage import StageProgram

RANK, STEP, OP = int(os.environ["FORCE_RANK"]), int(os.environ["FORCE_STEP"]), os.environ["FORCE_OP"]
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "-1")))
if rank == RANK:
    original = getattr(StageProgram, OP)

    def failing(self, t, *args, **kw):
        if t == STEP:
            raise ZeroDivisionError(f"forced error in {OP} of stage {self.k} at step {t}")
        return original(self, t, *args, **kw)

    setattr(StageProgram, OP, failing)

from mpiml.cli import main

sys.exit(main())
"""


@pytest.mark.parametrize(
    ("n", "sets", "rank", "op"),
    [
        (4, ["algorithm.name=dsp", "algorithm.stages=4"], 2, "_backward"),
        (3, ["algorithm.name=1f1b", "algorithm.stages=3"], 1, "_forward"),
    ],
    ids=["dsp-K4-backward-stage2", "1f1b-K3-forward-stage1"],
)
def test_an_exception_inside_a_stage_ends_the_whole_job(
    tmp_path: Path, n: int, sets: list[str], rank: int, op: str
) -> None:
    script = tmp_path / "failing_stage.py"
    script.write_text(WRAPPER)
    env = {"FORCE_RANK": str(rank), "FORCE_STEP": "11", "FORCE_OP": op}
    res = _train(n, tmp_path, sets, env, cmd=[sys.executable, str(script)])
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert res.stderr.count(f"ZeroDivisionError: forced error in {op} of stage {rank} at step 11") == 1, (
        res.stderr
    )
    assert f"[mpiml rank {rank}]" in res.stderr, res.stderr
