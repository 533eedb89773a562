"""Data sources, sharding and sampling (pure, no MPI)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def _sampler(n: int, batch: int, seed: int) -> tuple[np.ndarray, ShardSampler]:
    """A sampler over ``n`` rows whose labels are their row numbers and whose features
    name them too (row i is (i, -i)), so every batch says which rows it holds."""
    rows = np.arange(n)
    x = np.stack([rows, -rows], axis=1).astype(np.float64)
    return x, ShardSampler(x, rows.copy(), batch, np.random.default_rng(seed))


def _draw(s: ShardSampler, x: np.ndarray, count: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``count`` batches as (epoch, rows, that epoch's permutation), from ``state()``
    after each batch; each batch must be ``batch_size`` rows, features matching labels."""
    out = []
    for _ in range(count):
        xb, yb = s.next()
        assert yb.shape == (s.batch_size,) and np.array_equal(xb, x[yb]), "features do not match rows"
        state = s.state()
        out.append((int(state["epoch"]), yb.copy(), np.asarray(state["perm"]).copy()))
    return out


def _check_epochs(n: int, batch: int, draws: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
    """The sampler's contract on a run of draws from a fresh sampler:

    - every epoch has exactly k = n // batch batches (epoch of draw i is i // k);
    - an epoch's batches walk its permutation of the shard in order, so a complete
      epoch yields every row exactly once except the dropped tail, which is exactly the
      last n mod batch rows of that epoch's permutation.
    """
    k, kept = n // batch, (n // batch) * batch
    epochs = [e for e, _, _ in draws]
    assert epochs == [i // k for i in range(len(draws))], f"epochs of the draws: {epochs} (k = {k})"
    for e in range(epochs[-1] + 1):
        mine = [(rows, perm) for ep, rows, perm in draws if ep == e]
        perm = mine[0][1]
        assert all(np.array_equal(p, perm) for _, p in mine), f"epoch {e}: its permutation changed mid-epoch"
        assert np.array_equal(np.sort(perm), np.arange(n)), f"epoch {e}: not a permutation of the shard"
        seen = np.concatenate([rows for rows, _ in mine])
        assert np.array_equal(seen, perm[: seen.size]), f"epoch {e}: batches are not its permutation in order"
        if len(mine) == k:  # a complete epoch
            assert seen.size == kept and np.unique(seen).size == kept, f"epoch {e}: a row repeats"
            dropped = np.setdiff1d(np.arange(n), seen)
            assert dropped.size == n % batch, f"epoch {e}: dropped {dropped.size} rows, not n mod batch"
            assert np.array_equal(np.sort(perm[kept:]), dropped), (
                f"epoch {e}: the dropped rows are not the tail"
            )


def _epoch_perms(draws: list[tuple[int, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Each epoch's permutation, in epoch order."""
    perms: dict[int, np.ndarray] = {}
    for e, _, perm in draws:
        perms.setdefault(e, perm)
    return [perms[e] for e in sorted(perms)]


@pytest.mark.parametrize(("n", "batch"), [(20, 6), (20, 5), (20, 1), (20, 20), (7, 3)])
def test_sampler_yields_each_row_once_per_epoch_and_drops_the_tail(n: int, batch: int) -> None:
    x, s = _sampler(n, batch, 0)
    draws = _draw(s, x, 6 * (n // batch))  # six complete epochs
    _check_epochs(n, batch, draws)
    assert draws[-1][0] == 5


def test_sampler_reshuffles_every_epoch() -> None:
    n, batch, epochs = 20, 6, 8  # 3 batches an epoch, 2 rows dropped
    x, s = _sampler(n, batch, 0)
    draws = _draw(s, x, epochs * 3)
    perms = _epoch_perms(draws)
    assert len(perms) == epochs
    # two independent shuffles of 20 rows coincide with probability 1/20!
    distinct = {tuple(p.tolist()) for p in perms}
    assert len(distinct) == epochs, "an epoch repeated an earlier epoch's order"
    # so the dropped tail moves: over 8 epochs, every row is trained on
    seen = np.unique(np.concatenate([rows for _, rows, _ in draws]))
    assert np.array_equal(seen, np.arange(n)), f"rows never drawn: {np.setdiff1d(np.arange(n), seen)}"


def test_sampler_state_restores_the_exact_sequence() -> None:
    """A state taken after any batch (mid-epoch, at the end of an epoch, before the
    first batch) continues, in a sampler seeded differently, exactly as the original
    does, across later reshuffles (so the generator is restored too)."""
    n, batch = 20, 6  # 3 batches an epoch, 2 rows dropped
    for cut in range(10):  # 0 .. 9 batches drawn: cuts 3, 6, 9 end an epoch
        x, s = _sampler(n, batch, 0)
        _draw(s, x, cut)
        state = s.state()
        want = _draw(s, x, 9)  # three more reshuffles at least
        _, t = _sampler(n, batch, 99)
        t.restore(state)
        got = _draw(t, x, 9)
        for (ea, ra, pa), (eb, rb, pb) in zip(want, got, strict=True):
            assert ea == eb and np.array_equal(ra, rb) and np.array_equal(pa, pb), f"cut {cut}: differs"
        # and the state outlived the sampler that made it: restoring it again rewinds
        s.restore(state)
        again = _draw(s, x, 9)
        assert all(np.array_equal(a[1], b[1]) for a, b in zip(want, again, strict=True)), f"cut {cut}"
    with pytest.raises(ValueError, match="permutation of 20 rows, the shard has 21"):
        _sampler(21, batch, 0)[1].restore(state)


@st.composite
def _sampler_cases(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """Only valid cases: 1 <= batch <= n, and up to four epochs of draws."""
    n = draw(st.integers(1, 60))
    batch = draw(st.integers(1, n))
    draws = draw(st.integers(1, 4 * (n // batch)))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, batch, draws, seed


@given(case=_sampler_cases())
def test_sampler_property_every_row_once_per_epoch_and_reshuffled(case: tuple[int, int, int, int]) -> None:
    n, batch, count, seed = case
    x, s = _sampler(n, batch, seed)
    draws = _draw(s, x, count)
    _check_epochs(n, batch, draws)
    if n >= 13:  # two independent shuffles of n >= 13 rows coincide with probability <= 1/13! < 2e-10
        perms = _epoch_perms(draws)
        for e in range(1, len(perms)):
            assert not np.array_equal(perms[e], perms[e - 1]), f"epoch {e} repeats epoch {e - 1}'s order"


@given(case=_sampler_cases(), more=st.integers(1, 3), seed2=st.integers(0, 2**32 - 1))
def test_sampler_property_restore_continues_identically(
    case: tuple[int, int, int, int], more: int, seed2: int
) -> None:
    n, batch, cut, seed = case
    k = n // batch
    x, s = _sampler(n, batch, seed)
    _draw(s, x, cut)
    state = s.state()
    want = _draw(s, x, more * k + 1)  # crosses at least one reshuffle
    _, t = _sampler(n, batch, seed2)
    t.restore(state)
    got = _draw(t, x, more * k + 1)
    for (ea, ra, pa), (eb, rb, pb) in zip(want, got, strict=True):
        assert ea == eb and np.array_equal(ra, rb) and np.array_equal(pa, pb)


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
