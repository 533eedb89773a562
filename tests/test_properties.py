"""Property tests (hypothesis) of the pure pieces: sharding, sampling, layouts, --set."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mpiml.config import load_config, schema
from mpiml.data import dirichlet_shards, iid_shards
from mpiml.models import ParamLayout

schema()  # the plug-in sections load once, on first use: not inside a hypothesis deadline


@given(n=st.integers(1, 500), size=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
def test_iid_shards_are_a_partition(n: int, size: int, seed: int) -> None:
    shards = iid_shards(n, size, seed)
    assert len(shards) == size
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))


@given(
    labels=st.lists(st.integers(0, 9), min_size=1, max_size=300),
    size=st.integers(1, 8),
    alpha=st.floats(0.01, 100.0),
    seed=st.integers(0, 1000),
)
def test_dirichlet_shards_are_a_partition(labels: list[int], size: int, alpha: float, seed: int) -> None:
    y = np.array(labels)
    shards = dirichlet_shards(y, size, alpha, seed)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(y)))


@given(shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=3), min_size=1, max_size=6))
def test_layout_views_tile_the_flat_array(shapes: list[list[int]]) -> None:
    layout = ParamLayout(tuple(f"t{i}" for i in range(len(shapes))), tuple(tuple(s) for s in shapes))
    flat = np.zeros(layout.size)
    for i, v in enumerate(layout.views(flat).values()):
        v[...] += i + 1
    counts = np.bincount(flat.astype(np.int64), minlength=len(shapes) + 1)
    assert counts[0] == 0 and all(counts[i + 1] == np.prod(s) for i, s in enumerate(shapes))


@settings(max_examples=50)
@given(
    steps=st.integers(1, 10**6), lr=st.floats(1e-6, 10.0), name=st.text("abcdefgh-_", min_size=1, max_size=12)
)
def test_set_overrides_round_trip(steps: int, lr: float, name: str) -> None:
    cfg = load_config(None, [f"run.steps={steps}", f"optimizer.lr={lr!r}", f"run.name={name}"])
    assert (cfg.run.steps, cfg.optimizer.lr, cfg.run.name) == (steps, lr, name)
