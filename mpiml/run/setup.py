"""Set-up: everything a rank builds before training, checked before any collective.

Two steps, each under :func:`mpiml.comm.agree` (so a problem on any rank becomes the
same ConfigError on every rank before anyone enters a collective of training):

1. :func:`claim_folder`: the checks that need no data, which take well under a
   second (the job against the world size, a writable ``--out``), then rank 0
   chooses and claims the run folder (:mod:`mpiml.run.folder`: a link in it, a live
   job holding it, a run already in it) and tells every rank which it is;
2. :func:`prepare`: this rank's data and model (seconds: reading and sharding data).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpi4py import MPI

from .. import comm as _comm
from ..algorithms import REGISTRY, Algorithm, Program
from ..algorithms.compression import check_codec_for_size
from ..backend import get_xp
from ..budget import check_job_memory, data_shape
from ..config import Config
from ..data import RankData, build_data
from ..errors import ConfigError
from ..io.fs import refuse_link
from ..io.runfile import rank_file_name
from ..layout import Layout, Role
from ..models import Model, job_model
from ..straggler import check_world as check_straggler_ranks
from . import folder

__all__ = ["Setup", "claim_folder", "job_layout", "prepare", "set_threads"]


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
        if isinstance(exc, ConfigError):  # the algorithm's own message names its keys
            raise
        raise ConfigError(
            f"algorithm.name = {alg.name!r} on {world_size} rank{'s' * (world_size != 1)}: {exc}"
        ) from None
    check_straggler_ranks(cfg, world_size)  # before the algorithm's rules, which may read the ranks' roles
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


def claim_folder(
    cfg: Config, comm: MPI.Comm, out: Path, resume: bool | str, overwrite: bool
) -> tuple[Path, folder.Claim | None]:
    """Check what needs no data, then claim the run folder: (its path on every rank,
    rank 0's claim or None on the others). Collective over comm (one allgather, one
    bcast of the path); raises the same ConfigError on every rank, holding no claim."""
    rank = comm.Get_rank()
    held: list[folder.Claim] = []

    def check() -> None:
        job_layout(cfg, comm.Get_size())
        _check_writable(out)
        if rank == 0:
            try:
                held.append(folder.resolve(cfg.run.name, out, resume, overwrite))
            except OSError as exc:  # a file system that refuses: one line, not a traceback
                raise ConfigError(f"--out {str(out)!r}: cannot claim the run folder ({exc})") from None

    try:
        _comm.agree(comm, check)
        run_dir = Path(comm.bcast(str(held[0].run_dir) if rank == 0 else None, root=0))
    except BaseException:
        for c in held:
            c.release()
        raise
    return run_dir, held[0] if held else None


def prepare(cfg: Config, rank: int, world_size: int, run_dir: Path) -> Setup:
    """This rank's role, data and model, after :func:`claim_folder`. No collective
    inside (run it under ``agree``)."""
    alg, layout = job_layout(cfg, world_size)
    refuse_link(run_dir / rank_file_name(rank))  # rank 0 checked the folder; this rank's own view
    role = layout.roles[rank]
    program = alg.program_for(role)
    try:
        xp = get_xp(cfg.backend.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_job_memory(cfg, layout.n_shards, world_size)  # before any allocation: one line, not MemoryError
    data = build_data(cfg, role.shard, layout.n_shards, xp) if role.shard >= 0 else None
    model = None
    if data is None and role.kind == "stage":  # a middle stage reads no data but computes
        shape = data_shape(cfg)
        try:
            model = job_model(cfg, shape.features, shape.classes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if data is not None:
        try:
            model = job_model(cfg, data.n_features, data.n_classes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        check_codec_for_size(cfg, model.size)  # e.g. compression.k at most the model's size
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
