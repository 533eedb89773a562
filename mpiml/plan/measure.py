"""Measured t_p, t_c and step time of an mpiml run, read from its run file.

numpy and the run-file reader (h5py) are imported inside :func:`measured_step_times`,
so importing this module needs neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["measured_step_times"]

_AVERAGING = ("allreduce", "iallreduce")  # blocking, and split-phase (start to observed completion)


def measured_step_times(run_h5_path: str | Path) -> dict[str, Any]:
    """Measured t_p, t_c and wall time per step of an mpiml run (seconds).

    - ``t_p``: median over (rank, step) of the step's ``compute`` + ``update`` time;
    - ``t_c``: median duration of ``allreduce`` (blocking) and ``iallreduce``
      (split-phase, DaSGD's average: start to *observed* completion, so an upper bound
      on the transfer) events; None without any;
    - ``step``: mean over ranks and steps of the time from one step's first event to
      the next's, less evaluation and checkpoint time (the run's ``bookkeeping`` kinds;
      ``step_median`` likewise); the last step and an interval that spans a resume are
      left out;
    - ``wait``, ``merge``: mean ``wait`` and ``merge`` (DaSGD's x <- xi x + (1 - xi) avg)
      time per step; plus the run's algorithm, ranks, steps, local batch, tau and delay
      (None where the config has none).
    """
    import numpy as np

    from ..io import load_run
    from ..kinds import kinds_in

    run = load_run(run_h5_path)
    bookkeeping = sorted(kinds_in("bookkeeping", kinds=run.kinds))  # not training (as Trace.split_totals)
    resumed = {int(s) for s in np.atleast_1d(run.attrs.get("resumed_at_steps", []))}
    tp, tc, nbytes, steps_wall, waits, merges, n_steps = [], [], [], [], [], [], 0
    for ev in run.events.values():
        dur = ev["t_end"] - ev["t_start"]
        kind, step = ev["kind"], ev["step"]
        work = np.isin(kind, ("compute", "update"))
        if work.any():
            uniq, inv = np.unique(step[work], return_inverse=True)
            tp.append(np.bincount(inv, weights=dur[work]))
            n_steps = max(n_steps, len(uniq))
        averaging = np.isin(kind, _AVERAGING)
        tc.append(dur[averaging])
        nbytes.append(ev["nbytes"][averaging])
        train = ~np.isin(kind, bookkeeping)
        if not train.any():
            continue
        uniq = np.unique(step[train])
        first = np.full(len(uniq), np.inf)  # each step's first training event
        np.minimum.at(first, np.searchsorted(uniq, step[train]), ev["t_start"][train])
        waits.append(dur[kind == "wait"].sum() / len(uniq))
        merges.append(dur[kind == "merge"].sum() / len(uniq))
        # evaluation and checkpoints inside a step's interval are not the step's time
        book = ~train
        at = np.searchsorted(first, ev["t_start"][book], side="right") - 1
        ok = (at >= 0) & (at < len(uniq) - 1)
        extra = np.bincount(at[ok], weights=dur[book][ok], minlength=len(uniq) - 1)
        consecutive = (uniq[1:] == uniq[:-1] + 1) & ~np.isin(uniq[1:], sorted(resumed))
        steps_wall.append((np.diff(first) - extra)[consecutive])
    all_tp = np.concatenate(tp) if tp else np.empty(0)
    all_tc = np.concatenate(tc) if tc else np.empty(0)
    wall = np.concatenate(steps_wall) if steps_wall else np.empty(0)
    if all_tp.size == 0:
        raise ValueError(f"{run.path}: no compute/update events (was trace.events off?)")
    alg = run.config.get("algorithm", {})
    name = str(run.attrs.get("algorithm", alg.get("name", "")))
    return {
        "t_p": float(np.median(all_tp)),
        "t_c": float(np.median(all_tc)) if all_tc.size else None,
        "step": float(np.mean(wall)) if wall.size else None,
        "step_median": float(np.median(wall)) if wall.size else None,
        "wait": float(np.mean(waits)) if waits else 0.0,
        "merge": float(np.mean(merges)) if merges else 0.0,
        "allreduce_nbytes": int(np.median(np.concatenate(nbytes))) if all_tc.size else None,
        "algorithm": name,
        "ranks": run.world_size,
        "steps": n_steps,
        "local_batch": run.config.get("data", {}).get("batch_size"),
        "tau": alg.get("tau") if name in ("local_sgd", "dasgd") else None,
        "delay": alg.get("delay") if name == "dasgd" else None,
    }
