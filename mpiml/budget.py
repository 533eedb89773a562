"""Memory a job needs per rank, estimated before anything is allocated, against what the node has.

A job whose model or data cannot fit (``model.hidden = [100000000000]``) must fail at
set-up with one line naming the key and the amounts, not with a ``MemoryError`` (or the
kernel's OOM killer) once some ranks have started training. :func:`estimate` counts,
from the job and the data's shape alone (no array is allocated):

- **parameters**: the flat model x, its gradient, the optimizer's state, the
  protocol's buffers (receive buffer, snapshot, pending average), a codec's payload and
  decoded copy and its error-feedback residual (``copies x params x itemsize``), and two
  float64 copies (the initial draws, the average that evaluation computes);
- **activations**: forward and backward buffers of one minibatch, and the forward
  buffers of this rank's slice of the test set (evaluation);
- **data**: the data set as the sources hold it while splitting and standardizing
  (float64 copies), plus this rank's shard in ``model.dtype``.

It is an estimate, good at telling a job that fits from one that is orders of magnitude
too big: for the default job with ``model.hidden = [4096, 4096]`` (17 M parameters) on
one rank it says 800 MiB where the peak resident size grew by 840 MiB over the default
model's (measured with ``/usr/bin/time -v``). :func:`check_memory` is pure:
the caller supplies the bytes the node has (:func:`node_memory`) and how many ranks
share them (:func:`ranks_on_node`); :func:`check_job_memory` does both for set-up.
Host memory only: with ``backend.device = 'gpu'`` the device's own memory is not checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, show
from .data.hdf5 import DataShape, hdf5_shape
from .errors import ConfigError

__all__ = [
    "DIGITS",
    "DataShape",
    "Estimate",
    "check_job_memory",
    "check_memory",
    "data_shape",
    "estimate",
    "model_params",
    "node_memory",
    "ranks_on_node",
]

DIGITS = DataShape(1797, 64, 10)  # scikit-learn's digits: 1797 images of 8 x 8, 10 classes

# state arrays per parameter, by optimizer (SGD's scratch; SUM's velocity, position and
# scratch; Adam's two moments, max and scratch)
_OPTIMIZER_COPIES = {"sgd": 1, "momentum": 3, "nesterov": 3, "sum": 3}
_SAM_COPIES = 4
_PROTOCOL_COPIES = 3  # receive buffer, snapshot, a pending average (DaSGD) or neighbour buffer
_CODEC_COPIES = 2  # payload and decoded message
_FLOAT64_COPIES = 2  # float64 draws at initialisation, the float64 average evaluated


@dataclass(frozen=True)
class Estimate:
    """Bytes per rank by part: ``{part: (bytes, key)}``, ``key`` the job key (with its
    value) that makes the part as large as it is."""

    parts: dict[str, tuple[int, str]]

    @property
    def total(self) -> int:
        return sum(b for b, _ in self.parts.values())

    @property
    def largest(self) -> tuple[str, int, str]:
        """(part, bytes, key) of the largest part."""
        part = max(self.parts, key=lambda p: self.parts[p][0])
        return part, *self.parts[part]


def data_shape(cfg: Config) -> DataShape:
    """The shape of the job's data set, without reading its rows (an HDF5 file's /y is
    read and checked; ConfigError naming data.path if the file is unusable)."""
    d = cfg.data
    if d.name == "hdf5":
        return hdf5_shape(d.path)
    if d.name == "synthetic":
        return DataShape(int(d.samples), int(d.features), 0)
    return DIGITS


def model_params(cfg: Config, shape: DataShape) -> int:
    """Number of parameters of the job's model for data of ``shape`` (exact; Python ints,
    no overflow)."""
    m = cfg.model
    if m.name == "timed":
        return int(m.params)
    if m.name == "linear":
        return shape.features + 1
    sizes = [shape.features, *(m.hidden if m.name == "mlp" else []), max(shape.classes, 2)]
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def _copies(cfg: Config) -> int:
    from .algorithms.compression import codec_of

    opt = _OPTIMIZER_COPIES.get(cfg.optimizer.name, _SAM_COPIES)
    codec = codec_of(cfg) != "none"
    return (
        2
        + opt
        + _PROTOCOL_COPIES
        + (_CODEC_COPIES if codec else 0)
        + int(bool(cfg.compression.error_feedback))
    )


def _data_key(cfg: Config) -> str:
    d = cfg.data
    if d.name == "hdf5":
        return f"data.path = {d.path!r}"
    if d.name == "synthetic":
        return f"data.samples = {d.samples} with data.features = {d.features}"
    return "data.name = 'digits'"


def estimate(cfg: Config, shape: DataShape, n_shards: int) -> Estimate:
    """Bytes one rank needs for ``cfg`` on data of ``shape`` split in ``n_shards`` (pure)."""
    m, d = cfg.model, cfg.data
    item = np.dtype(m.dtype).itemsize
    params = model_params(cfg, shape)
    if m.name == "timed":
        pkey = f"model.params = {m.params}"
    elif m.name == "mlp" and m.hidden and max(m.hidden) >= shape.features:
        pkey = f"model.hidden = {show(m.hidden)}"
    else:
        pkey = _data_key(cfg)
    widths = [*(m.hidden if m.name == "mlp" else []), max(shape.classes, 2)] if m.name != "timed" else [1]
    n_test = max(1, round(d.test_fraction * shape.rows))
    test_local = -(-n_test // max(n_shards, 1))
    act_batch = 3 * d.batch_size * sum(widths) * item  # forward, backward, softmax temporaries
    act_eval = test_local * sum(widths) * item
    akey = (
        f"model.hidden = {show(m.hidden)}"
        if act_eval > act_batch and m.name == "mlp"
        else (f"data.batch_size = {d.batch_size}")
    )
    cells = shape.rows * shape.features
    if d.name == "synthetic":  # generated shard by shard: x and y, train and test, in float64
        held = 2 * -(-cells // max(n_shards, 1)) * 8
    else:  # the whole set read in float64, split and standardized copies, the shard in dtype
        held = cells * (shape.itemsize + 4 * 8) + -(-cells // max(n_shards, 1)) * item
    parts = {
        "parameters": ((_copies(cfg) * item + _FLOAT64_COPIES * 8) * params, pkey),
        "activations": (act_batch + act_eval, akey),
        "data": (held, _data_key(cfg)),
    }
    if cfg.algorithm.name == "dsp":
        parts["queues"] = (_dsp_queue_bytes(cfg, shape.features, widths, item), "algorithm.dsp_m")
    return Estimate(parts)


def _dsp_queue_bytes(cfg: Config, features: int, widths: list[int], item: int) -> int:
    """An upper bound of DSP's queue memory on its busiest stage: the stash of 1+m_k inputs
    with their activations, and the channels' buffers (1+p and 1+q messages each way, a
    send and a receive ring), each message a batch of the widest layer."""
    from .algorithms.pipeline import dsp_config
    from .pipeline import dsp_queues

    p, m = dsp_config(cfg)
    try:
        q = [s.gradient - 1 for s in dsp_queues(p, m)]
    except ValueError:  # refused by the job's rules, with a better message
        return 0
    K = len(p)
    wide = max([features, 16, *widths])
    units = 0
    for k in range(K):
        ring = 2 * (1 + p[k]) + 2 * (1 + q[k])
        ring += (1 + p[k - 1]) if k > 0 else 0
        ring += (1 + q[k + 1]) if k + 1 < K else 0
        units = max(units, (1 + m[k]) * (1 + len(widths)) + ring)
    return units * int(cfg.data.batch_size) * wide * item


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{int(n)} bytes"


_PART = {
    "parameters": "parameters, optimizer state and message buffers",
    "activations": "activations of a minibatch and of the test slice",
    "data": "the data set",
    "queues": "DSP's queues: stashed inputs and channel buffers",
}


def check_memory(cfg: Config, shape: DataShape, n_shards: int, available: int, ranks: int) -> Estimate:
    """Refuse a job that needs more than its share of the node: ``available`` bytes
    shared by ``ranks`` ranks (pure: the caller supplies the node's figures). Returns
    the estimate; raises ConfigError naming the key that makes the largest part, e.g.
    ``model.hidden = [100000000000] needs ~28 TiB per rank (mostly parameters, ...);
    this node has 22 GiB for 4 ranks``."""
    est = estimate(cfg, shape, n_shards)
    ranks = max(ranks, 1)
    if est.total * ranks > available:
        part, _, key = est.largest
        raise ConfigError(
            f"{key} needs ~{_bytes(est.total)} per rank (mostly {_PART[part]}); this node has "
            f"{_bytes(available)} for {ranks} rank{'s' if ranks > 1 else ''}"
        )
    return est


def node_memory() -> int:
    """Bytes this node can still give (not pure): /proc/meminfo's MemAvailable, or the
    free physical pages, and no more than a cgroup's (container's, SLURM job's) limit."""
    found: list[int] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            found.append(2**62)  # unknown: assume plenty (the check is then a no-op)
    for limit, used in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            cap = int(Path(limit).read_text().split()[0])
            found.append(max(cap - int(Path(used).read_text().split()[0]), 0))
        except (OSError, ValueError, IndexError):
            continue
    return min(found)


_LOCAL_SIZE = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def ranks_on_node(world_size: int, env: Any = None) -> int:
    """Ranks of the job on this node, without MPI (set-up checks run before any
    collective): the launcher's variable (MPICH/Hydra, Open MPI, PMI, MVAPICH2), else
    no more than the node's cores."""
    env = os.environ if env is None else env
    for name in _LOCAL_SIZE:
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            return min(int(value), world_size)
    return max(1, min(world_size, os.cpu_count() or 1))


def check_job_memory(cfg: Config, n_shards: int, world_size: int) -> Estimate:
    """:func:`check_memory` with this node's figures (set-up calls it before building
    the data and the model; no MPI)."""
    return check_memory(cfg, data_shape(cfg), n_shards, node_memory(), ranks_on_node(world_size))
