"""File-system safety in a run folder: unique temporary names, and no writing through a
link mpiml did not make.

mpiml makes no symbolic links, so a link anywhere in a run folder was planted by
someone else: writing through it would change a file outside the run (a
``ranks/rank-00000.h5`` link to another file would be overwritten by a fresh run).
:func:`check_links` refuses every one, naming it; the driver calls it before any
collective, and again before ``--overwrite`` deletes anything. A new file is created
under a name that was unlinked first (never truncated in place, so a hard link keeps
its old content), and a file that is continued and has other hard links is copied
first (:func:`own_copy`).

Temporary names (:func:`unique_tmp`) hold the host, the process id and a random
token: two writers never share one, even two jobs in one folder or one file system.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path

from ..errors import ConfigError

__all__ = ["HOST", "check_links", "own_copy", "refuse_link", "unique_tmp"]

HOST = socket.gethostname()
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def unique_tmp(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden name next to ``path`` that no other writer uses:
    ``.<name>.<host>.<pid>.<random>.tmp``. Create it with O_EXCL (h5py mode ``"w-"``)
    so that not even a link planted under that name is written through."""
    host = _SAFE.sub("_", HOST)[:40]
    return path.with_name(f".{path.name}.{host}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def refuse_link(path: Path) -> None:
    """ConfigError if ``path`` is a symbolic link (naming it and its target)."""
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise ConfigError(
            f"{path} is a symbolic link (to {target}) that mpiml did not make; mpiml never writes "
            "through one: remove it (or move the run folder)"
        )


def check_links(run_dir: Path) -> None:
    """ConfigError naming the first symbolic link at ``run_dir`` or anywhere under it
    (without following any), or a path mpiml writes that is of the wrong type
    (``run.h5`` a folder, ``ranks`` a file...). Touches nothing."""
    refuse_link(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a folder (a run folder is)")
    for root, dirs, files in os.walk(run_dir):  # followlinks=False: a link to a folder is listed, not entered
        for name in sorted(dirs + files):
            path = Path(root) / name
            refuse_link(path)
            # checkpoints/ is read defensively (a FIFO there is damage, skipped); elsewhere
            # mpiml opens what it finds
            _refuse_foreign(path, name in dirs, files_too=not path.is_relative_to(run_dir / "checkpoints"))
    for name, folder in (("run.h5", False), ("ranks", True), ("checkpoints", True), (".lock", False)):
        p = run_dir / name
        if p.exists() and p.is_dir() != folder:
            raise ConfigError(
                f"{p} is {'not ' if folder else ''}a folder; mpiml writes a {'folder' if folder else 'file'} there"
            )


def _refuse_foreign(path: Path, is_dir: bool, files_too: bool = True) -> None:
    """ConfigError for what mpiml never makes in a run folder and could block on or
    trip over: a FIFO, socket or device (opening a FIFO blocks), or a folder where
    mpiml writes a file (``*.h5``, ``COMPLETE``, ``.lock``)."""
    if is_dir:
        if path.suffix == ".h5" or path.name in ("COMPLETE", ".lock"):
            raise ConfigError(
                f"{path} is a folder; mpiml writes a file there: remove it (or move the run folder)"
            )
        return
    if files_too and not stat.S_ISREG(path.lstat().st_mode):
        raise ConfigError(
            f"{path} is not a regular file (a FIFO, socket or device) and mpiml did not make it: "
            "remove it (or move the run folder)"
        )


def own_copy(path: Path) -> None:
    """Make ``path`` (a file about to be continued in place) this run's own: refuse a
    symbolic link; a file with other hard links is replaced by a copy of itself, so
    appending to it cannot change the other names' content."""
    refuse_link(path)
    try:
        links = path.stat().st_nlink
    except FileNotFoundError:
        return
    if links > 1:
        tmp = unique_tmp(path)
        shutil.copy2(path, tmp)
        os.replace(tmp, path)
