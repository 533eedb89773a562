"""Each optimizer equals a float64 reference written straight from its paper's equation."""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.config import load_config
from mpiml.optim import SAM, SGD, SUM, build_optimizer

STEPS = 25


def _grads(d: int = 13) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.standard_normal(d) for _ in range(STEPS)]


def _run(opt, x0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = x0.copy()
    state = opt.init(x)
    for g in grads:
        opt.step(x, g.copy(), state)
    return x


def test_sgd() -> None:
    x0, gs = np.ones(13), _grads()
    ref = x0.copy()
    for g in gs:
        ref = ref - 0.1 * g
    np.testing.assert_allclose(_run(SGD(0.1), x0, gs), ref, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("s", [0.0, 1.0, 0.5, 2.0])
def test_sum_is_dsp_eq3(s: float) -> None:
    """y^{n+1} = x^n - a G, y^{s,n+1} = x^n - s a G, x^{n+1} = y^{n+1} + b (y^{s,n+1} - y^{s,n})."""
    a, b = 0.05, 0.9
    x0, gs = np.linspace(-1, 1, 13), _grads()
    x, ys_prev = x0.copy(), x0.copy()
    for g in gs:
        y = x - a * g
        ys = x - s * a * g
        x = y + b * (ys - ys_prev)
        ys_prev = ys
    np.testing.assert_allclose(_run(SUM(a, b, s), x0, gs), x, rtol=1e-12, atol=1e-13)


def test_heavy_ball_and_nesterov_special_cases() -> None:
    """s = 0 is heavy ball x^{n+1} = x^n - a G + b (x^n - x^{n-1}); s = 1 is SNAG."""
    a, b = 0.05, 0.9
    x0, gs = np.linspace(-1, 1, 13), _grads()
    x, x_prev = x0.copy(), x0.copy()
    for g in gs:
        x, x_prev = x - a * g + b * (x - x_prev), x
    np.testing.assert_allclose(_run(SUM(a, b, 0.0), x0, gs), x, rtol=1e-12, atol=1e-13)
    cfg = load_config(None, ["optimizer.name=nesterov", "optimizer.momentum=0.8", "optimizer.lr=0.01"])
    opt = build_optimizer(cfg.optimizer)
    assert isinstance(opt, SUM) and opt.s == 1.0 and opt.beta == 0.8 and opt.lr == 0.01


def _sam_reference(
    x0: np.ndarray, gs: list[np.ndarray], a: float, b1: float, b2: float, p: float, use_max: bool, eps: float
) -> np.ndarray:
    """MixML eq. (11): m_t = b1 m + (1-b1) g; v_t = max(b2 v + (1-b2) g^2, v_{t-1});
    x_{t+1} = x_t - a (v_t + eps)^{-p} m_t."""
    x, m, v = x0.copy(), np.zeros_like(x0), np.zeros_like(x0)
    for g in gs:
        m = b1 * m + (1 - b1) * g
        cand = b2 * v + (1 - b2) * g * g
        v = np.maximum(cand, v) if use_max else cand
        x = x - a * m / (v + eps) ** p
    return x


@pytest.mark.parametrize(
    ("name", "p", "use_max", "b1"),
    [
        ("adam", 0.5, False, 0.9),
        ("amsgrad", 0.5, True, 0.9),
        ("rmsprop", 0.5, True, 0.0),
        ("padam", 0.25, True, 0.9),
    ],
)
def test_adaptive_methods_are_mixml_eq11(name: str, p: float, use_max: bool, b1: float) -> None:
    cfg = load_config(
        None, [f"optimizer.name={name}", "optimizer.lr=0.01", "optimizer.beta2=0.99", "optimizer.p=0.25"]
    )
    opt = build_optimizer(cfg.optimizer)
    assert isinstance(opt, SAM)
    x0, gs = np.linspace(-1, 1, 13), _grads()
    # growing then shrinking gradients make the max in v_t bind (AMSGrad differs from Adam)
    gs = [g * (3.0 if i < 5 else 0.2) for i, g in enumerate(gs)]
    ref = _sam_reference(x0, gs, 0.01, b1, 0.99, p, use_max, 1e-8)
    np.testing.assert_allclose(_run(opt, x0, gs), ref, rtol=1e-12, atol=1e-13)


def test_amsgrad_differs_from_adam_when_the_max_binds() -> None:
    x0, gs = np.zeros(13), [g * (3.0 if i < 5 else 0.2) for i, g in enumerate(_grads())]
    a = _run(SAM(0.01, 0.9, 0.99, 0.5, False), x0, gs)
    b = _run(SAM(0.01, 0.9, 0.99, 0.5, True), x0, gs)
    assert np.max(np.abs(a - b)) > 1e-4


def test_weight_decay_is_folded_into_the_gradient() -> None:
    x0, gs = np.ones(13), _grads()
    ref = x0.copy()
    for g in gs:
        ref = ref - 0.1 * (g + 0.01 * ref)
    np.testing.assert_allclose(_run(SGD(0.1, 0.01), x0, gs), ref, rtol=1e-13, atol=1e-14)


def test_float32_state_stays_float32() -> None:
    x = np.ones(4, np.float32)
    opt = SAM(0.1, 0.9, 0.99, 0.5, True)
    st = opt.init(x)
    opt.step(x, np.ones(4, np.float32), st)
    assert x.dtype == np.float32 and all(v.dtype == np.float32 for v in st.values())


@pytest.mark.parametrize("amsgrad", [False, True])
def test_eps_zero_is_eq11_exactly(amsgrad: bool) -> None:
    x0 = np.linspace(-1, 1, 13)
    gs = [g + np.sign(g) * 0.1 for g in _grads()]  # no zero gradient: v_t > 0 from t = 1
    ref = _sam_reference(x0, gs, 0.01, 0.9, 0.99, 0.5, amsgrad, 0.0)
    np.testing.assert_allclose(
        _run(SAM(0.01, 0.9, 0.99, 0.5, amsgrad, eps=0.0), x0, gs), ref, rtol=1e-12, atol=1e-13
    )


def test_weight_decay_for_sum_and_sam() -> None:
    x0, gs = np.linspace(-1, 1, 13), _grads()
    x, ys_prev = x0.copy(), x0.copy()
    for g in gs:  # SUM with s = 1 on g + wd x
        ge = g + 0.01 * x
        y, ys = x - 0.05 * ge, x - 0.05 * ge
        x = y + 0.9 * (ys - ys_prev)
        ys_prev = ys
    np.testing.assert_allclose(_run(SUM(0.05, 0.9, 1.0, 0.01), x0, gs), x, rtol=1e-12, atol=1e-13)
    x, m, v = x0.copy(), np.zeros(13), np.zeros(13)
    for g in gs:  # AMSGrad on g + wd x
        ge = g + 0.01 * x
        m = 0.9 * m + 0.1 * ge
        v = np.maximum(0.99 * v + 0.01 * ge * ge, v)
        x = x - 0.01 * m / np.sqrt(v + 1e-8)
    np.testing.assert_allclose(
        _run(SAM(0.01, 0.9, 0.99, 0.5, True, 1e-8, 0.01), x0, gs), x, rtol=1e-12, atol=1e-13
    )
