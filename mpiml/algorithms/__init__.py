"""Training algorithms, registered under their papers' names.

Importing this package registers every algorithm (:data:`REGISTRY`) and the job
sections they own: ``[algorithm]`` (``name`` plus every algorithm's keys) and
``[compression]``. Adding an algorithm: one module with an :class:`Algorithm`
subclass decorated with :func:`register`, and its name in :data:`MODULES`.
"""

from __future__ import annotations

from importlib import import_module

from ..config import register_section
from . import compression
from .base import (
    REGISTRY,
    Algorithm,
    Context,
    EvalSums,
    Program,
    algorithm_keys,
    algorithm_section,
    check_job,
    register,
)
from .replica import Replica

__all__ = ["REGISTRY", "Algorithm", "Context", "EvalSums", "Program", "Replica", "register"]

# the modules whose import registers their algorithms, in the order the docs list them
MODULES = ("sgd", "local_sgd", "dasgd", "gossip", "ps", "pipeline", "sdpipe")
for _module in MODULES:
    import_module(f"{__name__}.{_module}")

register_section("algorithm", algorithm_section(), after="run", check=check_job, relevant=algorithm_keys)
register_section(
    "compression", compression.KEYS, after="algorithm", check=compression.check, relevant=compression.relevant
)
