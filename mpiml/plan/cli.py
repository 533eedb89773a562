"""``mpiml plan``: the argparse front end, the table, unit parsing and the --check report.

:func:`main` builds :func:`~mpiml.plan.model.plan` arguments from a Table II preset, a
measured run (``--check``, via :func:`~mpiml.plan.measure.measured_step_times`) and the
options given, and prints :func:`format_plan`'s table or JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .measure import measured_step_times
from .model import ALLREDUCE, PRESETS, SYSTEMS, TABLE_II, Plan, plan

__all__ = ["format_plan", "main", "parse_bandwidth"]


def _rate(bits: float) -> str:
    for scale, unit in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= scale:
            return f"{bits / scale:g} {unit}"
    return f"{bits:g} bit/s"


def format_plan(p: Plan) -> str:
    """The plan as a table: inputs, t_p, t_c, d, tau, then one row per algorithm."""
    lines = []
    dp = 2 if p.t_p >= 0.01 else 4  # decimals of the millisecond columns
    model = f"n_p = {p.params:,} params x {p.bytes_per_param:g} B, " if p.params else ""
    lines.append(f"{model}m = {p.workers} workers, B_l = {p.local_batch}, n_s = {p.samples:,} samples")
    if p.tc_source != "given" and p.bandwidth is not None:
        net = f"network {_rate(p.bandwidth)}"
        if p.gpus_per_node > 1:
            intra = _rate(p.intra_bandwidth or p.bandwidth)
            net += f", {p.gpus_per_node} GPUs per node at {intra}"
        lines.append(f"{net}, {p.allreduce} allreduce")
    lines.append(
        f"t_p   {p.t_p * 1e3:10.{dp}f} ms   ({p.tp_source}{f'; t_l {p.t_l * 1e3:g} ms' if p.t_l else ''})"
    )
    lines.append(f"t_c   {p.t_c * 1e3:10.{dp}f} ms   ({p.tc_source})")
    lines.append(f"delay {p.delay:>10d}      ({p.delay_source})")
    tau_src = "d + 1, §VI.D" if p.tau == p.delay + 1 else "given"
    lines.append(f"tau   {p.tau:>10d}      ({tau_src})")
    lines.append("")
    lines.append(f"{'algorithm':<22}{'step ms':>10}{'epoch s':>11}{'comm':>8}{'speedup':>9}")
    rows = (
        ("minibatch SGD", "sgd", "eq. 4"),
        (f"local SGD, tau={p.tau}", "local_sgd", "eq. 5"),
        (f"DaSGD, d={p.delay} tau={p.tau}", "dasgd", "t_p + (t_c - d t_p)/tau" if p.dasgd_wait else "eq. 6"),
    )
    for label, alg, eq in rows:
        lines.append(
            f"{label:<22}{p.step(alg) * 1e3:10.{dp}f}{p.epoch(alg):11.3f}{p.comm_share(alg):8.1%}"
            f"{p.step_sgd / p.step(alg):8.2f}x  {eq}"
        )
    if p.dasgd_wait:
        lines.append(f"DaSGD waits {p.dasgd_wait * 1e3:.2f} ms every {p.tau} steps: t_c >= d t_p")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the CLI

_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
_BANDWIDTH = re.compile(
    r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<prefix>[kKmMgGtT]?)(?P<bin>i?)"
    r"(?P<unit>bits?|bytes?|b|B)?(?P<rate>ps|/s)?\s*$"
)
_COUNT = re.compile(
    r"^\s*(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?P<prefix>[kKmMgGtTpP]?)(?:flops?|flop/s)?\s*$",
    re.IGNORECASE,
)


def parse_bandwidth(text: str) -> float:
    """Bit/s from '20Gbps', '10gbit', '100mbit/s', '16GB/s' (bytes: capital B or 'byte'),
    '1Gibit' (binary), or a plain number of bit/s. Prefixes are decimal; m is mega."""
    m = _BANDWIDTH.match(text)
    if m is None:
        raise ValueError(f"not a bandwidth: {text!r} (e.g. 20Gbps, 10gbit, 100mbit, 16GB/s, 2e10)")
    prefix = m["prefix"].lower()
    scale = 1024.0 ** " kmgt".index(prefix) if m["bin"] and prefix else _SI[prefix]
    unit = m["unit"] or "b"
    bits = 8.0 if unit == "B" or unit.startswith("byte") else 1.0
    value = float(m["num"]) * scale * bits
    if value <= 0:
        raise ValueError(f"bandwidth must be > 0 (got {text!r})")
    return value


def _count(text: str) -> float:
    m = _COUNT.match(text)
    if m is None:
        raise ValueError(f"not a number: {text!r} (e.g. 25530472, 25.5M, 4.1G, 6.1TFLOPS)")
    return float(m["num"]) * _SI[m["prefix"].lower()]


def _arg(convert: Callable[[str], Any], minimum: float, strict: bool) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {minimum:g} (got {text})")
        return value

    return parse


def _integer(text: str) -> int:
    value = _count(text)
    if value != int(value):
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="mpiml plan",
        description="The DaSGD paper's planner: t_p, t_c, delay d (eq. 3), tau = d + 1 and time per "
        "epoch of minibatch SGD, local SGD and DaSGD (eqs. 4-6). t_p comes from --tp or from "
        "--flop-per-sample and --flops; t_c from --tc or from --params and --bandwidth.",
        epilog="examples: mpiml plan --preset resnet50-titanx | mpiml plan --params 25.5M "
        "--flop-per-sample 24G --flops 6T --bandwidth 10gbit --workers 64 --local-batch 32 | "
        "mpiml plan --check results/default/run.h5",
    )
    pos, pos0, ms = _arg(float, 0, True), _arg(float, 0, False), "MS"
    g = ap.add_argument_group("the model (eq. 3)")
    models, systems = ", ".join(TABLE_II), " or ".join(SYSTEMS)
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        metavar="MODEL-SYSTEM",
        help=f"a row of Table II (256 workers, batch 64): MODEL {models}; SYSTEM {systems}",
    )
    g.add_argument(
        "--params", type=_arg(_integer, 1, False), metavar="N", help="n_p, number of parameters (25.5M ok)"
    )
    g.add_argument(
        "--bytes-per-param", type=pos, metavar="B", help="bytes per parameter on the wire (default 4)"
    )
    g.add_argument(
        "--flop-per-sample",
        type=_arg(_count, 0, True),
        metavar="FLOP",
        help="FLOP of forward+backward per sample",
    )
    g.add_argument("--flops", type=_arg(_count, 0, True), metavar="FLOP/S", help="device FLOP/s (6.1T ok)")
    g.add_argument(
        "--bandwidth", type=_arg(parse_bandwidth, 0, True), metavar="BW", help="network: 20Gbps, 10gbit, 2e10"
    )
    g.add_argument(
        "--gpus-per-node", type=_arg(_integer, 1, False), metavar="G", help="GPUs per node (default 1: flat)"
    )
    g.add_argument(
        "--intra-bandwidth", type=_arg(parse_bandwidth, 0, True), metavar="BW", help="inside a node: 16GB/s"
    )
    g.add_argument("--workers", type=_arg(_integer, 1, False), metavar="M", help="m, number of workers")
    g.add_argument(
        "--local-batch", type=_arg(_integer, 1, False), metavar="B_L", help="B_l, samples per worker per step"
    )
    g.add_argument(
        "--parallel", type=_arg(_integer, 1, False), metavar="P", help="p, samples per pass (default B_l)"
    )
    g.add_argument(
        "--samples",
        type=_arg(_integer, 1, False),
        metavar="N_S",
        help="n_s, samples per epoch (default 50000)",
    )
    g.add_argument("--allreduce", choices=sorted(ALLREDUCE), help="default tree (Table II's delay column)")
    g = ap.add_argument_group("measured or chosen times (milliseconds)")
    g.add_argument("--tp", type=pos, metavar=ms, help="t_p, one local step (replaces the FLOP model)")
    g.add_argument("--tc", type=pos0, metavar=ms, help="t_c, one allreduce (replaces the network model)")
    g.add_argument("--tl", type=pos0, metavar=ms, help="t_l, local update time added to t_p (default 0)")
    g.add_argument("--delay", type=_arg(_integer, 0, False), metavar="D", help="d (default: eq. 3)")
    g.add_argument("--tau", type=_arg(_integer, 1, False), metavar="TAU", help="tau (default: d + 1)")
    ap.add_argument("--check", metavar="RUN_H5", help="compare predictions with a measured mpiml run")
    ap.add_argument("--json", action="store_true", help="print JSON (seconds) instead of a table")
    return ap


_PLAN_KEYS = (
    "params",
    "bytes_per_param",
    "flop_per_sample",
    "flops",
    "bandwidth",
    "gpus_per_node",
    "intra_bandwidth",
    "workers",
    "local_batch",
    "parallel",
    "samples",
    "allreduce",
    "delay",
    "tau",
)


def _kwargs(args: argparse.Namespace, ap: argparse.ArgumentParser, base: dict[str, Any]) -> dict[str, Any]:
    """plan() arguments: the preset or run, then the options given (ms -> s)."""
    kw = dict(base)
    given = {k: getattr(args, k) for k in _PLAN_KEYS if getattr(args, k) is not None}
    if args.tp is not None and (args.flop_per_sample is not None or args.flops is not None):
        ap.error("--tp replaces --flop-per-sample/--flops: give one or the other")
    if args.tc is not None and args.bandwidth is not None:
        ap.error("--tc replaces --bandwidth: give one or the other")
    if args.flop_per_sample is not None or args.flops is not None:
        kw.pop("tp", None)  # the FLOP model replaces a preset's t_p
    if args.bandwidth is not None:
        kw.pop("tc", None)
    kw.update(given)
    for opt, key in (("tp", "tp"), ("tc", "tc"), ("tl", "t_l")):
        if getattr(args, opt) is not None:
            kw[key] = getattr(args, opt) / 1e3
    for opt in ("workers", "local_batch"):
        if opt not in kw:
            ap.error(f"--{opt.replace('_', '-')} is required (or use --preset / --check)")
    if "tp" not in kw and ("flop_per_sample" not in kw or "flops" not in kw):
        ap.error("t_p needs --tp MS, or --flop-per-sample and --flops")
    if "tc" not in kw and ("params" not in kw or "bandwidth" not in kw):
        ap.error("t_c needs --tc MS, or --params and --bandwidth")
    return kw


def _check_run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> int:
    try:
        m = measured_step_times(args.check)
    except (OSError, ValueError, KeyError) as exc:
        ap.error(f"--check {args.check}: {exc}")
    if m["t_c"] is None and args.tc is None:
        ap.error(f"--check {args.check}: the run has no allreduce or iallreduce events; give --tc MS")
    base: dict[str, Any] = {"workers": m["ranks"], "local_batch": m["local_batch"] or 1, "tp": m["t_p"]}
    base.update({"tc": m["t_c"]} if m["t_c"] is not None else {})
    base.update({k: m[k] for k in ("tau", "delay") if m[k] is not None})
    if m["merge"]:  # DaSGD's merge, once per tau steps: spread over the steps as t_l
        base["t_l"] = m["merge"]
    try:
        p = plan(**_kwargs(args, ap, base))
    except ValueError as exc:
        ap.error(str(exc))
    if args.tp is None:
        p = dataclasses.replace(p, tp_source="measured: median compute + update per step")
    if args.tc is None:
        p = dataclasses.replace(p, tc_source="measured: median (i)allreduce")
    alg = m["algorithm"]
    predicted = p.step(alg) if alg in ("sgd", "local_sgd", "dasgd") else None
    if args.json:
        print(json.dumps({"measured": m, "predicted_step": predicted, "plan": p.to_dict()}, indent=2))
        return 0
    print(
        f"run {args.check}: {alg} on {m['ranks']} ranks, {m['steps']} steps, local batch {m['local_batch']}"
    )
    tp_from = "median compute + update per step" if args.tp is None else "given"
    tl_from = "mean merge per step" if args.tl is None else "given"
    print(
        f"t_p {(p.t_p - p.t_l) * 1e3:.3f} ms ({tp_from})"
        + (f" + t_l {p.t_l * 1e3:.3f} ms ({tl_from})" if p.t_l else "")
        + f", t_c {p.t_c * 1e3:.3f} ms ({'median (i)allreduce' if args.tc is None else 'given'}), "
        f"measured wait {m['wait'] * 1e3:.3f} ms per step"
    )
    if predicted is not None and m["step"] is not None:
        err = (predicted - m["step"]) / m["step"]
        print(
            f"step time ({alg}): predicted {predicted * 1e3:.3f} ms, measured mean {m['step'] * 1e3:.3f} ms "
            f"(median {m['step_median'] * 1e3:.3f} ms), prediction {err:+.1%}"
        )
        if alg == "dasgd":
            print(
                f"wait per step (dasgd): predicted {p.dasgd_wait / p.tau * 1e3:.3f} ms "
                f"(max(0, t_c - d t_p) / tau), measured mean {m['wait'] * 1e3:.3f} ms"
            )
    else:
        print(f"no prediction for algorithm {alg!r}; the plan below is for sgd, local_sgd and dasgd")
    print()
    print(format_plan(p))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``mpiml plan [options]``: ``argv`` is the argument list after ``plan``."""
    ap = _parser()
    args = ap.parse_args(argv)
    if args.check is not None:
        if args.preset is not None:
            ap.error("--check takes its inputs from the run: drop --preset")
        return _check_run(args, ap)
    base = dict(PRESETS[args.preset]) if args.preset else {}
    label = base.pop("label", None)
    try:
        p = plan(**_kwargs(args, ap, base))
    except ValueError as exc:
        ap.error(str(exc))
    if args.json:
        print(json.dumps(p.to_dict(), indent=2))
    else:
        if label:
            print(label)
        print(format_plan(p))
    return 0
