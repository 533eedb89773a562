"""The lazy reader (mpiml.io.reader): chunked and windowed reads, the time-slab scan,
message pairing, DataFrames, damaged files. Run files are written with mpiml's own
writers (RunFile / RankFile) from random but valid event streams, and one real run."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

import mpiml.algorithms  # noqa: F401  (registers compute, send, recv, gossip, ...)
from mpiml.io import MESSAGE_DTYPE, RankReadError, load_run
from mpiml.io.runfile import RankFile, RunFile
from mpiml.testing import python_command, run_ranks
from mpiml.trace import EVENT_DTYPE

ROOT = Path(__file__).resolve().parents[1]


def write_ring_run(
    folder: Path,
    ranks: int = 3,
    steps: int = 40,
    seed: int = 0,
    resumed_at: int | None = None,
    lost: tuple[int, int] | None = None,
) -> Path:
    """A gossip-like run on a ring: per step compute, a gossip span, one send to each
    neighbour and one recv from each (msg = running count per channel, restarting at
    ``resumed_at``), jittered times so that ranks interleave. ``lost`` = (rank, step):
    that rank's recv events of that step are left out (lost in a crash). Returns the folder."""
    rng = np.random.default_rng(seed)
    layout = json.dumps({"roles": [{"kind": "replica", "shard": r, "reads": "xy"} for r in range(ranks)]})
    attrs = {"config": json.dumps({"run": {"steps": steps}}), "algorithm": "dpsgd"}
    run = RunFile(folder, ranks, attrs, None, layout=layout)
    for r in range(ranks):
        rf = RankFile(folder, r, 0.0, None)
        rows = []
        count = {p: 0 for p in ((r - 1) % ranks, (r + 1) % ranks)}
        t = rng.uniform(0, 0.01)
        for s in range(steps):
            if resumed_at is not None and s == resumed_at:
                count = dict.fromkeys(count, 0)
            c = rng.uniform(0.001, 0.01)
            rows.append((s, b"compute", t, t + c, 0, -1, -1))
            g0 = t + c
            rows.append((s, b"gossip", g0, g0 + 0.004, 16, -1, -1))
            for p in sorted(count):
                rows.append((s, b"send", g0 + 1e-4 * p, g0 + 0.002, 8, p, count[p]))
                if (r, s) != lost:
                    rows.append((s, b"recv", g0 + 1e-4 * p + 1e-6, g0 + 0.003, 8, p, count[p]))
                count[p] += 1
            t = g0 + 0.005
        ev = np.array(rows, dtype=EVENT_DTYPE)
        ev = ev[np.argsort(ev["t_start"], kind="stable")]
        rf.append_events(ev)
        rf.close()
    run.metric("loss", steps, 1.0, 0.5)
    run.metric("accuracy", steps, 1.0, 0.9)
    run.close()
    if resumed_at is not None:
        with h5py.File(folder / "run.h5", "a") as f:
            f.attrs["resumed_at_steps"] = np.array([resumed_at], np.int64)
    return folder


def oracle_pairs(run) -> pd.DataFrame:
    """Messages paired the way docs/run-file.md shows, with pandas over every event."""
    ev = run.events(kinds=["send", "recv"])
    seg = np.searchsorted(run.resumed_at_steps, ev["step"], side="right")
    ev = ev.assign(seg=seg)
    s = ev[ev.kind == "send"].rename(columns={"rank": "src", "peer": "dst"})
    v = ev[ev.kind == "recv"].rename(columns={"rank": "dst", "peer": "src"})
    return s.merge(v, on=["src", "dst", "msg", "seg"], suffixes=("_send", "_recv"))


def test_chunked_reads_equal_the_whole_table_and_windows_equal_a_filter(tmp_path: Path) -> None:
    run = load_run(write_ring_run(tmp_path))
    with h5py.File(tmp_path / "ranks" / "rank-00001.h5") as f:
        raw = f["events"][()]
    whole = run.events[1]
    assert len(whole) == len(raw) == run.n_events(1)
    assert list(whole["kind"]) == [k.decode() for k in raw["kind"]]
    for chunk in (1, 7, 64, 10_000):
        parts = list(run.iter_events(1, chunk=chunk))
        assert all(len(p) <= chunk for p in parts)
        assert np.array_equal(np.concatenate(parts), whole)
    got = np.concatenate(list(run.iter_events(1, kinds=["send"], steps=(5, 9), chunk=13)))
    want = whole[(whole["kind"] == "send") & (whole["step"] >= 5) & (whole["step"] < 9)]
    assert len(want) and np.array_equal(got, want)
    t0, t1 = whole["t_start"][30], whole["t_start"][60]
    got = np.concatenate(list(run.iter_events(1, time=(t0, t1), chunk=5)))
    want = whole[(whole["t_end"] >= t0) & (whole["t_start"] < t1)]
    assert np.array_equal(got, want)
    cols = next(run.iter_columns(1, ["kind", "peer"], kinds=["recv"]))
    assert set(cols) == {"kind", "peer"} and {run.kind_names[c] for c in cols["kind"]} == {"recv"}


