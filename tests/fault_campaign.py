"""The fault campaign of issue 16, rerunnable: kills, damaged checkpoints, bad jobs,
mutated payloads. Prints, per kind, tried / survived / lost, and writes the details
to a JSON file (``--out``, default results/benchmarks/faults.json).

    python tests/fault_campaign.py --quick              # about two minutes on 2 cores
    python tests/fault_campaign.py --only payloads,jobs  # some kinds only
    python tests/fault_campaign.py                       # the full campaign (tens of minutes)

What counts as survived, per kind:

- ``kills``: a 2-rank job is killed with SIGKILL (one rank, or the whole job) at a
  random moment. Survived: the run file reads (``load_run``), ``--auto-resume``
  finishes the run, its final checkpoint equals the uninterrupted run's bit for bit,
  and the metrics table holds every evaluation step exactly once. Lost: anything else
  (named per trial).
- ``checkpoints``: the newest checkpoint of a finished run is damaged (truncated,
  a flipped byte, rank files swapped, an array removed, a garbage marker, a planted
  symlink or foreign files). Survived: ``--resume`` to more steps exits 0 and ends
  bit for bit where the uninterrupted longer run ends (an older checkpoint was used),
  or refuses with one ``mpiml: error:`` line; lost: a traceback, a hang, or a
  different result.
- ``jobs``: a bad job key (wrong type, out of range, absurd magnitude). Survived: exit
  status 2 and one ``mpiml: error:`` line naming the key; lost: a traceback, a hang,
  or a job that runs.
- ``payloads``: a valid payload of every codec with random bytes changed, decoded into
  a buffer of the expected size and dtype. Survived: ValueError, or a decode equal to
  the original's; lost: any other exception; ``undetected``: a different valid stream.

Run it from the repository root with the package importable (``pip install -e .``).
It never writes into ``results/`` except its own ``--out`` file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpiml.testing import launch_env  # noqa: E402

PY = [sys.executable, "-m", "mpiml.cli"]
MPIEXEC = shutil.which("mpiexec") or "mpiexec"
TIMEOUT = 120.0

# small, quick jobs (2 ranks, digits, a checkpoint every 10 steps, tables flushed often)
JOB = [
    "--set", "run.steps=60", "--set", "run.eval_every=20", "--set", "checkpoint.every=10",
    "--set", "checkpoint.keep=10", "--set", "trace.flush_every=5", "--set", "algorithm.name=sgd",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = launch_env()
    env.pop("MPIML_FAIL_AT", None)
    env.pop("MPIML_STOP_FILE", None)
    return env


def _train(
    n: int, out: Path, name: str, extra: list[str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    cmd = [MPIEXEC, "-n", str(n), *PY, "train", *JOB, "--set", f"run.name={name}", "--out", str(out), *extra]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=str(ROOT))
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(
            cmd, -9, str(exc.stdout or ""), f"HANG: timed out after {timeout:.0f}s"
        )


def _final_params(run_dir: Path, step: int) -> list[bytes] | None:
    """Every rank file's arrays at ``step`` as bytes (None when that checkpoint is missing)."""
    d = run_dir / "checkpoints" / f"step-{step:09d}"
    if not (d / "COMPLETE").is_file():
        return None
    out = []
    for p in sorted(d.glob("rank-*.h5")):
        with h5py.File(p, "r") as f:
            out.append(b"".join(np.ascontiguousarray(f[nm][()]).tobytes() for nm in _datasets(f)))
    return out


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda nm, o: names.append(nm) if isinstance(o, h5py.Dataset) else None)
    return sorted(names)


def _metric_steps(run_dir: Path) -> list[int] | str:
    from mpiml.io import load_run

    try:
        run = load_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - the campaign reports every failure
        return f"run file unreadable: {type(exc).__name__}: {exc}"
    if "accuracy" not in run.metrics:  # killed before the first evaluation
        return []
    steps, _ = run.metric("accuracy")
    return [int(s) for s in steps]


class Tally:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.tried = self.survived = 0
        self.lost: list[str] = []
        self.extra: dict[str, int] = {}

    def add(self, ok: bool, why: str = "") -> None:
        self.tried += 1
        if ok:
            self.survived += 1
        else:
            self.lost.append(why)

    def line(self) -> str:
        more = "".join(f", {k} {v}" for k, v in sorted(self.extra.items()))
        return f"{self.kind:12s} tried {self.tried:6d}  survived {self.survived:6d}  lost {len(self.lost):4d}{more}"

    def as_dict(self) -> dict[str, Any]:
        return {"tried": self.tried, "survived": self.survived, "lost": len(self.lost),
                "lost_cases": self.lost[:50], **self.extra}  # fmt: skip


