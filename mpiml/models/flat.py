"""Flat parameter state: one contiguous array per model, with per-layer views.

Protocols move the flat array with MPI buffer calls; models read and write it
through views that share its memory (no copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import prod

from ..backend import Array

__all__ = ["ParamLayout"]


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the tensors packed into one flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, at = [], 0
        for s in self.shapes:
            out.append(at)
            at += prod(s)
        return tuple(out)

    @cached_property
    def size(self) -> int:
        return sum(prod(s) for s in self.shapes)

    @cached_property
    def _views(self) -> dict[int, tuple[Array, dict[str, Array]]]:
        return {}

    def views(self, flat: Array) -> dict[str, Array]:
        """Views of ``flat`` (no copies) named as the layout names them.

        The views of the last few arrays are kept (a model's parameters and gradient
        are the same arrays every step), so a step builds no new view objects.
        """
        hit = self._views.get(id(flat))
        if hit is not None and hit[0] is flat:
            return hit[1]
        if flat.ndim != 1 or flat.size != self.size:
            raise ValueError(f"flat state must be a 1-D array of {self.size} values (got shape {flat.shape})")
        v = {
            n: flat[o : o + prod(s)].reshape(s)
            for n, s, o in zip(self.names, self.shapes, self.offsets, strict=True)
        }
        if len(self._views) >= 8:
            self._views.clear()
        self._views[id(flat)] = (flat, v)  # holding ``flat`` keeps its id from being reused
        return v
