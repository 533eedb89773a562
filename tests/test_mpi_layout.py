"""Layouts on real ranks: communicators split from the layout, the layout in the run
file and checkpoint markers, and a resume on another layout refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from mpi4py import MPI
from reference import small_job  # tests/reference.py

from mpiml.comm import split
from mpiml.errors import ConfigError
from mpiml.io import load_run
from mpiml.layout import data_parallel, parameter_server, pipelines
from mpiml.run import train
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=2)


def _members(c: MPI.Intracomm) -> list[int]:
    return c.allgather(MPI.COMM_WORLD.Get_rank())


@pytest.mark.parametrize("kind", ["data_parallel", "parameter_server", "pipelines"])
def test_split_gives_peers_and_role_communicators(comm: MPI.Comm, kind: str) -> None:
    n, rank = comm.Get_size(), comm.Get_rank()
    layout = {
        "data_parallel": lambda: data_parallel(n),
        "parameter_server": lambda: parameter_server(n, servers=1),
        "pipelines": lambda: pipelines(n, stages=2) if n % 2 == 0 else data_parallel(n),
    }[kind]()
    comms = split(comm, layout)
    try:
        peers, role = _members(comms.peers), _members(comms.role)
        want_role = [r for r in range(n) if layout.roles[r].kind == layout.roles[rank].kind]
        assert_all(comm, peers == layout.peers(rank), f"peers {peers} != layout {layout.peers(rank)}")
        assert_all(comm, role == want_role, f"role {role} != {want_role}")
        assert_all(comm, comms.world is comm, "world must be the communicator given")
    finally:
        comms.free()


def test_run_file_and_marker_record_the_layout_and_resume_refuses_another(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    cfg = small_job("lay", "checkpoint.every=10", steps=20)
    with open(os.devnull, "w") as null:
        train(cfg, comm, out=shared_tmp, stream=null)
    run_dir = shared_tmp / "lay"
    ok = True
    if comm.Get_rank() == 0:
        run = load_run(run_dir)
        ok = run.layout == json.loads(data_parallel(n).to_json())
        marker = run_dir / "checkpoints" / "step-000000020" / "COMPLETE"
        m = json.loads(marker.read_text())
        ok = ok and m["layout"] == json.loads(data_parallel(n).to_json())
        m["layout"] = json.loads(parameter_server(n, servers=1).to_json())  # same size, other roles
        marker.write_text(json.dumps(m))
    assert_all(comm, comm.bcast(ok, root=0), "the run file or the checkpoint marker lacks the layout")
    comm.Barrier()
    with open(os.devnull, "w") as null, pytest.raises(ConfigError) as info:
        train(cfg, comm, out=shared_tmp, resume=True, stream=null)
    msg = str(info.value)
    assert_all(comm, "the layout (parameter_server" in msg and "data_parallel" in msg, msg)


def test_a_marker_with_a_broken_layout_is_skipped_like_a_damaged_checkpoint(
    comm: MPI.Comm, shared_tmp
) -> None:  # type: ignore[no-untyped-def]
    """A COMPLETE whose layout (or world size) is not valid is a damaged checkpoint: it is
    skipped for the older one, never a crash."""
    cfg = small_job("badlay", "checkpoint.every=10", "checkpoint.keep=5", steps=30)
    with open(os.devnull, "w") as null:
        full = train(cfg, comm, out=shared_tmp, stream=null)
    run_dir = shared_tmp / "badlay"
    if comm.Get_rank() == 0:
        for step, bad in ((30, {"roles": [{"kind": "bogus"}]}), (20, "garbage")):
            marker = run_dir / "checkpoints" / f"step-{step:09d}" / "COMPLETE"
            m = json.loads(marker.read_text())
            m["layout"] = bad
            marker.write_text(json.dumps(m))
        (run_dir / "run.h5").rename(run_dir / "run.h5.full")
    comm.Barrier()
    with open(os.devnull, "w") as null:
        res = train(cfg, comm, out=shared_tmp, resume=True, stream=null)  # from step 10
    assert_all(comm, np.array_equal(res.params, full.params), "resumed from step 10: not the same end")


def test_auto_resume_with_only_a_partial_checkpoint_starts_anew(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """A job killed while writing its first checkpoint leaves a step folder without
    COMPLETE: a requeued --auto-resume starts from scratch instead of failing forever."""
    cfg = small_job("partial", "checkpoint.every=10", steps=20)
    with open(os.devnull, "w") as null:
        fresh = train(
            small_job("partial-ref", "checkpoint.every=10", steps=20), comm, out=shared_tmp, stream=null
        )
    if comm.Get_rank() == 0:
        (shared_tmp / "partial" / "checkpoints" / "step-000000010").mkdir(parents=True)
    comm.Barrier()
    with open(os.devnull, "w") as null:
        res = train(cfg, comm, out=shared_tmp, resume="auto", stream=null)
    assert_all(comm, np.array_equal(res.params, fresh.params), "auto-resume did not start anew")
