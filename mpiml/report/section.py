"""One section of a run report: a titled table with notes, rendered as text, Markdown or JSON.

A report is a list of :class:`Section` objects per run; each analysis produces the
sections that apply to the run it reads and none otherwise (a run without messages has
no late-sender section, never an empty one). Renderers are generic over sections.

Pure Python; no numpy, no h5py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Cell", "Section"]

Cell = str | int | float | None


@dataclass
class Section:
    """A titled table.

    ``key``: a stable identifier (``"pop"``, ``"comm_matrix"``, ``"staleness"``), the
    section's name in ``--json`` output. ``title``: one line. ``columns``: the table's
    headers (may be empty: a section of notes only). ``rows``: one list of cells per
    row, as long as ``columns``; a cell is str, int, float or None (shown as "-").
    ``notes``: lines shown under the table (definitions with their source, units,
    caveats). ``data``: further JSON-able values (histograms, series) for ``--json``
    and the plots, not printed as text.
    """

    key: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"Section {self.key!r}: row {i} has {len(row)} cells for {len(self.columns)} columns"
                )

    def to_dict(self) -> dict[str, Any]:
        """The section as JSON-able data."""
        return asdict(self)
