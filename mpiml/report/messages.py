"""Paired point-to-point messages, the late-sender section and the communication matrix.

**Late sender** (Scalasca; Geimer et al., "The Scalasca performance toolset
architecture", CCPE 22(6), 2010, and the POP/Scalasca pattern catalogue): a receive
posted before its message's send was posted waits for the sender. For each paired
message, late-sender time = max(0, t_send_start - t_recv_start), bounded by the
receive's duration (t_recv_end - t_recv_start).

**Communication matrix**: bytes from each ``src`` rank to each ``dst`` rank, summed
from the events that carry a peer (:data:`mpiml.report.timeline.PEER_SENDS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .section import Cell, Section
from .timeline import PEER_SENDS, RankTimeline

__all__ = ["comm_matrix_section", "late_sender_sections"]

_SCALASCA = (
    "Late sender: Scalasca's wait-state pattern (Geimer et al., 'The Scalasca performance toolset "
    "architecture', Concurrency Computat.: Pract. Exper. 22(6), 2010): a receive posted before its "
    "send waits max(0, t_send_start - t_recv_start), at most the receive's duration."
)


def late_sender(msgs: np.ndarray) -> np.ndarray:
    """Late-sender seconds of each paired message (MESSAGE_DTYPE rows)."""
    wait = np.maximum(0.0, msgs["t_send_start"] - msgs["t_recv_start"])
    return np.minimum(wait, np.maximum(0.0, msgs["t_recv_end"] - msgs["t_recv_start"]))


def late_sender_sections(
    run: Any,
    *,
    ranks: list[int] | None = None,
    steps: tuple[int, int] | None = None,
    time: tuple[float, float] | None = None,
) -> list[Section]:
    """Two sections (per receiving rank; per (src, dst)) when the run has paired
    messages, else none. Streams the messages; holds per-pair sums only."""
    pairs: dict[tuple[int, int], list[float]] = {}  # (src, dst) -> [messages, late, total, max]
    for msgs in run.messages(ranks=ranks, steps=steps, time=time):
        if not len(msgs):
            continue
        wait = late_sender(msgs)
        key = msgs["src"].astype(np.int64) * (1 << 32) + msgs["dst"]
        uniq, inv = np.unique(key, return_inverse=True)
        n = np.bincount(inv)
        late = np.bincount(inv, weights=wait > 0)
        total = np.bincount(inv, weights=wait)
        worst = np.zeros(uniq.size)
        np.maximum.at(worst, inv, wait)
        for i, k in enumerate(uniq):  # one pass per (src, dst) pair present in the slab
            acc = pairs.setdefault((int(k >> 32), int(k & 0xFFFFFFFF)), [0, 0, 0.0, 0.0])
            acc[0] += int(n[i])
            acc[1] += int(late[i])
            acc[2] += float(total[i])
            acc[3] = max(acc[3], float(worst[i]))
    if not pairs:
        return []
    by_dst: dict[int, list[float]] = {}
    for (_, d), (n_, late_, tot, mx) in pairs.items():
        acc = by_dst.setdefault(d, [0, 0, 0.0, 0.0])
        acc[0] += n_
        acc[1] += late_
        acc[2] += tot
        acc[3] = max(acc[3], mx)
    cols = ["messages", "late", "late-sender total (s)", "late-sender max (s)"]
    unpaired = run.unpaired
    notes = [_SCALASCA, "late: messages whose receive waited (late-sender time > 0)."]
    if unpaired:
        notes.append(f"{unpaired} send/recv events had no other end in the file (or window): not counted.")
    rows_dst: list[list[Cell]] = [[d, int(a[0]), int(a[1]), a[2], a[3]] for d, a in sorted(by_dst.items())]
    rows_pair: list[list[Cell]] = [
        [s, d, int(a[0]), int(a[1]), a[2], a[3]] for (s, d), a in sorted(pairs.items())
    ]
    return [
        Section(
            "late_sender",
            "Late sender, per receiving rank",
            ["rank", *cols],
            rows_dst,
            notes,
            {"per_rank": {str(d): a for d, a in by_dst.items()}},
        ),
        Section(
            "late_sender_pairs",
            "Late sender, per (source, destination)",
            ["src", "dst", *cols],
            rows_pair,
            [],
            {"pairs": [[s, d, *a] for (s, d), a in sorted(pairs.items())]},
        ),
    ]


def comm_matrix_section(timelines: dict[int, RankTimeline]) -> list[Section]:
    """Bytes src -> dst (rows: source ranks; columns: destinations) when any event
    carried a peer; collectives (no peer) are in the per-rank bytes section."""
    if not any(t.sent_to_peer for t in timelines.values()):
        return []
    ranks = sorted(timelines)
    dsts = sorted({p for t in timelines.values() for p in t.sent_to_peer} | set(ranks))
    rows: list[list[Cell]] = []
    for r in ranks:
        sent = timelines[r].sent_to_peer
        rows.append([r, *[sent.get(d, 0) for d in dsts], sum(sent.values())])
    matrix = {str(r): {str(d): b for d, b in timelines[r].sent_to_peer.items()} for r in ranks}
    return [
        Section(
            "comm_matrix",
            "Communication matrix (bytes, source rank -> destination rank)",
            ["src \\ dst", *[str(d) for d in dsts], "total"],
            rows,
            [
                f"Summed from the {' and '.join(PEER_SENDS)} events (their nbytes, to their peer). "
                "Collectives and other events without a peer are listed per rank apart "
                "(bytes without a peer).",
            ],
            {"matrix": matrix},
        )
    ]
