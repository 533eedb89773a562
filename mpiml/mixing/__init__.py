"""Mixing time (MixML (Lu, Nash & De Sa, arXiv:2005.06706)): measure t_mix of a protocol on real ranks.

- :mod:`~mpiml.mixing.tmix`: t_mix from a consensus-distance curve (Assumption 2, worst start);
- :mod:`~mpiml.mixing.spectral`: gossip's spectral bound n ceil(log(1/2) / log(rho));
- :mod:`~mpiml.mixing.measure`: :func:`measure`, the protocols driven on random states;
- AsyncPS: :mod:`~mpiml.mixing.ps_model` (its matrices, closed forms, a pull schedule's
  t_mix), :mod:`~mpiml.mixing.ps_sim` (an event simulator of the schedule),
  :mod:`~mpiml.mixing.ps_ranks` (the measurement on the parameter server's ranks);
- SDPIPE's groups: :mod:`~mpiml.mixing.sdpipe_model` (W_S, the replay, a group
  schedule's t_mix), :mod:`~mpiml.mixing.sdpipe_ranks` (the measurement on P replicas
  and the scheduler rank), :mod:`~mpiml.mixing.sdpipe_sweep` (beside AllReduce and
  gossip, results/mixing/sdpipe/);
- :mod:`~mpiml.mixing.store`: the table and the HDF5 result file;
- :mod:`~mpiml.mixing.cli`: ``mpiml mixing`` (also ``python -m mpiml.mixing``);
  :mod:`~mpiml.mixing.sweep`: Figure 3 (t_mix against n, one mpiexec per n; drawn
  by :mod:`mpiml.report.plots`).

docs/mixing.md defines the time units per protocol.
"""

from collections.abc import Sequence

from .measure import PROTOCOLS, MixingResult, measure
from .spectral import Estimate, contraction, gossip_estimate, rounds_to_halve
from .store import format_table, read_attrs, result_name, write_result
from .tmix import CurveMix, halving_times, summarize, t_mix_of_curve

__all__ = [
    "PROTOCOLS",
    "CurveMix",
    "Estimate",
    "MixingResult",
    "contraction",
    "format_table",
    "gossip_estimate",
    "halving_times",
    "main",
    "measure",
    "read_attrs",
    "result_name",
    "rounds_to_halve",
    "summarize",
    "t_mix_of_curve",
    "write_result",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``mpiml mixing`` (:func:`mpiml.mixing.cli.main`), imported when called so that
    ``python -m mpiml.mixing.cli`` does not find its module imported already."""
    from .cli import main as cli_main

    return cli_main(argv)
