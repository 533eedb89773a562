"""Model stages (models/stages.py): K stages compose to the whole model's backprop, bit for bit."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpiml.models import (
    MLP,
    LinearRegression,
    LinearStage,
    Stage,
    TimedModel,
    balanced_boundaries,
    layer_params,
    split,
)


def _model(sizes: list[int], act: str, dtype: str, seed: int) -> tuple[MLP, np.ndarray]:
    rng = np.random.default_rng(seed)
    m = MLP(sizes, act, dtype)
    w = m.init(rng)
    w += (0.1 * rng.standard_normal(m.size)).astype(dtype)  # nonzero biases
    return m, w


def _batch(m: MLP, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal((rows, m.sizes[0])).astype(m.dtype)
    return x, rng.integers(0, m.sizes[-1], rows)


def _pipeline(
    stages: list[Stage],
    w: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    g: np.ndarray,
    scale: float | None = None,
    slot: int = 0,
    copies: bool = False,
) -> float:
    """Forward through every stage, then backward, into the slices of ``g``; the loss.

    ``copies``: odd stages get copies of their parameter slice and write a fresh gradient
    array that is copied back (as a rank holding only its stage would), even stages views.
    """
    ws = [s.view(w).copy() if copies and s.index % 2 else s.view(w) for s in stages]
    gs = [np.full(s.size, np.nan, g.dtype) if copies and s.index % 2 else s.view(g) for s in stages]
    a = x
    for s, ws_k in zip(stages, ws, strict=True):
        a = s.forward(ws_k, a, slot=slot)
    loss, g_in = stages[-1].loss_backward(ws[-1], y, gs[-1], scale, slot=slot)
    for s, ws_k, gs_k in zip(stages[-2::-1], ws[-2::-1], gs[-2::-1], strict=True):
        assert g_in is not None
        g_in = s.backward(ws_k, g_in, gs_k, slot=slot)
    assert g_in is None  # the first stage returns no input gradient
    for s, gs_k in zip(stages, gs, strict=True):
        if copies and s.index % 2:
            s.view(g)[...] = gs_k
    return loss


def _reference(
    m: MLP, w: np.ndarray, x: np.ndarray, y: np.ndarray, scale: float | None
) -> tuple[float, np.ndarray]:
    g = np.empty_like(w)
    return m.loss_and_grad(w, x, y, g, scale), g


@settings(max_examples=40, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 7), min_size=0, max_size=4),
    act=st.sampled_from(["relu", "tanh"]),
    dtype=st.sampled_from(["float64", "float32"]),
    rows=st.integers(1, 9),
    scale=st.sampled_from([None, 0.25, 1 / 12]),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_stages_compose_to_the_whole_models_backprop_bit_for_bit(
    hidden: list[int], act: str, dtype: str, rows: int, scale: float | None, seed: int, data: st.DataObject
) -> None:
    m, w = _model([5, *hidden, 3], act, dtype, seed)
    x, y = _batch(m, rows, seed)
    loss_ref, g_ref = _reference(m, w, x, y, scale)
    for k in range(1, m.n_layers + 1):
        inner = st.integers(1, max(1, m.n_layers - 1))  # layers where a stage may start
        cuts = sorted(data.draw(st.sets(inner, min_size=k - 1, max_size=k - 1))) if k > 1 else []
        for stages in (split(m, k), split(m, k, boundaries=cuts)):
            for copies in (False, True):
                g = np.full_like(w, np.nan)
                loss = _pipeline(stages, w, x, y, g, scale, copies=copies)
                assert loss == loss_ref
                assert np.array_equal(g, g_ref), (k, [s.layers for s in stages], copies)


def test_stages_tile_the_whole_layout_in_order() -> None:
    m = MLP([6, 5, 4, 3, 2], "relu", "float32")
    w = np.arange(m.size, dtype=np.float32)
    stages = split(m, 3, boundaries=[1, 3])
    assert [s.layers for s in stages] == [range(0, 1), range(1, 3), range(3, 4)]
    assert [(s.first, s.last) for s in stages] == [(True, False), (False, False), (False, True)]
    assert [(s.in_features, s.out_features) for s in stages] == [(6, 5), (5, 3), (3, 2)]
    assert tuple(name for s in stages for name in s.layout.names) == m.layout.names
    assert [s.offset for s in stages] == [0, stages[0].size, stages[0].size + stages[1].size]
    assert sum(s.size for s in stages) == m.size
    whole = m.layout.views(w)
    for s in stages:
        v = s.view(w)
        assert np.shares_memory(v, w) and v.size == s.size
        for name, part in s.layout.views(v).items():
            assert np.array_equal(part, whole[name])


def test_scale_has_loss_and_grads_semantics() -> None:
    m, w = _model([4, 6, 5, 3], "relu", "float64", 7)
    x, y = _batch(m, 8, 7)
    stages = split(m, 3)
    g_mean, g_1, g_2 = (np.empty_like(w) for _ in range(3))
    loss = _pipeline(stages, w, x, y, g_mean)
    for scale, g in ((1 / 32, g_1), (2 / 32, g_2)):
        assert _pipeline(stages, w, x, y, g, scale) == loss  # the loss is a mean whatever the scale
        assert np.array_equal(g, _reference(m, w, x, y, scale)[1])
    assert np.array_equal(g_2, 2 * g_1)  # a power-of-two scale is exact through every product
    np.testing.assert_allclose(4 * g_1, g_mean, rtol=1e-12)  # 1/32 = 1/(8 rows * 4 replicas)
    assert np.array_equal(g_mean, _reference(m, w, x, y, None)[1])


def test_poll_is_called_after_every_layer() -> None:
    m, w = _model([4, 6, 5, 4, 3], "tanh", "float64", 3)
    x, y = _batch(m, 5, 3)
    first, last = split(m, 2, boundaries=[2])
    g = np.full_like(w, np.nan)
    calls: list[str] = []

    def poll_forward() -> None:
        calls.append("f")

    def poll_backward(stage: Stage) -> None:
        # after layer i of the backward pass, exactly layers i.. of the stage are written
        gv = stage.layout.views(stage.view(g))
        written = [i for i in stage.layers if not np.isnan(gv[f"W{i}"]).any()]
        calls.append(f"b{written}")

    h = first.forward(first.view(w), x, poll=poll_forward)
    last.forward(last.view(w), h, poll=poll_forward)
    assert calls == ["f"] * 4
    calls.clear()
    _, g_in = last.loss_backward(last.view(w), y, last.view(g), poll=lambda: poll_backward(last))
    first.backward(first.view(w), g_in, first.view(g), poll=lambda: poll_backward(first))
    assert calls == ["b[3]", "b[2, 3]", "b[1]", "b[0, 1]"]
    assert np.array_equal(g, _reference(m, w, x, y, None)[1])


@pytest.mark.parametrize("rows", [(6, 6), (6, 4)])
def test_micro_batch_slots_in_flight_do_not_overwrite_each_other(rows: tuple[int, int]) -> None:
    m, w = _model([5, 7, 6, 3], "relu", "float32", 11)
    batches = [_batch(m, n, 11 + j) for j, n in enumerate(rows)]
    refs = [_reference(m, w, x, y, None) for x, y in batches]
    stages = split(m, 3)
    # GPipe order: both forward passes, then the backward passes, last micro-batch first
    outs = []
    for slot, (x, _) in enumerate(batches):
        a = x
        for s in stages:
            a = s.forward(s.view(w), a, slot=slot)
        outs.append(a)
        x[...] = 0  # the sampler reuses its batch buffer: the stage must keep its own copy
    assert outs[0] is not outs[1]
    for slot in (1, 0):
        g = np.full_like(w, np.nan)
        loss, g_in = stages[-1].loss_backward(
            stages[-1].view(w), batches[slot][1], stages[-1].view(g), slot=slot
        )
        for s in stages[-2::-1]:
            g_in = s.backward(s.view(w), g_in, s.view(g), slot=slot)
        assert loss == refs[slot][0] and np.array_equal(g, refs[slot][1])


def test_buffers_are_allocated_once_per_slot_and_batch_size() -> None:
    m, w = _model([4, 5, 3], "relu", "float64", 2)
    (s,) = split(m, 1)
    x, y = _batch(m, 6, 2)
    g = np.empty_like(w)
    a = s.forward(w, x)
    s.loss_backward(w, y, g)
    assert s.forward(w, x) is a  # same slot, same rows: the same buffer
    assert s.forward(w, x, slot=1) is not a
    assert s.forward(w, x[:3]) is not a
    assert len(s._acts) == 3


def test_misuse_of_slots_and_stages_is_an_error() -> None:
    m, w = _model([4, 5, 6, 3], "relu", "float64", 5)
    first, last = split(m, 2, boundaries=[1])
    x, y = _batch(m, 4, 5)
    g = np.empty_like(w)
    with pytest.raises(ValueError, match=r"backward\(slot=0\) needs a forward pass on slot 0"):
        first.backward(first.view(w), np.zeros((4, 5)), first.view(g))
    h = first.forward(first.view(w), x)
    with pytest.raises(ValueError, match="loss_backward is for the last stage"):
        first.loss_backward(first.view(w), y, first.view(g))
    with pytest.raises(ValueError, match=r"g_out must be float64 of shape \(4, 5\)"):
        first.backward(first.view(w), np.zeros((4, 6)), first.view(g))
    with pytest.raises(ValueError, match=r"loss_backward\(slot=1\) needs a forward pass on slot 1"):
        last.forward(last.view(w), h, slot=0)
        last.loss_backward(last.view(w), y, last.view(g), slot=1)
    last.loss_backward(last.view(w), y, last.view(g))
    with pytest.raises(ValueError, match=r"loss_backward\(slot=0\) needs a forward pass"):
        last.loss_backward(last.view(w), y, last.view(g))  # the softmax consumed the logits
    with pytest.raises(ValueError, match=r"a_in must have shape \(rows, 5\)"):
        last.forward(last.view(w), x)
    with pytest.raises(ValueError, match="a_in must be float64"):
        first.forward(first.view(w), x.astype(np.float32))
    with pytest.raises(ValueError, match="slot must be an integer >= 0"):
        first.forward(first.view(w), x, slot=-1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": 0}, r"stages must be between 1 and the MLP's 4 layers \(got 0\)"),
        ({"stages": 5}, r"stages must be between 1 and the MLP's 4 layers \(got 5\)"),
        ({"stages": 3, "boundaries": [2]}, r"boundaries must list the 2 layer indices .* \(got 1: \[2\]\)"),
        ({"stages": 2, "boundaries": [1, 2]}, r"boundaries must list the 1 layer indices"),
        ({"stages": 3, "boundaries": [2, 2]}, r"boundaries must be strictly increasing \(got \[2, 2\]\)"),
        ({"stages": 3, "boundaries": [3, 1]}, r"boundaries must be strictly increasing"),
        (
            {"stages": 2, "boundaries": [0]},
            r"boundaries must lie in 1\.\.3 for a model of 4 layers \(got \[0\]\)",
        ),
        ({"stages": 2, "boundaries": [4]}, r"boundaries must lie in 1\.\.3"),
        ({"stages": 2, "boundaries": [1.5]}, r"boundaries must be integers"),
        ({"stages": 2, "balance": "flops"}, r"balance must be 'params' or 'cost' \(got 'flops'\)"),
        ({"stages": 2, "balance": "cost"}, r"balance='cost' needs cost"),
        ({"stages": 2, "balance": "cost", "cost": [1, 2, 3]}, r"cost must hold 4 finite values >= 0"),
        ({"stages": 2, "balance": "cost", "cost": [1, -2, 3, 4]}, r"cost must hold 4 finite values"),
        ({"stages": 2, "cost": [1, 2, 3, 4]}, r"cost is only used with balance='cost'"),
        ({"stages": 2, "boundaries": [1], "balance": "cost", "cost": [1, 2, 3, 4]}, "not both"),
    ],
)
def test_split_arguments_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(MLP([3, 4, 5, 6, 2]), **kwargs)


def test_only_mlps_and_linear_regression_split() -> None:
    with pytest.raises(ValueError, match="a TimedModel cannot be split into stages"):
        split(TimedModel(10, 0.0), 1)
    with pytest.raises(ValueError, match=r"LinearRegression \(one layer\)'s 1 layers \(got 2\)"):
        split(LinearRegression(4), 2)
    with pytest.raises(TypeError, match="split needs an MLP or a LinearRegression"):
        split(object(), 1)  # type: ignore[call-overload]


@pytest.mark.parametrize("scale", [None, 1 / 20])
def test_linear_stage_is_linear_regression_bit_for_bit(scale: float | None) -> None:
    rng = np.random.default_rng(4)
    m = LinearRegression(6, "float32")
    w = rng.standard_normal(m.size).astype(np.float32)
    x = rng.standard_normal((10, 6)).astype(np.float32)
    y = rng.standard_normal(10).astype(np.float32)
    g_ref = np.empty_like(w)
    loss_ref = m.loss_and_grad(w, x, y, g_ref, scale)
    (s,) = split(m, 1)
    assert isinstance(s, LinearStage) and np.shares_memory(s.view(w), w) and s.size == 7
    g = np.full_like(w, np.nan)
    s.forward(w, x)
    loss, g_in = s.loss_backward(w, y, g, scale)
    assert loss == loss_ref and g_in is None and np.array_equal(g, g_ref)


def _brute_force(weights: list[int], parts: int) -> tuple[int, list[int]]:
    """Smallest (largest block sum, boundaries) over every cut into ``parts`` blocks."""
    best: tuple[int, list[int]] | None = None
    for cuts in combinations(range(1, len(weights)), parts - 1):
        edges = [0, *cuts, len(weights)]
        worst = max(sum(weights[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True))
        if best is None or (worst, list(cuts)) < best:
            best = (worst, list(cuts))
    assert best is not None
    return best


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 60), min_size=1, max_size=8), data=st.data())
def test_balanced_boundaries_are_the_optimal_partition(weights: list[int], data: st.DataObject) -> None:
    parts = data.draw(st.integers(1, len(weights)))
    cuts = balanced_boundaries(weights, parts)
    edges = [0, *cuts, len(weights)]
    worst = max(sum(weights[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True))
    assert (worst, cuts) == _brute_force(weights, parts)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=2, max_size=7), data=st.data())
def test_split_balances_parameters_or_cost(sizes: list[int], data: st.DataObject) -> None:
    m = MLP(sizes, "relu", "float64")
    k = data.draw(st.integers(1, m.n_layers))
    stages = split(m, k)
    assert max(s.size for s in stages) == _brute_force(layer_params(m), k)[0]
    cost = data.draw(st.lists(st.integers(0, 9), min_size=m.n_layers, max_size=m.n_layers))
    by_cost = split(m, k, balance="cost", cost=[float(c) for c in cost])
    assert [s.layers.start for s in by_cost[1:]] == _brute_force(cost, k)[1]


def test_balanced_boundaries_examples() -> None:
    assert balanced_boundaries([5], 1) == []
    assert balanced_boundaries([1, 1, 1, 1], 2) == [2]
    assert balanced_boundaries([1, 1, 1, 1], 3) == [1, 2]  # ties: earliest cuts
    assert balanced_boundaries([9, 1, 1, 1, 1, 1], 2) == [1]
    assert balanced_boundaries([0.5, 0.25, 0.25], 2) == [1]
    with pytest.raises(ValueError, match=r"parts must be between 1 and len\(weights\) = 2 \(got 3\)"):
        balanced_boundaries([1, 2], 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_larger_layers_compose_bit_for_bit(act: str, dtype: str) -> None:
    # sizes past the BLAS kernels' small-matrix paths and block edges
    m, w = _model([70, 130, 64, 33, 10], act, dtype, 9)
    x, y = _batch(m, 67, 9)
    loss_ref, g_ref = _reference(m, w, x, y, None)
    for k in range(1, m.n_layers + 1):
        g = np.full_like(w, np.nan)
        assert _pipeline(split(m, k), w, x, y, g, copies=k % 2 == 0) == loss_ref
        assert np.array_equal(g, g_ref)
