"""The memory a job needs per rank, estimated before allocation: a job that cannot fit is
one line naming the key and the amounts, not a MemoryError once training started."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiml.budget import (
    DIGITS,
    DataShape,
    check_memory,
    data_shape,
    estimate,
    model_params,
    node_memory,
    ranks_on_node,
)
from mpiml.config import load_config
from mpiml.errors import ConfigError
from mpiml.models import build_model
from mpiml.testing import run_ranks

GiB = 2**30


@pytest.mark.parametrize(
    "sets",
    [
        [],
        ["model.hidden=[128, 64, 7]"],
        ["model.name=softmax"],
        ["model.name=timed", "model.params=12345"],
        ["data.name=synthetic", "model.name=linear", "data.features=77"],
    ],
)
def test_parameter_count_is_the_models(sets: list[str]) -> None:
    cfg = load_config(None, sets)
    shape = data_shape(cfg)
    m = cfg.model
    model = build_model(
        m.name,
        shape.features,
        shape.classes,
        m.hidden,
        m.activation,
        m.dtype,
        m.params,
        m.compute_ms,
        m.compute,
    )
    assert model_params(cfg, shape) == model.size


def test_a_hidden_width_of_1e11_is_refused_naming_the_key_and_the_amounts() -> None:
    cfg = load_config(None, ["model.hidden=[100000000000]"])
    with pytest.raises(ConfigError) as info:
        check_memory(cfg, DIGITS, 4, 23 * GiB, 4)
    text = str(info.value)
    assert text.startswith("model.hidden = [100000000000] needs ~") and "\n" not in text, text
    assert "TiB per rank (mostly parameters, optimizer state and message buffers)" in text, text
    assert text.endswith("; this node has 23 GiB for 4 ranks"), text


def test_the_default_job_fits_and_grows_with_the_model() -> None:
    small = check_memory(load_config(None), DIGITS, 4, 1 * GiB, 4)
    assert small.total < 64 * 2**20, small.parts  # tens of MiB at most
    wide = estimate(load_config(None, ["model.hidden=[4096, 4096]"]), DIGITS, 4)
    assert wide.parts["parameters"][0] > 50 * small.parts["parameters"][0]
    with pytest.raises(ConfigError, match=r"^model.hidden = \[4096, 4096\] needs .*for 1 rank$"):
        check_memory(load_config(None, ["model.hidden=[4096, 4096]"]), DIGITS, 1, wide.total // 2, 1)


@pytest.mark.parametrize(
    ("sets", "shape", "key", "part"),
    [
        (
            ["model.name=timed", "model.params=1099511627776"],
            DIGITS,
            "model.params = 1099511627776",
            "parameters",
        ),
        (
            ["data.name=synthetic", "model.name=linear", "data.samples=1000000000", "data.features=1000"],
            DataShape(10**9, 1000, 0),
            "data.samples = 1000000000 with data.features = 1000",
            "the data set",
        ),
        (
            ["data.batch_size=16000000", "model.hidden=[1024]"],
            DIGITS,
            "data.batch_size = 16000000",
            "activations",
        ),
    ],
)
def test_the_largest_part_names_its_key(sets: list[str], shape: DataShape, key: str, part: str) -> None:
    cfg = load_config(None, sets)
    with pytest.raises(ConfigError, match=f"^{key} needs ~.* per rank \\(mostly {part}"):
        check_memory(cfg, shape, 4, 8 * GiB, 4)


def test_an_hdf5_file_too_large_for_the_node_is_named_before_it_is_read(tmp_path: Path) -> None:
    """/x declared 10^6 x 10^5 float64 (800 GB, nothing written: the file is small)."""
    p = tmp_path / "big.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("x", shape=(10**6, 10**5), dtype="f8", chunks=(1000, 1000))
        f.create_dataset("y", data=np.zeros(10**6, np.int64))
    cfg = load_config(None, ["data.name=hdf5", f"data.path={p}"])
    shape = data_shape(cfg)
    assert shape == DataShape(10**6, 10**5, 2, 8)
    with pytest.raises(
        ConfigError, match=rf"^data.path = '{p}' needs ~.*TiB per rank \(mostly the data set\)"
    ):
        check_memory(cfg, shape, 4, 64 * GiB, 4)


def test_ranks_on_node_from_the_launcher_and_node_memory() -> None:
    assert ranks_on_node(8, {"MPI_LOCALNRANKS": "3"}) == 3
    assert ranks_on_node(4, {"OMPI_COMM_WORLD_LOCAL_SIZE": "16"}) == 4  # never more than the job
    assert 1 <= ranks_on_node(64, {}) <= 64
    assert ranks_on_node(1, {}) == 1
    assert 0 < node_memory() < 2**62


def test_train_refuses_a_model_the_node_cannot_hold_in_one_line(tmp_path: Path) -> None:
    """End to end: ``mpiexec -n 2 mpiml train --set model.hidden=[100000000000]`` fails
    at set-up on every rank with one line (it raised MemoryError before)."""
    res = run_ranks(
        2,
        [
            sys.executable,
            "-m",
            "mpiml.cli",
            "train",
            "--set",
            "model.hidden=[100000000000]",
            "--out",
            "results",
        ],
        120,
        cwd=str(tmp_path),
    )
    assert not res.timed_out
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("mpiml: error: model.hidden = [100000000000] needs ~"), lines
    assert "for 2 ranks" in lines[0] and "MemoryError" not in res.stderr + res.stdout
    assert not (tmp_path / "results" / "default" / "run.h5").exists()
