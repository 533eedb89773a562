"""Data sources, sharding and sampling (pure, no MPI)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiml.config import load_config
from mpiml.data import ShardSampler, build_data, dirichlet_shards, iid_shards, load_digits
from mpiml.errors import ConfigError


def test_digits_split_is_seeded_and_disjoint() -> None:
    a, b = load_digits(0.2, 0), load_digits(0.2, 0)
    assert np.array_equal(a.x_train, b.x_train) and a.n_classes == 10
    assert len(a.x_train) + len(a.x_test) == 1797 and len(a.x_test) == 359
    assert not np.array_equal(load_digits(0.2, 1).y_test, a.y_test)


@pytest.mark.parametrize("size", [1, 3, 4])
def test_iid_shards_partition_every_row_once(size: int) -> None:
    shards = iid_shards(101, size, 0)
    allrows = np.sort(np.concatenate(shards))
    assert np.array_equal(allrows, np.arange(101))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_dirichlet_shards_partition_and_skew() -> None:
    labels = np.repeat(np.arange(10), 100)
    shards = dirichlet_shards(labels, 4, 0.1, 0)
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(1000))
    # small alpha: each rank is dominated by few classes; large alpha: near uniform
    top_share = np.mean([np.bincount(labels[s], minlength=10).max() / max(len(s), 1) for s in shards])
    uniform = dirichlet_shards(labels, 4, 1000.0, 0)
    top_uniform = np.mean([np.bincount(labels[s], minlength=10).max() / len(s) for s in uniform])
    assert top_share > 0.3 and top_uniform < 0.15


def test_sampler_state_restores_the_exact_sequence() -> None:
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    y = np.arange(20)
    s = ShardSampler(x, y, 6, np.random.default_rng(0))
    for _ in range(4):  # crosses an epoch boundary (3 batches of 6 per epoch, 2 rows dropped)
        s.next()
    st = s.state()
    want = [s.next()[1].copy() for _ in range(5)]
    t = ShardSampler(x, y, 6, np.random.default_rng(99))
    t.restore(st)
    got = [t.next()[1].copy() for _ in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))
    assert s.epoch >= 2


def test_sampler_rejects_a_batch_larger_than_the_shard() -> None:
    with pytest.raises(ValueError, match="batch_size 9 exceeds the shard of 8 rows"):
        ShardSampler(np.zeros((8, 1)), np.zeros(8), 9, np.random.default_rng(0))


def test_build_data_names_batch_size_when_shards_are_too_small() -> None:
    cfg = load_config(None, ["data.batch_size=400"])
    with pytest.raises(
        ConfigError, match=r"data.batch_size = 400 is larger than the smallest shard \(359 rows"
    ):
        build_data(cfg, 0, 4)


def test_synthetic_regression_of_any_size_is_sharded_by_generation() -> None:
    cfg = load_config(
        None, ["data.name=synthetic", "model.name=linear", "data.features=1000", "data.samples=100"]
    )
    d0, d1 = build_data(cfg, 0, 2), build_data(cfg, 1, 2)
    assert d0.n_features == 1000 and d0.n_classes == 0
    assert d0.x_train.shape[0] + d1.x_train.shape[0] == 80
    assert not np.array_equal(d0.x_train[0], d1.x_train[0])


def test_hdf5_dataset_file(tmp_path: Path) -> None:
    p = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with h5py.File(p, "w") as f:
        f["x"] = rng.standard_normal((50, 3))
        f["y"] = rng.integers(0, 4, 50)
    cfg = load_config(None, ["data.name=hdf5", f"data.path={p}", "data.batch_size=4"])
    d = build_data(cfg, 1, 2)
    assert d.n_features == 3 and d.n_classes == 4 and d.x_train.dtype == np.float32


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"y": np.zeros(5, np.int64)}, "has no dataset /x"),
        ({"x": np.zeros((5, 2))}, "has no dataset /y"),
        ({"x": np.zeros(5), "y": np.zeros(5, np.int64)}, "must be 2-D"),
        ({"x": np.zeros((5, 2)), "y": np.zeros(4, np.int64)}, r"must have shape \(5,\)"),
        ({"x": np.full((5, 2), np.nan), "y": np.zeros(5, np.int64)}, "NaN or Inf"),
    ],
)
def test_bad_hdf5_files_are_named(tmp_path: Path, content: dict[str, np.ndarray], message: str) -> None:
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        for k, v in content.items():
            f[k] = v
    cfg = load_config(None, ["data.name=hdf5", f"data.path={p}", "data.batch_size=1"])
    with pytest.raises(ConfigError, match=message):
        build_data(cfg, 0, 1)


def test_missing_and_non_hdf5_files(tmp_path: Path) -> None:
    cfg = load_config(None, ["data.name=hdf5", f"data.path={tmp_path / 'none.h5'}"])
    with pytest.raises(ConfigError, match="does not exist"):
        build_data(cfg, 0, 1)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    cfg = load_config(None, ["data.name=hdf5", f"data.path={junk}"])
    with pytest.raises(ConfigError, match="not a readable HDF5 file"):
        build_data(cfg, 0, 1)
