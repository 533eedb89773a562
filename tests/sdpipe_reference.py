"""A serial float64 replay of SDPIPE for the MPI tests: the appendix's update
X_{k+1} = (X_k - eta G_k) W_k (Miao et al., VLDB 2023, B.1.1) for one stage (K = 1),
with the groups a real run's scheduler recorded and the data order of that run.

The scheduler's tables (``sdpipe_groups``, ``sdpipe_members`` of the last rank's file)
give every group of the stage, in the order it closed (``seq``). Replaying group after
group: each member takes its next minibatch (batch n of pipeline q is the n-th of data
shard q's sampler), computes its gradient at its current parameters, steps its own
optimizer, and then the members' stepped parameters are replaced by their average,
summed in ascending member order and divided by |S|
(:func:`mpiml.protocols.sdpipe.average_of`); the optimizer's position state (SUM's
y^s, :data:`mpiml.optim.POSITION_STATE`) moves with them, so momentum stays each
replica's own. A replica's next update uses the
parameters its last group left, as on the ranks, so the replay ends where the run ended,
bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mpiml.data import build_data
from mpiml.io.runfile import rank_file_name
from mpiml.models import initial_params, job_model, split
from mpiml.optim import POSITION_STATE, build_optimizer
from mpiml.protocols.sdpipe import average_of

__all__ = ["read_groups", "sdpipe_replay"]


def read_groups(run_dir: Path, world_size: int) -> tuple[np.ndarray, dict[tuple[int, int], list[int]]]:
    """The scheduler's groups table and {(stage, seq): members ascending}."""
    with h5py.File(Path(run_dir) / rank_file_name(world_size - 1), "r") as f:
        groups, members = f["sdpipe_groups"][()], f["sdpipe_members"][()]
    out: dict[tuple[int, int], list[int]] = {}
    for row in members:
        out.setdefault((int(row["stage"]), int(row["seq"])), []).append(int(row["replica"]))
    return groups, {key: sorted(v) for key, v in out.items()}


def sdpipe_replay(cfg: Any, P: int, groups: list[list[int]]) -> list[np.ndarray]:
    """Each replica's final parameters after the stage's ``groups`` (members, in closing
    order), for a K = 1 job ``cfg`` of P pipelines."""
    if int(cfg.algorithm.stages) != 1:
        raise ValueError("the replay covers K = 1 (one stage per pipeline)")
    B = int(cfg.data.batch_size)
    datas = [build_data(cfg, q, P) for q in range(P)]
    model = job_model(cfg, datas[0].n_features, datas[0].n_classes)
    x0 = initial_params(cfg, model)
    stages = [split(model, 1)[0] for _ in range(P)]
    opt = build_optimizer(cfg.optimizer)
    x = [st.view(x0).copy() for st in stages]
    state = [opt.init(w) for w in x]
    g_mb = [np.zeros_like(w) for w in x]
    position = POSITION_STATE[type(opt)]  # SUM's y^s: moved with x, so a jump is not velocity
    for members in groups:
        for q in members:
            xb, yb = datas[q].sampler.next()
            st = stages[q]
            st.forward(x[q], xb, slot=0)
            st.loss_backward(x[q], yb, g_mb[q], 1.0 / B, slot=0)
            g = np.zeros_like(x[q])
            g += g_mb[q]  # the program's accumulation: 0 + G_x
            opt.step(x[q], g, state[q])
        avg = average_of(x, members)
        for q in members:
            if len(members) > 1:
                for key in position:
                    state[q][key] -= x[q]
            x[q][...] = avg
            if len(members) > 1:
                for key in position:
                    state[q][key] += x[q]
    return x
