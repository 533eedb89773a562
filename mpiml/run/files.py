"""A rank's open trace files during a run: its event file and, on rank 0, the run file."""

from __future__ import annotations

from ..io.runfile import RankFile, RunFile
from ..trace import Trace

__all__ = ["RunFiles"]


class RunFiles:
    """This rank's event file and, on rank 0, the run file; flushed at the loop's
    flush points, at checkpoints and (best effort) before an abort."""

    def __init__(self, trace: Trace, rank_file: RankFile, run_file: RunFile | None) -> None:
        self.trace, self.rank_file, self.run_file = trace, rank_file, run_file

    def flush(self, everything: bool = False) -> None:
        self.rank_file.append_events(self.trace.take(everything))
        for name, rows in self.trace.take_tables().items():
            self.rank_file.append_table(name, rows)
        self.rank_file.flush()
        if self.run_file is not None:
            self.run_file.flush()

    def close(self) -> None:
        self.flush(everything=True)  # at the end nothing is open; on an abort, keep every row
        self.rank_file.close()
        if self.run_file is not None:
            self.run_file.close()
