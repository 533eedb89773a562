"""benchmarks/: output files that are never replaced unless asked, JSON written as it goes,
and verdicts only from a confidence interval (issue #17.4, #17.7). The benchmarks' numbers
are never asserted."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mpiml.testing import python_command, run_ranks

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _bench  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- verdicts


def test_median_interval_needs_six_samples_and_covers_95_percent() -> None:
    assert all(v != v for v in _bench.median_ci([1.0, 2.0, 3.0, 4.0, 5.0])[1:])  # NaN: no 95 % interval
    med, lo, hi = _bench.median_ci([5.0, 1.0, 4.0, 2.0, 3.0, 6.0])
    assert (med, lo, hi) == (3.5, 1.0, 6.0)  # n = 6: [min, max] covers 1 - 2/64 = 96.9 %
    med, lo, hi = _bench.median_ci(list(range(20)))
    assert (lo, hi) == (5.0, 14.0)  # k = 6 for n = 20 (coverage 95.9 %; k = 7 would be 88.5 %)


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ([1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01], "meets"),  # interval above 0.95
        ([0.5, 0.52, 0.51, 0.49, 0.5, 0.53], "MISSES"),  # interval below
        ([0.9, 1.0, 0.92, 1.05, 0.97, 0.93, 0.99], "inconclusive"),  # interval holds 0.95: noise
        ([1.2, 1.3, 1.25], "inconclusive"),  # too few samples, however good the median
    ],
)
def test_verdict_only_when_the_interval_excludes_the_target(values: list[float], word: str) -> None:
    line = _bench.verdict(_bench.median_ci(values), 0.95, True, "x")
    assert _bench.verdict_word(line) == word, line
    assert "CI" in line or "too few samples" in line


# ---------------------------------------------------------------- outputs


def test_results_file_is_claimed_and_rewritten_atomically(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    assert _bench.claim(path) is None and path.exists()  # claimed (created) at once
    res = _bench.Results(path, {"rows": []})
    res.doc["rows"].append({"size": 1})
    res.save()
    assert json.loads(path.read_text()) == {"rows": [{"size": 1}], "complete": False}
    res.finish()
    assert json.loads(path.read_text())["complete"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # no temporary left
    before = _sha(path)
    error = _bench.claim(path)
    assert error is not None and str(path) in error and "--overwrite" in error and _sha(path) == before
    (tmp_path / "c.md").write_text("kept")
    assert "c.md exists" in (_bench.claim(tmp_path / "c.json") or "")  # a companion counts too
    assert _bench.claim(path, overwrite=True) is None


@pytest.mark.slow
def test_gossip_quick_writes_its_out_and_never_replaces_a_file(tmp_path: Path) -> None:
    out = tmp_path / "g.json"
    cmd = [*python_command(str(BENCH / "gossip.py")), "--quick", "--sizes", "4K,16K", "--out", str(out)]
    res = run_ranks(2, cmd, 120, cwd=str(tmp_path))
    assert res.returncode == 0 and not res.timed_out, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and [r["size"] for r in doc["rows"]] == ["4K", "16K"]
    for row in doc["rows"]:
        assert len(row["ratio_ring_p2p"]["ci95"]) == 2 and "target" in row["verdict"]
    assert out.with_suffix(".md").exists()
    before = _sha(out)
    again = run_ranks(2, cmd, 120, cwd=str(tmp_path))
    assert again.returncode != 0 and not again.timed_out
    assert f"{out} (and 1 more) exists: pass --overwrite" in again.stderr and _sha(out) == before


def _driver(cmd: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    """Run a driver script; on timeout kill its whole process group (the mpiexec it started too)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd} ran past {timeout} s\n{out[-2000:]}\n{err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_async_ps_quick_measures_every_run_and_slows_the_straggler(tmp_path: Path) -> None:
    """benchmarks/async_ps.py --quick: every training run measured (rates with their
    interval, time to 0.95 on digits), the straggler really slowed under async_ps and sgd
    (its rank spent time in 'straggler' events), a verdict for async_ps; never replaces."""
    out = tmp_path / "ps.json"
    cmd = [sys.executable, str(BENCH / "async_ps.py"), "--quick", "--out", str(out)]
    res = _driver(cmd, 240, tmp_path)  # a plain process: it launches the ranks itself
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and out.with_suffix(".md").exists()
    rows = {(r["part"], r["label"]): r for r in doc["rows"]}
    assert all("error" not in r for r in rows.values()), [r["error"] for r in rows.values() if "error" in r]
    for r in rows.values():
        assert r["window_rate"]["median"] > 0 and len(r["window_rate"]["ci95"]) == 2
    assert rows[("sizes", "1e4 digits async_ps S=1")]["time_to_acc_s"] is not None
    for label in ("timed async_ps S=1 r=4", "timed sgd r=4"):
        assert rows[("straggler", label)]["seconds_by_kind"]["1"].get("straggler", 0) > 0, label
        assert rows[("straggler", label)]["seconds_by_kind"]["0"].get("straggler", 0) == 0, label
    (v,) = [v for v in doc["verdicts"] if v["algorithm"] == "async_ps S=1"]
    assert v["factor"] == 4 and v["workers"] == 3 and "target" in v["verdict"]
    before = _sha(out)
    again = _driver(cmd, 60, tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr and _sha(out) == before


@pytest.mark.slow
def test_pipeline_quick_measures_every_part_and_never_replaces(tmp_path: Path) -> None:
    """benchmarks/pipeline.py --quick: every run measured, idle fractions beside the
    formula, DSP's throughput and Table 2 verdicts with their interval, the stragglers
    really slept on every stage, the accuracy plot drawn (when matplotlib is here);
    never replaces."""
    out = tmp_path / "pp.json"
    cmd = [sys.executable, str(BENCH / "pipeline.py"), "--quick", "--out", str(out)]
    res = _driver(cmd, 240, tmp_path)  # a plain process: it launches the ranks itself
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and out.with_suffix(".md").exists()
    rows = doc["rows"]
    assert all("error" not in r for r in rows), [r["error"] for r in rows if "error" in r]
    assert {r["part"] for r in rows} == {"throughput", "table2", "accuracy"}
    v = doc["verdicts"]
    assert [(i["label"], i["formula"]) for i in v["idle"]] == [("gpipe K=2", 0.2), ("1f1b K=2", 0.2)]
    assert all(len(i["measured_per_stage"]) == 2 and i["simulator"] == pytest.approx(0.2) for i in v["idle"])
    (speed,) = v["dsp_speed"]
    assert speed["K"] == 2 and speed["schedule_bound"] == 1.5 and "target (>= 1.8)" in speed["verdict"]
    slowed = {t["schedule"]: t for t in v["table2"]}
    assert set(slowed) == {"FR (1f1b)", "DSP(1,1,0;4,2,0)"} and "verdict" not in slowed["FR (1f1b)"]
    assert "target (<= 16.14)" in slowed["DSP(1,1,0;4,2,0)"]["verdict"]
    for t in slowed.values():
        assert t["percent"] == 50 and all(s > 0 for s in t["straggler_s_per_stage"]), t
    acc = [r for r in rows if r["part"] == "accuracy"]
    assert [r["ranks"] for r in acc] == [1, 4, 4] and all(r["final_accuracy"] > 0.3 for r in acc)
    png = tmp_path / "pp_accuracy.png"
    try:
        import matplotlib  # noqa: F401

        assert doc["plot"] == str(png) and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert doc["plot"].startswith("not drawn: matplotlib is missing (pip install -e .[plots])")
    before = _sha(out)
    again = _driver(cmd, 60, tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr and _sha(out) == before


def test_report_quick_measures_the_baseline_beside_each_command_on_a_paired_synthetic_run(
    tmp_path: Path,
) -> None:
    """benchmarks/report.py --quick: a synthetic run written by mpiml's writers (its sends
    and receives pair by msg id, as docs/run-file.md says), the floor, the h5py read and
    a stand-in command measured (time, CPU, peak RSS, ratios to the read); an mpiml
    command either measured without error or skipped with its line; never replaces."""
    import h5py
    import numpy as np

    out, runs = tmp_path / "r.json", tmp_path / "runs"
    stand_in = 'stand-in={python} -c "import sys; print(sys.argv[1])" {run}'
    cmd = [sys.executable, str(BENCH / "report.py"), "--quick", "--out", str(out), "--runs", str(runs)]
    res = _driver([*cmd, "--also", stand_in], 240, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(out.read_text())
    assert doc["complete"] is True and out.with_suffix(".md").exists() and doc["sizes"] == [20_000]
    rows = {r["label"]: r for r in doc["rows"]}
    for label in ("floor", "h5py read", "stand-in"):
        assert (
            rows[label]["wall_s"] > 0
            and rows[label]["peak_rss_mib"] > 0
            and rows[label]["runs"][0]["exit"] == 0
        )
    assert rows["stand-in"]["time_ratio"]["median"] > 0 and rows["stand-in"]["rss_ratio"] > 0
    for label, row in rows.items():
        if "mpiml" in label:  # the commands and their --help floors
            skipped = "skipped" in row and f"{label}: skipped: " in res.stdout
            assert skipped or row["runs"][0]["exit"] == 0, row
    (run,) = runs.iterdir()
    events = {}
    for p in sorted((run / "ranks").glob("rank-*.h5")):
        with h5py.File(p, "r") as f:
            events[int(f.attrs["rank"])] = f["events"][()]
    assert (
        sorted(events) == [0, 1, 2, 3] and sum(map(len, events.values())) == rows["floor"]["events"] > 19_000
    )
    for i, ev in events.items():  # the k-th send i -> j is j's k-th receive from i, same bytes
        assert np.all(np.diff(ev["t_start"]) >= 0)
        for j in (i - 1) % 4, (i + 1) % 4:
            send = ev[(ev["kind"] == b"send") & (ev["peer"] == j)]
            recv = events[j][(events[j]["kind"] == b"recv") & (events[j]["peer"] == i)]
            assert len(send) == len(recv) > 0 and np.array_equal(send["msg"], np.arange(len(send)))
            assert np.array_equal(send["msg"], recv["msg"]) and np.array_equal(send["nbytes"], recv["nbytes"])
            assert np.all(recv["t_end"] >= send["t_start"])
    before = _sha(out)
    again = _driver(cmd, 60, tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr and _sha(out) == before


# ---------------------------------------------------------------- tests/gpu_check.sh

GPU_CHECK = Path(__file__).resolve().parent / "gpu_check.sh"


def _no_gpu() -> bool:
    from mpiml.backend import cupy_available

    return not cupy_available()


@pytest.mark.skipif(not _no_gpu(), reason="a GPU is here: tests/gpu_check.sh runs for real")
def test_gpu_check_without_a_gpu_says_skipped_and_exits_0(tmp_path: Path) -> None:
    import subprocess

    res = subprocess.run(
        ["bash", str(GPU_CHECK), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0 and res.stdout.startswith("no GPU: skipped"), res.stdout + res.stderr
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


@pytest.mark.slow
@pytest.mark.skipif(not _no_gpu(), reason="a GPU is here: tests/gpu_check.sh runs for real")
def test_gpu_check_plumbing_runs_every_step_and_keeps_existing_files(tmp_path: Path) -> None:
    """--plumbing: every step on host arrays (the script's own check, no GPU numbers)."""
    import subprocess

    (tmp_path / "gpu_allreduce.json").write_text("kept")
    res = subprocess.run(
        ["bash", str(GPU_CHECK), "--plumbing", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "gpu_allreduce.json").read_text() == "kept"
    (new,) = tmp_path.glob("gpu_allreduce-*.json")
    doc = json.loads(new.read_text())
    assert doc["complete"] is True and doc["cuda_aware_probe"]["probe"] is True
    assert {"host", "staged", "cuda_aware"} <= set(doc["results"][0])
    (summary,) = tmp_path.glob("gpu_check-*.txt")
    text = summary.read_text()
    assert text.count(": passed in") == 4 and "staged / CUDA-aware time" in text


def test_a_benchmark_rank_that_raises_ends_the_job(tmp_path: Path) -> None:
    """Every benchmark calls _bench.abort_on_error() first (#16.8): one rank's exception
    aborts the job instead of leaving the other rank in a collective."""
    script = tmp_path / "bench.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(BENCH)!r})\nimport _bench\n_bench.abort_on_error()\n"
        "from mpi4py import MPI\n"
        "if MPI.COMM_WORLD.Get_rank() == 1:\n    raise RuntimeError('injected on rank 1')\n"
        "MPI.COMM_WORLD.Barrier()\n"
    )
    res = run_ranks(2, [sys.executable, str(script)], 30, cwd=str(tmp_path))  # plain python: no -m mpi4py
    assert not res.timed_out, "the job hung instead of aborting"
    assert res.returncode != 0 and "[mpiml rank 1]" in res.stderr and "injected on rank 1" in res.stderr
    for name in (
        "allreduce",
        "async_ps",
        "compress",
        "gossip",
        "loop_overhead",
        "overlap",
        "pipeline",
        "quantized",
    ):
        assert "_bench.abort_on_error()" in (BENCH / f"{name}.py").read_text(), name


SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_benchmark_replaces_an_existing_out_without_overwrite(tmp_path: Path, script: str) -> None:
    """Every benchmark takes --out and refuses, before measuring anything, to replace a
    file it did not create (issue #17.4): exit 2, one line, the file unchanged."""
    import subprocess

    if script == "payload_checksum.py":  # --out names a folder of payload_checksum.{json,md}
        target, out, extra = tmp_path / "payload_checksum.json", tmp_path, []
    else:
        target, out, extra = tmp_path / "out.json", tmp_path / "out.json", ["--quick"]
    target.write_text("an earlier result\n")
    res = subprocess.run(
        [sys.executable, str(BENCH / script), *extra, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(tmp_path),
    )
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and "exists" in lines[-1] and "--overwrite" in lines[-1], (
        res.stdout,
        res.stderr,
    )
    assert target.read_text() == "an earlier result\n"
