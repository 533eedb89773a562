"""Kind names as small integer codes, for reading events fast.

A run file stores each event's kind as a fixed 32-byte name (``S32``); decoding a
million of them to ``str`` costs more than reading them. :class:`KindCodes` maps the
stored bytes to int32 codes instead: each name is hashed from its four 8-byte words
and looked up among the names seen so far (verified by the hash's equality; a name not
seen before is added). ``valid[code]`` says whether a name is one a writer can make
(:func:`mpiml.kinds.register_kind`'s rule): overwritten bytes decode to names that are
not. Pure numpy; no h5py.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..kinds import KIND_WIDTH, valid_name

__all__ = ["KindCodes"]


class KindCodes:
    """Kind names -> small integer codes, fast: an S32 name is hashed from its four
    8-byte words and looked up among the known names' hashes (verified by equality)."""

    _MUL = np.array(
        [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5], np.uint64
    )

    def __init__(self, names: Iterable[str]) -> None:
        self.names: list[str] = []
        self.valid = np.zeros(0, bool)  # per code: a name a writer can make (register_kind's rule)
        self._hash: dict[int, int] = {}
        self._sorted = np.zeros(0, np.uint64)
        self._codes = np.zeros(0, np.int32)
        for n in names:
            self.add(n)

    def _hashes(self, raw: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(raw, dtype=f"S{KIND_WIDTH}")
        words = b.view(np.uint64).reshape(-1, KIND_WIDTH // 8)
        with np.errstate(over="ignore"):
            h = words * self._MUL
            return (
                h[:, 0] ^ (h[:, 1] >> np.uint64(7)) ^ (h[:, 2] << np.uint64(3)) ^ (h[:, 3] >> np.uint64(11))
            )

    def add(self, name: str, raw: bytes | None = None) -> int:
        """The code of ``name`` (``raw``: its stored bytes, when they do not decode)."""
        if raw is None and name in self.names:
            return self.names.index(name)
        h = int(self._hashes(np.array([name.encode() if raw is None else raw], f"S{KIND_WIDTH}"))[0])
        if raw is not None and h in self._hash:
            return self._hash[h]
        if h in self._hash:  # two names, one hash: never seen; refuse rather than mix them up
            raise ValueError(f"kind hash collision: {name!r} and {self.names[self._hash[h]]!r}")
        self.names.append(name)
        ok = raw is None or raw.rstrip(b"\0").isascii()
        self.valid = np.append(self.valid, ok and valid_name(name))
        self._hash[h] = len(self.names) - 1
        keys = np.array(sorted(self._hash), np.uint64)
        self._sorted = keys
        self._codes = np.array([self._hash[int(k)] for k in keys], np.int32)
        return len(self.names) - 1

    def codes(self, raw: np.ndarray) -> np.ndarray:
        """int32 code of each S32 name in ``raw`` (names not seen before are added)."""
        if len(raw) == 0:
            return np.zeros(0, np.int32)
        h = self._hashes(raw)
        i = np.minimum(np.searchsorted(self._sorted, h), max(len(self._sorted) - 1, 0))
        hit = (self._sorted[i] == h) if len(self._sorted) else np.zeros(len(h), bool)
        if not hit.all():
            for name in np.unique(np.asarray(raw)[~hit]):  # a kind /kinds lacks, or damaged bytes
                self.add(bytes(name).decode(errors="replace"), bytes(name))
            return self.codes(raw)
        return self._codes[i]

    def select(self, kinds: Iterable[str] | None) -> np.ndarray | None:
        """The codes of ``kinds`` (None: no selection)."""
        if kinds is None:
            return None
        return np.array([self.add(k) for k in ([kinds] if isinstance(kinds, str) else kinds)], np.int32)
