"""``mpiml mixing``: measure one protocol's t_mix on the ranks it runs on.

    mpiexec -n 8 mpiml mixing --protocol gossip --topology ring
    mpiexec -n 8 python -m mpi4py -m mpiml.mixing.cli --protocol local_step --m 3
    mpiexec -n 5 mpiml mixing --protocol async_ps --slow 4 --staleness 1   # 4 workers + 1 server
    mpiexec -n 5 mpiml mixing --protocol sdpipe --slow 2 --jitter 0.5      # 4 replicas + the scheduler

Every rank measures (the measurement is collective); rank 0 prints the table and
writes ``<out>/<protocol>-<variant>-n<N>.h5`` (:mod:`mpiml.mixing.store`). An existing
file of that name is never replaced unless ``--overwrite`` is given: every rank checks
before the measurement starts, and all refuse with one line naming the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .measure import PARAMS, PROTOCOLS, measure
from .store import format_table, result_name, write_result

__all__ = ["main", "parser"]

_TOPOLOGICAL = ("gossip", "async_gossip")
_OPTIONS = tuple(dict.fromkeys(k for takes in PARAMS.values() for k in takes))  # every protocol option


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {v})")
    return v


def _nonnegative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {v})")
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpiml mixing",
        description="Measure a protocol's mixing time t_mix (MixML Assumption 2) on random states; "
        "run under mpiexec: the number of ranks is n.",
    )
    p.add_argument("--protocol", required=True, choices=list(PROTOCOLS))
    p.add_argument("--topology", help="gossip protocols: a topology name or a .toml file (default ring)")
    p.add_argument("--m", type=_positive, help="local_step: local iterations per AllReduce (default 2)")
    p.add_argument("--method", choices=("p2p", "neighbor"), help="gossip: transport (default p2p)")
    p.add_argument("--gamma", type=float, help="gossip: slack matrix (1 - gamma) I + gamma W (default 1)")
    p.add_argument(
        "--every", type=_positive, help="async_gossip: exchanges per rank between cuts (default 1)"
    )
    p.add_argument("--servers", type=_positive, help="async_ps: server ranks S (the last S ranks; default 1)")
    p.add_argument(
        "--staleness", type=_nonnegative, help="async_ps: SSP bound s (default: fully asynchronous; 0: BSP)"
    )
    p.add_argument(
        "--slow", type=_positive, help="async_ps, sdpipe: worker/replica 0 is SLOW times slower (default 1)"
    )
    p.add_argument(
        "--rounds",
        type=_positive,
        help="async_ps: pushes of the slow worker per trial (default 4); sdpipe: updates per replica (40)",
    )
    p.add_argument(
        "--period",
        type=float,
        help="async_ps: seconds a fast worker sleeps per step (default 0.05); sdpipe: per batch (0.01)",
    )
    p.add_argument("--wait-ms", type=float, help="sdpipe: a replica's initial wait time, ms (default 1.0)")
    p.add_argument("--wait-max-ms", type=float, help="sdpipe: the wait time's cap, ms (default 10.0)")
    p.add_argument("--ssp-bound", type=int, help="sdpipe: a bound round every SSP_BOUND batches (default 10)")
    p.add_argument(
        "--sync-every", type=int, help="sdpipe: a sync round every SYNC_EVERY batches (default none)"
    )
    p.add_argument(
        "--jitter",
        type=float,
        help="sdpipe: a batch's sleep is PERIOD x U(1 - JITTER, 1 + JITTER) (default 0)",
    )
    p.add_argument("--trials", type=_positive, default=20, help="random starting states (default 20)")
    p.add_argument("--dim", type=_positive, default=8, help="values per rank (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--floor",
        type=float,
        default=1e-6,
        help="starts count while the distance is >= FLOOR * the initial one (default 1e-6)",
    )
    p.add_argument("--max-time", type=_positive, help="time steps per trial at most (default 10000 n)")
    p.add_argument("--out", default="results/mixing", help="folder of the .h5 file (default results/mixing)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing result file of the same name"
    )
    return p


def _params(args: argparse.Namespace) -> dict[str, object]:
    """The protocol's own options; one given to a protocol that does not take it is an error."""
    given = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    takes = PARAMS[args.protocol]
    wrong = [k for k in given if k not in takes]
    if wrong:
        raise ValueError(f"--{wrong[0].replace('_', '-')} does not apply to --protocol {args.protocol}")
    if args.protocol in _TOPOLOGICAL:
        given.setdefault("topology", "ring")
    return given


