"""A throwaway single-node SLURM for tests: ``with SlurmCluster(tmpdir) as c: c.sbatch(...)``.

Both daemons (``slurmctld``, ``slurmd``) run as root in the foreground (``-D``) with a
clean start (``-c``) from a generated ``slurm.conf`` whose ports are free ones picked at
start and whose state, spool, pid and log files all live in the temporary folder. There
is no munge (``auth/none``, ``cred/none``) and no accounting database: final states are
read from ``scontrol show job -o`` (completed jobs stay visible for ``MinJobAge`` seconds)
and, once a job has left the controller, from the ``jobcomp/filetxt`` log.

The node is the machine itself (``NodeName`` = ``hostname -s``, ``NodeAddr=127.0.0.1``)
declared with more CPUs than it has (``SlurmdParameters=config_overrides``), so a 4-task
job fits on a 2-core VM. A requeued job may start again after ``cred_expire`` seconds
(``AuthInfo=cred_expire=``), kept short here, and the main scheduler loop runs every
couple of seconds, so a requeue-and-restart takes seconds, not minutes.

Daemons are stopped on ``stop()``, on leaving the ``with`` block (failures included) and at
interpreter exit (``atexit``); each daemon's whole process group is killed, then any pid
left in a pid file.

``why_no_slurm()`` says why a cluster cannot be brought up here ("" when it can).

Status (Debian 12, slurm-wlm 22.05.8 from ``apt-get install -y --no-install-recommends
slurm-wlm``, 2-core VM, root): works. The cluster is up (node IDLE) in ~0.5 s and stopped
in ~1 s; ``sbatch -n 1 --wrap hostname`` completes in ~0.6 s, ``sbatch -n 4 --wrap "srun
hostname"`` and ``mpiexec -n 4 python -c ...`` (mpich wheel; Hydra starts its proxy with
srun) inside a 4-task allocation in ~1.3 s each; a job requeued by ``scontrol requeue``
runs again ~5-7 s later. ``python tests/slurm_cluster.py [-k]`` runs these smoke jobs
(``-k`` keeps the folder with slurm.conf and the daemon logs). tests/test_slurm.py uses
it (~60 s for the module). No slurm process is left after ``stop()``; a cluster whose
owner was SIGKILLed is reaped by the next ``start()``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["SlurmCluster", "SlurmError", "why_no_slurm"]

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "srun")
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
)
ZOMBIES = ("slurmstepd", "slurmscriptd")  # helpers the daemons fork; init reaps them after stop()
NODE_CPUS = 8
CRED_EXPIRE = 5  # seconds a requeued job waits before it may start again (slurm's floor)

_live: set[SlurmCluster] = set()


class SlurmError(RuntimeError):
    pass


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            str(p)
            for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
            if (p := Path(d) / name).exists()
        ),
        None,
    )


def _plugin_dir() -> Path | None:
    for d in (
        "/usr/lib/x86_64-linux-gnu/slurm-wlm",
        "/usr/lib/aarch64-linux-gnu/slurm-wlm",
        "/usr/lib64/slurm",
        "/usr/lib/slurm",
    ):
        if Path(d, "select_linear.so").exists():
            return Path(d)
    return None


def why_no_slurm() -> str:
    """Why no throwaway cluster can be started here: "" when one can, else the precise reason."""
    if os.name != "posix" or not Path("/proc").is_dir():
        return "SLURM tests need Linux"
    if os.geteuid() != 0:
        return f"SLURM test cluster needs root (slurmd launches jobs as root); running as uid {os.geteuid()}"
    missing = [n for n in (*DAEMONS, *CLIENTS) if _find(n) is None]
    if missing:
        return f"{', '.join(missing)} not found: apt-get install -y --no-install-recommends slurm-wlm"
    plugins = _plugin_dir()
    if plugins is None:
        return "SLURM plugins not found (no select_linear.so): apt-get install -y --no-install-recommends slurm-wlm"
    need = (
        "auth_none.so",
        "cred_none.so",
        "select_cons_tres.so",
        "proctrack_linuxproc.so",
        "jobcomp_filetxt.so",
    )
    absent = [p for p in need if not (plugins / p).exists()]
    if absent:
        return (
            f"SLURM plugins missing in {plugins}: {', '.join(absent)} (auth/none was removed in slurm 23.11)"
        )
    return ""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _parse_kv(line: str) -> dict[str, str]:
    """``scontrol show -o`` output as a dict (values may not contain spaces, except the last)."""
    out: dict[str, str] = {}
    for tok in line.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k] = v
    return out


class SlurmCluster:
    """A single-node SLURM cluster living in ``tmpdir``; use as a context manager."""

    def __init__(self, tmpdir: str | os.PathLike[str], *, cpus: int = NODE_CPUS, keep: bool = False) -> None:
        self.dir = Path(tmpdir).resolve()
        self.cpus = cpus
        self.keep = keep  # leave the folder behind on stop() (for debugging)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.jobcomp = self.dir / "jobcomp.txt"
        self.env: dict[str, str] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._started = False

    # ---------------------------------------------------------------- life cycle
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def config_text(self, ctld_port: int, slurmd_port: int) -> str:
        d = self.dir
        return f"""\
