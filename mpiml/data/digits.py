"""The UCI handwritten digits, read from the copy shipped in this package.

``digits.csv.gz`` (next to this module) is the test set of UCI's "Optical Recognition
of Handwritten Digits" (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), byte for byte the file
scikit-learn bundles as ``sklearn/datasets/data/digits.csv.gz``: 1797 rows of 64 pixel
counts in 0..16 (an 8x8 image, row-major) and the digit 0..9 as the last column.
``digits.README.md`` says where it comes from and under which licence.

mpiml reads it itself rather than through ``sklearn.datasets.load_digits``: importing
scikit-learn costs every rank seconds at start-up (it pulls in scipy.stats and pandas),
reading the file takes milliseconds, and the arrays are the same bit for bit
(``tests/test_startup.py`` checks that against scikit-learn where it is installed).
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

__all__ = ["DIGITS_FILE", "digits_arrays"]

DIGITS_FILE = "digits.csv.gz"  # in the mpiml.data package


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x float64 (1797, 64) pixel counts 0..16, y int64 (1797,) digits 0..9,
    in the file's order (= ``sklearn.datasets.load_digits(return_X_y=True)``).

    Raises FileNotFoundError if the package was installed without its data file."""
    with resources.files("mpiml.data").joinpath(DIGITS_FILE).open("rb") as raw, gzip.open(raw, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return table[:, :-1].copy(), table[:, -1].astype(np.int64)
