"""Renderers of reports: aligned text (the default), Markdown, JSON.

Generic over :class:`~mpiml.report.section.Section`. Several runs: the ``summary``
sections become one table with a column per run; the other sections follow run by run.
A run's ``missing`` lines (ranks not read) are printed right under its name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .section import Cell, Section

__all__ = ["render_json", "render_markdown", "render_text"]


def cell(v: Cell) -> str:
    """A cell as text: None as "-", floats to 4 significant digits (NaN as "-")."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v == 0:
            return "0"
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.4e}"
    return str(v)


def _is_number(v: Cell) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _merged_summary(reports: Sequence[Any]) -> Section:
    fields: list[str] = []
    values: list[dict[str, Cell]] = []
    for rep in reports:
        got: dict[str, Cell] = {}
        for s in rep.sections:
            if s.key == "summary":
                for row in s.rows:
                    got[str(row[0])] = row[1]
                    if str(row[0]) not in fields:
                        fields.append(str(row[0]))
        values.append(got)
    notes: list[str] = next((s.notes for s in reports[0].sections if s.key == "summary"), [])
    return Section(
        "summary",
        "Runs",
        ["", *[f"run {i + 1}" for i in range(len(reports))]],
        [[f, *[v.get(f) for v in values]] for f in fields],
        [*[f"run {i + 1}: {rep.path}" for i, rep in enumerate(reports)], *notes],
    )


def _text_table(s: Section) -> list[str]:
    lines = [s.title, "=" * len(s.title)]
    if s.columns:
        cells = [[cell(v) for v in row] for row in s.rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(s.columns)]
        right = [any(_is_number(row[i]) for row in s.rows) for i in range(len(s.columns))]

        def line(vals: list[str]) -> str:
            return "  ".join(
                v.rjust(w) if r else v.ljust(w) for v, w, r in zip(vals, widths, right, strict=True)
            )

        lines.append(line(list(s.columns)).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines += [line(r).rstrip() for r in cells]
    lines += [f"  {n}" if s.columns else n for n in s.notes]
    return lines


def _md_table(s: Section) -> list[str]:
    lines = [f"### {s.title}", ""]
    if s.columns:
        esc = lambda x: x.replace("|", "\\|")  # noqa: E731
        lines.append("| " + " | ".join(esc(c) if c else " " for c in s.columns) + " |")
        lines.append(
            "|"
            + "|".join(
                "---:" if any(_is_number(r[i]) for r in s.rows) else "---" for i in range(len(s.columns))
            )
            + "|"
        )
        lines += ["| " + " | ".join(esc(cell(v)) for v in row) + " |" for row in s.rows]
        lines.append("")
    lines += [f"- {n}" for n in s.notes]
    return lines


def _layout(reports: Sequence[Any], table: Any, head: Any) -> list[str]:
    out: list[str] = []
    many = len(reports) > 1
    if many:
        out += table(_merged_summary(reports)) + [""]
    for rep in reports:
        out += head(rep.path)
        out += [f"missing: {m}" for m in rep.missing]
        if rep.missing:
            out.append("")
        for s in rep.sections:
            if many and s.key == "summary":
                continue
            out += table(s) + [""]
    return out


def render_text(reports: Sequence[Any]) -> str:
    """Aligned plain-text tables, one after the other."""
    return "\n".join(_layout(reports, _text_table, lambda p: [f"# {p}", ""])).rstrip() + "\n"


def render_markdown(reports: Sequence[Any]) -> str:
    """GitHub-flavoured Markdown: a heading per run, a pipe table per section."""
    return "\n".join(_layout(reports, _md_table, lambda p: [f"## {p}", ""])).rstrip() + "\n"


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy scalars and arrays
        return _jsonable(x.tolist())
    return x


def render_json(reports: Sequence[Any]) -> str:
    """One JSON document: ``{"runs": [{"path", "sections": [...], "missing": [...]}]}``
    (NaN and infinities as null)."""
    return (
        json.dumps({"runs": [_jsonable(rep.to_dict()) for rep in reports]}, indent=1, allow_nan=False) + "\n"
    )
