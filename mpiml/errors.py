"""Exceptions that mpiml reports as one line, without a traceback."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DivergenceError", "RankReadError"]


class ConfigError(ValueError):
    """A job or argument error: reported in one line on every rank, never a traceback."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupted, or from another job)."""


class DivergenceError(RuntimeError):
    """A non-finite loss or model: the run has diverged (e.g. a learning rate too large,
    a NaN in the data). Raised with the same message on every rank that agreed on it,
    so the job ends with one line and a non-zero status; such a model is never written
    as a checkpoint.

    ``step``: completed training steps (1-based); ``rank``: the lowest rank that saw a
    non-finite value; ``detail``: what was non-finite and where (e.g. "array 'params':
    3 of 7850 values NaN or inf"); ``what``: "model" or "loss".
    """

    def __init__(self, step: int, rank: int, detail: str, what: str = "model") -> None:
        super().__init__(f"non-finite {what} at step {step} on rank {rank} ({detail})")
        self.step, self.rank, self.detail, self.what = step, rank, detail, what

    def __reduce__(self) -> tuple[type[DivergenceError], tuple[int, int, str, str]]:
        return type(self), (self.step, self.rank, self.detail, self.what)  # picklable despite its signature


class NonFiniteError(ValueError):
    """A codec asked to encode NaN or Inf: on a training rank, the run has diverged
    before the loss or model checks saw it. The abort handler reports it in one line
    (status 3) instead of a traceback; nothing is checkpointed."""


class RankReadError(OSError):
    """A rank's file could not be read (damaged, cut short, locked, gone)."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"rank {rank}: {message}")
        self.rank = rank
