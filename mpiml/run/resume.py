"""Checkpoints of a run: which one to resume from (layout-aware, bound to its slot,
versioned), loading it, and writing one.

A checkpoint holds, per rank, what its program saves (:meth:`Program.state_arrays`)
plus the driver's own state (the sampler of a rank that reads data, the loss sums
since the last evaluation, the bytes counter) and what binds the file to its slot (run
id, step, rank, role, world size); the ``COMPLETE`` marker records the world size, the
layout, the run id and the versions, and a resume on another layout is refused.

Testing hook: ``MPIML_KILL_AT_CHECKPOINT=STEP`` kills every rank (SIGKILL) right after
the COMPLETE marker of checkpoint STEP is on disk: the moment a crash can leave a valid
checkpoint, for tests that the tables up to it were flushed first.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from ..algorithms import Program
from ..comm import agreed_error
from ..config import Config
from ..data import RankData
from ..errors import CheckpointError, DivergenceError
from ..io import checkpoint as ckpt
from ..io.runfile import rank_file_name
from ..kinds import register_kind
from ..layout import Layout, Role, data_parallel
from ..trace import Trace

__all__ = [
    "CHECKPOINT",
    "elapsed_since_start",
    "has_checkpoints",
    "pick_checkpoint",
    "restore",
    "resume_state",
    "write_checkpoint",
]

CHECKPOINT = register_kind(
    "checkpoint",
    "bookkeeping",
    "writing this rank's checkpoint: quiesce, the agreement before it and its file "
    "(the tables' flush and the barrier before the COMPLETE marker come after)",
)

# (problem or '', world size in the COMPLETE marker, job differences, "newer" message)
_Verdict = tuple[str, int | None, list[str], str]


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


def pick_checkpoint(
    cfg: Config, comm: MPI.Comm, run_dir: Path, layout: Layout, before: int | None = None
) -> tuple[int, Path]:
    """Newest checkpoint (of a step < ``before``, when given) that every rank can read;
    reports and skips damaged ones.

    Collective over comm (every rank of the job): rank 0 lists the candidates and
    broadcasts them (ranks may see a folder differently); then one allgather
    per candidate, newest first. Each rank checks its own file, and every decision is
    taken from the broadcast list and the gathered verdicts, so all ranks return the
    same step or raise the same error. Damage (a partial folder, an unreadable marker or
    file, a failed digest, a file that does not belong in its slot: another run, step,
    rank, role or world size) is skipped with a message. A checkpoint of another world
    size or layout, or written by a newer mpiml or format, is an error (ConfigError on
    every rank) that names both; nothing is skipped or deleted then.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    root = run_dir / "checkpoints"
    candidates = comm.bcast(ckpt.checkpoint_dirs(root) if rank == 0 else None, root=0)
    if before is not None:
        candidates = [c for c in candidates if c[0] < before]
    if not candidates:
        if before is not None:
            raise agreed_error(
                f"--resume: no valid checkpoint in {root} (none older than step {before} left)"
            )
        raise agreed_error(f"--resume: no checkpoint in {root} (set checkpoint.every to write them)")
    if candidates[-1][0] > cfg.run.steps:
        raise agreed_error(
            f"--resume: the oldest checkpoint ({root}, step {candidates[-1][0]}) is past "
            f"run.steps = {cfg.run.steps}; raise run.steps to continue the run"
        )
    candidates = [c for c in candidates if c[0] <= cfg.run.steps]
    for step, d, partial in candidates:
        verdict: _Verdict = (
            _check_candidate(cfg, root, step, d, rank, size, layout)
            if not partial
            else (partial, None, [], "")
        )
        verdicts = comm.allgather(verdict)
        newer = next((v[3] for v in verdicts if v[3]), "")
        if newer:
            raise agreed_error(
                f"--resume: checkpoint {d.name} was written by {newer}: upgrade mpiml to resume it "
                "(nothing was skipped or deleted)"
            )
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
        _report_skipped(comm, problems)
    raise agreed_error(f"--resume: no valid checkpoint in {root} (all {len(candidates)} damaged or partial)")


def _report_skipped(comm: MPI.Comm, problems: list[str]) -> None:
    if comm.Get_rank() == 0:
        for p in dict.fromkeys(problems):
            print(f"mpiml: skipping checkpoint: {p}", file=sys.stderr, flush=True)