def test_scan_gives_every_row_once_in_time_slabs(tmp_path: Path) -> None:
    # rank 0 records ten times as many events per second as rank 1: reading equal
    # chunks in turn would run rank 1 far ahead in time; slabs keep the ranks together
    RunFile(tmp_path, 2, {"config": "{}", "algorithm": "x"}, None).close()
    for r, n in ((0, 2000), (1, 200)):
        rf = RankFile(tmp_path, r, 0.0, None)
        ev = np.zeros(n, EVENT_DTYPE)
        ev["kind"], ev["peer"], ev["msg"] = b"compute", -1, -1
        ev["t_start"] = np.sort(np.random.default_rng(r).uniform(0, 1, n))
        ev["t_end"] = ev["t_start"] + 1e-4
        rf.append_events(ev)
        rf.close()
    run = load_run(tmp_path)
    starts = {r: run.events[r]["t_start"] for r in run.ranks}
    done = dict.fromkeys(run.ranks, 0)
    chunk = 8
    for r, c in run.scan(["t_start"], chunk=chunk):
        a, b = done[r], done[r] + len(c["t_start"])
        assert np.array_equal(c["t_start"], starts[r][a:b])  # in order, nothing skipped
        done[r] = b
        # rows of other ranks starting before this part and not yet given: at most a chunk
        behind = sum(int(np.searchsorted(starts[q], c["t_start"][0])) - done[q] for q in run.ranks if q != r)
        assert behind <= chunk
    assert done == {0: 2000, 1: 200}


@pytest.mark.parametrize("chunk", [1, 5, 65536])
def test_messages_pair_like_a_full_join(tmp_path: Path, chunk: int) -> None:
    run = load_run(write_ring_run(tmp_path, ranks=3, steps=25, seed=chunk))
    got = np.concatenate(list(run.messages(chunk=chunk)))
    assert got.dtype == MESSAGE_DTYPE and run.unpaired == 0
    want = oracle_pairs(run)
    assert len(got) == len(want) == 3 * 2 * 25
    g = pd.DataFrame(got).sort_values(["src", "dst", "msg"], ignore_index=True)
    w = want.sort_values(["src", "dst", "msg"], ignore_index=True)
    assert np.array_equal(g["t_send_start"], w["t_start_send"])
    assert np.array_equal(g["t_recv_end"], w["t_end_recv"])
    assert (g["src"] != g["dst"]).all()


def test_messages_far_apart_in_time_still_pair(tmp_path: Path) -> None:
    # steps 1 s apart (more than RECV_SLACK): rank 0's chunk reaches several seconds
    # ahead before rank 1's first send is read; its first recv must wait for that send
    RunFile(tmp_path, 2, {"config": "{}", "algorithm": "x"}, None).close()
    for r in (0, 1):
        rf = RankFile(tmp_path, r, 0.0, None)
        rows = []
        for s in range(10):
            t = s * 1.0 + 0.01 * r
            rows.append((s, b"send", t, t + 0.02, 8, 1 - r, s))
            rows.append((s, b"recv", t + 0.001, t + 0.05, 8, 1 - r, s))
        rf.append_events(np.array(rows, EVENT_DTYPE))
        rf.close()
    run = load_run(tmp_path)
    for chunk in (1, 4, 100):
        m = run.messages_frame(chunk=chunk)
        assert len(m) == 20 and run.unpaired == 0, chunk


def test_messages_in_a_window_count_what_they_cannot_pair(tmp_path: Path) -> None:
    run = load_run(write_ring_run(tmp_path, ranks=3, steps=20))
    m = run.messages_frame(ranks=[0, 1])
    assert len(m) == 2 * 20 and set(zip(m.src, m.dst, strict=True)) == {(0, 1), (1, 0)}
    assert run.unpaired == 2 * 2 * 20  # 0 and 1's sends to 2 and receives from 2
    m = run.messages_frame(steps=(4, 8))
    assert len(m) == 6 * 4 and m.step.between(4, 7).all() and run.unpaired == 0


def test_message_ids_restart_after_a_resume_and_pair_within_segments(tmp_path: Path) -> None:
    run = load_run(write_ring_run(tmp_path, ranks=3, steps=20, resumed_at=12))
    m = pd.DataFrame(np.concatenate(list(run.messages(chunk=4))))
    want = oracle_pairs(run)  # pairs within segments: a send and its recv share a step here
    assert (want.step_send == want.step_recv).all() and len(want) == 6 * 20
    assert len(m) == len(want) and run.unpaired == 0
    assert sorted(m.t_recv_end) == sorted(want.t_end_recv)
    # pairing by (src, dst, msg) alone would join step 0's send with step 12's recv
    naive = run.events(kinds=["send", "recv"])
    s = naive[naive.kind == "send"].rename(columns={"rank": "src", "peer": "dst"})
    v = naive[naive.kind == "recv"].rename(columns={"rank": "dst", "peer": "src"})
    assert (s.merge(v, on=["src", "dst", "msg"]).pipe(lambda j: j.step_x != j.step_y)).any()


