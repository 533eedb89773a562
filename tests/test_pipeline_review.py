"""Review findings on issue 13 (pipelines), each a launched job that shows a defect.

- A finished DSP run resumed with the same ``run.steps`` (``--resume`` or
  ``--auto-resume`` of a job that had already ended, e.g. a requeued SLURM job) HANGS:
  the loop has no step to run, StageState.quiesce (before the end) takes slot_done =
  run.steps - 1, not the drained last global step, and waits in Receiver.drain for
  messages the neighbours never send; a SIGTERM does not end it (it only requests a stop).
- A finished DSP run resumed with a larger ``run.steps`` (training it further, which
  works for gpipe/1f1b and every other algorithm): the finished run's last step drained
  the pipeline (every batch < run.steps backwarded on every stage), but the resumed run
  continues the timetable as if the batches before the old run.steps were still in
  flight; stage 0 then recomputes a stash slot that is empty and raises (a traceback on
  some rank, the job aborts). It should either continue (refill the pipeline) or refuse
  on every rank in one line before any communication.

- The trace's ``msg`` pairing of a stage's ``send`` and ``recv`` events (docs/pipeline.md:
  "``msg`` pairing them"): one counter per peer (protocols.base.Messages) is shared by
  the training channels and the evaluation channel, which run on different tags. In DSP,
  training activations are still in flight when an evaluation starts: the receiver
  numbers the evaluation chunks before the training message the sender numbered first,
  so (sender, receiver, msg) pairs a send with another message's receive (different
  byte counts).

Launched ``mpiml train`` on 2 ranks under run_ranks' timeout. No MPI in this process.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ps_launched import MPIML, REPO  # tests/ps_launched.py

from mpiml.io import load_run
from mpiml.testing import Completed, run_ranks

TIMEOUT = 60.0

DSP = [
    "algorithm.name=dsp",
    "algorithm.stages=2",
    "algorithm.dsp_p=[1, 0]",
    "algorithm.dsp_m=[2, 0]",
    "model.name=mlp",
    "model.hidden=[8]",
    "data.batch_size=8",
    "run.eval_every=4",
    "checkpoint.every=4",
]


def _train(tmp: Path, sets: list[str], *flags: str) -> Completed:
    args = [*MPIML, "train", "--out", str(tmp / "results"), "--set", "run.name=ext", *flags]
    for s in sets:
        args += ["--set", s]
    res = run_ranks(2, args, TIMEOUT, cwd=str(tmp), env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert not res.timed_out, f"the job hung:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_a_finished_dsp_run_resumed_for_more_steps_continues_or_refuses_in_one_line(tmp_path: Path) -> None:
    first = _train(tmp_path, [*DSP, "run.steps=8"])
    assert first.returncode == 0, first.stderr
    more = _train(tmp_path, [*DSP, "run.steps=12"], "--resume")
    assert "Traceback" not in more.stderr, more.stderr[-3000:]
    if more.returncode != 0:  # refused: one line naming run.steps
        errors = [line for line in (more.stdout + more.stderr).splitlines() if "error" in line]
        assert len(errors) == 1 and "run.steps" in errors[0], more.stdout + more.stderr


def test_dsp_trace_pairs_each_send_with_its_own_receive(tmp_path: Path) -> None:
    res = _train(tmp_path, [*DSP, "run.steps=12", "checkpoint.every=0"])
    assert res.returncode == 0, res.stderr
    sends: dict[tuple[int, int, int], int] = {}
    recvs: dict[tuple[int, int, int], int] = {}
    for rank, ev in load_run(tmp_path / "results" / "ext").events.items():
        kinds = np.char.decode(ev["kind"]) if ev["kind"].dtype.kind == "S" else ev["kind"]
        for row in ev[kinds == "send"]:
            sends[(rank, int(row["peer"]), int(row["msg"]))] = int(row["nbytes"])
        for row in ev[kinds == "recv"]:
            recvs[(int(row["peer"]), rank, int(row["msg"]))] = int(row["nbytes"])
    assert sends.keys() == recvs.keys()
    wrong = sorted(k for k in sends if sends[k] != recvs[k])
    assert not wrong, [(k, sends[k], recvs[k]) for k in wrong[:4]]


def test_a_finished_dsp_run_resumed_with_the_same_steps_ends(tmp_path: Path) -> None:
    first = _train(tmp_path, [*DSP, "run.steps=8"])
    assert first.returncode == 0, first.stderr
    again = _train(tmp_path, [*DSP, "run.steps=8"], "--resume")  # hung: run_ranks' timeout
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
