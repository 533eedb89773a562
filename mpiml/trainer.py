"""The SPMD training loop: set up (errors agreed before any collective), train,
evaluate, trace, checkpoint, resume.

Every rank runs :func:`train` with the same config. Set-up problems raise
:class:`ConfigError` on every rank (through :func:`mpiml.comm.agree`) before the
first collective of training.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from mpi4py import MPI

from . import comm as _comm
from .algorithms import REGISTRY, Algorithm, Context
from .backend import cuda_aware_from_env, get_xp
from .clock import sync_clock
from .comm import agreed_error
from .config import Config, codec_of
from .data import RankData, build_data
from .errors import CheckpointError, ConfigError
from .io import checkpoint as ckpt
from .io.runfile import RankFile, RunFile
from .io.trace import Trace
from .models import Model, build_model
from .optim import build_optimizer
from .protocols import AllReduce
from .protocols.progress import check_mode as check_progress_mode

__all__ = ["Result", "train"]


@dataclass
class Result:
    """What :func:`train` returns on every rank."""

    run_dir: Path
    steps: int
    accuracy: float
    test_loss: float
    params: np.ndarray  # this rank's final parameters (host copy)
    wall: float
    stopped_at: int | None = None  # step at which MPIML_STOP_FILE stopped the run (after a checkpoint)


def _set_threads(comm: MPI.Comm, threads: int) -> int:
    """Limit BLAS threads per rank: oversubscribed ranks must not each spawn a pool."""
    if threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // _comm.local_size(comm))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    return threads


BYTES_DTYPE = np.dtype([("step", "<i8"), ("bytes", "<i8")])  # /ranks/<r>/bytes_sent


class _Setup:
    """Everything built before training; built under ``agree`` so errors are collective."""

    def __init__(self, cfg: Config, comm: MPI.Comm, out: Path, resume: bool, overwrite: bool) -> None:
        rank, size = comm.Get_rank(), comm.Get_size()
        self.run_dir = out / cfg.run.name
        if cfg.run.world_size and cfg.run.world_size != size:
            raise ConfigError(f"run.world_size = {cfg.run.world_size} but the job runs on {size} ranks")
        if cfg.algorithm.name not in REGISTRY:
            raise ConfigError(
                f"algorithm.name must be one of {', '.join(REGISTRY)} (got {cfg.algorithm.name!r})"
            )
        if cfg.algorithm.name == "dasgd":
            problem = check_progress_mode(cfg.algorithm.progress)
            if problem:
                raise ConfigError(problem)
        if cfg.algorithm.name in ("dpsgd", "gossip", "async_gossip", "dqpr_sgd"):
            from .topology import TopologyError, build_schedule

            try:
                # pure: checks W before any collective
                schedule = build_schedule(cfg.algorithm.topology, size)
            except TopologyError as exc:
                raise ConfigError(f"algorithm.topology = {cfg.algorithm.topology!r}: {exc}") from None
            if codec_of(cfg) != "none" and not schedule.static:
                raise ConfigError(
                    f"algorithm.topology = {cfg.algorithm.topology!r} changes every round; compressed "
                    "gossip (Algorithm 2, DCD) keeps copies of its neighbours' models and needs a static one"
                )
        try:
            self.xp = get_xp(cfg.backend.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.data: RankData = build_data(cfg, rank, size, self.xp)
        try:
            self.model: Model = build_model(
                cfg.model.name,
                self.data.n_features,
                self.data.n_classes,
                cfg.model.hidden,
                cfg.model.activation,
                cfg.model.dtype,
                cfg.model.params,
                cfg.model.compute_ms,
                cfg.model.compute,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _check_writable(out)
        exists = (self.run_dir / "run.h5").exists()
        if exists and not resume and not overwrite:
            raise ConfigError(
                f"{self.run_dir} already holds a run; use --resume to continue it, --overwrite to "
                "replace it, or another run.name"
            )


def _elapsed_since_start(path: Path) -> float:
    """Seconds since the run in ``path`` started (0 when unknown)."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            started = float(f.attrs.get("started_unix", 0.0))
    except Exception:
        return 0.0
    return max(0.0, time.time() - started) if started else 0.0


