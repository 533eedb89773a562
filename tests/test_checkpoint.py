"""Checkpoint files: atomic, checksummed, damage reported instead of crashing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
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


def test_temporary_names_are_unique_per_writer(tmp_path: Path) -> None:
    """A stale temporary under the old fixed names (another writer's, or a crash's)
    does not stop a write, and is not taken over."""
    step = ckpt.step_dir(tmp_path, 10)
    (step / ".rank-00000.h5.tmp").mkdir(parents=True)  # the fixed names of before
    (step / ".COMPLETE.tmp").mkdir()
    p = _write(tmp_path)
    ckpt.write_complete(tmp_path, 10, 1)
    assert ckpt.read_rank(p)[1]["step"] == 10 and ckpt.read_marker(step)["step"] == 10
    assert sorted(x.name for x in step.iterdir()) == [
        ".COMPLETE.tmp",
        ".rank-00000.h5.tmp",
        "COMPLETE",
        p.name,
    ]


def test_marker_and_rank_file_record_the_versions(tmp_path: Path) -> None:
    from mpiml import __version__

    p = _write(tmp_path)
    ckpt.write_complete(tmp_path, 10, 1, run_id="abc")
    marker = ckpt.read_marker(p.parent)
    assert marker is not None
    assert (marker["format"], marker["mpiml_version"], marker["run_id"]) == (ckpt.FORMAT, __version__, "abc")
    meta = ckpt.read_rank(p)[1]
    assert (meta["format"], meta["mpiml_version"]) == (ckpt.FORMAT, __version__)


def test_newer_versions_are_recognised(tmp_path: Path) -> None:
    from mpiml import __version__

    assert ckpt.is_newer(__version__, ckpt.FORMAT) == ""
    assert ckpt.is_newer(None, None) == ""  # before versions: format 1
    assert "format 99" in ckpt.is_newer(__version__, 99)
    assert "mpiml 99.0" in ckpt.is_newer("99.0", ckpt.FORMAT)
    p = _write(tmp_path)
    with h5py.File(p, "a") as f:  # outside the digest: read before it is checked
        f.attrs["format"] = 99
    with pytest.raises(ckpt.NewerCheckpointError, match=r"\(format 99\); this is mpiml"):
        ckpt.read_rank(p)


def test_only_what_mpiml_writes_is_read(tmp_path: Path) -> None:
    """Step folders with other names, links, FIFOs and folders named like a rank file:
    ignored or reported as damage, never followed, never a hang."""
    _write(tmp_path, 10)
    ckpt.write_complete(tmp_path, 10, 1)
    for name in ("step-10", "step-abc", "step-0000000100", "step-00000001x", "step--00000001"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "COMPLETE").write_text("{}")
    (tmp_path / "step-000000030").write_text("a file, not a folder")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "step-000000040").symlink_to(tmp_path / "step-000000010")
    found = {s: p for s, _, p in ckpt.checkpoint_dirs(tmp_path)}
    assert sorted(found) == [10, 40] and found[10] == "" and "symbolic link" in found[40]
    d = ckpt.step_dir(tmp_path, 20)
    d.mkdir()
    os.mkfifo(d / "COMPLETE")  # would block a reader that opened it
    os.mkfifo(d / "rank-00000.h5")
    (d / "rank-00001.h5").mkdir()
    (d / "rank-00002.h5").symlink_to(ckpt.rank_path(tmp_path, 10, 0))
    assert ckpt.read_marker(d) is None
    assert "partial" in {s: p for s, _, p in ckpt.checkpoint_dirs(tmp_path)}[20]
    assert "not a regular file" in ckpt.verify_rank(d / "rank-00000.h5")
    assert "not a regular file" in ckpt.verify_rank(d / "rank-00001.h5")
    assert "symbolic link" in ckpt.verify_rank(d / "rank-00002.h5")


def test_a_fifo_named_like_a_rank_file_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "rank-00000.h5")
    code = (
        "import sys; from pathlib import Path; from mpiml.io import checkpoint as c; "
        "print(c.verify_rank(Path(sys.argv[1])))"
    )
    try:
        res = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "rank-00000.h5")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO named like a checkpoint hung")
    assert "not a regular file" in res.stdout, res.stderr


def test_writing_a_step_moves_a_planted_link_aside(tmp_path: Path) -> None:
    """A step path that is a link (to a folder mpiml must not write into) is moved aside."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "checkpoints"
    root.mkdir()
    ckpt.step_dir(root, 10).symlink_to(elsewhere)
    ckpt.clear_complete(root, 10)
    _write(root, 10)
    assert list(elsewhere.iterdir()) == [] and not ckpt.step_dir(root, 10).is_symlink()
    assert (root / "step-000000010.foreign-0").is_symlink()


def test_the_run_id_is_handed_on_from_the_checkpoint_before(tmp_path: Path) -> None:
    assert ckpt.latest_run_id(tmp_path, 100) == ""
    _write(tmp_path, 10)
    ckpt.write_complete(tmp_path, 10, 1)  # before run ids
    assert ckpt.latest_run_id(tmp_path, 100) == ""
    first = ckpt.new_run_id()
    assert len(first) == 32 and first != ckpt.new_run_id()
    for step in (20, 30):
        _write(tmp_path, step)
        ckpt.write_complete(tmp_path, step, 1, run_id=first)
    _write(tmp_path, 40)  # partial: not a checkpoint, its id does not count
    assert ckpt.latest_run_id(tmp_path, 100) == first and ckpt.latest_run_id(tmp_path, 20) == ""
