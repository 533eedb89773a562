"""Timeline export of a run file: ``mpiml trace export RUN --format chrome|perfetto|otf2``.

- :mod:`.window`: the window (``--ranks``, ``--steps``, ``--time``), each rank's events in
  it (streamed in chunks) and the first pass that pairs messages;
- :mod:`.tracks`: which track of its rank an event goes on (activity, lane);
- :mod:`.chrome`, :mod:`.perfetto`, :mod:`.otf2`: the three writers;
- :mod:`.cli`: the command.

Every writer streams rank by rank, one chunk of events at a time: memory is O(chunk)
plus the keys of the window's messages (for flow arrows), never the whole run.
"""

from __future__ import annotations

from .cli import FORMATS, export, main
from .window import ExportError, Window, parse_range, parse_ranks

__all__ = ["FORMATS", "ExportError", "Window", "export", "main", "parse_range", "parse_ranks"]
