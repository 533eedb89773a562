"""Shared pieces of the serial float64 references the multi-rank tests compare with."""

from __future__ import annotations

from typing import Any

import numpy as np

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