def _one_line_error(res: subprocess.CompletedProcess[str]) -> bool:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    return res.returncode == 2 and len(lines) == 1 and lines[0].startswith("mpiml: error:")


# --------------------------------------------------------------------------- kills


def kills(trials: int, rng: np.random.Generator, tmp: Path) -> Tally:
    t = Tally("kills")
    ref = tmp / "kills-ref"
    res = _train(2, ref, "k", [])
    if res.returncode != 0:
        t.add(False, f"reference run failed: {res.stderr[-400:]}")
        return t
    want = _final_params(ref / "k", 60)
    for i in range(trials):
        out = tmp / f"kills-{i}"
        cmd = [MPIEXEC, "-n", "2", *PY, "train", *JOB, "--set", "run.name=k", "--out", str(out)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=str(ROOT),
                             start_new_session=True)  # fmt: skip
        time.sleep(float(rng.uniform(1.0, 6.0)))
        whole = bool(rng.integers(2))
        if p.poll() is None:
            if whole:
                os.killpg(p.pid, signal.SIGKILL)
            else:
                kids = subprocess.run(["pgrep", "-f", "-g", str(p.pid), "mpiml.cli train"],
                                      capture_output=True, text=True).stdout.split()  # fmt: skip
                if kids:
                    os.kill(int(kids[int(rng.integers(len(kids)))]), signal.SIGKILL)
        try:
            p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            t.add(False, f"trial {i}: the job did not end after a rank was killed")
            continue
        run_dir = out / "k"
        if not (run_dir / "run.h5").exists():
            t.add(True)  # killed before anything was written: nothing to lose
            continue
        if isinstance(_metric_steps(run_dir), str):
            t.add(False, f"trial {i}: {_metric_steps(run_dir)}")
            continue
        res = _train(2, out, "k", ["--auto-resume"])
        if res.returncode != 0:
            t.add(False, f"trial {i}: --auto-resume failed ({res.returncode}): {res.stderr.strip()[-300:]}")
            continue
        steps = _metric_steps(run_dir)
        got = _final_params(run_dir, 60)
        if got != want:
            t.add(False, f"trial {i}: resumed run does not end where the uninterrupted one ends")
        elif isinstance(steps, str) or sorted(set(steps)) != sorted(steps) or steps != sorted(steps):
            t.add(False, f"trial {i}: metric steps {steps} (gaps or duplicates)")
        else:
            want_steps = _metric_steps(ref / "k")
            t.add(steps == want_steps, f"trial {i}: metric steps {steps}, uninterrupted {want_steps}")
    return t


# --------------------------------------------------------------------------- checkpoints


def _damages() -> dict[str, Callable[[Path], None]]:
    def files(d: Path) -> list[Path]:
        return sorted(d.glob("rank-*.h5"))

    def truncate(d: Path) -> None:
        p = files(d)[0]
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    def flip(d: Path) -> None:
        p = files(d)[-1]
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x40
        p.write_bytes(bytes(b))

    def swap(d: Path) -> None:
        a, b = files(d)[:2]
        ta = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(ta)

    def copy_over(d: Path) -> None:
        a, b = files(d)[:2]
        b.write_bytes(a.read_bytes())

    def drop_array(d: Path) -> None:  # a consistent file (digest recomputed) that lacks an array
        from mpiml.io import checkpoint as ck

        p = files(d)[0]
        arrays, _ = ck.read_rank(p)
        with h5py.File(p, "r+") as f:
            meta = str(f.attrs["meta"])
            name = sorted(arrays)[0]
            del f[name]
            del arrays[name]
            f.attrs["sha256"] = ck._digest(arrays, meta)

    def marker(d: Path) -> None:
        (d / "COMPLETE").write_text("{not json")

    def marker_world(d: Path) -> None:
        m = json.loads((d / "COMPLETE").read_text())
        m["world_size"] = 3
        (d / "COMPLETE").write_text(json.dumps(m))

    def symlink(d: Path) -> None:
        p = files(d)[0]
        outside = d.parents[3] / "outside.h5"
        shutil.copy(p, outside)
        p.unlink()
        p.symlink_to(outside)

    def foreign(d: Path) -> None:
        (d / "rank-00007.h5").write_bytes(b"not hdf5")
        (d / "notes.txt").write_text("hello")
        (d.parent / "step-abc").mkdir()
        (d.parent / "step-000000099").mkdir()

    def empty_file(d: Path) -> None:
        files(d)[1].write_bytes(b"")

    def missing(d: Path) -> None:
        files(d)[1].unlink()

    return {
        "truncated": truncate, "bit flip": flip, "rank files swapped": swap, "rank 0 copied over rank 1": copy_over,
        "array removed": drop_array, "garbage marker": marker, "marker world size": marker_world,
        "symlinked rank file": symlink, "foreign files": foreign, "empty file": empty_file, "missing file": missing,
    }  # fmt: skip


