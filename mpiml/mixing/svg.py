"""A small hand-written SVG line plot (axes, ticks, grid, legend): Figure 3 without matplotlib.

:func:`line_plot` takes named series of (x, y) points and returns the SVG text. Points
with a non-finite coordinate are left out (and break the line there). Ticks are
"nice" numbers (1, 2, 2.5, 5 times a power of ten) covering the data; text is
XML-escaped, so any label is safe.

Pure Python; no MPI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

__all__ = ["PALETTE", "Series", "line_plot", "nice_ticks"]

# colour-blind-safe (Okabe-Ito)
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")


@dataclass(frozen=True)
class Series:
    """One line: points, and how it is drawn (``dashed``: no markers, a dashed stroke)."""

    x: Sequence[float]
    y: Sequence[float]
    dashed: bool = False


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """About ``target`` evenly spaced round numbers from <= lo to >= hi.

    >>> nice_ticks(2, 8)
    [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    >>> nice_ticks(0, 230)
    [0.0, 50.0, 100.0, 150.0, 200.0, 250.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"tick range must be finite (got {lo}, {hi})")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        lo, hi = lo - 1.0, hi + 1.0
    raw = (hi - lo) / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while True:
        v = start + k * step
        ticks.append(round(v, 12))
        if v >= hi - 1e-9 * step:
            return ticks
        k += 1


def _fmt(v: float) -> str:
    return f"{v:g}"


def line_plot(
    series: Mapping[str, Series],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    width: int = 640,
    height: int = 420,
) -> str:
    """SVG text of a line plot with one coloured line, circle markers and a legend entry
    per series (in the order given)."""
    if not series:
        raise ValueError("line_plot needs at least one series")
    pts = {name: [(float(x), float(y)) for x, y in zip(s.x, s.y, strict=True)] for name, s in series.items()}
    finite = [p for ps in pts.values() for p in ps if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not finite:
        raise ValueError("line_plot: no series has a finite point")
    xt = nice_ticks(min(p[0] for p in finite), max(p[0] for p in finite))
    yt = nice_ticks(min(0.0, min(p[1] for p in finite)), max(p[1] for p in finite))
    # margins; the legend sits on the right, wide enough for its longest name (~6.6 px a character at 12 px)
    left, top, bottom = 64, 40, 52
    right = max(120, 56 + round(6.6 * max(len(name) for name in series)))
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(y: float) -> float:
        return top + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    if title:
        out.append(
            f'<text x="{left + pw / 2:.1f}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>'
        )
    for v in xt:
        x = sx(v)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{_fmt(v)}</text>')
    for v in yt:
        y = sy(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="black"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_fmt(v)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>')
    if xlabel:
        out.append(
            f'<text x="{left + pw / 2:.1f}" y="{height - 12}" text-anchor="middle">{escape(xlabel)}</text>'
        )
    if ylabel:
        cy = top + ph / 2
        out.append(
            f'<text x="16" y="{cy:.1f}" text-anchor="middle" transform="rotate(-90 16 {cy:.1f})">{escape(ylabel)}</text>'
        )
    for i, (name, s) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in pts[name]:
            if math.isfinite(x) and math.isfinite(y):
                runs[-1].append((sx(x), sy(y)))
            elif runs[-1]:
                runs.append([])
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                out.append(
                    f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
                )
            if not s.dashed:
                out.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>' for x, y in run)
        ly = top + 8 + 20 * i
        lx = left + pw + 14
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 30}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
