"""The DaSGD planner (mpiml.plan): Table II, eq. 3's delay rule, eqs. 4-6, the CLI and
measured step times of a real run."""

from __future__ import annotations

import doctest
import json
import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpiml.plan.model as plan_model
import mpiml.run  # noqa: F401  (the owners register their kinds: replicas, DaSGD, the driver)
from mpiml.io import SCHEMA, load_run
from mpiml.kinds import table, table_dtype
from mpiml.plan import (
    PRESETS,
    allreduce_time,
    delay_for,
    format_plan,
    main,
    measured_step_times,
    parse_bandwidth,
    plan,
)
from mpiml.testing import run_ranks
from mpiml.trace import EVENT_DTYPE

# Table II of the paper, as printed: model -> (parameters, then per system
# t_p, t_c tree, t_c butterfly, delay, tau), TITAN X @ 20 Gbit/s and K80 @ 10 Gbit/s
TABLE_II = {
    "nin": (7_595_176, (119.08, 132.91, 66.45, 2, 3), (129.80, 254.43, 127.21, 2, 3)),
    "vgg16": (138_357_544, (2164.32, 2421.25, 1210.62, 2, 3), (2361.61, 4634.97, 2317.48, 2, 3)),
    "vgg19": (143_667_240, (2684.73, 2514.17, 1257.08, 1, 2), (2932.49, 4812.85, 2406.42, 2, 3)),
    "resnet50": (25_530_472, (526.05, 446.78, 223.39, 1, 2), (575.29, 855.27, 427.63, 2, 3)),
    "resnext50": (167_153_128, (1640.05, 2925.17, 1462.58, 2, 3), (1795.83, 5599.62, 2799.81, 4, 5)),
    "densenet121": (7_905_448, (358.23, 138.34, 69.17, 1, 2), (390.73, 264.83, 132.41, 1, 2)),
    "densenet201": (17_900_106, (538.06, 313.25, 156.62, 1, 2), (587.64, 599.65, 299.82, 2, 3)),
}
ROWS = [(m, s, i) for m in TABLE_II for i, s in enumerate(("titanx", "k80"))]


def _truncated(ms: float) -> float:
    """Table II truncates to 2 decimals (NiN: 132.9156 is printed 132.91, not 132.92)."""
    return math.floor(ms * 100 + 1e-6) / 100


@pytest.mark.parametrize(("model", "system", "col"), ROWS, ids=[f"{m}-{s}" for m, s, _ in ROWS])
def test_table_ii_is_reproduced_exactly(model: str, system: str, col: int) -> None:
    n_p, *cols = TABLE_II[model]
    tp, tree, butterfly, delay, tau = cols[col]
    preset = {k: v for k, v in PRESETS[f"{model}-{system}"].items() if k != "label"}
    assert preset["params"] == n_p and preset["tp"] == pytest.approx(tp / 1e3)
    p_tree = plan(**preset)
    p_bfly = plan(**{**preset, "allreduce": "butterfly"})
    # every t_c of the table, to the last printed digit (all 28 of them)
    assert _truncated(p_tree.t_c * 1e3) == tree
    assert _truncated(p_bfly.t_c * 1e3) == butterfly
    assert abs(p_tree.t_c * 1e3 - tree) < 0.01 and abs(p_bfly.t_c * 1e3 - butterfly) < 0.01
    # the delay and tau columns follow the tree column (butterfly would give 1 for VGG-16)
    assert (p_tree.delay, p_tree.tau) == (delay, tau)


def test_table_ii_tc_is_two_level_tree_not_eq3() -> None:
    """t_c(ResNet-50, 256 workers) = n_p x 4 B x (10 Ethernet + 6 PCIe transfers); eq. 3's
    m n_p / BW gives 326.8 ms and does not match."""
    n_p = 25_530_472
    by_hand = n_p * 4 * 8 * (10 / 20e9 + 6 / 128e9)
    assert by_hand * 1e3 == pytest.approx(446.78326)
    assert allreduce_time("tree", n_p * 4, 256, 20e9, 8, 128e9) == pytest.approx(by_hand)
    assert 256 * n_p / 20e9 * 1e3 == pytest.approx(326.79, abs=0.01)  # eq. 3 as written