def checkpoints(tmp: Path) -> Tally:
    t = Tally("checkpoints")
    base = tmp / "ck-base"
    res = _train(2, base, "c", [])
    longer = tmp / "ck-long"
    res2 = _train(2, longer, "c", ["--set", "run.steps=70"])
    if res.returncode != 0 or res2.returncode != 0:
        t.add(False, f"reference runs failed: {res.stderr[-300:]} {res2.stderr[-300:]}")
        return t
    want = _final_params(longer / "c", 70)
    for name, damage in _damages().items():
        out = tmp / f"ck-{name.replace(' ', '_')}"
        shutil.copytree(base, out, symlinks=True)
        newest = out / "c" / "checkpoints" / f"step-{60:09d}"
        try:
            damage(newest)
        except Exception as exc:  # noqa: BLE001
            t.add(False, f"{name}: could not apply the damage: {exc}")
            continue
        res = _train(2, out, "c", ["--resume", "--set", "run.steps=70"])
        if res.returncode == 0:
            ok = _final_params(out / "c", 70) == want
            t.add(ok, f"{name}: resumed to a different model")
        else:
            t.add(_one_line_error(res), f"{name}: exit {res.returncode}: {res.stderr.strip()[-300:]}")
    return t


# --------------------------------------------------------------------------- jobs

BAD_JOBS: list[str] = [
    "run.steps=-1", "run.steps=0", "run.steps=1e9", 'run.steps="ten"', "run.steps=99999999999999999999",
    "run.seed=-5", "run.seed=18446744073709551617", "run.eval_every=0", "run.eval_every=-3",
    'run.name=""', 'run.name="a/b"', 'run.name=".."', 'run.name="x\\u0000y"', 'run.name="' + "n" * 300 + '"',
    "run.threads=-1", "run.world_size=-2", "optimizer.lr=-0.1", "optimizer.lr=0", "optimizer.lr=nan",
    "optimizer.lr=inf", "optimizer.lr=1e300", 'optimizer.name="sgdd"', "optimizer.momentum=1.5",
    "optimizer.momentum=-1", "data.batch_size=0", "data.batch_size=-8", "data.batch_size=10000000000",
    'data.name="mnist"', 'data.partition="noniid"', "data.alpha=0", "data.alpha=-1", "data.alpha=nan",
    'data.name="hdf5" data.path="/nonexistent.h5"', "model.hidden=[0]", "model.hidden=[-5]", "model.hidden=[100000000000]",
    'model.hidden="64"', "model.hidden=[[64]]", 'model.name="resnet"', 'model.dtype="int8"',
    'model.activation="swish2"', 'algorithm.name="adam"', "algorithm.tau=0", "algorithm.tau=-4",
    "algorithm.delay=-1", 'algorithm.name="dasgd" algorithm.tau=4 algorithm.delay=9', 'algorithm.topology="rign"',
    "algorithm.period=0", "algorithm.gamma=0", "algorithm.gamma=2", 'compression.codec="zip"',
    "compression.s=-1", 'compression.codec="qsgd" compression.s=4294967296', 'compression.codec="topk" compression.k=100000', "compression.k=-1",
    "compression.ratio=-0.5", "compression.ratio=1.5", "compression.bucket=-1", "checkpoint.every=-1",
    "checkpoint.keep=0", "trace.flush_every=0", "trace.flush_every=-1", 'trace.events="yes"',
    'backend.device="tpu"', 'backend.cuda_aware="maybe"', "nosuch.key=1", "run.nosuchkey=1",
    "run=5", "optimizer.lr=[1]", "optimizer.lr=true", "run.steps=true",
]  # fmt: skip


def jobs(limit: int, tmp: Path) -> Tally:
    t = Tally("jobs")
    for spec in BAD_JOBS[:limit]:
        job = tmp / f"job-{t.tried}.toml"
        job.write_text(_job_toml(spec))
        cmd = [*PY, "train", str(job), "--out", str(tmp / "jobs")]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_env(), cwd=str(ROOT))
        except subprocess.TimeoutExpired:
            t.add(False, f"{spec}: hang")
            continue
        t.add(_one_line_error(res), f"{spec}: exit {res.returncode}: {res.stderr.strip()[-200:]}")
    return t


