#!/usr/bin/env bash
# Check a GPU install of mpiml in one go (issue #16.17): under 8 minutes (step limits: 450 s).
#
#   bash tests/gpu_check.sh [--out DIR] [--quick] [--plumbing]
#
# On a machine with a GPU, cupy and mpiexec it runs, each under a time limit:
#   1. tests/test_gpu.py                                (serial: device arrays, codecs, models)
#   2. tests/test_mpi_gpu.py on 2 ranks                 (as tests/conftest.py launches it)
#   3. benchmarks/allreduce.py --device gpu             (AllReduce of device buffers: staged
#      through host memory vs handed to a CUDA-aware MPI, which a probe launch tries first)
#   4. tests/test_mpi_gpu.py's CUDA-aware cases with MPIML_CUDA_AWARE=1, if the probe passed
# and writes DIR/gpu_allreduce.{json,md} and DIR/gpu_check.txt (DIR: results/benchmarks by
# default). A file that is already there is kept: the new ones get a date in their name.
# Without a GPU (no cupy, or cupy sees no device) it prints "no GPU: skipped" and exits 0.
# Exit status: 0 when every step passed (or all were skipped), 1 when one failed.
#
# --quick      benchmark in its quick mode (sizes up to 4 MiB, one round)
# --plumbing   on a machine without a GPU: run every step anyway, the benchmark on host
#              arrays standing in for device arrays (--gpu-xp numpy); checks this script,
#              measures nothing about GPUs
# Environment: PYTHON (default python3, or the active venv's python), MPIEXEC (default mpiexec).
# mpiexec missing: `pip install mpich` (the wheel mpiml depends on) provides it.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
MPIEXEC=${MPIEXEC:-mpiexec}
OUTDIR=results/benchmarks
QUICK=()
PLUMBING=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUTDIR=$2; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --plumbing) PLUMBING=1; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1

gpu=$("$PY" - <<'EOF'
try:
    from mpiml.backend import cupy_available
    if cupy_available():
        import cupy
        p = cupy.cuda.runtime.getDeviceProperties(0)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        print(f"{cupy.cuda.runtime.getDeviceCount()} x {name}, cupy {cupy.__version__}")
except Exception as exc:  # a broken CUDA install is "no GPU" here, said once
    print(f"#{type(exc).__name__}: {exc}")
EOF
)
XP=cupy
if [ -z "$gpu" ] || [ "${gpu#\#}" != "$gpu" ]; then
    if [ "$PLUMBING" = 0 ]; then
        echo "no GPU: skipped (cupy is not installed or sees no device${gpu:+; ${gpu#\#}})"
        exit 0
    fi
    gpu="none (--plumbing: host arrays stand in for device arrays)"
    XP=numpy
fi
if ! command -v "$MPIEXEC" >/dev/null; then
    echo "gpu_check.sh: $MPIEXEC not found: pip install mpich (or put your MPI's mpiexec on PATH)" >&2
    exit 1
fi

mkdir -p "$OUTDIR"
stem=gpu_allreduce
summary=$OUTDIR/gpu_check.txt
if [ -e "$OUTDIR/$stem.json" ] || [ -e "$OUTDIR/$stem.md" ] || [ -e "$summary" ]; then
    stamp=$(date -u +%Y%m%d-%H%M%S)
    stem=gpu_allreduce-$stamp
    summary=$OUTDIR/gpu_check-$stamp.txt
fi
{
    echo "mpiml GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "GPU: $gpu"
    echo "MPI: $("$PY" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].rstrip(chr(0)))' 2>&1)"
} >"$summary"
cat "$summary"
status=0

step() {  # step NAME LIMIT_S COMMAND...: run under a time limit, record the outcome
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS log
    log=$(mktemp)
    echo "== $name"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local verdict="passed"
    [ "$rc" = 124 ] && verdict="TIMED OUT after ${limit} s"
    [ "$rc" != 0 ] && [ "$rc" != 124 ] && verdict="FAILED (exit $rc)"
    [ "$rc" != 0 ] && status=1
    local tail_line
    tail_line=$(grep -a -E "passed|failed|skipped|error" "$log" | tail -n 1)
    if [ "$PLUMBING" = 0 ] && [ "$rc" = 0 ] && [[ "$tail_line" == *skipped* ]] && [[ "$tail_line" != *passed* ]]; then
        verdict="ALL SKIPPED on a machine with a GPU"  # a skip must not read as a pass here
        status=1
    fi
    echo "$name: $verdict in $((SECONDS - t0)) s${tail_line:+ ($tail_line)}" >>"$summary"
    rm -f "$log"
}

PYTEST=(-m pytest -q -rs -p no:cacheprovider)
MPI_PYTEST=("$MPIEXEC" -n 2 "$PY" -m mpi4py "${PYTEST[@]}" --with-mpi --timeout=120 --timeout-method=thread)
step "tests/test_gpu.py" 80 "$PY" "${PYTEST[@]}" tests/test_gpu.py
step "tests/test_mpi_gpu.py (2 ranks)" 140 "${MPI_PYTEST[@]}" tests/test_mpi_gpu.py
step "AllReduce staged vs CUDA-aware" 150 "$PY" benchmarks/allreduce.py --device gpu --gpu-xp "$XP" \
    --rounds 3 --max-bytes $((256 << 20)) "${QUICK[@]}" --out "$OUTDIR/$stem.json"
probe=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(int(bool(d.get('cuda_aware_probe',{}).get('probe'))))" \
    "$OUTDIR/$stem.json" 2>/dev/null || echo 0)
if [ "$probe" = 1 ]; then
    step "tests/test_mpi_gpu.py CUDA-aware (2 ranks, MPIML_CUDA_AWARE=1)" 80 \
        env MPIML_CUDA_AWARE=1 "${MPI_PYTEST[@]}" tests/test_mpi_gpu.py -k "True"
else
    echo "CUDA-aware tests: skipped (the probe found no CUDA-aware MPI; see $OUTDIR/$stem.json)" >>"$summary"
fi
grep -E "^[0-9]+ (KiB|MiB):" "$OUTDIR/$stem.md" >>"$summary" 2>/dev/null
echo "numbers: $OUTDIR/$stem.json and .md" >>"$summary"
echo
cat "$summary"
exit $status
