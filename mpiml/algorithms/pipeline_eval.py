"""Evaluating a pipeline (:class:`StageEvaluation`, a part of
:class:`mpiml.algorithms.pipeline_stage.StageProgram`): the test set flows forward through
the stages on channels of their own, so no training message is mixed in; the last stage
adds up loss and correct predictions. And the line a run ends with: each stage's busy
share of the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array, as_xp
from ..data import RankData
from ..protocols.allreduce import AllReduce
from ..protocols.channel import Receiver, Sender
from .base import EvalSums

__all__ = ["EVAL_ROWS", "EVAL_SLOT", "StageEvaluation", "busy_line"]

EVAL_ROWS = 256  # test rows per evaluation message
EVAL_SLOT = 1 << 30  # the stage's slot for evaluation passes (never a training slot)


class StageEvaluation:
    """Evaluation of a pipeline stage (a mixin of StageProgram, which sets these)."""

    first: bool
    last: bool
    x: Array
    xp: Any
    stage: Any
    data: RankData | None
    eval_in: Receiver | None
    eval_out: Sender | None
    mean: AllReduce | None

    def evaluate(self) -> EvalSums:
        """The test set forward through the stages (channels of its own): stage 0 sends its
        test slice in chunks of EVAL_ROWS, the last stage adds up loss and correct rows;
        plus the consensus distance of the stage's P replicas. Collective over the
        pipeline's ranks and ``comms.peers``."""
        out = EvalSums()
        y_test = self.data.y_test if self.last and self.data is not None else None
        at = 0
        chunk = 0
        while True:
            if self.first:
                assert self.data is not None
                xt = self.data.x_test
                if at >= xt.shape[0]:
                    a = None
                else:
                    a = xt[at : at + EVAL_ROWS]
            else:
                assert self.eval_in is not None
                _, arr = self.eval_in.take(0, expect=chunk)
                a = None if arr.shape[0] == 0 else as_xp(self.xp, arr)
            if a is None:
                if self.eval_in is not None:
                    self.eval_in.release()
                if self.eval_out is not None:
                    self.eval_out.send(0, chunk, None)
                    self.eval_out.flush()
                break
            h = self.stage.forward(self.x, a, slot=EVAL_SLOT)
            if self.eval_in is not None:
                self.eval_in.release()
            n = a.shape[0]
            if self.eval_out is not None:
                self.eval_out.send(0, chunk, h)
            if self.last:
                assert y_test is not None
                loss, correct = self.stage.eval_sums(self.x, h, y_test[at : at + n])
                out.test_loss += loss
                out.correct += correct
                out.test_rows += n
            at += n
            chunk += 1
        self.stage.drop(EVAL_SLOT)
        if self.mean is not None:  # P > 1 replicas of this stage
            d = self.x - self.mean.run(self.x, 0)
            out.distance = float(d @ d)
        out.holders = 1.0 if self.first else 0.0
        return out


def busy_line(algorithm: str, K: int, m: int, shares: list[tuple[int, float]]) -> str:
    """One line: each stage's busy share of the loop (mean over its pipelines) and, for
    GPipe/1F1B (``m`` > 0), the bubble (K-1)/(m+K-1) that equal stages would idle."""
    per = [float(np.mean([v for k, v in shares if k == j])) for j in range(K)]
    text = f"mpiml: {algorithm}: stages busy {' '.join(f'{v:.0%}' for v in per)} of the loop's wall time"
    if m > 0 and K > 1:
        text += f" (GPipe/1F1B's bubble with equal stages: (K-1)/(m+K-1) = {(K - 1) / (m + K - 1):.0%} idle)"
    return text
