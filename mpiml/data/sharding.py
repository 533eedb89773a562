"""Per-rank shards of the training rows: iid, or non-iid by Dirichlet(alpha) over labels.

Pure functions of (labels, number of ranks, seed): every rank computes the same
partition and keeps its own part, so no data crosses MPI.
"""

from __future__ import annotations

import numpy as np

from .sources import seed_rng

__all__ = ["dirichlet_shards", "iid_shards"]


def iid_shards(n: int, size: int, seed: int) -> list[np.ndarray]:
    """A seeded permutation of range(n) cut into ``size`` nearly equal parts."""
    perm = seed_rng(seed, 11).permutation(n)
    return [np.sort(part) for part in np.array_split(perm, size)]


def dirichlet_shards(labels: np.ndarray, size: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Label-skewed shards (Hsu et al., 2019): for each class c, proportions
    p_c ~ Dirichlet(alpha * 1_size) over ranks, and the class's rows are cut in
    those proportions. Small alpha: each rank sees few classes; alpha -> inf: iid.
    """
    rng = seed_rng(seed, 12)
    parts: list[list[np.ndarray]] = [[] for _ in range(size)]
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rng.shuffle(rows)
        p = rng.dirichlet(np.full(size, alpha))
        cuts = (np.cumsum(p)[:-1] * len(rows)).astype(np.int64)
        for r, chunk in enumerate(np.split(rows, cuts)):
            parts[r].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]
