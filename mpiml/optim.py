"""Sequential updates (the Delta of MixML's X[t+1] = M_t(X[t] + alpha Delta)) on a flat state.

An optimizer knows nothing of MPI. ``init(x)`` returns its state (a dict of arrays
shaped like ``x``; keys starting with ``_`` are scratch, allocated once and not
checkpointed) and ``step(x, g, state)`` updates ``x`` in place from the gradient
``g`` (which it may overwrite). numpy or cupy: ``xp`` comes from ``x``.

- ``SGD``: x <- x - alpha * g.
- ``SUM`` (DSP (Xu, Huo & Huang, CVPR 2020, arXiv:1909.02625), eq. 3, stochastic unified momentum):
  y^{n+1} = x^n - alpha G,  y^{s,n+1} = x^n - s alpha G,
  x^{n+1} = y^{n+1} + beta (y^{s,n+1} - y^{s,n}),  with y^{s,0} = x^0.
  s = 0 is the heavy ball ("momentum"), s = 1 Nesterov's accelerated gradient ("nesterov").
- ``SAM`` (MixML (Lu, Nash & De Sa, arXiv:2005.06706), eq. 11, stochastic adaptive methods):
  m_t = beta1 m_{t-1} + (1 - beta1) g_t,
  v_t = max(beta2 v_{t-1} + (1 - beta2) g_t^2, v_{t-1})   [the max only for AMSGrad/RMSProp],
  x_{t+1} = x_t - alpha (v_t + eps)^{-p} m_t,  with m_0 = v_0 = 0.
  AMSGrad: p = 1/2 with the max; RMSProp (the corrected one of the paper's footnote 4):
  p = 1/2, beta1 = 0, with the max; PAdam: any p in (0, 1/2], with the max; Adam: p = 1/2
  without the max. Eq. 11 has no eps and no bias correction: we add eps inside the
  power so that v_t = 0 cannot divide by zero (eps = 0 gives eq. 11 exactly) and, like
  the paper, apply no bias correction.

Weight decay lambda, where set, is folded into the gradient: g <- g + lambda x.

When communication moves the parameters (a model average in local SGD, DaSGD,
gossip), state that holds *positions* must move with them, or the jump would read
as velocity: ``POSITION_STATE[type(opt)]`` names those keys (SUM's y^{s,n}), and
:meth:`mpiml.algorithms.Replica.replace_params` shifts them by the same amount,
so momentum stays each rank's own (as velocity-form momentum buffers do when only
the parameters are averaged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backend import Array, array_module

__all__ = ["OPTIMIZERS", "POSITION_STATE", "SAM", "SGD", "SUM", "Optimizer", "build_optimizer"]


def _decay(x: Array, g: Array, wd: float, scratch: Array) -> None:
    if wd:
        array_module(x).multiply(x, wd, out=scratch)
        g += scratch


@dataclass(frozen=True)
class SGD:
    lr: float
    weight_decay: float = 0.0

    def init(self, x: Array) -> dict[str, Array]:
        return {"_a": array_module(x).empty_like(x)}

    def step(self, x: Array, g: Array, state: dict[str, Array]) -> None:
        a = state["_a"]
        _decay(x, g, self.weight_decay, a)
        array_module(x).multiply(g, self.lr, out=a)
        x -= a


@dataclass(frozen=True)
class SUM:
    """Stochastic unified momentum, DSP eq. (3); ``beta`` is the momentum, ``s`` interpolates."""

    lr: float
    beta: float
    s: float
    weight_decay: float = 0.0

    def init(self, x: Array) -> dict[str, Array]:
        xp = array_module(x)
        return {"ys": x.copy(), "_a": xp.empty_like(x), "_b": xp.empty_like(x)}

    def step(self, x: Array, g: Array, state: dict[str, Array]) -> None:
        xp = array_module(x)
        ys, a, b = state["ys"], state["_a"], state["_b"]
        _decay(x, g, self.weight_decay, a)
        xp.multiply(g, -self.s * self.lr, out=a)
        a += x  # a = y^{s,n+1} = x^n - s alpha G
        ys -= a
        ys *= -self.beta  # ys = beta (y^{s,n+1} - y^{s,n})
        xp.multiply(g, self.lr, out=b)
        x -= b  # x = y^{n+1} = x^n - alpha G
        x += ys
        state["ys"], state["_a"] = a, ys  # keep y^{s,n+1}; the old buffer becomes scratch


@dataclass(frozen=True)
class SAM:
    """MixML eq. (11) with exponent ``p``; ``amsgrad`` selects the max in v_t."""

    lr: float
    beta1: float
    beta2: float
    p: float
    amsgrad: bool
    eps: float = 1e-8
    weight_decay: float = 0.0

    def init(self, x: Array) -> dict[str, Array]:
        xp = array_module(x)
        return {"m": xp.zeros_like(x), "v": xp.zeros_like(x), "_a": xp.empty_like(x), "_b": xp.empty_like(x)}

    def step(self, x: Array, g: Array, state: dict[str, Array]) -> None:
        xp = array_module(x)
        m, v, a, b = state["m"], state["v"], state["_a"], state["_b"]
        _decay(x, g, self.weight_decay, a)
        xp.multiply(g, g, out=a)
        a *= 1.0 - self.beta2
        xp.multiply(v, self.beta2, out=b)
        a += b  # a = beta2 v_{t-1} + (1 - beta2) g_t^2
        if self.amsgrad:
            xp.maximum(a, v, out=v)
        else:
            v[...] = a
        m *= self.beta1
        xp.multiply(g, 1.0 - self.beta1, out=a)
        m += a
        xp.add(v, self.eps, out=a)
        if self.p == 0.5:
            xp.sqrt(a, out=a)
        else:
            xp.power(a, self.p, out=a)
        xp.divide(m, a, out=a)
        a *= self.lr
        x -= a


Optimizer = SGD | SUM | SAM

# state keys that hold positions in parameter space (shifted when x is moved)
POSITION_STATE: dict[type, tuple[str, ...]] = {SGD: (), SUM: ("ys",), SAM: ()}

OPTIMIZERS = ("sgd", "momentum", "nesterov", "sum", "adam", "amsgrad", "rmsprop", "padam")


def build_optimizer(o: Any) -> Optimizer:
    """The optimizer named by a config section ``o`` (``optimizer.name`` and its keys)."""
    wd = o.weight_decay
    table: dict[str, Any] = {
        "sgd": lambda: SGD(o.lr, wd),
        "momentum": lambda: SUM(o.lr, o.momentum, 0.0, wd),
        "nesterov": lambda: SUM(o.lr, o.momentum, 1.0, wd),
        "sum": lambda: SUM(o.lr, o.momentum, o.s, wd),
        "adam": lambda: SAM(o.lr, o.beta1, o.beta2, 0.5, False, o.eps, wd),
        "amsgrad": lambda: SAM(o.lr, o.beta1, o.beta2, 0.5, True, o.eps, wd),
        "rmsprop": lambda: SAM(o.lr, 0.0, o.beta2, 0.5, True, o.eps, wd),
        "padam": lambda: SAM(o.lr, o.beta1, o.beta2, o.p, True, o.eps, wd),
    }
    if o.name not in table:
        raise ValueError(f"optimizer.name must be one of {', '.join(OPTIMIZERS)} (got {o.name!r})")
    opt: Optimizer = table[o.name]()
    return opt