def _check_writable(out: Path) -> None:
    """--out must be a folder this rank can create and write in."""
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: no permission to write in {str(probe)!r}")


def _pick_checkpoint(cfg: Config, comm: MPI.Comm, run_dir: Path) -> tuple[int, Path]:
    """Newest checkpoint that every rank can read; reports and skips damaged ones.

    Collective over comm: rank 0 lists the candidates and broadcasts the list (ranks
    may see a folder differently); then one allgather per candidate, newest first.
    Each rank checks its own file, and every decision is taken from the broadcast list
    and the gathered verdicts, so all ranks return the same step or raise the same error.
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
        verdict = _check_candidate(cfg, root, step, d, rank, size) if not partial else (partial, None, [])
        verdicts = comm.allgather(verdict)
        sizes = {v[1] for v in verdicts if v[1] is not None and v[1] != size}
        if sizes:
            n = sizes.pop()
            raise agreed_error(
                f"--resume: checkpoint {d} was written by {n} ranks, this job has {size}; resume with mpiexec -n {n}"
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
    cfg: Config, root: Path, step: int, d: Path, rank: int, size: int
) -> tuple[str, int | None, list[str]]:
    """(problem or '', world size in the COMPLETE marker, config differences) for this rank."""
    marker = _read_marker(d)
    if marker is None:
        return f"{d}/COMPLETE cannot be read", None, []
    path = ckpt.rank_path(root, step, rank)
    if marker.get("world_size") != size:
        return "", int(marker.get("world_size", -1)), []
    try:
        _, meta = ckpt.read_rank(path)
    except CheckpointError as exc:
        return str(exc), size, []
    try:
        old = Config.from_json(meta["config"])
    except (KeyError, ValueError) as exc:
        return f"{path} holds no usable job ({exc})", size, []
    return "", size, cfg.differences(old)


def _read_marker(d: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads((d / "COMPLETE").read_text())
    except (OSError, ValueError):
        return None


class _Evaluator:
    """Test loss and accuracy of the average model x_bar, and consensus distance
    (1/n) sum_i ||x_i - x_bar||^2 (MixML §6); float64 sums, buffers kept."""

    def __init__(
        self, comm: MPI.Comm, model: Model, data: RankData, x: Any, xp: Any, trace: Trace, cuda_aware: bool
    ) -> None:
        self.comm, self.model, self.data, self.x, self.xp, self.trace = comm, model, data, x, xp, trace
        self.x64 = xp.empty(x.size, dtype=np.float64)
        # its own AllReduce (untraced: evaluation is not the algorithm's communication)
        self.average = AllReduce(comm, x.size, np.float64, xp, op="mean", cuda_aware=cuda_aware)
        self.xbar = xp.empty_like(x)
        self.sums = np.zeros(7, dtype=np.float64)
        self.out = np.zeros(7, dtype=np.float64)

    def __call__(self, step: int, loss_sum: float, loss_count: int, bytes_sent: int) -> dict[str, float]:
        t0 = self.trace.now()
        n = self.comm.Get_size()
        self.x64[...] = self.x
        avg64 = self.average.run(self.x64)
        self.x64 -= avg64
        dist = float(self.x64 @ self.x64)
        self.xbar[...] = avg64
        tl, correct = self.model.eval_sums(self.xbar, self.data.x_test, self.data.y_test)
        self.sums[:] = (
            tl,
            0.0 if np.isnan(correct) else correct,
            self.data.n_test_local,
            loss_sum,
            loss_count,
            dist,
            bytes_sent,  # exact in float64 below 2**53 bytes
        )
        self.comm.Allreduce(self.sums, self.out, op=MPI.SUM)
        tl, correct, count, ls, lc, dist, total_bytes = self.out
        self.trace.record(step, "eval", t0, self.trace.now())
        res = {
            "test_loss": tl / count,
            "loss": ls / max(lc, 1),
            "consensus_distance": dist / n,
            "bytes_sent": float(total_bytes),
        }
        if self.model.task == "classification":
            res["accuracy"] = correct / count
        return res


def train(
    cfg: Config,
    comm: MPI.Comm | None = None,
    out: str | Path = "results",
    resume: bool | str = False,
    overwrite: bool = False,
    stream: TextIO | None = None,
) -> Result:
    """Train ``cfg`` on ``comm`` (default: mpiml's duplicate of COMM_WORLD).

    Collective over comm. Writes ``<out>/<run.name>/run.h5``, per-rank event files
    and checkpoints; rank 0 prints progress to ``stream`` (stdout by default).
    """
    comm = comm if comm is not None else _comm.default_comm()
    rank, size = comm.Get_rank(), comm.Get_size()
    stream = stream if stream is not None else sys.stdout
    out = Path(out)
    wall0 = time.perf_counter()
    setup = _comm.agree(comm, lambda: _Setup(cfg, comm, out, bool(resume), overwrite))  # no collective inside
    resume_from = None
    if resume == "auto" and not _has_checkpoints(comm, setup.run_dir):
        if rank == 0:
            print(
                f"mpiml: --auto-resume: no checkpoint in {setup.run_dir} yet; starting from scratch",
                file=stream,
                flush=True,
            )
    elif resume:
        resume_from = _pick_checkpoint(cfg, comm, setup.run_dir)  # collective, errors agreed
    threads = _set_threads(comm, cfg.run.threads)
    run_dir = setup.run_dir
    if (overwrite or resume == "auto") and resume_from is None and rank == 0 and run_dir.exists():
        for name in ("run.h5", "ranks", "checkpoints"):
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if rank == 0:
        (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    comm.Barrier()

    offset = sync_clock(comm)
    # a resumed run continues the run clock: time since the first segment's start
    elapsed = _elapsed_since_start(run_dir / "run.h5") if rank == 0 and resume_from is not None else 0.0
    t0 = comm.bcast(time.perf_counter() + offset - elapsed if rank == 0 else None, root=0)
    trace = Trace(offset, t0, enabled=cfg.trace.events)
    xp, model, data = setup.xp, setup.model, setup.data
    params = model.init(
        np.random.default_rng(np.random.SeedSequence([cfg.run.seed, 0])), xp, cfg.model.init_scale
    )
    cuda_aware = (
        cuda_aware_from_env() if cfg.backend.cuda_aware == "auto" else cfg.backend.cuda_aware == "yes"
    )
    ctx = Context(comm, cfg, model, data, build_optimizer(cfg.optimizer), trace, xp, params, cuda_aware)
    alg: Algorithm = REGISTRY[cfg.algorithm.name](ctx)

    start, loss_sum, loss_count = 0, 0.0, 0
    if resume_from is not None:
        start, _ = resume_from
        arrays, meta = ckpt.read_rank(ckpt.rank_path(run_dir / "checkpoints", start, rank))
        alg.load_state(arrays)
        data.sampler.restore({**meta["sampler"], "perm": arrays["sampler/perm"]})
        loss_sum, loss_count = meta["loss_sum"], meta["loss_count"]
        trace.bytes_sent = meta["bytes_sent"]

    resume_step = start if resume_from is not None else None
    rank_file = RankFile(run_dir, rank, offset, resume_step)
    run_file = None
    if rank == 0:
        run_file = RunFile(
            run_dir,
            size,
            {
                "config": cfg.to_json(),
                "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
                "algorithm": cfg.algorithm.name,
                "clock": "perf_counter + per-rank offset to rank 0 (Cristian), seconds since run start",
                "threads_per_rank": threads,
                "started_unix": time.time() - elapsed,
                "network": os.environ.get("MPIML_NETWORK", "as launched (no emulation by mpiml)"),
                "mpi_async_progress": os.environ.get("MPIR_CVAR_ASYNC_PROGRESS", ""),
            },
            resume_step,
        )

    def flush(everything: bool = False) -> None:
        rank_file.append_events(trace.take(everything))
        for name, rows in trace.take_tables().items():
            rank_file.append_table(name, rows)
        rank_file.flush()
        if run_file is not None:
            run_file.flush()

    def close_files() -> None:
        flush(everything=True)  # at the end nothing is open; on an abort, keep every row
        rank_file.close()
        if run_file is not None:
            run_file.close()

    _comm.on_abort(close_files)
    evaluate = _Evaluator(comm, model, data, alg.x, xp, trace, cuda_aware)
    if rank == 0 and start:
        print(f"mpiml: resuming {run_dir} at step {start}", file=stream, flush=True)
    if rank == 0:
        _print_header(cfg, size, threads, run_dir, stream)

    last: dict[str, float] = {}
    stopped_at: int | None = None
    stop_file = os.environ.get("MPIML_STOP_FILE", "")
    stop_flag, stop_any = np.zeros(1, np.int32), np.zeros(1, np.int32)  # buffers, not pickles, in the loop
    fail_at = _fault_injection(rank)
    t_loop = time.perf_counter()
    for t in range(start, cfg.run.steps):
        if t == fail_at:
            raise RuntimeError(f"MPIML_FAIL_AT: injected failure on rank {rank} at step {t}")
        loss_sum += alg.step(t)
        loss_count += 1
        done = t + 1
        if done % cfg.run.eval_every == 0 or done == cfg.run.steps:
            last = evaluate(t, loss_sum, loss_count, trace.bytes_sent)
            trace.add_row("bytes_sent", BYTES_DTYPE, (done, trace.bytes_sent))  # this rank's, cumulative
            loss_sum, loss_count = 0.0, 0
            if run_file is not None:
                now = trace.now()
                for k, v in last.items():
                    run_file.metric(k, done, now, v)
                _print_progress(done, cfg.run.steps, last, trace, time.perf_counter() - t_loop, stream)
        if cfg.checkpoint.every and (done % cfg.checkpoint.every == 0 or done == cfg.run.steps):
            _checkpoint(alg, data, cfg, comm, run_dir, done, loss_sum, loss_count, trace)
            flush()  # a checkpoint is a durable point: the tables up to it are on disk too
        elif done % cfg.trace.flush_every == 0:
            flush()
        if stop_file and done % STOP_CHECK_EVERY == 0 and done < cfg.run.steps:
            # every rank asks at the same steps, and all follow the agreed answer
            stop_flag[0] = os.path.exists(stop_file)
            comm.Allreduce(stop_flag, stop_any, op=MPI.MAX)
            if stop_any[0]:
                if not (cfg.checkpoint.every and done % cfg.checkpoint.every == 0):
                    _checkpoint(alg, data, cfg, comm, run_dir, done, loss_sum, loss_count, trace)
                    flush()
                stopped_at = done
                if rank == 0:
                    print(
                        f"mpiml: stopped at step {done} ({stop_file} appeared); checkpoint written, "
                        "resume with --resume",
                        file=stream,
                        flush=True,
                    )
                break
    if not last and stopped_at is None:  # resumed at the last step: nothing trained, still report the model
        last = evaluate(cfg.run.steps - 1, loss_sum, loss_count, trace.bytes_sent)
    alg.finalize()
    alg.close()
    close_files()
    _comm.off_abort(close_files)
    comm.Barrier()
    wall = time.perf_counter() - wall0
    if rank == 0 and stopped_at is None:
        _print_summary(cfg, last, run_dir, wall, stream)
    from .backend import to_host

    return Result(
        run_dir,
        cfg.run.steps,
        last.get("accuracy", float("nan")),
        last.get("test_loss", float("nan")),
        to_host(alg.x).copy(),
        wall,
        stopped_at,
    )


STOP_CHECK_EVERY = 10  # steps between the (one-integer) allreduces that ask whether to stop


def _has_checkpoints(comm: MPI.Comm, run_dir: Path) -> bool:
    """Collective: does the run folder hold any checkpoint step (rank 0 looks)?"""
    found = bool(ckpt.checkpoint_dirs(run_dir / "checkpoints")) if comm.Get_rank() == 0 else None
    return bool(comm.bcast(found, root=0))


def _fault_injection(rank: int) -> int:
    """Step at which this rank raises, from ``MPIML_FAIL_AT=RANK:STEP`` (for testing
    crash handling, aborts and resume); -1 when unset or for another rank."""
    spec = os.environ.get("MPIML_FAIL_AT", "")
    if not spec:
        return -1
    try:
        r, s = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ConfigError(f"MPIML_FAIL_AT must be RANK:STEP (got {spec!r})") from None
    return s if r == rank else -1


def _checkpoint(
    alg: Algorithm,
    data: RankData,
    cfg: Config,
    comm: MPI.Comm,
    run_dir: Path,
    step: int,
    loss_sum: float,
    loss_count: int,
    trace: Trace,
) -> None:
    """Collective: every rank writes its file, then rank 0 marks the step complete."""
    t0 = trace.now()
    alg.finalize()
    root = run_dir / "checkpoints"
    if comm.Get_rank() == 0 and ckpt.step_dir(root, step).exists():
        ckpt.clear_complete(root, step)  # rewriting a step: no rank file may sit under an old marker
    comm.Barrier()
    arrays = alg.state_arrays()
    s = data.sampler.state()
    arrays["sampler/perm"] = s.pop("perm")
    meta = {
        "step": step,
        "config": cfg.to_json(),
        "sampler": s,
        "loss_sum": loss_sum,
        "loss_count": loss_count,
        "bytes_sent": trace.bytes_sent,
        "world_size": comm.Get_size(),
        "rank": comm.Get_rank(),
    }
    ckpt.write_rank(root, step, comm.Get_rank(), arrays, meta)
    comm.Barrier()
    if comm.Get_rank() == 0:
        ckpt.write_complete(root, step, comm.Get_size())
        ckpt.prune(root, cfg.checkpoint.keep)
    trace.record(step - 1, "checkpoint", t0, trace.now())


def _print_header(cfg: Config, size: int, threads: int, run_dir: Path, stream: TextIO) -> None:
    print(
        f"mpiml: {cfg.algorithm.name} on {size} ranks ({threads} BLAS thread(s) each), "
        f"model {cfg.model.name}, data {cfg.data.name}, optimizer {cfg.optimizer.name} lr={cfg.optimizer.lr}, "
        f"{cfg.run.steps} steps -> {run_dir}",
        file=stream,
        flush=True,
    )


def _print_progress(
    done: int, steps: int, m: dict[str, float], trace: Trace, elapsed: float, stream: TextIO
) -> None:
    split = trace.split_totals()
    acc = f" acc {m['accuracy']:.4f}" if "accuracy" in m else ""
    print(
        f"step {done:>6}/{steps} loss {m['loss']:.4f} test_loss {m['test_loss']:.4f}{acc} | "
        f"compute {split['compute']:.2f}s comm {split['comm']:.2f}s wait {split['wait']:.2f}s"
        + (f" (in flight {split['in_flight']:.2f}s)" if split["in_flight"] else "")
        + f" | {elapsed:.1f}s",
        file=stream,
        flush=True,
    )


def _print_summary(cfg: Config, m: dict[str, float], run_dir: Path, wall: float, stream: TextIO) -> None:
    acc = f", test accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""
    print(
        f"mpiml: done in {wall:.1f}s: {cfg.run.steps} steps, test loss {m.get('test_loss', float('nan')):.4f}{acc}, "
        f"{m.get('bytes_sent', 0) / 1e6:.1f} MB sent\nrun file: {run_dir / 'run.h5'}",
        file=stream,
        flush=True,
    )
