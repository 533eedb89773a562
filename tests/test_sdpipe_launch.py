"""SDPIPE launched as users launch it (issue 14): ``mpiml train`` on P * K + 1 ranks.

- the example job reaches >= 0.95 on digits with P = 3 pipelines of K = 1 stage, and with
  P = 2 pipelines of K = 2 stages (5 ranks), and prints the group sizes per stage;
- with K = 2, every stage's groups in the log are averages (W_k symmetric, doubly
  stochastic), each period connects all replicas, and each replica's updates are one per
  batch;
- the scheduler dying, or a stage dying, ends the whole job with a non-zero status and
  the error once, within the timeout (no hang).

No MPI in this process; every job runs under run_ranks' timeout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from ps_launched import MPIML, REPO  # tests/ps_launched.py

from mpiml.io.runfile import rank_file_name
from mpiml.pipeline.groups import BOUND, SYNC, UnionFind, doubly_stochastic, group_matrix
from mpiml.testing import Completed, run_ranks

TIMEOUT = 240.0
EXAMPLE = REPO / "examples" / "sdpipe_digits.toml"


def _train(n: int, tmp: Path, sets: list[str], env: dict[str, str] | None = None) -> Completed:
    args = [*MPIML, "train", str(EXAMPLE), "--out", str(tmp / "results")]
    for s in sets:
        args += ["--set", s]
    res = run_ranks(n, args, TIMEOUT, cwd=str(tmp), env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))
    assert not res.timed_out, f"the job hung:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _accuracy(out: str) -> float:
    m = re.search(r"test accuracy (\d\.\d+)", out)
    assert m, out
    return float(m.group(1))


def _periods_connect(run_dir: Path, P: int, K: int) -> list[str]:
    bad = []
    with h5py.File(run_dir / rank_file_name(P * K), "r") as f:
        groups, members = f["sdpipe_groups"][()], f["sdpipe_members"][()]
    for k in range(K):
        uf = UnionFind(P)
        g_k = np.sort(groups[groups["stage"] == k], order="seq")
        m_k = members[members["stage"] == k]
        for g in g_k:
            ms = sorted(int(r) for r in m_k["replica"][m_k["seq"] == g["seq"]])
            if len(ms) != int(g["size"]) or len(set(ms)) != len(ms):
                bad.append(f"stage {k} group {int(g['seq'])}: members {ms}, size {int(g['size'])}")
                continue
            if not doubly_stochastic(group_matrix(P, ms)):
                bad.append(f"stage {k} group {int(g['seq'])}: W not symmetric doubly stochastic")
            for m in ms[1:]:
                uf.union(ms[0], m)
            if int(g["kind"]) in (BOUND, SYNC):
                if not uf.connected():
                    bad.append(f"stage {k}: the period ending in group {int(g['seq'])} is not connected")
                uf = UnionFind(P)
    for r in range(P * K):
        with h5py.File(run_dir / rank_file_name(r), "r") as f:
            batches = list(f["sdpipe_average"]["batch"])
        if batches != list(range(300)):
            bad.append(f"rank {r} updated for batches {batches[:5]}... ({len(batches)})")
    return bad


def test_example_p3_k1_reaches_095(tmp_path: Path) -> None:
    res = _train(4, tmp_path, [])
    assert res.returncode == 0, res.stderr[-3000:]
    assert _accuracy(res.stdout) >= 0.95, res.stdout
    assert "3 pipelines x 1 stage, 1 scheduler" in res.stdout
    assert re.search(r"sdpipe stage 0: \d+ groups, mean size [\d.]+ of P = 3", res.stdout), res.stdout


def test_p2_k2_on_five_ranks_reaches_095_and_its_log_is_sound(tmp_path: Path) -> None:
    res = _train(5, tmp_path, ["algorithm.stages=2", "run.name=k2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert _accuracy(res.stdout) >= 0.95, res.stdout
    for k in (0, 1):
        assert f"sdpipe stage {k}: " in res.stdout, res.stdout
    bad = _periods_connect(tmp_path / "results" / "k2", 2, 2)
    assert not bad, bad


@pytest.mark.parametrize(
    ("n", "sets", "fail", "line"),
    [
        (4, [], "3:40", "injected failure on rank 3 (the scheduler) once a stage reached step 40"),
        (4, [], "1:40", "injected failure on rank 1 at step 40"),
        (5, ["algorithm.stages=2"], "4:40", "injected failure on rank 4 (the scheduler)"),
        (5, ["algorithm.stages=2"], "2:40", "injected failure on rank 2 at step 40"),
    ],
    ids=["scheduler-P3", "stage-P3", "scheduler-P2K2", "stage-P2K2"],
)
def test_a_rank_dying_ends_the_whole_job(
    tmp_path: Path, n: int, sets: list[str], fail: str, line: str
) -> None:
    res = _train(n, tmp_path, [*sets, "run.steps=100000", "run.eval_every=100000"], {"MPIML_FAIL_AT": fail})
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert res.stderr.count(line) == 1, res.stderr[-3000:]
    assert res.stderr.count("Traceback") == 1, res.stderr[-3000:]


@pytest.mark.parametrize(("n", "sets"), [(4, []), (5, ["algorithm.stages=2"])], ids=["P3K1", "P2K2"])
def test_a_diverged_evaluation_ends_the_job_with_the_scheduler(
    tmp_path: Path, n: int, sets: list[str]
) -> None:
    """The evaluation's divergence verdict is agreed over the stages only: the scheduler,
    which does not evaluate, must not be left serving (the job hung before)."""
    args = [*MPIML, "train", str(EXAMPLE), "--out", str(tmp_path / "results")]
    for s in [
        *sets,
        "optimizer.lr=1000000",
        "optimizer.momentum=0.99",
        "run.eval_every=10",
        "checkpoint.every=0",
    ]:
        args += ["--set", s]
    res = run_ranks(n, args, 60.0, cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert not res.timed_out, f"the job hung after the divergence:\n{res.stderr[-3000:]}"
    assert res.returncode == 3, (res.returncode, res.stderr[-3000:])
    assert res.stderr.count("mpiml: error: training diverged") == 1, res.stderr[-3000:]