ClusterName=mpimltest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
MailProg=/bin/true
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire={CRED_EXPIRE}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
JobRequeue=1
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=20
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""

    def start(self, timeout: float = 30.0) -> None:
        reason = why_no_slurm()
        if reason:
            raise SlurmError(reason)
        for sub in ("state", "spool"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(self.config_text(ctld_port, slurmd_port))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for k in [
            k
            for k in self.env
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"
        ]:
            del self.env[k]  # nothing from an enclosing allocation leaks into ours
        _reap_orphans()
        (self.dir / "owner").write_text(f"{os.getpid()}\n")
        self._started = True
        _live.add(self)
        try:
            self._spawn("slurmctld", [_find("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
            self._wait_for(
                lambda: self._run(["scontrol", "ping"], check=False).returncode == 0,
                timeout,
                "slurmctld to answer",
            )
            self._spawn("slurmd", [_find("slurmd"), "-D", "-c", "-f", str(self.conf), "-N", self.node])
            self.wait_node_idle(timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str | None]) -> None:
        log = open(self.dir / f"{name}.out", "wb")  # noqa: SIM115 - kept open for the daemon's life
        self._procs[name] = subprocess.Popen(
            [str(a) for a in argv],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills it whole
            cwd=self.dir,
        )
        log.close()

    def _daemon_died(self) -> str:
        for name, p in self._procs.items():
            if p.poll() is not None:
                return f"{name} exited with {p.returncode}:\n{self.logs(name)}"
        return ""

    def _wait_for(self, pred: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if pred():
                return
            died = self._daemon_died()
            if died:
                raise SlurmError(f"while waiting for {what}: {died}")
            if time.monotonic() > deadline:
                raise SlurmError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def node_state(self) -> str:
        r = self._run(["scontrol", "show", "node", self.node, "-o"], check=False)
        return _parse_kv(r.stdout).get("State", "UNKNOWN")

    def wait_node_idle(self, timeout: float = 30.0) -> None:
        resumed = False
        deadline = time.monotonic() + timeout

        def idle() -> bool:
            nonlocal resumed
            st = self.node_state()
            if st.startswith("IDLE") and "DRAIN" not in st and "NOT_RESPONDING" not in st and "*" not in st:
                return True
            if not resumed and ("DOWN" in st or "DRAIN" in st) and time.monotonic() > deadline - timeout + 3:
                self._run(["scontrol", "update", f"nodename={self.node}", "state=resume"], check=False)
                resumed = True
            return False

        self._wait_for(idle, timeout, f"node {self.node} to be IDLE (last state {self.node_state()})")

    def stop(self) -> None:
        """Kill both daemons (and anything they left in their process groups), remove the folder."""
        if not self._started:
            return
        self._started = False
        _live.discard(self)
        # jobs first, so no job steps outlive slurmd
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", "--signal=KILL", "-u", "root"], check=False, timeout=10)
            self._run(["scancel", "-u", "root"], check=False, timeout=10)
        for name in reversed(DAEMONS):
            p = self._procs.get(name)
            if p is None:
                continue
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
                if p.poll() is not None:
                    break
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                except subprocess.TimeoutExpired:
                    pass
        for name in DAEMONS:  # belt and braces: anything a pid file still names
            pidfile = self.dir / f"{name}.pid"
            try:
                pid = int(pidfile.read_text().strip())
            except (OSError, ValueError):
                continue
            if _is_our_daemon(pid, name, self.conf):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._kill_leftover_steps()
        _wait_no_zombie_steps()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _kill_leftover_steps(self) -> None:
        """slurmstepd processes outlive slurmd by design; kill those of this cluster."""
        for _ in range(20):
            left = [pid for pid in _pids_named("slurmstepd") if _mentions(pid, self.dir)] or [
                pid for pid in _pids_named("slurmstepd") if str(self.conf) in _environ(pid)
            ]
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    # ---------------------------------------------------------------- clients
    def _run(
        self,
        argv: list[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            argv,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            cwd=self.dir,
        )
        if check and r.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def run(self, *argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a client command (``squeue``, ``scontrol``, ``scancel``...) against this cluster."""
        return self._run(list(argv), check=check, timeout=timeout)

    def sbatch(
        self,
        args: list[str] | tuple[str, ...] = (),
        script: str | os.PathLike[str] | None = None,
        env: dict[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> int:
        """Submit; returns the job id. ``script`` is a path or None (then use ``--wrap`` in args).

        ``env`` adds to (and overrides) the cluster environment, a None value removes
        the variable; the job gets all of it
        (sbatch's default ``--export=ALL``). ``cwd`` is where sbatch runs, which is the
        job's working folder unless ``--chdir`` says otherwise.
        """
        merged: dict[str, str | None] = {**self.env, **(env or {})}
        full = {k: v for k, v in merged.items() if v is not None}
        full["SLURM_CONF"] = str(self.conf)
        argv = ["sbatch", "--parsable", *args]
        if script is not None:
            argv.append(str(script))
        r = subprocess.run(argv, env=full, capture_output=True, text=True, timeout=30, cwd=cwd or self.dir)
        if r.returncode != 0:
            raise SlurmError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return int(r.stdout.strip().split(";")[0])

    def show_job(self, job_id: int | str) -> list[dict[str, str]]:
        """``scontrol show job -o ID`` as dicts, one per record (an array job gives one per task)."""
        r = self._run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if r.returncode != 0:
            return []
        return [_parse_kv(line) for line in r.stdout.splitlines() if line.strip()]

    def _jobcomp_record(self, job_id: int | str) -> dict[str, str] | None:
        try:
            lines = self.jobcomp.read_text().splitlines()
        except OSError:
            return None
        rec = None
        for line in lines:  # last record wins (a requeued job logs each run)
            kv = _parse_kv(line)
            if kv.get("JobId") == str(job_id):
                rec = kv
        return rec

    def state(self, job_id: int | str) -> str:
        """The job's state (``PENDING``, ``RUNNING``, ``COMPLETED``...); ``UNKNOWN`` if slurm forgot it."""
        recs = self.show_job(job_id)
        if recs:
            return recs[0].get("JobState", "UNKNOWN")
        rec = self._jobcomp_record(job_id)
        return rec.get("JobState", "UNKNOWN") if rec else "UNKNOWN"

    def array_states(self, array_job_id: int | str) -> dict[int, str]:
        """Task id -> state for a job array."""
        out = {}
        for rec in self.show_job(array_job_id):
            if "ArrayTaskId" in rec and rec["ArrayTaskId"].isdigit():
                out[int(rec["ArrayTaskId"])] = rec.get("JobState", "UNKNOWN")
            elif "ArrayTaskId" in rec:  # still-pending tasks, e.g. "2-3" or "0-1%1"
                spec = rec["ArrayTaskId"].split("%")[0]
                for part in spec.split(","):
                    a, _, b = part.partition("-")
                    for t in range(int(a), int(b or a) + 1):
                        out[t] = rec.get("JobState", "UNKNOWN")
        return out

    def requeue_count(self, job_id: int | str) -> int:
        """How many times the job was restarted (``Restarts=`` of ``scontrol show job``)."""
        recs = self.show_job(job_id)
        return int(recs[0].get("Restarts", "0")) if recs else 0

    def wait(
        self, job_id: int | str, timeout: float = 120.0, states: frozenset[str] | set[str] = FINAL_STATES
    ) -> str:
        """Poll until the job (every task, for an array) is in one of ``states``; return that state.

        For an array the result is the single state all tasks share, or the first task's
        state that is not COMPLETED. Raises SlurmError (with the daemon logs) on timeout.
        """
        last = "?"

        def done() -> bool:
            nonlocal last
            recs = self.show_job(job_id)
            if not recs:
                last = self.state(job_id)
                return last in states
            tasks = [r.get("JobState", "UNKNOWN") for r in recs]
            if len(recs) > 1 or "ArrayJobId" in recs[0]:
                if any("-" in r.get("ArrayTaskId", "") or "," in r.get("ArrayTaskId", "") for r in recs):
                    last = "PENDING"
                    return False
                bad = [s for s in tasks if s != "COMPLETED"]
                last = bad[0] if bad else "COMPLETED"
                return all(s in states for s in tasks)
            last = tasks[0]
            return last in states

        self._wait_for(done, timeout, f"job {job_id} to reach {'/'.join(sorted(states))} (last {last})")
        return last

    def logs(self, name: str | None = None, tail: int = 40) -> str:
        names = [name] if name else [*DAEMONS]
        out = []
        for n in names:
            for f in (self.dir / f"{n}.log", self.dir / f"{n}.out"):
                if f.exists():
                    lines = f.read_text(errors="replace").splitlines()[-tail:]
                    if lines:
                        out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)


def _pids_named(name: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() == name:
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


def _reap_orphans() -> None:
    """Kill the daemons of earlier SlurmClusters whose owner died without stopping them
    (SIGKILL, os._exit): their folder's ``owner`` file names a process that is gone."""
    for name in DAEMONS:
        for pid in _pids_named(name):
            argv = _cmdline(pid).split()
            if "-f" not in argv or argv.index("-f") + 1 >= len(argv):
                continue
            owner_file = Path(argv[argv.index("-f") + 1]).parent / "owner"
            try:
                owner = int(owner_file.read_text().strip())
            except (OSError, ValueError):
                continue  # not one of ours
            if not Path(f"/proc/{owner}").exists():
                try:
                    os.killpg(pid, signal.SIGKILL)  # started with start_new_session: its own group
                except (ProcessLookupError, PermissionError):
                    pass


def _wait_no_zombie_steps(timeout: float = 10.0) -> None:
    """Orphaned slurmstepd/slurmscriptd zombies are reaped by init, which may take a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_proc_state(pid) == "Z" for name in ZOMBIES for pid in _pids_named(name)):
            return
        time.sleep(0.1)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


def _mentions(pid: int, folder: Path) -> bool:
    try:
        return str(folder) in os.readlink(f"/proc/{pid}/cwd") or str(folder) in _cmdline(pid)
    except OSError:
        return False


def _is_our_daemon(pid: int, name: str, conf: Path) -> bool:
    cmd = _cmdline(pid)
    return name in cmd and str(conf) in cmd


@atexit.register
def _stop_all() -> None:
    for c in list(_live):
        try:
            c.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _main() -> None:  # python tests/slurm_cluster.py: bring one up, run smoke jobs, tear down
    import sys
    import tempfile

    reason = why_no_slurm()
    if reason:
        sys.exit(f"cannot run: {reason}")
    t0 = time.monotonic()
    with SlurmCluster(tempfile.mkdtemp(prefix="slurm-"), keep="-k" in sys.argv) as c:
        print(f"up in {time.monotonic() - t0:.1f}s in {c.dir}; node {c.node}: {c.node_state()}")
        out = c.dir / "out"
        out.mkdir()
        for args in (
            ["-n", "1", "--wrap", "hostname"],
            ["-n", "4", "--wrap", "srun hostname"],
            [
                "-n",
                "4",
                "--wrap",
                "mpiexec -n 4 python -c 'from mpi4py import MPI; print(MPI.COMM_WORLD.rank)'",
            ],
        ):
            t = time.monotonic()
            jid = c.sbatch([*args, "-o", f"{out}/%j.out"])
            st = c.wait(jid, 120)
            text = (out / f"{jid}.out").read_text() if (out / f"{jid}.out").exists() else "<no output>"
            print(f"job {jid} {args[-1]!r}: {st} in {time.monotonic() - t:.1f}s: {' '.join(text.split())}")
    print(f"total {time.monotonic() - t0:.1f}s")


if __name__ == "__main__":
    _main()
