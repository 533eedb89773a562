"""Checkpoints of a run: which one to resume from (layout-aware), and writing one.

A checkpoint holds, per rank, what its program saves (:meth:`Program.state_arrays`)
plus the driver's own state (the sampler of a rank that reads data, the loss sums
since the last evaluation, the bytes counter); the ``COMPLETE`` marker records the
world size and the layout, and a resume on another layout is refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from mpi4py import MPI

from ..algorithms import Program
from ..comm import agreed_error
from ..config import Config
from ..data import RankData
from ..errors import CheckpointError
from ..io import checkpoint as ckpt
from ..kinds import register_kind
from ..layout import Layout, data_parallel
from ..trace import Trace

__all__ = [
    "CHECKPOINT",
    "elapsed_since_start",
    "has_checkpoints",
    "pick_checkpoint",
    "restore",
    "write_checkpoint",
]

CHECKPOINT = register_kind(
    "checkpoint", "bookkeeping", "writing this rank's checkpoint, including the barriers around it"
)


def has_checkpoints(comm: MPI.Comm, run_dir: Path) -> bool:
    """Collective: does the run folder hold a checkpoint marked complete (rank 0 looks)?
    A step folder without its COMPLETE marker (a job killed while writing its first
    checkpoint) does not count: there is nothing to resume from."""
    found = None
    if comm.Get_rank() == 0:
        found = any(not problem for _, _, problem in ckpt.checkpoint_dirs(run_dir / "checkpoints"))
    return bool(comm.bcast(found, root=0))


def elapsed_since_start(path: Path) -> float:
    """Seconds since the run in ``path`` started (0 when unknown)."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            started = float(f.attrs.get("started_unix", 0.0))
    except Exception:
        return 0.0
    return max(0.0, time.time() - started) if started else 0.0


