"""Set-up: everything a rank builds before training, checked before any collective.

:func:`prepare` runs on every rank under :func:`mpiml.comm.agree`: it makes no MPI
call, so a problem on any rank (a bad job for this world size, an unreadable data
file, a run folder that already holds a run) becomes the same ConfigError on every
rank before anyone enters a collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpi4py import MPI

from .. import comm as _comm
from ..algorithms import REGISTRY, Algorithm, Program
from ..backend import get_xp
from ..config import Config
from ..data import RankData, build_data
from ..errors import ConfigError
from ..layout import Layout, Role
from ..models import Model, build_model

__all__ = ["Setup", "job_layout", "prepare", "set_threads"]


def job_layout(cfg: Config, world_size: int) -> tuple[type[Algorithm], Layout]:
    """The job's algorithm and its layout for ``world_size`` ranks, with every rule
    that needs the layout checked (pure: the same verdict on every rank)."""
    if cfg.run.world_size and cfg.run.world_size != world_size:
        raise ConfigError(
            f"run.world_size = {cfg.run.world_size} but the job runs on {world_size} rank{'s' * (world_size != 1)}"
        )
    alg = REGISTRY[cfg.algorithm.name]
    try:
        layout = alg.layout(cfg, world_size)
    except ValueError as exc:  # a layout constructor's message names the numbers
        raise ConfigError(
            f"algorithm.name = {alg.name!r} on {world_size} rank{'s' * (world_size != 1)}: {exc}"
        ) from None
    alg.check_layout(cfg, layout)
    return alg, layout


@dataclass
class Setup:
    """What :func:`prepare` built for this rank."""

    run_dir: Path
    algorithm: type[Algorithm]
    program: type[Program]
    layout: Layout
    role: Role
    xp: Any
    data: RankData | None  # None: this role reads no data
    model: Model | None  # None: this role computes nothing


def prepare(cfg: Config, rank: int, world_size: int, out: Path, resume: bool, overwrite: bool) -> Setup:
    """Check the job against the world size, the output folder, and build this rank's
    data and model. No collective inside (run it under ``agree``)."""
    alg, layout = job_layout(cfg, world_size)
    role = layout.roles[rank]
    program = alg.program_for(role)
    try:
        xp = get_xp(cfg.backend.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    data = build_data(cfg, role.shard, layout.n_shards, xp) if role.shard >= 0 else None
    model = None
    if data is not None:
        try:
            m = cfg.model
            model = build_model(
                m.name,
                data.n_features,
                data.n_classes,
                m.hidden,
                m.activation,
                m.dtype,
                m.params,
                m.compute_ms,
                m.compute,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    run_dir = out / cfg.run.name
    _check_writable(out)
    if (run_dir / "run.h5").exists() and not resume and not overwrite:
        raise ConfigError(
            f"{run_dir} already holds a run; use --resume to continue it, --overwrite to "
            "replace it, or another run.name"
        )
    return Setup(run_dir, alg, program, layout, role, xp, data, model)


def _check_writable(out: Path) -> None:
    """--out must be a folder this rank can create and write in."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: no permission to write in {str(probe)!r}")


def set_threads(comm: MPI.Comm, threads: int) -> int:
    """Limit BLAS threads per rank (collective over comm when ``threads`` is 0):
    oversubscribed ranks must not each spawn a pool."""
    if threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // _comm.local_size(comm))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    return threads
