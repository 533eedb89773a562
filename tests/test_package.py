"""The package's face: mpiml.LAYERS, the modules that exist and docs/design.md agree."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import mpiml

ROOT = Path(__file__).parents[1]


def test_layers_list_every_module_of_the_package() -> None:
    modules = {m.name for m in pkgutil.iter_modules(mpiml.__path__) if not m.name.startswith("_")}
    assert modules == set(mpiml.LAYERS), (
        f"in the package, not in mpiml.LAYERS: {sorted(modules - set(mpiml.LAYERS))}; "
        f"listed but missing: {sorted(set(mpiml.LAYERS) - modules)}"
    )


def test_design_doc_table_matches_the_layers() -> None:
    text = (ROOT / "docs" / "design.md").read_text()
    rows = set(re.findall(r"^\| `mpiml\.([a-z_]+)` \|", text, flags=re.M))
    assert rows == set(mpiml.LAYERS), (
        f"docs/design.md lacks {sorted(set(mpiml.LAYERS) - rows)}, lists unknown {sorted(rows - set(mpiml.LAYERS))}"
    )


def test_import_mpiml_initialises_no_mpi_and_the_face_is_lazy() -> None:
    code = (
        "import sys, mpiml; assert 'mpi4py.MPI' not in sys.modules, 'import mpiml imported MPI'; "
        "assert callable(mpiml.train) and callable(mpiml.load_run); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pure_layers_import_without_mpi() -> None:
    pure = ["mpiml.layout", "mpiml.trace", "mpiml.kinds", "mpiml.optim", "mpiml.topology", "mpiml.models"]
    code = f"import sys, importlib; [importlib.import_module(m) for m in {pure!r}]; print('mpi4py.MPI' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", (out.stdout, out.stderr)
