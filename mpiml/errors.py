"""Exceptions that mpiml reports as one line, without a traceback."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError"]


class ConfigError(ValueError):
    """A job or argument error: reported in one line on every rank, never a traceback."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, corrupted, or from another job)."""
