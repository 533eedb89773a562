"""``mpiml topology``: what a topology's W does to consensus, without running anything.

    mpiml topology NAME --workers N [--param k=v ...] [--json]
    mpiml topology --list

NAME is a registry name, a file of the repository's topologies/ folder, or a .toml path
(--workers may then be left out if the file says ``workers``). Exit status: 0 when W
passes every check, 1 when it is built but fails one (the report says which), 2 for a
bad name, parameter or option (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cli import RaisingParser, UsageError
from .base import Schedule, TopologyError
from .checks import check_schedule, doubly_stochastic
from .files import TOPOLOGY_DIR, named_files, resolve
from .graphs import REGISTRY

__all__ = ["main", "parse_param", "report", "rounds_to"]


def _parser() -> argparse.ArgumentParser:
    ap = RaisingParser(
        prog="mpiml topology",
        description="Degree, diameter, spectral gap rho and consensus rounds of a gossip topology.",
    )
    ap.add_argument("name", nargs="?", help="registry name, file in topologies/, or a .toml path")
    ap.add_argument("--workers", "-n", type=int, help="number of ranks n")
    ap.add_argument(
        "--param", "-p", action="append", default=[], metavar="K=V", help="generator parameter, e.g. k=4"
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--list", action="store_true", help="list the generators and the files in topologies/")
    return ap


def parse_param(text: str) -> tuple[str, Any]:
    """'k=4' -> ('k', 4); values are int, float, true/false, or else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise TopologyError(f"--param takes key=value (got {text!r})")
    raw = raw.strip()
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                pass
    return key.strip(), value


def rounds_to(factor: float, contraction: float, period: int = 1) -> int | None:
    """Fewest rounds after which the bound contraction^rounds is <= factor.

    Static (period 1): k = ceil(log factor / log contraction), 1 for exact averaging. A
    time-varying schedule is only guaranteed its contraction at the end of a period, so
    whole periods count: period x ceil(log factor / (period log contraction)). None when
    the bound never shrinks (contraction >= 1).
    """
    if contraction >= 1.0:
        return None
    if contraction <= 0.0:
        return period
    periods = math.ceil(math.log(factor) / (period * math.log(contraction)) - 1e-9)
    return period * max(1, periods)


def report(s: Schedule) -> dict[str, Any]:
    """The numbers ``mpiml topology`` prints, as a dict (its --json output)."""
    try:
        check_schedule(s)
        verdict = "pass"
    except TopologyError as exc:
        verdict = str(exc)
    c = s.contraction()
    union = s.steps[0] if s.static else s.union()
    out: dict[str, Any] = {
        "name": s.name,
        "workers": s.n,
        "static": s.static,
        "period": s.period,
        "degree": s.degree,
        "diameter": union.diameter(),
        "rho": max(t.rho() for t in s.steps),
        "rho_effective": s.rho_effective(),
        "contraction": c,
        "rounds_10x": rounds_to(0.1, c, s.period),
        "rounds_1000x": rounds_to(1e-3, c, s.period),
        "doubly_stochastic": all(doubly_stochastic(t.W) for t in s.steps),
        "symmetric": all(t.symmetric for t in s.steps),
        "checks": verdict,
    }
    if not s.static:
        out["steps"] = [
            {
                "name": t.name,
                "degree": t.degree,
                "rho": t.rho(),
                "doubly_stochastic": doubly_stochastic(t.W),
                "symmetric": t.symmetric,
            }
            for t in s.steps
        ]
    return out


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _format(r: dict[str, Any]) -> str:
    kind = "static" if r["static"] else f"time-varying, period {r['period']}"
    diam = "disconnected" if r["diameter"] is None else f"{r['diameter']} hops"
    if not r["static"]:
        diam += " (union of the period)"
    rho_how = "max(|lambda_2|, |lambda_n|)" if r["symmetric"] else "2nd singular value of W"
    lines = [
        f"topology           {r['name']} ({kind})",
        f"workers            {r['workers']}",
        f"degree             {r['degree']} (largest in-degree)",
        f"diameter           {diam}",
    ]
    if r["static"]:
        lines.append(f"rho                {r['rho']:.6g}  ({rho_how})")
    else:
        lines.append(f"rho per step       max {r['rho']:.6g}")
        for t, st in enumerate(r["steps"]):
            lines.append(f"  t = {t:<3d}          {st['rho']:<10.6g}{st['name']}")
        p = r["period"]
        prod = " ".join(f"W_{t}" for t in reversed(range(p)))
        lines.append(
            f"rho_effective      {r['rho_effective']:.6g} per step  (||{prod} - J||_2^(1/{p}), worst start)"
        )

    def rounds(k: int | None) -> str:
        return "never" if k is None else f"{k} round{'s' if k != 1 else ''}"

    lines += [
        f"contraction        x{r['contraction']:.6g} of the consensus error ||X - mean|| per round",
        f"  10x smaller in   {rounds(r['rounds_10x'])}",
        f"  1000x smaller in {rounds(r['rounds_1000x'])}",
        f"doubly stochastic  {_yes(r['doubly_stochastic'])}",
        f"symmetric          {_yes(r['symmetric'])}",
        f"checks             {r['checks']}",
    ]
    return "\n".join(lines)


def _list() -> str:
    lines = ["generators (mpiml topology NAME --workers N [--param k=v]):"]
    for name, fn in REGISTRY.items():
        lines.append(f"  {name:<22}{(fn.__doc__ or '').strip().splitlines()[0]}")
    lines.append(f"files in {TOPOLOGY_DIR}:")
    lines += [f"  {stem}" for stem in named_files()] or ["  (none)"]
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"mpiml topology: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``mpiml topology ...``: ``argv`` is the argument list after ``topology``."""
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.list:
        print(_list())
        return 0
    if args.name is None:
        return _fail("give a topology NAME (mpiml topology --list shows them)")
    if args.workers is not None and args.workers < 1:
        return _fail(f"--workers must be >= 1 (got {args.workers})")
    if args.workers is None and args.name in REGISTRY:
        return _fail(f"--workers N is required for {args.name}")
    try:
        params = dict(parse_param(p) for p in args.param)
        schedule = resolve(args.name, args.workers, **params)
    except TopologyError as exc:
        return _fail(str(exc))
    r = report(schedule)
    if args.json:
        print(json.dumps(r, indent=2, default=_jsonable))
    else:
        print(_format(r))
    return 0 if r["checks"] == "pass" else 1


def _jsonable(v: object) -> object:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
