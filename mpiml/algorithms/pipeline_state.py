"""What a pipeline stage saves and restores (:class:`StageState`, a part of
:class:`mpiml.algorithms.pipeline_stage.StageProgram`): its parameters and optimizer state,
the layer cut, and for DSP what is in flight at a step boundary: the messages its
neighbours have already sent it (their number follows from the timetable, so the stage
waits for exactly those and keeps them in its channels' local queues) and its stash of
inputs forwarded and not yet backwarded (DSP's input queue M_k). A resumed stage takes the
queued messages first and finds its stash where it was: the run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array, as_xp, to_host
from ..pipeline import Timetable
from ..protocols.channel import Receiver, Sender

__all__ = ["StageState"]


class StageState:
    """Checkpoint state of a pipeline stage (a mixin of StageProgram, which sets these)."""

    algorithm: str
    stale: bool
    k: int
    steps: int
    table: Timetable
    stash: int
    slot_done: int
    x: Array
    xp: Any
    dtype: np.dtype
    stage: Any
    opt_state: dict[str, Array]
    cut: list[int]
    act_in: Receiver | None
    grad_in: Receiver | None
    act_out: Sender | None
    grad_out: Sender | None
    eval_out: Sender | None

    def quiesce(self) -> None:
        """Nothing in flight: DSP takes the messages its neighbours have sent up to the
        step it is at into its channels' local queues; every send completes."""
        if self.stale and self.slot_done >= 0:
            s, k = self.slot_done, self.k
            f_me, b_me = self.table.counts(k, s)
            if self.act_in is not None:
                sent = self.table.counts(k - 1, s)[0]
                self.act_in.drain(s, sent - f_me - len(self.act_in.queued))
            if self.grad_in is not None:
                sent = self.table.counts(k + 1, s)[1]
                self.grad_in.drain(s, sent - b_me - len(self.grad_in.queued))
        for c in (self.act_out, self.grad_out, self.eval_out):
            if c is not None:
                c.flush()

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"params": to_host(self.x).copy(), "partition": np.array(self.cut, dtype=np.int64)}
        for key, v in self.opt_state.items():
            if not key.startswith("_"):
                out[f"opt/{key}"] = to_host(v).copy()
        if self.stale:
            for name, ch in (("act_in", self.act_in), ("grad_in", self.grad_in)):
                if ch is not None:
                    out.update(ch.state(f"queue/{name}"))
            out.update(self._stash_state())
            out["dsp/steps"] = np.array([self.table.steps], dtype=np.int64)  # the timetable's batches
            out["dsp/slot_done"] = np.array([self.slot_done], dtype=np.int64)
        return out

    def _stash_state(self) -> dict[str, np.ndarray]:
        """DSP's input queue M_k: the batches forwarded and not yet backwarded, with their
        stored inputs (oldest first)."""
        s = self.slot_done
        f_me, b_me = self.table.counts(self.k, s) if s >= 0 else (0, 0)
        ids = list(range(b_me, f_me))
        stored = [to_host(self.stage.stored_input(n % self.stash)) for n in ids]
        data = [a.reshape(-1) for a in stored]
        rows = [int(a.shape[0]) for a in stored]
        return {
            "stash/mb": np.array(ids, dtype=np.int64),
            "stash/rows": np.array(rows, dtype=np.int64),
            "stash/data": np.concatenate(data) if data else np.zeros(0, dtype=self.dtype),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        xp = self.xp
        saved = [int(v) for v in arrays["partition"]]
        if saved != self.cut:
            raise ValueError(
                f"the checkpoint's stages start at layers {saved}, this job's at {self.cut}: "
                f"resume with algorithm.partition = {saved}"
            )
        if arrays["params"].shape != (self.x.size,):
            raise ValueError(f"params of shape {arrays['params'].shape}, this stage holds {self.x.size}")
        self.x[...] = xp.asarray(arrays["params"])
        for key in self.opt_state:
            if not key.startswith("_"):
                self.opt_state[key][...] = xp.asarray(arrays[f"opt/{key}"])
        if not self.stale:
            return
        steps, done = int(arrays["dsp/steps"][0]), int(arrays["dsp/slot_done"][0])
        mine = self.table.steps
        if steps != mine and done >= min(steps, mine):
            raise ValueError(
                f"this DSP checkpoint is from global step {done} of a timetable of run.steps = {steps}, "
                f"past its last forward (its pipeline drains at the end): DSP continues it only with "
                f"run.steps = {steps}, not {mine}"
            )
        self.slot_done = done
        for name, ch in (("act_in", self.act_in), ("grad_in", self.grad_in)):
            if ch is not None:
                ch.load(f"queue/{name}", arrays)
        ids, rows, data = arrays["stash/mb"], arrays["stash/rows"], arrays["stash/data"]
        width = self.stage.in_features
        at = 0
        for n, r in zip(ids.tolist(), rows.tolist(), strict=True):
            a = np.asarray(data[at : at + r * width], dtype=self.dtype).reshape(r, width)
            at += r * width
            self.stage.forward(
                self.x, as_xp(self.xp, a), slot=n % self.stash
            )  # marks the slot; recomputed later