def main(argv: Sequence[str] | None = None) -> int:
    from mpi4py import MPI

    from ..comm import agree, default_comm, install_abort_handler
    from ..errors import ConfigError

    install_abort_handler()  # an exception on one rank ends the job, never a hang (#16.8)
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    comm = default_comm()
    rank = comm.Get_rank()
    try:
        params = _params(args)  # pure and the same everywhere: every rank fails alike
        if "topology" in params:
            from ..topology import build_schedule

            build_schedule(str(params["topology"]), comm.Get_size())  # TopologyError names the problem
        if args.protocol == "async_ps":
            from .ps_ranks import ps_defaults

            full = ps_defaults(params)
            S, size = full["servers"], comm.Get_size()
            if size < S + 1:
                raise ValueError(
                    f"--servers {S} needs at least {S + 1} ranks, one worker at least (got {size})"
                )
            if args.dim < full["servers"]:
                raise ValueError(f"--dim must be >= --servers (got {args.dim} < {full['servers']})")
            if args.max_time is not None:
                raise ValueError("--max-time does not apply to --protocol async_ps (use --rounds)")
        if args.protocol == "sdpipe":
            from .sdpipe_ranks import sdpipe_defaults

            try:
                sdpipe_defaults(params)
            except ValueError as exc:
                raise ValueError(f"--protocol sdpipe: {exc}") from None
            if comm.Get_size() < 3:
                raise ValueError(
                    f"--protocol sdpipe needs at least 3 ranks: 2 replicas and the scheduler "
                    f"(got {comm.Get_size()})"
                )
            if args.max_time is not None:
                raise ValueError("--max-time does not apply to --protocol sdpipe (use --rounds)")
        if not 0.0 <= args.floor < 0.5:
            raise ValueError(f"--floor must be in [0, 0.5) (got {args.floor})")
    except ValueError as exc:
        if rank == 0:
            print(f"mpiml mixing: error: {exc}", file=sys.stderr, flush=True)
        return 2
    path = Path(args.out) / result_name(
        args.protocol, _workers(args.protocol, comm.Get_size(), params), params
    )
    try:
        agree(comm, lambda: _check_out(path, args))  # before any rank starts measuring
    except ConfigError as exc:
        if rank == 0:
            print(f"mpiml mixing: error: {exc}", file=sys.stderr, flush=True)
        return 2
    t0 = MPI.Wtime()
    res = measure(
        comm,
        args.protocol,
        args.trials,
        d=args.dim,
        seed=args.seed,
        rel_floor=args.floor,
        max_time=args.max_time,
        **params,
    )
    wall = comm.allreduce(MPI.Wtime() - t0, op=MPI.MAX)
    if rank == 0:
        print(format_table([res]))
        if (res.censored > 0).any():
            print(f"note: {int(res.censored.sum())} start(s) never halved before --max-time; left out")
        if not args.no_write:
            written = write_result(path, res, overwrite=args.overwrite)
            print(f"wrote {written} ({wall:.2f} s)")
        sys.stdout.flush()
    return 0


def _workers(protocol: str, size: int, params: dict[str, object]) -> int:
    """MixML's n: the ranks, less the servers for async_ps and the scheduler for sdpipe."""
    if protocol == "sdpipe":
        return size - 1
    return size - int(params.get("servers", 1)) if protocol == "async_ps" else size  # type: ignore[call-overload]


def _check_out(path: Path, args: argparse.Namespace) -> None:
    """Refuse to replace a file this run did not create (ConfigError naming it)."""
    from ..errors import ConfigError

    if not args.no_write and not args.overwrite and path.exists():
        raise ConfigError(f"{path} exists: pass --overwrite to replace it, or --out DIR to write elsewhere")


if __name__ == "__main__":
    sys.exit(main())
