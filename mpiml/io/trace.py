"""Compatibility: :class:`Trace` moved to :mod:`mpiml.trace` (no h5py there)."""

from ..trace import EVENT_DTYPE, Trace

__all__ = ["EVENT_DTYPE", "Trace"]
