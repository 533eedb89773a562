"""mpiml: an MPI message-passing toolkit for weakly consistent parallel learning.

Layers (see docs/design.md): ``optim`` (sequential updates on a flat state),
``protocols`` (communication events), ``models`` and ``data``, ``io`` (HDF5 run
files and checkpoints), ``trainer`` and ``cli``.

Importing :mod:`mpiml` does not initialise MPI; the communicating modules do so
when first used.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
