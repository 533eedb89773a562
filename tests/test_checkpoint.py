"""Checkpoint files: atomic, checksummed, damage reported instead of crashing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpiml.errors import CheckpointError
from mpiml.io import checkpoint as ckpt


def _write(root: Path, step: int = 10) -> Path:
    arrays = {"params": np.arange(1000, dtype=np.float32), "opt/m": np.ones(3)}
    return ckpt.write_rank(root, step, 0, arrays, {"step": step, "rng": {"state": 2**100}})


def test_round_trip(tmp_path: Path) -> None:
    p = _write(tmp_path)
    arrays, meta = ckpt.read_rank(p)
    assert np.array_equal(arrays["params"], np.arange(1000, dtype=np.float32))
    assert np.array_equal(arrays["opt/m"], np.ones(3)) and meta["rng"]["state"] == 2**100
    assert not list(p.parent.glob(".*tmp"))  # no temporary left behind


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    p = _write(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        ckpt.read_rank(p)
    assert "cannot be read" in ckpt.verify_rank(p)


def test_flipped_bit_fails_the_checksum(tmp_path: Path) -> None:
    p = _write(tmp_path)
    data = bytearray(p.read_bytes())
    raw = np.arange(1000, dtype=np.float32).tobytes()
    at = bytes(data).find(raw[400:432])  # inside the params dataset
    assert at > 0
    data[at + 3] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        ckpt.read_rank(p)


def test_partial_checkpoint_is_listed_as_partial(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    ckpt.write_complete(tmp_path, 10, 1)
    _write(tmp_path, 20)  # no COMPLETE: a crash between rank files and the marker
    found = ckpt.checkpoint_dirs(tmp_path)
    assert [(s, bool(p)) for s, _, p in found] == [(20, True), (10, False)]
    assert "partial" in found[0][2]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for s in (10, 20, 30, 40):
        _write(tmp_path, s)
        ckpt.write_complete(tmp_path, s, 1)
    ckpt.prune(tmp_path, 2)
    assert [s for s, _, _ in ckpt.checkpoint_dirs(tmp_path)] == [40, 30]
