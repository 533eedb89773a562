"""Evaluation: every program contributes its sums; the driver adds them up over the
ranks of the role communicator and turns them into the run's metrics.

The evaluated model is the program's (:meth:`mpiml.algorithms.Program.evaluate`): for
replicas, the average x_bar of the replicas' parameters, evaluated by each replica on
its slice of the test set; the consensus distance is (1/n) sum_i ||x_i - x_bar||^2 over
the n ranks holding the same parameters (MixML §6). Sums are float64, in a buffer
allocated once; one Allreduce of 8 numbers over ``comms.role`` per evaluation.

A synchronous program is evaluated with blocking collectives (its ranks are in
lock-step anyway). An asynchronous one (``Program.synchronous = False``) is evaluated
split-phase, so that evaluating never makes a fast rank wait for a slow one: at the
evaluation step the program starts its part (a replica: MPI_Iallreduce of a snapshot
of x), the driver polls it after every step, then starts the MPI_Iallreduce of the
sums, and the metrics of that step are recorded when it completes (a few steps later,
with the step they belong to and the time the evaluation started).
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from ..algorithms import EvalSums, Program
from ..comm import Comms
from ..kinds import register_kind
from ..trace import Trace

__all__ = ["BYTES_DTYPE", "EVAL", "Evaluator", "metrics_of"]

EVAL = register_kind("eval", "bookkeeping", "an evaluation: the program's part and the AllReduce of the sums")

BYTES_DTYPE = np.dtype([("step", "<i8"), ("bytes", "<i8")])  # /ranks/<r>/bytes_sent


class Evaluator:
    """``evaluator(step, loss_sum, loss_count)`` -> metrics: loss, test_loss,
    accuracy (classification), consensus_distance, bytes_sent (all ranks of the role).
    Collective over ``comms.role`` (and whatever the program's evaluation needs).

    Split-phase (asynchronous programs): :meth:`start`, then :meth:`poll` after every
    step until it returns ``(step, t_start, metrics)``; :meth:`finish` waits for an
    evaluation still under way. One evaluation at a time: starting the next one first
    completes the previous one.

    :attr:`diverged` tells whether the metrics last returned come from non-finite sums
    (the training loss, or the test loss of the evaluated model): the same verdict on
    every rank of the role. Their accuracy is then NaN, never a number computed from a
    NaN model (whose argmax picks class 0).
    """

    def __init__(self, comms: Comms, program: Program, trace: Trace, classification: bool) -> None:
        self.comm, self.program, self.trace = comms.role, program, trace
        self.classification = classification
        self.sums = np.zeros(8, dtype=np.float64)
        self.out = np.zeros(8, dtype=np.float64)
        self._pending: tuple[int, float, float, int, int] | None = None  # step, t0, loss sums, bytes
        self._req: MPI.Request | None = None  # the sums' Iallreduce, once the program's part is done
        self.diverged = False  # the last metrics: loss sums or the evaluated model not finite

    def __call__(self, step: int, loss_sum: float, loss_count: int) -> dict[str, float]:
        t0 = self.trace.now()
        e = self.program.evaluate()
        bytes_sent = self._bytes(step)
        self._fill(e, loss_sum, loss_count, bytes_sent)
        self.comm.Allreduce(self.sums, self.out, op=MPI.SUM)
        self.trace.record(step, EVAL, t0, self.trace.now())
        return self._metrics()

    def start(self, step: int, loss_sum: float, loss_count: int) -> list[tuple[int, float, dict[str, float]]]:
        """Start evaluating at ``step``; returns the metrics of an evaluation still under
        way, which it first completes (blocking), if there was one."""
        done = self.finish()
        self.program.start_evaluate()
        self._pending = (step, self.trace.now(), loss_sum, loss_count, self._bytes(step))
        return done

    def poll(self, wait: bool = False) -> list[tuple[int, float, dict[str, float]]]:
        """Progress the evaluation under way; its ``(step, t_start, metrics)`` once done."""
        if self._pending is None:
            return []
        step, t0, loss_sum, loss_count, bytes_sent = self._pending
        if self._req is None:
            e = self.program.evaluate_ready(wait)
            if e is None:
                return []
            self._fill(e, loss_sum, loss_count, bytes_sent)
            self._req = self.comm.Iallreduce(self.sums, self.out, op=MPI.SUM)
        if wait:
            self._req.Wait()
        elif not self._req.Test():
            return []
        self._req, self._pending = None, None
        self.trace.record(step, EVAL, t0, self.trace.now())
        return [(step, t0, self._metrics())]

    def finish(self) -> list[tuple[int, float, dict[str, float]]]:
        """Complete the evaluation under way (blocking), if any."""
        return self.poll(wait=True)

    def _bytes(self, step: int) -> int:
        bytes_sent = self.trace.bytes_sent  # exact in float64 below 2**53 bytes
        self.trace.add_row("bytes_sent", BYTES_DTYPE, (step + 1, bytes_sent))  # this rank's, cumulative
        return bytes_sent

    def _fill(self, e: EvalSums, loss_sum: float, loss_count: int, bytes_sent: int) -> None:
        self.sums[:] = (
            e.test_loss,
            e.correct,
            e.test_rows,
            loss_sum,
            loss_count,
            e.distance,
            e.holders,
            bytes_sent,
        )

    def _metrics(self) -> dict[str, float]:
        res, self.diverged = metrics_of(self.out, self.classification)
        return res


def metrics_of(sums: np.ndarray, classification: bool) -> tuple[dict[str, float], bool]:
    """The run's metrics from the 8 evaluation sums added over a role (test loss,
    correct, test rows, loss sum, loss count, distance, holders, bytes sent), and
    whether they say the run diverged (the loss sums or the test loss not finite)."""
    tl, correct, rows, ls, lc, dist, holders, total_bytes = (float(v) for v in sums)
    diverged = bool(not math.isfinite(ls) or (rows > 0 and not math.isfinite(tl)))
    res = {
        "test_loss": tl / rows if rows else float("nan"),
        "loss": ls / max(lc, 1),
        "consensus_distance": dist / holders if holders else float("nan"),
        "bytes_sent": total_bytes,
    }
    if classification:
        res["accuracy"] = correct / rows if rows and not diverged else float("nan")
    return res, diverged
