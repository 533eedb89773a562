"""A serial float64 simulator of DSP (Xu, Huo & Huang, CVPR 2020) for the MPI tests: the
paper's update, stage by stage, in one process, with the data order of a real run.

DSP(p; m) over N batches and P pipelines: the timetable of Figure 2
(:func:`mpiml.pipeline.dsp_timetable`); in each global step s, every stage k that
forwards batch f computes h_{k+1} = f_k(h_k; x_k) with its current parameters (stage 0
from the data, stage k > 0 from the activation stage k-1 computed for f), then, from the
top stage down, every stage k that backwards batch b recomputes f_k on its stored input
with its current parameters (Eq. 5, when m_k > 0), backpropagates G_{h_{k+1}} of b (the
last stage: from the loss of b's labels, scale 1/(batch * P)), and updates x_k with the
optimizer at once on the gradient summed over the P replicas of the stage. Batch n of
pipeline q is the n-th minibatch of data shard q's sampler (seeded as in a run). A stage's
own operations are those of :class:`mpiml.algorithms.pipeline_stage.StageProgram` in the
same order, so a real run ends here bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpiml.algorithms.pipeline import dsp_config
from mpiml.data import build_data
from mpiml.models import initial_params, job_model, split
from mpiml.optim import build_optimizer
from mpiml.pipeline import dsp_timetable

__all__ = ["dsp_reference"]


def dsp_reference(cfg: Any, P: int = 1) -> tuple[list[np.ndarray], list[float]]:
    """Pipeline q's final whole parameters (stages concatenated), for q = 0..P-1, and the
    last stage's batch losses (pipeline 0), from a serial run of DSP."""
    K = int(cfg.algorithm.stages)
    p, m = dsp_config(cfg)
    N, B = int(cfg.run.steps), int(cfg.data.batch_size)
    datas = [build_data(cfg, q, P) for q in range(P)]
    model = job_model(cfg, datas[0].n_features, datas[0].n_classes)
    x0 = initial_params(cfg, model)
    part = list(cfg.algorithm.partition) or None
    stages = [split(model, K, boundaries=part) for _ in range(P)]
    opt = build_optimizer(cfg.optimizer)
    x = [[s.view(x0).copy() for s in row] for row in stages]
    state = [[opt.init(w) for w in row] for row in x]
    g_mb = [[np.zeros_like(w) for w in row] for row in x]
    scale = 1.0 / (B * P)
    grid = dsp_timetable(p, m, N)
    xs: list[dict[int, np.ndarray]] = [{} for _ in range(P)]
    ys: list[dict[int, np.ndarray]] = [{} for _ in range(P)]
    acts: list[list[dict[int, np.ndarray]]] = [[{} for _ in range(K)] for _ in range(P)]
    grads: list[list[dict[int, np.ndarray]]] = [[{} for _ in range(K)] for _ in range(P)]
    losses: list[float] = []
    for s in range(len(grid[0])):
        for k in range(K):
            f = grid[k][s].forward
            if f is None:
                continue
            for q in range(P):
                if k == 0:
                    xb, yb = datas[q].sampler.next()
                    xs[q][f], ys[q][f] = xb.copy(), yb.copy()
                inp = xs[q].pop(f) if k == 0 else acts[q][k - 1].pop(f)
                out = stages[q][k].forward(x[q][k], inp, slot=f % (1 + m[k]))
                if k < K - 1:
                    acts[q][k][f] = out.copy()
        for k in reversed(range(K)):
            b = grid[k][s].backward
            if b is None:
                continue
            acc = []
            for q in range(P):
                st, slot = stages[q][k], b % (1 + m[k])
                if m[k] > 0:
                    st.recompute(x[q][k], slot=slot)
                if k == K - 1:
                    loss, gh = st.loss_backward(x[q][k], ys[q].pop(b), g_mb[q][k], scale, slot=slot)
                    if q == 0:
                        losses.append(loss)
                else:
                    gh = st.backward(x[q][k], grads[q][k + 1].pop(b), g_mb[q][k], slot=slot)
                if k > 0:
                    assert gh is not None
                    grads[q][k][b] = gh.copy()
                g = np.zeros_like(x[q][k])
                g += g_mb[q][k]  # the program's accumulation: 0 + G_{x_k}
                acc.append(g)
            total = acc[0] if P == 1 else _sum(acc)
            for q in range(P):
                opt.step(x[q][k], total.copy(), state[q][k])
    return [np.concatenate(row) for row in x], losses


def _sum(parts: list[np.ndarray]) -> np.ndarray:
    """The replicas' sum as MPI_Allreduce adds two of them (a + b = b + a exactly);
    more than two would depend on the MPI's reduction order."""
    if len(parts) != 2:
        raise ValueError("the reference sums P = 1 or 2 replicas only")
    return parts[0] + parts[1]
