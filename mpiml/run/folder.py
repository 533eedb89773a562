"""The run folder ``<out>/<run.name>/``: which one a job writes, and its claim on it.

**Names.** A job that names its run (``run.name`` other than ``"default"``) writes
``<out>/<run.name>``; if that folder already holds a run, starting it again is an
error unless ``--resume`` or ``--overwrite`` says what to do. A job that does not
(``run.name = "default"``, the default and the embedded job's) gets a fresh folder
each time: ``default``, then ``default-2``, ``default-3``, ... (one more than the
highest number there; a folder is made with ``mkdir``, atomic even on NFS, so two
unnamed jobs started at once get two folders). Numbers rather than timestamps: the
first run keeps the documented ``results/default``, names sort in the order the runs
started, and two jobs started in the same second cannot collide. ``--resume`` (and
``--auto-resume``) of an unnamed job continues the newest ``default*`` folder that
holds a complete checkpoint, and says which; ``--overwrite`` of one replaces
``default`` itself.

**Claim.** Rank 0 claims the folder for the job's lifetime with ``<run>/.lock``: a
file of JSON (host, pid, the pid's start time, batch job id, start time, a random
token) written under a unique name and then hard-linked to ``.lock`` (``link(2)``
fails if ``.lock`` exists; it is atomic on every NFS version, unlike ``O_EXCL``
before NFSv3, and the link count tells success apart from a lost reply; where a file
system has no hard links, ``O_CREAT | O_EXCL``). A thread touches the lock every
:data:`HEARTBEAT_S` seconds (its mtime is the heartbeat; the thread makes no MPI
call); the lock is removed when the job ends, also on an exception. A lock is
**stale**, and is taken over with a warning, when

- it was made on this host and its pid is gone (or is a zombie, or is another
  process now: its start time differs);
- it was made by an earlier incarnation of this SLURM job (same ``SLURM_JOB_ID``,
  another ``SLURM_RESTART_COUNT``: a requeue);
- it was made on another host, or cannot be read, and its heartbeat is older than
  :func:`stale_after` seconds (``MPIML_LOCK_STALE_S``, default 300): on a cluster
  file system a pid on another node cannot be checked, so only the heartbeat tells.
  The hosts' clocks must agree to well within that bound (NTP does), and a job
  whose rank 0 is stopped (SIGSTOP) for longer loses its claim.

Taking over renames the stale lock aside and checks that what it moved is the lock it
judged (else it puts it back): of two jobs that find one stale lock at once, one
gets the folder and the other the "in use" error. Otherwise a second job, or a
second ``--resume`` of a running one, gets one line on every rank before any
collective: ``results/x is in use by job 123 on host h pid 456 (since ...)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import checkpoint as ckpt
from ..io.fs import HOST, check_links, unique_tmp

__all__ = [
    "HEARTBEAT_S",
    "LOCK",
    "UNNAMED",
    "Claim",
    "claim",
    "clear_run",
    "fresh_folder",
    "holds_run",
    "newest_unnamed",
    "resolve",
    "stale_after",
]

UNNAMED = "default"  # run.name of a job that does not name its run (the schema's default)
LOCK = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
WRITTEN = ("run.h5", "ranks", "checkpoints")  # what a run writes, and --overwrite deletes
_NUMBERED = re.compile(rf"^{re.escape(UNNAMED)}(?:-([2-9]|[1-9][0-9]+))?$")
_HELD: set[str] = set()  # tokens of the claims this process holds now


def stale_after() -> float:
    """Seconds without a heartbeat after which another host's lock is stale."""
    try:
        return max(2 * HEARTBEAT_S, float(os.environ.get("MPIML_LOCK_STALE_S", STALE_AFTER_S)))
    except ValueError:
        return STALE_AFTER_S


def _job() -> str:
    for var in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID", "JOB_ID"):
        if os.environ.get(var):
            return os.environ[var]
    return ""


