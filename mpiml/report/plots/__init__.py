"""Plots of run files and of mpiml's results, with matplotlib (the ``plots`` extra).

- :mod:`~mpiml.report.plots.style`: the palette, sizes, and the one way figures are made
  (an Agg canvas, no display) and saved (:func:`~mpiml.report.plots.style.save`);
- :mod:`~mpiml.report.plots.runs`: :func:`metric_curves`, loss/accuracy against step,
  wall time or bytes sent, for one or several runs;
- :mod:`~mpiml.report.plots.timeline`: :func:`timeline`, a per-rank Gantt chart with
  message arrows;
- :mod:`~mpiml.report.plots.matrix`: :func:`comm_matrix` (heatmap) and :func:`histogram`;
- :mod:`~mpiml.report.plots.lines`: :func:`line_panels`, named series in panels (MixML's
  Figure 3, the benchmarks' curves);
- :mod:`~mpiml.report.plots.report`: :func:`write_plots`, the PNGs of ``mpiml report --plots``;
- :mod:`~mpiml.report.plots.source`: what the plots read from a run.

Every function writes a PNG and returns its Path; each has a ``*_figure`` twin returning
the matplotlib Figure. matplotlib is imported only when a figure is made: without it,
a plot function raises ImportError("... pip install 'mpiml[plots]'"). docs/plots.md shows
the figures.
"""

from __future__ import annotations

from .lines import Panel, Series, line_panels, line_panels_figure
from .matrix import comm_matrix, comm_matrix_figure, histogram, histogram_figure
from .report import write_plots
from .runs import metric_curves, metric_curves_figure
from .timeline import timeline, timeline_figure

__all__ = [
    "Panel",
    "Series",
    "comm_matrix",
    "comm_matrix_figure",
    "histogram",
    "histogram_figure",
    "line_panels",
    "line_panels_figure",
    "metric_curves",
    "metric_curves_figure",
    "timeline",
    "timeline_figure",
    "write_plots",
]