def _check_candidate(
    cfg: Config, root: Path, step: int, d: Path, rank: int, size: int, layout: Layout
) -> _Verdict:
    """This rank's verdict on the checkpoint of ``step`` in folder ``d``."""
    marker = ckpt.read_marker(d)
    if marker is None:
        return f"{d}/COMPLETE cannot be read (not a marker mpiml wrote)", None, [], ""
    fmt = marker.get("format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        return f"{d}/COMPLETE holds no valid format (got {fmt!r})", None, [], ""
    newer = ckpt.is_newer(marker.get("mpiml_version"), fmt)
    if newer:
        return "", None, [], newer
    n = marker.get("world_size")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"{d}/COMPLETE holds no world size (got {n!r})", None, [], ""
    if marker.get("step") != step:
        return f"{d}/COMPLETE is the marker of step {marker.get('step')!r}, not {step}", None, [], ""
    marker_id = marker.get("run_id", "")
    if fmt >= 2 and (not isinstance(marker_id, str) or not marker_id):
        return f"{d}/COMPLETE holds no run id (got {marker_id!r})", None, [], ""
    if n != size:
        return "", n, [], ""
    # markers from before layouts existed: data parallelism on world_size ranks
    try:
        old = Layout.from_json(json.dumps(marker["layout"])) if "layout" in marker else data_parallel(size)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return f"{d}/COMPLETE holds no valid layout ({type(exc).__name__}: {exc})", None, [], ""
    if old != layout:
        return (
            "",
            size,
            [f"the layout ({_describe(old, layout)} in the checkpoint; {_describe(layout, old)} now)"],
            "",
        )
    path = ckpt.rank_path(root, step, rank)
    try:
        _, meta = ckpt.read_rank(path)
    except ckpt.NewerCheckpointError as exc:
        return "", size, [], exc.written_by
    except CheckpointError as exc:
        return str(exc), size, [], ""
    wrong = _binding_problems(meta, marker_id, step, rank, size, layout)
    if wrong:
        return f"{path} does not belong in its slot: " + ", ".join(wrong), size, [], ""
    try:
        job = Config.from_json(meta["config"])
    except (KeyError, ValueError, TypeError) as exc:
        return f"{path} holds no usable job ({exc})", size, [], ""
    return "", size, cfg.differences(job), ""


def _short(run_id: Any) -> str:
    return f"{run_id[:8]}..." if isinstance(run_id, str) and run_id else repr(run_id)


def _binding_problems(
    meta: dict[str, Any], run_id: str, step: int, rank: int, size: int, layout: Layout
) -> list[str]:
    """What in a rank file's metadata names another slot than (run, step, rank, role,
    world size). Format 1 files (before run ids) are checked on what they recorded."""
    fmt = meta.get("format", 1)
    expected: dict[str, Any] = {"step": step, "rank": rank, "world_size": size}
    if isinstance(fmt, int) and fmt >= 2:
        expected["run_id"] = run_id
        expected["role"] = asdict(layout.roles[rank])
    else:  # format 1 recorded the role's description, and not always every key
        expected["role"] = layout.roles[rank].describe()
        expected = {k: v for k, v in expected.items() if k in meta}
    wrong = []
    for key, want in expected.items():
        got = meta.get(key)
        if got != want:
            if key == "run_id":
                wrong.append(f"run id {_short(got)} (this run's: {_short(want)})")
            elif key == "role":
                wrong.append(f"role {_role(got)} (the slot's: {_role(want)})")
            else:
                wrong.append(f"{key.replace('_', ' ')} {got!r} (the slot's: {want!r})")
    return wrong


def _role(value: Any) -> str:
    """A recorded role in words (a format-2 dict, a format-1 description, or garbage)."""
    if isinstance(value, dict):
        try:
            return repr(Role(**value).describe())
        except (TypeError, ValueError):
            pass
    return repr(value)


def _describe(layout: Layout, other: Layout) -> str:
    """``layout`` in a few words: its kind and counts, or, where those equal ``other``'s,
    the first rank whose role differs."""
    text = f"{layout.name}: " + ", ".join(f"{n} {k}{'s' if n > 1 else ''}" for k, n in layout.counts.items())
    if (layout.name, layout.counts) == (other.name, other.counts):
        r = next(r for r in range(layout.size) if layout.roles[r] != other.roles[r])
        text += f", rank {r} {layout.roles[r].describe()}"
    return text


def restore(program: Program, data: RankData | None, path: Path) -> dict[str, Any]:
    """Load this rank's checkpoint file into the program (and the sampler); returns
    its metadata (loss sums, bytes counter). Local (no communication). Raises
    CheckpointError when the file is damaged or lacks an array or value the program
    needs (what the program had may then be partly overwritten)."""
    arrays, meta = ckpt.read_rank(path)
    missing = [k for k in ("loss_sum", "loss_count", "bytes_sent") if k not in meta]
    if data is not None:
        missing += [k for k in ("sampler",) if k not in meta] + [
            k for k in ("sampler/perm",) if k not in arrays
        ]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(repr(k) for k in missing)}")
    try:
        program.load_state({k: v for k, v in arrays.items() if not k.startswith("sampler/")})
        if data is not None:
            data.sampler.restore({**meta["sampler"], "perm": arrays["sampler/perm"]})
    except KeyError as exc:
        raise CheckpointError(f"{path} lacks the array {exc} that this job's program needs") from None
    except (ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(
            f"{path} does not fit this job's program ({type(exc).__name__}: {exc})"
        ) from None
    return meta


def resume_state(
    program: Program,
    data: RankData | None,
    cfg: Config,
    comm: MPI.Comm,
    layout: Layout,
    run_dir: Path,
    step: int,
) -> tuple[int, dict[str, Any]]:
    """Load the checkpoint of ``step`` (what :func:`pick_checkpoint` chose) on every rank;
    returns (the step resumed from, this rank's metadata).

    Collective over comm (one allgather per try): a checkpoint that any rank cannot load
    into its program (an array missing, of another shape) is skipped with a message like
    any damaged one, the program and sampler go back to their state before the first try,
    and the next older valid checkpoint is tried; every rank returns the same step or
    raises the same ConfigError.
    """
    rank = comm.Get_rank()
    root = run_dir / "checkpoints"
    fresh = {k: np.copy(v) for k, v in program.state_arrays().items()}
    fresh_sampler = _copy_state(data.sampler.state()) if data is not None else None
    while True:
        problem, meta = "", {}
        try:
            meta = restore(program, data, ckpt.rank_path(root, step, rank))
        except CheckpointError as exc:
            problem = str(exc)
        problems = [p for p in comm.allgather(problem) if p]
        if not problems:
            return step, meta
        _report_skipped(comm, problems)
        program.load_state(fresh)
        if data is not None and fresh_sampler is not None:
            data.sampler.restore(_copy_state(fresh_sampler))
        step, _ = pick_checkpoint(cfg, comm, run_dir, layout, before=step)


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def _non_finite(arrays: dict[str, np.ndarray]) -> str:
    """'' if every floating array is finite, else which is not and how much of it."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            return f"array {name!r}: {bad} of {a.size} values NaN or infinite"
    return ""


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
    flush: Callable[[], None] | None = None,
) -> None:
    """Collective over comm (every rank of the job): the program quiesces (nothing in
    flight), the ranks agree that every model is finite, every rank writes its file and
    then its trace tables (``flush``: appends what the trace holds to this rank's file
    and, on rank 0, the run file; both are fsync'd after it), and only then rank 0 marks
    the step complete: a crash at any moment leaves no checkpoint whose steps are missing
    from the tables.

    Raises :class:`DivergenceError` on every rank (the same message, naming the lowest
    rank with a NaN or infinite value) before anything is written when a model is not
    finite: such a model never becomes a checkpoint.
    """
    t0 = trace.now()
    program.quiesce()
    root = run_dir / "checkpoints"
    rank = comm.Get_rank()
    arrays = program.state_arrays()
    bad = _non_finite(arrays)
    run_id = ""
    if rank == 0:
        ckpt.clear_complete(root, step)  # rewriting a step: no rank file may sit under an old marker
        run_id = ckpt.latest_run_id(root, step) or ckpt.new_run_id()  # kept from the checkpoint before
    verdicts = comm.allgather((bad, run_id))  # also the barrier: nobody writes before the old marker is gone
    for r, (problem, _) in enumerate(verdicts):
        if problem:
            err = DivergenceError(step, r, problem)
            err.agreed = True  # type: ignore[attr-defined]  # raised identically on every rank
            raise err
    run_id = verdicts[0][1]
    meta: dict[str, Any] = {
        "step": step,
        "config": cfg.to_json(),
        "loss_sum": loss_sum,
        "loss_count": loss_count,
        "bytes_sent": trace.bytes_sent,
        "world_size": comm.Get_size(),
        "rank": rank,
        "role": asdict(layout.roles[rank]),
        "run_id": run_id,
    }
    if data is not None:
        s = data.sampler.state()
        arrays["sampler/perm"] = s.pop("perm")
        meta["sampler"] = s
    ckpt.write_rank(root, step, rank, arrays, meta)
    trace.record(step - 1, CHECKPOINT, t0, trace.now())  # before the flush: its row is on disk too
    if flush is not None:
        flush()
        for path in [run_dir / rank_file_name(rank)] + ([run_dir / "run.h5"] if rank == 0 else []):
            if path.is_file():
                ckpt.fsync_path(path)
    comm.Barrier()
    if rank == 0:
        ckpt.write_complete(root, step, comm.Get_size(), layout.to_json(), run_id)
    _kill_injection(comm, step)
    if rank == 0:
        ckpt.prune(root, cfg.checkpoint.keep)


def _kill_injection(comm: MPI.Comm, step: int) -> None:
    """``MPIML_KILL_AT_CHECKPOINT=STEP``: every rank dies by SIGKILL once the marker of
    checkpoint STEP is on disk (testing only)."""
    if os.environ.get("MPIML_KILL_AT_CHECKPOINT", "").strip() == str(step):
        comm.Barrier()  # the marker is written before any rank dies
        os.kill(os.getpid(), signal.SIGKILL)
