"""Synchronous pipeline schedules as pure generators: GPipe and 1F1B (PipeDream-flush).

A schedule is, for each of K stages, the ordered list of :class:`Op` that stage runs for
one minibatch of m micro-batches. Nothing here communicates: the lists are data, tested
against literal tables (as torchgpipe tests its clock cycles) and replayed against the
send/receive pairing by :func:`mpiml.pipeline.simulate.simulate` (as DeepSpeed's pipe
tests replay every rank's instruction stream), which finds a deadlock before any rank runs.

Conventions shared by both generators (stage k, micro-batch i, 0-based):

- a forward on stage k > 0 is preceded by ``recv_act(i, peer=k-1)``; a forward on stage
  k < K-1 is followed by ``send_act(i, peer=k+1)``;
- a backward on stage k < K-1 is preceded by ``recv_grad(i, peer=k+1)``; a backward on
  stage k > 0 is followed by ``send_grad(i, peer=k-1)``;
- the last stage's backward starts from its own loss (no receive); stage 0 sends no
  gradient (the input needs none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["KINDS", "Op", "backward_ops", "forward_ops", "gpipe", "one_f_one_b"]

Kind = Literal["forward", "backward", "recompute", "send_act", "recv_act", "send_grad", "recv_grad"]
KINDS: tuple[str, ...] = get_args(Kind)
# recompute (DSP only, eq. 5): the forward of a stored input again with the stage's current
# weights, just before that micro-batch's backward; it costs a forward.
_COMPUTE = ("forward", "backward", "recompute")


@dataclass(frozen=True)
class Op:
    """One operation of one stage.

    ``kind``: one of :data:`KINDS`; ``mb``: the micro-batch id (0-based, within the
    minibatch); ``peer``: the stage a message goes to or comes from (None for
    ``forward`` / ``backward``).
    """

    kind: Kind
    mb: int
    peer: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Op.kind must be one of {', '.join(KINDS)} (got {self.kind!r})")
        if self.mb < 0:
            raise ValueError(f"Op.mb must be >= 0 (got {self.mb})")
        if (self.kind in _COMPUTE) != (self.peer is None):
            raise ValueError(
                f"Op {self.kind!r}: a peer stage is needed for messages only (got peer={self.peer})"
            )

    @property
    def is_compute(self) -> bool:
        return self.kind in _COMPUTE

    def __str__(self) -> str:
        if self.peer is None:
            return f"{self.kind}({self.mb})"
        arrow = "->" if self.kind.startswith("send") else "<-"
        return f"{self.kind}({self.mb}){arrow}{self.peer}"


def _check(K: int, m: int) -> None:
    for name, value in (("K", K), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1 (got {value!r})")


def forward_ops(k: int, K: int, i: int) -> list[Op]:
    """Stage k's ops for the forward of micro-batch i: [recv_act], forward, [send_act]."""
    ops = [Op("recv_act", i, k - 1)] if k > 0 else []
    ops.append(Op("forward", i))
    if k < K - 1:
        ops.append(Op("send_act", i, k + 1))
    return ops


def backward_ops(k: int, K: int, i: int) -> list[Op]:
    """Stage k's ops for the backward of micro-batch i: [recv_grad], backward, [send_grad]."""
    ops = [Op("recv_grad", i, k + 1)] if k < K - 1 else []
    ops.append(Op("backward", i))
    if k > 0:
        ops.append(Op("send_grad", i, k - 1))
    return ops


def gpipe(K: int, m: int) -> list[list[Op]]:
    """GPipe (Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks using
    Pipeline Parallelism", §2.2; torchgpipe's ``clock_cycles``): every stage runs the
    forwards of micro-batches 0, 1, ..., m-1, then the backwards in reverse order
    m-1, ..., 0 (the order autograd unwinds them; the flush at the end of the minibatch
    is the caller's, not an op).

    ``K``: stages (>= 1); ``m``: micro-batches per minibatch (>= 1). Returns a list of K
    op lists, stage 0 first. With unit forward and backward costs the idle ("bubble")
    fraction is (K-1)/(m+K-1). Raises ValueError naming ``K`` or ``m`` if either is < 1.
    """
    _check(K, m)
    stages = []
    for k in range(K):
        ops = [op for i in range(m) for op in forward_ops(k, K, i)]
        ops += [op for i in reversed(range(m)) for op in backward_ops(k, K, i)]
        stages.append(ops)
    return stages


def one_f_one_b(K: int, m: int) -> list[list[Op]]:
    """1F1B with a flush: PipeDream-flush (Narayanan et al. 2021, "Memory-Efficient
    Pipeline-Parallel DNN Training", §3.1) as Megatron-LM schedules it
    (``forward_backward_pipelining_without_interleaving``; Narayanan et al. SC'21, §2.2.1).

    Stage k warms up with w = min(K-k-1, m) forwards (micro-batches 0..w-1), then
    alternates one forward and one backward for the remaining m-w micro-batches
    (forward w+j, then backward j), then cools down with the last w backwards. Forwards
    and backwards each run in micro-batch order 0, 1, ..., m-1; at most w+1 activations
    are stashed on stage k (GPipe stashes m). The last stage (w = 0) runs F0 B0 F1 B1 ...

    ``K``: stages (>= 1); ``m``: micro-batches per minibatch (>= 1). Returns a list of K
    op lists, stage 0 first; with unit costs its bubble fraction equals GPipe's,
    (K-1)/(m+K-1). Raises ValueError naming ``K`` or ``m`` if either is < 1.
    """
    _check(K, m)
    stages = []
    for k in range(K):
        warmup = min(K - k - 1, m)
        ops = [op for i in range(warmup) for op in forward_ops(k, K, i)]
        for j in range(m - warmup):
            ops += forward_ops(k, K, warmup + j)
            ops += backward_ops(k, K, j)
        ops += [op for i in range(m - warmup, m) for op in backward_ops(k, K, i)]
        stages.append(ops)
    return stages
