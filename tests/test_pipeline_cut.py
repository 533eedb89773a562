"""``algorithm.balance = "cost"``: the cut measured on rank 0 (serial here: COMM_SELF)."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from mpiml.algorithms.pipeline_stage import measured_cut
from mpiml.models import MLP


def test_measured_cut_is_a_valid_cut_and_printed(capsys) -> None:  # type: ignore[no-untyped-def]
    model = MLP([64, 16, 16, 16, 16, 10], "relu", "float64")
    for K in (1, 2, 3, 5):
        cut = measured_cut(MPI.COMM_SELF, model, K, 32, np, repeats=2)
        assert len(cut) == K - 1, cut
        assert cut == sorted(set(cut)) and all(1 <= c < model.n_layers for c in cut), cut
    assert "algorithm.partition = " in capsys.readouterr().out


def test_a_dominant_layer_gets_a_stage_of_its_own() -> None:
    """Two layers with ~100x the others' work: the measured cut puts them on different
    stages."""
    model = MLP([64, 4, 4, 1500, 4, 10], "relu", "float64")
    cut = measured_cut(MPI.COMM_SELF, model, 3, 256, np, repeats=3)
    # layer 2 (4 -> 1500) and layer 3 (1500 -> 4) are the heavy ones: a stage starts at 3
    assert len(cut) == 2 and 3 in cut, cut
