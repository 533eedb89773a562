"""Training algorithms, registered under their papers' names.

Importing this package registers every algorithm (:data:`REGISTRY`) and the job
sections they own: ``[algorithm]`` (``name`` plus every algorithm's keys) and
``[compression]``. Adding an algorithm: one module with an :class:`Algorithm`
subclass decorated with :func:`register`, and its import below.
"""

from __future__ import annotations

from ..config import register_section
from . import compression, dasgd, gossip, local_sgd, sgd  # noqa: F401, I001  (register the algorithms, in this order)
from .base import (
    REGISTRY,
    Algorithm,
    Context,
    EvalSums,
    Program,
    Replica,
    algorithm_section,
    check_job,
    register,
)

__all__ = ["REGISTRY", "Algorithm", "Context", "EvalSums", "Program", "Replica", "register"]

register_section("algorithm", algorithm_section(), after="run", check=check_job)
register_section("compression", compression.KEYS, after="algorithm", check=compression.check)
