"""Codecs: bits per coordinate against the QSGD paper's bound, and encode/decode speed.

Part A, bits per coordinate of QSGD (Elias gamma, s = ceil(sqrt(d))) and of the
fixed-width variant, on Gaussian vectors and on real model differences x_0 - x_K (the
repo's MLP on digits, K = 4 plain SGD steps of batch 16 from the init; hidden widths
chosen so that d spans ~1e4 .. ~25.5M). Next to them: the expected-cost bound of the
Quantized-PR-SGD paper (appendix A.4, Theorem 3), per coordinate

    (F + 2 d + d log2((s^2 + 2 s sqrt(d) + 1 + d/4) / d)) / d,   F = 32 (the norm),

float32's 32 bits, and the paper's Table 1 (ResNet-18: 42.63 MB -> 3.80 MB, 11.2x).

Part B, encode and decode throughput of every codec (million coordinates per second,
one core: OMP/MKL/OPENBLAS/NUMBA threads are set to 1 before numpy is imported) at
d = 25.5M and 1e6 float32, against memcpy (np.copyto of the same array) measured in the
same run. Decode writes into a preallocated ``out``. Median of ``--repeats`` timed
calls after one untimed call (numba compiles, or loads its cache, there). Wall time
and the thread's CPU time are both recorded: on a shared machine the CPU time is the
steadier one; the load average is recorded too.

    python benchmarks/compress.py --quick     # d <= 1e5: a few seconds
    python benchmarks/compress.py [--repeats 5] [--out PATH] [--overwrite]

Writes the JSON (``--out``; default results/benchmarks/compress.json, or a fresh
temporary file with ``--quick``) after every row, ``"complete": false`` until the end,
and the .md beside it; an existing file is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy: one core, as one rank of several would have

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import _bench  # noqa: E402

from mpiml.compress import _kernels, build_codec  # noqa: E402
from mpiml.compress.base import HEADER  # noqa: E402
from mpiml.compress.qsgd import bits_per_coordinate  # noqa: E402
from mpiml.data.sources import load_digits, standardize  # noqa: E402
from mpiml.models import MLP  # noqa: E402

D_BIG = 25_530_472
D_GAUSS = [1_000, 10_000, 100_000, 1_000_000, D_BIG]
MLP_HIDDEN = [133, 1_333, 13_333, 340_406]  # d = 75 h + 10: 1.0e4, 1.0e5, 1.0e6, 25.5M
PAPER_TABLE1: dict[str, Any] = {"model": "ResNet-18", "uncompressed_MB": 42.63, "quantized_MB": 3.80}
CODECS: list[tuple[str, dict[str, Any], str]] = [
    ("identity", {}, "numba"),
    ("fp16", {}, "numba"),
    ("bf16", {}, "numba"),
    ("sign", {}, "numba"),
    ("topk", {"ratio": 0.01}, "numba"),
    ("randk", {"ratio": 0.01, "seed": 1}, "numba"),
    ("qsgd", {"seed": 1}, "numba"),
    ("qsgd_fixed", {"seed": 1}, "numba"),
    ("qsgd", {"seed": 1}, "numpy"),
]


def paper_bound_bits(d: int, s: int, f: int = 32) -> float:
    """Theorem 3 (appendix A.4): expected code length in bits, log base 2."""
    return f + 2 * d + d * math.log2((s * s + 2 * s * math.sqrt(d) + 1 + d / 4) / d)


def mlp_difference(hidden: int, k: int = 4, lr: float = 0.05, seed: int = 0) -> np.ndarray:
    """x_0 - x_K after K plain SGD steps (batch 16) of the MLP [64, hidden, 10] on digits."""
    ds = load_digits(0.2, seed)
    standardize(ds)
    model = MLP([ds.n_features, hidden, ds.n_classes], "relu", "float32")
    rng = np.random.default_rng(seed)
    w = model.init(rng)
    x0 = w.copy()
    grad = np.empty_like(w)
    for _ in range(k):
        idx = rng.integers(0, len(ds.x_train), 16)
        xb = ds.x_train[idx].astype(np.float32)
        model.loss_and_grad(w, xb, ds.y_train[idx], grad)
        w -= np.float32(lr) * grad
    del grad
    x0 -= w  # x_0 - x_K, in place: one d-sized array less
    return x0


def bits_row(kind: str, x: np.ndarray) -> dict[str, Any]:
    d = x.size
    q = build_codec("qsgd", seed=1)
    s = q.levels(d)  # type: ignore[attr-defined]
    gamma = bits_per_coordinate(q.encode(x), d)
    fixed = bits_per_coordinate(build_codec("qsgd_fixed", seed=1).encode(x), d)
    overhead = 8 * (HEADER.size + 16 + 4)  # header, s and b, one norm
    return {
        "input": kind,
        "d": d,
        "s": s,
        "qsgd_bits": gamma,
        "qsgd_stream_bits": gamma - overhead / d,
        "qsgd_fixed_bits": fixed,
        "paper_bound_bits": paper_bound_bits(d, s) / d,
        "float32_bits": 32.0,
        "ratio_vs_float32": 32.0 / gamma,
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median wall s, median thread CPU s) of ``repeats`` calls after one untimed call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def speed_rows(d: int, repeats: int) -> list[dict[str, Any]]:
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    out = np.empty_like(x)
    rows = []
    w, c = timed(lambda: np.copyto(out, x), repeats)
    rows.append(
        {"codec": "memcpy (np.copyto)", "kernels": "-", "d": d, "encode_wall_s": w, "encode_cpu_s": c}
    )
    for name, params, kernels in CODECS:
        _kernels.set_kernels(kernels)
        codec = build_codec(name, **params)
        reps = repeats if not (kernels == "numpy" and d > 2_000_000) else max(2, repeats // 2)
        ew, ec = timed(lambda: codec.encode(x), reps)  # noqa: B023
        p = codec.encode(x)
        dw, dc = timed(lambda: codec.decode(p, out=out), reps)  # noqa: B023
        rows.append(
            {
                "codec": name,
                "kernels": kernels if name.startswith("qsgd") else "-",
                "d": d,
                "bits_per_coord": bits_per_coordinate(p, d),
                "encode_wall_s": ew,
                "encode_cpu_s": ec,
                "decode_wall_s": dw,
                "decode_cpu_s": dc,
            }
        )
    _kernels.set_kernels("numba" if "numba" in _kernels.available() else "numpy")
    return rows


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mc(d: int, seconds: float) -> float:
    return d / seconds / 1e6 if seconds > 0 else float("inf")


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "# Codecs: bits per coordinate and speed",
        "",
        f"`python benchmarks/compress.py` on {m['cpu']} ({m['cpus']} CPUs), numpy {m['numpy']}, "
        f"numba {m['numba']}, kernels `{m['kernels']}`; one thread (OMP/MKL/OPENBLAS/NUMBA_NUM_THREADS=1 "
        f"before numpy). Load average {m['loadavg_start']} at the start, {m['loadavg_end']} at the end.",
        "",
        "## Bits per coordinate (QSGD, s = ceil(sqrt(d)))",
        "",
        "qsgd: whole payload (16-byte header, s and b, the float32 norm, the gamma stream); "
        "stream: the gamma stream alone; bound: the paper's Theorem 3 (appendix A.4) with F = 32, per "
        "coordinate; ratio: 32 / qsgd bits.",
        "",
        "| input | d | s | qsgd | stream | bound | qsgd_fixed | float32 | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["bits"]:
        lines.append(
            f"| {r['input']} | {r['d']:,} | {r['s']} | {r['qsgd_bits']:.3f} | {r['qsgd_stream_bits']:.3f} | "
            f"{r['paper_bound_bits']:.3f} | {r['qsgd_fixed_bits']:.3f} | 32 | {r['ratio_vs_float32']:.1f}x |"
        )
    t = res["paper_table1"]
    lines += [
        "",
        f"Paper, Table 1 ({t['model']}): {t['uncompressed_MB']} MB -> {t['quantized_MB']} MB, "
        f"{t['ratio']:.1f}x, i.e. {t['bits_per_coord']:.2f} bits per coordinate.",
        "",
        "## Throughput (million coordinates per second, one core, float32)",
        "",
        "Median over the repeats after one untimed call; CPU = the thread's CPU time (steadier on a "
        "shared machine), wall = elapsed. enc+dec = d / (encode + decode time).",
        "",
        "| codec | kernels | d | bits/coord | encode CPU | decode CPU | enc+dec CPU | encode wall | decode wall | enc+dec wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["speed"]:
        d = r["d"]
        if r["codec"].startswith("memcpy"):
            lines.append(
                f"| {r['codec']} | - | {d:,} | 32 | {mc(d, r['encode_cpu_s']):.0f} | | | "
                f"{mc(d, r['encode_wall_s']):.0f} | | |"
            )
            continue
        lines.append(
            f"| {r['codec']} | {r['kernels']} | {d:,} | {r['bits_per_coord']:.2f} | "
            f"{mc(d, r['encode_cpu_s']):.0f} | {mc(d, r['decode_cpu_s']):.0f} | "
            f"{mc(d, r['encode_cpu_s'] + r['decode_cpu_s']):.0f} | {mc(d, r['encode_wall_s']):.0f} | "
            f"{mc(d, r['decode_wall_s']):.0f} | {mc(d, r['encode_wall_s'] + r['decode_wall_s']):.0f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    _bench.add_output_args(ap, "compress", "d <= 1e5 only: a few seconds")
    args = ap.parse_args()
    _bench.abort_on_error()
    path = _bench.output_path(args.out, "compress", args.quick)
    _bench.claim_or_exit(path, overwrite=args.overwrite, prog="benchmarks/compress.py")
    print(f"writing {path} as it goes", flush=True)
    import numba

    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "kernels": _kernels.KERNELS,
        "threads": 1,
        "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    gauss = [d for d in D_GAUSS if not args.quick or d <= 100_000]
    hidden = [h for h in MLP_HIDDEN if not args.quick or h <= 1_333]
    bits: list[dict[str, Any]] = []
    speed: list[dict[str, Any]] = []
    res = _bench.Results(path, {"machine": machine, "bits": bits, "speed": speed, "quick": args.quick})
    for d in gauss:
        bits.append(bits_row("gaussian", np.random.default_rng(d).standard_normal(d).astype(np.float32)))
        res.save()
        print(bits[-1], flush=True)
    for h in hidden:
        bits.append(bits_row(f"MLP [64, {h}, 10] x_0 - x_4", mlp_difference(h)))
        res.save()
        print(bits[-1], flush=True)
    for d in [1_000_000, D_BIG] if not args.quick else [100_000]:
        speed += speed_rows(d, args.repeats)
        res.save()
        for r in speed[-len(CODECS) - 1 :]:
            print(r, flush=True)
    machine["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    t = dict(PAPER_TABLE1)
    t["ratio"] = t["uncompressed_MB"] / t["quantized_MB"]
    t["bits_per_coord"] = 32 / t["ratio"]
    res.doc["paper_table1"] = t
    md = markdown(res.doc)
    print(md)
    res.finish()
    print(f"wrote {path} and {res.write_beside('.md', md)}")


if __name__ == "__main__":
    main()
