"""Model gradients against central finite differences, in float64."""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.models import MLP, LinearRegression, build_model


def _finite_difference(f, w: np.ndarray, h: float = 1e-6) -> np.ndarray:  # type: ignore[no-untyped-def]
    g = np.empty_like(w)
    for i in range(w.size):
        old = w[i]
        w[i] = old + h
        fp = f(w)
        w[i] = old - h
        fm = f(w)
        w[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def _check_gradient(m, w: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    g = np.empty_like(w)
    m.loss_and_grad(w, x, y, g)
    fd = _finite_difference(lambda v: m.loss_and_grad(v, x, y, np.empty_like(v)), w.copy())
    # central differences have O(h^2) truncation and O(eps/h) rounding error: ~1e-9 here
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("sizes", "act"), [([5, 3], "relu"), ([5, 7, 3], "relu"), ([4, 6, 5, 3], "tanh")])
def test_mlp_gradient_matches_finite_differences(sizes: list[int], act: str) -> None:
    rng = np.random.default_rng(1)
    m = MLP(sizes, act, "float64")
    w = m.init(rng) + 0.01 * rng.standard_normal(m.size)  # nonzero biases
    x = rng.standard_normal((9, sizes[0]))
    _check_gradient(m, w, x, rng.integers(0, sizes[-1], 9))


def test_linear_regression_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(2)
    m = LinearRegression(6, "float64")
    w = rng.standard_normal(m.size)
    _check_gradient(m, w, rng.standard_normal((11, 6)), rng.standard_normal(11))


def test_float32_model_keeps_float32_and_eval_sums() -> None:
    rng = np.random.default_rng(3)
    m = build_model("mlp", 4, 3, [5], "relu", "float32")
    w = m.init(rng)
    assert w.dtype == np.float32 and w.size == 4 * 5 + 5 + 5 * 3 + 3
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    g = np.empty_like(w)
    loss = m.loss_and_grad(w, x, y, g)
    assert g.dtype == np.float32 and np.isfinite(loss)
    total, correct = m.eval_sums(w, x, y)
    assert total == pytest.approx(6 * loss, rel=1e-5) and 0 <= correct <= 6
    assert correct == float((m.predict(w, x) == y).sum())


def test_softmax_is_the_mlp_without_hidden_layers() -> None:
    m = build_model("softmax", 64, 10, [99], "relu", "float64")
    assert m.sizes == [64, 10] and m.layout.names == ("W0", "b0")


def test_views_share_memory_with_the_flat_state() -> None:
    m = MLP([3, 2], "relu", "float64")
    w = np.zeros(m.size)
    m.layout.views(w)["b0"][:] = 7
    assert w[-2:].tolist() == [7, 7]
    with pytest.raises(ValueError, match="1-D array of 8 values"):
        m.layout.views(np.zeros(5))


def test_regression_data_needs_the_linear_model() -> None:
    with pytest.raises(ValueError, match="regression data needs model.name = 'linear'"):
        build_model("mlp", 4, 0, [3], "relu", "float32")


@pytest.mark.parametrize("model", [MLP([5, 4, 3], "tanh", "float64"), LinearRegression(5, "float64")])
def test_gradient_scale_replaces_the_mean(model) -> None:  # type: ignore[no-untyped-def]
    """scale = 1/(rows * ranks) gives the mean gradient over ranks once summed across them."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal(model.size)
    x = rng.standard_normal((8, 5))
    y = rng.integers(0, 3, 8) if isinstance(model, MLP) else rng.standard_normal(8)
    mean, scaled = np.empty_like(w), np.empty_like(w)
    model.loss_and_grad(w, x, y, mean)
    model.loss_and_grad(w, x, y, scaled, scale=1.0 / (8 * 4))
    np.testing.assert_allclose(scaled * 4, mean, rtol=1e-14, atol=1e-15)
