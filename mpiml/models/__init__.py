"""Models on one flat parameter vector, with manual backprop (numpy or cupy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array
from .flat import ParamLayout
from .linear import LinearRegression
from .mlp import MLP
from .partition import balanced_boundaries, layer_params, split
from .stages import LinearStage, Stage
from .timed import TimedModel

__all__ = [
    "LinearRegression",
    "MLP",
    "ParamLayout",
    "TimedModel",
    "build_model",
    "initial_params",
    "job_model",
]
__all__ += ["LinearStage", "Stage", "balanced_boundaries", "layer_params", "split"]

Model = MLP | LinearRegression | TimedModel


def build_model(
    name: str,
    n_features: int,
    n_classes: int,
    hidden: list[int],
    activation: str,
    dtype: str,
    params: int = 1_000_000,
    compute_ms: float = 100.0,
    compute: str = "sleep",
) -> Model:
    """``softmax`` (softmax regression), ``mlp`` with the given hidden widths, or
    ``linear`` (least squares; ``n_classes`` is 0 for regression data), or ``timed``
    (a synthetic workload of ``params`` parameters and ``compute_ms`` per step)."""
    if name == "timed":
        return TimedModel(params, compute_ms, compute, dtype)
    if name == "linear":
        return LinearRegression(n_features, dtype)
    if n_classes < 2:
        raise ValueError(
            f"model.name = {name!r} needs class labels; regression data needs model.name = 'linear'"
        )
    if name == "softmax":
        return MLP([n_features, n_classes], activation, dtype)
    if name == "mlp":
        return MLP([n_features, *hidden, n_classes], activation, dtype)
    raise ValueError(f"model.name must be 'softmax', 'mlp' or 'linear' (got {name!r})")


def job_model(cfg: Any, n_features: int, n_classes: int) -> Model:
    """The job's ``[model]`` for data of ``n_features`` columns and ``n_classes`` classes
    (0: regression): :func:`build_model` with every key of the section. ValueError as
    :func:`build_model` raises it."""
    m = cfg.model
    return build_model(
        m.name, n_features, n_classes, m.hidden, m.activation, m.dtype, m.params, m.compute_ms, m.compute
    )


def initial_params(cfg: Any, model: Model, xp: Any = np) -> Array:
    """x_0: the flat parameters every rank holding the model starts from, drawn from
    the run seed (``SeedSequence([run.seed, 0])``) at ``model.init_scale``; numpy or cupy."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.run.seed, 0]))
    return model.init(rng, xp, cfg.model.init_scale)
