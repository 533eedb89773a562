"""Cutting a model into K pipeline stages: at given layer boundaries, or balanced by
parameter count or by a measured cost per layer (exact, :func:`balanced_boundaries`).

The stages themselves (forward and backward of a block of layers on its slice of the flat
vector) are :mod:`mpiml.models.stages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isfinite
from typing import Any, NoReturn, overload

import numpy as np

from .linear import LinearRegression
from .mlp import MLP
from .stages import LinearStage, Stage
from .timed import TimedModel

__all__ = ["balanced_boundaries", "layer_params", "measure_layer_costs", "split"]


def layer_params(model: MLP) -> list[int]:
    """Number of parameters of each layer of ``model``: ``fan_in * fan_out + fan_out``."""
    return [a * b + b for a, b in zip(model.sizes[:-1], model.sizes[1:], strict=True)]


def balanced_boundaries(weights: Sequence[float], parts: int) -> list[int]:
    """Cut ``weights`` into ``parts`` contiguous non-empty blocks minimising the largest sum.

    Exact, by dynamic programming over suffixes: with ``S(i, j) = weights[i] + ... +
    weights[j-1]`` (summed left to right) and L = len(weights),

        best(1, i) = S(i, L),
        best(k, i) = min over i < c <= L-k+1 of max(S(i, c), best(k-1, c)),

    the optimum is ``T = best(parts, 0)``, in O(parts * L^2) time (L is a layer count).
    Among the partitions whose largest block is ``T``, the one with the earliest cuts
    (lexicographically smallest boundaries) is returned: each cut is taken at the first
    ``c`` whose block sum and remaining ``best`` are both ``<= T``.

    Parameters
    ----------
    weights : sequence of float, length L >= parts
        Per-layer parameter counts or measured costs, all finite and >= 0.
    parts : int
        Number K of blocks, 1 <= K <= L.

    Returns
    -------
    list of int
        The K-1 indices where blocks 1..K-1 start, strictly increasing in 1..L-1.
    """
    n = len(weights)
    if not 1 <= parts <= n:
        raise ValueError(f"parts must be between 1 and len(weights) = {n} (got {parts})")
    # s[i][c - i]: sum of weights[i:c], c = i..n, summed left to right (exact for ints)
    s: list[list[float]] = []
    for i in range(n):
        row: list[float] = [0]
        acc: float = 0
        for x in weights[i:]:
            acc = acc + x
            row.append(acc)
        s.append(row)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    for i in range(n):
        best[1][i] = s[i][n - i]
    for k in range(2, parts + 1):
        for i in range(n - k + 1):
            best[k][i] = min(max(s[i][c - i], best[k - 1][c]) for c in range(i + 1, n - k + 2))
    target = best[parts][0]
    cuts, i = [], 0
    for k in range(parts, 1, -1):
        c = next(c for c in range(i + 1, n - k + 2) if s[i][c - i] <= target and best[k - 1][c] <= target)
        cuts.append(c)
        i = c
    return cuts


def _check_boundaries(boundaries: Sequence[int], stages: int, n_layers: int) -> list[int]:
    b = list(boundaries)
    if len(b) != stages - 1:
        raise ValueError(
            f"boundaries must list the {stages - 1} layer indices where stages 1..{stages - 1} start "
            f"(got {len(b)}: {b})"
        )
    if any(not isinstance(x, int | np.integer) for x in b):
        raise ValueError(f"boundaries must be integers (got {b})")
    if any(not 1 <= x <= n_layers - 1 for x in b):
        raise ValueError(
            f"boundaries must lie in 1..{n_layers - 1} for a model of {n_layers} layers (got {b})"
        )
    if any(x >= y for x, y in zip(b, b[1:], strict=False)):
        raise ValueError(f"boundaries must be strictly increasing (got {b})")
    return [int(x) for x in b]


@overload
def split(
    model: MLP,
    stages: int,
    *,
    boundaries: Sequence[int] | None = None,
    balance: str = "params",
    cost: Sequence[float] | None = None,
) -> list[Stage]: ...


@overload
def split(
    model: LinearRegression,
    stages: int,
    *,
    boundaries: Sequence[int] | None = None,
    balance: str = "params",
    cost: Sequence[float] | None = None,
) -> list[LinearStage]: ...


@overload
def split(
    model: TimedModel,
    stages: int,
    *,
    boundaries: Sequence[int] | None = None,
    balance: str = "params",
    cost: Sequence[float] | None = None,
) -> NoReturn: ...


def split(
    model: MLP | LinearRegression | TimedModel,
    stages: int,
    *,
    boundaries: Sequence[int] | None = None,
    balance: str = "params",
    cost: Sequence[float] | None = None,
) -> list[Stage] | list[LinearStage]:
    """Cut ``model`` into ``stages`` contiguous blocks of layers, in pipeline order.

    Parameters
    ----------
    model : MLP or LinearRegression
        An MLP of L layers splits into 1..L stages; a LinearRegression is one layer (one
        stage); a TimedModel has no layers and cannot be split.
    stages : int
        Number K of stages.
    boundaries : sequence of int, optional
        The K-1 layer indices where stages 1..K-1 start, strictly increasing in 1..L-1.
        Given, they decide the cut and ``balance``/``cost`` are not used.
    balance : {"params", "cost"}
        Without boundaries: minimise the largest stage's parameter count ("params"), or
        its sum of ``cost`` ("cost"), exactly (:func:`balanced_boundaries`).
    cost : sequence of float, optional
        With ``balance="cost"``: a measured cost of each of the L layers (e.g. seconds of
        forward plus backward), finite and >= 0.

    Returns
    -------
    list of Stage (LinearStage for a LinearRegression)
        Stage k holds ``w_whole[stage.offset : stage.offset + stage.size]``; the slices tile
        the whole flat vector in order.
    """
    if isinstance(model, TimedModel):
        raise ValueError(
            "a TimedModel cannot be split into stages: it is a synthetic workload with no layers "
            "(pipelines need model.name = 'mlp' or 'softmax')"
        )
    if not isinstance(model, MLP | LinearRegression):
        raise TypeError(f"split needs an MLP or a LinearRegression (got {type(model).__name__})")
    n_layers = model.n_layers if isinstance(model, MLP) else 1
    if not isinstance(stages, int | np.integer) or not 1 <= stages <= n_layers:
        kind = "MLP" if isinstance(model, MLP) else "LinearRegression (one layer)"
        raise ValueError(f"stages must be between 1 and the {kind}'s {n_layers} layers (got {stages!r})")
    if balance not in ("params", "cost"):
        raise ValueError(f"balance must be 'params' or 'cost' (got {balance!r})")
    if boundaries is not None and (cost is not None or balance == "cost"):
        raise ValueError("give either boundaries or balance='cost' with cost, not both")
    if balance == "cost":
        if cost is None:
            raise ValueError(f"balance='cost' needs cost: one measured cost per layer ({n_layers} values)")
        if len(cost) != n_layers or any(not (isfinite(c) and c >= 0) for c in cost):
            raise ValueError(
                f"cost must hold {n_layers} finite values >= 0, one per layer (got {list(cost)})"
            )
    elif cost is not None:
        raise ValueError("cost is only used with balance='cost' (got balance='params')")

    if boundaries is not None:
        cuts = _check_boundaries(boundaries, stages, n_layers)
    elif cost is not None:
        cuts = balanced_boundaries([float(c) for c in cost], stages)
    else:
        cuts = balanced_boundaries(layer_params(model) if isinstance(model, MLP) else [model.size], stages)

    if isinstance(model, LinearRegression):
        return [LinearStage(model)]
    edges = [0, *cuts, n_layers]
    return [Stage(model, a, b, k, stages) for k, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True))]


def measure_layer_costs(model: MLP, rows: int, xp: Any = np, repeats: int = 5) -> list[float]:
    """Seconds of each layer's forward plus backward pass of ``model`` on ``rows`` random
    rows (the fastest of ``repeats``; numpy or cupy ``xp``), for ``split(..., balance="cost")``.
    Local, no MPI. Times vary from run to run and machine to machine."""
    import time

    rng = np.random.default_rng(0)
    costs = []
    for i in range(model.n_layers):
        st = Stage(model, i, i + 1, i, model.n_layers)
        w = xp.asarray(rng.standard_normal(st.size).astype(st.dtype) * 0.1)
        a = xp.asarray(rng.standard_normal((rows, st.in_features)).astype(st.dtype))
        g_out = xp.ones((rows, st.out_features), dtype=st.dtype)
        y = xp.zeros(rows, dtype=np.int64)
        g_w = xp.empty_like(w)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            st.forward(w, a, slot=0)
            if st.last:
                st.loss_backward(w, y, g_w, slot=0)
            else:
                st.backward(w, g_out, g_w, slot=0)
            best = min(best, time.perf_counter() - t0)
        costs.append(best)
    return costs
