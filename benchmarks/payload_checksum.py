"""The cost of a body checksum in every codec's payload (issue 16, item 15).

For each codec at d = 25.5M float32 (the MLP of benchmarks/compress.py): the thread CPU
time of encode and of decode (into a preallocated ``out``), and of ``zlib.crc32`` and
``zlib.adler32`` over the payload's body, median of ``--repeats`` after one untimed call,
one thread. The checksum is computed once when encoding and once when decoding, so its
cost relative to the codec is 2 x checksum / (encode + decode). The rule the payload
format follows (mpiml.compress.base.CHECKSUMMED): the body is covered by the crc32 where
that costs under 5%; the header (bytes 0-15) is covered for every codec (a crc32 of 16 bytes
costs nothing measurable).

The times are measured with the check field in place, so encode and decode already
include the crc32 for the checksummed codecs; the ratio is computed on the codec time
without it (encode + decode - 2 x crc32 for those).

    python benchmarks/payload_checksum.py [--repeats 5] [--quick] [--out results/benchmarks] [--overwrite]

Writes ``payload_checksum.{json,md}`` under ``--out`` (not with ``--quick``, a smoke run
at d = 1M), row by row as it goes.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy: one core, as one rank of several would have

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpiml.compress import KERNELS, build_codec  # noqa: E402
from mpiml.compress.base import CHECKSUMMED, HEADER  # noqa: E402

D_BIG = 25_530_472
LIMIT = 0.05  # a body checksum is added where it costs less than this share of encode + decode
CODECS: list[tuple[str, dict[str, Any]]] = [
    ("identity", {}),
    ("fp16", {}),
    ("bf16", {}),
    ("sign", {}),
    ("topk", {"ratio": 0.01}),
    ("randk", {"ratio": 0.01, "seed": 1}),
    ("qsgd", {"seed": 1}),
    ("qsgd_fixed", {"seed": 1}),
]


def cpu_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median thread CPU seconds of ``repeats`` calls after one untimed call."""
    fn()
    out = []
    for _ in range(repeats):
        c0 = time.thread_time()
        fn()
        out.append(time.thread_time() - c0)
    return float(np.median(out))


def row(name: str, params: dict[str, Any], x: np.ndarray, repeats: int) -> dict[str, Any]:
    codec = build_codec(name, **params)
    out = np.empty_like(x)
    p = codec.encode(x)
    body = p[HEADER.size :]
    enc = cpu_time(lambda: codec.encode(x), repeats)
    dec = cpu_time(lambda: codec.decode(p, out=out), repeats)
    crc = cpu_time(lambda: zlib.crc32(body.data), repeats)
    adler = cpu_time(lambda: zlib.adler32(body.data), repeats)
    base = enc + dec - (2 * crc if name in CHECKSUMMED else 0.0)
    return {
        "codec": name,
        "d": int(x.size),
        "body_bytes": int(body.size),
        "encode_cpu_s": enc,
        "decode_cpu_s": dec,
        "crc32_cpu_s": crc,
        "adler32_cpu_s": adler,
        "crc32_share": 2 * crc / base,
        "adler32_share": 2 * adler / base,
        "body_checksummed": name in CHECKSUMMED,
        "under_limit": 2 * crc / base < LIMIT,
    }


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        "# Payload checksum: its cost per codec",
        "",
        f"`python benchmarks/payload_checksum.py` on {machine['cpu']} ({machine['cpus']} CPUs), numpy "
        f"{machine['numpy']}, kernels `{machine['kernels']}`, one thread; load average "
        f"{machine['loadavg_start']} at the start, {machine.get('loadavg_end', '?')} at the end. Thread CPU "
        "time, median of the repeats. share = 2 x checksum / (encode + decode without the checksum): "
        f"the body is checksummed where the crc32 share is under {LIMIT:.0%}.",
        "",
        "| codec | d | body MB | encode ms | decode ms | crc32 ms | crc32 share | adler32 ms | adler32 share | body checked |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['codec']} | {r['d']:,} | {r['body_bytes'] / 1e6:.2f} | {r['encode_cpu_s'] * 1e3:.1f} | "
            f"{r['decode_cpu_s'] * 1e3:.1f} | {r['crc32_cpu_s'] * 1e3:.1f} | {r['crc32_share']:.1%} | "
            f"{r['adler32_cpu_s'] * 1e3:.1f} | {r['adler32_share']:.1%} | "
            f"{'yes' if r['body_checksummed'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="d = 1M, fewer repeats, writes nothing")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks")
    ap.add_argument("--overwrite", action="store_true", help="replace payload_checksum.{json,md} in --out")
    args = ap.parse_args()
    taken = [p for p in (args.out / "payload_checksum.json", args.out / "payload_checksum.md") if p.exists()]
    if taken and not args.quick and not args.overwrite:  # never replace a file this run did not create
        ap.error(f"{taken[0]} exists: pass --overwrite to replace it, or --out DIR to write elsewhere")
    d = 1_000_000 if args.quick else D_BIG
    repeats = 2 if args.quick else args.repeats
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "kernels": KERNELS,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "loadavg_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    try:
        from compress import cpu_model  # benchmarks/compress.py: the CPU's model name

        machine["cpu"] = cpu_model()
    except Exception:  # noqa: BLE001 - the name is a nicety
        pass
    x = np.random.default_rng(0).standard_normal(d).astype(np.float32)
    rows: list[dict[str, Any]] = []
    for name, params in CODECS:
        rows.append(row(name, params, x, repeats))
        r = rows[-1]
        print(
            f"{name:10s} body {r['body_bytes'] / 1e6:7.2f} MB  enc {r['encode_cpu_s'] * 1e3:7.1f} ms  "
            f"dec {r['decode_cpu_s'] * 1e3:7.1f} ms  crc32 {r['crc32_cpu_s'] * 1e3:6.1f} ms "
            f"({r['crc32_share']:6.1%})  adler32 {r['adler32_cpu_s'] * 1e3:6.1f} ms ({r['adler32_share']:6.1%})",
            flush=True,
        )
        if not args.quick:  # partial results as it goes
            args.out.mkdir(parents=True, exist_ok=True)
            machine["loadavg_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
            (args.out / "payload_checksum.json").write_text(
                json.dumps({"machine": machine, "limit": LIMIT, "rows": rows}, indent=2) + "\n"
            )
            (args.out / "payload_checksum.md").write_text(markdown(rows, machine))
    wrong = [r["codec"] for r in rows if r["under_limit"] != r["body_checksummed"]]
    if wrong:
        print(f"note: on this machine the {LIMIT:.0%} rule would choose otherwise for {', '.join(wrong)}")


if __name__ == "__main__":
    main()
