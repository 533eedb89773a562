"""Event kinds (mpiml.kinds), the Trace (mpiml.trace) and the run file's schema 2
(mpiml.io): registration rules, category totals, the kinds table, the layout
attribute, reading schema-1 files, and reporting a rank file that cannot be read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpiml.protocols  # noqa: F401 - registers every protocol's kinds
import mpiml.run  # noqa: F401  (the owners register their kinds: replicas, DaSGD, the driver)
from mpiml.io import SCHEMA, load_run
from mpiml.io.runfile import RankFile, RunFile, rank_file_name
from mpiml.kinds import CATEGORIES, KIND_WIDTH, KINDS, category, kinds_in, register_kind, table
from mpiml.trace import EVENT_DTYPE, Trace

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_protocols_imports_no_h5py() -> None:
    code = "import sys, mpiml.protocols; assert 'h5py' not in sys.modules, 'h5py imported'"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]


def test_io_trace_still_re_exports_the_trace() -> None:
    from mpiml.io import trace as old

    assert old.Trace is Trace and old.EVENT_DTYPE is EVENT_DTYPE


# ---- kinds


def test_register_returns_the_name_and_again_is_a_no_op() -> None:
    assert register_kind("test.alpha", "compute", "a test kind") == "test.alpha"
    assert register_kind("test.alpha", "compute", "another doc: ignored") == "test.alpha"
    assert KINDS["test.alpha"].doc == "a test kind" and category("test.alpha") == "compute"


def test_register_with_another_category_is_refused() -> None:
    register_kind("test.beta", "wait", "a test kind")
    with pytest.raises(ValueError, match=r"'test.beta' is already registered as 'wait'.*'compute'"):
        register_kind("test.beta", "compute", "a test kind")
    assert category("test.beta") == "wait"


@pytest.mark.parametrize(
    ("name", "cat", "doc", "message"),
    [
        ("test.gamma", "comm", "d", "category must be one of"),
        ("Test", "compute", "d", "lowercase ASCII"),
        ("", "compute", "d", "lowercase ASCII"),
        ("test gamma", "compute", "d", "lowercase ASCII"),
        ("test.gamma", "compute", "", "one non-empty line"),
        ("test.gamma", "compute", "two\nlines", "one non-empty line"),
        ("t" * (KIND_WIDTH + 1), "compute", "d", f"at most {KIND_WIDTH}"),
    ],
)
def test_register_refuses_bad_kinds(name: str, cat: str, doc: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_kind(name, cat, doc)
    assert name not in KINDS


def test_a_name_of_the_full_width_fits_the_event_table() -> None:
    name = register_kind("test." + "w" * (KIND_WIDTH - 5), "compute", "the longest name")
    tr = Trace()
    tr.record(0, name, 0.0, 1.0)
    assert tr.take()["kind"][0].decode() == name
    # every registered kind fits (the column is not cut short)
    assert all(len(k.encode()) <= EVENT_DTYPE["kind"].itemsize for k in KINDS)


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown event kind 'test.nobody'"):
        category("test.nobody")


def test_kinds_is_read_only() -> None:
    with pytest.raises(TypeError):
        KINDS["x"] = None  # type: ignore[index]


def test_every_kind_the_code_records_is_registered_with_its_category() -> None:
    want = {
        "compute": "compute",
        "update": "compute",
        "merge": "compute",
        "encode": "codec",
        "decode": "codec",
        "codec_compile": "bookkeeping",
        "allreduce": "communication",
        "push": "communication",
        "drain": "communication",
        "wait": "wait",
        "iallreduce": "in_flight",
        "gossip": "in_flight",
        "compressed_allreduce": "in_flight",
        "compressed_gossip": "in_flight",
        "send": "in_flight",
        "recv": "in_flight",
        "eval": "bookkeeping",
        "checkpoint": "bookkeeping",
    }
    assert {k: category(k) for k in want} == want
    assert "callreduce" not in KINDS and "cgossip" not in KINDS  # the cut names are gone
    assert {"eval", "checkpoint"} <= kinds_in("bookkeeping")
    assert kinds_in("bookkeeping", kinds={"a": "bookkeeping", "b": "compute"}) == {"a"}
    with pytest.raises(ValueError, match="unknown category"):
        kinds_in("comm")


def test_table_is_the_registry() -> None:
    t = table()
    assert t.dtype.names == ("name", "category", "doc") and t.dtype["name"].itemsize == KIND_WIDTH
    got = {bytes(r["name"]).decode(): bytes(r["category"]).decode() for r in t}
    assert got == {k.name: k.category for k in KINDS.values()}
    assert set(got.values()) <= set(CATEGORIES)


def test_docs_list_every_kind_the_package_registers() -> None:
    import mpiml.algorithms.pipeline_stage  # noqa: F401 - registers the pipeline kinds (imported lazily by jobs)
    import mpiml.protocols.channel  # noqa: F401

    text = (ROOT / "docs" / "run-file.md").read_text()
    undocumented = [k for k in KINDS if not k.startswith("test.") and f"| `{k}` |" not in text]
    assert not undocumented, f"docs/run-file.md has no row for {undocumented}"


# ---- the trace


def test_record_refuses_an_unregistered_kind_even_with_events_off() -> None:
    for enabled in (True, False):
        tr = Trace(enabled=enabled)
        with pytest.raises(ValueError, match="unknown event kind 'computee'"):
            tr.record(0, "computee", 0.0, 1.0)
        assert not tr.totals and len(tr.take()) == 0


def test_split_totals_group_by_category() -> None:
    for name, cat in (
        ("test.c", "compute"),
        ("test.m", "communication"),
        ("test.w", "wait"),
        ("test.f", "in_flight"),
        ("test.b", "bookkeeping"),
    ):
        register_kind(name, cat, "a test kind")
    tr = Trace()
    for i, (name, secs) in enumerate((("test.c", 1.0), ("test.m", 2.0), ("test.w", 4.0), ("test.f", 8.0))):
        tr.record(i, name, 10.0, 10.0 + secs)
    tr.record(0, "test.b", 0.0, 16.0)  # bookkeeping: left out
    tr.record(0, "update", 0.0, 32.0)  # a core kind, compute
    tr.message(0, "send", 0.0, 64.0, 8, 1, 0)  # inside a span that counts already: no time
    assert tr.split_totals() == {"compute": 33.0, "comm": 2.0, "wait": 4.0, "in_flight": 8.0}
    rows = tr.take()
    send = rows["kind"] == b"send"
    assert list(rows["msg"][send]) == [0] and set(rows["msg"][~send]) == {-1} and rows["peer"][send][0] == 1
    assert rows.dtype == EVENT_DTYPE and len(rows) == 7


def test_protocol_messages_count_per_peer() -> None:
    from mpiml.protocols.base import Messages

    tr = Trace()
    m = Messages(tr, 3)
    for step in range(2):
        m.send(step, 1, 0.0, 1.0, 10)
        m.send(step, 2, 0.0, 1.0, 10)
        m.recv(step, 2, 0.0, 1.0, 10)
    rows = tr.take()
    got = [
        (k.decode(), int(p), int(i)) for k, p, i in zip(rows["kind"], rows["peer"], rows["msg"], strict=True)
    ]
    assert sorted(got) == sorted(
        [("send", 1, 0), ("send", 2, 0), ("recv", 2, 0), ("send", 1, 1), ("send", 2, 1), ("recv", 2, 1)]
    )
    assert list(m.sent) == [0, 2, 2] and list(m.received) == [0, 0, 2] and not tr.totals


# ---- the run file


def _write_run(tmp: Path, layout: str = "", ranks: int = 2) -> Path:
    run = RunFile(
        tmp, ranks, {"config": json.dumps({"run": {"steps": 1}}), "algorithm": "sgd"}, None, layout=layout
    )
    for r in range(ranks):
        rf = RankFile(tmp, r, 0.0, None)
        tr = Trace()
        tr.record(0, "compute", 0.0, 1.0)
        tr.message(0, "send", 1.0, 2.0, 8, 1 - r, 0)
        rf.append_events(tr.take())
        rf.close()
    run.metric("loss", 1, 2.0, 0.5)
    run.close()
    return tmp / "run.h5"


def test_schema_2_holds_the_layout_the_kinds_and_message_ids(tmp_path: Path) -> None:
    layout = json.dumps({"roles": [{"kind": "replica"}, {"kind": "replica"}]})
    path = _write_run(tmp_path, layout)
    with h5py.File(path, "r") as f:
        assert f.attrs["schema"] == SCHEMA == "mpiml-run/2" and f.attrs["layout"] == layout
        kinds = f["kinds"][()]
        assert f["ranks/0/events"].dtype == EVENT_DTYPE
    assert kinds.dtype.names == ("name", "category", "doc")
    assert all(kinds.dtype[n].kind == "S" for n in kinds.dtype.names)  # fixed-width byte strings
    run = load_run(path)
    assert run.layout == json.loads(layout) and run.schema_version == 2
    assert run.kinds == {k.name: k.category for k in KINDS.values()}
    ev = run.events[1]
    assert (
        list(ev["kind"]) == ["compute", "send"] and list(ev["msg"]) == [-1, 0] and list(ev["peer"]) == [-1, 0]
    )
    assert not run.missing_ranks and not run.unreadable_ranks


def test_no_layout_reads_as_none_and_bad_layout_is_refused(tmp_path: Path) -> None:
    assert load_run(_write_run(tmp_path)).layout is None
    with pytest.raises(ValueError, match="layout must be JSON"):
        RunFile(tmp_path / "x", 1, {}, None, layout="{roles")


def test_kinds_registered_after_creation_reach_the_table_at_the_next_flush(tmp_path: Path) -> None:
    run = RunFile(tmp_path, 1, {}, None)
    register_kind("test.late", "compute", "registered after the run file was made")
    run.flush()
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert b"test.late" in set(f["kinds"]["name"])


V1_EVENT_DTYPE = np.dtype(
    [
        ("step", "<i8"),
        ("kind", "S16"),
        ("t_start", "<f8"),
        ("t_end", "<f8"),
        ("nbytes", "<i8"),
        ("peer", "<i4"),
    ]
)


def _write_v1_run(tmp: Path) -> Path:
    """A schema-1 run as version 1 wrote it: rank files behind external links, no
    /kinds, no layout, events with a 16-byte kind and no msg column."""
    (tmp / "ranks").mkdir(parents=True)
    rows = {
        0: [
            (0, b"compute", 0.0, 1.0, 0, -1),
            (0, b"callreduce", 1.0, 2.0, 100, -1),
            (0, b"wait", 2.0, 2.5, 0, -1),
        ],
        1: [(0, b"compute", 0.0, 1.0, 0, -1), (0, b"cgossip", 1.0, 2.0, 216, -1)],
    }
    for r, ev in rows.items():
        with h5py.File(tmp / rank_file_name(r), "w") as f:
            f.attrs.update(rank=r, host="h", clock_offset=0.0)
            f.create_dataset(
                "events", data=np.array(ev, dtype=V1_EVENT_DTYPE), maxshape=(None,), chunks=(1024,)
            )
    with h5py.File(tmp / "run.h5", "w") as f:
        f.attrs.update(schema="mpiml-run/1", config=json.dumps({"run": {"steps": 1}}), world_size=2)
        f.attrs["algorithm"] = "qpr_sgd"
        f.create_group("metrics").create_dataset(
            "loss", data=np.array([(1, 2.0, 0.5)], dtype=[("step", "<i8"), ("time", "<f8"), ("value", "<f8")])
        )
        ranks = f.create_group("ranks")
        for r in rows:
            ranks[str(r)] = h5py.ExternalLink(rank_file_name(r), "/")
    return tmp / "run.h5"


def test_a_schema_1_file_still_reads(tmp_path: Path) -> None:
    run = load_run(_write_v1_run(tmp_path))
    assert run.schema_version == 1 and run.layout is None and run.world_size == 2
    ev = run.events[0]
    assert ev.dtype.names == EVENT_DTYPE.names and list(ev["msg"]) == [-1, -1, -1]
    assert list(ev["kind"]) == ["compute", "callreduce", "wait"] and list(run.events[1]["nbytes"]) == [0, 216]
    # no /kinds: schema 1's own kinds (short names included) and the registry's
    assert run.kinds["callreduce"] == run.kinds["cgossip"] == "in_flight" and run.kinds["wait"] == "wait"
    assert run.kinds["send"] == "in_flight" and list(run.metric("loss")[1]) == [0.5]


def test_resuming_a_schema_1_run_upgrades_its_tables(tmp_path: Path) -> None:
    _write_v1_run(tmp_path)
    RunFile(tmp_path, 2, {}, resume_step=1).close()
    for r in range(2):
        RankFile(tmp_path, r, 0.0, resume_step=1).close()
    with h5py.File(tmp_path / "run.h5", "r") as f:
        assert f.attrs["schema"] == SCHEMA and "kinds" in f and f["ranks/0/events"].dtype == EVENT_DTYPE
    run = load_run(tmp_path)
    assert list(run.events[0]["kind"]) == ["compute", "callreduce", "wait"] and set(run.events[0]["msg"]) == {
        -1
    }
    # the old kinds keep their category in the rewritten /kinds (their events keep their names)
    assert run.kinds["callreduce"] == run.kinds["cgossip"] == "in_flight" and run.kinds["send"] == "in_flight"
    RunFile(tmp_path, 2, {}, resume_step=1).close()  # a second segment keeps them too
    assert load_run(tmp_path).kinds["callreduce"] == "in_flight"


def test_a_missing_rank_file_is_missing_and_a_damaged_one_says_why(tmp_path: Path) -> None:
    path = _write_run(tmp_path, ranks=3)
    (tmp_path / rank_file_name(1)).unlink()
    (tmp_path / rank_file_name(2)).write_bytes(b"not an HDF5 file at all" * 100)
    with pytest.warns(UserWarning) as seen:
        run = load_run(path)
    assert sorted(run.events) == [0] and run.missing_ranks == [1]
    assert list(run.unreadable_ranks) == [2] and rank_file_name(2) in run.unreadable_ranks[2]
    err = run.unreadable_ranks[2]
    assert "file signature not found" in err, err  # h5py's own words, not "missing"
    text = " ".join(str(w.message) for w in seen)
    assert "ranks [1] (their files are missing)" in text and "rank 2: its file could not be read" in text
