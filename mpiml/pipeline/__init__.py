"""Pipeline schedules, pure (no MPI): GPipe and 1F1B op lists per stage, a simulator that
replays them against the send/receive pairing (deadlocks, bubbles), and DSP's queue sizes
(Appendix A) and schedule (Figure 2: grid, op lists with recompute, channel depths). The
training that runs these schedules on ranks is the ``gpipe``, ``1f1b`` and ``dsp``
algorithms (:mod:`mpiml.algorithms.pipeline`, :mod:`mpiml.algorithms.pipeline_stage`;
docs/pipeline.md). And SDPIPE's rule for forming groups of ready replicas
(:mod:`mpiml.pipeline.groups`: groundwork for issue #14, not yet used by a program)."""

from __future__ import annotations

from .dsp import PAPER_CONFIGS, QueueSizes, Slot, Timetable, dsp, dsp_depths, dsp_queues, dsp_timetable
from .schedule import KINDS, Op, gpipe, one_f_one_b
from .simulate import Deadlock, Event, ScheduleError, Trace, bubble_fraction, simulate

__all__ = [
    "KINDS",
    "PAPER_CONFIGS",
    "Deadlock",
    "Event",
    "Op",
    "QueueSizes",
    "ScheduleError",
    "Slot",
    "Timetable",
    "Trace",
    "bubble_fraction",
    "dsp",
    "dsp_depths",
    "dsp_queues",
    "dsp_timetable",
    "gpipe",
    "one_f_one_b",
    "simulate",
]