def test_fig7_communication_shares() -> None:
    """§V.B.3: at 256 workers minibatch SGD spends 45.9 % communicating, local SGD with
    tau = 4 17.5 %; both come out of the tree t_c of Table II."""
    preset = {k: v for k, v in PRESETS["resnet50-titanx"].items() if k != "label"}
    p = plan(**preset, tau=4)
    assert round(p.comm_share("sgd"), 3) == 0.459
    assert round(p.comm_share("local_sgd"), 3) == 0.175
    assert p.comm_share("dasgd") == 0.0


def test_flat_allreduce_formulas_by_hand() -> None:
    nbytes, m, bw = 4e6, 8, 1e9  # 1M fp32 parameters, 8 workers, 1 Gbit/s: 32e6 bits
    assert allreduce_time("tree", nbytes, m, bw) == pytest.approx(2 * 3 * 32e6 / 1e9)
    assert allreduce_time("butterfly", nbytes, m, bw) == pytest.approx(3 * 32e6 / 1e9)
    assert allreduce_time("ring", nbytes, m, bw) == pytest.approx(2 * 7 / 8 * 32e6 / 1e9)
    assert allreduce_time("tree", nbytes, 1, bw) == 0.0
    assert allreduce_time("tree", nbytes, 5, bw) == pytest.approx(2 * 3 * 32e6 / 1e9)  # ceil(log2 5)
    # two levels with equal bandwidths is the flat allreduce (powers of two)
    assert allreduce_time("tree", nbytes, 64, bw, 8, bw) == pytest.approx(
        allreduce_time("tree", nbytes, 64, bw)
    )


@pytest.mark.parametrize(
    ("tc", "tp", "d"),
    [
        (0.0, 0.1, 1),
        (0.05, 0.1, 1),
        (0.1, 0.1, 2),  # t_c = 1 t_p is not < 1 t_p
        (0.2, 0.1, 3),
        (0.3, 0.1, 4),  # 0.3 / 0.1 = 2.9999999999999996 in floats: still "equal"
        (0.2999, 0.1, 3),
        (446.78, 526.05, 1),
        (5599.62, 1795.83, 4),
        (1e12, 1.0, 10**12 + 1),
        (1e12 + 0.5e4, 1.0, 10**12 + 5001),
    ],
)
def test_delay_is_smallest_d_with_tc_strictly_below_d_tp(tc: float, tp: float, d: int) -> None:
    assert delay_for(tc, tp) == d
    p = plan(workers=2, local_batch=1, tp=tp, tc=tc)
    assert (p.delay, p.tau) == (d, d + 1) and p.hidden and p.step_dasgd == p.t_p


def test_eqs_4_to_6_by_hand() -> None:
    # n_s / B = 12800 / (4 x 32) = 100 steps per epoch; d = 3 (0.25 < 3 x 0.1), tau = 4
    p = plan(workers=4, local_batch=32, samples=12_800, tp=0.1, tc=0.25)
    assert p.steps_per_epoch == 100 and (p.delay, p.tau) == (3, 4)
    assert p.step_sgd == pytest.approx(0.35) and p.epoch("sgd") == pytest.approx(35.0)  # eq. 4
    assert p.step_local_sgd == pytest.approx(0.1625) and p.epoch("local_sgd") == pytest.approx(16.25)  # eq. 5
    assert p.step_dasgd == pytest.approx(0.1) and p.epoch("dasgd") == pytest.approx(10.0)  # eq. 6
    d = p.to_dict()
    assert d["speedup_dasgd"] == pytest.approx(3.5) and d["speedup_local_sgd"] == pytest.approx(0.35 / 0.1625)
    # a delay too small to hide t_c: the rank waits t_c - d t_p = 0.15 s once per tau = 4 steps
    q = plan(workers=4, local_batch=32, samples=12_800, tp=0.1, tc=0.25, delay=1, tau=4)
    assert not q.hidden and q.dasgd_wait == pytest.approx(0.15)
    assert q.step_dasgd == pytest.approx(0.1 + 0.15 / 4) and q.step_local_sgd == pytest.approx(0.1625)
    # delay 0 is local SGD; t_l adds to t_p
    r = plan(workers=4, local_batch=32, tp=0.1, tc=0.25, delay=0, tau=4, t_l=0.02)
    assert r.t_p == pytest.approx(0.12) and r.step_dasgd == pytest.approx(r.step_local_sgd)


