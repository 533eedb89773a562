"""Checkpoints: one HDF5 file per rank per step, written atomically, checked by SHA-256,
bound to their slot and versioned.

Layout: ``<run>/checkpoints/step-<step:09d>/rank-<r:05d>.h5`` plus ``COMPLETE``, which
rank 0 writes only after every rank's file (and every rank's trace tables) is on disk.

``COMPLETE`` is JSON: step, world size, the job's layout of roles
(:class:`mpiml.layout.Layout` as JSON), the run id (random, made at the run's first
checkpoint and handed on from marker to marker, across resumes), the checkpoint format
(:data:`FORMAT`) and the mpiml version that wrote it. Markers written before layouts
existed have no layout and mean data parallelism; markers and rank files written before
formats existed have none and are format 1.

A rank file holds its arrays as datasets and its metadata (RNG states, data position,
config, and what binds it to its slot: run id, step, rank, role, world size) as JSON
in the attribute ``meta``; the attribute ``sha256`` is the digest of every dataset's
name, dtype, shape and bytes and of ``meta``. The attributes ``format`` and
``mpiml_version`` repeat the version outside the digest, so a file of a newer format
is recognised as such before its digest is checked. Writes go to a temporary name
unique to the writer (``.<name>.<pid>-<random>.tmp``), are fsync'd, then renamed, and
the folder is fsync'd: a crash leaves either the old set of files or the new one,
never a torn file under a final name.

Only what mpiml writes is read: step folders named exactly ``step-<9 digits>``, regular
files (never through a symbolic link, never a FIFO or device that could block), and
a marker of bounded size; anything else in the folder is ignored or reported as damage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import CheckpointError

__all__ = [
    "FORMAT",
    "NewerCheckpointError",
    "checkpoint_dirs",
    "clear_complete",
    "fsync_path",
    "is_newer",
    "latest_run_id",
    "new_run_id",
    "prune",
    "rank_path",
    "read_marker",
    "read_rank",
    "regular_file_problem",
    "step_dir",
    "verify_rank",
    "write_complete",
    "write_rank",
]

FORMAT = 2  # 1: before versions (no format, run id or role JSON); 2: bound to its slot, versioned
_STEP_DIR = re.compile(r"step-(\d{9})")
_MAX_MARKER = 1 << 20  # bytes: a marker is a few hundred; anything larger is not ours


class NewerCheckpointError(CheckpointError):
    """A checkpoint written by a newer mpiml or in a newer format than this one reads:
    not damage (never skipped, never deleted); the user must upgrade. ``written_by``:
    "mpiml X (format F); this is mpiml Y (format G)"."""

    def __init__(self, path: Path, written_by: str) -> None:
        super().__init__(f"{path} was written by {written_by}: upgrade mpiml")
        self.path, self.written_by = path, written_by

    def __reduce__(self) -> tuple[type[NewerCheckpointError], tuple[Path, str]]:
        return type(self), (self.path, self.written_by)


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:09d}"


def rank_path(root: Path, step: int, rank: int) -> Path:
    return step_dir(root, step) / f"rank-{rank:05d}.h5"


def _version_key(text: str) -> tuple[int, ...]:
    """The leading numbers of a version ("0.1.0" -> (0, 1, 0); "1.2rc1" -> (1, 2))."""
    key = []
    for part in text.split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        key.append(int(m.group()))
        if m.end() != len(part):
            break
    return tuple(key)


def is_newer(version: Any, fmt: Any) -> str:
    """'' if a checkpoint of mpiml ``version`` and format ``fmt`` (None: format 1) is
    readable here, else the "upgrade" message's tail: "mpiml X (format F); this is mpiml Y"."""
    fmt = 1 if fmt is None else fmt
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        return ""  # not a format at all: damage, for the caller to report
    version = str(version) if version is not None else "before 0.1"
    if fmt > FORMAT or _version_key(version) > _version_key(__version__):
        return f"mpiml {version} (format {fmt}); this is mpiml {__version__} (format {FORMAT})"
    return ""


