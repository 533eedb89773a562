"""Codecs for what protocols send: pure array functions, ``encode(x) -> payload``
(one uint8 buffer with a 24-byte header, see :mod:`mpiml.compress.base`) and
``decode(payload) -> x``. State (residuals, RNG) stays on the rank.

- ``qsgd`` (Quantized-PR-SGD eqs. 2-3, §6.1 Elias-gamma bitstream) and ``qsgd_fixed``;
- ``identity``, ``fp16``, ``bf16``, ``sign`` (scaled sign), ``topk``, ``randk``;
- :class:`ErrorFeedback` wraps any codec with residual memory.

``KERNELS`` is "numba" or "numpy": which QSGD kernels run (see
:mod:`mpiml.compress._kernels`; ``MPIML_COMPRESS_KERNELS=numpy`` forces the numpy
reference, which gives the same bytes). Importing this package imports no numba and
compiles nothing: the kernels are chosen (and numba imported) on the first QSGD encode
or decode, on :meth:`Codec.warm_up`, or on reading ``KERNELS``; any numba failure falls
back to the numpy kernels with one line on stderr.

The compressed collectives that send these payloads live in :mod:`mpiml.protocols`.
"""

from __future__ import annotations

from . import _kernels, codecs, qsgd  # noqa: F401  (register the codecs)
from .base import REGISTRY, Codec
from .codecs import build_codec
from .feedback import ErrorFeedback
from .qsgd import QSGD, QSGDFixed

__all__ = ["KERNELS", "QSGD", "REGISTRY", "Codec", "ErrorFeedback", "QSGDFixed", "build_codec", "set_kernels"]


def __getattr__(name: str) -> str:
    if name == "KERNELS":  # read through (and chosen lazily), so that set_kernels shows here too
        return str(_kernels.KERNELS)
    raise AttributeError(f"module 'mpiml.compress' has no attribute {name!r}")


set_kernels = _kernels.set_kernels