def _proc(pid: int) -> tuple[str, int | None] | None:
    """(state, start time in clock ticks) of a live process on this host; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except OSError:
        pass
    else:
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return fields[0], int(fields[19])
    try:  # no /proc (macOS): liveness only
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?", None


def _owner_now(token: str) -> dict[str, Any]:
    me = _proc(os.getpid())
    return {
        "host": HOST,
        "pid": os.getpid(),
        "pid_start": me[1] if me else None,
        "job": _job(),
        "restart": os.environ.get("SLURM_RESTART_COUNT", ""),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "token": token,
    }


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        owner = json.loads(raw)
    except ValueError:
        return None
    return owner if isinstance(owner, dict) else None


def _who(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "an unknown job (its lock cannot be read)"
    job = f"job {owner['job']}" if owner.get("job") else "a job"
    return f"{job} on host {owner.get('host')} pid {owner.get('pid')} (since {owner.get('started')})"


def _stale(owner: dict[str, Any] | None, mtime: float) -> str:
    """Why a lock is stale, or '' while its owner may be alive."""
    age = time.time() - mtime
    old = f"its heartbeat is {age:.0f}s old (more than {stale_after():.0f}s)" if age > stale_after() else ""
    if owner is None:
        return old
    job, pid = owner.get("job"), owner.get("pid")
    restart = os.environ.get("SLURM_RESTART_COUNT", "")
    if job and job == os.environ.get("SLURM_JOB_ID") and owner.get("restart", "") != restart:
        return f"job {job} was requeued since (restart {owner.get('restart') or 0} -> {restart or 0})"
    if owner.get("host") != HOST or not isinstance(pid, int):
        return old
    if pid == os.getpid():
        return "" if owner.get("token") in _HELD else "this process made it and has let go of the folder"
    state = _proc(pid)
    if state is None or state[0] == "Z":
        return f"pid {pid} is gone"
    if owner.get("pid_start") is not None and state[1] is not None and state[1] != owner["pid_start"]:
        return f"pid {pid} is another process now"
    return ""


def _link_create(lock: Path, content: bytes) -> bool:
    """Create ``lock`` holding ``content`` atomically; False if it exists."""
    tmp = unique_tmp(lock)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            return os.stat(tmp).st_nlink == 2  # NFS: made, but the reply was lost and the retry failed
        except OSError:  # no hard links on this file system
            pass
    finally:
        tmp.unlink()
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    return True


def _take_over(lock: Path, seen: bytes) -> None:
    """Move the stale lock ``seen`` aside; if what moved is not it (another job claimed
    the folder meanwhile), put that back."""
    aside = unique_tmp(lock, ".stale")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    try:
        if aside.read_bytes() != seen:
            try:
                os.link(aside, lock)
            except OSError:
                pass
    finally:
        aside.unlink(missing_ok=True)


class Claim:
    """Rank 0's claim on a run folder (see the module docstring). ``note`` is what the
    driver prints about the choice ('' if nothing); ``created``: the folder was made
    for this job (:meth:`release` removes it again if the job left it empty)."""

    def __init__(self, run_dir: Path, token: str, created: bool) -> None:
        self.run_dir, self.token, self.created = run_dir, token, created
        self.note = ""
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="mpiml-lock-heartbeat", daemon=True)
        _HELD.add(token)
        self._beat.start()

    @property
    def lock(self) -> Path:
        return self.run_dir / LOCK

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.lock, follow_symlinks=False)
            except OSError:
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this claim's. Idempotent."""
        if self.token not in _HELD:
            return
        _HELD.discard(self.token)
        self._stop.set()
        try:
            owner = _parse(self.lock.read_bytes())
            if owner is not None and owner.get("token") == self.token:
                self.lock.unlink()
        except OSError:
            pass
        if self.created:
            try:
                self.run_dir.rmdir()  # only if the job left it empty
            except OSError:
                pass


