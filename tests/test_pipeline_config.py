"""Bad ``gpipe`` / ``1f1b`` / ``dsp`` jobs: one line naming the key and what is allowed,
on every rank, before any communication (issue #13, "Bad input").

The pure checks run here without MPI (:func:`mpiml.config.load_config`, the algorithm's
rules, :func:`mpiml.run.setup.job_layout` for a given world size); ``mpiml layout -n N``
(no mpiexec) and a launched ``mpiml train`` on 2 ranks check the command's exit status 2
and its one line. That every rank raises the same ConfigError before it sends anything
is checked on real ranks in tests/test_mpi_pipeline_config.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ps_launched import MPIML, REPO, TIMEOUT  # tests/ps_launched.py

from mpiml.algorithms.base import check_job
from mpiml.config import SCHEMA, load_config
from mpiml.errors import ConfigError
from mpiml.run.setup import job_layout
from mpiml.testing import run_ranks

DEEP = "model.hidden=[8, 8, 8]"  # 4 layers: enough for K = 4


def _dsp(K: int, p: list[int], m: list[int]) -> list[str]:
    """A DSP(p; m) job of K stages on a model deep enough."""
    return [
        "algorithm.name=dsp",
        f"algorithm.stages={K}",
        DEEP,
        f"algorithm.dsp_p={p}",
        f"algorithm.dsp_m={m}",
    ]


def _check(sets: list[str], world_size: int) -> None:
    """Every rule a rank checks before it talks to another (pure)."""
    cfg = load_config(None, sets)
    check_job(cfg)
    job_layout(cfg, world_size)


def _one_line(sets: list[str], world_size: int) -> str:
    with pytest.raises(ConfigError) as exc:
        _check(sets, world_size)
    text = str(exc.value)
    assert "\n" not in text, text
    return text


BAD = [
    pytest.param(
        ["algorithm.name=1f1b", "algorithm.stages=4", DEEP],
        2,
        "algorithm.stages = 4 is more than the 2 ranks of the job",
        id="K>world",
    ),
    pytest.param(
        ["algorithm.name=gpipe", "algorithm.stages=2", "algorithm.pipelines=2", DEEP],
        2,
        "algorithm.pipelines * algorithm.stages = 2 * 2 = 4 but the job runs on 2 ranks",
        id="P*K!=world",
    ),
    pytest.param(
        ["algorithm.name=dsp", "algorithm.stages=2", "algorithm.pipelines=1", DEEP],
        4,
        "algorithm.pipelines * algorithm.stages = 1 * 2 = 2 but the job runs on 4 ranks",
        id="P*K<world",
    ),
    pytest.param(
        ["algorithm.name=1f1b", "algorithm.stages=2", DEEP],
        3,
        "the world size 3 is not a multiple of algorithm.stages = 2",
        id="world%K",
    ),
    pytest.param(
        _dsp(3, [1, 1, 0], [2, 2, 0]),
        3,
        "q_1 = m_0 - p_0 - m_1 = 2 - 1 - 2 = -1 < 0",
        id="dsp-q<0",
    ),
    pytest.param(
        _dsp(3, [1, 1, 1], [4, 2, 0]),
        3,
        "p_{K-1} must be 0: the last stage has no output queue (got p_2 = 1)",
        id="dsp-p_last",
    ),
    pytest.param(
        _dsp(3, [1, 0], [4, 2, 0]),
        3,
        "algorithm.dsp_p = [1, 0] must hold K = algorithm.stages = 3 values",
        id="dsp-p-length",
    ),
    pytest.param(
        _dsp(3, [1, 1, 0], [4, 2, 0, 0]),
        3,
        "algorithm.dsp_m = [4, 2, 0, 0] must hold K = algorithm.stages = 3 values",
        id="dsp-m-length",
    ),
    pytest.param(
        ["algorithm.name=dsp", "algorithm.stages=3", DEEP, "algorithm.dsp_p=[1,1,0]"],
        3,
        "algorithm.dsp_m = [] must hold K = algorithm.stages = 3 values",
        id="dsp-m-missing",
    ),
    pytest.param(
        ["algorithm.name=dsp", "algorithm.stages=2", DEEP, "algorithm.dsp_p=[1,-1]", "algorithm.dsp_m=[2,0]"],
        2,
        "algorithm.dsp_p must be a list of at most 512 integers, each in [0, 1_000_000] (got [1, -1])",
        id="dsp-negative",
    ),
    pytest.param(
        _dsp(3, [1, 1, 0], [4, 2, 1]),
        3,
        "algorithm.dsp_m = [4, 2, 1]: m_{K-1} must be 0: the last stage backwards each batch in the step "
        "it forwards it (got m_2 = 1)",
        id="dsp-m_last",  # Appendix A's relations hold; the last stage's y is its newest batch's
    ),
    pytest.param(
        [
            "algorithm.name=dsp",
            "algorithm.stages=1",
            "model.name=softmax",
            "algorithm.dsp_p=[0]",
            "algorithm.dsp_m=[2]",
        ],
        1,
        "m_{K-1} must be 0",
        id="dsp-K1-stale",
    ),
    pytest.param(
        ["algorithm.name=1f1b", "algorithm.stages=3", "model.hidden=[8]"],
        3,
        "algorithm.stages = 3 is more than the model's 2 layers (model.hidden = [8])",
        id="layers<K",
    ),
    pytest.param(
        ["algorithm.name=dsp", "algorithm.stages=2", "model.name=softmax"],
        2,
        "algorithm.stages = 2 is more than the model's 1 layer",
        id="softmax-K2",
    ),
    pytest.param(
        ["algorithm.name=1f1b", "algorithm.stages=3", DEEP, "algorithm.partition=[2,1]"],
        3,
        "algorithm.partition = [2, 1] must list K-1 = 2 strictly increasing layer indices in 1..3",
        id="partition-order",
    ),
    pytest.param(
        ["algorithm.name=gpipe", "algorithm.stages=3", DEEP, "algorithm.partition=[1]"],
        3,
        "algorithm.partition = [1] must list K-1 = 2 strictly increasing layer indices in 1..3",
        id="partition-length",
    ),
    pytest.param(
        ["algorithm.name=dsp", "algorithm.stages=3", DEEP, "algorithm.partition=[1,4]"],
        3,
        "algorithm.partition = [1, 4] must list K-1 = 2 strictly increasing layer indices in 1..3",
        id="partition-past-the-end",
    ),
    pytest.param(
        ["algorithm.name=1f1b", "algorithm.stages=3", DEEP, "algorithm.partition=[0,2]"],
        3,
        "algorithm.partition must be a list of at most 512 integers, each in [1, 1_000_000] (got [0, 2])",
        id="partition-zero",
    ),
    pytest.param(
        ["algorithm.name=gpipe", "data.batch_size=30", "algorithm.micro_batches=4"],
        2,
        "data.batch_size = 30 is not a multiple of algorithm.micro_batches = 4",
        id="batch%m",
    ),
    pytest.param(
        ["algorithm.name=1f1b", "algorithm.micro_batches=0"],
        2,
        "algorithm.micro_batches must be >= 1 (got 0)",
        id="m=0",
    ),
    pytest.param(
        ["algorithm.name=gpipe", "algorithm.stages=0"],
        2,
        "algorithm.stages must be >= 1 (got 0)",
        id="K=0",
    ),
    pytest.param(
        ["algorithm.name=gpipe", "model.name=linear", "data.name=synthetic"],
        2,
        "algorithm.name = 'gpipe' needs model.name = 'mlp' (or 'softmax', 'timed'); a 'linear' model",
        id="linear",
    ),
    pytest.param(
        ["algorithm.name=dsp", "model.name=timed", "model.params=1"],
        2,
        "model.params = 1 is fewer than algorithm.stages = 2",
        id="timed-params<K",
    ),
]


@pytest.mark.parametrize(("sets", "world", "message"), BAD)
def test_bad_pipeline_job_is_one_line_naming_the_key(sets: list[str], world: int, message: str) -> None:
    text = _one_line(sets, world)
    assert message in text, text


def _codecs() -> list[str]:
    allowed = SCHEMA["compression"]["codec"].allowed
    return [
        c.strip("'")
        for c in allowed.removeprefix("one of ").split(", ")
        if c.strip("'") not in ("auto", "none")
    ]


@pytest.mark.parametrize("algorithm", ["gpipe", "1f1b", "dsp"])
@pytest.mark.parametrize("codec", _codecs())
def test_a_codec_on_stage_messages_is_refused(algorithm: str, codec: str) -> None:
    """Activations and error gradients travel uncompressed: no codec rides on them."""
    text = _one_line([f"algorithm.name={algorithm}", f"compression.codec={codec}"], 2)
    assert text.startswith(f"compression.codec = '{codec}': algorithm.name = '{algorithm}' sends"), text
    assert "set compression.codec = 'none'" in text


@pytest.mark.parametrize(
    ("sets", "world"),
    [
        (["algorithm.name=gpipe"], 2),
        (["algorithm.name=gpipe", "algorithm.stages=1"], 1),
        (["algorithm.name=1f1b", "compression.codec=none"], 4),  # P omitted: 4 / 2
        (["algorithm.name=1f1b", "algorithm.stages=2", "algorithm.pipelines=2"], 4),
        (["algorithm.name=1f1b", "algorithm.stages=4", DEEP, "algorithm.partition=[1,2,3]"], 4),
        (["algorithm.name=gpipe", "data.batch_size=30", "algorithm.micro_batches=3"], 2),
        (["algorithm.name=dsp"], 2),  # DSP(1,0; 2,0)
        (["algorithm.name=dsp", "algorithm.stages=4", DEEP], 4),  # DSP(1,1,1,0; 6,4,2,0)
        (["algorithm.name=dsp", "algorithm.stages=1", "model.name=softmax"], 1),
        (_dsp(3, [1, 1, 0], [4, 2, 0]), 3),
        (_dsp(3, [2, 2, 0], [6, 3, 0]), 3),
        (_dsp(3, [3, 3, 0], [10, 5, 0]), 6),
        (_dsp(4, [2, 2, 2, 0], [9, 6, 3, 0]), 4),
        (_dsp(4, [3, 3, 3, 0], [15, 10, 5, 0]), 4),
        (_dsp(3, [0, 0, 0], [0, 0, 0]), 3),
        (["algorithm.name=dsp", "model.name=timed", "model.params=2"], 2),
    ],
)
def test_good_pipeline_jobs_pass_the_same_checks(sets: list[str], world: int) -> None:
    """Control: the rules refuse the bad values only (the paper's six DSP configurations
    among them)."""
    _check(sets, world)


# ---- the commands: `mpiml layout` (no mpiexec) and a launched `mpiml train` -----------


def _layout(n: int, *sets: str) -> subprocess.CompletedProcess[str]:
    args = [*MPIML, "layout", "-n", str(n)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, cwd=REPO)


def test_layout_shows_p_pipelines_of_k_stages() -> None:
    res = _layout(4, "algorithm.name=1f1b", "algorithm.stages=2")
    assert res.returncode == 0, res.stderr
    assert "rank    2: stage 0 of pipeline 1 (reads x of shard 1)" in res.stdout, res.stdout
    assert "rank    3: stage 1 of pipeline 1 (reads y of shard 1)" in res.stdout, res.stdout


@pytest.mark.parametrize(
    ("n", "sets", "message"),
    [
        (3, ["algorithm.name=dsp"], "the world size 3 is not a multiple of algorithm.stages = 2"),
        (
            3,
            _dsp(3, [1, 1, 0], [2, 2, 0]),
            "q_1 = m_0 - p_0 - m_1 = 2 - 1 - 2 = -1 < 0",
        ),
    ],
)
def test_layout_of_a_bad_job_exits_2_with_one_line(n: int, sets: list[str], message: str) -> None:
    res = _layout(n, *sets)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("mpiml: error: ") and message in lines[0], res.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["algorithm.name=1f1b", "algorithm.stages=4", DEEP],
            "algorithm.stages = 4 is more than the 2 ranks",
        ),
        (
            ["algorithm.name=dsp", "algorithm.stages=2", "algorithm.dsp_p=[1,1]", "algorithm.dsp_m=[2,0]"],
            "p_{K-1} must be 0",
        ),
        (
            ["algorithm.name=gpipe", "compression.codec=qsgd"],
            "compression.codec = 'qsgd': algorithm.name = 'gpipe'",
        ),
    ],
)
def test_launched_bad_job_exits_2_with_one_line(tmp_path: Path, sets: list[str], message: str) -> None:
    args = [*MPIML, "train", "--set", "run.steps=4"]
    for s in sets:
        args += ["--set", s]
    res = run_ranks(2, [*args, "--out", str(tmp_path / "results")], TIMEOUT, cwd=str(tmp_path))
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("mpiml: error: ") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout and not (tmp_path / "results").exists()
