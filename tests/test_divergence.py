"""A diverged run (a non-finite loss or model) is an error: one line naming the step and
the rank, status 3 on every rank, no checkpoint of it, and its accuracy is NaN, not a
number computed from a NaN model."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from mpiml.testing import run_ranks

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli"]
LINE = r"mpiml: error: training diverged: non-finite {what} at step (\d+) on rank (\d+) \(try a smaller optimizer\.lr\)"


def _train(tmp: Path, *sets: str, launcher: list[str] = MPIML) -> tuple[int, str, str]:
    args = [a for s in sets for a in ("--set", s)]
    res = run_ranks(2, [*launcher, "train", *args, "--out", str(tmp)], TIMEOUT, cwd=str(tmp))
    assert not res.timed_out, (res.stdout, res.stderr)
    return res.returncode, res.stdout, res.stderr


def _no_checkpoint(run_dir: Path) -> bool:
    return not any((run_dir / "checkpoints").glob("step-*"))


@pytest.mark.parametrize("launcher", ["plain", "mpi4py"])
def test_a_too_large_lr_ends_with_status_3_one_line_and_a_nan_accuracy(tmp_path: Path, launcher: str) -> None:
    """At the first evaluation (step 50) the reduced loss is NaN. Under ``python -m
    mpi4py`` no "Abort(3)" line follows."""
    cmd = MPIML if launcher == "plain" else [sys.executable, "-m", "mpi4py", "-m", "mpiml.cli"]
    rc, out, err = _train(
        tmp_path, "optimizer.lr=1e4", "run.steps=200", "checkpoint.every=200", "run.name=d", launcher=cmd
    )
    assert rc == 3, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(LINE.format(what="loss"), lines[0]), err
    assert re.fullmatch(LINE.format(what="loss"), lines[0]).group(1) == "50"  # type: ignore[union-attr]
    assert "done" not in out and "acc nan" in out, out
    assert _no_checkpoint(tmp_path / "d")
    from mpiml.io import load_run

    run = load_run(tmp_path / "d")
    steps, acc = run.metric("accuracy")
    assert list(steps) == [50] and np.isnan(acc).all(), (
        acc
    )  # recorded, and NaN: not a number from a NaN model
    assert np.isnan(run.metric("loss")[1]).all()


def test_a_nan_model_is_never_checkpointed(tmp_path: Path) -> None:
    """A checkpoint before any evaluation: each rank's model is checked first."""
    rc, out, err = _train(
        tmp_path,
        "optimizer.lr=1e4",
        "run.steps=200",
        "run.eval_every=1000",
        "checkpoint.every=20",
        "run.name=m",
    )
    assert rc == 3, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and re.fullmatch(LINE.format(what="model"), lines[0]), err
    assert _no_checkpoint(tmp_path / "m"), sorted((tmp_path / "m" / "checkpoints").rglob("*"))


def test_a_healthy_run_is_unaffected(tmp_path: Path) -> None:
    rc, out, err = _train(tmp_path, "run.steps=60", "run.eval_every=30", "checkpoint.every=30", "run.name=ok")
    assert rc == 0 and "done" in out and "acc nan" not in out, (out, err)
    assert (tmp_path / "ok" / "checkpoints" / "step-000000060" / "COMPLETE").exists()


def test_a_codec_that_meets_nan_ends_the_job_as_diverged_not_with_a_traceback(tmp_path: Path) -> None:
    """With a codec, the NaN reaches encode before any evaluation: every rank that sees
    it says so in one line, the job ends with status 3, no traceback, no checkpoint."""
    code, out, err = _train(
        tmp_path, "algorithm.name=sgd", "compression.codec=topk", "optimizer.lr=1e4", "run.name=c"
    )
    assert code == 3 and "Traceback" not in err, err
    said = [ln for ln in err.splitlines() if ln.startswith("mpiml: error: training diverged on rank")]
    assert 1 <= len(said) <= 2 and "cannot encode NaN or Inf" in said[0], err
    assert _no_checkpoint(tmp_path / "c")