def _digest(arrays: dict[str, np.ndarray], meta: str) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(str(a.dtype.str).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    h.update(meta.encode())
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    """Make a closed file's content, or a folder's entries, durable (h5py's close does
    not fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(final: Path) -> Path:
    """A temporary name next to ``final`` that no other writer uses (pid + random)."""
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def regular_file_problem(path: Path) -> str:
    """'' if ``path`` is a regular file (not a link, FIFO, device or folder), else why not.
    Checked before opening: a FIFO named like a checkpoint would block the reader."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as exc:
        return f"{path} cannot be read ({type(exc).__name__}: {exc})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link (mpiml writes none; not followed)"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file (mpiml did not write it)"
    return ""


def write_rank(root: Path, step: int, rank: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write this rank's checkpoint for ``step`` atomically; returns its path. ``meta``
    gets ``format`` and ``mpiml_version`` added (also stored as plain attributes)."""
    final = rank_path(root, step, rank)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(final)
    meta = {**meta, "format": FORMAT, "mpiml_version": __version__}
    meta_text = json.dumps(meta, sort_keys=True)
    try:
        with h5py.File(tmp, "w") as f:
            for name, a in arrays.items():
                f.create_dataset(name, data=np.asarray(a))
            f.attrs["meta"] = meta_text
            f.attrs["sha256"] = _digest(arrays, meta_text)
            f.attrs["format"] = FORMAT
            f.attrs["mpiml_version"] = __version__
        fsync_path(tmp)
        os.replace(tmp, final)  # replaces a link or file under the final name, never writes through it
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(final.parent)
    return final


def write_complete(root: Path, step: int, world_size: int, layout: str = "", run_id: str = "") -> None:
    """Mark ``step`` complete (rank 0, after every rank has written its file);
    ``layout`` is the job's :meth:`mpiml.layout.Layout.to_json`, ``run_id`` the run's
    identity (:func:`latest_run_id`, or :func:`new_run_id` for a run's first)."""
    d = step_dir(root, step)
    marker: dict[str, Any] = {
        "step": step,
        "world_size": world_size,
        "format": FORMAT,
        "mpiml_version": __version__,
    }
    if layout:
        marker["layout"] = json.loads(layout)
    if run_id:
        marker["run_id"] = run_id
    _write_json(d / "COMPLETE", marker)
    fsync_path(root)  # the step folder's own entry is durable before older ones are pruned


def _write_json(final: Path, value: dict[str, Any]) -> None:
    tmp = _temporary(final)
    try:
        with open(tmp, "w") as fh:
            json.dump(value, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(final.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object from a regular file; None if it is anything else."""
    if regular_file_problem(path):
        return None
    try:
        with open(path, "rb") as fh:
            text = fh.read(_MAX_MARKER + 1)
        value = json.loads(text) if len(text) <= _MAX_MARKER else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_marker(d: Path) -> dict[str, Any] | None:
    """The COMPLETE marker of step folder ``d`` as a dict; None if it is missing or
    not one mpiml wrote (unreadable, not JSON, a link, a FIFO, too large)."""
    return _read_json(d / "COMPLETE")


def new_run_id() -> str:
    """A fresh run id (random, 128 bits, hex)."""
    return secrets.token_hex(16)


def latest_run_id(root: Path, before: int) -> str:
    """The run id in the marker of the newest complete checkpoint of a step < ``before``
    ('' if there is none, or it predates run ids): the id a run that resumed from that
    checkpoint keeps (rank 0, when it writes the next one)."""
    for step, d, problem in checkpoint_dirs(root):
        if step < before and not problem:
            run_id = (read_marker(d) or {}).get("run_id")
            if isinstance(run_id, str) and run_id:
                return run_id
    return ""


def clear_complete(root: Path, step: int) -> None:
    """Prepare ``step``'s folder to be written (rank 0, before any rank writes): remove
    a stale COMPLETE marker (a skipped damaged checkpoint can leave one); a step path that
    is a symbolic link or not a folder is moved aside (``<name>.foreign-<k>``), never
    written through and never deleted."""
    d = step_dir(root, step)
    if d.is_symlink() or (d.exists() and not d.is_dir()):
        k = 0
        while os.path.lexists(d.with_name(f"{d.name}.foreign-{k}")):
            k += 1
        d.rename(d.with_name(f"{d.name}.foreign-{k}"))
        return
    marker = d / "COMPLETE"
    if os.path.lexists(marker):
        marker.unlink()
        fsync_path(d)


def read_rank(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of one rank file. Raises :class:`NewerCheckpointError` for a
    file of a newer format or mpiml, :class:`CheckpointError` for any other problem
    (not a regular file, unreadable, failing its digest)."""
    problem = regular_file_problem(path)
    if problem:
        raise CheckpointError(problem)
    try:
        with h5py.File(path, "r", locking=False) as f:
            newer = is_newer(f.attrs.get("mpiml_version"), _plain(f.attrs.get("format")))
            if newer:
                raise NewerCheckpointError(path, newer)
            arrays: dict[str, np.ndarray] = {}
            f.visititems(
                lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
            meta_text = str(f.attrs["meta"])
            digest = str(f.attrs["sha256"])
    except NewerCheckpointError:
        raise
    except Exception as exc:  # any failure to read is a damaged checkpoint, reported, never a crash
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    if _digest(arrays, meta_text) != digest:
        raise CheckpointError(f"{path} fails its SHA-256 check (corrupted)")
    try:
        meta = json.loads(meta_text)
    except ValueError as exc:
        raise CheckpointError(f"{path} holds no valid metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds no valid metadata (not a JSON object)")
    return arrays, meta


def _plain(value: Any) -> Any:
    """An HDF5 attribute as a Python value (numpy integers as int)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def verify_rank(path: Path) -> str:
    """'' if ``path`` is a sound checkpoint file, else why not."""
    try:
        read_rank(path)
    except CheckpointError as exc:
        return str(exc)
    return ""


def checkpoint_dirs(root: Path) -> list[tuple[int, Path, str]]:
    """(step, folder, problem) for every step folder, newest first; problem is ''
    for a folder marked complete. Only names ``step-<9 digits>`` count (anything else
    is not mpiml's and is ignored); a step folder that is a symbolic link is listed
    with its problem (it is never read)."""
    out: list[tuple[int, Path, str]] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = _STEP_DIR.fullmatch(d.name)
        if m is None or not d.is_dir():
            continue
        if d.is_symlink():
            problem = f"{d} is a symbolic link (mpiml writes none; not followed)"
        elif regular_file_problem(d / "COMPLETE"):
            problem = f"{d} is partial (no COMPLETE marker)"
        else:
            problem = ""
        out.append((int(m.group(1)), d, problem))
    return sorted(out, key=lambda t: -t[0])


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0)."""
    complete = [d for _, d, problem in checkpoint_dirs(root) if not problem]
    for d in complete[keep:]:
        shutil.rmtree(d, ignore_errors=True)
