"""Perfetto's native protobuf trace (ui.perfetto.dev, trace_processor), through the
``perfetto`` package's protos (extra ``perfetto``).

Layout: one process track per rank (``pid`` = rank, named by its role), and under it one
child track per activity and lane (:mod:`.tracks`); each event is a TrackEvent slice
(``TYPE_SLICE_BEGIN`` at ``t_start``, ``TYPE_SLICE_END`` at ``t_end``; timestamps in ns
from the window's earliest event) with debug annotations step, bytes, peer, msg. A message with both ends in the
window carries a flow: its id (:func:`.window.flow_id`) in the send's ``flow_ids`` and in
the receive's ``terminating_flow_ids``, drawn as an arrow by the UI.

Memory stays flat: packets go out in batches of :data:`BATCH`, each batch one ``Trace``
message serialized and appended (a trace file is a sequence of ``TracePacket`` fields,
so serialized ``Trace`` messages concatenate into one trace).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from .tracks import GROUPS, placed, track_name
from .window import Scan, Window

__all__ = ["BATCH", "write_perfetto"]

BATCH = 4096  # packets per Trace message written


def write_perfetto(run: Any, ranks: Sequence[int], window: Window, found: Scan, fh: IO[bytes]) -> int:
    """Write ``ranks``' events in ``window`` to ``fh`` as a Perfetto protobuf trace; returns
    the number of slices written. ImportError without the ``perfetto`` package."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
        Trace,
        TracePacket,
        TrackDescriptor,
        TrackEvent,
    )

    BEGIN, END = TrackEvent.Type.TYPE_SLICE_BEGIN, TrackEvent.Type.TYPE_SLICE_END
    CLEARED = TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED
    EXPLICIT = TrackDescriptor.ChildTracksOrdering.EXPLICIT
    t_zero = found.t0
    trace = Trace()
    n = 0

    def flush(force: bool = False) -> None:
        nonlocal trace
        if len(trace.packet) >= BATCH or (force and len(trace.packet)):
            fh.write(trace.SerializeToString())
            trace = Trace()

    for r in ranks:
        seq = r + 1  # one packet sequence per rank
        proc_uuid = (r + 1) << 20
        p = trace.packet.add()
        p.trusted_packet_sequence_id = seq
        p.sequence_flags = CLEARED  # a sequence's first packet (no interned state is used)
        p.track_descriptor.uuid = proc_uuid
        p.track_descriptor.process.pid = r
        p.track_descriptor.process.process_name = found.names[r]
        p.track_descriptor.child_ordering = EXPLICIT  # activities in GROUPS order
        for rows in placed(run, r, window, found):
            for (step, kind, t0, t1, nbytes, peer, msg), is_send, fid, g, lane, new in rows:
                group = GROUPS[g]
                uuid = proc_uuid + 64 * g + lane + 1
                if new:
                    d = trace.packet.add()
                    d.trusted_packet_sequence_id = seq
                    d.track_descriptor.uuid = uuid
                    d.track_descriptor.parent_uuid = proc_uuid
                    d.track_descriptor.name = track_name(group, lane)
                    d.track_descriptor.sibling_order_rank = 64 * g + lane
                b = trace.packet.add()
                b.timestamp = _ns(t0, t_zero)
                b.trusted_packet_sequence_id = seq
                te = b.track_event
                te.type = BEGIN
                te.track_uuid = uuid
                te.name = kind
                te.categories.append(group)
                for key, value in (("step", step), ("bytes", nbytes), ("peer", peer), ("msg", msg)):
                    a = te.debug_annotations.add()
                    a.name = key
                    a.int_value = value
                if fid:
                    (te.flow_ids if is_send else te.terminating_flow_ids).append(fid)
                e = trace.packet.add()
                e.timestamp = _ns(t1, t_zero)
                e.trusted_packet_sequence_id = seq
                e.track_event.type = END
                e.track_event.track_uuid = uuid
                n += 1
                flush()
    flush(force=True)
    return n


def _ns(t: float, t_zero: float) -> int:
    """Seconds on the run clock -> ns since ``t_zero`` (unsigned: Perfetto's timestamps are)."""
    return max(0, round((t - t_zero) * 1e9))
