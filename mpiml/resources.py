"""Files mpiml ships besides its code: the example jobs, the launch scripts and the
named topologies, found the same way from a checkout and from an installed wheel.

In the repository they are top-level folders (``examples/``, ``launch/``,
``topologies/``); building a wheel copies them into the package as
``mpiml/_shipped/<folder>`` (``setup.py``). :func:`resource_path` prefers the package's
copy and falls back to the checkout's folder (an editable install, or PYTHONPATH).
No MPI; nothing here writes unless asked to (:func:`copy_out`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SHIPPED", "copy_out", "examples", "resource_path"]

SHIPPED = ("examples", "launch", "topologies")  # the folders a wheel carries (setup.py)
_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parent


def resource_path(kind: str) -> Path:
    """The folder of shipped files ``kind`` (one of :data:`SHIPPED`): the installed
    package's copy if there is one, else the checkout's top-level folder.

    Raises ValueError for an unknown ``kind``, FileNotFoundError naming both places when
    neither exists (a package installed without them)."""
    if kind not in SHIPPED:
        raise ValueError(f"kind must be one of {', '.join(SHIPPED)} (got {kind!r})")
    for candidate in (_PACKAGE / "_shipped" / kind, _CHECKOUT / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"mpiml's {kind}/ folder is neither in the package ({_PACKAGE / '_shipped' / kind}) nor in a "
        f"checkout ({_CHECKOUT / kind}); reinstall mpiml from a wheel or a clone of the repository"
    )


def examples() -> dict[str, Path]:
    """Name (the file's stem) -> path of every example job (``examples/*.toml``)."""
    return {p.stem: p for p in sorted(resource_path("examples").glob("*.toml"))}


def copy_out(sources: Path | Sequence[Path], dest: Path, overwrite: bool = False) -> list[Path]:
    """Copy files and folders (with what they hold) into the folder ``dest`` (made if
    needed); returns the files written. All or nothing: refuses (FileExistsError naming
    the first, before writing anything) to replace an existing file or link unless
    ``overwrite``; never writes through a link (it is replaced). Modes are kept
    (executable scripts stay executable)."""
    pairs: list[tuple[Path, Path]] = []
    for src in [sources] if isinstance(sources, Path) else sources:
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        pairs += [(p, dest / p.relative_to(src.parent)) for p in files if "__pycache__" not in p.parts]
    if not overwrite:
        clash = [t for _, t in pairs if t.exists() or t.is_symlink()]
        if clash:
            raise FileExistsError(f"{clash[0]} exists (use --overwrite to replace it)")
    for p, t in pairs:
        t.parent.mkdir(parents=True, exist_ok=True)
        if t.is_symlink():
            t.unlink()  # never write through a link
        shutil.copy2(p, t)
    return [t for _, t in pairs]
