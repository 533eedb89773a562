"""Build hook: a wheel carries the repository's example jobs, launch scripts and named
topologies, which live at the top of the checkout (``examples/``, ``launch/``,
``topologies/``), copied into the package as ``mpiml/_shipped/<folder>``.

:mod:`mpiml.resources` finds them there in an installed wheel, and in the checkout
otherwise (an editable install, or PYTHONPATH). Everything else is in setup.cfg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("examples", "launch", "topologies")  # = mpiml.resources.SHIPPED
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc")


class BuildWithShipped(build_py):
    """build_py, then copy SHIPPED into the built package (not in editable mode, where
    mpiml.resources reads the checkout's folders directly)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            src, dst = ROOT / name, Path(self.build_lib) / "mpiml" / "_shipped" / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=_SKIP)


setup(cmdclass={"build_py": BuildWithShipped})