def _job_toml(spec: str) -> str:
    """``"a.b=1 c.d=2"`` as a job file (TOML values; only run.name values hold no space)."""
    top: list[str] = []
    sections: dict[str, list[str]] = {}
    for kv in [spec] if spec.startswith("run.name=") else spec.split(" "):
        key, value = kv.split("=", 1)
        if "." in key:
            section, k = key.split(".", 1)
            sections.setdefault(section, []).append(f"{k} = {value}")
        else:
            top.append(f"{key} = {value}")
    if not any(k.startswith("name =") for k in sections.get("run", [])):
        sections.setdefault("run", []).append(f'name = "job-{zlib.crc32(spec.encode()):08x}"')
    if not any(k.startswith("steps =") for k in sections.get("run", [])):
        sections.setdefault("run", []).append("steps = 2")
    return "\n".join(top + [f"[{s}]\n" + "\n".join(v) for s, v in sections.items()]) + "\n"


# --------------------------------------------------------------------------- payloads

CODECS: dict[str, dict[str, Any]] = {
    "identity": {}, "fp16": {}, "bf16": {}, "sign": {}, "topk": {"ratio": 0.1}, "randk": {"ratio": 0.1},
    "qsgd": {"s": 16}, "qsgd_fixed": {"s": 16},
}  # fmt: skip


def payloads(per_codec: int, rng: np.random.Generator) -> Tally:
    from mpiml.compress import build_codec

    t = Tally("payloads")
    t.extra["undetected"] = 0
    d = 1000
    for name, params in CODECS.items():
        for dtype in (np.float32, np.float64):
            codec = build_codec(name, **params)
            x = rng.standard_normal(d).astype(dtype)
            payload = np.array(codec.encode(x), dtype=np.uint8, copy=True)
            clean = codec.decode(payload.copy(), out=np.empty(d, dtype)).copy()
            for _ in range(per_codec):
                bad = payload.copy()
                k = int(rng.integers(1, 4))
                at = rng.integers(0, bad.size, size=k)
                bad[at] ^= rng.integers(1, 256, size=k).astype(np.uint8)
                if rng.random() < 0.2:
                    bad = bad[: int(rng.integers(0, bad.size))].copy()
                try:
                    got = codec.decode(bad, out=np.empty(d, dtype))
                except ValueError:
                    t.add(True)
                    continue
                except Exception as exc:  # noqa: BLE001
                    t.add(False, f"{name}/{np.dtype(dtype)}: {type(exc).__name__}: {exc}")
                    continue
                same = np.array_equal(np.asarray(got), clean, equal_nan=True)
                t.add(True)
                if not same:
                    t.extra["undetected"] += 1
                    key = f"undetected {name}"
                    t.extra[key] = t.extra.get(key, 0) + 1
    return t


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    from mpiml.comm import install_abort_handler

    install_abort_handler()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small campaign (about two minutes)")
    ap.add_argument("--only", default="kills,checkpoints,jobs,payloads", help="kinds, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "faults.json"))
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = ap.parse_args(argv)
    if Path(args.out).exists() and not args.overwrite:
        ap.error(f"{args.out} exists: pass --overwrite to replace it, or --out PATH to write elsewhere")
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(kinds) - {"kills", "checkpoints", "jobs", "payloads"}
    if unknown:
        ap.error(f"--only: unknown kinds {sorted(unknown)}")
    rng = np.random.default_rng(args.seed)
    report: dict[str, Any] = {"quick": args.quick, "seed": args.seed, "complete": False}
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="mpiml-faults-") as td:
        tmp = Path(td)
        for kind in kinds:
            t0 = time.perf_counter()
            if kind == "kills":
                tally = kills(3 if args.quick else 30, rng, tmp)
            elif kind == "checkpoints":
                tally = checkpoints(tmp)
            elif kind == "jobs":
                tally = jobs(20 if args.quick else len(BAD_JOBS), tmp)
            else:
                tally = payloads(500 if args.quick else 4000, rng)
            print(tally.line(), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            for why in tally.lost[:10]:
                print(f"    lost: {why}", flush=True)
            report[kind] = tally.as_dict()
            _write(out, report)
    report["complete"] = True
    _write(out, report)
    print(f"wrote {out}")
    lost = sum(report[k]["lost"] for k in kinds)
    return 1 if lost else 0


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