def test_a_send_whose_recv_was_lost_before_a_resume_stays_unpaired(tmp_path: Path) -> None:
    # rank 1's receives of step 3 were lost (the crash before the resume at step 4): the
    # two sends to it keep ids 3, which the second segment uses again at step 7
    run = load_run(write_ring_run(tmp_path, ranks=3, steps=12, resumed_at=4, lost=(1, 3)))
    m = run.messages_frame(chunk=2)
    assert len(m) == 6 * 12 - 2 and run.unpaired == 2
    want = oracle_pairs(run)  # each send with the recv of its own step
    assert (want.step_send == want.step_recv).all() and len(want) == len(m)
    key = ["src", "dst", "t_send_start"]
    joined = m.merge(want.rename(columns={"t_start_send": "t_send_start"}), on=key)
    assert len(joined) == len(m) and (joined.t_recv_end == joined.t_end_recv).all()


def test_data_frames_have_rank_role_and_category(tmp_path: Path) -> None:
    run = load_run(write_ring_run(tmp_path))
    df = run.events(ranks=[2], kinds=["compute", "send"])
    assert (
        list(df.columns[:2]) == ["rank", "role"] and (df["rank"] == 2).all() and (df.role == "replica").all()
    )
    assert set(df.category) == {"compute", "in_flight"}
    assert np.allclose(df.duration, df.t_end - df.t_start)
    m = run.metrics()
    assert list(m.columns) == ["step", "time", "accuracy", "loss"] and m.loss.iloc[0] == 0.5
    with pytest.raises(ValueError, match=r"ranks \[7\] have no readable events"):
        run.events(ranks=[7])


def test_load_run_reads_no_event_until_asked(tmp_path: Path) -> None:
    write_ring_run(tmp_path, ranks=2, steps=10)
    run = load_run(tmp_path)
    assert run.n_events(1) == 10 * 4  # compute, gossip, a send and a recv (one neighbour)
    (tmp_path / "ranks" / "rank-00001.h5").unlink()  # gone after the open: nothing was read
    assert len(run.events[0]) == run.n_events(0)
    with pytest.raises(RankReadError, match=r"rank 1: .*rank-00001\.h5") as err:
        run.events[1]
    assert err.value.rank == 1


def test_damaged_bytes_in_the_middle_are_a_read_error_naming_the_rows(tmp_path: Path) -> None:
    write_ring_run(tmp_path, ranks=2, steps=1000)
    path = tmp_path / "ranks" / "rank-00001.h5"
    with h5py.File(path, "r") as f:
        ds = f["events"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    assert len(chunks) >= 3
    mid = chunks[len(chunks) // 2]  # HDF5 keeps no checksum of unfiltered chunks: reads succeed
    with open(path, "r+b") as fh:
        fh.seek(mid.byte_offset + 3000)
        fh.write(np.random.default_rng(0).bytes(2000))
    run = load_run(tmp_path)  # the header, first and last rows are intact
    assert run.ranks == [0, 1]
    parts = []
    with pytest.raises(RankReadError, match=r"rank 1: .*rows \d+-\d+: \d+ damaged rows") as err:
        for rows in run.iter_events(1, chunk=1024):
            parts.append(rows)
    first = int(mid.chunk_offset[0])
    assert sum(len(p) for p in parts) == first  # the chunks before the damage were given
    assert f"rows {first + 3000 // EVENT_DTYPE.itemsize}" in str(err.value)
    assert len(run.events[0]) == run.n_events(0)  # the other rank reads


def test_missing_and_cut_rank_files_are_listed(tmp_path: Path) -> None:
    write_ring_run(tmp_path, ranks=3, steps=50)
    (tmp_path / "ranks" / "rank-00002.h5").unlink()
    cut = tmp_path / "ranks" / "rank-00001.h5"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    with pytest.warns(UserWarning) as warned:
        run = load_run(tmp_path)
    assert run.ranks == [0] and run.missing_ranks == [2] and list(run.unreadable_ranks) == [1]
    assert any("missing" in str(w.message) for w in warned)
    assert len(run.events) == 1 and run.messages_frame().empty and run.unpaired > 0


def test_a_real_run_pairs_every_message(tmp_path: Path) -> None:
    job = str(ROOT / "examples" / "dpsgd_ring.toml")
    args = python_command("-m", "mpiml.cli", "train", job, "--out", str(tmp_path), "--set", "run.steps=12")
    out = run_ranks(3, [*args, "--set", "run.name=r"], timeout=120)
    assert out.returncode == 0, out.stderr
    run = load_run(tmp_path / "r")
    m = np.concatenate(list(run.messages(chunk=3)))
    sends = sum(int(np.count_nonzero(run.events[r]["kind"] == "send")) for r in run.ranks)
    assert len(m) == sends > 0 and run.unpaired == 0
    assert (m["t_recv_end"] >= m["t_send_start"]).all()
