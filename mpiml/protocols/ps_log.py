"""What a parameter server records: its tables (one row per applied update, per answered
pull, per worker's count at the end), the staleness histogram, the coordinator's
evaluations under way, and the error a lost update raises. Pure numpy; the server (:mod:`mpiml.protocols.ps_server`) fills them."""

from __future__ import annotations

import numpy as np

__all__ = ["APPLY_DTYPE", "COUNTS_DTYPE", "PULL_DTYPE", "EvalSlots", "LostUpdateError", "StalenessHistogram"]

APPLY_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("worker", "<i4"),
        ("clock", "<i8"),
        ("version_read", "<i8"),
        ("version", "<i8"),
        ("t", "<f8"),
    ]
)
"""/ranks/<server>/ps_apply: one row per applied push, in apply order. ``step``: the
0-based index of the worker's step that pushed it (its steps completed - 1; a resume
keeps the rows of the steps before its checkpoint), ``worker``: its index (0..W-1),
``clock``: the push's clock (1 for a worker's first push), ``version_read``: the shard
version the update was computed from, ``version``: the version it was applied to
(updates applied before it); staleness = version - version_read. With staleness 0
(BSP) the W pushes of a clock share one version."""

PULL_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("worker", "<i4"),
        ("clock", "<i8"),
        ("slowest", "<i8"),
        ("version", "<i8"),
        ("t", "<f8"),
    ]
)
"""/ranks/<server>/ps_pull: one row per answered pull. ``step``: the worker's steps
completed when it asked, - 1; ``clock``: its clock (pushes applied); ``slowest``: the
smallest clock of any worker when answered (the bound: clock - slowest <= s);
``version``: the version sent."""

COUNTS_DTYPE = np.dtype([("step", "<i8"), ("worker", "<i4"), ("pushed", "<i8"), ("applied", "<i8")])
"""/ranks/<server>/ps_counts: at the end of the run, per worker: the pushes it says it
made to this shard and the pushes this server applied (equal, or the run failed);
``step``: its steps completed - 1."""


class LostUpdateError(RuntimeError):
    """A worker pushed a different number of updates than its server applied."""


class StalenessHistogram:
    """Updates applied per staleness (in versions: updates applied between an update's
    read and its apply), in ``counts`` (int64, grown as needed; checkpointed)."""

    def __init__(self) -> None:
        self.counts = np.zeros(64, dtype=np.int64)

    def add(self, k: int) -> None:
        """One more update of staleness ``k`` >= 0."""
        if k >= self.counts.size:
            grow = np.zeros(max(k + 1, self.counts.size), dtype=np.int64)
            self.counts = np.concatenate([self.counts, grow])
        self.counts[k] += 1

    def stats(self) -> np.ndarray:
        """[count, mean, median, p95, max] (float64; NaN statistics when empty).
        Percentiles are the lowest staleness whose cumulative count reaches 50% / 95%
        of the updates."""
        h = self.counts
        n = int(h.sum())
        if not n:
            return np.array([0.0, np.nan, np.nan, np.nan, np.nan])
        k = np.arange(h.size)
        cum = np.cumsum(h)
        p50 = int(np.searchsorted(cum, 0.5 * n))
        p95 = int(np.searchsorted(cum, 0.95 * n))
        return np.array([n, float(k @ h) / n, p50, p95, int(k[h > 0].max())])


class EvalSlots:
    """The coordinator's evaluations under way: per step, the sum of the 6 evaluation
    sums (float64) the workers have sent so far and how many have. Checkpointed: a stop
    with no staleness bound leaves workers at different steps."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.slots: dict[int, tuple[np.ndarray, int]] = {}

    def add(self, step: int, sums: np.ndarray) -> np.ndarray | None:
        """One worker's sums for ``step``; the total once every worker's are in (the
        slot is then forgotten), else None."""
        total, count = self.slots.get(step, (np.zeros(6), 0))
        total = total + sums
        if count + 1 == self.workers:
            self.slots.pop(step, None)
            return total
        self.slots[step] = (total, count + 1)
        return None

    def state_arrays(self) -> dict[str, np.ndarray]:
        steps = sorted(self.slots)
        return {
            "ps/eval_steps": np.array(steps, dtype=np.int64),
            "ps/eval_sums": np.array([self.slots[k][0] for k in steps]).reshape(-1, 6),
            "ps/eval_counts": np.array([self.slots[k][1] for k in steps], dtype=np.int64),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.slots = {
            int(k): (np.array(v, dtype=np.float64), int(c))
            for k, v, c in zip(
                arrays["ps/eval_steps"], arrays["ps/eval_sums"], arrays["ps/eval_counts"], strict=True
            )
        }
