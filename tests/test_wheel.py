"""What a user gets from ``pip install mpiml`` (a wheel, not the checkout): the named
topologies, the example jobs (``mpiml examples``) and the launch scripts (``mpiml
launch``), found through :mod:`mpiml.resources`.

The slow test builds the wheel from a copy of the sources (offline:
``--no-build-isolation``), installs it into a fresh virtual environment that sees this
environment's packages (numpy, mpi4py, h5py...) but not the checkout, and runs the
commands from a folder outside the checkout with PYTHONPATH unset."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from mpiml.resources import SHIPPED, copy_out, examples, resource_path
from mpiml.testing import run_ranks

ROOT = Path(__file__).parents[1]
MPIML = [sys.executable, "-m", "mpiml.cli"]
TIMEOUT = 300


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MPIML, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_examples_lists_every_example_job(tmp_path: Path) -> None:
    out = _cli("examples", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines()[:-1]}
    assert listed == {p.stem for p in (ROOT / "examples").glob("*.toml")}
    assert set(examples()) == listed


def test_examples_copies_one_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = _cli("examples", "sgd_digits", "--to", "jobs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    copied = tmp_path / "jobs" / "sgd_digits.toml"
    assert copied.read_bytes() == (ROOT / "examples" / "sgd_digits.toml").read_bytes()
    copied.write_text("# mine\n")
    again = _cli("examples", "dpsgd_ring", "sgd_digits", "--to", "jobs", cwd=tmp_path)  # all or nothing
    assert again.returncode == 2 and "exists (use --overwrite" in again.stderr
    assert copied.read_text() == "# mine\n" and not (tmp_path / "jobs" / "dpsgd_ring.toml").exists()
    unknown = _cli("examples", "nope", cwd=tmp_path)
    assert (
        unknown.returncode == 2 and "no example 'nope'" in unknown.stderr and "sgd_digits" in unknown.stderr
    )


def test_launch_writes_the_scripts_out(tmp_path: Path) -> None:
    out = _cli("launch", "--to", "here", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    script = tmp_path / "here" / "launch" / "mpirun.sh"
    assert script.read_bytes() == (ROOT / "launch" / "mpirun.sh").read_bytes()
    assert os.access(script, os.X_OK)
    assert (tmp_path / "here" / "launch" / "slurm" / "train.sbatch").is_file()


def test_copy_out_never_writes_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.toml"
    victim.write_text("keep\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sgd_digits.toml").symlink_to(victim)
    with pytest.raises(FileExistsError):
        copy_out(examples()["sgd_digits"], tmp_path / "out")
    copy_out(examples()["sgd_digits"], tmp_path / "out", overwrite=True)
    assert victim.read_text() == "keep\n" and not (tmp_path / "out" / "sgd_digits.toml").is_symlink()


def test_resource_path_prefers_the_package_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mpiml.resources as resources

    for kind in SHIPPED:  # a checkout: its top-level folders
        assert resource_path(kind) == ROOT / kind
    package = tmp_path / "site-packages" / "mpiml"
    (package / "_shipped" / "examples").mkdir(parents=True)
    monkeypatch.setattr(resources, "_PACKAGE", package)
    assert resource_path("examples") == package / "_shipped" / "examples"  # a wheel: the package's copy
    assert resource_path("launch") == ROOT / "launch"  # not in the package: the checkout's
    monkeypatch.setattr(resources, "_CHECKOUT", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="launch/ folder is neither in the package"):
        resource_path("launch")
    with pytest.raises(ValueError, match="kind must be one of"):
        resource_path("papers")


def _can_build_offline() -> str:
    """Why a wheel cannot be built here without the network ('' when it can)."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed"
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:
        return f"setuptools {setuptools.__version__} needs the wheel package to build wheels (pip install -e '.[test]')"
    return ""


def _sources(dest: Path) -> Path:
    """A copy of what a build reads, so building writes nothing into the checkout."""
    src = dest / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("mpiml", *SHIPPED):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    return src


@pytest.mark.slow
@pytest.mark.skipif(bool(_can_build_offline()), reason=_can_build_offline() or "-")
def test_a_wheel_installed_elsewhere_has_topologies_examples_and_launch_scripts(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(_sources(tmp_path))],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = wheels.glob("mpiml-*.whl")

    # a fresh environment that sees this one's packages (no network needed) but not the checkout
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # this environment's package folders (also those it sees through .pth files), never the checkout
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours |= {p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p) != ROOT}
    Path(site, "outer_env.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))  # paths only: no hooks
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # the MPI library of a wheel (mpich) sits in <prefix>/lib of the environment that has
    # it, where mpi4py looks for it under its own prefixes: point the loader at it
    libs = [str(Path(p).parents[2] / "lib") for p in sorted(ours)]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH", "")])])
    mpiml = str(env_dir / "bin" / "mpiml")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(args, capture_output=True, text=True, cwd=work, env=env, timeout=TIMEOUT)

    where = run(str(python), "-c", "import mpiml; print(mpiml.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    version = run(mpiml, "--version")
    assert version.returncode == 0 and version.stdout.startswith("mpiml "), version.stderr
    topo = run(mpiml, "topology", "two_racks")
    assert topo.returncode == 0 and "two_racks" in topo.stdout, topo.stdout + topo.stderr
    listed = run(mpiml, "examples")
    assert listed.returncode == 0 and "sgd_digits" in listed.stdout and "_shipped" in listed.stdout, (
        listed.stdout
    )
    copied = run(mpiml, "examples", "sgd_digits", "--to", "jobs")
    assert copied.returncode == 0 and (work / "jobs" / "sgd_digits.toml").is_file(), copied.stderr
    info = run(mpiml, "info")
    assert info.returncode == 0 and "_shipped" in info.stdout, info.stdout + info.stderr
    scripts = run(mpiml, "launch", "--to", ".")
    assert scripts.returncode == 0 and (work / "launch" / "mpirun.sh").is_file(), scripts.stderr

    res = run_ranks(
        2, [mpiml, "train", "jobs/sgd_digits.toml", "--set", "run.steps=10", "--out", "results"], TIMEOUT,
        cwd=str(work), env=env,
    )  # fmt: skip
    assert not res.timed_out and res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "step     10/10" in res.stdout and (work / "results" / "sgd_digits" / "run.h5").is_file()
