"""The same code on a GPU: CuPy arrays through models, optimizers, sampler.

Runs for real where cupy sees a GPU; skipped, with the reason, where it does not.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.backend import cupy_available

pytestmark = pytest.mark.skipif(
    not cupy_available(), reason="no GPU: cupy is not installed or sees no device"
)


def test_mlp_gradient_on_gpu_equals_cpu() -> None:
    import cupy as cp

    from mpiml.models import MLP

    rng = np.random.default_rng(0)
    m = MLP([8, 16, 4], "relu", "float64")
    w = m.init(rng)
    x, y = rng.standard_normal((10, 8)), rng.integers(0, 4, 10)
    g = np.empty_like(w)
    loss = m.loss_and_grad(w, x, y, g)
    gd = cp.empty(w.size)
    loss_d = m.loss_and_grad(cp.asarray(w), cp.asarray(x), cp.asarray(y), gd)
    assert loss_d == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(cp.asnumpy(gd), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["nesterov", "amsgrad"])
def test_optimizer_on_gpu_equals_cpu(name: str) -> None:
    import cupy as cp

    from mpiml.config import load_config
    from mpiml.optim import build_optimizer

    opt = build_optimizer(load_config(None, [f"optimizer.name={name}"]).optimizer)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100)
    xd = cp.asarray(x)
    s, sd = opt.init(x), opt.init(xd)
    for _ in range(10):
        g = rng.standard_normal(100)
        opt.step(x, g.copy(), s)
        opt.step(xd, cp.asarray(g), sd)
    np.testing.assert_allclose(cp.asnumpy(xd), x, rtol=1e-12, atol=1e-12)


def test_sampler_on_gpu_gives_the_cpu_batches() -> None:
    import cupy as cp

    from mpiml.data import ShardSampler

    x = np.arange(60, dtype=np.float32).reshape(30, 2)
    y = np.arange(30)
    a = ShardSampler(x, y, 4, np.random.default_rng(3))
    b = ShardSampler(cp.asarray(x), cp.asarray(y), 4, np.random.default_rng(3))
    for _ in range(10):
        xa, ya = a.next()
        xb, yb = b.next()
        assert np.array_equal(cp.asnumpy(xb), xa) and np.array_equal(cp.asnumpy(yb), ya)
