"""DSP's queue sizes (Xu et al., "Diversely Stale Parameters for Efficient Training of
CNNs", §3.3 and Appendix A), checked before anything is built.

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

__all__ = ["QueueSizes", "dsp_queues"]


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
