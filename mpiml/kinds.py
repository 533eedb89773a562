"""Event kinds: one table, each kind registered by the module that records it.

Every event a :class:`mpiml.trace.Trace` records has a kind (``compute``,
``allreduce``, ``send``, ...) and every kind has one **category**:

``compute``
    local work of the rank: gradients, optimizer updates, DaSGD's merge
``codec``
    a codec's encode and decode of what a protocol sends and receives (local work too,
    shown apart so that compression's cost is neither compute nor communication)
``communication``
    time the rank spends inside communication it waits for: a blocking collective, a
    one-sided push or drain
``wait``
    time blocked in the ``finish`` of a split-phase operation
``in_flight``
    a split-phase operation under way, from its start (or a message's post) to its
    observed completion; the rank did other work meanwhile, so these spans overlap
    the other categories (the blocked part of them is recorded apart as ``wait``)
``bookkeeping``
    work that is not training: evaluation, checkpoints, compiling a codec's kernels at
    set-up

A module registers its kinds once, at import time, with :func:`register_kind`, and
keeps the name it returns::

    GOSSIP = register_kind("gossip", "in_flight", "a gossip round, start to observed completion")

Registering a name again with the same category is a no-op (the first doc stays);
with another category it raises ``ValueError``. :meth:`Trace.record` refuses a kind
nobody registered, so a typo fails at once instead of writing an event no reader
knows how to classify. Readers group events by ``category(kind)`` (or, for a run
file, by the file's own ``/kinds`` table: :attr:`mpiml.io.Run.kinds`), never by lists
of names.

Every owner registers its own: the replica program ``compute`` and ``update``
(:mod:`mpiml.algorithms.replica`), DaSGD ``merge``, the driver ``eval`` and
``checkpoint`` (:mod:`mpiml.run`), every protocol module its own (``allreduce``,
``gossip``, ``send``, ``wait``, ...). A reader of a run file needs none of them
imported: the file carries its own ``/kinds`` table.

**Width.** A kind name is at most :data:`KIND_WIDTH` = 32 bytes: lowercase ASCII
letters, digits, ``_``, ``.`` and ``-``, starting with a letter. The event table's
``kind`` column is a fixed ``S32`` (:data:`mpiml.trace.EVENT_DTYPE`), and
:func:`register_kind` refuses a longer name with a ``ValueError``. A fixed width,
rather than one computed from the table, keeps ``EVENT_DTYPE`` a constant: it does
not depend on which modules happened to be imported before a table was made, so
every rank file of a run (and every run of one schema) has the same dtype.

This module imports numpy only (no MPI, no h5py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

__all__ = [
    "CATEGORIES",
    "KINDS",
    "KIND_WIDTH",
    "Kind",
    "category",
    "kinds_in",
    "register_kind",
    "table",
    "table_dtype",
    "valid_name",
]

KIND_WIDTH = 32  # bytes of a kind name; the event table's kind column is S32
CATEGORY_WIDTH = 16
CATEGORIES = ("compute", "codec", "communication", "wait", "in_flight", "bookkeeping")

_NAME = re.compile(r"[a-z][a-z0-9_.\-]*")


class Kind(NamedTuple):
    name: str
    category: str
    doc: str


_KINDS: dict[str, Kind] = {}
KINDS: Mapping[str, Kind] = MappingProxyType(_KINDS)
"""Every registered kind: name -> :class:`Kind` (read-only; grows as modules register)."""


def valid_name(name: str) -> bool:
    """Whether ``name`` follows the rule for a kind name (lowercase ASCII letters, digits,
    '_', '.', '-', starting with a letter; at most :data:`KIND_WIDTH` bytes)."""
    return isinstance(name, str) and len(name) <= KIND_WIDTH and _NAME.fullmatch(name) is not None


def register_kind(name: str, category: str, doc: str) -> str:
    """Register event kind ``name`` in ``category`` (one of :data:`CATEGORIES`), with a
    one-line ``doc``; returns ``name``. The same name with the same category again is
    a no-op; with a different category, a ``ValueError``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            f"event kind {name!r}: a name is lowercase ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter"
        )
    if len(name) > KIND_WIDTH:
        raise ValueError(
            f"event kind {name!r} is {len(name)} characters long; the event table holds at most "
            f"{KIND_WIDTH} (mpiml.kinds.KIND_WIDTH)"
        )
    if category not in CATEGORIES:
        raise ValueError(
            f"event kind {name!r}: category must be one of {', '.join(map(repr, CATEGORIES))} (got {category!r})"
        )
    if not isinstance(doc, str) or not doc.strip() or "\n" in doc:
        raise ValueError(f"event kind {name!r}: doc must be one non-empty line")
    old = _KINDS.get(name)
    if old is not None:
        if old.category != category:
            raise ValueError(
                f"event kind {name!r} is already registered as {old.category!r}; cannot register it "
                f"as {category!r}"
            )
        return name
    _KINDS[name] = Kind(name, category, doc)
    return name


def category(name: str) -> str:
    """The category of a registered kind; ``ValueError`` naming an unknown one."""
    k = _KINDS.get(name)
    if k is None:
        raise ValueError(
            f"unknown event kind {name!r}: register it first (mpiml.kinds.register_kind); "
            f"known: {', '.join(sorted(_KINDS))}"
        )
    return k.category


def kinds_in(*categories: str, kinds: Mapping[str, str] | None = None) -> frozenset[str]:
    """Names of the kinds in any of ``categories``: of the registry, or of ``kinds``
    ({name: category}, e.g. a run file's :attr:`mpiml.io.Run.kinds`)."""
    for c in categories:
        if c not in CATEGORIES:
            raise ValueError(f"unknown category {c!r} (one of {', '.join(map(repr, CATEGORIES))})")
    table_ = kinds if kinds is not None else {k.name: k.category for k in _KINDS.values()}
    return frozenset(n for n, c in table_.items() if c in categories)


def table_dtype(doc_width: int) -> np.dtype:
    """The kinds table's dtype: fixed-width byte strings (h5py, h5dump and pandas read
    them as they are); ``doc`` as UTF-8 of ``doc_width`` bytes."""
    return np.dtype(
        [("name", f"S{KIND_WIDTH}"), ("category", f"S{CATEGORY_WIDTH}"), ("doc", f"S{doc_width}")]
    )


def table() -> np.ndarray:
    """The registry as a structured array (name, category, doc), in registration order;
    ``doc`` is as wide as the longest doc."""
    rows = [(k.name.encode(), k.category.encode(), k.doc.encode()) for k in _KINDS.values()]
    width = max((len(r[2]) for r in rows), default=1)
    return np.array(rows, dtype=table_dtype(width))
