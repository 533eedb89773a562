"""DSP's queue sizes (Xu et al., "Diversely Stale Parameters for Efficient Training of
CNNs", §3.3 and Appendix A), checked before anything is built, and its schedule as a pure
generator (Figure 2; :func:`dsp_timetable`, :func:`dsp`, :func:`dsp_depths`).

The paper writes a configuration DSP(p_0, ..., p_{K-1}; m_0, ..., m_{K-1}): block k keeps
an input queue M_k of length 1+m_k, an output queue P_k of length 1+p_k and a gradient
queue Q_k of length 1+q_k, where m_k is also block k's layer-wise staleness Δt_k. Appendix
A fixes q from p and m so that "the input and backward error gradient in one block come
from the same data batch":

    q_k = m_{k-1} - p_{k-1} - m_k    for k = 1..K-1,
    q_0 = 0,   p_{K-1} = 0.

Where Appendix A is stricter than the paper itself, this module follows the paper's
configurations (a choice, tested):

- Appendix A asks q_k > 0, m_k > 0 and p_k > 0 (k < K-1), yet every configuration of
  the paper's experiments has m_{K-1} = 0 (e.g. DSP(1,1,0; 4,2,0)), and DSP with all
  staleness 0 must reduce to backprop. So the relations checked are q_k >= 0, m_k >= 0,
  p_k >= 0 and p_{K-1} = 0; nothing requires m_{K-1} = 0.
- q_k >= 0 implies m_{k-1} >= m_k + p_{k-1} >= m_k: staleness does not grow upwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .schedule import Op, backward_ops, forward_ops

__all__ = [
    "PAPER_CONFIGS",
    "QueueSizes",
    "Slot",
    "Timetable",
    "dsp",
    "dsp_depths",
    "dsp_queues",
    "dsp_timetable",
]

# DSP(p; m) of the paper's experiments (Tables 1 and 2): K = 3 and K = 4
PAPER_CONFIGS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((1, 1, 0), (4, 2, 0)),
    ((2, 2, 0), (6, 3, 0)),
    ((3, 3, 0), (10, 5, 0)),
    ((1, 1, 1, 0), (6, 4, 2, 0)),
    ((2, 2, 2, 0), (9, 6, 3, 0)),
    ((3, 3, 3, 0), (15, 10, 5, 0)),
)


@dataclass(frozen=True)
class QueueSizes:
    """Stage k's queue lengths (in messages) for DSP (§3.3): ``input`` = 1+m_k (M_k),
    ``output`` = 1+p_k (P_k), ``gradient`` = 1+q_k (Q_k); ``staleness`` = m_k (Δt_k)."""

    input: int
    output: int
    gradient: int
    staleness: int


def _ints(name: str, values: Sequence[int]) -> list[int]:
    out = list(values)
    for k, v in enumerate(out):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}_{k} must be an integer (got {v!r})")
        if v < 0:
            raise ValueError(f"{name}_{k} must be >= 0 (got {v})")
    return out


def dsp_queues(p: Sequence[int], m: Sequence[int]) -> list[QueueSizes]:
    """Per-stage queue sizes of DSP(p_0..p_{K-1}; m_0..m_{K-1}), Appendix A checked.

    ``p``: output-queue extras p_k; ``m``: input-queue extras m_k (= staleness of block
    k); both of length K >= 1. Returns K :class:`QueueSizes`, stage 0 first, with
    q_0 = 0 and q_k = m_{k-1} - p_{k-1} - m_k. Raises ValueError naming the broken
    relation, e.g. "q_1 = m_0 - p_0 - m_1 = 1 - 1 - 1 = -1 < 0" or "p_{K-1} must be 0".
    """
    p, m = _ints("p", p), _ints("m", m)
    if not p or len(p) != len(m):
        raise ValueError(f"p and m must both have K >= 1 entries, one per stage (got {len(p)} and {len(m)})")
    K = len(p)
    if p[K - 1] != 0:
        raise ValueError(
            f"p_{{K-1}} must be 0: the last stage has no output queue (got p_{K - 1} = {p[K - 1]})"
        )
    q = [0]
    for k in range(1, K):
        qk = m[k - 1] - p[k - 1] - m[k]
        if qk < 0:
            raise ValueError(
                f"q_{k} = m_{k - 1} - p_{k - 1} - m_{k} = {m[k - 1]} - {p[k - 1]} - {m[k]} = {qk} < 0 "
                f"(DSP Appendix A: block {k}'s input and error gradient must come from the same batch)"
            )
        q.append(qk)
    return [QueueSizes(1 + m[k], 1 + p[k], 1 + q[k], m[k]) for k in range(K)]


@dataclass(frozen=True)
class Slot:
    """What stage k does in one global step t of DSP (Figure 2's grid): ``forward`` /
    ``backward`` is the micro-batch forwarded / (recomputed and) backwarded, or None."""

    forward: int | None
    backward: int | None


def dsp_timetable(p: Sequence[int], m: Sequence[int], steps: int) -> list[list[Slot]]:
    """DSP's steady schedule as a grid of global steps (Figure 2), warm-up and drain included.

    Paper -> code: block k = stage k; data batch n = micro-batch ``n`` (0-based, the n-th
    batch the source feeds, one SGD update per batch and stage); timestamp = global step t.
    Stage k forwards batch n at step F_k(n) = n + d_k, d_k = p_0 + ... + p_{k-1} (its
    input waits p_{k-1} steps in block k-1's output queue P_{k-1}, length 1+p_{k-1}), and
    recomputes and backwards it at B_k(n) = F_k(n) + m_k: the input queue M_k (length
    1+m_k) holds batches n-m_k..n, so the Layer-wise Staleness Δt_k = t_{2K-1-k} - t_k
    (§3.1) is m_k steps, "the index difference between the forward and backward batch"
    (Figure 2). Then B_{k-1}(n) - B_k(n) = m_{k-1} - p_{k-1} - m_k = q_k, the wait in
    block k's gradient queue Q_k (length 1+q_k): Appendix A's relation is what makes the
    gradient arriving at block k-1 belong to the batch at the head of M_{k-1}.

    Choices where the paper is silent (tested): warm-up -- stage k starts backwarding
    once its input queue is full, at its (m_k+1)-th forward (batch 0's gradient arrives
    exactly then); ending -- ``steps`` batches are fed, then the pipeline drains: stage k
    runs m_k backward-only steps, so every batch is forwarded and backwarded once on every
    stage (``steps`` updates each) and no message is left in a queue.

    ``p``, ``m``: as :func:`dsp_queues` (checked there); ``steps``: batches fed (>= 1).
    Returns, per stage, one :class:`Slot` per global step 0..T-1, T = max_k(d_k+m_k)+steps
    (idle slots are Slot(None, None)). Raises ValueError naming a bad argument.
    """
    table = Timetable(p, m, steps)
    return [[table.slot(k, t) for t in range(table.length)] for k in range(len(table.p))]


class Timetable:
    """:func:`dsp_timetable`'s grid as arithmetic: any entry, and message counts, without
    keeping K x T slots (a training stage of a long run uses this). ``p``, ``m``,
    ``steps`` as there (checked; ValueError naming a bad argument)."""

    def __init__(self, p: Sequence[int], m: Sequence[int], steps: int) -> None:
        dsp_queues(p, m)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
        self.p, self.m, self.steps = list(p), list(m), steps
        self.d = [sum(self.p[:k]) for k in range(len(self.p))]  # stage k forwards batch n at step n + d_k
        self.length = max(d + mk for d, mk in zip(self.d, self.m, strict=True)) + steps  # T global steps

    def slot(self, k: int, t: int) -> Slot:
        """Stage k's part of global step t."""
        f, b = t - self.d[k], t - self.d[k] - self.m[k]
        n = self.steps
        return Slot(f if 0 <= f < n else None, b if 0 <= b < n else None)

    def counts(self, k: int, upto: int) -> tuple[int, int]:
        """(forwards, backwards) stage k has run in global steps 0..upto: what it has
        sent its neighbours and taken from them by then."""
        n = self.steps
        f = min(max(upto - self.d[k] + 1, 0), n)
        b = min(max(upto - self.d[k] - self.m[k] + 1, 0), n)
        return f, b


def dsp(p: Sequence[int], m: Sequence[int], steps: int) -> list[list[Op]]:
    """Per-stage op lists of DSP(p_0..p_{K-1}; m_0..m_{K-1}) over ``steps`` batches.

    Each stage runs its :func:`dsp_timetable` row step by step; one step is
    ``recv_act(f)<-k-1, forward(f), send_act(f)->k+1`` (the newest batch f it holds), then
    ``recompute(b), recv_grad(b)<-k+1, backward(b), send_grad(b)->k-1`` (b = f - m_k, the
    oldest input in M_k), each part present only if the step has it and the peer exists.
    Forward before backward within a step (a choice; it is what lets all-zero staleness
    be plain backprop, where a step's forward and backward are of the same batch).
    ``recompute`` (eq. 5: block k's forward redone from its stored input with its current
    weights x_k^{t_{2K-1-k}}, the ones the backward uses; the paper overlaps it with the
    forward, §3.3, and it may be fused with that forward as both use the same weights)
    appears only where m_k > 0: with m_k = 0 the weights are those of the forward.
    DSP with all p_k = m_k = 0 is sequential backprop: each stage's list is ``gpipe(K, 1)``
    (= ``one_f_one_b(K, 1)``) repeated for batches 0..steps-1.

    Channel depths for :func:`~mpiml.pipeline.simulate.simulate`: see
    :func:`dsp_depths`. Raises ValueError as :func:`dsp_timetable`.
    """
    grid = dsp_timetable(p, m, steps)
    K = len(grid)
    stages = []
    for k, row in enumerate(grid):
        ops: list[Op] = []
        for slot in row:
            if slot.forward is not None:
                ops += forward_ops(k, K, slot.forward)
            if slot.backward is not None:
                if m[k] > 0:
                    ops.append(Op("recompute", slot.backward))
                ops += backward_ops(k, K, slot.backward)
        stages.append(ops)
    return stages


def dsp_depths(p: Sequence[int], m: Sequence[int]) -> dict[tuple[int, int, str], int]:
    """Channel depths of DSP for :func:`~mpiml.pipeline.simulate.simulate`'s ``depths``:
    activations k -> k+1 hold block k's output queue P_k (1+p_k), gradients k -> k-1 block
    k's gradient queue Q_k (1+q_k). The input queue M_k (1+m_k) is stage k's stash of
    inputs, not a channel. Raises ValueError as :func:`dsp_queues`."""
    sizes = dsp_queues(p, m)
    out = {}
    for k, s in enumerate(sizes):
        if k + 1 < len(sizes):
            out[k, k + 1, "act"] = s.output
        if k > 0:
            out[k, k - 1, "grad"] = s.gradient
    return out
