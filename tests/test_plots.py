"""mpiml.report.plots: every figure is a PNG of the size asked for, drawn from a real run
(dpsgd on a ring of 3 ranks) and from synthetic data; the timeline's arrows are the
run's paired messages; write_plots writes the files that apply; no matplotlib, one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.text import Annotation

from mpiml.io import load_run
from mpiml.io.runfile import RankFile, RunFile
from mpiml.kinds import register_kind
from mpiml.report import Section, plots
from mpiml.testing import run_ranks
from mpiml.trace import EVENT_DTYPE

# the kinds the synthetic runs record, as their owners register them (a no-op when imported)
for _name, _cat in (
    ("compute", "compute"),
    ("allreduce", "communication"),
    ("send", "in_flight"),
    ("recv", "in_flight"),
):
    register_kind(_name, _cat, f"{_name} (as registered by its owner)")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("plots")
    args = ["--set", "run.steps=30", "--set", "run.eval_every=5", "--set", "algorithm.name=dpsgd"]
    res = run_ranks(
        3, [sys.executable, "-m", "mpiml.cli", "train", *args, "--out", str(tmp)], 120, cwd=str(tmp)
    )
    assert res.returncode == 0 and not res.timed_out, res.stderr[-3000:]
    return load_run(tmp / "default")


def synthetic(folder: Path, *, messages: bool, metrics: bool = True) -> Any:
    """A run file written by mpiml's writers: two ranks, three steps (step s from s/10 s)
    of compute (50 ms) then an allreduce, or then one send/recv pair each way (message id
    s); loss and accuracy at steps 5 and 10, bytes_sent (0, 0) and (10, 1000)."""
    name = folder.name
    folder.mkdir(parents=True)
    run = RunFile(folder, 2, {"config": json.dumps({"run": {"name": name, "steps": 3}})}, None)
    for r in (0, 1):
        rows = []
        for s in range(3):
            t = s / 10
            rows.append((s, b"compute", t, t + 0.05, 0, -1, -1))
            if messages:
                rows.append((s, b"send", t + 0.05, t + 0.07, 100, 1 - r, s))
                rows.append((s, b"recv", t + 0.05, t + 0.09, 100, 1 - r, s))
            else:
                rows.append((s, b"allreduce", t + 0.05, t + 0.09, 100, -1, -1))
        f = RankFile(folder, r, 0.0, None)
        f.append_events(np.array(rows, dtype=EVENT_DTYPE))
        f.close()
    if metrics:
        for step, time, loss, acc in ((5, 0.5, 2.0, 0.5), (10, 1.0, 1.0, 0.8)):
            run.metric("loss", step, time, loss)
            run.metric("accuracy", step, time, acc)
        run.metric("bytes_sent", 0, 0.0, 0.0)
        run.metric("bytes_sent", 10, 1.0, 1000.0)
    run.close()
    return load_run(folder)


def arrows(fig: Any) -> list[Annotation]:
    return [t for t in fig.axes[0].texts if isinstance(t, Annotation)]


# ---------------------------------------------------------------- metric curves


@pytest.mark.parametrize("x", ["step", "time", "bytes"])
def test_metric_curves_of_a_real_run_is_a_png_of_the_size_asked(run: Any, tmp_path: Path, x: str) -> None:
    path = plots.metric_curves(run, tmp_path / f"m-{x}.png", x=x)
    assert path == tmp_path / f"m-{x}.png" and png_size(path) == (800, 450)


def test_metric_curves_against_bytes_interpolate_bytes_sent_at_the_metric_steps(tmp_path: Path) -> None:
    a, b = synthetic(tmp_path / "a", messages=True), synthetic(tmp_path / "b", messages=False)
    fig = plots.metric_curves_figure([a, b], x="bytes", metrics=("loss", "accuracy", "nothing"))
    assert len(fig.axes) == 2  # a metric no run has gets no panel
    lines = fig.axes[0].get_lines()
    assert [ln.get_label() for ln in lines] == ["a", "b"]
    assert list(lines[0].get_xdata()) == [500.0, 1000.0]  # bytes_sent (0, 0) .. (10, 1000) at steps 5, 10
    assert list(lines[0].get_ydata()) == [2.0, 1.0]
    with pytest.raises(ValueError, match="x must be one of"):
        plots.metric_curves_figure(a, x="epochs")


# ---------------------------------------------------------------- timeline


def test_timeline_draws_one_arrow_per_paired_message_of_the_window(run: Any, tmp_path: Path) -> None:
    import pandas as pd

    fig = plots.timeline_figure(run, steps=(1, 4))
    # the oracle: docs/run-file.md's pairing of the raw events, in the same steps
    ev = pd.concat([pd.DataFrame(run.events[r]).assign(rank=r) for r in (0, 1, 2)])
    ev = ev[(ev.step >= 1) & (ev.step < 4)]
    sends = ev[ev.kind == "send"].rename(columns={"rank": "src", "peer": "dst"})
    recvs = ev[ev.kind == "recv"].rename(columns={"rank": "dst", "peer": "src"})
    flows = sends.merge(recvs, on=["src", "dst", "msg"], suffixes=("_send", "_recv"))
    drawn = arrows(fig)
    assert len(flows) == 18 and len(drawn) == len(flows)  # 3 steps x 3 ranks x 2 ring neighbours
    starts = sorted(round(a.xyann[0], 9) for a in drawn)
    assert starts == sorted(round(t, 9) for t in flows.t_start_send)
    ends = sorted(round(a.xy[0], 9) for a in drawn)
    assert ends == sorted(round(t, 9) for t in flows.t_end_recv)
    path = plots.timeline(run, tmp_path / "t.png", steps=(1, 4), size=(7.0, 3.0))
    assert png_size(path) == (700, 300)
    assert len(arrows(plots.timeline_figure(run, ranks=[0, 1], steps=(1, 4)))) == 6  # 0 <-> 1 only


def test_a_timeline_caps_its_arrows_and_says_so(run: Any) -> None:
    fig = plots.timeline_figure(run, steps=(1, 4), max_arrows=5)
    assert len(arrows(fig)) == 5 and "first 5 of 18 messages drawn" in fig.axes[0].get_title()


def test_a_run_without_messages_draws_no_arrows(tmp_path: Path) -> None:
    quiet = synthetic(tmp_path / "c", messages=False)
    fig = plots.timeline_figure(quiet, steps=(0, 3))
    assert arrows(fig) == [] and len(fig.axes[0].collections) > 0
    fig = plots.timeline_figure(synthetic(tmp_path / "d", messages=True), steps=(0, 3))
    assert len(arrows(fig)) == 6
    fig = plots.timeline_figure(synthetic(tmp_path / "e", messages=True), time=(0.0, 0.1))
    assert len(arrows(fig)) == 2  # step 0's pair only
    assert png_size(plots.timeline(quiet, tmp_path / "c.png")) == (800, 300)
    both = plots.timeline_figure(synthetic(tmp_path / "f", messages=True), steps=(1, 3), time=(0.0, 0.2))
    assert len(arrows(both)) == 2  # the events in both windows: step 1's pair only


# ---------------------------------------------------------------- matrix and histogram


def test_comm_matrix_is_a_png_with_its_cells_annotated(tmp_path: Path) -> None:
    m = [[0, 2e6, 5], [1e3, 0, 0], [7, 8, 0]]
    fig = plots.comm_matrix_figure(m, labels=["a", "b", "c"])
    assert len(fig.axes[0].texts) == 9 and fig.axes[0].texts[1].get_text() == "2 MB"
    assert len(plots.comm_matrix_figure(np.ones((13, 13))).axes[0].texts) == 0  # too many to read
    assert png_size(plots.comm_matrix(m, tmp_path / "c.png", labels=["a", "b", "c"], size=(5.0, 4.0))) == (
        500,
        400,
    )
    with pytest.raises(ValueError, match="square"):
        plots.comm_matrix([[1, 2]], tmp_path / "bad.png")


def test_histogram_of_counts_and_of_values(tmp_path: Path) -> None:
    fig = plots.histogram_figure({"values": [0, 1, 3], "counts": [5, 7, 1]}, title="s", xlabel="staleness")
    assert [p.get_height() for p in fig.axes[0].patches] == [5, 7, 1]
    fig = plots.histogram_figure([0, 1, 1, 2, 2, 2, 9])  # integers: one bin each
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[:3] == [1, 2, 3] and sum(heights) == 7 and len(heights) == 10
    assert png_size(plots.histogram([1.5, 2.5], tmp_path / "h.png", size=(4.0, 3.0))) == (400, 300)


def test_line_panels_break_at_non_finite_points_and_dash_bounds(tmp_path: Path) -> None:
    panel = plots.Panel(
        [plots.Series([2, 3, 4], [4, np.inf, 8], "a"), plots.Series([2, 4], [2, 16], "bound", dashed=True)],
        title="t_mix",
        hlines=[(5.0, "target")],
    )
    fig = plots.line_panels_figure([panel])
    styles = [ln.get_linestyle() for ln in fig.axes[0].get_lines()]
    assert styles == ["-", "--", ":"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "bound", "target"]
    assert png_size(plots.line_panels([panel, panel], tmp_path / "l.png", ncols=2, size=(6.0, 2.0))) == (
        600,
        200,
    )


# ---------------------------------------------------------------- write_plots, no matplotlib


METRICS = ["metrics.png", "metrics-time.png", "metrics-bytes.png"]  # against step, time, bytes


def test_write_plots_writes_the_files_that_apply(run: Any, tmp_path: Path) -> None:
    sections = [
        Section("comm_matrix", "Bytes", data={"matrix": [[0, 10], [20, 0]], "ranks": [0, 1]}),
        Section("staleness", "Staleness", data={"histogram": {"values": [0, 1], "counts": [3, 4]}}),
    ]
    out = plots.write_plots([run], [sections], tmp_path / "all")
    assert [p.name for p in out] == [*METRICS, "timeline.png", "comm_matrix.png", "staleness.png"]
    assert all(png_size(p) for p in out)
    # the report's own form of the matrix: {"src": {"dst": bytes}}
    nested = Section("comm_matrix", "Bytes", data={"matrix": {"0": {"1": 10, "2": 5}, "1": {"0": 20}}})
    figs = plots.write_plots([run], [[nested]], tmp_path / "nested")
    assert [p.name for p in figs] == [*METRICS, "timeline.png", "comm_matrix.png"]
    out = plots.write_plots([run], [[]], tmp_path / "some")
    some = sorted(p.name for p in (tmp_path / "some").iterdir())
    assert some == ["metrics-bytes.png", "metrics-time.png", "metrics.png", "timeline.png"]
    (tmp_path / "bare").mkdir()
    bare = RunFile(tmp_path / "bare", 2, {"config": "{}"}, None)  # no metrics, no rank file
    bare.close()
    with pytest.warns(UserWarning, match="their files are missing"):
        bare_run = load_run(tmp_path / "bare")
    assert plots.write_plots([bare_run], [[]], tmp_path / "none") == []
    two = plots.write_plots([run, synthetic(tmp_path / "b", messages=True)], [[], []], tmp_path / "two")
    assert [p.name for p in two] == [*METRICS, "timeline-1-default.png", "timeline-2-b.png"]


def test_without_matplotlib_a_plot_says_which_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(
        ImportError, match=r"^mpiml.report.plots needs matplotlib: pip install 'mpiml\[plots\]'$"
    ):
        plots.histogram([1, 2], tmp_path / "h.png")
    assert not (tmp_path / "h.png").exists()


# ---------------------------------------------------------------- review fixes (issue 15)


def test_each_arrow_runs_from_its_send_start_on_src_to_its_recv_end_on_dst(tmp_path: Path) -> None:
    # three ranks, messages 0 -> 1 and 1 -> 2 only; a receive starts after its send starts
    # and ends well after it, so every arrow end differs from the other candidates
    folder = tmp_path / "arrows"
    folder.mkdir()
    rf = RunFile(folder, 3, {"config": json.dumps({"run": {"name": "arrows", "steps": 2}})}, None)
    want = set()
    rows: dict[int, list[tuple]] = {0: [], 1: [], 2: []}
    for s in range(2):
        t = float(s)
        for k, (src, dst) in enumerate(((0, 1), (1, 2))):
            msg = 2 * s + k
            send = (t + 0.10 + 0.01 * k, t + 0.15 + 0.01 * k)
            recv = (t + 0.20 + 0.01 * k, t + 0.40 + 0.01 * k)
            rows[src].append((s, b"send", *send, 8, dst, msg))
            rows[dst].append((s, b"recv", *recv, 8, src, msg))
            want.add(((round(send[0], 9), src), (round(recv[1], 9), dst)))
    for r, ev in rows.items():
        f = RankFile(folder, r, 0.0, None)
        f.append_events(np.array(sorted(ev, key=lambda e: e[2]), dtype=EVENT_DTYPE))
        f.close()
    rf.close()
    fig = plots.timeline_figure(load_run(folder), steps=(0, 2))
    got = {((round(a.xyann[0], 9), a.xyann[1]), (round(a.xy[0], 9), a.xy[1])) for a in arrows(fig)}
    assert len(arrows(fig)) == 4 and got == want  # row i is rank i


def test_write_plots_draws_the_timeline_of_the_reports_window(tmp_path: Path) -> None:
    run = synthetic(tmp_path / "w", messages=True)
    (window,) = [
        p for p in plots.write_plots([run], [[]], tmp_path / "a", steps=(2, 3)) if "timeline" in p.name
    ]
    default = plots.timeline(run, tmp_path / "default.png")
    asked = plots.timeline(run, tmp_path / "asked.png", steps=(2, 3))
    assert window.read_bytes() == asked.read_bytes() != default.read_bytes()
    (window,) = [
        p for p in plots.write_plots([run], [[]], tmp_path / "b", time=(0.1, 0.2)) if "timeline" in p.name
    ]
    assert window.read_bytes() == plots.timeline(run, tmp_path / "t.png", time=(0.1, 0.2)).read_bytes()
