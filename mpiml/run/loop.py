"""The SPMD driver: :func:`train` sets up, runs each rank's program, and owns the hooks
that follow a step (evaluate, checkpoint, flush, stop at agreed points).

Every rank runs :func:`train` with the same job. Set-up problems raise
:class:`ConfigError` on every rank (through :func:`mpiml.comm.agree`) before the
first collective of training. The program of each rank's role
(:meth:`mpiml.algorithms.Algorithm.program_for`) runs its steps and calls
:meth:`Loop.after_step` after each; the loop decides, at step numbers every rank
knows, when to evaluate, checkpoint and stop.

Stop requests (a SIGINT or SIGTERM on any rank, :mod:`mpiml.run.signals`; the file
``MPIML_STOP_FILE``, what the SLURM scripts create before a requeue) are agreed without
a lock-step collective on the hot path: after every step whose count of finished
steps is 5 mod 10 each rank sets a flag (bit 0: the stop file exists; bit 1: SIGTERM
arrived here; bit 2: SIGINT arrived here) and starts a nonblocking OR-reduction of it
(MPI_Iallreduce over all ranks), and after the next count that is 0 mod 10 it reads
the result, long complete by then for ranks in step. Every rank reads the same result
at the same step, so all stop after the same step, write a checkpoint (also when
``checkpoint.every = 0``) and :func:`train` returns with ``Result.stopped_by`` set
(the ``mpiml`` command exits with 130 after a SIGINT, 75 otherwise). The stop-file
variable must be set on every rank or none. For an asynchronous algorithm this is a
loose coupling: a rank reading the result waits until every rank has reached the
step 5 before it, so no rank runs more than 5 steps ahead of the slowest at the
agreed points.

Divergence: at every evaluation the reduced loss sums and the test loss must be
finite, and before every checkpoint each rank's parameters and loss sums (one small
MIN-reduction per checkpoint); otherwise :class:`mpiml.errors.DivergenceError` is
raised on every rank, naming the step and the lowest rank whose values are not
finite, and nothing of it is checkpointed.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from mpi4py import MPI

from .. import comm as _comm
from ..algorithms import Context, Program
from ..backend import cuda_aware_from_env, to_host
from ..clock import sync_clock
from ..config import Config, ignored_keys
from ..data import RankData
from ..errors import ConfigError, DivergenceError
from ..io.runfile import RankFile, RunFile
from ..layout import Layout
from ..models import initial_params
from ..optim import build_optimizer
from ..trace import Trace
from . import console
from .divergence import params_finite, raise_diverged
from .evaluate import Evaluator
from .files import RunFiles
from .folder import clear_run
from .resume import elapsed_since_start, has_checkpoints, pick_checkpoint, resume_state, write_checkpoint
from .setup import Setup, claim_folder, prepare, set_threads
from .signals import StopSignals

__all__ = ["STOP_CHECK_EVERY", "Loop", "Result", "train"]

STOP_CHECK_EVERY = 10  # steps between agreed stop points (MPIML_STOP_FILE)
_STOP_LOOK = STOP_CHECK_EVERY // 2  # the flag is set this many steps before a stop point
_STOP_FILE, _STOP_SIGTERM, _STOP_SIGINT = 1, 2, 4  # bits of the stop flag (OR-reduced)


@dataclass
class Result:
    """What :func:`train` returns on every rank."""

    run_dir: Path
    steps: int
    accuracy: float
    test_loss: float
    params: np.ndarray  # this rank's final parameters (host copy; empty for a rank that holds none)
    wall: float
    stopped_at: int | None = None  # step at which a stop request stopped the run (after a checkpoint)
    stopped_by: str | None = None  # what stopped it: "SIGINT", "SIGTERM" or "stop file"


class Loop:
    """The hooks that follow every step of a program (driver-owned).

    :meth:`after_step` adds the step's loss to the sums, and at the agreed step numbers
    evaluates (every ``run.eval_every`` steps and at the last), checkpoints (every
    ``checkpoint.every``), flushes the trace (every ``trace.flush_every``) and agrees
    on a stop request. Returns True when the program must stop.
    """

    def __init__(
        self,
        cfg: Config,
        comms: _comm.Comms,
        layout: Layout,
        program: Program,
        data: RankData | None,
        evaluator: Evaluator,
        files: RunFiles,
        trace: Trace,
        run_dir: Path,
        stream: TextIO,
        signals: StopSignals | None = None,
    ) -> None:
        self.cfg, self.comms, self.layout, self.program, self.data = cfg, comms, layout, program, data
        self.evaluate, self.files, self.trace, self.run_dir, self.stream = (
            evaluator,
            files,
            trace,
            run_dir,
            stream,
        )
        self.rank = comms.world.Get_rank()
        self.loss_sum, self.loss_count = 0.0, 0
        self.last: dict[str, float] = {}
        self.stopped_at: int | None = None
        self.stopped_by: str | None = None
        self.signals = signals
        self.fail_at = _fault_injection(self.rank)
        self.stop_file = os.environ.get("MPIML_STOP_FILE", "")
        self._stop_flag, self._stop_any = np.zeros(1, np.int32), np.zeros(1, np.int32)  # buffers, not pickles
        self._stop_req: MPI.Request | None = None
        self._local_bad = False  # this rank's own loss sums or model were not finite at the last evaluation
        self.t_loop = time.perf_counter()

    def after_step(self, t: int, loss: float | None) -> bool:
        cfg = self.cfg
        if loss is not None:
            self.loss_sum += loss
            self.loss_count += 1
        done = t + 1
        if not self.program.synchronous:
            self._report(self.evaluate.poll())
        if done % cfg.run.eval_every == 0 or done == cfg.run.steps:
            self.evaluate_now(t)
        if cfg.checkpoint.every and (done % cfg.checkpoint.every == 0 or done == cfg.run.steps):
            self.checkpoint(done)
        elif done % cfg.trace.flush_every == 0:
            self.files.flush()
        if done < cfg.run.steps and self._stop_agreed(done):
            if not (cfg.checkpoint.every and done % cfg.checkpoint.every == 0):
                self.checkpoint(done)  # a stop checkpoint, also when checkpoint.every = 0
            self.stopped(done)
            return True
        if done == self.fail_at:
            raise RuntimeError(f"MPIML_FAIL_AT: injected failure on rank {self.rank} at step {done}")
        return False

    def evaluate_now(self, t: int) -> None:
        """Evaluate after step ``t``: at once for a synchronous program; started here and
        reported when done for an asynchronous one (never a barrier for its ranks)."""
        self._local_bad = not math.isfinite(self.loss_sum) or not params_finite(self.program.params)
        if self.program.synchronous:
            metrics = self.evaluate(t, self.loss_sum, self.loss_count)
            self._report([(t, self.trace.now(), metrics)])
        else:
            self._report(self.evaluate.start(t, self.loss_sum, self.loss_count))
        self.loss_sum, self.loss_count = 0.0, 0

    def record(self, t: int, when: float, metrics: dict[str, float]) -> None:
        """Keep the metrics of the evaluation after step ``t`` (started at ``when``):
        rank 0 writes them to the run file and prints the progress line. Local."""
        self.last = metrics
        run_file = self.files.run_file
        if run_file is not None:
            for k, v in metrics.items():
                run_file.metric(k, t + 1, when, v)
            elapsed = time.perf_counter() - self.t_loop
            console.progress(t + 1, self.cfg.run.steps, metrics, self.trace, elapsed, self.stream)

    def _report(self, results: list[tuple[int, float, dict[str, float]]]) -> None:
        for t, when, metrics in results:
            self.record(t, when, metrics)
            if self.evaluate.diverged:  # the reduced sums: the same verdict on every rank of the role
                raise_diverged(
                    t + 1, self.rank, self._local_bad, self.comms.role, self.comms.world.Get_size(), "loss"
                )

    def checkpoint(self, done: int) -> None:
        """Write the checkpoint of step ``done`` (collective over world), unless some
        rank's model or loss sums are not finite: then DivergenceError on every rank."""
        self.program.quiesce()  # what the checkpoint would hold: nothing in flight
        bad = not math.isfinite(self.loss_sum) or not params_finite(self.program.params)
        world = self.comms.world
        if world.allreduce(int(bad), op=MPI.MAX):  # one small reduction per checkpoint
            raise_diverged(done, self.rank, bad, world, world.Get_size(), "model")
        write_checkpoint(
            self.program,
            self.data,
            self.cfg,
            self.comms.world,
            self.layout,
            self.run_dir,
            done,
            self.loss_sum,
            self.loss_count,
            self.trace,
            flush=self.files.flush,  # the tables up to the step are on disk before its COMPLETE marker
        )

    def _stop_agreed(self, done: int) -> bool:
        """Split-phase agreement on a stop request (see the module docstring); sets
        :attr:`stopped_by` when the ranks agreed to stop."""
        phase = done % STOP_CHECK_EVERY
        if phase == _STOP_LOOK and self._stop_req is None:
            self._stop_flag[0] = self.stop_flag()
            self._stop_req = self.comms.world.Iallreduce(self._stop_flag, self._stop_any, op=MPI.BOR)
        elif phase == 0 and self._stop_req is not None:
            self._stop_req.Wait()
            self._stop_req = None
            return self.stop_by(int(self._stop_any[0]))
        return False

    def stop_flag(self) -> int:
        """This rank's stop-request bits now (bit 0: the stop file exists; bit 1: a
        SIGTERM arrived here; bit 2: a SIGINT). Local."""
        flag = _STOP_FILE if self.stop_file and os.path.exists(self.stop_file) else 0
        signum = self.signals.signum if self.signals is not None else 0
        if signum:
            flag |= _STOP_SIGINT if signum == signal.SIGINT else _STOP_SIGTERM
        return flag

    def stop_by(self, bits: int) -> bool:
        """Whether the OR of every rank's :meth:`stop_flag` bits asks to stop; sets
        :attr:`stopped_by` (SIGINT first, then SIGTERM, then the stop file)."""
        for bit, name in ((_STOP_SIGINT, "SIGINT"), (_STOP_SIGTERM, "SIGTERM"), (_STOP_FILE, "stop file")):
            if bits & bit:
                self.stopped_by = name
                return True
        return False

    def stopped(self, done: int) -> None:
        """The run stops after step ``done`` (a stop checkpoint is written): note it,
        and rank 0 says so."""
        self.stopped_at = done
        why = self.stopped_by if self.stopped_by != "stop file" else f"{self.stop_file} appeared"
        if self.rank == 0:
            print(
                f"mpiml: stopped at step {done} ({why}); checkpoint written; resume with --resume",
                file=self.stream,
                flush=True,
            )

    def finish(self) -> None:
        """Complete an evaluation and a stop agreement still in flight (every rank
        started them)."""
        self._report(self.evaluate.finish())
        if self._stop_req is not None:
            self._stop_req.Wait()
            self._stop_req = None


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
    and checkpoints (a job that does not name its run gets a fresh folder,
    :mod:`mpiml.run.folder`, which ``Result.run_dir`` names); rank 0 prints progress
    to ``stream`` (stdout by default) and holds the run folder's lock until it
    returns or raises. ``resume``: False, True (the newest valid checkpoint; an
    error if none) or "auto" (resume if there is a checkpoint, else start anew).
    Raises ConfigError (on every rank) for a job that cannot run here, and for a run
    folder in use by another job or holding a link mpiml did not make; and
    DivergenceError (on every rank, nothing of it checkpointed) when the loss or the
    model stops being finite.

    Installs :func:`mpiml.comm.install_abort_handler` (idempotent): an unhandled
    exception on one rank aborts the whole job instead of leaving the others waiting.
    Called from the main thread, it also installs :class:`mpiml.run.signals.StopSignals`
    around the training loop (the previous handlers are restored on return): a SIGINT
    or SIGTERM on any rank stops every rank after the same step, with a checkpoint,
    and the result says so (``stopped_at``, ``stopped_by``); a second one ends the
    job at once.
    """
    _comm.install_abort_handler()
    world = comm if comm is not None else _comm.default_comm()
    stream = stream if stream is not None else sys.stdout
    wall0 = time.perf_counter()
    run_dir, claim = claim_folder(cfg, world, Path(out), resume, overwrite)  # agreed; no data needed
    try:
        if claim is not None and claim.note:
            print(claim.note, file=stream, flush=True)
        if world.Get_rank() == 0:
            for line in ignored_keys(cfg):  # keys the user set that this job does not read
                print(line, file=stream, flush=True)
        return _train(cfg, world, run_dir, resume, overwrite, stream, wall0)
    finally:
        if claim is not None:
            claim.release()


def _train(
    cfg: Config,
    world: MPI.Comm,
    run_dir: Path,
    resume: bool | str,
    overwrite: bool,
    stream: TextIO,
    wall0: float,
) -> Result:
    rank, size = world.Get_rank(), world.Get_size()
    setup: Setup = _comm.agree(world, lambda: prepare(cfg, rank, size, run_dir))
    layout = setup.layout
    resume_from = None
    if resume == "auto" and not has_checkpoints(world, run_dir):
        if rank == 0:
            print(
                f"mpiml: --auto-resume: no checkpoint in {run_dir} yet; starting from scratch",
                file=stream,
                flush=True,
            )
    elif resume:
        resume_from = pick_checkpoint(cfg, world, run_dir, layout)  # collective, errors agreed
    threads = set_threads(world, cfg.run.threads)
    if (overwrite or resume == "auto") and resume_from is None and rank == 0:
        clear_run(run_dir)  # checks every path before deleting any; follows no link
    if rank == 0:
        (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    world.Barrier()
    comms = _comm.split(world, layout)

    offset = sync_clock(world)
    # a resumed run continues the run clock: time since the first segment's start
    elapsed = elapsed_since_start(run_dir / "run.h5") if rank == 0 and resume_from is not None else 0.0
    t0 = world.bcast(time.perf_counter() + offset - elapsed if rank == 0 else None, root=0)
    trace = Trace(offset, t0, enabled=cfg.trace.events)
    xp, model, data = setup.xp, setup.model, setup.data
    params = None
    if model is not None:  # every rank that holds parameters starts from the same x_0
        params = initial_params(cfg, model, xp)
    cuda_aware = (
        cuda_aware_from_env() if cfg.backend.cuda_aware == "auto" else cfg.backend.cuda_aware == "yes"
    )
    ctx = Context(
        cfg=cfg,
        comms=comms,
        layout=layout,
        role=setup.role,
        model=model,
        data=data,
        optimizer=build_optimizer(cfg.optimizer),
        trace=trace,
        xp=xp,
        params=params,
        cuda_aware=cuda_aware,
    )
    program = setup.program(ctx)

    start, meta = 0, None
    if resume_from is not None:
        start, meta = resume_state(program, data, cfg, world, layout, run_dir, resume_from[0])  # collective
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
            layout=layout.to_json(),
        )
    files = RunFiles(trace, rank_file, run_file)
    _comm.on_abort(files.close)
    classification = model is not None and model.task == "classification"
    evaluator = Evaluator(comms, program, trace, classification)
    signals = StopSignals(rank)
    loop = Loop(cfg, comms, layout, program, data, evaluator, files, trace, run_dir, stream, signals)
    if meta is not None:
        loop.loss_sum, loop.loss_count = meta["loss_sum"], meta["loss_count"]
    if rank == 0 and start:
        print(f"mpiml: resuming {run_dir} at step {start}", file=stream, flush=True)
    if rank == 0:
        console.header(cfg, layout, threads, run_dir, stream)

    if start == loop.fail_at:
        raise RuntimeError(f"MPIML_FAIL_AT: injected failure on rank {rank} at step {start}")
    loop.t_loop = time.perf_counter()
    with signals:  # until the end of train: a signal while finishing stops nothing more, a second aborts
        try:
            # divergence is detected and reported once (Loop); numpy's overflow warnings
            # on the way there, from every rank and layer, would only bury that line
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                program.run(start, cfg.run.steps, loop)
        except DivergenceError:
            files.close()  # the tables up to the divergence are kept; no checkpoint of it
            _comm.off_abort(files.close)
            raise
        loop.finish()
        if not loop.last and loop.stopped_at is None:  # resumed at the last step: nothing trained
            loop.last = loop.evaluate(cfg.run.steps - 1, loop.loss_sum, loop.loss_count)
        program.quiesce()
        program.close()
        files.close()
        _comm.off_abort(files.close)
        comms.free()
        world.Barrier()
    wall = time.perf_counter() - wall0
    last = loop.last
    if rank == 0 and loop.stopped_at is None:
        console.summary(cfg, last, run_dir, wall, stream, trace)
    x = program.params
    return Result(
        run_dir,
        cfg.run.steps,
        last.get("accuracy", float("nan")),
        last.get("test_loss", float("nan")),
        to_host(x).copy() if x is not None else np.zeros(0),
        wall,
        loop.stopped_at,
        loop.stopped_by,
    )


def _fault_injection(rank: int) -> int:
    """Step before which this rank raises, from ``MPIML_FAIL_AT=RANK:STEP`` (for testing
    crash handling, aborts and resume); -1 when unset or for another rank."""
    spec = os.environ.get("MPIML_FAIL_AT", "")
    if not spec:
        return -1
    try:
        r, s = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ConfigError(f"MPIML_FAIL_AT must be RANK:STEP (got {spec!r})") from None
    return s if r == rank else -1
