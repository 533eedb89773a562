"""Shared pieces of the serial float64 references the multi-rank tests compare with."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpiml.config import Config, load_config
from mpiml.data import RankData, build_data
from mpiml.models import Model, build_model


def workers(cfg: Any, n: int) -> tuple[list[RankData], Model, np.ndarray]:
    """Each of n ranks' data (same shards and samplers as the ranks), the job's model in
    float64, and the initial parameters every rank starts from."""
    datas = [build_data(cfg, r, n) for r in range(n)]
    model = build_model(
        cfg.model.name,
        datas[0].n_features,
        datas[0].n_classes,
        cfg.model.hidden,
        cfg.model.activation,
        "float64",
    )
    x0 = model.init(np.random.default_rng(np.random.SeedSequence([cfg.run.seed, 0])))
    return datas, model, x0


def small_job(name: str, *extra: str, steps: int = 30, eval_every: int = 10) -> Config:
    """The multi-rank oracle tests' job: float64, plain SGD, small Dirichlet shards (so
    local models drift apart), no checkpoints; ``extra`` overrides last."""
    return load_config(
        None,
        [
            f"run.name={name}",
            f"run.steps={steps}",
            f"run.eval_every={eval_every}",
            "model.dtype=float64",
            "data.batch_size=8",
            "data.partition=dirichlet",
            "data.alpha=0.5",
            "optimizer.name=sgd",
            "optimizer.lr=0.1",
            "checkpoint.every=0",
            *extra,
        ],
    )
