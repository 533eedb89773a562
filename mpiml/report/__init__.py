"""Post-processing of run files: ``mpiml report``, timeline export, plots.

- :mod:`~mpiml.report.section`: :class:`Section`, one titled table of a report.
"""

from __future__ import annotations

from .section import Cell, Section

__all__ = ["Cell", "Section"]
