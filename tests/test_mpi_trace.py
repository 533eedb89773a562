"""Message ids on real ranks: every ``send`` (source, destination, msg) in a run file
has exactly one ``recv`` on the destination with the same key and nbytes, and every
``recv`` one ``send``, for gossip over both transports, a time-varying topology, and
compressed gossip."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from mpi4py import MPI
from reference import small_job  # tests/reference.py

from mpiml.io import load_run
from mpiml.testing import assert_all
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test

STEPS = 12

JOBS = {
    "p2p-ring": ["algorithm.name=dpsgd", "algorithm.topology=ring"],
    "neighbor-one-peer": [
        "algorithm.name=dpsgd",
        "algorithm.topology=one_peer_exponential",
        "algorithm.gossip_method=neighbor",
    ],
    "compressed-ring": ["algorithm.name=dpsgd", "algorithm.topology=ring", "compression.codec=qsgd"],
}


def _pairing_problems(run_dir, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    run = load_run(run_dir)
    sends: Counter[tuple[int, int, int, int]] = Counter()  # (src, dst, msg, nbytes)
    recvs: Counter[tuple[int, int, int, int]] = Counter()
    problems = []
    for r in range(n):
        ev = run.events[r]
        for kind, into, src_is_me in (("send", sends, True), ("recv", recvs, False)):
            rows = ev[ev["kind"] == kind]
            if len(rows) == 0:
                problems.append(f"rank {r}: no {kind} events")
            if np.any(rows["msg"] < 0) or np.any(rows["peer"] < 0) or np.any(rows["peer"] == r):
                problems.append(f"rank {r}: {kind} with a bad msg or peer")
            if np.any(rows["t_end"] < rows["t_start"]):
                problems.append(f"rank {r}: {kind} ends before it starts")
            for p, m, b in zip(
                rows["peer"].tolist(), rows["msg"].tolist(), rows["nbytes"].tolist(), strict=True
            ):
                into[(r, p, m, b) if src_is_me else (p, r, m, b)] += 1
        other = ev[~np.isin(ev["kind"], ["send", "recv"])]
        if np.any(other["msg"] != -1):
            problems.append(f"rank {r}: non-message events with a message id")
    for key, k in sends.items():
        if k != 1 or recvs.get(key) != 1:
            problems.append(
                f"send (src, dst, msg, nbytes) = {key}: {k} sends, {recvs.get(key, 0)} matching recvs"
            )
    for key in recvs.keys() - sends.keys():
        problems.append(f"recv (src, dst, msg, nbytes) = {key} has no send")
    # ids count up from 0 per (src, dst): no gaps
    per_pair: dict[tuple[int, int], list[int]] = {}
    for s, d, m, _ in sends:
        per_pair.setdefault((s, d), []).append(m)
    for pair, ids in per_pair.items():
        if sorted(ids) != list(range(len(ids))):
            problems.append(f"{pair}: ids {sorted(ids)} are not 0..{len(ids) - 1}")
    return problems[:20]


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_send_pairs_with_one_recv(comm: MPI.Comm, shared_tmp, job: str) -> None:  # type: ignore[no-untyped-def]
    cfg = small_job(f"pairs-{job}", *JOBS[job], steps=STEPS, eval_every=STEPS)
    train(cfg, comm, out=shared_tmp, stream=NULL)
    problems: list[str] = []
    if comm.Get_rank() == 0:
        problems = _pairing_problems(shared_tmp / f"pairs-{job}", comm.Get_size())
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))
