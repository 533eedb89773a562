"""``python -m mpiml.mixing``: the same as ``mpiml mixing`` (run it under mpiexec)."""

import sys

from .cli import main

sys.exit(main())