def pick_checkpoint(cfg: Config, comm: MPI.Comm, run_dir: Path, layout: Layout) -> tuple[int, Path]:
    """Newest checkpoint that every rank can read; reports and skips damaged ones.

    Collective over comm (every rank of the job): rank 0 lists the candidates and
    broadcasts the list (ranks may see a folder differently); then one allgather per
    candidate, newest first. Each rank checks its own file, and every decision is
    taken from the broadcast list and the gathered verdicts, so all ranks return the
    same step or raise the same error. A checkpoint of another world size or layout
    is an error that names both.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    root = run_dir / "checkpoints"
    candidates = comm.bcast(ckpt.checkpoint_dirs(root) if rank == 0 else None, root=0)
    if not candidates:
        raise agreed_error(f"--resume: no checkpoint in {root} (set checkpoint.every to write them)")
    if candidates[-1][0] > cfg.run.steps:
        raise agreed_error(
            f"--resume: the oldest checkpoint ({root}, step {candidates[-1][0]}) is past "
            f"run.steps = {cfg.run.steps}; raise run.steps to continue the run"
        )
    candidates = [c for c in candidates if c[0] <= cfg.run.steps]
    for step, d, partial in candidates:
        verdict = (
            _check_candidate(cfg, root, step, d, rank, size, layout) if not partial else (partial, None, [])
        )
        verdicts = comm.allgather(verdict)
        sizes = {v[1] for v in verdicts if v[1] is not None and v[1] != size}
        if sizes:
            n = sizes.pop()
            raise agreed_error(
                f"--resume: checkpoint {d} was written by {n} rank{'s' * (n != 1)}, this job has {size}; resume with mpiexec -n {n}"
            )
        problems = [v[0] for v in verdicts if v[0]]
        if not problems:
            diff: list[str] = next((v[2] for v in verdicts if v[2]), [])
            if diff:
                raise agreed_error(f"--resume: the job differs from checkpoint {d} in " + "; ".join(diff))
            return step, d
        if rank == 0:
            for p in dict.fromkeys(problems):
                print(f"mpiml: skipping checkpoint: {p}", file=sys.stderr, flush=True)
    raise agreed_error(f"--resume: no valid checkpoint in {root} (all {len(candidates)} damaged or partial)")


def _check_candidate(
    cfg: Config, root: Path, step: int, d: Path, rank: int, size: int, layout: Layout
) -> tuple[str, int | None, list[str]]:
    """(problem or '', world size in the COMPLETE marker, differences) for this rank."""
    marker = _read_marker(d)
    if marker is None:
        return f"{d}/COMPLETE cannot be read", None, []
    n = marker.get("world_size")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"{d}/COMPLETE holds no world size (got {n!r})", None, []
    if n != size:
        return "", n, []
    # markers from before layouts existed: data parallelism on world_size ranks
    try:
        old = Layout.from_json(json.dumps(marker["layout"])) if "layout" in marker else data_parallel(size)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return f"{d}/COMPLETE holds no valid layout ({type(exc).__name__}: {exc})", None, []
    if old != layout:
        return (
            "",
            size,
            [f"the layout ({_describe(old, layout)} in the checkpoint; {_describe(layout, old)} now)"],
        )
    path = ckpt.rank_path(root, step, rank)
    try:
        _, meta = ckpt.read_rank(path)
    except CheckpointError as exc:
        return str(exc), size, []
    try:
        job = Config.from_json(meta["config"])
    except (KeyError, ValueError) as exc:
        return f"{path} holds no usable job ({exc})", size, []
    return "", size, cfg.differences(job)


def _describe(layout: Layout, other: Layout) -> str:
    """``layout`` in a few words: its kind and counts, or, where those equal ``other``'s,
    the first rank whose role differs."""
    text = f"{layout.name}: " + ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in layout.counts.items())
    if (layout.name, layout.counts) == (other.name, other.counts):
        r = next(r for r in range(layout.size) if layout.roles[r] != other.roles[r])
        text += f", rank {r} {layout.roles[r].describe()}"
    return text


def _read_marker(d: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((d / "COMPLETE").read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def restore(program: Program, data: RankData | None, path: Path) -> dict[str, Any]:
    """Load this rank's checkpoint file into the program (and the sampler); returns
    its metadata (loss sums, bytes counter)."""
    arrays, meta = ckpt.read_rank(path)
    program.load_state({k: v for k, v in arrays.items() if not k.startswith("sampler/")})
    if data is not None:
        data.sampler.restore({**meta["sampler"], "perm": arrays["sampler/perm"]})
    return meta


def write_checkpoint(
    program: Program,
    data: RankData | None,
    cfg: Config,
    comm: MPI.Comm,
    layout: Layout,
    run_dir: Path,
    step: int,
    loss_sum: float,
    loss_count: int,
    trace: Trace,
) -> None:
    """Collective over comm (every rank of the job): the program quiesces (nothing in
    flight), every rank writes its file, then rank 0 marks the step complete."""
    t0 = trace.now()
    program.quiesce()
    root = run_dir / "checkpoints"
    if comm.Get_rank() == 0 and ckpt.step_dir(root, step).exists():
        ckpt.clear_complete(root, step)  # rewriting a step: no rank file may sit under an old marker
    comm.Barrier()
    arrays = program.state_arrays()
    meta: dict[str, Any] = {
        "step": step,
        "config": cfg.to_json(),
        "loss_sum": loss_sum,
        "loss_count": loss_count,
        "bytes_sent": trace.bytes_sent,
        "world_size": comm.Get_size(),
        "rank": comm.Get_rank(),
        "role": layout.roles[comm.Get_rank()].describe(),
    }
    if data is not None:
        s = data.sampler.state()
        arrays["sampler/perm"] = s.pop("perm")
        meta["sampler"] = s
    ckpt.write_rank(root, step, comm.Get_rank(), arrays, meta)
    comm.Barrier()
    if comm.Get_rank() == 0:
        ckpt.write_complete(root, step, comm.Get_size(), layout.to_json())
        ckpt.prune(root, cfg.checkpoint.keep)
    trace.record(step - 1, CHECKPOINT, t0, trace.now())
