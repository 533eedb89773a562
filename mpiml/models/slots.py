"""What every pipeline stage of a model shares (:mod:`mpiml.models.stages`,
:mod:`mpiml.models.linear_stage`): its slice of the whole flat vector, and its micro-batch
*slots*. A forward pass on slot j keeps its input and activations in slot j's buffers
until the backward pass on slot j consumes them; DSP's recomputation (Eq. 5) redoes a
slot's forward pass from its stored input with newer parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Array, array_module

__all__ = ["Poll", "SlotStage", "check_slot"]

Poll = Callable[[], Any] | None
"""Called after each layer of a pass, so communication in flight progresses during compute."""


class SlotStage:
    """What every stage shares: its slice of the whole vector and its micro-batch slots.

    ``_pending[slot]`` is the buffer key ``(slot, rows, id(xp))`` of the slot's last forward
    pass, until a backward pass consumes it (a second backward pass on the same forward pass,
    e.g. after the softmax overwrote the logits, is an error rather than a wrong gradient).
    """

    offset: int
    size: int
    whole_size: int
    in_features: int
    dtype: np.dtype

    def __init__(self) -> None:
        self._pending: dict[int, tuple[int, int, int]] = {}

    def view(self, whole: Array) -> Array:
        """This stage's slice of the whole model's flat vector ``whole`` (a view, no copy)."""
        if whole.ndim != 1 or whole.size != self.whole_size:
            raise ValueError(
                f"whole must be a 1-D array of {self.whole_size} values (got shape {whole.shape})"
            )
        return whole[self.offset : self.offset + self.size]

    def _begin(self, w: Array, a_in: Array, slot: int) -> tuple[Any, tuple[int, int, int]]:
        """``xp`` and the buffer key of a forward pass, after checking its arguments."""
        check_slot(slot)
        if a_in.ndim != 2 or a_in.shape[1] != self.in_features:
            raise ValueError(
                f"a_in must have shape (rows, {self.in_features}) (got {a_in.shape}) in {self!r}"
            )
        if a_in.dtype != self.dtype:
            raise ValueError(f"a_in must be {self.dtype} like the model (got {a_in.dtype})")
        xp = array_module(w)
        return xp, (int(slot), a_in.shape[0], id(xp))

    def drop(self, slot: int) -> None:
        """Forget the slot's pending forward pass (one whose backward will not come, e.g.
        an evaluation's); its buffers stay allocated for the next one."""
        self._pending.pop(int(slot), None)

    def stored_input(self, slot: int) -> Array:
        """The copy of the input ``h_k`` that the slot's pending forward pass kept (the
        slot's buffer: DSP's input queue M_k holds these, §3.3). ValueError when the slot
        has no forward pass waiting for its backward."""
        check_slot(slot)
        key = self._pending.get(int(slot))
        if key is None:
            raise ValueError(f"slot {slot} holds no forward pass waiting for its backward ({self!r})")
        return self._acts[key][0]  # type: ignore[attr-defined]  # both stage kinds keep (input, ...)

    def recompute(self, w: Array, *, slot: int, poll: Poll = None) -> Array:
        """DSP's recomputation, Eq. (5): the forward pass of the slot's stored input again,
        with the parameters ``w`` that the backward pass will use, so that the backward
        differentiates at x_k^{t_{2K-1-k}} (the Backward Parameters) while its input is
        F(h_0; x_0^{t_0}; ...; x_{k-1}^{t_{k-1}}) (the Forward Parameters of the blocks
        below). Returns the output, as :meth:`forward`."""
        return self.forward(w, self.stored_input(slot), slot=slot, poll=poll)  # type: ignore[attr-defined]

    def _take(self, slot: int, what: str) -> tuple[int, int, int]:
        """The key of slot's pending forward pass, which ``what`` consumes."""
        check_slot(slot)
        key = self._pending.pop(int(slot), None)
        if key is None:
            raise ValueError(f"{what}(slot={slot}) needs a forward pass on slot {slot} first ({self!r})")
        return key


def check_slot(slot: int) -> None:
    if not isinstance(slot, int | np.integer) or slot < 0:
        raise ValueError(f"slot must be an integer >= 0 (got {slot!r})")
