"""A straggler on a pipeline stage slows its compute, not its waits (docs/stragglers.md):
each forward, recompute and backward of a slowed step is followed by a delay of
(multiplier - 1) x its seconds (as on a slower device: before the op's send), whatever
the stage waited for its neighbours (launched ranks, the timed model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpiml.io import load_run
from mpiml.testing import python_command, run_ranks

COMPUTE = (b"forward", b"backward", b"recompute")


@pytest.mark.parametrize("algorithm", ["1f1b", "dsp"])
def test_a_slowed_stage_is_delayed_by_its_compute_not_its_waits(tmp_path: Path, algorithm: str) -> None:
    sets = {
        "algorithm.name": algorithm,
        "algorithm.stages": 2,
        "algorithm.micro_batches": 2,
        "model.name": "timed",
        "model.params": 64,
        "model.compute_ms": 12,
        "data.batch_size": 4,
        "run.steps": 6,
        "run.eval_every": 6,
        "checkpoint.every": 0,
        "straggler.probability": 1.0,  # every step of every stage slowed
        "straggler.percent": 50,
    }
    args = ["-m", "mpiml.cli", "train", "--out", str(tmp_path), "--set", "run.name=s"]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    res = run_ranks(2, python_command(*args), 120, cwd=str(tmp_path))
    assert res.returncode == 0 and not res.timed_out, res.stdout + res.stderr
    run = load_run(tmp_path / "s")
    for rank, ev in run.events.items():
        rows = run.table("straggler")[rank]
        d = ev["t_end"] - ev["t_start"]
        kinds = np.char.encode(ev["kind"]) if ev["kind"].dtype.kind == "U" else ev["kind"]
        computed = set(ev["step"][np.isin(kinds, COMPUTE)].tolist())  # DSP's warm-up: not every step
        assert set(rows["step"].tolist()) == computed, rank  # probability 1: each such step
        for step in computed:
            this = ev["step"] == step
            ops = d[this & np.isin(kinds, COMPUTE)]
            mine = rows[rows["step"] == step]
            assert len(mine) == len(ops), (rank, step)  # one delay per compute op
            assert np.sort(mine["compute"]) == pytest.approx(np.sort(ops), abs=1e-9), (rank, step)
            assert mine["delay"].sum() == pytest.approx(0.5 * ops.sum(), abs=1e-9)