def claim(run_dir: Path, created: bool = False) -> Claim:
    """Claim ``run_dir`` (an existing folder) for this process; ConfigError if a live
    job holds it. A stale lock is taken over with a warning on stderr."""
    lock = run_dir / LOCK
    token = secrets.token_hex(8)
    content = json.dumps(_owner_now(token)).encode()
    for _ in range(5):
        if _link_create(lock, content):
            return Claim(run_dir, token, created)
        try:
            seen = lock.read_bytes()
            mtime = lock.lstat().st_mtime
        except FileNotFoundError:
            continue  # released meanwhile
        owner = _parse(seen)
        why = _stale(owner, mtime)
        if not why:
            raise ConfigError(
                f"{run_dir} is in use by {_who(owner)}; wait for it to end or use another run.name "
                f"(its lock: {lock})"
            )
        print(
            f"mpiml: warning: {lock} was left by {_who(owner)}: {why}; taking the run folder over",
            file=sys.stderr,
            flush=True,
        )
        _take_over(lock, seen)
    raise ConfigError(f"{run_dir}: could not claim {lock} (other jobs keep taking it); try again")


def _unnamed(out: Path) -> list[tuple[int, Path]]:
    """(number, path) of every ``default`` / ``default-<n>`` entry in ``out``, newest first."""
    try:
        entries = list(out.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for p in entries:
        m = _NUMBERED.match(p.name)
        if m:
            found.append((int(m.group(1) or 1), p))
    return sorted(found, reverse=True)


def fresh_folder(out: Path) -> Path:
    """Make the next unnamed run's folder in ``out`` and return it (atomic: ``mkdir``)."""
    out.mkdir(parents=True, exist_ok=True)
    n = max((k for k, _ in _unnamed(out)), default=0) + 1
    for _ in range(1000):
        p = out / (UNNAMED if n == 1 else f"{UNNAMED}-{n}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            n += 1
    raise ConfigError(f"--out {str(out)!r}: no free name for an unnamed run; set run.name")


def newest_unnamed(out: Path) -> Path | None:
    """The newest unnamed run folder in ``out`` holding a complete checkpoint."""
    for _, p in _unnamed(out):
        if p.is_dir() and not p.is_symlink():
            if any(not problem for _, _, problem in ckpt.checkpoint_dirs(p / "checkpoints")):
                return p
    return None


def holds_run(run_dir: Path) -> bool:
    """Does ``run_dir`` hold (part of) a run: a run file, rank files or checkpoints?"""
    if (run_dir / "run.h5").exists():
        return True
    return any(any((run_dir / name).iterdir()) for name in WRITTEN[1:] if (run_dir / name).is_dir())


def resolve(name: str, out: Path, resume: bool | str, overwrite: bool) -> Claim:
    """Choose and claim the run folder (rank 0, no collective; ConfigError naming the
    problem: a link in it, a live job holding it, a run in it without ``--resume``
    or ``--overwrite``). ``resume``: False, True or "auto", as :func:`mpiml.run.train`."""
    note = ""
    if name == UNNAMED and not overwrite:
        found = newest_unnamed(out) if resume else None
        if found is None and resume is True:
            raise ConfigError(
                f"--resume: no checkpoint in {out / UNNAMED}* (no unnamed run there has one); "
                "name the run to resume with --set run.name=NAME"
            )
        if found is None:
            return claim(fresh_folder(out), created=True)
        run_dir = found
        flag = "--resume" if resume is True else "--auto-resume"
        note = f"mpiml: {flag}: continuing {run_dir}, the newest unnamed run with a checkpoint"
    else:
        run_dir = out / name
    check_links(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    c = claim(run_dir, created)
    c.note = note
    if not resume and not overwrite and holds_run(run_dir):
        c.release()
        raise ConfigError(
            f"{run_dir} already holds a run; use --resume to continue it, --overwrite to "
            "replace it, or another run.name"
        )
    return c


def clear_run(run_dir: Path) -> None:
    """Delete what a run wrote in ``run_dir`` (run.h5, ranks/, checkpoints/), after
    checking all of it: a link anywhere is a ConfigError before anything is deleted,
    and nothing is followed out of the folder."""
    check_links(run_dir)
    for name in WRITTEN:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
