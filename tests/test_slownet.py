"""launch/slownet: shaped links between ranks on one host (docs/slow-network.md).

Serial tests; they need root (network namespaces and tc) and skip with the reason
otherwise. Every test uses its own prefix (``mpiml-t<pid>...``) and a private state
directory, and checks afterwards that nothing with that prefix is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SLOWNET = ROOT / "launch" / "slownet"
CHECK = ROOT / "launch" / "slownet_check.py"
RUN_TIMEOUT = 45.0  # seconds; the run below takes about 2 s here


def _netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ours(prefix: str) -> list[str]:
    """Namespaces that belong to ``prefix`` by slownet's rule: prefix-<digits> or prefix-br."""
    return [
        ns
        for ns in _netns_list()
        if ns.startswith(prefix + "-") and (ns[len(prefix) + 1 :].isdigit() or ns[len(prefix) + 1 :] == "br")
    ]


def _netns_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "slownet needs root (network namespaces, tc); run the tests as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) not found"
    probe = f"mpiml-tprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


@pytest.fixture(scope="module")
def netns() -> None:
    reason = _netns_skip_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e["SLOWNET_STATE_DIR"] = str(tmp_path / "state")
    # mpiexec and python of this interpreter's environment, whatever PATH the caller had.
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


@pytest.fixture
def prefix(netns: None, env: dict[str, str]) -> Iterator[str]:
    p = f"mpiml-t{os.getpid()}"
    yield p
    # Whatever happened, take it down, then check that down really left nothing.
    subprocess.run([str(SLOWNET), "down", "--prefix", p], env=env, capture_output=True, timeout=30)
    assert _ours(p) == []


def _slownet(args: list[str], env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run slownet in its own process group; on timeout kill the group (ranks included)."""
    proc = subprocess.Popen(
        [str(SLOWNET), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # slownet's trap takes the network down
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"slownet {' '.join(args)} timed out after {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def mpiexec(env: dict[str, str]) -> None:
    exe = shutil.which("mpiexec", path=env["PATH"])
    if exe is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "HYDRA" not in version and "Open MPI" not in version:
        pytest.skip(f"slownet run needs the MPICH (Hydra) or Open MPI mpiexec, not {exe}")


def test_run_shapes_the_allreduce(prefix: str, env: dict[str, str], mpiexec: None) -> None:
    rate_mbit = 200
    nbytes = 4_000_000
    res = _slownet(
        ["run", "2", "--rate", f"{rate_mbit}mbit", "--prefix", prefix, "--",
         sys.executable, str(CHECK), "--bytes", str(nbytes), "--reps", "3"],
        env,
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert res.returncode == 0, f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, res.stdout
    rec = json.loads(lines[0])
    assert rec["ranks"] == 2 and rec["bytes"] == nbytes and rec["correct"] is True
    assert rec["link"] in ("sn0", "10.213.0.0/24")  # rank 0 was told to use its shaped link
    assert len(rec["seconds_all"]) == 3 and all(t > 0 for t in rec["seconds_all"])
    # Shaping applies: unshaped, this allreduce runs at several Gbit/s here (shared
    # memory or veth). Not a performance test: only an upper bound, with room for tbf's burst.
    assert 0 < rec["mbit_s"] < 1.5 * rate_mbit, rec
    # run took the network down and removed its state file.
    assert _ours(prefix) == []
    assert not (Path(env["SLOWNET_STATE_DIR"]) / f"{prefix}.env").exists()


def test_run_returns_the_command_status(prefix: str, env: dict[str, str], mpiexec: None) -> None:
    res = _slownet(["run", "1", "--prefix", prefix, "--", "sh", "-c", "exit 7"], env)
    assert res.returncode == 7, res.stderr
    assert _ours(prefix) == []


def test_down_touches_only_its_prefix(prefix: str, env: dict[str, str]) -> None:
    # Names that look like ours but are not: another prefix's rank (prefix-1 is a prefix
    # too), a longer name, a near-miss suffix. And one that is ours: prefix-0.
    strangers = [f"{prefix}-1-0", f"{prefix}0", f"{prefix}-brx", f"{prefix}-0x"]
    mine = f"{prefix}-0"
    try:
        for ns in [*strangers, mine]:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        res = _slownet(["down", "--prefix", prefix], env)
        assert res.returncode == 0, res.stderr
        left = _netns_list()
        assert mine not in left
        assert all(ns in left for ns in strangers), left
        # Nothing left of ours: down again is a no-op success.
        res = _slownet(["down", "--prefix", prefix], env)
        assert res.returncode == 0, res.stderr
        assert all(ns in _netns_list() for ns in strangers)
    finally:
        for ns in [*strangers, mine]:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def test_failed_up_removes_what_it_made(prefix: str, env: dict[str, str]) -> None:
    # burst 0 passes slownet's syntax check but tc rejects it, after the bridge and the
    # first rank namespace exist: the trap must remove both.
    res = _slownet(["up", "2", "--burst", "0", "--prefix", prefix], env)
    assert res.returncode != 0
    assert "up failed; removing" in res.stderr, res.stderr
    assert _ours(prefix) == []
    assert not (Path(env["SLOWNET_STATE_DIR"]) / f"{prefix}.env").exists()


def test_up_refuses_a_prefix_that_is_up(prefix: str, env: dict[str, str]) -> None:
    assert _slownet(["up", "2", "--prefix", prefix], env).returncode == 0
    assert sorted(_ours(prefix)) == sorted([f"{prefix}-0", f"{prefix}-1", f"{prefix}-br"])
    again = _slownet(["up", "2", "--prefix", prefix], env)
    assert again.returncode != 0 and "already up" in again.stderr
    assert len(_ours(prefix)) == 3  # the refused up did not remove the first one's namespaces
    assert _slownet(["down", "--prefix", prefix], env).returncode == 0
    assert _ours(prefix) == []
