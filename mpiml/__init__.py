"""mpiml: an MPI message-passing toolkit for weakly consistent parallel learning.

Every algorithm is computation events on a rank's local state plus communication
events that act linearly on several ranks' states (MixML: X[t+1] = M_t(X[t] + a D_t)),
and ranks may play different roles (replicas, workers, servers, pipeline stages, a
scheduler). The layers, bottom up (:data:`LAYERS`; docs/design.md has the same table):

- ``optim``: the sequential update D on a flat state (SGD, SUM momentum, Adam, ...)
- ``models``, ``data``: flat-parameter models with manual backprop (and their stages);
  data sets, shards, samplers
- ``backend``: numpy or cupy from the array; host staging for device buffers
- ``topology``: pure graphs and mixing matrices W
- ``compress``: codecs (QSGD with Elias-gamma, top-k, sign, fp16, ...), error feedback
- ``layout``: the pure rank -> role map
- ``trace``, ``kinds``: per-rank event recording; the table of event kinds
- ``comm``, ``clock``: mpiml's communicators (split from a layout), error agreement,
  abort on exception; a common clock
- ``protocols``: the communication events M_t, split-phase (AllReduce, gossip, ...)
- ``straggler``: the ``[straggler]`` section, slowing chosen ranks' compute (any algorithm)
- ``algorithms``: the papers' compositions, registered by name, each with its keys,
  rules, layout and the program each role runs
- ``io``: run files, checkpoints, ``load_run``
- ``run``: the SPMD driver (set-up, loop hooks, evaluation, checkpoints, console)
- ``mixing``, ``plan``: mixing time (MixML); DaSGD's analytic model
- ``cli``, ``info``, ``testing``, ``config``, ``fields``, ``budget``, ``errors``: the
  ``mpiml`` command, what the MPI offers, test helpers, job files, a job key's rule, the
  memory a job needs, exceptions
- ``resources``: the example jobs, launch scripts and named topologies a wheel carries

Importing :mod:`mpiml` does not initialise MPI: :func:`train` and :func:`load_run`
are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["LAYERS", "__version__", "load_run", "train"]

# module -> what it is; a test keeps this, the package and docs/design.md in step
LAYERS: dict[str, str] = {
    "optim": "the sequential update D: SGD, SUM momentum/Nesterov (DSP eq. 3), Adam, AMSGrad, RMSProp, PAdam (MixML eq. 11)",
    "models": "flat-state models with manual backprop (softmax, MLP, least squares, a timed workload) and their stages",
    "data": "digits / HDF5 / synthetic sources, iid and Dirichlet shards, a checkpointable sampler",
    "backend": "numpy or cupy from the array; reused host staging for device buffers; CUDA-aware opt-in",
    "topology": "pure graphs and weight matrices W, checks, spectral gap; `mpiml topology`",
    "compress": "codecs on flat arrays (QSGD + Elias gamma, top-k, random-k, sign, fp16, bf16), error feedback",
    "layout": "pure rank -> role map: replicas, workers + servers, pipelines x stages (+ scheduler)",
    "trace": "per-rank event recorder (no h5py): step, kind, times, bytes, peer, message id",
    "kinds": "the table of event kinds, each with its category, registered by its owner",
    "clock": "one clock for all ranks (Cristian's offsets to rank 0)",
    "comm": "mpiml's communicator, communicators split from a layout, error agreement, abort on exception",
    "protocols": "M_t, split-phase: AllReduce, gossip, compressed AllReduce and gossip, async push-sum",
    "pipeline": "pure pipeline schedules: GPipe and 1F1B op lists per stage, a send/recv simulator (deadlocks, bubbles), DSP's queue sizes",
    "straggler": "the [straggler] section: ranks whose compute is slowed by a factor, or by X % with probability p per step (DSP Table 2), seeded",
    "algorithms": "the papers' compositions by name: keys, rules, layout and the program each role runs",
    "io": "HDF5 run files (run.h5 + per-rank files), checkpoints, load_run (lazy reader)",
    "report": "post-processing of run files: `mpiml report`, `mpiml trace export` (Chrome, Perfetto, OTF2), matplotlib plots",
    "run": "the SPMD driver: set-up, loop hooks, evaluation, checkpoints and resume, console",
    "mixing": "MixML mixing time measured by driving a protocol alone; `mpiml mixing`",
    "plan": "DaSGD's analytic model (eqs. 3-6); `mpiml plan`",
    "fields": "a job key's type, default and rule; the check of one value, in one-line messages",
    "config": "job files: the schema engine, generic sections, sections registered by plug-ins",
    "budget": "memory a job needs per rank, estimated before allocation, against the node's",
    "errors": "ConfigError, CheckpointError",
    "info": "what this MPI offers: library, thread level, CUDA-aware, parallel HDF5; `mpiml info`",
    "testing": "helpers to test mpiml programs with pytest and real ranks",
    "cli": "the `mpiml` command",
    "resources": "the example jobs, launch scripts and named topologies, from a wheel or a checkout",
    "trainer": "the driver's former name (re-exports mpiml.run.train)",
}


def __getattr__(name: str) -> Any:
    if name == "train":
        from .run import train

        return train
    if name == "load_run":
        from .io import load_run

        return load_run
    raise AttributeError(f"module 'mpiml' has no attribute {name!r}")