def test_tp_from_flops_and_parallel_passes() -> None:
    base = dict(workers=2, local_batch=64, flop_per_sample=2e9, flops=1e12, tc=0.0)
    assert plan(**base).t_p == pytest.approx(64 * 2e9 / 1e12)  # eq. 3
    assert plan(**base, parallel=16).t_p == pytest.approx(64 * 2e9 / 1e12)  # 4 full passes
    assert plan(**base, parallel=48).t_p == pytest.approx(2 * 48 * 2e9 / 1e12)  # a partial pass is whole


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "workers must be an integer >= 1 (got 0)"),
        ({"workers": 2.5}, "workers must be an integer"),
        ({"workers": True}, "workers must be an integer"),
        ({"local_batch": -1}, "local_batch must be an integer >= 1"),
        ({"tp": 0.0}, "tp must be a number > 0 (got 0.0)"),
        ({"tp": float("nan")}, "tp must be a number > 0"),
        ({"tc": -1.0}, "tc must be a number >= 0 (got -1.0)"),
        ({"t_l": -0.1}, "t_l must be a number >= 0"),
        ({"tc": None, "params": 10, "bandwidth": 0.0}, "bandwidth must be a number > 0"),
        ({"tc": None, "params": 0, "bandwidth": 1e9}, "params must be an integer >= 1"),
        ({"bytes_per_param": 0}, "bytes_per_param must be a number > 0"),
        ({"allreduce": "star"}, "allreduce must be one of tree, butterfly, ring (got 'star')"),
        ({"parallel": 64}, "parallel must be <= local_batch (got parallel=64, local_batch=32)"),
        ({"parallel": 0}, "parallel must be an integer >= 1"),
        ({"delay": 2, "tau": 2}, "tau must be > delay, the bounded age d < tau of §IV (got tau=2, delay=2)"),
        ({"delay": -1}, "delay must be an integer >= 0"),
        ({"tp": None}, "t_p needs tp, or flop_per_sample and flops"),
        ({"tp": None, "flops": 1e12}, "t_p needs tp, or flop_per_sample and flops"),
        ({"tc": None}, "t_c needs tc, or params and bandwidth"),
    ],
)
def test_validation_names_the_argument_and_range(kwargs: dict, message: str) -> None:
    args = {"workers": 4, "local_batch": 32, "tp": 0.1, "tc": 0.05, **kwargs}
    with pytest.raises(ValueError) as exc:
        plan(**args)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("10gbit", 10e9),
        ("100mbit", 100e6),
        ("20Gbps", 20e9),
        ("20 Gbit/s", 20e9),
        ("16GB/s", 128e9),
        ("16 GBps", 128e9),
        ("1gbyte/s", 8e9),
        ("1Gibit", 2.0**30),
        ("2e10", 2e10),
        ("1000000", 1e6),
        ("10G", 10e9),
        ("1.5kbps", 1500.0),
    ],
)
def test_parse_bandwidth_units(text: str, bits: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(bits)


@pytest.mark.parametrize("text", ["fast", "10 furlongs", "10gbit/h", "", "-5gbit", "0"])
def test_parse_bandwidth_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bandwidth(text)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_preset_prints_table_ii(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _cli(capsys, "--preset", "resnet50-titanx")
    assert rc == 0 and "526.05 ms" in out and "446.78 ms" in out and "eq. 6" in out
    assert "972.83" in out and "45.9%" in out  # eq. 4's step and Fig. 7's share
    rc, out, _ = _cli(capsys, "--preset", "resnet50-k80", "--allreduce", "butterfly")
    assert rc == 0 and "427.64 ms" in out  # 427.635...: rounded here, truncated in the paper


def test_cli_model_inputs_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--params", "1M", "--flop-per-sample", "2G", "--flops", "1T", "--bandwidth", "1gbit"]
    rc, out, err = _cli(capsys, *args, "--workers", "8", "--local-batch", "64", "--samples", "5120", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["t_p"] == pytest.approx(0.128) and d["t_c"] == pytest.approx(0.192)  # 2 log2(8) x 32 Mbit
    assert (d["delay"], d["tau"], d["steps_per_epoch"]) == (2, 3, 10)
    assert d["epoch_sgd"] == pytest.approx(10 * 0.32) and d["epoch_dasgd"] == pytest.approx(1.28)
    # measured t_p (ms) with the network model for t_c; an explicit delay
    rc, out, _ = _cli(capsys, "--tp", "100", "--params", "1M", "--bandwidth", "1gbit", "--workers", "8",
                      "--local-batch", "64", "--delay", "1", "--tau", "2", "--json")  # fmt: skip
    d = json.loads(out)
    assert rc == 0 and d["t_p"] == pytest.approx(0.1) and d["dasgd_wait"] == pytest.approx(0.092)
    assert d["step_dasgd"] == pytest.approx(0.1 + 0.092 / 2) and not d["hidden"]
    rc, out, _ = _cli(capsys, "--tp", "100", "--tc", "300", "--workers", "2", "--local-batch", "8")
    assert rc == 0 and "delay          4" in out  # 300 = 3 x 100 ms: strict, so d = 4


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tp", "1", "--tc", "1", "--local-batch", "8"], "--workers is required"),
        (["--tp", "1", "--tc", "1", "--workers", "0", "--local-batch", "8"], "argument --workers: must be >= 1"),
        (["--bandwidth", "10 furlongs", "--params", "1"], "argument --bandwidth: not a bandwidth"),
        (["--tp", "1", "--flops", "1T", "--workers", "2", "--local-batch", "8"], "--tp replaces"),
        (["--tp", "1", "--workers", "2", "--local-batch", "8"], "t_c needs --tc MS, or --params and --bandwidth"),
        (["--tp", "-3"], "argument --tp: must be > 0"),
        (["--flops", "1T", "--tc", "1", "--workers", "2", "--local-batch", "8"], "t_p needs --tp MS, or"),
        (["--preset", "nin-k80", "--bytes-per-param", "nan"], "bytes_per_param must be a number > 0"),
        (["--tp", "1", "--tc", "1", "--workers", "2", "--local-batch", "8", "--delay", "3", "--tau", "3"],
         "tau must be > delay"),
        (["--preset", "resnet99-titanx"], "invalid choice"),
    ],
)  # fmt: skip
def test_cli_errors_are_clean(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and out == "" and message in err and "Traceback" not in err
    assert err.startswith("usage: mpiml plan")


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


def _fake_run(
    path: Path,
    events: dict[int, list[tuple]],
    config: dict,
    resumed: list[int] | None = None,
    schema: int = 2,
    kinds: np.ndarray | None = None,
) -> Path:
    """A minimal run file with hand-written events (rank groups inline; rows without
    ``msg``): schema 2 with the registry's ``/kinds`` (or ``kinds``), or schema 1."""
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = SCHEMA if schema == 2 else "mpiml-run/1"
        f.attrs["config"] = json.dumps(config)
        f.attrs["world_size"] = len(events)
        f.attrs["algorithm"] = config["algorithm"]["name"]
        if resumed:
            f.attrs["resumed_at_steps"] = np.array(resumed, dtype=np.int64)
        f.create_group("metrics")
        if schema == 2:
            f.create_dataset("kinds", data=table() if kinds is None else kinds)
        for r, rows in events.items():
            if schema == 2:
                data = np.array([(*row, -1) for row in rows], dtype=EVENT_DTYPE)
            else:
                data = np.array(rows, dtype=V1_EVENT_DTYPE)
            f.create_dataset(f"ranks/{r}/events", data=data)
    return path


def test_measured_step_times_by_hand(tmp_path: Path) -> None:
    # rank 0: steps of 10 ms = compute 4 + update 1 (t_p 5) + wait 1 + allreduce 3 launched at
    # the step's end (overlapping the next step), an eval of 7 ms between steps 1 and 2
    rows = []
    for s in range(4):
        t = 0.010 * s + (0.007 if s >= 2 else 0.0)
        rows += [(s, b"compute", t, t + 0.004, 0, -1), (s, b"update", t + 0.004, t + 0.005, 0, -1),
                 (s, b"wait", t + 0.005, t + 0.006, 0, -1), (s, b"iallreduce", t + 0.006, t + 0.009 + 0.001 * s, 64, -1)]  # fmt: skip
        if s == 1:
            rows.append((s, b"eval", t + 0.010, t + 0.017, 0, -1))
    cfg = {"algorithm": {"name": "dasgd", "tau": 2, "delay": 1}, "data": {"batch_size": 16}}
    m = measured_step_times(_fake_run(tmp_path / "run.h5", {0: rows}, cfg))
    assert m["t_p"] == pytest.approx(0.005) and m["t_c"] == pytest.approx(0.0045)  # median of 3,4,5,6 ms
    assert m["step"] == pytest.approx(0.010) and m["step_median"] == pytest.approx(0.010)  # eval removed
    assert m["wait"] == pytest.approx(0.001) and m["allreduce_nbytes"] == 64
    assert (m["algorithm"], m["ranks"], m["steps"], m["local_batch"], m["tau"], m["delay"]) == (
        "dasgd", 1, 4, 16, 2, 1)  # fmt: skip
    # a resume at step 2 leaves a gap between steps 1 and 2: that interval is not a step
    m = measured_step_times(_fake_run(tmp_path / "resumed.h5", {0: rows}, cfg, resumed=[2]))
    assert m["step"] == pytest.approx(0.010)
    # the same events in a schema-1 file (kind S16, no msg, no /kinds) measure the same
    v1 = _fake_run(tmp_path / "v1.h5", {0: rows}, cfg, schema=1)
    assert measured_step_times(v1) == measured_step_times(tmp_path / "run.h5")
    # what is bookkeeping comes from the run file's own /kinds, not from a list of names:
    # an unknown-to-this-code kind the file calls bookkeeping is left out of the step time
    custom = np.array(
        [*table().tolist(), (b"snapshot", b"bookkeeping", b"a kind this version never registered")],
        dtype=table_dtype(128),
    )
    renamed = [(s, b"snapshot" if k == b"eval" else k, *rest) for s, k, *rest in rows]
    m = measured_step_times(_fake_run(tmp_path / "custom.h5", {0: renamed}, cfg, kinds=custom))
    assert m["step"] == pytest.approx(0.010)
    # the run's own delay and tau drive --check's DaSGD prediction: t_p + max(0, t_c - d t_p)/tau
    p = plan(workers=1, local_batch=16, tp=m["t_p"], tc=m["t_c"], delay=1, tau=2)
    assert p.step_dasgd == pytest.approx(0.005)


@pytest.mark.parametrize("algorithm", ["sgd", "dasgd"])
def test_measured_step_times_of_a_real_run_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str
) -> None:
    sets = ["run.steps=30", "run.name=plan", "checkpoint.every=0", f"algorithm.name={algorithm}"]
    sets += ["algorithm.tau=4", "algorithm.delay=1"] if algorithm == "dasgd" else []
    cmd = [sys.executable, "-m", "mpiml.cli", "train", "--out", str(tmp_path)]
    for kv in sets:
        cmd += ["--set", kv]
    res = run_ranks(2, cmd, 120, cwd=str(tmp_path))
    assert res.returncode == 0 and not res.timed_out, res.stderr[-2000:]
    path = tmp_path / "plan" / "run.h5"
    m = measured_step_times(path)
    assert (m["algorithm"], m["ranks"], m["steps"], m["local_batch"]) == (algorithm, 2, 30, 16)
    # oracle: the same numbers recomputed with plain loops over the events
    run = load_run(path)
    tp, tc, slack, wait, merge = [], [], [], 0.0, 0.0
    for ev in run.events.values():
        per_step: dict[int, float] = {}
        starts: dict[int, float] = {}
        train_time: dict[int, float] = {}
        for e in ev:
            s, kind, dur = int(e["step"]), str(e["kind"]), float(e["t_end"] - e["t_start"])
            if kind in ("compute", "update"):
                per_step[s] = per_step.get(s, 0.0) + dur
            tc += [dur] if kind in ("allreduce", "iallreduce") else []
            wait += dur if kind == "wait" else 0.0
            merge += dur if kind == "merge" else 0.0
            if kind not in ("eval", "checkpoint", "flush"):
                starts[s] = min(starts.get(s, math.inf), float(e["t_start"]))
                train_time[s] = train_time.get(s, 0.0) + dur
        tp += per_step.values()
        # sgd is sequential: each step's interval holds its compute, allreduce and update
        slack += [starts[s + 1] - starts[s] - train_time[s] for s in range(29)]
    assert m["t_p"] == pytest.approx(float(np.median(tp)))
    assert m["t_c"] == pytest.approx(float(np.median(tc))) and m["allreduce_nbytes"] > 0
    assert m["wait"] == pytest.approx(wait / 60) and m["merge"] == pytest.approx(merge / 60)
    assert m["step"] is not None and m["step_median"] is not None
    if algorithm == "sgd":
        assert m["tau"] is None and m["delay"] is None and m["wait"] == 0.0 and m["merge"] == 0.0
        assert min(slack) > -1e-9  # a step lasts at least as long as its events
        predicted = m["t_p"] + m["t_c"]  # eq. 4
    else:
        assert (m["tau"], m["delay"]) == (4, 1) and m["merge"] > 0.0 and len(tc) == 2 * 7
        t_p = m["t_p"] + m["merge"]  # the merge, once per tau steps, enters as t_l
        predicted = t_p + max(0.0, m["t_c"] - t_p) / 4

    rc, out, err = _cli(capsys, "--check", str(path))
    assert rc == 0, err
    assert f"step time ({algorithm}): predicted" in out and "measured mean" in out
    assert ("wait per step (dasgd)" in out) == (algorithm == "dasgd")
    rc, out, err = _cli(capsys, "--check", str(path), "--json")
    d = json.loads(out)
    assert rc == 0 and d["predicted_step"] == pytest.approx(predicted)
    assert d["measured"]["step"] == pytest.approx(m["step"]) and d["plan"]["workers"] == 2
    rc, out, err = _cli(capsys, "--check", str(tmp_path / "nope.h5"))
    assert rc == 2 and "--check" in err


def test_format_and_doctest() -> None:
    p = plan(workers=4, local_batch=32, tp=0.1, tc=0.25, delay=1, tau=4)
    text = format_plan(p)
    assert "DaSGD waits 150.00 ms every 4 steps" in text and "t_p + (t_c - d t_p)/tau" in text
    doctests = doctest.testmod(plan_model)  # plan()'s example lives in mpiml.plan.model
    assert doctests.attempted > 0 and doctests.failed == 0
