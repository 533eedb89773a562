"""Results of :func:`~mpiml.mixing.measure`: the printed table and the HDF5 file.

File ``<protocol>-<variant>-n<N>.h5`` (:func:`result_name`; the variant is the topology
for the gossip protocols, ``m<M>`` for local_step, nothing for allreduce, ``S<servers>``
then ``-s<staleness>`` and ``-r<slow>`` where given for async_ps, whose N is the
workers; ``r<slow>`` and ``j<jitter>`` where not the default for sdpipe, whose N is the
replicas):

- attributes: ``protocol``, ``n``, ``trials``, ``dim``, ``seed``, ``rel_floor``,
  ``resolution`` (time steps between records), ``t_mix`` (max over trials of the
  worst-start value), ``t_mix_mean``, ``t_mix_min``, ``t_mix_q50``/``q90``/``q99``,
  ``t_mix0_max`` and ``t_mix0_mean`` (start t = 0 only), ``estimate`` and ``rho`` (NaN
  where there is none), ``params`` (JSON of the protocol's parameters) and each
  parameter by name (``topology``, ``m``, ...);
- datasets ``t_mix``, ``t_mix0``, ``worst_start``, ``censored``: one value per trial;
- group ``curves``: ``time`` (int64, MixML time steps) and ``distance`` (float64,
  ||X_t - M_inf X_0||_F), ragged (variable-length) datasets with one row per trial:
  ``f["curves/distance"][i]`` is trial i's curve (a group per trial cost 1.8 kB each);
- async_ps only, group ``pulls``: ``time`` (ragged int64, one row per trial and
  (worker, shard) pair: the pushes applied when each of its pulls was answered) and
  ``pair`` (int64 rows trial, worker, shard); attribute ``gap_mean``, the mean gap
  between a pair's pulls (the first counted from t = 0) over all trials. A parameter that is None (staleness:
  fully asynchronous) is left out of the attributes;
- sdpipe only, group ``groups``: ``size``, ``kind`` (0 regular, 1 bound round, 2 sync
  round) and ``members`` (ragged int64, one row per trial: the groups in the
  scheduler's order, ``members`` their replicas concatenated); attributes
  ``group_mean`` (mean group size over all trials) and ``group_full`` (the fraction of
  groups with all P replicas).

Written by one rank (every rank holds the same result).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .measure import MixingResult

__all__ = ["format_table", "read_attrs", "result_name", "write_result"]


def result_name(protocol: str, n: int, params: dict[str, Any]) -> str:
    """'gossip-ring-n8.h5', 'async_gossip-ring-n8.h5', 'local_step-m2-n8.h5', 'allreduce-n8.h5',
    'async_ps-S1-s1-r4-n8.h5' (8 workers), 'sdpipe-r2-j0.5-n4.h5' (4 replicas)."""
    if "topology" in params:
        variant = Path(str(params["topology"])).stem  # a .toml path names its file
    elif protocol == "local_step":
        variant = f"m{params.get('m', 2)}"
    elif protocol == "async_ps":
        variant = f"S{params.get('servers', 1)}"
        if params.get("staleness") is not None:
            variant += f"-s{params['staleness']}"
        if int(params.get("slow", 1)) != 1:
            variant += f"-r{params['slow']}"
    elif protocol == "sdpipe":
        parts = [f"r{params['slow']}"] if int(params.get("slow", 1)) != 1 else []
        if float(params.get("jitter", 0.0)) != 0.0:
            parts.append(f"j{params['jitter']:g}")
        variant = "-".join(parts)
    else:
        variant = ""
    return f"{protocol}-{variant}-n{n}.h5" if variant else f"{protocol}-n{n}.h5"


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def write_result(path: str | Path, r: MixingResult, overwrite: bool = False) -> Path:
    """Write ``r`` to ``path``; returns the path.

    The file is written under a temporary name beside ``path`` and moved into place, so
    a reader never sees half a file. An existing ``path`` is replaced only with
    ``overwrite=True``; otherwise :class:`FileExistsError` is raised and the existing file
    is left as it was (the move is a hard link, which fails if the name exists, so a
    file that appeared meanwhile is not clobbered either). Not collective: one rank writes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists: pass --overwrite to replace it, or --out to write elsewhere")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_h5(tmp, r)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists: never clobbers
            except FileExistsError:
                raise FileExistsError(
                    f"{path} exists: pass --overwrite to replace it, or --out to write elsewhere"
                ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _write_h5(path: Path, r: MixingResult) -> None:
    s, s0 = r.summary(), r.summary(from_zero=True)
    with h5py.File(path, "w") as f:
        a = f.attrs
        a["protocol"], a["n"], a["trials"], a["dim"], a["seed"] = r.protocol, r.n, r.trials, r.dim, r.seed
        a["rel_floor"], a["resolution"] = r.rel_floor, r.resolution
        a["t_mix"] = s["max"]
        for key in ("mean", "min", "q50", "q90", "q99"):
            a[f"t_mix_{key}"] = s[key]
        a["t_mix0_max"], a["t_mix0_mean"] = s0["max"], s0["mean"]
        a["estimate"], a["rho"] = _nan(r.estimate), _nan(r.rho)
        a["params"] = json.dumps(r.params, sort_keys=True)
        for k, v in r.params.items():
            if v is not None:
                a[k] = v
        f["t_mix"] = r.t_mix_trials
        f["t_mix0"] = r.t_mix0_trials
        f["worst_start"] = r.worst_starts
        f["censored"] = r.censored
        g = f.create_group("curves")
        times = g.create_dataset("time", (r.trials,), dtype=h5py.vlen_dtype(np.int64))
        dists = g.create_dataset("distance", (r.trials,), dtype=h5py.vlen_dtype(np.float64))
        for i, (t, d) in enumerate(r.curves):
            times[i], dists[i] = t, d
        if r.pulls is not None:
            pairs = [(trial, j) for trial, sched in enumerate(r.pulls) for j in range(len(sched))]
            shards = len(r.pulls[0]) // r.n if r.pulls else 1
            p = f.create_group("pulls")
            pt = p.create_dataset("time", (len(pairs),), dtype=h5py.vlen_dtype(np.int64))
            for row, (trial, j) in enumerate(pairs):
                pt[row] = r.pulls[trial][j]
            rows = [(trial, j // shards, j % shards) for trial, j in pairs]
            p["pair"] = np.array(rows, dtype=np.int64).reshape(-1, 3)
            gaps = [np.diff(t, prepend=0) for trial in r.pulls for t in trial]
            a["gap_mean"] = float(np.mean(np.concatenate(gaps))) if gaps else math.nan
        if r.groups is not None:
            _write_groups(f, r)


def _write_groups(f: h5py.File, r: MixingResult) -> None:
    assert r.groups is not None
    g = f.create_group("groups")
    vlen = h5py.vlen_dtype(np.int64)
    size, kind, members = (g.create_dataset(k, (r.trials,), dtype=vlen) for k in ("size", "kind", "members"))
    for i, sched in enumerate(r.groups):
        size[i] = np.array([len(ms) for _, ms in sched], dtype=np.int64)
        kind[i] = np.array([k for k, _ in sched], dtype=np.int64)
        members[i] = np.array([m for _, ms in sched for m in ms], dtype=np.int64)
    sizes = np.array([len(ms) for sched in r.groups for _, ms in sched], dtype=np.float64)
    f.attrs["group_mean"] = float(sizes.mean()) if sizes.size else math.nan
    f.attrs["group_full"] = float((sizes == r.n).mean()) if sizes.size else math.nan


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a result file as plain Python values."""
    with h5py.File(path, "r") as f:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def _num(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.1f}" if v != int(v) else f"{int(v)}"


def _variant(params: dict[str, Any]) -> str:
    if "topology" in params:
        defaults = {"method": "p2p", "gamma": 1.0, "every": 1}
        extra = [f"{k}={params[k]}" for k in defaults if k in params and params[k] != defaults[k]]
        return " ".join([str(params["topology"]), *extra])
    if "m" in params:
        return f"m={params['m']}"
    if "ssp_bound" in params:
        out = [f"b={params['ssp_bound']}"]
        if int(params.get("slow", 1)) != 1:
            out.append(f"r={params['slow']}")
        if float(params.get("jitter", 0.0)) != 0.0:
            out.append(f"j={params['jitter']:g}")
        return " ".join(out)
    if "servers" in params:
        s = params.get("staleness")
        out = [f"S={params['servers']}", "async" if s is None else f"s={s}"]
        if int(params.get("slow", 1)) != 1:
            out.append(f"r={params['slow']}")
        return " ".join(out)
    return "-"


def format_table(results: list[MixingResult]) -> str:
    """One row per result: protocol, variant, n, trials, t_mix (max, mean, q50, q90) over
    trials with the worst start, the max from t = 0 only, the theory/spectral value."""
    head = (
        f"{'protocol':<14}{'variant':<14}{'n':>3}{'trials':>7}{'t_mix':>8}{'mean':>8}"
        f"{'q50':>6}{'q90':>6}{'t=0 max':>9}{'estimate':>10}{'rho':>8}{'res':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        s, s0 = r.summary(), r.summary(from_zero=True)
        rho = "-" if r.rho is None else f"{r.rho:.4f}"
        lines.append(
            f"{r.protocol:<14}{_variant(r.params):<14}{r.n:>3}{r.trials:>7}{_num(s['max']):>8}"
            f"{s['mean']:>8.1f}{_num(s['q50']):>6}{_num(s['q90']):>6}{_num(s0['max']):>9}"
            f"{_num(r.estimate):>10}{rho:>8}{r.resolution:>5}"
        )
    return "\n".join(lines)
