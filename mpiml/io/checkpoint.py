"""Checkpoints: one HDF5 file per rank per step, written atomically, checked by SHA-256.

Layout: ``<run>/checkpoints/step-<step:09d>/rank-<r:05d>.h5`` plus ``COMPLETE``
(JSON: step, world size, and the job's layout of roles, :class:`mpiml.layout.Layout`
as JSON; markers written before layouts existed have none and mean data
parallelism), which rank 0 writes only after every rank's file is on disk. A rank file holds its arrays as datasets and its metadata (RNG states, data
position, config) as JSON in the attribute ``meta``; the attribute ``sha256`` is the
digest of every dataset's name, dtype, shape and bytes and of ``meta``. Writes go to
a temporary name, are fsync'd, then renamed, and the folder is fsync'd: a crash
leaves either the old set of files or the new one, never a torn file under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import CheckpointError

__all__ = [
    "checkpoint_dirs",
    "clear_complete",
    "prune",
    "rank_path",
    "read_rank",
    "step_dir",
    "verify_rank",
    "write_complete",
    "write_rank",
]


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:09d}"


def rank_path(root: Path, step: int, rank: int) -> Path:
    return step_dir(root, step) / f"rank-{rank:05d}.h5"


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rank(root: Path, step: int, rank: int, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write this rank's checkpoint for ``step`` atomically; returns its path."""
    final = rank_path(root, step, rank)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    meta_text = json.dumps(meta, sort_keys=True)
    with h5py.File(tmp, "w") as f:
        for name, a in arrays.items():
            f.create_dataset(name, data=np.asarray(a))
        f.attrs["meta"] = meta_text
        f.attrs["sha256"] = _digest(arrays, meta_text)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def write_complete(root: Path, step: int, world_size: int, layout: str = "") -> None:
    """Mark ``step`` complete (rank 0, after every rank has written its file);
    ``layout`` is the job's :meth:`mpiml.layout.Layout.to_json`."""
    d = step_dir(root, step)
    tmp = d / ".COMPLETE.tmp"
    marker: dict[str, Any] = {"step": step, "world_size": world_size}
    if layout:
        marker["layout"] = json.loads(layout)
    with open(tmp, "w") as fh:
        json.dump(marker, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, d / "COMPLETE")
    _fsync_dir(d)
    _fsync_dir(root)  # the step folder's own entry is durable before older ones are pruned


def clear_complete(root: Path, step: int) -> None:
    """Remove a stale COMPLETE marker before a step's files are written again
    (rank 0, before any rank writes; a skipped damaged checkpoint can leave one)."""
    marker = step_dir(root, step) / "COMPLETE"
    if marker.exists():
        marker.unlink()
        _fsync_dir(marker.parent)


def read_rank(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of one rank file; CheckpointError if it is damaged."""
    try:
        with h5py.File(path, "r") as f:
            arrays: dict[str, np.ndarray] = {}
            f.visititems(
                lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
            meta_text = str(f.attrs["meta"])
            digest = str(f.attrs["sha256"])
    except Exception as exc:  # any failure to read is a damaged checkpoint, reported, never a crash
        raise CheckpointError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    if _digest(arrays, meta_text) != digest:
        raise CheckpointError(f"{path} fails its SHA-256 check (corrupted)")
    return arrays, json.loads(meta_text)


def verify_rank(path: Path) -> str:
    """'' if ``path`` is a sound checkpoint file, else why not."""
    if not path.is_file():
        return f"{path} is missing"
    try:
        read_rank(path)
    except CheckpointError as exc:
        return str(exc)
    return ""


def checkpoint_dirs(root: Path) -> list[tuple[int, Path, str]]:
    """(step, folder, problem) for every step folder, newest first; problem is ''
    for a folder marked complete."""
    out: list[tuple[int, Path, str]] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if not d.is_dir() or not d.name.startswith("step-"):
            continue
        try:
            step = int(d.name[5:])
        except ValueError:
            continue
        problem = "" if (d / "COMPLETE").is_file() else f"{d} is partial (no COMPLETE marker)"
        out.append((step, d, problem))
    return sorted(out, key=lambda t: -t[0])


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (rank 0)."""
    complete = [d for _, d, problem in checkpoint_dirs(root) if not problem]
    for d in complete[keep:]:
        shutil.rmtree(d, ignore_errors=True)
